//! Plans of the pool ops: one invocation per output (forward) or input (backward) element, the
//! planes (N·C) chunked so that every tensor's window fits a binding.

use super::{DeviceProfile, Role, Step};
use crate::dtype::DType;
use crate::error::Result;
use crate::gpu::kernels::{Kernel, PoolParams, Storage, sizes, to_u32};
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
/// matters to avg-pool only), reading its operand (x or dy) of `dtype` in the device's storage
/// for it and writing an f32 result: chunks of whole planes, or, for planes larger than a
/// binding, ranges of rows of one plane at a time (with the rows of the other tensor its
/// windows reach). A 16-bit operand's windows and chunks count its 2-byte elements.
pub fn pool(
    p: &DeviceProfile,
    kind: PoolKind,
    g: &Pool2dGeometry,
    count_include_pad: bool,
    dtype: DType,
) -> Result<Vec<Step>> {
    let mut base = pool_params(g, count_include_pad)?;
    let planes = g.n * g.c;
    let (kernel, tensors) = kind.layout();
    let storage = p.storage(dtype);
    let (in_unit, out_unit) = (g.h * g.w, g.oh * g.ow);
    let unit = |per_output_plane: bool| if per_output_plane { out_unit } else { in_unit };
    // One invocation per element of the result's plane.
    let items_unit = unit(kind.is_forward());
    if planes == 0 || items_unit == 0 {
        return Ok(Vec::new());
    }
    // Every row of the result from row 0, unless a plane is split.
    base.rows = to_u32(if kind.is_forward() { g.oh } else { g.h }, "result rows")?;
    // In 4-byte words, which is what a binding's elements count.
    let units: Vec<(usize, &str)> = tensors
        .iter()
        .map(|&(role, what, o)| (words(unit(o), storage_of(role, storage)), what))
        .collect();
    let max_elems = p.binding_elems();
    if units.iter().any(|&(u, _)| u > max_elems) {
        return plane_rows(p, kind, g, base, max_elems, storage);
    }
    let mut steps = Vec::new();
    for (p0, p1) in p.chunks(planes, &units)? {
        let mut params = base;
        params.planes = (p1 - p0) as u32;
        params.total = to_u32((p1 - p0) * items_unit, "outputs per chunk")?;
        let mut binds = Vec::new();
        for &(role, _, per_output) in tensors {
            let u = unit(per_output);
            let (slot, off) = p.window_in(storage_of(role, storage), role, p0 * u, p1 * u);
            set_offset(&mut params, role, off);
            binds.push(slot);
        }
        steps.push(Step::new(kernel, &params, binds, params.total as usize).reading(storage));
    }
    Ok(steps)
}

/// The storage of a pool binding: the operand's (x, dy) is `operand`'s, the others are f32 (the
/// result) or u32 (the indices).
fn storage_of(role: Role, operand: Storage) -> Storage {
    match role {
        Role::X | Role::Dy => operand,
        _ => Storage::F32,
    }
}

/// 4-byte words that `elems` elements of `storage` take.
fn words(elems: usize, storage: Storage) -> usize {
    (elems * storage.elem_bytes()).div_ceil(4)
}

fn set_offset(params: &mut PoolParams, role: Role, off: u32) {
    match role {
        Role::X | Role::Dy => params.in_off = off,
        Role::Indices => params.idx_off = off,
        _ => params.out_off = off,
    }
}

/// Planes larger than a binding: for each plane, ranges of the result's rows, each dispatch
/// binding those rows and the rows of the other tensors its windows reach. The kernels compute in
/// the plane's coordinates, as unsplit (the same bits); an input binding that starts at row `a`
/// gets the offset `off - a * width`, which the kernel's u32 arithmetic wraps back.
fn plane_rows(
    p: &DeviceProfile,
    kind: PoolKind,
    g: &Pool2dGeometry,
    base: PoolParams,
    max_elems: usize,
    storage: Storage,
) -> Result<Vec<Step>> {
    let s = &g.spec;
    let (k, st, pad, d) = (s.kernel[0], s.stride[0], s.padding[0], s.dilation[0]);
    let reach = (k - 1) * d;
    let (kernel, tensors) = kind.layout();
    let forward = kind.is_forward();
    // The result's rows, their width, and the rows of the other tensors' (the "source") width.
    let (rows, width, src_width) = if forward {
        (g.oh, g.ow, g.w)
    } else {
        (g.h, g.w, g.ow)
    };
    // Source rows a range of result rows [r0, r1) reaches.
    let source = |r0: usize, r1: usize| -> (usize, usize) {
        if forward {
            let a = (r0 * st).saturating_sub(pad);
            let b = ((r1 - 1) * st + reach + 1).saturating_sub(pad).min(g.h);
            (a.min(b), b)
        } else {
            let lo = (r0 + pad).saturating_sub(reach).div_ceil(st).min(g.oh);
            let hi = ((r1 - 1 + pad) / st + 1).min(g.oh);
            (lo.min(hi), hi)
        }
    };
    let fits = |r0: usize, r1: usize| {
        let (a, b) = source(r0, r1);
        (r1 - r0) * width <= max_elems && (b - a) * src_width <= max_elems
    };
    // The most rows per range that fit (a range of one row must).
    let mut per = (max_elems / width.max(1)).max(1);
    while per > 1
        && !(0..rows)
            .step_by(per)
            .all(|r0| fits(r0, (r0 + per).min(rows)))
    {
        per = per.div_ceil(2).max(1).min(per - 1);
    }
    if !(0..rows).all(|r| fits(r, r + 1)) {
        return Err(crate::Error::DeviceLimit(format!(
            "one row of a {:?} pool of a {} x {} plane, with the rows its windows reach, is \
             more than the largest storage binding of {} bytes",
            kind, g.h, g.w, p.max_binding
        )));
    }
    let planes = g.n * g.c;
    let mut steps = Vec::new();
    for plane in 0..planes {
        for r0 in (0..rows).step_by(per) {
            let r1 = (r0 + per).min(rows);
            let (a, b) = source(r0, r1);
            let mut params = base;
            params.planes = 1;
            params.row0 = to_u32(r0, "first row")?;
            params.rows = to_u32(r1 - r0, "rows")?;
            params.total = to_u32((r1 - r0) * width, "outputs per chunk")?;
            let mut binds = Vec::new();
            for &(role, _, per_output) in tensors {
                let result = per_output == forward;
                let (w, plane_elems, first, last) = if result {
                    (width, rows * width, r0, r1)
                } else {
                    (
                        src_width,
                        if forward { g.h } else { g.oh } * src_width,
                        a,
                        b,
                    )
                };
                let start = plane * plane_elems + first * w;
                let end = plane * plane_elems + last * w;
                let (slot, off) = p.window_in(storage_of(role, storage), role, start, end);
                // Results count from row r0 (the kernel's local id); sources from the plane's
                // row 0 (the kernel's plane coordinates), wrapping.
                let off = if result {
                    off
                } else {
                    off.wrapping_sub((first * w) as u32)
                };
                set_offset(&mut params, role, off);
                binds.push(slot);
            }
            steps.push(Step::new(kernel, &params, binds, params.total as usize).reading(storage));
        }
    }
    Ok(steps)
}
