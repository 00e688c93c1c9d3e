// conv2d dx as an implicit GEMM over the transposed convolution, split by output phase so that
// the zeros of the stride dilation are never touched. For one phase (ph, pw), the input rows
// ih = ih_first + sh * u are reached only by kernel rows i = i_first + step_h * t (those with
// i * dh = ph mod sh), from output rows oh = base_h + u - t * delta_h; likewise for columns.
// Per group, with m = (n, u, v), c an input channel of the group and r = (k, t, s):
//   DX[m, c] = sum_r A[m, r] * B[r, c],
//   A[m, r] = dy[n, g*kg + k, base_h + u - t*delta_h, base_w + v - s*delta_w] (0 outside dy),
//   B[r, c] = w[g*kg + k, c, i_first + t*step_h, j_first + s*step_w]  (the rotated kernel).
// A phase with no taps writes zeros. The r -> (k, t, s) decomposition comes from a table:
// (dy offset, row shift, column shift, weight offset). Same tiling as conv2d_forward_tiled.

struct Params {
    n: u32, c: u32, h: u32, w: u32,
    k: u32, oh: u32, ow: u32, cg: u32,
    kg: u32, taps_per_channel: u32, stride_h: u32, stride_w: u32,
    rows: u32, cols: u32, first_h: u32, first_w: u32,
    base_h: i32, base_w: i32, reduce: u32, tab_off: u32,
    dy_off: u32, w_off: u32, out_off: u32, total: u32,
    tiles_m: u32, tiles_n: u32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
// Per reduction index r = (k, t, s) of a phase: (offset of dy[k, -t*delta_h, -s*delta_w] from
// dy[0, 0, 0], -t*delta_h, -s*delta_w, offset of w[k, 0, i, j] from w[0, 0, 0, 0]).
@group(0) @binding(3) var<storage, read> taps: array<vec4<i32>>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;

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
    let c0 = tn_ * BN;
    let phase_plane = p.rows * p.cols;
    let m_count = p.n * phase_plane;
    let r_count = p.reduce;
    let plane = p.oh * p.ow;

    let ml = tid % BM;
    let m = m0 + ml;
    let m_ok = m < m_count;
    let mm = min(m, m_count - 1u);
    let an = mm / phase_plane;
    let au = (mm % phase_plane) / p.cols;
    let av = mm % p.cols;
    let oh0 = p.base_h + i32(au);
    let ow0 = p.base_w + i32(av);
    let dy_base = i32(p.dy_off + (an * p.k + g * p.kg) * plane) + oh0 * i32(p.ow) + ow0;
    let w_base = p.w_off + (g * p.kg * p.cg + c0) * p.taps_per_channel;

    let tx = tid % (BM / TM);
    let ty = tid / (BM / TM);
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    for (var r0 = 0u; r0 < r_count; r0 += BK) {
        for (var q = tid / BM; q < BK; q += WG / BM) {
            let r = r0 + q;
            var v = 0.0;
            if (m_ok && r < r_count) {
                let t = taps[p.tab_off + r];
                let oh = oh0 + t.y;
                let ow = ow0 + t.z;
                if (oh >= 0 && oh < i32(p.oh) && ow >= 0 && ow < i32(p.ow)) {
                    v = dy[dy_base + t.x];
                }
            }
            a_tile[q * BM + ml] = v;
        }
        for (var e = tid; e < BK * BN; e += WG) {
            let rl = e / BN;
            let cl = e % BN;
            let r = r0 + rl;
            var v = 0.0;
            if (r < r_count && c0 + cl < p.cg) {
                let t = taps[p.tab_off + r];
                v = wt[i32(w_base + cl * p.taps_per_channel) + t.w];
            }
            b_tile[rl * BN + cl] = v;
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

    let in_plane = p.h * p.w;
    for (var i = 0u; i < TM; i++) {
        let om = m0 + (i / 4u) * (BM / 2u) + 4u * tx + i % 4u;
        if (om >= m_count) {
            continue;
        }
        let on = om / phase_plane;
        let ih = p.first_h + p.stride_h * ((om % phase_plane) / p.cols);
        let iw = p.first_w + p.stride_w * (om % p.cols);
        for (var jj = 0u; jj < TN / 4u; jj++) {
            let v = acc[2u * i + jj];
            for (var cc = 0u; cc < 4u; cc++) {
                let c = c0 + jj * (BN / 2u) + 4u * ty + cc;
                if (c >= p.cg) {
                    continue;
                }
                dx[p.out_off + (on * p.c + g * p.cg + c) * in_plane + ih * p.w + iw] = v[cc];
            }
        }
    }
}
