//! The implicit-GEMM jobs of the forward and dx plans (`conv2d_gemm.wgsl`) and the second pass
//! of split reductions (`reduce_partials.wgsl`).

use super::phases::Lattice;
use super::{Role, Slot, Step};
use crate::error::Result;
use crate::gpu::kernels::{GemmParams, Kernel, ReduceParams, Tile, overflow, sizes, to_i32_bits};

/// The second pass of a split reduction: `out[out_off + e] (+)= Σ_s partial[s][e]`.
pub(super) fn reduce_step(
    partial: Slot,
    out: Slot,
    out_off: u32,
    elems: usize,
    splits: usize,
    accumulate: bool,
) -> Step {
    let params = ReduceParams {
        elems: elems as u32,
        splits: splits as u32,
        accumulate: accumulate as u32,
        out_off,
    };
    Step::new(Kernel::ReducePartials, &params, vec![partial, out], elems)
}

/// One pass of `conv2d_gemm.wgsl` over a batch chunk (see the shader for the meaning).
pub(super) struct GemmJob {
    pub n: usize,
    pub rows: usize,
    pub cols: usize,
    pub groups: usize,
    pub in_c: usize,
    pub in_cg: usize,
    pub in_hw: [usize; 2],
    pub a_step: [usize; 2],
    pub base: [i64; 2],
    pub out_c: usize,
    pub out_cg: usize,
    pub out_hw: [usize; 2],
    pub o_step: [usize; 2],
    pub first: [usize; 2],
    pub reduce: usize,
    pub w_group: usize,
    pub w_col: usize,
    pub lattice: Lattice,
    /// A 1x1 kernel without padding: one tap per channel, always in bounds.
    pub pointwise: bool,
}

impl GemmJob {
    /// Workgroup tiles of one split.
    pub(super) fn tiles(&self, tile: Tile) -> usize {
        (self.n * self.rows * self.cols).div_ceil(tile.bm as usize)
            * self.out_cg.div_ceil(tile.bn as usize)
            * self.groups
    }

    /// The dispatch of this job; `binds` are activation, weight, bias and output. `split` is
    /// `(splits, out_len)`: with more than one split, each writes its partial sums `out_len`
    /// elements after the previous one's.
    fn step(
        &self,
        tile: Tile,
        binds: [Slot; 4],
        offsets: (u32, u32),
        has_bias: bool,
        split: (usize, usize),
    ) -> Result<Step> {
        let (act_off, out_off) = offsets;
        let lat = self.lattice;
        // The farthest tap's shift, which the kernel forms as t * tap_dh in i32.
        for a in 0..2 {
            let far = lat.shift[a].unsigned_abs() as u128 * lat.taps[a].saturating_sub(1) as u128;
            if far > i32::MAX as u128 {
                return Err(overflow("tap shift"));
            }
        }
        let (splits, out_len) = split;
        let total = self.tiles(tile) * splits;
        let split_len = self
            .reduce
            .div_ceil(splits)
            .div_ceil(tile.bk as usize)
            .max(1)
            * tile.bk as usize;
        let params = sizes!(GemmParams {
            n: self.n => "batch chunk",
            rows: self.rows => "rows",
            cols: self.cols => "columns",
            groups: self.groups => "groups",
            in_c: self.in_c => "input channels",
            in_cg: self.in_cg => "input channels per group",
            in_h: self.in_hw[0] => "input height",
            in_w: self.in_hw[1] => "input width",
            a_step_h: self.a_step[0] => "row step",
            a_step_w: self.a_step[1] => "column step",
            base_h = to_i32_bits(self.base[0], "base row")?,
            base_w = to_i32_bits(self.base[1], "base column")?,
            out_c: self.out_c => "output channels",
            out_cg: self.out_cg => "output channels per group",
            out_h: self.out_hw[0] => "output height",
            out_w: self.out_hw[1] => "output width",
            o_step_h: self.o_step[0] => "output row step",
            o_step_w: self.o_step[1] => "output column step",
            first_h: self.first[0] => "first row",
            first_w: self.first[1] => "first column",
            reduce: self.reduce => "reduction length",
            w_group: self.w_group => "weights per group",
            w_col: self.w_col => "weights per column",
            act_off = act_off,
            w_off = 0,
            out_off = out_off,
            b_off = 0,
            has_bias = has_bias as u32,
            tiles_m: (self.n * self.rows * self.cols).div_ceil(tile.bm as usize) => "row tiles",
            tiles_n: self.out_cg.div_ceil(tile.bn as usize) => "column tiles",
            total: total => "tiles",
            splits: splits => "splits",
            split_len: split_len => "split length",
            out_len: out_len => "partial length",
            tap_rows: lat.taps[0] => "tap rows",
            tap_cols: lat.taps[1] => "tap columns",
            tap_dh = to_i32_bits(lat.shift[0], "tap row shift")?,
            tap_dw = to_i32_bits(lat.shift[1], "tap column shift")?,
            w_per_ch: lat.w_steps[0] => "weights per channel",
            w_per_row: lat.w_steps[1] => "weights per tap row",
            w_per_col: lat.w_steps[2] => "weights per tap column",
            w_first: lat.w_first => "first weight",
            _pad0 = 0,
            _pad1 = 0,
        });
        let kernel = Kernel::Conv2dGemm(tile, self.pointwise);
        Ok(Step::new(kernel, &params, binds.to_vec(), total))
    }
}

/// The dispatches of implicit-GEMM jobs that together write one batch chunk of `elems`
/// outputs into `out` (at element `out_off` of its window): straight into it with one split,
/// else (or to add to `out`) into the partial buffer and summed into it by a second pass.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_chunk(
    steps: &mut Vec<Step>,
    jobs: &[GemmJob],
    tile: Tile,
    inputs: [Slot; 3],
    act_off: u32,
    out: (Slot, u32),
    elems: usize,
    has_bias: bool,
    splits: usize,
    accumulate: bool,
) -> Result<()> {
    let [act, w, b] = inputs;
    let (target, off, len) = if splits > 1 || accumulate {
        (Slot::whole(Role::Partial, splits * elems), 0, elems)
    } else {
        (out.0, out.1, 0)
    };
    for job in jobs {
        let binds = [act, w, b, target];
        steps.push(job.step(tile, binds, (act_off, off), has_bias, (splits, len))?);
    }
    if splits > 1 || accumulate {
        steps.push(reduce_step(target, out.0, out.1, elems, splits, accumulate));
    }
    Ok(())
}
