// conv2d dW for depthwise convolutions (one input channel per group, C/g = 1), first pass: one
// workgroup per (output channel k, chunk of TAPS kernel taps, split). Like the direct kernel it
// strides the reduction over r = (n, oh, ow) in [split * split_len, (split + 1) * split_len)
// across the workgroup's invocations and sums each tap by the same fixed tree in workgroup
// memory (deterministic, no atomics, the direct kernel's sums), but it reads dy[n, k, oh, ow]
// once for all the chunk's taps instead of once per tap. The second pass (reduce_partials.wgsl)
// adds the splits in order.

// #include lib/conv_params.wgsl
// #include lib/ids.wgsl
// #include lib/workgroup_sum.wgsl

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> partial: array<f32>;

const WG: u32 = 64u;
// Kernel taps per workgroup (the host's `DEPTHWISE_TAPS`).
const TAPS: u32 = 9u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let item = workgroup_item(wid, nwg);
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
        let total = workgroup_sum(lid, acc[t]);
        let tap = chunk * TAPS + t;
        if (lid == 0u && tap < taps) {
            partial[split * elems + k * taps + tap] = total;
        }
        // The next tap's sum overwrites `sums`.
        workgroupBarrier();
    }
}
