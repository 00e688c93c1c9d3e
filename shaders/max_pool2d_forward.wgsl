// max-pool forward: one invocation per output element. The window is scanned row-major from its
// first in-bounds element (implicit -inf padding), taking v when v > max or v is NaN, exactly
// PyTorch's scan: ties keep the first maximum, NaN wins (the last NaN), an all -inf window reports
// its first in-bounds element. Indices are flat h * W + w positions in the input plane.

// #include lib/pool_params.wgsl
// #include lib/per_element.wgsl
// #include lib/elem.wgsl

@group(0) @binding(1) var<storage, read> x: array<Elem>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> indices: array<u32>;

// First in-bounds tap of a window starting at `start` (step = dilation).
fn first_tap(start: i32, dil: u32) -> u32 {
    if (start >= 0) {
        return u32(start);
    }
    let back = u32(-start);
    return (back + dil - 1u) / dil * dil - back;
}

// NaN test that survives fast-math compilers: a NaN has all exponent bits set and a nonzero
// mantissa.
fn is_nan(v: f32) -> bool {
    let b = bitcast<u32>(v);
    return (b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u;
}

fn element(idx: u32) {
    if (idx >= p.total) {
        return;
    }
    let ow = idx % p.ow;
    let t = idx / p.ow;
    let oh = p.row0 + t % p.rows;
    let plane = t / p.rows;

    let hs = i32(oh * p.stride_h) - i32(p.pad_h);
    let ws = i32(ow * p.stride_w) - i32(p.pad_w);
    let h_end = u32(min(hs + i32((p.kh - 1u) * p.dil_h + 1u), i32(p.h)));
    let w_end = u32(min(ws + i32((p.kw - 1u) * p.dil_w + 1u), i32(p.w)));
    let h0 = first_tap(hs, p.dil_h);
    let w0 = first_tap(ws, p.dil_w);

    let base = p.in_off + plane * p.h * p.w;
    // -inf, through a var: WGSL rejects a constant expression that is not finite (Chromium's
    // Tint refuses `bitcast<f32>(0xff800000u)`; naga allows it).
    var neg_inf_bits = 0xff800000u;
    var best = bitcast<f32>(neg_inf_bits);
    var at = h0 * p.w + w0;
    for (var ih = h0; ih < h_end; ih += p.dil_h) {
        for (var iw = w0; iw < w_end; iw += p.dil_w) {
            let i = base + ih * p.w + iw;
            let v = elem_at(x[elem_word(i)], i);
            if (v > best || is_nan(v)) {
                best = v;
                at = ih * p.w + iw;
            }
        }
    }
    y[p.out_off + idx] = best;
    indices[p.idx_off + idx] = at;
}
