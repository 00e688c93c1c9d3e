// Softmax cross-entropy, mean over the batch, and its gradient, in one workgroup: invocation t
// handles rows t, t + WG, ...; for each it takes the row's max m, s = sum exp(z - m), the loss
// m + log(s) - z[label] (log-sum-exp, stable for any logit size) and the gradient row
// (exp(z - m) / s - onehot) / rows, times p.scale (the loss scale of mixed-precision training;
// not applied at 1.0). The row losses are summed with a fixed tree, so the loss is the same
// on every run. A label >= cols makes its row's loss and gradient NaN.

// #include lib/rows_params.wgsl
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> dlogits: array<f32>;

const WG: u32 = 64u;
var<workgroup> sums: array<f32, WG>;
// Rows with a bad label, counted apart from the sums so that fast-math cannot lose the NaN.
var<workgroup> bad: array<u32, WG>;

fn is_nan(v: f32) -> bool {
    let b = bitcast<u32>(v);
    return (b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u;
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    // NaN and -inf through vars: WGSL rejects a constant expression that is not finite
    // (Chromium's Tint refuses `bitcast<f32>(0x7fc00000u)`; naga allows it).
    var special_bits = vec2<u32>(0x7fc00000u, 0xff800000u);
    let nan = bitcast<f32>(special_bits.x);
    let inv_rows = 1.0 / f32(p.rows);
    var acc = 0.0;
    var bad_rows = 0u;
    for (var r = lid; r < p.rows; r += WG) {
        let base = r * p.cols;
        var m = bitcast<f32>(special_bits.y); // -inf
        for (var c = 0u; c < p.cols; c++) {
            let z = logits[base + c];
            if (z > m || is_nan(z)) {
                m = z;
            }
        }
        var s = 0.0;
        for (var c = 0u; c < p.cols; c++) {
            s += exp(logits[base + c] - m);
        }
        let label = labels[r];
        if (label >= p.cols) {
            bad_rows += 1u;
            for (var c = 0u; c < p.cols; c++) {
                dlogits[base + c] = nan;
            }
            continue;
        }
        acc += m + log(s) - logits[base + label];
        for (var c = 0u; c < p.cols; c++) {
            var g = exp(logits[base + c] - m) / s;
            if (c == label) {
                g -= 1.0;
            }
            var d = g * inv_rows;
            if (p.scale != 1.0) {
                d *= p.scale;
            }
            dlogits[base + c] = d;
        }
    }
    sums[lid] = acc;
    bad[lid] = bad_rows;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            sums[lid] += sums[lid + s];
            bad[lid] += bad[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        var l = sums[0] * inv_rows;
        if (bad[0] != 0u) {
            l = nan;
        }
        loss[0] = l;
    }
}
