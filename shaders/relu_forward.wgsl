// ReLU forward: y = x where x > 0, else 0; NaN passes through (as in PyTorch). One invocation
// per element.

struct Params {
    total: u32, a_off: u32, b_off: u32, out_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

override WG: u32 = 64u;

// NaN test that survives fast-math compilers.
fn is_nan(v: f32) -> bool {
    let b = bitcast<u32>(v);
    return (b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= p.total) {
        return;
    }
    let v = x[p.a_off + i];
    var out = 0.0;
    if (v > 0.0 || is_nan(v)) {
        out = v;
    }
    y[p.out_off + i] = out;
}
