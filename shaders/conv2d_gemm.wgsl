// The implicit-GEMM kernel behind the fast conv2d forward and dx. Per group g it computes
//   OUT[m, col] = bias[col] + sum_r A[m, r] * B[r, col],   m = (n, u, v),
//   A[m, r] = act[n, g*in_cg + q, base_h + u*a_step_h + t*tap_dh, base_w + v*a_step_w + s*tap_dw]
//             (0 outside the activation),
//   B[r, col] = w[g*w_group + col*w_col + w_first + q*w_per_ch + t*w_per_row + s*w_per_col],
// storing OUT[m, col] at out[n, g*out_cg + col, first_h + u*o_step_h, first_w + v*o_step_w].
// The reduction index walks a lattice r = (q, t, s), s fastest, with tap_rows x tap_cols taps
// per channel q: the activation element sits tap_dh * t rows and tap_dw * s columns from the
// tap origin of channel q (act_base(m) + q * in_h * in_w), and the weight at
// w_first + q * w_per_ch + t * w_per_row + s * w_per_col from w[g * w_group + col * w_col].
// The host sets the lattice (no table: a division-free walk, the cheapest per element on CPU
// drivers, where every memory access is a loop over the SIMD lanes):
// - forward: act = x, (q, t, s) = (c, i, j): taps kh x kw, shifts dh, dw, weights
//   (kh*kw, kw, 1, 0), rows/cols = OH/OW, a_step = stride, base = -padding, col = k,
//   w_col = C/g*kh*kw;
// - dx, one dispatch per stride phase (ph, pw): act = dy, (q, t, s) = (k, t, s) over the kernel
//   taps i = i_first + t*step_h that reach the phase's input rows (i*dh = ph mod sh), so the
//   zeros of the stride dilation are never touched: shifts -dlt_h, -dlt_w, weights
//   (C/g*kh*kw, step_h*kw, step_w, i_first*kw + j_first), rows/cols = the phase's input
//   rows/columns, a_step = 1, base = the output row of the phase's first tap, col = c,
//   w_col = kh*kw (the rotated kernel with in/out channels swapped), o_step = stride,
//   first = the phase's first input row.
// When the tiles alone cannot fill the device, the reduction is split (split-K): workgroup
// (tile, split) sums r in [split * split_len, ...) into out[split * out_len + .] of a partial
// buffer, and reduce_partials.wgsl adds the splits in order (deterministic); the bias goes in
// with split 0.
// The tile, the staging arrays and the register-block inner product are lib/gemm_tile.wgsl's;
// the reduction lattice's walk is lib/lattice.wgsl's.

// #include lib/ids.wgsl
// #include lib/gemm_tile.wgsl
// #include lib/lattice.wgsl

struct Params {
    n: u32, rows: u32, cols: u32, groups: u32,
    in_c: u32, in_cg: u32, in_h: u32, in_w: u32,
    a_step_h: u32, a_step_w: u32, base_h: i32, base_w: i32,
    out_c: u32, out_cg: u32, out_h: u32, out_w: u32,
    o_step_h: u32, o_step_w: u32, first_h: u32, first_w: u32,
    reduce: u32, w_group: u32, w_col: u32,
    act_off: u32, w_off: u32, out_off: u32, b_off: u32, has_bias: u32,
    tiles_m: u32, tiles_n: u32, total: u32, splits: u32, split_len: u32, out_len: u32,
    tap_rows: u32, tap_cols: u32, tap_dh: i32, tap_dw: i32,
    w_per_ch: u32, w_per_row: u32, w_per_col: u32, w_first: u32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> act: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// An A row this invocation stages: whether it exists, the activation row and column of its
// tap origin, and the origin's offset.
struct ARow { ok: bool, row0: i32, col0: i32, base: i32 }

// This invocation's A elements of the step at r: element i * RA + j of row j (ml = tid % BM
// + j * WG) and reduction index r + i * SA; the walk wa follows r. A POINTWISE GEMM addresses
// channel r directly.
fn fetch_a(r: u32, r_count: u32, wa: ptr<function, Walk>, rows: ptr<function, array<ARow, 2>>)
           -> array<f32, 16> {
    var v: array<f32, 16>;
    for (var i = 0u; i < NA / RA; i++) {
        let ri = r + i * SA;
        let dr = i32((*wa).t) * p.tap_dh;
        let dc = i32((*wa).s) * p.tap_dw;
        for (var j = 0u; j < RA; j++) {
            let a = (*rows)[j];
            let row = a.row0 + dr;
            let col = a.col0 + dc;
            v[i * RA + j] = 0.0;
            if (POINTWISE) {
                if (a.ok && ri < r_count) {
                    v[i * RA + j] = act[a.base + i32(ri * p.in_h * p.in_w)];
                }
            } else if (a.ok && ri < r_count && row >= 0 && row < i32(p.in_h) && col >= 0
                    && col < i32(p.in_w)) {
                v[i * RA + j] = act[a.base + i32((*wa).ch) + dr * i32(p.in_w) + dc];
            }
        }
        if (!POINTWISE) {
            walk_on(wa, SA, p.in_h * p.in_w, p.tap_rows, p.tap_cols);
        }
    }
    return v;
}

// This invocation's B elements of the step at r: flat tile positions tid + i * WG (row-major
// BK x BN, WG a multiple of BN), so column cl = tid % BN and reduction indices
// r + i * (WG / BN); the walk wb follows r (or, POINTWISE, channel r directly).
fn fetch_b(r: u32, r_count: u32, wb: ptr<function, Walk>, col_ok: bool, w_base: u32)
           -> array<f32, 8> {
    var v: array<f32, 8>;
    for (var i = 0u; i < NB; i++) {
        let ri = r + i * (WG / BN);
        v[i] = 0.0;
        if (POINTWISE) {
            if (col_ok && ri < r_count) {
                v[i] = wt[w_base + ri * p.w_per_ch];
            }
            continue;
        }
        if (col_ok && ri < r_count) {
            v[i] = wt[w_base + (*wb).ch + (*wb).t * p.w_per_row + (*wb).s * p.w_per_col];
        }
        walk_on(wb, WG / BN, p.w_per_ch, p.tap_rows, p.tap_cols);
    }
    return v;
}

// The bias of column col of group g, or 0 (no bias, a later split, or past the group).
fn bias_at(on: bool, g: u32, col: u32) -> f32 {
    if (on && col < p.out_cg) {
        return bias[p.b_off + g * p.out_cg + col];
    }
    return 0.0;
}

// Where a workgroup's output tile goes: its first row and column, group, the invocation's
// block position, the rows' plane and count, and the output's (or the split's) first element.
struct OutTile {
    m0: u32, col0: u32, g: u32, tx: u32, ty: u32, plane: u32, m_count: u32, base: u32,
}

// Stores block row i of the invocation: lo holds columns 4 * ty + {0..3}, hi (TN = 8) the
// same columns of the tile's right half.
fn store_row(t: OutTile, i: u32, lo: vec4<f32>, hi: vec4<f32>) {
    let om = t.m0 + block_row(i, t.tx);
    if (om >= t.m_count) {
        return;
    }
    let on = om / t.plane;
    let orow = p.first_h + p.o_step_h * ((om % t.plane) / p.cols);
    let ocol = p.first_w + p.o_step_w * (om % p.cols);
    let at = t.base + on * p.out_c * p.out_h * p.out_w + orow * p.out_w + ocol;
    store_cols(t, at, 0u, lo);
    if (TN == 8u) {
        store_cols(t, at, 1u, hi);
    }
}

// The four columns of block column jj of one output pixel (element at + channel * plane).
fn store_cols(t: OutTile, at: u32, jj: u32, v: vec4<f32>) {
    for (var cc = 0u; cc < 4u; cc++) {
        let col = t.col0 + block_col(jj, cc, t.ty);
        if (col < p.out_cg) {
            out[at + (t.g * p.out_cg + col) * p.out_h * p.out_w] = v[cc];
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
    let m0 = id.m0;
    let col0 = id.n0;
    let g = id.g;
    let split = id.split;
    let plane = p.rows * p.cols;
    let m_count = p.n * plane;
    let r_begin = split * p.split_len;
    let r_count = min(r_begin + p.split_len, p.reduce);

    // The A rows this invocation loads are fixed for the whole tile.
    var arows: array<ARow, 2>;
    for (var j = 0u; j < RA; j++) {
        let m = m0 + tid % BM + j * WG;
        let mm = min(m, m_count - 1u);
        let an = mm / plane;
        let row0 = p.base_h + i32(((mm % plane) / p.cols) * p.a_step_h);
        let col0a = p.base_w + i32((mm % p.cols) * p.a_step_w);
        let base = i32(p.act_off + (an * p.in_c + g * p.in_cg) * p.in_h * p.in_w)
            + row0 * i32(p.in_w) + col0a;
        arows[j] = ARow(m < m_count, row0, col0a, base);
    }
    // The B column this invocation loads is fixed too (WG is a multiple of BN).
    let cl = tid % BN;
    let col_ok = col0 + cl < p.out_cg;
    let w_base = p.w_off + g * p.w_group + (col0 + cl) * p.w_col + p.w_first;

    let tx = tid % (BM / TM);
    let ty = tid / (BM / TM);
    var acc = zero_block();

    // The bias of this invocation's columns, read up front: reading it in the epilogue's loops
    // made one driver (NVIDIA) keep the accumulators in local memory, 8x slower.
    let bias_on = p.has_bias != 0u && split == 0u;
    let b_lo = vec4<f32>(bias_at(bias_on, g, col0 + block_col(0u, 0u, ty)),
                         bias_at(bias_on, g, col0 + block_col(0u, 1u, ty)),
                         bias_at(bias_on, g, col0 + block_col(0u, 2u, ty)),
                         bias_at(bias_on, g, col0 + block_col(0u, 3u, ty)));
    let b_hi = vec4<f32>(bias_at(bias_on, g, col0 + block_col(1u, 0u, ty)),
                         bias_at(bias_on, g, col0 + block_col(1u, 1u, ty)),
                         bias_at(bias_on, g, col0 + block_col(1u, 2u, ty)),
                         bias_at(bias_on, g, col0 + block_col(1u, 3u, ty)));
    // Register double buffering: the global loads of step r0 + BK are issued before the
    // arithmetic of step r0, so their latency hides behind it.
    let ra = r_begin + tid / BM;
    let rb = r_begin + tid / BN;
    var wa = walk_start(ra, p.in_h * p.in_w, p.tap_rows, p.tap_cols);
    var wb = walk_start(rb, p.w_per_ch, p.tap_rows, p.tap_cols);
    var pa = fetch_a(ra, r_count, &wa, &arows);
    var pb = fetch_b(rb, r_count, &wb, col_ok, w_base);
    for (var r0 = r_begin; r0 < r_count; r0 += BK) {
        for (var i = 0u; i < NA / RA; i++) {
            for (var j = 0u; j < RA; j++) {
                let e = (tid / BM + i * SA) * BM + tid % BM + j * WG;
                a_tile[e / 4u][e % 4u] = pa[i * RA + j];
            }
        }
        for (var i = 0u; i < NB; i++) {
            let e = tid + i * WG;
            b_tile[e / 4u][e % 4u] = pb[i];
        }
        workgroupBarrier();
        if (r0 + BK < r_count) {
            pa = fetch_a(ra + (r0 + BK - r_begin), r_count, &wa, &arows);
            pb = fetch_b(rb + (r0 + BK - r_begin), r_count, &wb, col_ok, w_base);
        }
        multiply_tiles(&acc, tx, ty);
        workgroupBarrier();
    }

    // The block's rows, each with constant indices into acc (see lib/gemm_tile.wgsl).
    let t = OutTile(m0, col0, g, tx, ty, plane, m_count, p.out_off + split * p.out_len);
    store_row(t, 0u, acc[0] + b_lo, acc[1] + b_hi);
    store_row(t, 1u, acc[2] + b_lo, acc[3] + b_hi);
    store_row(t, 2u, acc[4] + b_lo, acc[5] + b_hi);
    store_row(t, 3u, acc[6] + b_lo, acc[7] + b_hi);
    if (TM == 8u) {
        store_row(t, 4u, acc[8] + b_lo, acc[9] + b_hi);
        store_row(t, 5u, acc[10] + b_lo, acc[11] + b_hi);
        store_row(t, 6u, acc[12] + b_lo, acc[13] + b_hi);
        store_row(t, 7u, acc[14] + b_lo, acc[15] + b_hi);
    }
}
