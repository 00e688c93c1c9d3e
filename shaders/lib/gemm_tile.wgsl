// The workgroup tile and register-block inner product shared by the implicit-GEMM kernels
// (conv2d_gemm.wgsl for forward and dx, conv2d_backward_weight_tiled.wgsl for dW).
// A workgroup computes a BM x BN output tile, stepping through the reduction BK at a time: it
// stages the A and B slices in workgroup memory, then each invocation accumulates a TM x TN
// register block (TM, TN in {4, 8}) as vec4 rows: rows 4*tx + {0..3} (and BM/2 + ... when
// TM = 8), columns 4*ty + {0..3} (and BN/2 + ... when TN = 8). The tile is a set of pipeline
// overrides the host chooses from the adapter's limits (Rust: `Tile`).

override BM: u32 = 64u;
override BN: u32 = 64u;
override BK: u32 = 8u;
override TM: u32 = 4u;
override TN: u32 = 4u;
override WG: u32 = (BM / TM) * (BN / TN);
// conv2d_gemm.wgsl's staging, declared here beside the tile (naga 30's override pass asserts,
// in handlevec.rs, when these follow the tile arrays): A rows each invocation stages (2 when the
// workgroup has half as many invocations as the tile has rows, else 1) and the step between
// its reduction indices.
override RA: u32 = (BM + WG - 1u) / WG;
override SA: u32 = (WG + BM - 1u) / BM;
// A and B elements each invocation stages per step (at most 16 and 8; the host checks).
override NA: u32 = BK * BM / WG;
override NB: u32 = BK * BN / WG;
// A 1x1 kernel without padding: a plain GEMM (one tap per channel, always in bounds).
override POINTWISE: bool = false;

// The tiles hold vec4 rows so that the inner loop reads a whole vec4 per access: a_tile is
// BK rows of BM, b_tile BK rows of BN.
var<workgroup> a_tile: array<vec4<f32>, BK * BM / 4u>;
var<workgroup> b_tile: array<vec4<f32>, BK * BN / 4u>;

// Which output tile and reduction split a workgroup computes: tile rows from m0, columns from
// n0, of group g.
struct TileId { m0: u32, n0: u32, g: u32, split: u32 }

fn tile_id(item: u32, tiles_m: u32, tiles_n: u32, groups: u32) -> TileId {
    let tiles = tiles_m * tiles_n * groups;
    let tile = item % tiles;
    return TileId((tile % tiles_m) * BM, ((tile / tiles_m) % tiles_n) * BN,
                  tile / (tiles_m * tiles_n), item / tiles);
}

// acc[2 * i + jj] holds block row i (of TM), columns 4 * jj .. 4 * jj + 3 (of TN). Every access
// to it uses a constant index (naga's AccessIndex; tests/shaders.rs checks): a register array
// indexed with a run-time value goes to scratch memory wherever the compiler does not unroll
// the loop around the access (lavapipe does not; Metal, RADV/ACO and ANV need not).
fn zero_block() -> array<vec4<f32>, 16> {
    return array<vec4<f32>, 16>();
}

// Adds the staged BK steps to the register block of invocation (tx, ty), step by step in
// order (every kernel sums in the same order: the results are the same bits). The block's
// lower rows (TM = 8) and right columns (TN = 8) are written out, constant-indexed.
fn multiply_tiles(acc: ptr<function, array<vec4<f32>, 16>>, tx: u32, ty: u32) {
    for (var kk = 0u; kk < BK; kk++) {
        let b0 = b_tile[(kk * BN) / 4u + ty];
        var b1 = vec4<f32>(0.0);
        if (TN == 8u) {
            b1 = b_tile[(kk * BN + BN / 2u) / 4u + ty];
        }
        let a0 = a_tile[(kk * BM) / 4u + tx];
        (*acc)[0] = fma(vec4<f32>(a0.x), b0, (*acc)[0]);
        (*acc)[2] = fma(vec4<f32>(a0.y), b0, (*acc)[2]);
        (*acc)[4] = fma(vec4<f32>(a0.z), b0, (*acc)[4]);
        (*acc)[6] = fma(vec4<f32>(a0.w), b0, (*acc)[6]);
        if (TN == 8u) {
            (*acc)[1] = fma(vec4<f32>(a0.x), b1, (*acc)[1]);
            (*acc)[3] = fma(vec4<f32>(a0.y), b1, (*acc)[3]);
            (*acc)[5] = fma(vec4<f32>(a0.z), b1, (*acc)[5]);
            (*acc)[7] = fma(vec4<f32>(a0.w), b1, (*acc)[7]);
        }
        if (TM == 8u) {
            let a1 = a_tile[(kk * BM + BM / 2u) / 4u + tx];
            (*acc)[8] = fma(vec4<f32>(a1.x), b0, (*acc)[8]);
            (*acc)[10] = fma(vec4<f32>(a1.y), b0, (*acc)[10]);
            (*acc)[12] = fma(vec4<f32>(a1.z), b0, (*acc)[12]);
            (*acc)[14] = fma(vec4<f32>(a1.w), b0, (*acc)[14]);
            if (TN == 8u) {
                (*acc)[9] = fma(vec4<f32>(a1.x), b1, (*acc)[9]);
                (*acc)[11] = fma(vec4<f32>(a1.y), b1, (*acc)[11]);
                (*acc)[13] = fma(vec4<f32>(a1.z), b1, (*acc)[13]);
                (*acc)[15] = fma(vec4<f32>(a1.w), b1, (*acc)[15]);
            }
        }
    }
}

// Block row i of invocation tx: its row in the tile (the upper or lower half when TM = 8).
fn block_row(i: u32, tx: u32) -> u32 {
    return (i / 4u) * (BM / 2u) + 4u * tx + i % 4u;
}

// Column cc of block column jj of invocation ty: its column in the tile.
fn block_col(jj: u32, cc: u32, ty: u32) -> u32 {
    return jj * (BN / 2u) + 4u * ty + cc;
}
