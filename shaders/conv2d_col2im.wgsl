// conv2d dx of layers with few input channels per group, second pass: the GEMM before it wrote
// dcol[n, (c * kh + i) * kw + j, oh, ow] = sum over k of dy[n, k, oh, ow] * w[k, c, i, j] (the
// kernel taps along its columns, so a 3-channel stem fills its tiles); this gathers, per dx
// element, the taps that reach it (lib/dx_taps.wgsl: tap (i, j) from output (oh, ow) when
// (ih + pad - i * dil) / s is exact and in range). One invocation per dx element, taps in order
// (deterministic); added to dx when accumulating.

// #include lib/conv_params.wgsl
// #include lib/dx_taps.wgsl
// #include lib/per_element.wgsl

@group(0) @binding(1) var<storage, read> dcol: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;

fn element(idx: u32) {
    if (idx >= p.total) {
        return;
    }
    let iw = idx % p.w;
    var t = idx / p.w;
    let ih = t % p.h;
    t = t / p.h;
    let c = t % p.c;
    let n = t / p.c;
    let ph = ih + p.pad_top;
    let pw = iw + p.pad_left;
    let plane = p.oh * p.ow;
    let taps = p.kh * p.kw;
    let base = p.x_off + (n * p.c + c) * taps * plane;
    var acc = 0.0;
    for (var i = 0u; i < p.kh; i++) {
        let oh = dx_tap_row(ph, i);
        if (oh < 0) {
            continue;
        }
        for (var j = 0u; j < p.kw; j++) {
            let ow = dx_tap_col(pw, j);
            if (ow < 0) {
                continue;
            }
            acc += dcol[base + (i * p.kw + j) * plane + u32(oh) * p.ow + u32(ow)];
        }
    }
    let at = p.out_off + idx;
    if (p.accumulate != 0u) {
        dx[at] = dx[at] + acc;
    } else {
        dx[at] = acc;
    }
}
