// avg-pool windows (zero padding, dilation 1), with PyTorch's divisor.

// (start, end, span): window o clipped to the input, and its length clipped to the padded
// input.
fn window(o: u32, s: u32, pad: u32, k: u32, len: u32) -> vec3<u32> {
    let start = i32(o * s) - i32(pad);
    let end = min(start + i32(k), i32(len + pad));
    let span = u32(end - start);
    return vec3<u32>(u32(max(start, 0)), u32(min(end, i32(len))), span);
}

// With count_include_pad the window clipped to the padded input, otherwise the number of input
// elements in it.
fn divisor(oh: u32, ow: u32) -> f32 {
    let wh = window(oh, p.stride_h, p.pad_h, p.kh, p.h);
    let ww = window(ow, p.stride_w, p.pad_w, p.kw, p.w);
    // Multiplied in f32: the product of two window lengths can pass u32 (the reference's
    // divisor is the exact integer, which f32 represents to 24 bits, as here).
    if (p.count_include_pad != 0u) {
        return f32(wh.z) * f32(ww.z);
    }
    return f32(wh.y - wh.x) * f32(ww.y - ww.x);
}
