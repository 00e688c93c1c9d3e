// avg-pool forward: one invocation per output element; zero padding; the divisor follows
// PyTorch: with count_include_pad the window clipped to the padded input, otherwise the number
// of input elements in the window.

// #include lib/pool_params.wgsl
// #include lib/per_element.wgsl
// #include lib/avg_window.wgsl
// #include lib/elem.wgsl

@group(0) @binding(1) var<storage, read> x: array<Elem>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

fn element(idx: u32) {
    if (idx >= p.total) {
        return;
    }
    let ow = idx % p.ow;
    let t = idx / p.ow;
    let oh = p.row0 + t % p.rows;
    let plane = t / p.rows;
    let wh = window(oh, p.stride_h, p.pad_h, p.kh, p.h);
    let ww = window(ow, p.stride_w, p.pad_w, p.kw, p.w);
    let base = p.in_off + plane * p.h * p.w;
    var sum = 0.0;
    for (var ih = wh.x; ih < wh.y; ih++) {
        for (var iw = ww.x; iw < ww.y; iw++) {
            let i = base + ih * p.w + iw;
            sum += elem_at(x[elem_word(i)], i);
        }
    }
    y[p.out_off + idx] = sum / divisor(oh, ow);
}
