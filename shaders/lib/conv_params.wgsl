// The conv kernels' parameter block (Rust: `ConvParams`), bound as uniform 0. Offsets (`*_off`)
// are element offsets of each tensor's range inside its aligned binding window.
struct Params {
    n: u32, c: u32, h: u32, w: u32, k: u32, kh: u32, kw: u32, groups: u32,
    oh: u32, ow: u32, cg: u32, kg: u32,
    stride_h: u32, stride_w: u32, dil_h: u32, dil_w: u32, pad_top: u32, pad_left: u32,
    has_bias: u32, accumulate: u32,
    x_off: u32, w_off: u32, b_off: u32, dy_off: u32, out_off: u32,
    total: u32, splits: u32, split_len: u32, tiles_m: u32, tiles_n: u32, reduce: u32, _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
