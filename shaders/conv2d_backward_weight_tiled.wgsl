// conv2d dW as an implicit GEMM with split-K: per group, with k an output channel of the group,
// r = (c, i, j) a kernel tap and m = (n, oh, ow) an output pixel,
//   DW[k, r] = sum_m dy[n, g*kg + k, oh, ow] * x[n, g*cg + c, oh*sh - pt + i*dh, ow*sw - pl + j*dw].
// The reduction over m is cut into `splits` ranges of `split_len`; workgroup (tile, split) writes
// its partial tile to partial[split][g*kg + k][r], and reduce_partials.wgsl adds the splits in
// order: deterministic, no atomics. Each invocation loads the A (dy) and B (x) elements of one m
// per step, decomposing it once; the taps table gives r -> (x offset, row shift, column shift),
// read once per invocation for the columns it stages (they are the same every step).

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
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> taps: array<vec4<i32>>;
@group(0) @binding(4) var<storage, read_write> partial: array<f32>;

override BM: u32 = 64u;
override BN: u32 = 64u;
override BK: u32 = 8u;
override TM: u32 = 4u;
override TN: u32 = 4u;
override WG: u32 = (BM / TM) * (BN / TN);
// A 1x1 kernel without padding: tap r = c reads x at x_base + c * H * W, always in bounds.
override POINTWISE: bool = false;

// The tiles hold vec4 rows so that the inner loop reads a whole vec4 per access.
var<workgroup> a_tile: array<vec4<f32>, BK * BM / 4u>;
var<workgroup> b_tile: array<vec4<f32>, BK * BN / 4u>;

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
    let k0 = tm_ * BM;
    let r0t = tn_ * BN;
    let plane = p.oh * p.ow;
    let m_count = p.n * plane;
    let r_count = p.reduce;
    let m_begin = split * p.split_len;
    let m_end = min(m_begin + p.split_len, m_count);
    let in_plane = p.h * p.w;

    // This invocation loads column ml (an m) of the A and B slices each step.
    let ml = tid % BK;
    let lane = tid / BK;
    let lanes = WG / BK;
    let tx = tid % (BM / TM);
    let ty = tid / (BM / TM);
    // The taps of the columns r0t + lane + j * lanes this invocation stages (at most 8: the
    // host checks BK * BN / WG <= 8).
    var tap: array<vec4<i32>, 8>;
    for (var j = 0u; j < BN / lanes; j++) {
        let r = r0t + lane + j * lanes;
        tap[j] = vec4<i32>(0);
        if (!POINTWISE && r < r_count) {
            tap[j] = taps[r];
        }
    }
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }

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
        for (var kk = 0u; kk < BK; kk++) {
            let b0 = b_tile[(kk * BN) / 4u + ty];
            var b1 = vec4<f32>(0.0);
            if (TN == 8u) {
                b1 = b_tile[(kk * BN + BN / 2u) / 4u + ty];
            }
            for (var half = 0u; half < TM / 4u; half++) {
                let a = a_tile[(kk * BM + half * (BM / 2u)) / 4u + tx];
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

    let out_base = split * p.k * r_count;
    for (var i = 0u; i < TM; i++) {
        let k = k0 + (i / 4u) * (BM / 2u) + 4u * tx + i % 4u;
        if (k >= p.kg) {
            continue;
        }
        for (var jj = 0u; jj < TN / 4u; jj++) {
            let v = acc[2u * i + jj];
            for (var cc = 0u; cc < 4u; cc++) {
                let r = r0t + jj * (BN / 2u) + 4u * ty + cc;
                if (r >= r_count) {
                    continue;
                }
                partial[out_base + (g * p.kg + k) * r_count + r] = v[cc];
            }
        }
    }
}
