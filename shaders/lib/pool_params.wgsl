// The pool kernels' parameter block (Rust: `PoolParams`), bound as uniform 0.
struct Params {
    planes: u32, h: u32, w: u32, oh: u32, ow: u32,
    kh: u32, kw: u32, stride_h: u32, stride_w: u32, pad_h: u32, pad_w: u32,
    dil_h: u32, dil_w: u32, count_include_pad: u32,
    in_off: u32, idx_off: u32, out_off: u32, total: u32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
