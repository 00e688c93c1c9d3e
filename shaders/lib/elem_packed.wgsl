// Packed 16-bit storage (any device; always for bf16): two elements a u32 word, element 2i in
// the low half, widened exactly with lib/dtype.wgsl's integer conversion (the host's bits on
// every device). ELEM_DT is the dtype's code, set by the host with this piece.

alias Elem = u32;

fn elem_word(i: u32) -> u32 {
    return i >> 1u;
}

fn elem_at(w: Elem, i: u32) -> f32 {
    return bitcast<f32>(widen_bits(half_of(w, i), ELEM_DT));
}
