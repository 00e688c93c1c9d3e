// Winograd F(2x2, 3x3), input transform: V = B^T d B for every 4 x 4 input patch d (one per
// 2 x 2 output tile, channel and sample), one invocation each, B^T = [[1, 0, -1, 0],
// [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]. Written as V[xi][c][tile]: the GEMM's
// [in_cg, tiles] matrices, one per xi and group.

// #include lib/winograd_params.wgsl

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> v: array<f32>;

// #include lib/per_element.wgsl

fn element(idx: u32) {
    if (idx >= p.total) {
        return;
    }
    let tw = idx % p.tiles_w;
    let th = (idx / p.tiles_w) % p.tiles_h;
    let c = (idx / (p.tiles_w * p.tiles_h)) % p.in_c;
    let n = idx / (p.tiles_w * p.tiles_h * p.in_c);
    let r0 = i32(th * 2u) + p.base_h;
    let s0 = i32(tw * 2u) + p.base_w;
    let plane = p.in_off + (n * p.in_c + c) * p.in_h * p.in_w;
    var d: array<f32, 16>;
    for (var a = 0; a < 4; a++) {
        for (var b = 0; b < 4; b++) {
            let r = r0 + a;
            let s = s0 + b;
            var val = 0.0;
            if (r >= 0 && r < i32(p.in_h) && s >= 0 && s < i32(p.in_w)) {
                val = x[plane + u32(r) * p.in_w + u32(s)];
            }
            d[a * 4 + b] = val;
        }
    }
    // t = B^T d, then t B.
    var t: array<f32, 16>;
    for (var b = 0u; b < 4u; b++) {
        let d0 = d[b];
        let d1 = d[4u + b];
        let d2 = d[8u + b];
        let d3 = d[12u + b];
        t[b] = d0 - d2;
        t[4u + b] = d1 + d2;
        t[8u + b] = d2 - d1;
        t[12u + b] = d1 - d3;
    }
    let tile = (n * p.tiles_h + th) * p.tiles_w + tw;
    let stride = p.in_c * p.tiles;
    let at = c * p.tiles + tile;
    for (var a = 0u; a < 4u; a++) {
        let t0 = t[a * 4u];
        let t1 = t[a * 4u + 1u];
        let t2 = t[a * 4u + 2u];
        let t3 = t[a * 4u + 3u];
        v[(a * 4u) * stride + at] = t0 - t2;
        v[(a * 4u + 1u) * stride + at] = t1 + t2;
        v[(a * 4u + 2u) * stride + at] = t2 - t1;
        v[(a * 4u + 3u) * stride + at] = t1 - t3;
    }
}
