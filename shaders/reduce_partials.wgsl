// Second pass of the dW and db reductions: out[e] (+)= sum over s of partial[s * elems + e],
// added in split order so the result is the same on every run.

// #include lib/per_element.wgsl

struct Params {
    elems: u32, splits: u32, accumulate: u32, out_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> partial: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

fn element(e: u32) {
    if (e >= p.elems) {
        return;
    }
    var acc = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        acc += partial[s * p.elems + e];
    }
    if (p.accumulate != 0u) {
        acc = out[p.out_off + e] + acc;
    }
    out[p.out_off + e] = acc;
}
