// Winograd F(3x3, 2x2) for dW, output transform: dW = Aᵀ m A of the GEMM's 16 sums m of every
// (output channel, input channel of its group) pair, Aᵀ = [[1, 1, 1, 0], [0, 1, -1, 0],
// [0, 1, 1, 1]], into the pair's 3 x 3 taps; added to dW when accumulating (every batch chunk
// after the first). One invocation per pair; M is [xi][out_c][in_cg].

// #include lib/winograd_params.wgsl

@group(0) @binding(1) var<storage, read> m: array<f32>;
@group(0) @binding(2) var<storage, read_write> dw: array<f32>;

// #include lib/per_element.wgsl

fn element(idx: u32) {
    if (idx >= p.total) {
        return;
    }
    let stride = p.out_c * p.in_cg;
    // t = Aᵀ m (3 x 4), then t A (3 x 3).
    var t: array<f32, 12>;
    for (var b = 0u; b < 4u; b++) {
        let m0 = m[b * stride + idx];
        let m1 = m[(4u + b) * stride + idx];
        let m2 = m[(8u + b) * stride + idx];
        let m3 = m[(12u + b) * stride + idx];
        t[b] = m0 + m1 + m2;
        t[4u + b] = m1 - m2;
        t[8u + b] = m1 + m2 + m3;
    }
    for (var a = 0u; a < 3u; a++) {
        let t0 = t[a * 4u];
        let t1 = t[a * 4u + 1u];
        let t2 = t[a * 4u + 2u];
        let t3 = t[a * 4u + 3u];
        let row = array<f32, 3>(t0 + t1 + t2, t1 - t2, t1 + t2 + t3);
        for (var b = 0u; b < 3u; b++) {
            let at = idx * 9u + a * 3u + b;
            if (p.accumulate != 0u) {
                dw[at] = dw[at] + row[b];
            } else {
                dw[at] = row[b];
            }
        }
    }
}
