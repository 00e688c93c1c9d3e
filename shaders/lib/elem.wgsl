// The storage of an op's 16-bit-capable operands (src/gpu/kernels/storage.rs; a kernel
// includes lib/elem.wgsl and gets this piece or one of its two siblings when its pipeline is
// built): f32, one element a word. A binding `array<Elem>` holds element i in word
// elem_word(i), and elem_at(word, i) is its value as f32.

alias Elem = f32;

fn elem_word(i: u32) -> u32 {
    return i;
}

fn elem_at(w: Elem, i: u32) -> f32 {
    return w;
}
