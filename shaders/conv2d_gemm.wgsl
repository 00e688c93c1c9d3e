// The implicit-GEMM kernel behind the fast conv2d forward and dx. Per group g it computes
//   OUT[m, col] = bias[col] + sum_r A[m, r] * B[r, col],   m = (n, u, v),
//   A[m, r] = act[n, g*in_cg + ., base_h + u*a_step_h + tab[r].y, base_w + v*a_step_w + tab[r].z]
//             (0 outside the activation), addressed as act_base(m) + tab[r].x,
//   B[r, col] = w[g*w_group + col*w_col + tab[r].w],
// storing OUT[m, col] at out[n, g*out_cg + col, first_h + u*o_step_h, first_w + v*o_step_w].
// The tap table tab[r] = (activation offset, row shift, column shift, weight offset) carries
// the convolution; the host builds it:
// - forward: act = x, r = (c, i, j): (c*H*W + i*dh*W + j*dw, i*dh, j*dw, c*kh*kw + i*kw + j),
//   rows/cols = OH/OW, a_step = stride, base = -padding, col = k, w_col = C/g*kh*kw;
// - dx, one dispatch per stride phase (ph, pw): act = dy, r = (k, t, s) over the kernel taps
//   i = i_first + t*step_h that reach the phase's input rows (i*dh = ph mod sh), so the zeros
//   of the stride dilation are never touched: (k*OH*OW - t*dlt_h*OW - s*dlt_w, -t*dlt_h,
//   -s*dlt_w, k*C/g*kh*kw + i*kw + j), rows/cols = the phase's input rows/columns, a_step = 1,
//   base = the output row of the phase's first tap, col = c, w_col = kh*kw (the rotated kernel
//   with in/out channels swapped), o_step = stride, first = the phase's first input row.
// When the tiles alone cannot fill the device, the reduction is split (split-K): workgroup
// (tile, split) sums r in [split * split_len, ...) into out[split * out_len + .] of a partial
// buffer, and reduce_partials.wgsl adds the splits in order (deterministic); the bias goes in
// with split 0.
// A workgroup computes a BM x BN tile of OUT, stepping through r BK at a time: it stages the A
// and B slices in workgroup memory, then each invocation accumulates a TM x TN register block
// (TM, TN in {4, 8}) as vec4 rows: rows 4*tx + {0..3} (and BM/2 + ... when TM = 8), columns
// likewise. Tile sizes are pipeline overrides chosen by the host from the adapter's limits.

struct Params {
    n: u32, rows: u32, cols: u32, groups: u32,
    in_c: u32, in_cg: u32, in_h: u32, in_w: u32,
    a_step_h: u32, a_step_w: u32, base_h: i32, base_w: i32,
    out_c: u32, out_cg: u32, out_h: u32, out_w: u32,
    o_step_h: u32, o_step_w: u32, first_h: u32, first_w: u32,
    reduce: u32, tab_off: u32, w_group: u32, w_col: u32,
    act_off: u32, w_off: u32, out_off: u32, b_off: u32,
    has_bias: u32, tiles_m: u32, tiles_n: u32, total: u32,
    splits: u32, split_len: u32, out_len: u32, w_r_step: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> act: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> taps: array<vec4<i32>>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

override BM: u32 = 64u;
override BN: u32 = 64u;
override BK: u32 = 8u;
override TM: u32 = 4u;
override TN: u32 = 4u;
override WG: u32 = (BM / TM) * (BN / TN);
// A and B elements each invocation stages per step (at most 8 each; the host checks).
override NA: u32 = BK * BM / WG;
override NB: u32 = BK * BN / WG;
// A 1x1 kernel without padding: the GEMM is plain (A[m, r] = act_base(m) + r * in_h * in_w,
// always in bounds; B[r, col] = w_base + col * w_col + r * w_r_step), no table needed.
override POINTWISE: bool = false;

var<workgroup> a_tile: array<f32, BK * BM>;
var<workgroup> b_tile: array<f32, BK * BN>;

fn load4a(base: u32) -> vec4<f32> {
    return vec4<f32>(a_tile[base], a_tile[base + 1u], a_tile[base + 2u], a_tile[base + 3u]);
}

fn load4b(base: u32) -> vec4<f32> {
    return vec4<f32>(b_tile[base], b_tile[base + 1u], b_tile[base + 2u], b_tile[base + 3u]);
}

// This invocation's A elements of step r0: rows ml = tid % BM, reduction indices
// tid / BM + i * (WG / BM).
fn fetch_a(r0: u32, r_count: u32, tid: u32, m_ok: bool, row0: i32, col0a: i32,
           act_base: i32) -> array<f32, 8> {
    var v: array<f32, 8>;
    for (var i = 0u; i < NA; i++) {
        let r = r0 + tid / BM + i * (WG / BM);
        v[i] = 0.0;
        if (POINTWISE) {
            if (m_ok && r < r_count) {
                v[i] = act[act_base + i32(r * p.in_h * p.in_w)];
            }
        } else if (m_ok && r < r_count) {
            let t = taps[p.tab_off + r];
            let row = row0 + t.y;
            let col = col0a + t.z;
            if (row >= 0 && row < i32(p.in_h) && col >= 0 && col < i32(p.in_w)) {
                v[i] = act[act_base + t.x];
            }
        }
    }
    return v;
}

// This invocation's B elements of step r0: flat tile positions tid + i * WG (row-major
// BK x BN), consecutive invocations on consecutive columns.
fn fetch_b(r0: u32, r_count: u32, tid: u32, col0: u32, w_base: u32) -> array<f32, 8> {
    var v: array<f32, 8>;
    for (var i = 0u; i < NB; i++) {
        let e = tid + i * WG;
        let r = r0 + e / BN;
        let cl = e % BN;
        v[i] = 0.0;
        if (r < r_count && col0 + cl < p.out_cg) {
            if (POINTWISE) {
                v[i] = wt[w_base + cl * p.w_col + r * p.w_r_step];
            } else {
                v[i] = wt[i32(w_base + cl * p.w_col) + taps[p.tab_off + r].w];
            }
        }
    }
    return v;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let item = wid.x + wid.y * nwg.x;
    if (item >= p.total) {
        return;
    }
    let tiles = p.tiles_m * p.tiles_n * p.groups;
    let tile = item % tiles;
    let split = item / tiles;
    let tm_ = tile % p.tiles_m;
    let tn_ = (tile / p.tiles_m) % p.tiles_n;
    let g = tile / (p.tiles_m * p.tiles_n);
    let m0 = tm_ * BM;
    let col0 = tn_ * BN;
    let plane = p.rows * p.cols;
    let m_count = p.n * plane;
    let r_begin = split * p.split_len;
    let r_count = min(r_begin + p.split_len, p.reduce);

    // The A row this invocation loads is fixed for the whole tile (WG is a multiple of BM).
    let ml = tid % BM;
    let m = m0 + ml;
    let m_ok = m < m_count;
    let mm = min(m, m_count - 1u);
    let an = mm / plane;
    let row0 = p.base_h + i32(((mm % plane) / p.cols) * p.a_step_h);
    let col0a = p.base_w + i32((mm % p.cols) * p.a_step_w);
    let act_base = i32(p.act_off + (an * p.in_c + g * p.in_cg) * p.in_h * p.in_w)
        + row0 * i32(p.in_w) + col0a;
    let w_base = p.w_off + g * p.w_group + col0 * p.w_col;

    let tx = tid % (BM / TM);
    let ty = tid / (BM / TM);
    // acc[2 * i + jj] holds block row i (of TM), columns 4 * jj .. 4 * jj + 3 (of TN).
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    // The bias of this invocation's columns, read up front: reading it in the epilogue's loops
    // made one driver (NVIDIA) keep the accumulators in local memory, 8x slower.
    var bvals: array<vec4<f32>, 2>;
    for (var jj = 0u; jj < 2u; jj++) {
        for (var cc = 0u; cc < 4u; cc++) {
            let col = col0 + jj * (BN / 2u) + 4u * ty + cc;
            var bv = 0.0;
            if (p.has_bias != 0u && split == 0u && col < p.out_cg) {
                bv = bias[p.b_off + g * p.out_cg + col];
            }
            bvals[jj][cc] = bv;
        }
    }
    // Register double buffering: the global loads of step r0 + BK are issued before the
    // arithmetic of step r0, so their latency hides behind it.
    var pa = fetch_a(r_begin, r_count, tid, m_ok, row0, col0a, act_base);
    var pb = fetch_b(r_begin, r_count, tid, col0, w_base);
    for (var r0 = r_begin; r0 < r_count; r0 += BK) {
        for (var i = 0u; i < NA; i++) {
            a_tile[(tid / BM + i * (WG / BM)) * BM + ml] = pa[i];
        }
        for (var i = 0u; i < NB; i++) {
            b_tile[tid + i * WG] = pb[i];
        }
        workgroupBarrier();
        if (r0 + BK < r_count) {
            pa = fetch_a(r0 + BK, r_count, tid, m_ok, row0, col0a, act_base);
            pb = fetch_b(r0 + BK, r_count, tid, col0, w_base);
        }
        for (var kk = 0u; kk < BK; kk++) {
            let b0 = load4b(kk * BN + 4u * ty);
            var b1 = vec4<f32>(0.0);
            if (TN == 8u) {
                b1 = load4b(kk * BN + BN / 2u + 4u * ty);
            }
            for (var half = 0u; half < TM / 4u; half++) {
                let a = load4a(kk * BM + half * (BM / 2u) + 4u * tx);
                let i0 = 8u * half;
                acc[i0] = fma(vec4<f32>(a.x), b0, acc[i0]);
                acc[i0 + 2u] = fma(vec4<f32>(a.y), b0, acc[i0 + 2u]);
                acc[i0 + 4u] = fma(vec4<f32>(a.z), b0, acc[i0 + 4u]);
                acc[i0 + 6u] = fma(vec4<f32>(a.w), b0, acc[i0 + 6u]);
                if (TN == 8u) {
                    acc[i0 + 1u] = fma(vec4<f32>(a.x), b1, acc[i0 + 1u]);
                    acc[i0 + 3u] = fma(vec4<f32>(a.y), b1, acc[i0 + 3u]);
                    acc[i0 + 5u] = fma(vec4<f32>(a.z), b1, acc[i0 + 5u]);
                    acc[i0 + 7u] = fma(vec4<f32>(a.w), b1, acc[i0 + 7u]);
                }
            }
        }
        workgroupBarrier();
    }

    let out_plane = p.out_h * p.out_w;
    let out_base = p.out_off + split * p.out_len;
    for (var i = 0u; i < TM; i++) {
        // Block row i: 4 * tx + i % 4, in the upper or lower half of the tile.
        let om = m0 + (i / 4u) * (BM / 2u) + 4u * tx + i % 4u;
        if (om >= m_count) {
            continue;
        }
        let on = om / plane;
        let orow = p.first_h + p.o_step_h * ((om % plane) / p.cols);
        let ocol = p.first_w + p.o_step_w * (om % p.cols);
        let pix = orow * p.out_w + ocol;
        for (var jj = 0u; jj < TN / 4u; jj++) {
            let v = acc[2u * i + jj];
            for (var cc = 0u; cc < 4u; cc++) {
                let col = col0 + jj * (BN / 2u) + 4u * ty + cc;
                if (col >= p.out_cg) {
                    continue;
                }
                let ch = g * p.out_cg + col;
                out[out_base + (on * p.out_c + ch) * out_plane + pix] = v[cc] + bvals[jj][cc];
            }
        }
    }
}
