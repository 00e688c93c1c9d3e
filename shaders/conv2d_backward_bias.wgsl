// conv2d db, first pass: one workgroup per (channel k, split), summing dy[n, k, oh, ow] over
// r = (n, oh, ow) in the split's range with a fixed tree in workgroup memory. The second pass
// (reduce_partials.wgsl) adds the splits in order.

// #include lib/conv_params.wgsl
// #include lib/ids.wgsl
// #include lib/workgroup_sum.wgsl

@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> partial: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let item = workgroup_item(wid, nwg);
    if (item >= p.total) {
        return;
    }
    let k = item % p.k;
    let split = item / p.k;
    let plane = p.oh * p.ow;
    let count = p.n * plane;
    let r0 = split * p.split_len;
    let r1 = min(r0 + p.split_len, count);
    var acc = 0.0;
    for (var r = r0 + lid; r < r1; r += WG) {
        let n = r / plane;
        acc += dy[p.dy_off + (n * p.k + k) * plane + r % plane];
    }
    let total = workgroup_sum(lid, acc);
    if (lid == 0u) {
        partial[split * p.k + k] = total;
    }
}
