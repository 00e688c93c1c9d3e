// The Winograd F(2x2, 3x3) kernels' parameter block (Rust: `WinogradParams`), bound as uniform
// 0. A job computes out[n, o, r, s] = sum over the group's input channels i and taps a, b < 3
// of wt(o, i, a, b) * in[n, i, r + a + base_h, s + b + base_w] (reads outside `in` are zero):
// the forward (wt = w, base = -padding) or dx (`flip`: wt is w rotated 180 degrees with its
// channels swapped per group, in = dy, base = padding - 2). Outputs come in 2 x 2 tiles,
// `tiles_h` x `tiles_w` per plane; `tiles` = n * tiles_h * tiles_w is the GEMM's column count.
// The transforms live in the scratch as U[16][out_c][in_cg], V[16][in_c][tiles] and
// M[16][out_c][tiles] (element 16-index xi = 4 * row + column of the 4 x 4 transform).
struct Params {
    n: u32, in_c: u32, in_h: u32, in_w: u32,
    out_c: u32, out_h: u32, out_w: u32, groups: u32,
    in_cg: u32, out_cg: u32, tiles_h: u32, tiles_w: u32,
    base_h: i32, base_w: i32, flip: u32, has_bias: u32,
    in_off: u32, out_off: u32, total: u32, tiles: u32,
    accumulate: u32, _pad0: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
