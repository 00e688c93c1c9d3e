// max-pool backward as a gather: one invocation per input element dx[plane, ih, iw], summing dy
// over the windows that can contain the element and whose index names it, in output order. No
// two invocations write the same element, so overlapping windows need no atomics.

// #include lib/pool_params.wgsl
// #include lib/per_element.wgsl
// #include lib/pool_window.wgsl
// #include lib/elem.wgsl

@group(0) @binding(1) var<storage, read> dy: array<Elem>;
@group(0) @binding(2) var<storage, read> indices: array<u32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

fn element(idx: u32) {
    if (idx >= p.total) {
        return;
    }
    let iw = idx % p.w;
    let t = idx / p.w;
    let ih = p.row0 + t % p.rows;
    let plane = t / p.rows;
    let me = ih * p.w + iw;

    let rh = window_range(ih, p.pad_h, p.kh, p.dil_h, p.stride_h, p.oh);
    let rw = window_range(iw, p.pad_w, p.kw, p.dil_w, p.stride_w, p.ow);
    let base = plane * p.oh * p.ow;
    var acc = 0.0;
    for (var oh = rh.x; oh < rh.y; oh++) {
        for (var ow = rw.x; ow < rw.y; ow++) {
            let o = base + oh * p.ow + ow;
            if (indices[p.idx_off + o] == me) {
                let i = p.in_off + o;
                acc += elem_at(dy[elem_word(i)], i);
            }
        }
    }
    dx[p.out_off + idx] = acc;
}
