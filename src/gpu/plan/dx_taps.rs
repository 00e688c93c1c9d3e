//! dx of layers with few input channels per group (the 7x7 stem: C = 3), with the kernel taps
//! along the GEMM's columns: a GEMM `dcol[n, (c, i, j), oh, ow] = Σ_k dy[n, k, oh, ow] ·
//! w[k, c, i, j]` (the 1x1 GEMM over dy, the weight read transposed: `C/g · kh · kw` columns
//! instead of the stride-phase GEMM's `C/g`), then `conv2d_col2im.wgsl` gathers per dx element
//! the taps that reach it. The columns scratch ([`Role::Transform`]) is chunked by samples
//! within a binding and the workspace bound; where one sample's does not fit, `None` (the
//! caller plans the stride phases).

use super::conv::{ConvAlgorithm, ConvPlan, conv_params};
use super::gemm::{GemmJob, gemm_chunk};
use super::phases::Lattice;
use super::profile::chunks_of;
use super::rules::{gemm_tile, partial_splits};
use super::{DeviceProfile, Role, Slot, Step};
use crate::error::Result;
use crate::gpu::kernels::{ConvParams, Kernel, to_u32};
use crate::spec::Conv2dGeometry;

/// The plan, or `None` where the columns of one sample do not fit.
pub(super) fn backward_input(
    p: &DeviceProfile,
    g: &Conv2dGeometry,
    accumulate: bool,
) -> Result<Option<ConvPlan>> {
    let taps = g.kh * g.kw;
    let (cols_g, cols) = (g.cg() * taps, g.c * taps);
    let (xu, yu, colu) = (g.c * g.h * g.w, g.k * g.oh * g.ow, cols * g.oh * g.ow);
    let max = p.binding_elems();
    // Half the workspace for the columns, the rest for split partial sums.
    let by_workspace =
        usize::try_from(p.max_workspace / 2 / (colu as u64 * 4).max(1)).unwrap_or(usize::MAX);
    let per = [xu, yu, colu]
        .iter()
        .map(|&u| max / u.max(1))
        .min()
        .unwrap_or(0)
        .min(by_workspace)
        .min(g.n);
    if per == 0 {
        return Ok(None);
    }
    let base = conv_params(g)?;
    let w_len = g.k * cols_g;
    let job = |n: usize| GemmJob {
        n,
        rows: g.oh,
        cols: g.ow,
        groups: g.groups,
        in_c: g.k,
        in_cg: g.kg(),
        in_hw: [g.oh, g.ow],
        a_step: [1, 1],
        base: [0, 0],
        out_c: cols,
        out_cg: cols_g,
        out_hw: [g.oh, g.ow],
        o_step: [1, 1],
        first: [0, 0],
        reduce: g.kg(),
        w_group: g.kg() * cols_g,
        w_col: 1,
        lattice: Lattice {
            taps: [1, 1],
            shift: [0, 0],
            w_steps: [cols_g, 0, 0],
            w_first: 0,
        },
        pointwise: true,
    };
    let tile = gemm_tile(p, cols_g);
    let chunks = chunks_of(g.n, per);
    let splits = partial_splits(
        &p.less_workspace(p.max_workspace / 2),
        job(per).tiles(tile),
        g.kg(),
        per * colu,
    );
    let mut steps = Vec::new();
    for &(n0, n1) in &chunks {
        let nc = n1 - n0;
        let (dyb, dy_off) = p.window(Role::Dy, n0 * yu, n1 * yu);
        let (dxb, out_off) = p.window(Role::Out, n0 * xu, n1 * xu);
        let columns = Slot::whole(Role::Transform, nc * colu);
        let inputs = [
            dyb,
            Slot::whole(Role::W, w_len),
            Slot::whole(Role::Dummy, 0),
        ];
        gemm_chunk(
            &mut steps,
            &[job(nc)],
            tile,
            inputs,
            dy_off,
            (columns, 0),
            nc * colu,
            false,
            splits,
            false,
        )?;
        let total = nc * xu;
        let params = ConvParams {
            n: nc as u32,
            x_off: 0,
            out_off,
            accumulate: accumulate as u32,
            total: to_u32(total, "dx elements per chunk")?,
            ..base
        };
        steps.push(Step::new(
            Kernel::Conv2dCol2im,
            &params,
            vec![columns, dxb],
            total,
        ));
    }
    Ok(Some(ConvPlan {
        algorithm: ConvAlgorithm::Gemm,
        tile: Some(tile),
        splits,
        scratch: (splits > 1).then_some((splits * per * colu, "split-K partial sums")),
        transforms: Some((per * colu, "dx columns")),
        chunks,
        phases: 0,
        steps,
    }))
}
