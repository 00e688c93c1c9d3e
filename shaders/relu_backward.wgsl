// ReLU backward: dx = dy where the forward input x > 0, else 0 (PyTorch's threshold_backward:
// a NaN input passes no gradient). One invocation per element.

// #include lib/per_element.wgsl

// #include lib/elt_params.wgsl
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

fn element(i: u32) {
    if (i >= p.total) {
        return;
    }
    var g = 0.0;
    if (x[p.b_off + i] > 0.0) {
        g = dy[p.a_off + i];
    }
    dx[p.out_off + i] = g;
}
