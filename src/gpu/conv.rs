//! conv2d forward, dx, dW and db on the GPU.

use super::kernels::{
    ConvParams, DEPTHWISE_STRIP, DEPTHWISE_TAPS, GemmParams, Kernel, ReduceParams, Tile,
};
use super::tensor::{Raw, dims4};
use super::{Algorithm, Bind, Dispatch, Gpu, IndexTensor, Tensor};
use crate::error::{Error, Result, mismatch};
use crate::spec::{Conv2dGeometry, Conv2dSpec};

/// Largest number of splits of one reduction (dW, db), and the most partial sums kept.
const MAX_SPLITS: usize = 1024;
const MAX_PARTIALS: usize = 1 << 24;
/// Most bytes of split-K partial outputs for the forward and dx.
const MAX_PARTIAL_BYTES: u64 = 256 << 20;
/// Reduction elements one dW/db workgroup sums, aimed for.
const SPLIT_TARGET: usize = 4096;

/// A size as a kernel `u32`, refusing values past `i32::MAX` so that the kernels' signed
/// position arithmetic cannot wrap.
pub(crate) fn to_u32(v: usize, what: &str) -> Result<u32> {
    if v > i32::MAX as usize {
        return Err(Error::DeviceLimit(format!(
            "{what} = {v} exceeds the GPU kernels' 31-bit index range"
        )));
    }
    Ok(v as u32)
}

/// The params block of a geometry; per-chunk fields (`n`, offsets, `total`) are set by callers.
fn conv_params(g: &Conv2dGeometry) -> Result<ConvParams> {
    let p = g.padding;
    to_u32(g.h + p.top + p.bottom, "padded input height")?;
    to_u32(g.w + p.left + p.right, "padded input width")?;
    Ok(ConvParams {
        c: to_u32(g.c, "C")?,
        h: to_u32(g.h, "H")?,
        w: to_u32(g.w, "W")?,
        k: to_u32(g.k, "K")?,
        kh: to_u32(g.kh, "kh")?,
        kw: to_u32(g.kw, "kw")?,
        groups: to_u32(g.groups, "groups")?,
        oh: to_u32(g.oh, "OH")?,
        ow: to_u32(g.ow, "OW")?,
        cg: to_u32(g.cg(), "C/groups")?,
        kg: to_u32(g.kg(), "K/groups")?,
        stride_h: to_u32(g.stride[0], "stride_h")?,
        stride_w: to_u32(g.stride[1], "stride_w")?,
        dil_h: to_u32(g.dilation[0], "dilation_h")?,
        dil_w: to_u32(g.dilation[1], "dilation_w")?,
        pad_top: to_u32(p.top, "padding top")?,
        pad_left: to_u32(p.left, "padding left")?,
        ..Default::default()
    })
}

/// Batch chunks `(n0, n1)` such that each chunked tensor (`per-sample elements`, name) fits a
/// binding.
fn batch_chunks(gpu: &Gpu, n: usize, units: &[(usize, &str)]) -> Result<Vec<(usize, usize)>> {
    let per = gpu.items_per_chunk(units, n)?;
    Ok((0..n)
        .step_by(per)
        .map(|n0| (n0, (n0 + per).min(n)))
        .collect())
}

/// Splits of a reduction of `count` elements into at most `max_splits` ranges.
fn splits(count: usize, elems: usize) -> (usize, usize) {
    let max_splits = (MAX_PARTIALS / elems.max(1)).clamp(1, MAX_SPLITS);
    let want = count.div_ceil(SPLIT_TARGET).clamp(1, max_splits);
    let split_len = count.div_ceil(want).max(1);
    (count.div_ceil(split_len).max(1), split_len)
}

/// The implicit-GEMM grid over an `m x n` output per group: tiles along m, tiles along n, and
/// groups, in `params.tiles_m`, `tiles_n` and `total` (workgroups).
fn tile_grid(
    params: ConvParams,
    m: usize,
    n: usize,
    groups: usize,
    tile: Tile,
) -> Result<(ConvParams, u64)> {
    let tiles_m = m.div_ceil(tile.bm as usize);
    let tiles_n = n.div_ceil(tile.bn as usize);
    let total = tiles_m * tiles_n * groups;
    Ok((
        ConvParams {
            tiles_m: to_u32(tiles_m, "row tiles")?,
            tiles_n: to_u32(tiles_n, "column tiles")?,
            total: to_u32(total, "tiles")?,
            ..params
        },
        total as u64,
    ))
}

/// One pass of `conv2d_gemm.wgsl` over a batch chunk (see the shader for the meaning).
struct GemmJob {
    n: usize,
    rows: usize,
    cols: usize,
    groups: usize,
    in_c: usize,
    in_cg: usize,
    in_hw: [usize; 2],
    a_step: [usize; 2],
    base: [i64; 2],
    out_c: usize,
    out_cg: usize,
    out_hw: [usize; 2],
    o_step: [usize; 2],
    first: [usize; 2],
    reduce: usize,
    w_group: usize,
    w_col: usize,
    lattice: Lattice,
    /// A 1x1 kernel without padding: one tap per channel, always in bounds.
    pointwise: bool,
}

/// The reduction lattice `r = (q, t, s)` of a [`GemmJob`]: `taps` rows and columns of kernel
/// taps per channel `q`, the activation shift per tap row and column, and the weight offset
/// `first + q * w_steps[0] + t * w_steps[1] + s * w_steps[2]`.
#[derive(Clone, Copy)]
struct Lattice {
    taps: [usize; 2],
    shift: [i64; 2],
    w_steps: [usize; 3],
    w_first: usize,
}

impl GemmJob {
    /// Workgroup tiles of one split.
    fn tiles(&self, tile: Tile) -> usize {
        (self.n * self.rows * self.cols).div_ceil(tile.bm as usize)
            * self.out_cg.div_ceil(tile.bn as usize)
            * self.groups
    }
}

/// Splits of an implicit GEMM's reduction when its tiles alone cannot fill the device (fewer
/// than half of `target` workgroups): enough to reach about `target`, each split at least 128
/// reduction steps, at most 16.
fn gemm_splits(target: usize, tiles: usize, reduce: usize) -> usize {
    if tiles == 0 || tiles >= target / 2 {
        return 1;
    }
    target.div_ceil(tiles).min((reduce / 128).max(1)).min(16)
}

/// Invocation rows per plane of `rows` rows for the one-invocation-per-element conv kernels:
/// every row, or a strip of [`DEPTHWISE_STRIP`] rows per invocation for the depthwise ones.
fn element_rows(rows: usize, depthwise: bool) -> usize {
    if depthwise {
        rows.div_ceil(DEPTHWISE_STRIP)
    } else {
        rows
    }
}

/// A value for an i32 params field, stored as its bits.
fn to_i32_bits(v: i64, what: &str) -> Result<u32> {
    i32::try_from(v)
        .map(|v| v as u32)
        .map_err(|_| overflow(what))
}

/// Splits of the tiled dW reduction over `count` output pixels: enough workgroups to fill the
/// device (few on a CPU driver, whose workgroups run on its few threads), each split at least
/// a few reduction steps long, within the partial-sum budget.
fn tiled_splits(count: usize, g: &Conv2dGeometry, tile: Tile, cpu: bool) -> (usize, usize) {
    let tiles = g.kg().div_ceil(tile.bm as usize)
        * (g.cg() * g.kh * g.kw).div_ceil(tile.bn as usize)
        * g.groups;
    let target: usize = if cpu { 8 } else { 1024 };
    let elems = g.k * g.cg() * g.kh * g.kw;
    let by_length = count.div_ceil(4 * tile.bk as usize).max(1);
    let want = target
        .div_ceil(tiles)
        .min(by_length)
        .min(MAX_SPLITS)
        .min((MAX_PARTIALS / elems.max(1)).max(1))
        .max(1);
    let split_len = count.div_ceil(want).div_ceil(tile.bk as usize).max(1) * tile.bk as usize;
    (count.div_ceil(split_len).max(1), split_len)
}

/// One stride phase of dx: the input rows (and columns) `first + stride * u`, `u < rows`, and the
/// lattice of kernel taps that reach them.
struct Phase {
    first: [usize; 2],
    rows: [usize; 2],
    /// Output row (column) reached from `u = 0` by the phase's first tap.
    base: [i64; 2],
    /// Reduction length `kg * taps_h * taps_w`.
    reduce: usize,
    lattice: Lattice,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The stride phases of dx. Per axis and phase `ph`: input positions with
/// `(pos + pad) % stride == ph`, kernel taps `i = i0 + t * step` with `i * dil % stride == ph`
/// (`step = stride / gcd(stride, dil)`), output index
/// `(pos + pad - i * dil) / stride = base + u - t * delta`, `delta = step * dil / stride`.
fn dx_phases(g: &Conv2dGeometry) -> Vec<Phase> {
    struct Axis {
        first: usize,
        rows: usize,
        base: i64,
        /// First tap, tap count, tap step and output shift per tap.
        i0: usize,
        taps: usize,
        step: usize,
        delta: i64,
    }
    let axis = |len: usize, pad: usize, k: usize, s: usize, d: usize| -> Vec<Axis> {
        let step = s / gcd(s, d);
        let delta = (step * d / s) as i64;
        // Only the first min(s, len) input positions start a phase that holds any input.
        (0..s.min(len))
            .map(|first| {
                let ph = (first + pad) % s;
                let rows = (len - first).div_ceil(s);
                let (i0, taps, base) = match (0..k.min(step)).find(|i| (i * d) % s == ph) {
                    Some(i0) => (
                        i0,
                        (k - i0).div_ceil(step),
                        (first as i64 + pad as i64 - (i0 * d) as i64) / s as i64,
                    ),
                    None => (0, 0, 0),
                };
                Axis {
                    first,
                    rows,
                    base,
                    i0,
                    taps,
                    step,
                    delta,
                }
            })
            .collect()
    };
    let ah = axis(g.h, g.padding.top, g.kh, g.stride[0], g.dilation[0]);
    let aw = axis(g.w, g.padding.left, g.kw, g.stride[1], g.dilation[1]);
    let mut phases = Vec::new();
    for h in &ah {
        for w in &aw {
            if h.rows == 0 || w.rows == 0 {
                continue;
            }
            phases.push(Phase {
                first: [h.first, w.first],
                rows: [h.rows, w.rows],
                base: [h.base, w.base],
                reduce: g.kg() * h.taps * w.taps,
                lattice: Lattice {
                    taps: [h.taps, w.taps],
                    shift: [-h.delta, -w.delta],
                    w_steps: [g.cg() * g.kh * g.kw, h.step * g.kw, w.step],
                    w_first: h.i0 * g.kw + w.i0,
                },
            });
        }
    }
    phases
}

fn overflow(what: &str) -> Error {
    Error::DeviceLimit(format!(
        "{what} exceeds the GPU kernels' 31-bit index range"
    ))
}

/// The forward's tap table: for each reduction index r = (c, i, j) of a group, the offset of
/// `x[c, i*dh, j*dw]` from `x[0, 0, 0]` in one sample's group, the row and column shifts, and
/// the offset `r` of `w[k, c, i, j]` from `w[k, 0, 0, 0]`.
fn forward_taps(g: &Conv2dGeometry) -> Result<Vec<[i32; 4]>> {
    let mut taps = Vec::with_capacity(g.cg() * g.kh * g.kw);
    for c in 0..g.cg() {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let (di, dj) = (i * g.dilation[0], j * g.dilation[1]);
                let off = c * g.h * g.w + di * g.w + dj;
                taps.push([
                    to_u32(off, "tap offset")? as i32,
                    to_u32(di, "tap row")? as i32,
                    to_u32(dj, "tap column")? as i32,
                    taps.len() as i32,
                ]);
            }
        }
    }
    Ok(taps)
}

impl Gpu {
    /// Whether a conv op runs on the implicit-GEMM kernels rather than the direct ones: with the
    /// tiled algorithm selected, when the GEMM has enough columns (`cols`: output channels per
    /// group for forward and dW, input channels per group for dx) and a reduction to stage.
    fn use_tiled(&self, cols: usize, reduce: usize) -> bool {
        self.algorithm == Algorithm::Tiled && cols >= 2 && reduce >= 8
    }

    /// Whether a conv op that the GEMM does not take (`gemm` false) runs on the depthwise
    /// kernels rather than the direct ones: with the tiled algorithm selected, for one input
    /// channel per group.
    fn use_depthwise(&self, g: &Conv2dGeometry, gemm: bool) -> bool {
        !gemm && self.algorithm == Algorithm::Tiled && g.cg() == 1
    }

    /// The dispatch of one [`GemmJob`]; `binds` are activation, weight, bias and output.
    /// `split` is `(splits, out_len)`: with more than one split, each writes its partial sums
    /// `out_len` elements after the previous one's.
    fn gemm_dispatch<'a>(
        &self,
        job: &GemmJob,
        binds: [Bind<'a>; 4],
        act_off: u32,
        out_off: u32,
        has_bias: bool,
        split: (usize, usize),
    ) -> Result<Dispatch<'a>> {
        let tile = self.gemm_tile(job.out_cg);
        let lat = job.lattice;
        // The farthest tap's shift, which the kernel forms as t * tap_dh in i32.
        for a in 0..2 {
            let far = lat.shift[a].unsigned_abs() as u128 * lat.taps[a].saturating_sub(1) as u128;
            if far > i32::MAX as u128 {
                return Err(overflow("tap shift"));
            }
        }
        let (splits, out_len) = split;
        let total = job.tiles(tile) * splits;
        let split_len = job
            .reduce
            .div_ceil(splits)
            .div_ceil(tile.bk as usize)
            .max(1)
            * tile.bk as usize;
        let params = GemmParams {
            n: to_u32(job.n, "batch chunk")?,
            rows: to_u32(job.rows, "rows")?,
            cols: to_u32(job.cols, "columns")?,
            groups: to_u32(job.groups, "groups")?,
            in_c: to_u32(job.in_c, "input channels")?,
            in_cg: to_u32(job.in_cg, "input channels per group")?,
            in_h: to_u32(job.in_hw[0], "input height")?,
            in_w: to_u32(job.in_hw[1], "input width")?,
            a_step_h: to_u32(job.a_step[0], "row step")?,
            a_step_w: to_u32(job.a_step[1], "column step")?,
            base_h: to_i32_bits(job.base[0], "base row")?,
            base_w: to_i32_bits(job.base[1], "base column")?,
            out_c: to_u32(job.out_c, "output channels")?,
            out_cg: to_u32(job.out_cg, "output channels per group")?,
            out_h: to_u32(job.out_hw[0], "output height")?,
            out_w: to_u32(job.out_hw[1], "output width")?,
            o_step_h: to_u32(job.o_step[0], "output row step")?,
            o_step_w: to_u32(job.o_step[1], "output column step")?,
            first_h: to_u32(job.first[0], "first row")?,
            first_w: to_u32(job.first[1], "first column")?,
            reduce: to_u32(job.reduce, "reduction length")?,
            w_group: to_u32(job.w_group, "weights per group")?,
            w_col: to_u32(job.w_col, "weights per column")?,
            act_off,
            w_off: 0,
            out_off,
            b_off: 0,
            has_bias: has_bias as u32,
            tiles_m: to_u32(
                (job.n * job.rows * job.cols).div_ceil(tile.bm as usize),
                "row tiles",
            )?,
            tiles_n: to_u32(job.out_cg.div_ceil(tile.bn as usize), "column tiles")?,
            total: to_u32(total, "tiles")?,
            splits: to_u32(splits, "splits")?,
            split_len: to_u32(split_len, "split length")?,
            out_len: to_u32(out_len, "partial length")?,
            tap_rows: to_u32(lat.taps[0], "tap rows")?,
            tap_cols: to_u32(lat.taps[1], "tap columns")?,
            tap_dh: to_i32_bits(lat.shift[0], "tap row shift")?,
            tap_dw: to_i32_bits(lat.shift[1], "tap column shift")?,
            w_per_ch: to_u32(lat.w_steps[0], "weights per channel")?,
            w_per_row: to_u32(lat.w_steps[1], "weights per tap row")?,
            w_per_col: to_u32(lat.w_steps[2], "weights per tap column")?,
            w_first: to_u32(lat.w_first, "first weight")?,
            _pad0: 0,
            _pad1: 0,
        };
        Ok(Dispatch {
            kernel: Kernel::Conv2dGemm(tile, job.pointwise),
            params: bytemuck::bytes_of(&params).to_vec(),
            bindings: binds.to_vec(),
            items: total as u64,
        })
    }

    /// The dispatches of implicit-GEMM jobs that together write one batch chunk of `elems`
    /// outputs into `out` (at element `out_off` of its window): straight into it with one
    /// split, else into `partial` and summed into it by a second pass.
    #[allow(clippy::too_many_arguments)]
    fn gemm_chunk<'a>(
        &self,
        ds: &mut Vec<Dispatch<'a>>,
        jobs: &[GemmJob],
        inputs: [Bind<'a>; 3],
        act_off: u32,
        out: (Bind<'a>, u32),
        elems: usize,
        has_bias: bool,
        partial: &'a Option<Raw>,
        splits: usize,
    ) -> Result<()> {
        let [act, w, b] = inputs;
        let (target, off, len) = match partial {
            Some(p) => (Bind::whole(p.buffer(), splits * elems), 0, elems),
            None => (out.0, out.1, 0),
        };
        for job in jobs {
            let binds = [act, w, b, target];
            ds.push(self.gemm_dispatch(job, binds, act_off, off, has_bias, (splits, len))?);
        }
        if partial.is_some() {
            ds.push(self.reduce_dispatch(target, out.0, out.1, elems, splits, false));
        }
        Ok(())
    }
    /// The tile for a GEMM with `cols` columns: the context's, or with an adapter-chosen tile,
    /// a narrow one when the columns would leave most of a wide tile empty ([`Tile::NARROW`],
    /// [`Tile::NARROW_CPU`] on a CPU driver: 69 vs 60 ms on lavapipe for `q_dil3x3d2`).
    fn gemm_tile(&self, cols: usize) -> Tile {
        let narrow = if self.is_cpu() {
            Tile::NARROW_CPU
        } else {
            Tile::NARROW
        };
        if self.auto_tile
            && cols <= narrow.bn as usize
            && narrow.invocations() <= self.limits.max_compute_invocations_per_workgroup
            && narrow.workgroup_bytes() <= self.limits.max_compute_workgroup_storage_size
        {
            narrow
        } else {
            self.tile
        }
    }

    /// The tile of the dW kernel: the context's, except [`Tile::MEDIUM`] on a CPU driver with
    /// an adapter-chosen tile (its split-K grid is small there; measured 2x faster than 128x64
    /// on lavapipe).
    fn dw_tile(&self) -> Tile {
        let medium = Tile::MEDIUM;
        if self.auto_tile
            && self.is_cpu()
            && medium.invocations() <= self.limits.max_compute_invocations_per_workgroup
            && medium.workgroup_bytes() <= self.limits.max_compute_workgroup_storage_size
        {
            medium
        } else {
            self.tile
        }
    }

    fn is_cpu(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Output tensor for an op, poisoned in checked mode.
    pub(crate) fn new_output(&self, shape: &[usize], what: &str) -> Result<Tensor> {
        let raw = self.alloc(shape, what)?;
        self.poison(&raw, f32::NAN.to_bits());
        Ok(Tensor { raw })
    }

    pub(crate) fn output_indices(&self, shape: &[usize], what: &str) -> Result<IndexTensor> {
        let raw = self.alloc(shape, what)?;
        self.poison(&raw, u32::MAX);
        Ok(IndexTensor { raw })
    }

    fn owners(&self, op: &str, raws: &[&Raw]) -> Result<()> {
        raws.iter().try_for_each(|r| self.check_owner(r, op))
    }

    /// `y = conv2d(x, w) + bias` on the GPU. Same semantics as
    /// [`reference::conv2d_forward`](crate::reference::conv2d_forward).
    pub fn conv2d_forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        spec: &Conv2dSpec,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d_forward";
        let g = spec.forward_geometry(dims4(&x.raw, "x")?, dims4(&w.raw, "w")?)?;
        if let Some(b) = bias
            && b.shape() != [g.k]
        {
            return Err(mismatch(format!(
                "bias shape {:?} must be [K] = [{}]",
                b.shape(),
                g.k
            )));
        }
        self.owners(OP, &[&x.raw, &w.raw])?;
        if let Some(b) = bias {
            self.check_owner(&b.raw, OP)?;
        }
        let y = self.new_output(&g.y_shape(), "conv2d_forward output")?;
        if g.n > 0 {
            self.check_bindable(w.len(), "the weight")?;
            let base = conv_params(&g)?;
            let (xu, yu) = (g.c * g.h * g.w, g.k * g.oh * g.ow);
            let chunks = batch_chunks(self, g.n, &[(xu, "input sample"), (yu, "output sample")])?;
            let wb = Bind::whole(w.raw.buffer(), w.len());
            let bb = match bias {
                Some(b) => Bind::whole(b.raw.buffer(), b.len()),
                None => Bind::whole(&self.dummy, 0),
            };
            let tiled = self.use_tiled(g.kg(), g.cg() * g.kh * g.kw) && g.kg() >= 4;
            let depthwise = self.use_depthwise(&g, tiled);
            let r = g.cg() * g.kh * g.kw;
            let job = |n: usize| GemmJob {
                n,
                rows: g.oh,
                cols: g.ow,
                groups: g.groups,
                in_c: g.c,
                in_cg: g.cg(),
                in_hw: [g.h, g.w],
                a_step: g.stride,
                base: [-(g.padding.top as i64), -(g.padding.left as i64)],
                out_c: g.k,
                out_cg: g.kg(),
                out_hw: [g.oh, g.ow],
                o_step: [1, 1],
                first: [0, 0],
                reduce: r,
                w_group: g.kg() * r,
                w_col: r,
                lattice: Lattice {
                    taps: [g.kh, g.kw],
                    shift: [g.dilation[0] as i64, g.dilation[1] as i64],
                    w_steps: [g.kh * g.kw, g.kw, 1],
                    w_first: 0,
                },
                pointwise: g.is_pointwise(),
            };
            let max_chunk = chunks.iter().map(|&(a, b)| b - a).max().unwrap_or(0);
            let splits = if tiled {
                let j = job(max_chunk);
                self.partial_splits(j.tiles(self.gemm_tile(j.out_cg)), r, max_chunk * yu)
            } else {
                1
            };
            let partial = self.partial_buffer(splits, max_chunk * yu)?;
            let mut ds = Vec::new();
            for (n0, n1) in chunks {
                let (xb, x_off) = self.window(x.raw.buffer(), n0 * xu, n1 * xu);
                let (yb, out_off) = self.window(y.raw.buffer(), n0 * yu, n1 * yu);
                if tiled {
                    self.gemm_chunk(
                        &mut ds,
                        &[job(n1 - n0)],
                        [xb, wb, bb],
                        x_off,
                        (yb, out_off),
                        (n1 - n0) * yu,
                        bias.is_some(),
                        &partial,
                        splits,
                    )?;
                    continue;
                }
                // Depthwise layers (one input channel per group, too few output channels per
                // group for the GEMM) run on their own kernel, a strip of outputs per
                // invocation; the rest of what the GEMM does not take on the direct kernel.
                let kernel = if depthwise {
                    Kernel::Conv2dDepthwise
                } else {
                    Kernel::Conv2dForward
                };
                let total = (n1 - n0) * g.k * element_rows(g.oh, depthwise) * g.ow;
                let params = ConvParams {
                    n: (n1 - n0) as u32,
                    has_bias: bias.is_some() as u32,
                    x_off,
                    out_off,
                    total: to_u32(total, "outputs per chunk")?,
                    ..base
                };
                ds.push(Dispatch {
                    kernel,
                    params: bytemuck::bytes_of(&params).to_vec(),
                    bindings: vec![xb, wb, bb, yb],
                    items: total as u64,
                });
            }
            self.execute(OP, &ds)?;
        }
        if self.checked {
            self.check_conv2d_forward(x, w, bias, spec, &y)?;
        }
        Ok(y)
    }

    /// dx on the GPU: the transposed convolution of dy, by index arithmetic (the implicit GEMM
    /// split by stride phase, the depthwise kernel or the direct one). Same semantics as
    /// [`reference::conv2d_backward_input`](crate::reference::conv2d_backward_input).
    pub fn conv2d_backward_input(
        &self,
        dy: &Tensor,
        w: &Tensor,
        input_hw: [usize; 2],
        spec: &Conv2dSpec,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d_backward_input";
        let g =
            spec.backward_input_geometry(dims4(&dy.raw, "dy")?, dims4(&w.raw, "w")?, input_hw)?;
        self.owners(OP, &[&dy.raw, &w.raw])?;
        let dx = self.new_output(&g.x_shape(), "conv2d_backward_input output")?;
        if g.n > 0 {
            self.check_bindable(w.len(), "the weight")?;
            let base = conv_params(&g)?;
            let (xu, yu) = (g.c * g.h * g.w, g.k * g.oh * g.ow);
            let chunks = batch_chunks(self, g.n, &[(xu, "dx sample"), (yu, "dy sample")])?;
            let wb = Bind::whole(w.raw.buffer(), w.len());
            let phases = if self.use_tiled(g.cg(), g.kg() * g.kh * g.kw) {
                Some(dx_phases(&g))
            } else {
                None
            };
            let depthwise = self.use_depthwise(&g, phases.is_some());
            let khw = g.kh * g.kw;
            let job = |n: usize, ph: &Phase| GemmJob {
                n,
                rows: ph.rows[0],
                cols: ph.rows[1],
                groups: g.groups,
                in_c: g.k,
                in_cg: g.kg(),
                in_hw: [g.oh, g.ow],
                a_step: [1, 1],
                base: ph.base,
                out_c: g.c,
                out_cg: g.cg(),
                out_hw: [g.h, g.w],
                o_step: g.stride,
                first: ph.first,
                reduce: ph.reduce,
                w_group: g.kg() * g.cg() * khw,
                w_col: khw,
                lattice: ph.lattice,
                pointwise: g.is_pointwise(),
            };
            let max_chunk = chunks.iter().map(|&(a, b)| b - a).max().unwrap_or(0);
            // One split count for all phases of a chunk (one second pass sums them), sized by
            // the largest phase.
            let splits = match &phases {
                Some(phases) => {
                    let (tiles, reduce) = phases
                        .iter()
                        .map(|ph| (job(max_chunk, ph).tiles(self.gemm_tile(g.cg())), ph.reduce))
                        .max()
                        .unwrap_or((0, 0));
                    self.partial_splits(tiles, reduce, max_chunk * xu)
                }
                None => 1,
            };
            let partial = self.partial_buffer(splits, max_chunk * xu)?;
            let mut ds = Vec::new();
            for (n0, n1) in chunks {
                let (dyb, dy_off) = self.window(dy.raw.buffer(), n0 * yu, n1 * yu);
                let (dxb, out_off) = self.window(dx.raw.buffer(), n0 * xu, n1 * xu);
                let nc = n1 - n0;
                if let Some(phases) = &phases {
                    let jobs: Vec<GemmJob> = phases.iter().map(|ph| job(nc, ph)).collect();
                    self.gemm_chunk(
                        &mut ds,
                        &jobs,
                        [dyb, wb, Bind::whole(&self.dummy, 0)],
                        dy_off,
                        (dxb, out_off),
                        nc * xu,
                        false,
                        &partial,
                        splits,
                    )?;
                    continue;
                }
                // Depthwise layers run on their own kernel, a strip of elements per invocation.
                let kernel = if depthwise {
                    Kernel::Conv2dDepthwiseBackwardInput
                } else {
                    Kernel::Conv2dBackwardInput
                };
                let total = nc * g.c * element_rows(g.h, depthwise) * g.w;
                let params = ConvParams {
                    n: nc as u32,
                    dy_off,
                    out_off,
                    total: to_u32(total, "inputs per chunk")?,
                    ..base
                };
                ds.push(Dispatch {
                    kernel,
                    params: bytemuck::bytes_of(&params).to_vec(),
                    bindings: vec![dyb, wb, dxb],
                    items: total as u64,
                });
            }
            self.execute(OP, &ds)?;
        }
        if self.checked {
            self.check_conv2d_backward_input(dy, w, input_hw, spec, &dx)?;
        }
        Ok(dx)
    }
    /// dW on the GPU: per-workgroup partial sums over N·OH·OW and an ordered second pass
    /// (deterministic, no atomics). Same semantics as
    /// [`reference::conv2d_backward_weight`](crate::reference::conv2d_backward_weight).
    pub fn conv2d_backward_weight(
        &self,
        x: &Tensor,
        dy: &Tensor,
        kernel_hw: [usize; 2],
        spec: &Conv2dSpec,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d_backward_weight";
        let g =
            spec.backward_weight_geometry(dims4(&x.raw, "x")?, dims4(&dy.raw, "dy")?, kernel_hw)?;
        self.owners(OP, &[&x.raw, &dy.raw])?;
        let dw = self.new_output(&g.w_shape(), "conv2d_backward_weight output")?;
        let elems = dw.len();
        self.check_bindable(elems, "dW")?;
        let base = conv_params(&g)?;
        let (xu, yu) = (g.c * g.h * g.w, g.k * g.oh * g.ow);
        let chunks = if g.n == 0 {
            vec![(0, 0)]
        } else {
            batch_chunks(self, g.n, &[(xu, "input sample"), (yu, "dy sample")])?
        };
        let max_count = chunks
            .iter()
            .map(|&(a, b)| (b - a) * g.oh * g.ow)
            .max()
            .unwrap_or(0);
        let tiled = self.use_tiled(g.kg(), g.cg() * g.kh * g.kw) && g.kg() >= 4;
        let depthwise = self.use_depthwise(&g, tiled);
        let tile = self.dw_tile();
        let taps = if tiled {
            Some(self.scratch(bytemuck::cast_slice(&forward_taps(&g)?)))
        } else {
            None
        };
        let split_plan = |count: usize| {
            if tiled {
                tiled_splits(count, &g, tile, self.is_cpu())
            } else {
                splits(count, elems)
            }
        };
        let (max_splits, _) = split_plan(max_count);
        self.check_bindable(max_splits * elems, "dW partial sums")?;
        let partial = self.alloc(&[max_splits * elems], "dW partial sums")?;
        let mut ds = Vec::new();
        for (ci, &(n0, n1)) in chunks.iter().enumerate() {
            let count = (n1 - n0) * g.oh * g.ow;
            let (nsplit, split_len) = split_plan(count);
            let pb = Bind::whole(partial.buffer(), nsplit * elems);
            if count > 0 {
                let (xb, x_off) = self.window(x.raw.buffer(), n0 * xu, n1 * xu);
                let (dyb, dy_off) = self.window(dy.raw.buffer(), n0 * yu, n1 * yu);
                let params = ConvParams {
                    n: (n1 - n0) as u32,
                    x_off,
                    dy_off,
                    splits: nsplit as u32,
                    split_len: to_u32(split_len, "dW split length")?,
                    ..base
                };
                ds.push(match &taps {
                    Some(taps) => {
                        let reduce = g.cg() * g.kh * g.kw;
                        let (params, tiles) = tile_grid(
                            ConvParams {
                                reduce: to_u32(reduce, "C/groups x kh x kw")?,
                                ..params
                            },
                            g.kg(),
                            reduce,
                            g.groups,
                            tile,
                        )?;
                        let total = tiles as usize * nsplit;
                        Dispatch {
                            kernel: Kernel::Conv2dBackwardWeightTiled(tile, g.is_pointwise()),
                            params: bytemuck::bytes_of(&ConvParams {
                                total: to_u32(total, "dW workgroups")?,
                                ..params
                            })
                            .to_vec(),
                            bindings: vec![xb, dyb, Bind::whole(taps.buffer(), 4 * reduce), pb],
                            items: total as u64,
                        }
                    }
                    None => {
                        // Depthwise layers: one workgroup per output channel and chunk of
                        // taps, reading dy once for the chunk; the rest: one per weight.
                        let (kernel, total) = if depthwise {
                            let chunks = (g.kh * g.kw).div_ceil(DEPTHWISE_TAPS);
                            (Kernel::Conv2dDepthwiseBackwardWeight, nsplit * g.k * chunks)
                        } else {
                            (Kernel::Conv2dBackwardWeight, nsplit * elems)
                        };
                        Dispatch {
                            kernel,
                            params: bytemuck::bytes_of(&ConvParams {
                                total: to_u32(total, "dW workgroups")?,
                                ..params
                            })
                            .to_vec(),
                            bindings: vec![xb, dyb, pb],
                            items: total as u64,
                        }
                    }
                });
            }
            ds.push(self.reduce_dispatch(
                pb,
                Bind::whole(dw.raw.buffer(), elems),
                0,
                elems,
                if count > 0 { nsplit } else { 0 },
                ci > 0,
            ));
        }
        self.execute(OP, &ds)?;
        if self.checked {
            self.check_conv2d_backward_weight(x, dy, kernel_hw, spec, &dw)?;
        }
        Ok(dw)
    }

    /// The second pass of a split reduction: `out[out_off + e] (+)= Σ_s partial[s][e]`.
    fn reduce_dispatch<'a>(
        &self,
        partial: Bind<'a>,
        out: Bind<'a>,
        out_off: u32,
        elems: usize,
        splits: usize,
        accumulate: bool,
    ) -> Dispatch<'a> {
        let params = ReduceParams {
            elems: elems as u32,
            splits: splits as u32,
            accumulate: accumulate as u32,
            out_off,
        };
        Dispatch {
            kernel: Kernel::ReducePartials,
            params: bytemuck::bytes_of(&params).to_vec(),
            bindings: vec![partial, out],
            items: elems as u64,
        }
    }

    /// Reduction splits of an implicit GEMM with `tiles` tiles of one split, `reduce` steps and
    /// `elems` outputs per batch chunk, within the partial-sum budget.
    fn partial_splits(&self, tiles: usize, reduce: usize, elems: usize) -> usize {
        let budget = (MAX_PARTIAL_BYTES.min(self.max_binding) / 4) as usize / elems.max(1);
        gemm_splits(self.split_target, tiles, reduce)
            .min(budget)
            .max(1)
    }

    /// Scratch for `splits` partial outputs of `elems` each (none for one split).
    fn partial_buffer(&self, splits: usize, elems: usize) -> Result<Option<Raw>> {
        if splits <= 1 {
            return Ok(None);
        }
        Ok(Some(self.alloc(&[splits * elems], "split-K partial sums")?))
    }
    /// db on the GPU: dy summed over N, OH, OW per channel, deterministic.
    pub fn conv2d_backward_bias(&self, dy: &Tensor) -> Result<Tensor> {
        const OP: &str = "conv2d_backward_bias";
        let [n, k, oh, ow] = dims4(&dy.raw, "dy")?;
        self.check_owner(&dy.raw, OP)?;
        let db = self.new_output(&[k], "conv2d_backward_bias output")?;
        if k == 0 {
            return Ok(db);
        }
        let base = ConvParams {
            k: to_u32(k, "K")?,
            oh: to_u32(oh, "OH")?,
            ow: to_u32(ow, "OW")?,
            ..Default::default()
        };
        let yu = k * oh * ow;
        let chunks = if n * oh * ow == 0 {
            vec![(0, 0)]
        } else {
            batch_chunks(self, n, &[(yu, "dy sample")])?
        };
        let max_count = chunks
            .iter()
            .map(|&(a, b)| (b - a) * oh * ow)
            .max()
            .unwrap_or(0);
        let partial = self.alloc(&[splits(max_count, k).0 * k], "db partial sums")?;
        let mut ds = Vec::new();
        for (ci, &(n0, n1)) in chunks.iter().enumerate() {
            let count = (n1 - n0) * oh * ow;
            let (nsplit, split_len) = splits(count, k);
            let pb = Bind::whole(partial.buffer(), nsplit * k);
            if count > 0 {
                let (dyb, dy_off) = self.window(dy.raw.buffer(), n0 * yu, n1 * yu);
                let params = ConvParams {
                    n: (n1 - n0) as u32,
                    dy_off,
                    total: to_u32(nsplit * k, "db workgroups")?,
                    splits: nsplit as u32,
                    split_len: to_u32(split_len, "db split length")?,
                    ..base
                };
                ds.push(Dispatch {
                    kernel: Kernel::Conv2dBackwardBias,
                    params: bytemuck::bytes_of(&params).to_vec(),
                    bindings: vec![dyb, pb],
                    items: (nsplit * k) as u64,
                });
            }
            ds.push(self.reduce_dispatch(
                pb,
                Bind::whole(db.raw.buffer(), k),
                0,
                k,
                if count > 0 { nsplit } else { 0 },
                ci > 0,
            ));
        }
        self.execute(OP, &ds)?;
        if self.checked {
            self.check_conv2d_backward_bias(dy, &db)?;
        }
        Ok(db)
    }
}
