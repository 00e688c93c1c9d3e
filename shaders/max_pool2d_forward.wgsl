// max-pool forward: one invocation per output element. The window is scanned row-major from its
// first in-bounds element (implicit -inf padding), taking v when v > max or v is NaN, exactly
// PyTorch's scan: ties keep the first maximum, NaN wins (the last NaN), an all -inf window reports
// its first in-bounds element. Indices are flat h * W + w positions in the input plane.

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
@group(0) @binding(3) var<storage, read_write> indices: array<u32>;

override WG: u32 = 64u;

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

    let hs = i32(oh * p.stride_h) - i32(p.pad_h);
    let ws = i32(ow * p.stride_w) - i32(p.pad_w);
    let h_end = u32(min(hs + i32((p.kh - 1u) * p.dil_h + 1u), i32(p.h)));
    let w_end = u32(min(ws + i32((p.kw - 1u) * p.dil_w + 1u), i32(p.w)));
    let h0 = first_tap(hs, p.dil_h);
    let w0 = first_tap(ws, p.dil_w);

    let base = p.in_off + plane * p.h * p.w;
    var best = bitcast<f32>(0xff800000u); // -inf
    var at = h0 * p.w + w0;
    for (var ih = h0; ih < h_end; ih += p.dil_h) {
        for (var iw = w0; iw < w_end; iw += p.dil_w) {
            let v = x[base + ih * p.w + iw];
            if (v > best || is_nan(v)) {
                best = v;
                at = ih * p.w + iw;
            }
        }
    }
    y[p.out_off + idx] = best;
    indices[p.idx_off + idx] = at;
}
