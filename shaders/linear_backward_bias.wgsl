// Linear db: out[j] = sum over rows r of dy[r, j]. One workgroup per column, summing with a
// fixed tree in workgroup memory, so the result is the same on every run (no atomics).

// #include lib/ids.wgsl
// #include lib/workgroup_sum.wgsl

// #include lib/rows_params.wgsl
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> db: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let col = workgroup_item(wid, nwg);
    if (col >= p.cols) {
        return;
    }
    var acc = 0.0;
    for (var r = lid; r < p.rows; r += WG) {
        acc += dy[r * p.cols + col];
    }
    let total = workgroup_sum(lid, acc);
    if (lid == 0u) {
        db[col] = total;
    }
}
