// max-pool backward as a gather: one invocation per input element dx[plane, ih, iw], summing dy
// over the windows that can contain the element and whose index names it, in output order. No
// two invocations write the same element, so overlapping windows need no atomics.

struct Params {
    planes: u32, h: u32, w: u32, oh: u32,
    ow: u32, kh: u32, kw: u32, stride_h: u32,
    stride_w: u32, pad_h: u32, pad_w: u32, dil_h: u32,
    dil_w: u32, count_include_pad: u32, in_off: u32, idx_off: u32,
    out_off: u32, total: u32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> indices: array<u32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

override WG: u32 = 64u;

// Output windows o whose span [o*s - pad, o*s - pad + (k-1)*dil] contains position i:
// o in [ceil((i + pad - (k-1)*dil) / s), floor((i + pad) / s)], clipped to [0, out).
fn window_range(i: u32, pad: u32, k: u32, dil: u32, s: u32, out: u32) -> vec2<u32> {
    let reach = (k - 1u) * dil;
    let hi = min((i + pad) / s + 1u, out);
    var lo = 0u;
    if (i + pad > reach) {
        lo = (i + pad - reach + s - 1u) / s;
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
    let me = ih * p.w + iw;

    let rh = window_range(ih, p.pad_h, p.kh, p.dil_h, p.stride_h, p.oh);
    let rw = window_range(iw, p.pad_w, p.kw, p.dil_w, p.stride_w, p.ow);
    let base = plane * p.oh * p.ow;
    var acc = 0.0;
    for (var oh = rh.x; oh < rh.y; oh++) {
        for (var ow = rw.x; ow < rw.y; ow++) {
            let o = base + oh * p.ow + ow;
            if (indices[p.idx_off + o] == me) {
                acc += dy[p.in_off + o];
            }
        }
    }
    dx[p.out_off + idx] = acc;
}
