// conv2d forward, direct: one invocation per output element y[n, k, oh, ow].
// y = bias[k] + sum over (c, i, j) of x[n, g*cg + c, oh*sh - pt + i*dh, ow*sw - pl + j*dw] * w[k, c, i, j]

// #include lib/conv_params.wgsl
// #include lib/per_element.wgsl

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

fn element(idx: u32) {
    if (idx >= p.total) {
        return;
    }
    let ow = idx % p.ow;
    var t = idx / p.ow;
    let oh = t % p.oh;
    t = t / p.oh;
    let k = t % p.k;
    let n = t / p.k;
    let c0 = (k / p.kg) * p.cg;

    var acc = 0.0;
    if (p.has_bias != 0u) {
        acc = bias[p.b_off + k];
    }
    let ih0 = i32(oh * p.stride_h) - i32(p.pad_top);
    let iw0 = i32(ow * p.stride_w) - i32(p.pad_left);
    // Taps in the padding multiply a zero, as PyTorch's zero-padded input does: a NaN or Inf
    // weight then poisons every output of its channel, not only those whose window is inside.
    for (var c = 0u; c < p.cg; c++) {
        let x_plane = p.x_off + ((n * p.c + c0 + c) * p.h) * p.w;
        let w_base = p.w_off + ((k * p.cg + c) * p.kh) * p.kw;
        for (var i = 0u; i < p.kh; i++) {
            let ih = ih0 + i32(i * p.dil_h);
            let row_in = ih >= 0 && ih < i32(p.h);
            for (var j = 0u; j < p.kw; j++) {
                let iw = iw0 + i32(j * p.dil_w);
                var xv = 0.0;
                if (row_in && iw >= 0 && iw < i32(p.w)) {
                    xv = x[x_plane + u32(ih) * p.w + u32(iw)];
                }
                acc += xv * wt[w_base + i * p.kw + j];
            }
        }
    }
    y[p.out_off + idx] = acc;
}
