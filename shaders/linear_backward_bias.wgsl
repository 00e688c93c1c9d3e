// Linear db: out[j] = sum over rows r of dy[r, j]. One workgroup per column, summing with a
// fixed tree in workgroup memory, so the result is the same on every run (no atomics).

struct Params {
    rows: u32, cols: u32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> db: array<f32>;

const WG: u32 = 64u;
var<workgroup> sums: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let col = wid.x + wid.y * nwg.x;
    if (col >= p.cols) {
        return;
    }
    var acc = 0.0;
    for (var r = lid; r < p.rows; r += WG) {
        acc += dy[r * p.cols + col];
    }
    sums[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            sums[lid] += sums[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        db[col] = sums[0];
    }
}
