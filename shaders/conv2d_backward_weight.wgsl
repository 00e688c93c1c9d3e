// conv2d dW, first pass: one workgroup per (weight element, split). The reduction over
// r = (n, oh, ow) in [split * split_len, (split + 1) * split_len) is strided over the workgroup's
// invocations, then summed by a fixed tree in workgroup memory: deterministic, no atomics. The
// second pass (reduce_partials.wgsl) adds the splits in order.

struct Params {
    n: u32, c: u32, h: u32, w: u32,
    k: u32, kh: u32, kw: u32, groups: u32,
    oh: u32, ow: u32, cg: u32, kg: u32,
    stride_h: u32, stride_w: u32, dil_h: u32, dil_w: u32,
    pad_top: u32, pad_left: u32, has_bias: u32, accumulate: u32,
    x_off: u32, w_off: u32, b_off: u32, dy_off: u32,
    out_off: u32, total: u32, splits: u32, split_len: u32,
    tiles_m: u32, tiles_n: u32, reduce: u32, _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> partial: array<f32>;

const WG: u32 = 64u;
var<workgroup> sums: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let item = wid.x + wid.y * nwg.x;
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
    sums[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            sums[lid] += sums[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        partial[split * elems + e] = sums[0];
    }
}
