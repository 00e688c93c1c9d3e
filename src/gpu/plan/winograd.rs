//! Plans of Winograd F(2x2, 3x3) (Lavin & Gray 2016) for the forward and dx of 3x3 convolutions
//! with stride 1 and dilation 1, and F(3x3, 2x2) for their dW ([`backward_weight`]): the filter transform `U = G g Gᵀ` once, then per batch chunk
//! the input transform `V = Bᵀ d B` of every 4 x 4 patch, 16 x groups GEMMs `M = U V`, and the
//! output transform `Y = Aᵀ M A` of every 2 x 2 tile. The GEMMs are the implicit GEMM's own: a
//! grouped 1x1 convolution with 16 x groups groups over the transforms (the forward's plan, or
//! for dW the dW plan), planned on a `[1, 16·C, 1, tiles]` geometry and moved onto the scratch
//! buffers. Per output tile and channel pair that is 16 multiplies instead of 36 (2.25x fewer),
//! in exchange for transform scratch of 16 x (channels x tiles) for V and M: about 4x the
//! input and the output of a chunk, sized within the bindings and the workspace bound, or the
//! plan is not made (`None`: the caller plans the implicit GEMM). No atomics: deterministic.
//!
//! dx is the same computation on dy: the transposed convolution of a stride-1 3x3 conv is a
//! 3x3 conv with the kernel rotated 180° and its channels swapped per group (the filter
//! transform's `flip`), reading dy from `padding - 2` (negative padding crops).

use super::conv::{ConvAlgorithm, ConvPlan, conv2d_backward_weight, conv2d_forward};
use super::profile::chunks_of;
use super::{DeviceProfile, Role, Slot, Step};
use crate::error::Result;
use crate::gpu::kernels::{Kernel, WinogradParams, sizes, to_i32_bits, to_u32};
use crate::spec::{Conv2dGeometry, Padding2d};

/// Elements per 4 x 4 transform.
const XI: usize = 16;

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

/// Samples per batch chunk: each tensor's window (`windows`, elements a sample) within a
/// binding, and the transforms (`fixed` bytes, plus `per_sample` bytes a sample, plus alignment
/// slack) within the workspace bound; at most `n`. 0 when not one sample fits.
fn samples_per_chunk(
    p: &DeviceProfile,
    windows: &[usize],
    fixed: u64,
    per_sample: u64,
    n: usize,
) -> usize {
    let max = p.binding_elems();
    let room = p.max_workspace.saturating_sub(fixed + 4 * p.align);
    let by_workspace = usize::try_from(room / per_sample.max(1)).unwrap_or(usize::MAX);
    windows
        .iter()
        .map(|&u| max / u.max(1))
        .min()
        .unwrap_or(0)
        .min(by_workspace)
        .min(n)
}

/// A binding of a scratch buffer from byte `offset`, `elems` long.
fn scratch_slot(role: Role, offset: u64, elems: usize) -> Slot {
    Slot {
        role,
        offset,
        size: (elems.max(1) as u64) * 4,
    }
}

/// The GEMM stage of a chunk of `tiles` tiles as a grouped 1x1 convolution: activations
/// `[1, 16·in_c, 1, tiles]` (V, or for dW also dy's transform), weights
/// `[16·out_c, in_c / groups, 1, 1]` (U), output `[1, 16·out_c, 1, tiles]` (M), 16·groups groups:
/// group `xi·groups + g` multiplies transform element `xi` of group `g`.
fn gemm_geometry(in_c: usize, out_c: usize, groups: usize, tiles: usize) -> Conv2dGeometry {
    Conv2dGeometry {
        n: 1,
        c: XI * in_c,
        h: 1,
        w: tiles,
        k: XI * out_c,
        kh: 1,
        kw: 1,
        oh: 1,
        ow: tiles,
        groups: XI * groups,
        stride: [1, 1],
        padding: Padding2d::default(),
        dilation: [1, 1],
    }
}

/// A sub-plan's steps with each role moved onto a scratch buffer at a byte offset
/// (`(role, to, offset)`); roles not named stay.
fn moved(steps: Vec<Step>, map: &[(Role, Role, u64)]) -> Vec<Step> {
    steps
        .into_iter()
        .map(|mut s| {
            for b in &mut s.binds {
                if let Some(&(_, to, offset)) = map.iter().find(|m| m.0 == b.role) {
                    b.role = to;
                    b.offset += offset;
                }
            }
            s
        })
        .collect()
}

fn plan(p: &DeviceProfile, j: &Job) -> Result<Option<ConvPlan>> {
    let [in_c, in_h, in_w] = j.in_chw;
    let [out_c, out_h, out_w] = j.out_chw;
    let (in_cg, out_cg) = (in_c / j.groups, out_c / j.groups);
    let tiles_hw = [out_h.div_ceil(2), out_w.div_ceil(2)];
    let per_sample = tiles_hw[0] * tiles_hw[1];
    let u_elems = XI * out_c * in_cg;
    let (v_unit, m_unit) = (XI * in_c * per_sample, XI * out_c * per_sample);
    let max = p.binding_elems();
    let (in_unit, out_unit) = (in_c * in_h * in_w, out_c * out_h * out_w);
    // Transform buffer: U, then V; scratch: M, then the GEMM's split partial sums.
    let u_bytes = align_up(u_elems as u64 * 4, p.align);
    let per_bytes = (v_unit + m_unit) as u64 * 4;
    let windows = [in_unit, out_unit, v_unit, m_unit];
    let per = samples_per_chunk(p, &windows, u_bytes, per_bytes, j.n);
    if per == 0 || u_elems > max || per_sample == 0 {
        return Ok(None);
    }
    let v_off = u_bytes;
    let transforms = (v_off / 4) as usize + per * v_unit;
    let m_bytes = align_up((per * m_unit) as u64 * 4, p.align);
    let gp = p.less_workspace(transforms as u64 * 4 + m_bytes);
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
    let u_slot = scratch_slot(Role::Transform, 0, u_elems);
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
    let chunks = chunks_of(j.n, per);
    let bias = if j.has_bias {
        Slot::whole(Role::Bias, out_c)
    } else {
        Slot::whole(Role::Dummy, 0)
    };
    let map = [
        (Role::X, Role::Transform, v_off),
        (Role::W, Role::Transform, 0),
        (Role::Out, Role::Partial, 0),
        (Role::Partial, Role::Partial, m_bytes),
    ];
    let mut partials = 0;
    for &(n0, n1) in &chunks {
        let nc = n1 - n0;
        let tiles = nc * per_sample;
        let (in_slot, in_off) = p.window(j.input, n0 * in_unit, n1 * in_unit);
        let (out_slot, out_off) = p.window(Role::Out, n0 * out_unit, n1 * out_unit);
        let v_slot = scratch_slot(Role::Transform, v_off, nc * v_unit);
        let m_slot = scratch_slot(Role::Partial, 0, nc * m_unit);
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
        let Ok(gemm) = conv2d_forward(&gp, &gemm_geometry(in_c, out_c, j.groups, tiles), false)
        else {
            return Ok(None);
        };
        partials = partials.max(gemm.scratch.map_or(0, |s| s.0));
        steps.extend(moved(gemm.steps, &map));
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
        scratch: Some(((m_bytes / 4) as usize + partials, "Winograd products")),
        transforms: Some((transforms, "Winograd transforms")),
        steps,
    }))
}

/// dW on Winograd F(3x3, 2x2) (added to the output with `accumulate`), or `None` where it does
/// not fit: per batch chunk, the input transform of x's 4 x 4 patches (the forward's kernel),
/// the gradient transform of dy's 2 x 2 tiles, the 16 x groups products `M = U Vᵀ` reducing
/// over the tiles (the dW plan of a grouped 1x1 convolution), and the output transform into dW
/// (every chunk after the first adds, in order).
pub(super) fn backward_weight(
    p: &DeviceProfile,
    g: &Conv2dGeometry,
    accumulate: bool,
) -> Result<Option<ConvPlan>> {
    let cg = g.cg();
    let tiles_hw = [g.oh.div_ceil(2), g.ow.div_ceil(2)];
    let per_sample = tiles_hw[0] * tiles_hw[1];
    let m_elems = XI * g.k * cg;
    let (v_unit, u_unit) = (XI * g.c * per_sample, XI * g.k * per_sample);
    let (x_unit, dy_unit) = (g.c * g.h * g.w, g.k * g.oh * g.ow);
    let max = p.binding_elems();
    // Transform buffer: V, then dy's U; scratch: M, then the GEMM's split partial sums.
    let m_bytes = align_up(m_elems as u64 * 4, p.align);
    let per_bytes = (v_unit + u_unit) as u64 * 4;
    let windows = [x_unit, dy_unit, v_unit, u_unit];
    // M, and at least one split of the GEMM stage's partial sums (the dW plan always has one).
    let per = samples_per_chunk(p, &windows, 2 * m_bytes, per_bytes, g.n);
    if per == 0 || m_elems > max || per_sample == 0 {
        return Ok(None);
    }
    let u_off = align_up((per * v_unit) as u64 * 4, p.align);
    let transforms = (u_off / 4) as usize + per * u_unit;
    let gp = p.less_workspace(transforms as u64 * 4 + m_bytes);
    let base = sizes!(WinogradParams {
        in_c: g.c => "input channels",
        in_h: g.h => "input rows",
        in_w: g.w => "input columns",
        out_c: g.k => "output channels",
        out_h: g.oh => "output rows",
        out_w: g.ow => "output columns",
        groups: g.groups => "groups",
        in_cg: cg => "input channels per group",
        out_cg: g.kg() => "output channels per group",
        tiles_h: tiles_hw[0] => "tile rows",
        tiles_w: tiles_hw[1] => "tile columns",
        ..Default::default()
    });
    let base = WinogradParams {
        base_h: to_i32_bits(-(g.padding.top as i64), "Winograd row origin")?,
        base_w: to_i32_bits(-(g.padding.left as i64), "Winograd column origin")?,
        ..base
    };
    let m_slot = scratch_slot(Role::Partial, 0, m_elems);
    let map = [
        (Role::X, Role::Transform, 0),
        (Role::Dy, Role::Transform, u_off),
        (Role::Out, Role::Partial, 0),
        (Role::Partial, Role::Partial, m_bytes),
    ];
    let chunks = chunks_of(g.n, per);
    let mut partials = 0;
    let mut steps = Vec::new();
    for (ci, &(n0, n1)) in chunks.iter().enumerate() {
        let nc = n1 - n0;
        let tiles = nc * per_sample;
        let (x_slot, in_off) = p.window(Role::X, n0 * x_unit, n1 * x_unit);
        let (dy_slot, out_off) = p.window(Role::Dy, n0 * dy_unit, n1 * dy_unit);
        let chunk = WinogradParams {
            n: nc as u32,
            tiles: to_u32(tiles, "Winograd tiles")?,
            in_off,
            out_off,
            ..base
        };
        let inputs = nc * g.c * per_sample;
        steps.push(Step::new(
            Kernel::WinogradInput,
            &WinogradParams {
                total: to_u32(inputs, "input transforms")?,
                ..chunk
            },
            vec![x_slot, scratch_slot(Role::Transform, 0, nc * v_unit)],
            inputs,
        ));
        let grads = nc * g.k * per_sample;
        steps.push(Step::new(
            Kernel::WinogradDy,
            &WinogradParams {
                total: to_u32(grads, "gradient transforms")?,
                ..chunk
            },
            vec![dy_slot, scratch_slot(Role::Transform, u_off, nc * u_unit)],
            grads,
        ));
        let Ok(gemm) =
            conv2d_backward_weight(&gp, &gemm_geometry(g.c, g.k, g.groups, tiles), false)
        else {
            return Ok(None);
        };
        partials = partials.max(gemm.scratch.map_or(0, |s| s.0));
        steps.extend(moved(gemm.steps, &map));
        let pairs = g.k * cg;
        steps.push(Step::new(
            Kernel::WinogradDwOutput,
            &WinogradParams {
                total: to_u32(pairs, "dW transforms")?,
                accumulate: (ci > 0 || accumulate) as u32,
                ..chunk
            },
            vec![m_slot, Slot::whole(Role::Out, pairs * 9)],
            pairs,
        ));
    }
    Ok(Some(ConvPlan {
        algorithm: ConvAlgorithm::Winograd,
        tile: None,
        splits: 1,
        chunks,
        phases: 0,
        scratch: Some(((m_bytes / 4) as usize + partials, "Winograd products")),
        transforms: Some((transforms, "Winograd transforms")),
        steps,
    }))
}
