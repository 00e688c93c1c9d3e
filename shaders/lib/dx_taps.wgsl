// dx's tap walk (the transposed convolution by index arithmetic, the stride dilation never
// built): the dy row that kernel tap row i reaches from padded input row ph, and the dy column
// that tap column j reaches from padded input column pw; -1 where the division by the stride is
// not exact or the position falls outside dy. Needs lib/conv_params.wgsl.
fn dx_tap_row(ph: u32, i: u32) -> i32 {
    let th = i32(ph) - i32(i * p.dil_h);
    if (th < 0 || u32(th) % p.stride_h != 0u) {
        return -1;
    }
    let oh = u32(th) / p.stride_h;
    if (oh >= p.oh) {
        return -1;
    }
    return i32(oh);
}

fn dx_tap_col(pw: u32, j: u32) -> i32 {
    let tw = i32(pw) - i32(j * p.dil_w);
    if (tw < 0 || u32(tw) % p.stride_w != 0u) {
        return -1;
    }
    let ow = u32(tw) / p.stride_w;
    if (ow >= p.ow) {
        return -1;
    }
    return i32(ow);
}
