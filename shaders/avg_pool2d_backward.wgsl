// avg-pool backward as a gather: one invocation per input element, adding dy / divisor of every
// window that covers it, in output order (no atomics).

struct Params {
    planes: u32, h: u32, w: u32, oh: u32,
    ow: u32, kh: u32, kw: u32, stride_h: u32,
    stride_w: u32, pad_h: u32, pad_w: u32, dil_h: u32,
    dil_w: u32, count_include_pad: u32, in_off: u32, idx_off: u32,
    out_off: u32, total: u32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;

override WG: u32 = 64u;

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

// Windows o with o*s - pad <= i < o*s - pad + k, clipped to [0, out).
fn window_range(i: u32, pad: u32, k: u32, s: u32, out: u32) -> vec2<u32> {
    let hi = min((i + pad) / s + 1u, out);
    var lo = 0u;
    if (i + pad >= k) {
        lo = (i + pad - k) / s + 1u;
    }
    return vec2<u32>(lo, max(lo, hi));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = (wid.x + wid.y * nwg.x) * WG + lid;
    if (idx >= p.total) {
        return;
    }
    let iw = idx % p.w;
    let t = idx / p.w;
    let ih = t % p.h;
    let plane = t / p.h;
    let rh = window_range(ih, p.pad_h, p.kh, p.stride_h, p.oh);
    let rw = window_range(iw, p.pad_w, p.kw, p.stride_w, p.ow);
    let base = p.in_off + plane * p.oh * p.ow;
    var acc = 0.0;
    for (var oh = rh.x; oh < rh.y; oh++) {
        for (var ow = rw.x; ow < rw.y; ow++) {
            acc += dy[base + oh * p.ow + ow] / divisor(oh, ow);
        }
    }
    dx[p.out_off + idx] = acc;
}
