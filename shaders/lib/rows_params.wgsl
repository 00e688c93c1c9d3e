// The row-wise kernels' parameter block (Rust: `RowsParams`), bound as uniform 0: a
// [rows, cols] matrix, and the softmax gradient's multiplier (loss scaling; 1.0 otherwise).
struct Params {
    rows: u32, cols: u32, scale: f32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
