// Native f16 storage (devices with SHADER_F16; the module starts with `enable f16;`): one
// element an f16, widened by the hardware (exact: every f16 is an f32).

alias Elem = f16;

fn elem_word(i: u32) -> u32 {
    return i;
}

fn elem_at(w: Elem, i: u32) -> f32 {
    return f32(w);
}
