//! Plans of the pool ops: one invocation per output (forward) or input (backward) element, the
//! planes (N·C) chunked so that every tensor's window fits a binding.

use super::{DeviceProfile, Role, Step};
use crate::error::Result;
use crate::gpu::kernels::{Kernel, PoolParams, sizes, to_u32};
use crate::spec::Pool2dGeometry;

/// The four pool ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// max-pool forward: x -> y, indices.
    MaxForward,
    /// max-pool backward: dy, indices -> dx.
    MaxBackward,
    /// avg-pool forward: x -> y.
    AvgForward,
    /// avg-pool backward: dy -> dx.
    AvgBackward,
}

impl PoolKind {
    /// The kernel, and its bindings as `(tensor, what, per-plane elements of the output
    /// (true) or input (false) plane)`, in binding order.
    fn layout(self) -> (Kernel, &'static [(Role, &'static str, bool)]) {
        match self {
            PoolKind::MaxForward => (
                Kernel::MaxPool2dForward,
                &[
                    (Role::X, "input plane", false),
                    (Role::Out, "output plane", true),
                    (Role::Indices, "index plane", true),
                ],
            ),
            PoolKind::MaxBackward => (
                Kernel::MaxPool2dBackward,
                &[
                    (Role::Dy, "dy plane", true),
                    (Role::Indices, "index plane", true),
                    (Role::Out, "dx plane", false),
                ],
            ),
            PoolKind::AvgForward => (
                Kernel::AvgPool2dForward,
                &[
                    (Role::X, "input plane", false),
                    (Role::Out, "output plane", true),
                ],
            ),
            PoolKind::AvgBackward => (
                Kernel::AvgPool2dBackward,
                &[(Role::Dy, "dy plane", true), (Role::Out, "dx plane", false)],
            ),
        }
    }

    fn is_forward(self) -> bool {
        matches!(self, PoolKind::MaxForward | PoolKind::AvgForward)
    }
}

fn pool_params(g: &Pool2dGeometry, count_include_pad: bool) -> Result<PoolParams> {
    let s = &g.spec;
    to_u32(g.h + 2 * s.padding[0], "padded input height")?;
    to_u32(g.w + 2 * s.padding[1], "padded input width")?;
    // The kernels compute window bounds in i32: the last window's far end, counted from the top
    // of the padded input, must stay below 2^31.
    for (a, out, what) in [
        (0, g.oh, "pool window rows"),
        (1, g.ow, "pool window columns"),
    ] {
        let span = (s.kernel[a] - 1)
            .checked_mul(s.dilation[a])
            .and_then(|v| v.checked_add((out - 1).checked_mul(s.stride[a])?))
            .and_then(|v| v.checked_add(1));
        to_u32(span.unwrap_or(usize::MAX), what)?;
    }
    Ok(sizes!(PoolParams {
        h: g.h => "H",
        w: g.w => "W",
        oh: g.oh => "OH",
        ow: g.ow => "OW",
        kh: s.kernel[0] => "kernel height",
        kw: s.kernel[1] => "kernel width",
        stride_h: s.stride[0] => "stride height",
        stride_w: s.stride[1] => "stride width",
        pad_h: s.padding[0] => "padding height",
        pad_w: s.padding[1] => "padding width",
        dil_h: s.dilation[0] => "dilation height",
        dil_w: s.dilation[1] => "dilation width",
        count_include_pad = count_include_pad as u32,
        ..Default::default()
    }))
}

/// The dispatches of a pool op on a geometry whose result is not empty (`count_include_pad`
/// matters to avg-pool only).
pub fn pool(
    p: &DeviceProfile,
    kind: PoolKind,
    g: &Pool2dGeometry,
    count_include_pad: bool,
) -> Result<Vec<Step>> {
    let base = pool_params(g, count_include_pad)?;
    let planes = g.n * g.c;
    let (kernel, tensors) = kind.layout();
    let (in_unit, out_unit) = (g.h * g.w, g.oh * g.ow);
    let unit = |per_output_plane: bool| if per_output_plane { out_unit } else { in_unit };
    // One invocation per element of the result's plane.
    let items_unit = unit(kind.is_forward());
    if planes == 0 || items_unit == 0 {
        return Ok(Vec::new());
    }
    let units: Vec<(usize, &str)> = tensors
        .iter()
        .map(|&(_, what, o)| (unit(o), what))
        .collect();
    let mut steps = Vec::new();
    for (p0, p1) in p.chunks(planes, &units)? {
        let mut params = base;
        params.planes = (p1 - p0) as u32;
        params.total = to_u32((p1 - p0) * items_unit, "outputs per chunk")?;
        let mut binds = Vec::new();
        for &(role, _, per_output) in tensors {
            let u = unit(per_output);
            let (slot, off) = p.window(role, p0 * u, p1 * u);
            match role {
                Role::X | Role::Dy => params.in_off = off,
                Role::Indices => params.idx_off = off,
                _ => params.out_off = off,
            }
            binds.push(slot);
        }
        steps.push(Step::new(kernel, &params, binds, params.total as usize));
    }
    Ok(steps)
}
