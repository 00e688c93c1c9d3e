// Winograd F(2x2, 3x3), filter transform: U = G g G^T for every (output channel, input channel
// of its group) pair, one invocation each, G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2],
// [0, 0, 1]]. Written as U[xi][o][i]: for each xi and group, the [out_cg, in_cg] matrix the
// batched GEMM multiplies.

// #include lib/winograd_params.wgsl

@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> u: array<f32>;

// #include lib/per_element.wgsl

fn element(idx: u32) {
    if (idx >= p.total) {
        return;
    }
    let o = idx / p.in_cg;
    let i = idx % p.in_cg;
    var g: array<f32, 9>;
    for (var a = 0u; a < 3u; a++) {
        for (var b = 0u; b < 3u; b++) {
            if (p.flip == 0u) {
                g[a * 3u + b] = w[(o * p.in_cg + i) * 9u + a * 3u + b];
            } else {
                // dx: w is [groups * in_cg, out_cg, 3, 3]; tap (a, b) is w's (2 - a, 2 - b).
                let grp = o / p.out_cg;
                let ol = o % p.out_cg;
                g[a * 3u + b] = w[((grp * p.in_cg + i) * p.out_cg + ol) * 9u + (2u - a) * 3u + 2u - b];
            }
        }
    }
    // t = G g (4 x 3), then t G^T (4 x 4).
    var t: array<f32, 12>;
    for (var b = 0u; b < 3u; b++) {
        let g0 = g[b];
        let g1 = g[3u + b];
        let g2 = g[6u + b];
        t[b] = g0;
        t[3u + b] = 0.5 * (g0 + g1 + g2);
        t[6u + b] = 0.5 * (g0 - g1 + g2);
        t[9u + b] = g2;
    }
    let plane = p.out_c * p.in_cg;
    for (var r = 0u; r < 4u; r++) {
        let t0 = t[r * 3u];
        let t1 = t[r * 3u + 1u];
        let t2 = t[r * 3u + 2u];
        let row = array<f32, 4>(t0, 0.5 * (t0 + t1 + t2), 0.5 * (t0 - t1 + t2), t2);
        for (var c = 0u; c < 4u; c++) {
            u[(r * 4u + c) * plane + idx] = row[c];
        }
    }
}
