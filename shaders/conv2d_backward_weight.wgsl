// conv2d dW, first pass: one workgroup per (weight element, split). The reduction over
// r = (n, oh, ow) in [split * split_len, (split + 1) * split_len) is strided over the workgroup's
// invocations, then summed by a fixed tree in workgroup memory: deterministic, no atomics. The
// second pass (reduce_partials.wgsl) adds the splits in order.

// #include lib/conv_params.wgsl
// #include lib/ids.wgsl
// #include lib/workgroup_sum.wgsl

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> partial: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let item = workgroup_item(wid, nwg);
    // Uniform control flow: every invocation of a workgroup takes the same branch.
    if (item >= p.total) {
        return;
    }
    let elems = p.k * p.cg * p.kh * p.kw;
    let e = item % elems;
    let split = item / elems;
    let j = e % p.kw;
    var t = e / p.kw;
    let i = t % p.kh;
    t = t / p.kh;
    let cl = t % p.cg;
    let k = t / p.cg;
    let c = (k / p.kg) * p.cg + cl;

    let plane = p.oh * p.ow;
    let count = p.n * plane;
    let r0 = split * p.split_len;
    let r1 = min(r0 + p.split_len, count);
    var acc = 0.0;
    for (var r = r0 + lid; r < r1; r += WG) {
        let ow = r % p.ow;
        let oh = (r / p.ow) % p.oh;
        let n = r / plane;
        let ih = i32(oh * p.stride_h + i * p.dil_h) - i32(p.pad_top);
        let iw = i32(ow * p.stride_w + j * p.dil_w) - i32(p.pad_left);
        // A tap in the padding multiplies a zero (so a NaN or Inf in dy propagates, as in
        // PyTorch).
        var xv = 0.0;
        if (ih >= 0 && ih < i32(p.h) && iw >= 0 && iw < i32(p.w)) {
            xv = x[p.x_off + ((n * p.c + c) * p.h + u32(ih)) * p.w + u32(iw)];
        }
        acc += xv * dy[p.dy_off + (n * p.k + k) * plane + oh * p.ow + ow];
    }
    let total = workgroup_sum(lid, acc);
    if (lid == 0u) {
        partial[split * elems + e] = total;
    }
}
