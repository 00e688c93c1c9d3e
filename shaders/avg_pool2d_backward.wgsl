// avg-pool backward as a gather: one invocation per input element, adding dy / divisor of every
// window that covers it, in output order (no atomics).

// #include lib/pool_params.wgsl
// #include lib/per_element.wgsl
// #include lib/avg_window.wgsl
// #include lib/pool_window.wgsl
// #include lib/elem.wgsl

@group(0) @binding(1) var<storage, read> dy: array<Elem>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;

fn element(idx: u32) {
    if (idx >= p.total) {
        return;
    }
    let iw = idx % p.w;
    let t = idx / p.w;
    let ih = p.row0 + t % p.rows;
    let plane = t / p.rows;
    let rh = window_range(ih, p.pad_h, p.kh, p.dil_h, p.stride_h, p.oh);
    let rw = window_range(iw, p.pad_w, p.kw, p.dil_w, p.stride_w, p.ow);
    let base = p.in_off + plane * p.oh * p.ow;
    var acc = 0.0;
    for (var oh = rh.x; oh < rh.y; oh++) {
        for (var ow = rw.x; ow < rw.y; ow++) {
            let i = base + oh * p.ow + ow;
            acc += elem_at(dy[elem_word(i)], i) / divisor(oh, ow);
        }
    }
    dx[p.out_off + idx] = acc;
}
