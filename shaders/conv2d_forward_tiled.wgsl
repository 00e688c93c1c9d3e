// conv2d forward as an implicit GEMM: Y[m, k] = sum_r A[m, r] * B[r, k] per group, with
//   m = (n, oh, ow) an output pixel, k an output channel of the group, r = (c, i, j) a kernel tap;
//   A[m, r] = x[n, g*cg + c, oh*sh - pt + i*dh, ow*sw - pl + j*dw] (0 in the padding),
//   B[r, k] = w[g*kg + k, c, i, j].
// A workgroup computes a BM x BN tile of Y, stepping through r BK at a time: it stages the A and
// B slices in workgroup memory, then each invocation accumulates a TM x TN register block
// (TM, TN in {4, 8}) as vec4 rows: rows 4*tx + {0..3} (and BM/2 + ... when TM = 8), columns
// likewise. The r -> (c, i, j) decomposition comes from a small table (x offset, row and column
// shift of each tap) so no division happens inside the reduction loop. Tile sizes are pipeline
// overrides chosen by the host from the adapter's limits.

struct Params {
    n: u32, c: u32, h: u32, w: u32,
    k: u32, kh: u32, kw: u32, groups: u32,
    oh: u32, ow: u32, cg: u32, kg: u32,
    stride_h: u32, stride_w: u32, dil_h: u32, dil_w: u32,
    pad_top: u32, pad_left: u32, has_bias: u32, accumulate: u32,
    x_off: u32, w_off: u32, b_off: u32, dy_off: u32,
    out_off: u32, total: u32, splits: u32, split_len: u32,
    tiles_m: u32, tiles_n: u32, reduce: u32, _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
// Per tap r of one group: (offset of x[c, i*dh, j*dw] from x[0, 0, 0], i*dh, j*dw, unused).
@group(0) @binding(4) var<storage, read> taps: array<vec4<i32>>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

override BM: u32 = 64u;
override BN: u32 = 64u;
override BK: u32 = 8u;
override TM: u32 = 4u;
override TN: u32 = 4u;
override WG: u32 = (BM / TM) * (BN / TN);

var<workgroup> a_tile: array<f32, BK * BM>;
var<workgroup> b_tile: array<f32, BK * BN>;

fn load4(base: u32) -> vec4<f32> {
    return vec4<f32>(a_tile[base], a_tile[base + 1u], a_tile[base + 2u], a_tile[base + 3u]);
}

fn load4b(base: u32) -> vec4<f32> {
    return vec4<f32>(b_tile[base], b_tile[base + 1u], b_tile[base + 2u], b_tile[base + 3u]);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let tile = wid.x + wid.y * nwg.x;
    if (tile >= p.total) {
        return;
    }
    let tm_ = tile % p.tiles_m;
    let tn_ = (tile / p.tiles_m) % p.tiles_n;
    let g = tile / (p.tiles_m * p.tiles_n);
    let m0 = tm_ * BM;
    let k0 = tn_ * BN;
    let plane = p.oh * p.ow;
    let m_count = p.n * plane;
    let r_count = p.reduce;

    // The A row this invocation loads is fixed for the whole tile (WG is a multiple of BM).
    let ml = tid % BM;
    let m = m0 + ml;
    let m_ok = m < m_count;
    let mm = min(m, m_count - 1u);
    let an = mm / plane;
    let aoh = (mm % plane) / p.ow;
    let aow = mm % p.ow;
    let ih0 = i32(aoh * p.stride_h) - i32(p.pad_top);
    let iw0 = i32(aow * p.stride_w) - i32(p.pad_left);
    let x_base = i32(p.x_off + (an * p.c + g * p.cg) * p.h * p.w) + ih0 * i32(p.w) + iw0;
    let w_base = p.w_off + (g * p.kg + k0) * r_count;

    let tx = tid % (BM / TM);
    let ty = tid / (BM / TM);
    // acc[2 * i + jj] holds row i (of TM), columns 4 * jj .. 4 * jj + 3 (of TN).
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    for (var r0 = 0u; r0 < r_count; r0 += BK) {
        for (var q = tid / BM; q < BK; q += WG / BM) {
            let r = r0 + q;
            var v = 0.0;
            if (m_ok && r < r_count) {
                let t = taps[r];
                let ih = ih0 + t.y;
                let iw = iw0 + t.z;
                if (ih >= 0 && ih < i32(p.h) && iw >= 0 && iw < i32(p.w)) {
                    v = x[x_base + t.x];
                }
            }
            a_tile[q * BM + ml] = v;
        }
        for (var e = tid; e < BK * BN; e += WG) {
            let rl = e % BK;
            let kl = e / BK;
            let r = r0 + rl;
            var v = 0.0;
            if (r < r_count && k0 + kl < p.kg) {
                v = wt[w_base + kl * r_count + r];
            }
            b_tile[rl * BN + kl] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let b0 = load4b(kk * BN + 4u * ty);
            var b1 = vec4<f32>(0.0);
            if (TN == 8u) {
                b1 = load4b(kk * BN + BN / 2u + 4u * ty);
            }
            for (var half = 0u; half < TM / 4u; half++) {
                let a = load4(kk * BM + half * (BM / 2u) + 4u * tx);
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

    for (var i = 0u; i < TM; i++) {
        // Row i of the block: 4 * tx + i % 4, in the upper or lower half of the tile.
        let om = m0 + (i / 4u) * (BM / 2u) + 4u * tx + i % 4u;
        if (om >= m_count) {
            continue;
        }
        let on = om / plane;
        let opix = om % plane;
        for (var jj = 0u; jj < TN / 4u; jj++) {
            let v = acc[2u * i + jj];
            for (var c = 0u; c < 4u; c++) {
                let k = k0 + jj * (BN / 2u) + 4u * ty + c;
                if (k >= p.kg) {
                    continue;
                }
                let kglob = g * p.kg + k;
                var o = v[c];
                if (p.has_bias != 0u) {
                    o += bias[p.b_off + kglob];
                }
                y[p.out_off + (on * p.k + kglob) * plane + opix] = o;
            }
        }
    }
}
