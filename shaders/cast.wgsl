// Gpu::cast: a tensor converted to another dtype (any to any; to its own, a copy), each element
// rounded once to the target with lib/dtype.wgsl's integer conversions, the same bits as the
// host's. SRC and DST are the dtype codes. One invocation per target word: an f32 element, or
// a pair of 16-bit elements, so two invocations never write halves of one word; the upper half
// of an odd-length 16-bit target's last word is kept as it was.

// #include lib/per_element.wgsl
// #include lib/elt_params.wgsl
// #include lib/dtype.wgsl

override SRC: u32 = 0u;
override DST: u32 = 0u;

@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

// Element i of the source window as f32 bits (a_off counts words).
fn load(i: u32) -> u32 {
    if (SRC == DT_F32) {
        return src[p.a_off + i];
    }
    return widen_bits(half_of(src[p.a_off + i / 2u], i), SRC);
}

// Element i of the source as a 16-bit pattern of the target's dtype: the source's own bits when
// the dtypes are the same (a copy keeps every pattern, NaN payloads included).
fn load16(i: u32) -> u32 {
    if (SRC == DST) {
        return half_of(src[p.a_off + i / 2u], i);
    }
    return narrow_bits(load(i), DST);
}

// p.total counts the window's elements; w is a word of the target window.
fn element(w: u32) {
    if (DST == DT_F32) {
        if (w < p.total) {
            dst[p.out_off + w] = load(w);
        }
        return;
    }
    let i = 2u * w;
    if (i >= p.total) {
        return;
    }
    let lo = load16(i);
    var hi = dst[p.out_off + w] >> 16u;
    if (i + 1u < p.total) {
        hi = load16(i + 1u);
    }
    dst[p.out_off + w] = lo | (hi << 16u);
}
