// conv2d dx: one invocation per input element dx[n, c, ih, iw], gathering the transposed
// convolution of dy by index arithmetic. The stride-dilated dy is never built: a kernel tap i
// reaches this element from output row oh = (ih + pt - i*dh) / sh only when that division is
// exact, so the zeros the dilation would insert are skipped, never multiplied. Kernel taps are
// walked in reverse (the 180-degree rotation), in/out channels swapped within the group.

// #include lib/conv_params.wgsl
// #include lib/dx_taps.wgsl
// #include lib/per_element.wgsl

@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

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
    let g = c / p.cg;
    let cl = c % p.cg;

    // Position of this element in padded coordinates.
    let ph = ih + p.pad_top;
    let pw = iw + p.pad_left;
    var acc = 0.0;
    for (var kk = 0u; kk < p.kg; kk++) {
        let k = g * p.kg + kk;
        let dy_plane = p.dy_off + (n * p.k + k) * p.oh * p.ow;
        let w_base = p.w_off + ((k * p.cg + cl) * p.kh) * p.kw;
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
                acc += dy[dy_plane + u32(oh) * p.ow + u32(ow)] * wt[w_base + i * p.kw + j];
            }
        }
    }
    dx[p.out_off + idx] = acc;
}
