// Tiled GEMM for the linear layer: c[m, n] = sum over k of op(a)[m, k] * op(b)[k, n], plus
// bias[n] when has_bias. op(a) is a stored [M, K] row-major, or [K, M] when trans_a; op(b) is b
// stored [K, N], or [N, K] when trans_b. One workgroup per 32 x 32 tile of c: the 64
// invocations stage 16-deep slices of a and b in workgroup memory and each accumulates a 4 x 4
// block, in increasing k, so the result is the same on every run (no atomics).
//   linear forward  y  = x · wᵀ + b : a = x  [N, in],  b = w [out, in] (trans_b)
//   linear dx       dx = dy · w     : a = dy [N, out], b = w [out, in]
//   linear dW       dW = dyᵀ · x    : a = dy [N, out] (trans_a), b = x [N, in]

// #include lib/ids.wgsl

struct Params {
    m: u32, n: u32, k: u32, trans_a: u32,
    trans_b: u32, has_bias: u32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const BM: u32 = 32u;
const BN: u32 = 32u;
const BK: u32 = 16u;
const WG: u32 = 64u;
// Invocations per row of the 8 x 8 grid of 4 x 4 blocks.
const GRID: u32 = 8u;

// [BK][BM] and [BK][BN], k-major so the inner loop reads rows.
var<workgroup> a_tile: array<f32, 512>;
var<workgroup> b_tile: array<f32, 512>;

fn load_a(row: u32, kk: u32) -> f32 {
    if (row >= p.m || kk >= p.k) {
        return 0.0;
    }
    if (p.trans_a != 0u) {
        return a[kk * p.m + row];
    }
    return a[row * p.k + kk];
}

fn load_b(kk: u32, col: u32) -> f32 {
    if (kk >= p.k || col >= p.n) {
        return 0.0;
    }
    if (p.trans_b != 0u) {
        return b[col * p.k + kk];
    }
    return b[kk * p.n + col];
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let tiles_n = (p.n + BN - 1u) / BN;
    let tiles_m = (p.m + BM - 1u) / BM;
    let tile = workgroup_item(wid, nwg);
    // Uniform per workgroup, so the barriers below stay in uniform control flow.
    if (tile >= tiles_m * tiles_n) {
        return;
    }
    let row0 = (tile / tiles_n) * BM;
    let col0 = (tile % tiles_n) * BN;
    let tr = lid / GRID;
    let tc = lid % GRID;

    // The 4 x 4 block as four row vectors, never an array indexed at run time (see
    // lib/gemm_tile.wgsl): c_i[j] += a_i * b_j, the same products and sums in the same order.
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // 512 elements of each tile, 8 per invocation; consecutive invocations read
        // consecutive addresses of the stored layout.
        for (var s = 0u; s < 8u; s++) {
            let e = lid + s * WG;
            var r: u32;
            var kk: u32;
            if (p.trans_a != 0u) {
                kk = e / BM;
                r = e % BM;
            } else {
                r = e / BK;
                kk = e % BK;
            }
            a_tile[kk * BM + r] = load_a(row0 + r, k0 + kk);
            var col: u32;
            if (p.trans_b != 0u) {
                col = e / BK;
                kk = e % BK;
            } else {
                kk = e / BN;
                col = e % BN;
            }
            b_tile[kk * BN + col] = load_b(k0 + kk, col0 + col);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let ai = kk * BM + tr * 4u;
            let bi = kk * BN + tc * 4u;
            let av = vec4<f32>(a_tile[ai], a_tile[ai + 1u], a_tile[ai + 2u], a_tile[ai + 3u]);
            let bv = vec4<f32>(b_tile[bi], b_tile[bi + 1u], b_tile[bi + 2u], b_tile[bi + 3u]);
            c0 += av.x * bv;
            c1 += av.y * bv;
            c2 += av.z * bv;
            c3 += av.w * bv;
        }
        workgroupBarrier();
    }
    store_row(row0 + tr * 4u, col0 + tc * 4u, c0);
    store_row(row0 + tr * 4u + 1u, col0 + tc * 4u, c1);
    store_row(row0 + tr * 4u + 2u, col0 + tc * 4u, c2);
    store_row(row0 + tr * 4u + 3u, col0 + tc * 4u, c3);
}

// Row `row` of c from column `col` on: four elements plus the bias, those inside c.
fn store_row(row: u32, col: u32, v: vec4<f32>) {
    if (row >= p.m) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if (col + j < p.n) {
            var x = v[j];
            if (p.has_bias != 0u) {
                x += bias[col + j];
            }
            c[row * p.n + col + j] = x;
        }
    }
}
