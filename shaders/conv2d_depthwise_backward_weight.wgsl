// conv2d dW for depthwise convolutions (one input channel per group, C/g = 1), first pass: one
// workgroup per (output channel k, chunk of TAPS kernel taps, split). Like the direct kernel it
// strides the reduction over r = (n, oh, ow) in [split * split_len, (split + 1) * split_len)
// across the workgroup's invocations and sums each tap by the same fixed tree in workgroup
// memory (deterministic, no atomics, the direct kernel's sums), but it reads dy[n, k, oh, ow]
// once for all the chunk's taps instead of once per tap. The second pass (reduce_partials.wgsl)
// adds the splits in order.

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
// Kernel taps per workgroup (the host's `DEPTHWISE_TAPS`).
const TAPS: u32 = 9u;
var<workgroup> sums: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let item = wid.x + wid.y * nwg.x;
    // Uniform control flow: every invocation of a workgroup takes the same branch.
    if (item >= p.total) {
        return;
    }
    let taps = p.kh * p.kw;
    let chunks = (taps + TAPS - 1u) / TAPS;
    let k = item % p.k;
    let chunk = (item / p.k) % chunks;
    let split = item / (p.k * chunks);
    let c = k / p.kg;

    // The chunk's taps: offsets from the window origin, and whether the tap exists.
    var di: array<i32, TAPS>;
    var dj: array<i32, TAPS>;
    for (var t = 0u; t < TAPS; t++) {
        let tap = min(chunk * TAPS + t, taps - 1u);
        di[t] = i32((tap / p.kw) * p.dil_h);
        dj[t] = i32((tap % p.kw) * p.dil_w);
    }

    let plane = p.oh * p.ow;
    let count = p.n * plane;
    let r0 = split * p.split_len;
    let r1 = min(r0 + p.split_len, count);
    var acc: array<f32, TAPS>;
    for (var t = 0u; t < TAPS; t++) {
        acc[t] = 0.0;
    }
    for (var r = r0 + lid; r < r1; r += WG) {
        let ow = r % p.ow;
        let oh = (r / p.ow) % p.oh;
        let n = r / plane;
        let dyv = dy[p.dy_off + (n * p.k + k) * plane + oh * p.ow + ow];
        let ih0 = i32(oh * p.stride_h) - i32(p.pad_top);
        let iw0 = i32(ow * p.stride_w) - i32(p.pad_left);
        let x_plane = p.x_off + (n * p.c + c) * p.h * p.w;
        for (var t = 0u; t < TAPS; t++) {
            let ih = ih0 + di[t];
            let iw = iw0 + dj[t];
            // A tap in the padding multiplies a zero (so a NaN or Inf in dy propagates, as in
            // PyTorch).
            var xv = 0.0;
            if (ih >= 0 && ih < i32(p.h) && iw >= 0 && iw < i32(p.w)) {
                xv = x[x_plane + u32(ih) * p.w + u32(iw)];
            }
            acc[t] += xv * dyv;
        }
    }
    let elems = p.k * taps;
    for (var t = 0u; t < TAPS; t++) {
        sums[lid] = acc[t];
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if (lid < s) {
                sums[lid] += sums[lid + s];
            }
            workgroupBarrier();
        }
        let tap = chunk * TAPS + t;
        if (lid == 0u && tap < taps) {
            partial[split * elems + k * taps + tap] = sums[0];
        }
        workgroupBarrier();
    }
}
