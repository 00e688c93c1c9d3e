// The pool kernels' parameter block (Rust: `PoolParams`), bound as uniform 0. A dispatch covers
// `planes` planes of `rows` rows of its result, from row `row0` (all rows from 0; or a row range
// of one plane larger than a binding, whose offsets count from the plane's row 0 and wrap).
struct Params {
    planes: u32, h: u32, w: u32, oh: u32, ow: u32,
    kh: u32, kw: u32, stride_h: u32, stride_w: u32, pad_h: u32, pad_w: u32,
    dil_h: u32, dil_w: u32, count_include_pad: u32,
    in_off: u32, idx_off: u32, out_off: u32, total: u32, row0: u32, rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
