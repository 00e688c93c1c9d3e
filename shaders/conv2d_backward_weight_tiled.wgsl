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

// Where a workgroup's partial dW tile goes: its first output channel k0 and tap r0t, group,
// the invocation's block position, and the split's first element.
struct DwTile { k0: u32, r0t: u32, g: u32, tx: u32, ty: u32, base: u32 }

// Stores block row i of the invocation: lo holds taps 4 * ty + {0..3}, hi (TN = 8) the same
// taps of the tile's right half.
fn store_row(t: DwTile, i: u32, lo: vec4<f32>, hi: vec4<f32>) {
    let k = t.k0 + block_row(i, t.tx);
    if (k >= p.kg) {
        return;
    }
    let at = t.base + (t.g * p.kg + k) * p.reduce;
    store_cols(t, at, 0u, lo);
    if (TN == 8u) {
        store_cols(t, at, 1u, hi);
    }
}

fn store_cols(t: DwTile, at: u32, jj: u32, v: vec4<f32>) {
    for (var cc = 0u; cc < 4u; cc++) {
        let r = t.r0t + block_col(jj, cc, t.ty);
        if (r < p.reduce) {
            partial[at + r] = v[cc];
        }
    }
}

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

    // The block's rows, each with constant indices into acc (see lib/gemm_tile.wgsl).
    let t = DwTile(k0, r0t, g, tx, ty, id.split * p.k * r_count);
    store_row(t, 0u, acc[0], acc[1]);
    store_row(t, 1u, acc[2], acc[3]);
    store_row(t, 2u, acc[4], acc[5]);
    store_row(t, 3u, acc[6], acc[7]);
    if (TM == 8u) {
        store_row(t, 4u, acc[8], acc[9]);
        store_row(t, 5u, acc[10], acc[11]);
        store_row(t, 6u, acc[12], acc[13]);
        store_row(t, 7u, acc[14], acc[15]);
    }
}
