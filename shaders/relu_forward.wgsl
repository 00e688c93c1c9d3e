// ReLU forward: y = x where x > 0, else 0; NaN passes through (as in PyTorch). One invocation
// per element.

// #include lib/per_element.wgsl

// #include lib/elt_params.wgsl
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// NaN test that survives fast-math compilers.
fn is_nan(v: f32) -> bool {
    let b = bitcast<u32>(v);
    return (b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u;
}

fn element(i: u32) {
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
