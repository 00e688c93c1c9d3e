//! The selection rules, each a pure function with its reason and its thresholds named. Figures
//! quoted are from docs/PERF.md (H100 and lavapipe measurements).

use super::DeviceProfile;
use crate::gpu::Algorithm;
use crate::gpu::kernels::{DEPTHWISE_STRIP, Tile};
use crate::spec::Conv2dGeometry;

/// The largest storage binding the ops make (bytes), whatever the device allows: keeps every
/// element index of a binding far below 2^31 (the kernels' signed index arithmetic).
pub const MAX_BINDING: u64 = 1 << 31;

/// Workgroups an implicit GEMM aims for on a GPU before its reduction is not split: four per
/// SM of a large part (132 SMs on an H100).
pub const SPLIT_TARGET_GPU: usize = 528;
/// On a CPU driver: never split (its workgroups run on a few threads, all busy already).
pub const SPLIT_TARGET_CPU: usize = 0;

/// Most splits of one direct dW/db reduction, and the most partial sums kept.
pub const MAX_SPLITS: usize = 1024;
/// Most partial sums (elements) one direct dW/db reduction keeps.
pub const MAX_PARTIALS: usize = 1 << 24;
/// Reduction elements one direct dW/db workgroup sums, aimed for.
pub const REDUCTION_PER_WORKGROUP: usize = 4096;

/// Most bytes of split-K partial outputs of the forward and dx GEMMs.
pub const MAX_PARTIAL_BYTES: u64 = 256 << 20;
/// Shortest split of an implicit GEMM's reduction (steps): shorter ones spend more on the
/// second pass and on staging than they gain in parallelism.
pub const MIN_SPLIT_LEN: usize = 128;
/// Most splits of an implicit GEMM's reduction.
pub const MAX_GEMM_SPLITS: usize = 16;

/// Workgroups the tiled dW aims for: enough to fill a GPU (1024); on a CPU driver a few per
/// thread (8), as more splits there only add partial sums to add up.
pub const DW_TARGET_GPU: usize = 1024;
/// See [`DW_TARGET_GPU`].
pub const DW_TARGET_CPU: usize = 8;
/// Shortest split of the tiled dW, in reduction steps of `bk`.
pub const DW_MIN_SPLIT_STEPS: usize = 4;

/// Fewest GEMM columns worth a tile (a one-column GEMM wastes all but one lane of a block).
pub const MIN_GEMM_COLS: usize = 2;
/// Shortest GEMM reduction worth staging (one `bk` step).
pub const MIN_GEMM_REDUCE: usize = 8;
/// Fewest output channels per group the forward and dW GEMMs take; fewer go to the per-element
/// kernels (depthwise layers with a channel multiplier below 4). dx has no such rule: its
/// columns are the input channels per group.
pub const MIN_GEMM_OUT_CHANNELS: usize = 4;

/// The conv kernels a plan picks.
pub fn use_tiled(p: &DeviceProfile, cols: usize, reduce: usize) -> bool {
    p.algorithm != Algorithm::Direct && cols >= MIN_GEMM_COLS && reduce >= MIN_GEMM_REDUCE
}

/// Whether the forward (and dW, which has the same columns and reduction) runs on the implicit
/// GEMM: the tiled algorithm, at least [`MIN_GEMM_OUT_CHANNELS`] output channels per group and a
/// reduction to stage.
pub fn forward_uses_gemm(p: &DeviceProfile, g: &Conv2dGeometry) -> bool {
    use_tiled(p, g.kg(), g.cg() * g.kh * g.kw) && g.kg() >= MIN_GEMM_OUT_CHANNELS
}

/// Whether dx runs on the implicit GEMM (by stride phase): its columns are the input channels
/// per group, its reduction the output channels per group times the taps.
pub fn backward_input_uses_gemm(p: &DeviceProfile, g: &Conv2dGeometry) -> bool {
    use_tiled(p, g.cg(), g.kg() * g.kh * g.kw)
}

/// Whether an op the GEMM does not take (`gemm` false) runs on the depthwise kernels rather
/// than the direct ones: with the tiled algorithm, for one input channel per group.
pub fn use_depthwise(p: &DeviceProfile, g: &Conv2dGeometry, gemm: bool) -> bool {
    !gemm && p.algorithm != Algorithm::Direct && g.cg() == 1
}

/// Most input channels per group for which dx may put the kernel taps along the GEMM's columns
/// (`C/g · kh · kw` of them) instead of the channels (the stem's 3 of a 32- or 64-column tile).
pub const TAPS_DX_MAX_CHANNELS: usize = 4;
/// Fewest kernel taps worth it (the columns gained).
pub const TAPS_DX_MIN_TAPS: usize = 4;

/// Whether dx runs with the kernel taps along the GEMM's columns (`plan/dx_taps.rs`): the
/// profile enables it ([`DeviceProfile::taps_dx`]), the tiled algorithm, at most
/// [`TAPS_DX_MAX_CHANNELS`] input channels per group, at least [`TAPS_DX_MIN_TAPS`] taps, and
/// a reduction (output channels per group) the GEMM stages ([`MIN_GEMM_REDUCE`]).
pub fn backward_input_by_taps(p: &DeviceProfile, g: &Conv2dGeometry) -> bool {
    p.taps_dx
        && p.algorithm != Algorithm::Direct
        && g.cg() <= TAPS_DX_MAX_CHANNELS
        && g.kh * g.kw >= TAPS_DX_MIN_TAPS
        && g.kg() >= MIN_GEMM_REDUCE
}

/// Whether the forward, dx and dW run on Winograd (F(2x2, 3x3), dW F(3x3, 2x2)): asked for ([`Algorithm::Winograd`]),
/// and a 3x3 kernel with stride 1 and dilation 1 (the transforms assume both; any padding and
/// groups), not depthwise (one channel per group: a GEMM reduction of 1, which the depthwise
/// kernels do better). The plan still falls back to the GEMM where the transforms do not fit.
pub fn use_winograd(p: &DeviceProfile, g: &Conv2dGeometry) -> bool {
    p.algorithm == Algorithm::Winograd
        && g.cg() > 1
        && [g.kh, g.kw] == [3, 3]
        && g.stride == [1, 1]
        && g.dilation == [1, 1]
}

/// The tile for an adapter: 128 x 64 ([`Tile::LARGE`]), the fastest on an H100 and for the
/// forward and dx on lavapipe, else the first candidate that fits the adapter's limits.
pub fn default_tile(limits: &wgpu::Limits) -> Tile {
    let fits = |t: &Tile| {
        t.invocations() <= limits.max_compute_invocations_per_workgroup
            && t.workgroup_bytes() <= limits.max_compute_workgroup_storage_size
    };
    std::iter::once(Tile::LARGE)
        .chain(Tile::CANDIDATES)
        .find(fits)
        .unwrap_or(Tile::CANDIDATES[Tile::CANDIDATES.len() - 1])
}

/// The tile for a GEMM with `cols` columns: the profile's, or with an adapter-chosen tile, a
/// narrow one when the columns would leave most of a wide tile empty ([`Tile::NARROW`];
/// [`Tile::NARROW_CPU`] on a CPU driver: 69 vs 60 ms on lavapipe for `q_dil3x3d2`; and there
/// [`Tile::NARROW16_CPU`] for at most 16 columns, which would leave half of a 32-wide tile
/// empty: 8.3 vs 6.3 ms on lavapipe for `q_conv4x4same`'s forward and dx). GPUs keep
/// [`Tile::NARROW`] until a GPU measures the 16-wide tile.
pub fn gemm_tile(p: &DeviceProfile, cols: usize) -> Tile {
    let narrow = match p.cpu {
        true if cols <= Tile::NARROW16_CPU.bn as usize && p.fits(Tile::NARROW16_CPU) => {
            Tile::NARROW16_CPU
        }
        true => Tile::NARROW_CPU,
        false => Tile::NARROW,
    };
    if p.auto_tile && cols <= narrow.bn as usize && p.fits(narrow) {
        narrow
    } else {
        p.tile
    }
}

/// The tile of the dW GEMM: the profile's, except [`Tile::MEDIUM`] on a CPU driver with an
/// adapter-chosen tile (its split-K grid is small there; measured 2x faster than 128x64 on
/// lavapipe).
pub fn dw_tile(p: &DeviceProfile) -> Tile {
    if p.auto_tile && p.cpu && p.fits(Tile::MEDIUM) {
        Tile::MEDIUM
    } else {
        p.tile
    }
}

/// Splits of an implicit GEMM's reduction when its tiles alone cannot fill the device (fewer
/// than half of `target` workgroups): enough to reach about `target`, each split at least
/// [`MIN_SPLIT_LEN`] reduction steps, at most [`MAX_GEMM_SPLITS`].
pub fn gemm_splits(target: usize, tiles: usize, reduce: usize) -> usize {
    if tiles == 0 || tiles >= target / 2 {
        return 1;
    }
    target
        .div_ceil(tiles)
        .min((reduce / MIN_SPLIT_LEN).max(1))
        .min(MAX_GEMM_SPLITS)
}

/// Reduction splits of a forward or dx GEMM with `tiles` tiles of one split, `reduce` steps and
/// `elems` outputs per batch chunk: [`gemm_splits`] within the partial-sum budget
/// ([`MAX_PARTIAL_BYTES`], or one binding).
pub fn partial_splits(p: &DeviceProfile, tiles: usize, reduce: usize, elems: usize) -> usize {
    let bytes = MAX_PARTIAL_BYTES.min(p.max_binding).min(p.max_workspace);
    let budget = (bytes / 4) as usize / elems.max(1);
    gemm_splits(p.split_target, tiles, reduce)
        .min(budget)
        .max(1)
}

/// `(splits, split_len)` of a direct dW or db reduction of `count` elements into `elems`
/// outputs: about [`REDUCTION_PER_WORKGROUP`] elements per workgroup, at most [`MAX_SPLITS`]
/// and [`MAX_PARTIALS`] partial sums, and at most `cap` splits (the workspace bound).
pub fn reduction_splits(count: usize, elems: usize, cap: usize) -> (usize, usize) {
    let max_splits = (MAX_PARTIALS / elems.max(1))
        .clamp(1, MAX_SPLITS)
        .min(cap.max(1));
    let want = count.div_ceil(REDUCTION_PER_WORKGROUP).clamp(1, max_splits);
    let split_len = count.div_ceil(want).max(1);
    (count.div_ceil(split_len).max(1), split_len)
}

/// `(splits, split_len)` of the tiled dW reduction over `count` output pixels: enough
/// workgroups to fill the device ([`DW_TARGET_GPU`], [`DW_TARGET_CPU`]), each split at least
/// [`DW_MIN_SPLIT_STEPS`] steps of `bk`, within the partial-sum budget and `cap` splits.
pub fn tiled_dw_splits(
    count: usize,
    g: &Conv2dGeometry,
    tile: Tile,
    cpu: bool,
    cap: usize,
) -> (usize, usize) {
    let tiles = g.kg().div_ceil(tile.bm as usize)
        * (g.cg() * g.kh * g.kw).div_ceil(tile.bn as usize)
        * g.groups;
    let target = if cpu { DW_TARGET_CPU } else { DW_TARGET_GPU };
    let elems = g.k * g.cg() * g.kh * g.kw;
    let by_length = count.div_ceil(DW_MIN_SPLIT_STEPS * tile.bk as usize).max(1);
    let want = target
        .div_ceil(tiles)
        .min(by_length)
        .min(MAX_SPLITS)
        .min((MAX_PARTIALS / elems.max(1)).max(1))
        .min(cap)
        .max(1);
    let split_len = count.div_ceil(want).div_ceil(tile.bk as usize).max(1) * tile.bk as usize;
    (count.div_ceil(split_len).max(1), split_len)
}

/// Invocation rows per plane of `rows` rows for the one-invocation-per-element conv kernels:
/// every row, or a strip of [`DEPTHWISE_STRIP`] rows per invocation for the depthwise ones.
pub fn element_rows(rows: usize, depthwise: bool) -> usize {
    if depthwise {
        rows.div_ceil(DEPTHWISE_STRIP)
    } else {
        rows
    }
}
