// Winograd F(2x2, 3x3), output transform: Y = A^T m A of the GEMM's 16 products m of every
// tile, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], plus the bias, into the tile's 2 x 2 outputs
// (those inside the plane); added to the output when accumulating. One invocation per tile,
// output channel and sample.

// #include lib/winograd_params.wgsl

@group(0) @binding(1) var<storage, read> m: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// #include lib/per_element.wgsl

fn element(idx: u32) {
    if (idx >= p.total) {
        return;
    }
    let tw = idx % p.tiles_w;
    let th = (idx / p.tiles_w) % p.tiles_h;
    let o = (idx / (p.tiles_w * p.tiles_h)) % p.out_c;
    let n = idx / (p.tiles_w * p.tiles_h * p.out_c);
    let tile = (n * p.tiles_h + th) * p.tiles_w + tw;
    let stride = p.out_c * p.tiles;
    let at = o * p.tiles + tile;
    // t = A^T m (2 x 4), then t A (2 x 2).
    var t: array<f32, 8>;
    for (var b = 0u; b < 4u; b++) {
        let m0 = m[b * stride + at];
        let m1 = m[(4u + b) * stride + at];
        let m2 = m[(8u + b) * stride + at];
        let m3 = m[(12u + b) * stride + at];
        t[b] = m0 + m1 + m2;
        t[4u + b] = m1 - m2 - m3;
    }
    var b0 = 0.0;
    if (p.has_bias != 0u) {
        b0 = bias[o];
    }
    let plane = p.out_off + (n * p.out_c + o) * p.out_h * p.out_w;
    for (var a = 0u; a < 2u; a++) {
        let t0 = t[a * 4u];
        let t1 = t[a * 4u + 1u];
        let t2 = t[a * 4u + 2u];
        let t3 = t[a * 4u + 3u];
        let pair = array<f32, 2>(t0 + t1 + t2 + b0, t1 - t2 - t3 + b0);
        let r = th * 2u + a;
        for (var b = 0u; b < 2u; b++) {
            let s = tw * 2u + b;
            if (r < p.out_h && s < p.out_w) {
                let at_y = plane + r * p.out_w + s;
                if (p.accumulate != 0u) {
                    y[at_y] = y[at_y] + pair[b];
                } else {
                    y[at_y] = pair[b];
                }
            }
        }
    }
}
