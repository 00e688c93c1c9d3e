// conv2d forward for depthwise convolutions (one input channel per group, C/g = 1, any channel
// multiplier K/g): one invocation computes a column strip of VW outputs
// y[n, k, oh0 .. oh0 + VW, ow] (consecutive invocations on consecutive columns, so the loads of
// a SIMD group are contiguous). It reads each weight of its channel once for the strip instead
// of once per output, and keeps the strip's sums in registers.
// y = bias[k] + sum over (i, j) of x[n, k / (K/g), oh*sh - pt + i*dh, ow*sw - pl + j*dw] * w[k, 0, i, j]
// summed in the direct kernel's order (i, then j).

// #include lib/conv_params.wgsl
// #include lib/per_element.wgsl

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

// Outputs per invocation (the host's `DEPTHWISE_STRIP`).
const VW: u32 = 8u;

// p.total counts strips: n * k * ceil(oh / VW) * ow.
fn element(idx: u32) {
    if (idx >= p.total) {
        return;
    }
    let strips = (p.oh + VW - 1u) / VW;
    let ow = idx % p.ow;
    var t = idx / p.ow;
    let oh0 = (t % strips) * VW;
    t = t / strips;
    let k = t % p.k;
    let n = t / p.k;
    let x_plane = p.x_off + (n * p.c + k / p.kg) * p.h * p.w;
    let w_base = p.w_off + k * p.kh * p.kw;

    var b = 0.0;
    if (p.has_bias != 0u) {
        b = bias[p.b_off + k];
    }
    var acc: array<f32, VW>;
    for (var v = 0u; v < VW; v++) {
        acc[v] = b;
    }
    let ih0 = i32(oh0 * p.stride_h) - i32(p.pad_top);
    let iw0 = i32(ow * p.stride_w) - i32(p.pad_left);
    // Taps in the padding multiply a zero, as in the direct kernel (a NaN or Inf weight
    // poisons every output of its channel).
    for (var i = 0u; i < p.kh; i++) {
        let ihi = ih0 + i32(i * p.dil_h);
        for (var j = 0u; j < p.kw; j++) {
            let wv = wt[w_base + i * p.kw + j];
            let iw = iw0 + i32(j * p.dil_w);
            let col_in = iw >= 0 && iw < i32(p.w);
            for (var v = 0u; v < VW; v++) {
                let ih = ihi + i32(v * p.stride_h);
                let ok = col_in && ih >= 0 && ih < i32(p.h);
                let xv = x[select(x_plane, x_plane + u32(max(ih, 0)) * p.w + u32(max(iw, 0)), ok)];
                acc[v] += select(0.0, xv, ok) * wv;
            }
        }
    }
    let out = p.out_off + (n * p.k + k) * p.oh * p.ow + ow;
    for (var v = 0u; v < VW; v++) {
        if (oh0 + v < p.oh) {
            y[out + (oh0 + v) * p.ow] = acc[v];
        }
    }
}
