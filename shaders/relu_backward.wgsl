// ReLU backward: dx = dy where the forward input x > 0, else 0 (PyTorch's threshold_backward:
// a NaN input passes no gradient). One invocation per element.

struct Params {
    total: u32, a_off: u32, b_off: u32, out_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= p.total) {
        return;
    }
    var g = 0.0;
    if (x[p.b_off + i] > 0.0) {
        g = dy[p.a_off + i];
    }
    dx[p.out_off + i] = g;
}
