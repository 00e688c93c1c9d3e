// conv2d dx for depthwise convolutions (one input channel per group, C/g = 1, any channel
// multiplier K/g): one invocation computes a column strip of VW elements
// dx[n, c, ih0 .. ih0 + VW, iw] (consecutive invocations on consecutive columns). Like the direct
// kernel it gathers the transposed convolution: kernel tap (i, j) of output channel k reaches
// dx[n, c, ih, iw] from dy[n, k, (ih + pt - i*dh) / sh, (iw + pl - j*dw) / sw] only when both
// divisions are exact and land inside dy, and is skipped otherwise (the same terms, summed over
// k, then j, then i). Each weight is read once per strip; the strip walks down the rows with the
// row quotient and remainder stepped by one, so the only divisions are one per tap row and one
// per tap column per strip.

// #include lib/conv_params.wgsl
// #include lib/per_element.wgsl

@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

// Elements per invocation (the host's `DEPTHWISE_STRIP`).
const VW: u32 = 8u;

// p.total counts strips: n * c * ceil(h / VW) * w.
fn element(idx: u32) {
    if (idx >= p.total) {
        return;
    }
    let strips = (p.h + VW - 1u) / VW;
    let iw = idx % p.w;
    var t = idx / p.w;
    let ih0 = (t % strips) * VW;
    t = t / strips;
    let c = t % p.c;
    let n = t / p.c;

    var acc: array<f32, VW>;
    for (var v = 0u; v < VW; v++) {
        acc[v] = 0.0;
    }
    // Padded coordinates of the strip's first element.
    let ph0 = ih0 + p.pad_top;
    let pw = i32(iw + p.pad_left);
    for (var kk = 0u; kk < p.kg; kk++) {
        let k = c * p.kg + kk;
        let dy_plane = p.dy_off + (n * p.k + k) * p.oh * p.ow;
        let w_base = p.w_off + k * p.kh * p.kw;
        for (var j = 0u; j < p.kw; j++) {
            let tw = pw - i32(j * p.dil_w);
            if (tw < 0 || u32(tw) % p.stride_w != 0u || u32(tw) / p.stride_w >= p.ow) {
                continue;
            }
            let ow = u32(tw) / p.stride_w;
            for (var i = 0u; i < p.kh; i++) {
                let wv = wt[w_base + i * p.kw + j];
                // Output row (floor quotient) and remainder of the strip's first element
                // ph0 - i*dh, which may be negative, then stepped down the strip. Computed on
                // ph0 - i*dh + lift*sh >= 0: % and / of negative integers differ between
                // shading languages (GLSL leaves them undefined).
                let back = i * p.dil_h;
                let lift = (back + p.stride_h - 1u) / p.stride_h;
                let th = ph0 + lift * p.stride_h - back;
                let sh = i32(p.stride_h);
                var rem = i32(th % p.stride_h);
                var oh = i32(th / p.stride_h) - i32(lift);
                for (var v = 0u; v < VW; v++) {
                    if (rem == 0 && oh >= 0 && oh < i32(p.oh)) {
                        acc[v] += dy[dy_plane + u32(oh) * p.ow + ow] * wv;
                    }
                    rem += 1;
                    if (rem == sh) {
                        rem = 0;
                        oh += 1;
                    }
                }
            }
        }
    }
    let out = p.out_off + (n * p.c + c) * p.h * p.w + iw;
    for (var v = 0u; v < VW; v++) {
        if (ih0 + v < p.h) {
            dx[out + (ih0 + v) * p.w] = acc[v];
        }
    }
}
