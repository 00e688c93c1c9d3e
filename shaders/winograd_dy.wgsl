// Winograd F(3x3, 2x2) for dW, gradient transform: U = G g Gᵀ of every 2 x 2 tile g of dy
// (zero past its edges), one invocation per tile, channel and sample, with
// G = [[1, 0], [1/2, 1/2], [1/2, -1/2], [0, -1]] (the sign of its last row matches the input
// transform's Bᵀ, shared with F(2x2, 3x3)). In the dW job dy is the output side: channels
// out_c, rows out_h, columns out_w, at element out_off of its binding. Written as
// U[xi][k][tile], the GEMM's [out_cg, tiles] matrices, one per xi and group.

// #include lib/winograd_params.wgsl

@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> u: array<f32>;

// #include lib/per_element.wgsl

fn element(idx: u32) {
    if (idx >= p.total) {
        return;
    }
    let tw = idx % p.tiles_w;
    let th = (idx / p.tiles_w) % p.tiles_h;
    let k = (idx / (p.tiles_w * p.tiles_h)) % p.out_c;
    let n = idx / (p.tiles_w * p.tiles_h * p.out_c);
    let plane = p.out_off + (n * p.out_c + k) * p.out_h * p.out_w;
    var g: array<f32, 4>;
    for (var a = 0u; a < 2u; a++) {
        for (var b = 0u; b < 2u; b++) {
            let r = th * 2u + a;
            let s = tw * 2u + b;
            var val = 0.0;
            if (r < p.out_h && s < p.out_w) {
                val = dy[plane + r * p.out_w + s];
            }
            g[a * 2u + b] = val;
        }
    }
    // t = G g (4 x 2), then t Gᵀ (4 x 4).
    var t: array<f32, 8>;
    for (var b = 0u; b < 2u; b++) {
        let g0 = g[b];
        let g1 = g[2u + b];
        t[b] = g0;
        t[2u + b] = 0.5 * (g0 + g1);
        t[4u + b] = 0.5 * (g0 - g1);
        t[6u + b] = -g1;
    }
    let tile = (n * p.tiles_h + th) * p.tiles_w + tw;
    let stride = p.out_c * p.tiles;
    let at = k * p.tiles + tile;
    for (var r = 0u; r < 4u; r++) {
        let t0 = t[r * 2u];
        let t1 = t[r * 2u + 1u];
        let row = array<f32, 4>(t0, 0.5 * (t0 + t1), 0.5 * (t0 - t1), -t1);
        for (var c = 0u; c < 4u; c++) {
            u[(r * 4u + c) * stride + at] = row[c];
        }
    }
}
