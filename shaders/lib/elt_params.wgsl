// The element-wise kernels' parameter block (Rust: `EltParams`), bound as uniform 0: the
// element count and each tensor's element offset inside its binding window.
struct Params {
    total: u32, a_off: u32, b_off: u32, out_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
