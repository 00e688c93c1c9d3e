// avg-pool forward: one invocation per output element; zero padding; the divisor follows
// PyTorch: with count_include_pad the window clipped to the padded input, otherwise the number
// of input elements in the window.

struct Params {
    planes: u32, h: u32, w: u32, oh: u32,
    ow: u32, kh: u32, kw: u32, stride_h: u32,
    stride_w: u32, pad_h: u32, pad_w: u32, dil_h: u32,
    dil_w: u32, count_include_pad: u32, in_off: u32, idx_off: u32,
    out_off: u32, total: u32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

override WG: u32 = 64u;

// (start, end, span): the window clipped to the input, and its length clipped to the padded
// input.
fn window(o: u32, s: u32, pad: u32, k: u32, len: u32) -> vec3<u32> {
    let start = i32(o * s) - i32(pad);
    let end = min(start + i32(k), i32(len + pad));
    let span = u32(end - start);
    return vec3<u32>(u32(max(start, 0)), u32(min(end, i32(len))), span);
}

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

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = (wid.x + wid.y * nwg.x) * WG + lid;
    if (idx >= p.total) {
        return;
    }
    let ow = idx % p.ow;
    let t = idx / p.ow;
    let oh = t % p.oh;
    let plane = t / p.oh;
    let wh = window(oh, p.stride_h, p.pad_h, p.kh, p.h);
    let ww = window(ow, p.stride_w, p.pad_w, p.kw, p.w);
    let base = p.in_off + plane * p.h * p.w;
    var sum = 0.0;
    for (var ih = wh.x; ih < wh.y; ih++) {
        for (var iw = ww.x; iw < ww.y; iw++) {
            sum += x[base + ih * p.w + iw];
        }
    }
    y[p.out_off + idx] = sum / divisor(oh, ow);
}
