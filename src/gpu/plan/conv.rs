//! Plans of conv2d forward, dx, dW and db: which kernels, tiles, splits and chunks, as the
//! dispatches they record.

use super::dx_taps;
use super::gemm::{GemmJob, gemm_chunk, reduce_step};
use super::phases::{Lattice, Phase, dx_phases};
use super::rules::{
    backward_input_by_taps, backward_input_uses_gemm, dw_tile, element_rows, forward_uses_gemm,
    gemm_tile, partial_splits, reduction_splits, tiled_dw_splits, use_depthwise, use_winograd,
};
use super::winograd;
use super::{DeviceProfile, Role, Slot, Step};
use crate::error::Result;
use crate::gpu::kernels::{ConvParams, DEPTHWISE_TAPS, Kernel, Tile, sizes, to_u32};
use crate::spec::Conv2dGeometry;

/// The kernels a conv op runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvAlgorithm {
    /// The implicit GEMM (`conv2d_gemm.wgsl`, `conv2d_backward_weight_tiled.wgsl`).
    Gemm,
    /// The depthwise kernels (one input channel per group).
    Depthwise,
    /// The first, direct kernels (one invocation per output, one workgroup per dW element).
    Direct,
    /// Winograd F(2x2, 3x3) (`winograd_*.wgsl` around the batched `matmul.wgsl`).
    Winograd,
}

/// What a conv op will record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvPlan {
    /// The kernels.
    pub algorithm: ConvAlgorithm,
    /// The GEMM's tile, if it runs one.
    pub tile: Option<Tile>,
    /// Splits of the reduction: split-K of the forward and dx GEMMs (1: none), or of the
    /// largest batch chunk of dW and db.
    pub splits: usize,
    /// Batch chunks `(n0, n1)`, each within one storage binding.
    pub chunks: Vec<(usize, usize)>,
    /// Stride phases dx runs as GEMMs (0 for the other ops and kernels).
    pub phases: usize,
    /// Elements of scratch ([`Role::Partial`]) the dispatches need, and what they hold; `None`
    /// when there is none.
    pub scratch: Option<(usize, &'static str)>,
    /// Elements of the second scratch ([`Role::Transform`]): Winograd's transforms.
    pub transforms: Option<(usize, &'static str)>,
    /// The dispatches, in order.
    pub steps: Vec<Step>,
}

impl ConvPlan {
    /// Bytes of both scratch buffers.
    pub fn workspace_bytes(&self) -> u64 {
        [self.scratch, self.transforms]
            .iter()
            .flatten()
            .map(|&(elems, _)| elems as u64 * 4)
            .sum()
    }
}

/// The params block of a geometry; per-chunk fields (`n`, offsets, `total`) are set by callers.
pub(super) fn conv_params(g: &Conv2dGeometry) -> Result<ConvParams> {
    let p = g.padding;
    to_u32(g.h + p.top + p.bottom, "padded input height")?;
    to_u32(g.w + p.left + p.right, "padded input width")?;
    Ok(sizes!(ConvParams {
        c: g.c => "C",
        h: g.h => "H",
        w: g.w => "W",
        k: g.k => "K",
        kh: g.kh => "kh",
        kw: g.kw => "kw",
        groups: g.groups => "groups",
        oh: g.oh => "OH",
        ow: g.ow => "OW",
        cg: g.cg() => "C/groups",
        kg: g.kg() => "K/groups",
        stride_h: g.stride[0] => "stride_h",
        stride_w: g.stride[1] => "stride_w",
        dil_h: g.dilation[0] => "dilation_h",
        dil_w: g.dilation[1] => "dilation_w",
        pad_top: p.top => "padding top",
        pad_left: p.left => "padding left",
        ..Default::default()
    }))
}

/// Scratch of split-K partial outputs (none for one split).
fn partial_scratch(splits: usize, elems: usize) -> Option<(usize, &'static str)> {
    (splits > 1).then_some((splits * elems, "split-K partial sums"))
}

/// The forward `y = conv2d(x, w) + bias` of a geometry with `n > 0`.
pub fn conv2d_forward(p: &DeviceProfile, g: &Conv2dGeometry, has_bias: bool) -> Result<ConvPlan> {
    let w_len = g.k * g.cg() * g.kh * g.kw;
    p.check_bindable(w_len, "the weight")?;
    if use_winograd(p, g)
        && let Some(plan) = winograd::forward(p, g, has_bias)?
    {
        return Ok(plan);
    }
    let base = conv_params(g)?;
    let (xu, yu) = (g.c * g.h * g.w, g.k * g.oh * g.ow);
    let chunks = p.chunks(g.n, &[(xu, "input sample"), (yu, "output sample")])?;
    let wb = Slot::whole(Role::W, w_len);
    let bb = if has_bias {
        Slot::whole(Role::Bias, g.k)
    } else {
        Slot::whole(Role::Dummy, 0)
    };
    let tiled = forward_uses_gemm(p, g);
    let depthwise = use_depthwise(p, g, tiled);
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
    let tile = gemm_tile(p, g.kg());
    let max_chunk = chunks.iter().map(|&(a, b)| b - a).max().unwrap_or(0);
    let splits = if tiled {
        partial_splits(p, job(max_chunk).tiles(tile), r, max_chunk * yu)
    } else {
        1
    };
    let mut steps = Vec::new();
    for &(n0, n1) in &chunks {
        let (xb, x_off) = p.window(Role::X, n0 * xu, n1 * xu);
        let (yb, out_off) = p.window(Role::Out, n0 * yu, n1 * yu);
        if tiled {
            let elems = (n1 - n0) * yu;
            let (inputs, out) = ([xb, wb, bb], (yb, out_off));
            gemm_chunk(
                &mut steps,
                &[job(n1 - n0)],
                tile,
                inputs,
                x_off,
                out,
                elems,
                has_bias,
                splits,
                false,
            )?;
            continue;
        }
        // Depthwise layers (one input channel per group, too few output channels per group for
        // the GEMM) run on their own kernel, a strip of outputs per invocation; the rest of what
        // the GEMM does not take on the direct kernel.
        let kernel = if depthwise {
            Kernel::Conv2dDepthwise
        } else {
            Kernel::Conv2dForward
        };
        let total = (n1 - n0) * g.k * element_rows(g.oh, depthwise) * g.ow;
        let params = ConvParams {
            n: (n1 - n0) as u32,
            has_bias: has_bias as u32,
            x_off,
            out_off,
            total: to_u32(total, "outputs per chunk")?,
            ..base
        };
        steps.push(Step::new(kernel, &params, vec![xb, wb, bb, yb], total));
    }
    Ok(ConvPlan {
        algorithm: algorithm(tiled, depthwise),
        tile: tiled.then_some(tile),
        splits,
        scratch: partial_scratch(splits, max_chunk * yu),
        chunks,
        phases: 0,
        transforms: None,
        steps,
    })
}

fn algorithm(gemm: bool, depthwise: bool) -> ConvAlgorithm {
    match (gemm, depthwise) {
        (true, _) => ConvAlgorithm::Gemm,
        (false, true) => ConvAlgorithm::Depthwise,
        (false, false) => ConvAlgorithm::Direct,
    }
}

/// dx, the transposed convolution of dy, of a geometry with `n > 0`; with `accumulate`, added
/// to the output (through the scratch and a second pass).
pub fn conv2d_backward_input(
    p: &DeviceProfile,
    g: &Conv2dGeometry,
    accumulate: bool,
) -> Result<ConvPlan> {
    let w_len = g.k * g.cg() * g.kh * g.kw;
    p.check_bindable(w_len, "the weight")?;
    if use_winograd(p, g)
        && let Some(plan) = winograd::backward_input(p, g, accumulate)?
    {
        return Ok(plan);
    }
    if backward_input_by_taps(p, g)
        && let Some(plan) = dx_taps::backward_input(p, g, accumulate)?
    {
        return Ok(plan);
    }
    let base = conv_params(g)?;
    let (xu, yu) = (g.c * g.h * g.w, g.k * g.oh * g.ow);
    let chunks = p.chunks(g.n, &[(xu, "dx sample"), (yu, "dy sample")])?;
    let wb = Slot::whole(Role::W, w_len);
    let phases = backward_input_uses_gemm(p, g).then(|| dx_phases(g));
    let depthwise = use_depthwise(p, g, phases.is_some());
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
    let tile = gemm_tile(p, g.cg());
    let max_chunk = chunks.iter().map(|&(a, b)| b - a).max().unwrap_or(0);
    // One split count for all phases of a chunk (one second pass sums them), sized by the
    // largest phase.
    let splits = match &phases {
        Some(phases) => {
            let (tiles, reduce) = phases
                .iter()
                .map(|ph| (job(max_chunk, ph).tiles(tile), ph.reduce))
                .max()
                .unwrap_or((0, 0));
            partial_splits(p, tiles, reduce, max_chunk * xu)
        }
        None => 1,
    };
    let mut steps = Vec::new();
    for &(n0, n1) in &chunks {
        let (dyb, dy_off) = p.window(Role::Dy, n0 * yu, n1 * yu);
        let (dxb, out_off) = p.window(Role::Out, n0 * xu, n1 * xu);
        let nc = n1 - n0;
        if let Some(phases) = &phases {
            let jobs: Vec<GemmJob> = phases.iter().map(|ph| job(nc, ph)).collect();
            let inputs = [dyb, wb, Slot::whole(Role::Dummy, 0)];
            gemm_chunk(
                &mut steps,
                &jobs,
                tile,
                inputs,
                dy_off,
                (dxb, out_off),
                nc * xu,
                false,
                splits,
                accumulate,
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
        // Accumulating: into the scratch, then added to dx by a second pass.
        let (target, target_off) = if accumulate {
            (Slot::whole(Role::Partial, nc * xu), 0)
        } else {
            (dxb, out_off)
        };
        let params = ConvParams {
            n: nc as u32,
            dy_off,
            out_off: target_off,
            total: to_u32(total, "inputs per chunk")?,
            ..base
        };
        steps.push(Step::new(kernel, &params, vec![dyb, wb, target], total));
        if accumulate {
            steps.push(reduce_step(target, dxb, out_off, nc * xu, 1, true));
        }
    }
    Ok(ConvPlan {
        algorithm: algorithm(phases.is_some(), depthwise),
        tile: phases.is_some().then_some(tile),
        splits,
        scratch: if accumulate {
            p.workspace_splits(splits * max_chunk * xu, "dx accumulation's partial sums")?;
            Some((splits * max_chunk * xu, "dx accumulation's partial sums"))
        } else {
            partial_scratch(splits, max_chunk * xu)
        },
        chunks,
        phases: phases.as_ref().map_or(0, Vec::len),
        transforms: None,
        steps,
    })
}

/// Batch chunks of a reduction over N·OH·OW of `plane` pixels a sample (one `(0, 0)` chunk when
/// `empty`: nothing is reduced, but the output is still written), and the longest chunk's
/// reduction length.
fn reduction_chunks(
    p: &DeviceProfile,
    n: usize,
    plane: usize,
    empty: bool,
    units: &[(usize, &str)],
) -> Result<(Vec<(usize, usize)>, usize)> {
    let chunks = if empty {
        vec![(0, 0)]
    } else {
        p.chunks(n, units)?
    };
    let longest = chunks.iter().map(|&(a, b)| (b - a) * plane).max();
    Ok((chunks, longest.unwrap_or(0)))
}

/// dW: per-workgroup partial sums over N·OH·OW and an ordered second pass per batch chunk
/// (deterministic, no atomics); with `accumulate`, every pass adds to the output.
pub fn conv2d_backward_weight(
    p: &DeviceProfile,
    g: &Conv2dGeometry,
    accumulate: bool,
) -> Result<ConvPlan> {
    let elems = g.k * g.cg() * g.kh * g.kw;
    p.check_bindable(elems, "dW")?;
    if use_winograd(p, g)
        && g.n > 0
        && let Some(plan) = winograd::backward_weight(p, g, accumulate)?
    {
        return Ok(plan);
    }
    let cap = p.workspace_splits(elems, "dW partial sums")?;
    let base = conv_params(g)?;
    let (xu, yu) = (g.c * g.h * g.w, g.k * g.oh * g.ow);
    let units = [(xu, "input sample"), (yu, "dy sample")];
    let (chunks, max_count) = reduction_chunks(p, g.n, g.oh * g.ow, g.n == 0, &units)?;
    let tiled = forward_uses_gemm(p, g);
    let depthwise = use_depthwise(p, g, tiled);
    let tile = dw_tile(p);
    let split_plan = |count: usize| {
        if tiled {
            tiled_dw_splits(count, g, tile, p.cpu, cap)
        } else {
            reduction_splits(count, elems, cap)
        }
    };
    let (max_splits, _) = split_plan(max_count);
    p.check_bindable(max_splits * elems, "dW partial sums")?;
    let mut steps = Vec::new();
    for (ci, &(n0, n1)) in chunks.iter().enumerate() {
        let count = (n1 - n0) * g.oh * g.ow;
        let (nsplit, split_len) = split_plan(count);
        let pb = Slot::whole(Role::Partial, nsplit * elems);
        if count > 0 {
            let (xb, x_off) = p.window(Role::X, n0 * xu, n1 * xu);
            let (dyb, dy_off) = p.window(Role::Dy, n0 * yu, n1 * yu);
            let params = ConvParams {
                n: (n1 - n0) as u32,
                x_off,
                dy_off,
                splits: nsplit as u32,
                split_len: to_u32(split_len, "dW split length")?,
                ..base
            };
            let (kernel, params, total) = if tiled {
                let reduce = g.cg() * g.kh * g.kw;
                let tiles_m = g.kg().div_ceil(tile.bm as usize);
                let tiles_n = reduce.div_ceil(tile.bn as usize);
                let total = tiles_m * tiles_n * g.groups * nsplit;
                let params = ConvParams {
                    reduce: to_u32(reduce, "C/groups x kh x kw")?,
                    tiles_m: to_u32(tiles_m, "row tiles")?,
                    tiles_n: to_u32(tiles_n, "column tiles")?,
                    ..params
                };
                let kernel = Kernel::Conv2dBackwardWeightTiled(tile, g.is_pointwise());
                (kernel, params, total)
            } else if depthwise {
                // Depthwise layers: one workgroup per output channel and chunk of taps, reading
                // dy once for the chunk.
                let taps = (g.kh * g.kw).div_ceil(DEPTHWISE_TAPS);
                (
                    Kernel::Conv2dDepthwiseBackwardWeight,
                    params,
                    nsplit * g.k * taps,
                )
            } else {
                // The rest: one workgroup per weight element.
                (Kernel::Conv2dBackwardWeight, params, nsplit * elems)
            };
            let params = ConvParams {
                total: to_u32(total, "dW workgroups")?,
                ..params
            };
            steps.push(Step::new(kernel, &params, vec![xb, dyb, pb], total));
        }
        let out = Slot::whole(Role::Out, elems);
        let used = if count > 0 { nsplit } else { 0 };
        steps.push(reduce_step(pb, out, 0, elems, used, ci > 0 || accumulate));
    }
    Ok(ConvPlan {
        algorithm: algorithm(tiled, depthwise),
        tile: tiled.then_some(tile),
        splits: max_splits,
        chunks,
        phases: 0,
        scratch: Some((max_splits * elems, "dW partial sums")),
        transforms: None,
        steps,
    })
}

/// db of a dy of shape `[n, k, oh, ow]` with `k > 0`: dy summed over N, OH, OW per channel,
/// deterministic; with `accumulate`, added to the output.
pub fn conv2d_backward_bias(
    p: &DeviceProfile,
    dy: [usize; 4],
    accumulate: bool,
) -> Result<ConvPlan> {
    let [n, k, oh, ow] = dy;
    let cap = p.workspace_splits(k, "db partial sums")?;
    let base = ConvParams {
        k: to_u32(k, "K")?,
        oh: to_u32(oh, "OH")?,
        ow: to_u32(ow, "OW")?,
        ..Default::default()
    };
    let yu = k * oh * ow;
    let units = [(yu, "dy sample")];
    let (chunks, max_count) = reduction_chunks(p, n, oh * ow, n * oh * ow == 0, &units)?;
    let max_splits = reduction_splits(max_count, k, cap).0;
    let mut steps = Vec::new();
    for (ci, &(n0, n1)) in chunks.iter().enumerate() {
        let count = (n1 - n0) * oh * ow;
        let (nsplit, split_len) = reduction_splits(count, k, cap);
        let pb = Slot::whole(Role::Partial, nsplit * k);
        if count > 0 {
            let (dyb, dy_off) = p.window(Role::Dy, n0 * yu, n1 * yu);
            let params = ConvParams {
                n: (n1 - n0) as u32,
                dy_off,
                total: to_u32(nsplit * k, "db workgroups")?,
                splits: nsplit as u32,
                split_len: to_u32(split_len, "db split length")?,
                ..base
            };
            steps.push(Step::new(
                Kernel::Conv2dBackwardBias,
                &params,
                vec![dyb, pb],
                nsplit * k,
            ));
        }
        let out = Slot::whole(Role::Out, k);
        let used = if count > 0 { nsplit } else { 0 };
        steps.push(reduce_step(pb, out, 0, k, used, ci > 0 || accumulate));
    }
    Ok(ConvPlan {
        algorithm: ConvAlgorithm::Direct,
        tile: None,
        splits: max_splits,
        chunks,
        phases: 0,
        scratch: Some((max_splits * k, "db partial sums")),
        transforms: None,
        steps,
    })
}
