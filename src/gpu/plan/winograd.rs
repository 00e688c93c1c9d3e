//! Plans of Winograd F(2x2, 3x3) (Lavin & Gray 2016) for the forward and dx of 3x3 convolutions
//! with stride 1 and dilation 1: the filter transform `U = G g Gᵀ` once, then per batch chunk
//! the input transform `V = Bᵀ d B` of every 4 x 4 patch, 16 x groups GEMMs `M = U V` (the
//! linear layer's tiled GEMM, batched), and the output transform `Y = Aᵀ M A` of every 2 x 2
//! tile. Per output tile and channel pair that is 16 multiplies instead of 36 (2.25x fewer),
//! in exchange for transform scratch of 16 x (channels x tiles) for V and M: about 4x the
//! input and the output of a chunk, sized within the bindings and the workspace bound, or the
//! plan is not made (`None`: the caller plans the implicit GEMM). No atomics: deterministic.
//!
//! dx is the same computation on dy: the transposed convolution of a stride-1 3x3 conv is a
//! 3x3 conv with the kernel rotated 180° and its channels swapped per group (the filter
//! transform's `flip`), reading dy from `padding - 2` (negative padding crops).

use super::conv::{ConvAlgorithm, ConvPlan};
use super::{DeviceProfile, Role, Slot, Step};
use crate::error::Result;
use crate::gpu::kernels::{Kernel, MatmulParams, WinogradParams, sizes, to_i32_bits, to_u32};
use crate::spec::Conv2dGeometry;

/// Elements per 4 x 4 transform.
const XI: usize = 16;
/// The batched GEMM's tile (`matmul.wgsl`'s BM = BN).
const MATMUL_TILE: usize = 32;

/// One Winograd job: `out = conv3x3(input)` per group, as in `shaders/lib/winograd_params.wgsl`.
struct Job {
    n: usize,
    input: Role,
    /// `[channels, rows, cols]` of the input and the output.
    in_chw: [usize; 3],
    out_chw: [usize; 3],
    groups: usize,
    base: [i64; 2],
    flip: bool,
    has_bias: bool,
    accumulate: bool,
}

/// The forward on Winograd, or `None` where its transforms do not fit.
pub(super) fn forward(
    p: &DeviceProfile,
    g: &Conv2dGeometry,
    has_bias: bool,
) -> Result<Option<ConvPlan>> {
    plan(
        p,
        &Job {
            n: g.n,
            input: Role::X,
            in_chw: [g.c, g.h, g.w],
            out_chw: [g.k, g.oh, g.ow],
            groups: g.groups,
            base: [-(g.padding.top as i64), -(g.padding.left as i64)],
            flip: false,
            has_bias,
            accumulate: false,
        },
    )
}

/// dx on Winograd (added to the output with `accumulate`), or `None` where it does not fit.
pub(super) fn backward_input(
    p: &DeviceProfile,
    g: &Conv2dGeometry,
    accumulate: bool,
) -> Result<Option<ConvPlan>> {
    plan(
        p,
        &Job {
            n: g.n,
            input: Role::Dy,
            in_chw: [g.k, g.oh, g.ow],
            out_chw: [g.c, g.h, g.w],
            groups: g.groups,
            base: [g.padding.top as i64 - 2, g.padding.left as i64 - 2],
            flip: true,
            has_bias: false,
            accumulate,
        },
    )
}

fn align_up(bytes: u64, align: u64) -> u64 {
    bytes.div_ceil(align) * align
}

fn plan(p: &DeviceProfile, j: &Job) -> Result<Option<ConvPlan>> {
    let [in_c, in_h, in_w] = j.in_chw;
    let [out_c, out_h, out_w] = j.out_chw;
    let (in_cg, out_cg) = (in_c / j.groups, out_c / j.groups);
    let tiles_hw = [out_h.div_ceil(2), out_w.div_ceil(2)];
    let per_sample = tiles_hw[0] * tiles_hw[1];
    let u_elems = XI * out_c * in_cg;
    let (v_unit, m_unit) = (XI * in_c * per_sample, XI * out_c * per_sample);
    let max = ((p.max_binding - p.align) / 4) as usize;
    let (in_unit, out_unit) = (in_c * in_h * in_w, out_c * out_h * out_w);
    // Samples per chunk: the input, output, V and M windows within a binding, and U, V and M
    // within the workspace bound.
    let u_bytes = align_up(u_elems as u64 * 4, p.align);
    let room = p.max_workspace.saturating_sub(u_bytes + 2 * p.align);
    let by_workspace = room / ((v_unit + m_unit) as u64 * 4).max(1);
    let per = [in_unit, out_unit, v_unit, m_unit]
        .iter()
        .map(|&u| max / u.max(1))
        .min()
        .unwrap_or(0)
        .min(usize::try_from(by_workspace).unwrap_or(usize::MAX))
        .min(j.n);
    if per == 0 || u_elems > max || per_sample == 0 {
        return Ok(None);
    }
    let v_off = u_bytes;
    let m_off = align_up(v_off + (per * v_unit) as u64 * 4, p.align);
    let scratch = (m_off / 4) as usize + per * m_unit;
    let scratch_slot = |offset: u64, elems: usize| Slot {
        role: Role::Partial,
        offset,
        size: (elems.max(1) as u64) * 4,
    };
    let base = sizes!(WinogradParams {
        in_c: in_c => "input channels",
        in_h: in_h => "input rows",
        in_w: in_w => "input columns",
        out_c: out_c => "output channels",
        out_h: out_h => "output rows",
        out_w: out_w => "output columns",
        groups: j.groups => "groups",
        in_cg: in_cg => "input channels per group",
        out_cg: out_cg => "output channels per group",
        tiles_h: tiles_hw[0] => "tile rows",
        tiles_w: tiles_hw[1] => "tile columns",
        flip = j.flip as u32,
        has_bias = j.has_bias as u32,
        accumulate = j.accumulate as u32,
        ..Default::default()
    });
    let base = WinogradParams {
        base_h: to_i32_bits(j.base[0], "Winograd row origin")?,
        base_w: to_i32_bits(j.base[1], "Winograd column origin")?,
        ..base
    };
    let u_slot = scratch_slot(0, u_elems);
    let filter = WinogradParams {
        total: to_u32(out_c * in_cg, "filter transforms")?,
        ..base
    };
    let weight = Slot::whole(Role::W, out_c * in_cg * 9);
    let mut steps = vec![Step::new(
        Kernel::WinogradFilter,
        &filter,
        vec![weight, u_slot],
        out_c * in_cg,
    )];
    let chunks: Vec<(usize, usize)> = (0..j.n)
        .step_by(per)
        .map(|n0| (n0, (n0 + per).min(j.n)))
        .collect();
    let bias = if j.has_bias {
        Slot::whole(Role::Bias, out_c)
    } else {
        Slot::whole(Role::Dummy, 0)
    };
    for &(n0, n1) in &chunks {
        let nc = n1 - n0;
        let tiles = nc * per_sample;
        let (in_slot, in_off) = p.window(j.input, n0 * in_unit, n1 * in_unit);
        let (out_slot, out_off) = p.window(Role::Out, n0 * out_unit, n1 * out_unit);
        let v_slot = scratch_slot(v_off, nc * v_unit);
        let m_slot = scratch_slot(m_off, nc * m_unit);
        let chunk = WinogradParams {
            n: nc as u32,
            tiles: to_u32(tiles, "Winograd tiles")?,
            in_off,
            out_off,
            ..base
        };
        let inputs = nc * in_c * per_sample;
        steps.push(Step::new(
            Kernel::WinogradInput,
            &WinogradParams {
                total: to_u32(inputs, "input transforms")?,
                ..chunk
            },
            vec![in_slot, v_slot],
            inputs,
        ));
        let batches = XI * j.groups;
        let gemm = MatmulParams {
            m: to_u32(out_cg, "GEMM rows")?,
            n: to_u32(tiles, "GEMM columns")?,
            k: to_u32(in_cg, "GEMM reduction")?,
            batches: to_u32(batches, "GEMM batches")?,
            ..Default::default()
        };
        let workgroups = out_cg.div_ceil(MATMUL_TILE) * tiles.div_ceil(MATMUL_TILE) * batches;
        steps.push(Step::new(
            Kernel::Matmul,
            &gemm,
            vec![u_slot, v_slot, Slot::whole(Role::Dummy, 0), m_slot],
            workgroups,
        ));
        let outputs = nc * out_c * per_sample;
        steps.push(Step::new(
            Kernel::WinogradOutput,
            &WinogradParams {
                total: to_u32(outputs, "output transforms")?,
                ..chunk
            },
            vec![m_slot, bias, out_slot],
            outputs,
        ));
    }
    Ok(Some(ConvPlan {
        algorithm: ConvAlgorithm::Winograd,
        tile: None,
        splits: 1,
        chunks,
        phases: 0,
        scratch: Some((scratch, "Winograd transforms")),
        steps,
    }))
}
