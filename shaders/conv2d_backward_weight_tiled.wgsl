// conv2d dW as an implicit GEMM with split-K: per group, with k an output channel of the group,
// r = (c, i, j) a kernel tap and m = (n, oh, ow) an output pixel,
//   DW[k, r] = sum_m dy[n, g*kg + k, oh, ow] * x[n, g*cg + c, oh*sh - pt + i*dh, ow*sw - pl + j*dw].
// The reduction over m is cut into `splits` ranges of `split_len`; workgroup (tile, split) writes
// its partial tile to partial[split][g*kg + k][r], and reduce_partials.wgsl adds the splits in
// order: deterministic, no atomics. Each invocation loads the A (dy) and B (x) elements of one m
// per step, decomposing it once. The B columns an invocation stages are the same every step, so
// it walks the tap lattice (c, i, j) to them once, up front (lib/lattice.wgsl, as the forward
// does per step). The tile and the register-block inner product are lib/gemm_tile.wgsl's.

// #include lib/conv_params.wgsl
// #include lib/ids.wgsl
// #include lib/gemm_tile.wgsl
// #include lib/lattice.wgsl

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> partial: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let item = workgroup_item(wid, nwg);
    if (item >= p.total) {
        return;
    }
    let id = tile_id(item, p.tiles_m, p.tiles_n, p.groups);
    let k0 = id.m0;
    let r0t = id.n0;
    let g = id.g;
    let plane = p.oh * p.ow;
    let m_count = p.n * plane;
    let r_count = p.reduce;
    let m_begin = id.split * p.split_len;
    let m_end = min(m_begin + p.split_len, m_count);
    let in_plane = p.h * p.w;

    // This invocation loads column ml (an m) of the A and B slices each step.
    let ml = tid % BK;
    let lane = tid / BK;
    let lanes = WG / BK;
    let tx = tid % (BM / TM);
    let ty = tid / (BM / TM);
    // The taps of the columns r0t + lane + j * lanes this invocation stages (at most 8: the
    // host checks BK * BN / WG <= 8): x offset from the window origin, row and column shift.
    var tap: array<vec3<i32>, 8>;
    var walk = walk_start(r0t + lane, in_plane, p.kh, p.kw);
    for (var j = 0u; j < BN / lanes; j++) {
        let di = i32(walk.t * p.dil_h);
        let dj = i32(walk.s * p.dil_w);
        tap[j] = vec3<i32>(i32(walk.ch) + di * i32(p.w) + dj, di, dj);
        walk_on(&walk, lanes, in_plane, p.kh, p.kw);
    }
    var acc = zero_block();

    for (var mb = m_begin; mb < m_end; mb += BK) {
        let m = mb + ml;
        let m_ok = m < m_end;
        let mm = min(m, m_count - 1u);
        let n = mm / plane;
        let pix = mm % plane;
        let oh = pix / p.ow;
        let ow = pix % p.ow;
        let ih0 = i32(oh * p.stride_h) - i32(p.pad_top);
        let iw0 = i32(ow * p.stride_w) - i32(p.pad_left);
        let x_base = i32(p.x_off + (n * p.c + g * p.cg) * in_plane) + ih0 * i32(p.w) + iw0;
        let dy_base = p.dy_off + (n * p.k + g * p.kg) * plane + pix;
        for (var j = 0u; j < BM / lanes; j++) {
            let kl = lane + j * lanes;
            var v = 0.0;
            if (m_ok && k0 + kl < p.kg) {
                v = dy[dy_base + (k0 + kl) * plane];
            }
            let e = ml * BM + kl;
            a_tile[e / 4u][e % 4u] = v;
        }
        for (var j = 0u; j < BN / lanes; j++) {
            let rl = lane + j * lanes;
            let r = r0t + rl;
            var v = 0.0;
            if (POINTWISE) {
                if (m_ok && r < r_count) {
                    v = x[x_base + i32(r * in_plane)];
                }
            } else if (m_ok && r < r_count) {
                let t = tap[j];
                let ih = ih0 + t.y;
                let iw = iw0 + t.z;
                if (ih >= 0 && ih < i32(p.h) && iw >= 0 && iw < i32(p.w)) {
                    v = x[x_base + t.x];
                }
            }
            let e = ml * BN + rl;
            b_tile[e / 4u][e % 4u] = v;
        }
        workgroupBarrier();
        multiply_tiles(&acc, tx, ty);
        workgroupBarrier();
    }

    let out_base = id.split * p.k * r_count;
    for (var i = 0u; i < TM; i++) {
        let k = k0 + block_row(i, tx);
        if (k >= p.kg) {
            continue;
        }
        for (var jj = 0u; jj < TN / 4u; jj++) {
            let v = acc[2u * i + jj];
            for (var cc = 0u; cc < 4u; cc++) {
                let r = r0t + block_col(jj, cc, ty);
                if (r >= r_count) {
                    continue;
                }
                partial[out_base + (g * p.kg + k) * r_count + r] = v[cc];
            }
        }
    }
}
