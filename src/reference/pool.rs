//! Max- and average-pooling as direct loops that follow PyTorch's CPU kernels step for step:
//! the same window bounds, the same scan order, the same divisors.

use std::ops::Range;

use ndarray::{Array4, ArrayView4};

use super::par::*;
use super::{Element, dims4};
use crate::error::Result;
use crate::spec::{Pool2dGeometry, Pool2dSpec};
// Shape math, defined in `spec`; also reachable here, where the GPU driver calls it.

/// Max-pool: values and the flat `h * W + w` index of each window's maximum in its input plane.
/// Each window is scanned row-major from its first in-bounds element, taking `v`
/// when `v > max || v.is_nan()`.
pub fn max_pool2d_forward<A: Element>(
    x: ArrayView4<A>,
    spec: &Pool2dSpec,
) -> Result<(Array4<A>, Array4<u32>)> {
    let g = spec.max_geometry(dims4(&x))?;
    let [dh, dw] = spec.dilation;
    let mut y = super::zeros4(g.y_shape(), "output")?;
    let mut idx = super::zeros4(g.y_shape(), "indices")?;
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let (in_plane, out_plane) = (g.h * g.w, g.oh * g.ow);
    if out_plane > 0 {
        planes(&mut y)
            .zip(planes(&mut idx))
            .enumerate()
            .for_each(|(p, (yp, ip))| {
                let xp = &xs[p * in_plane..(p + 1) * in_plane];
                for oh in 0..g.oh {
                    let (h0, h1) = g.max_window(0, oh);
                    for ow in 0..g.ow {
                        let (w0, w1) = g.max_window(1, ow);
                        let mut best = A::neg_infinity();
                        let mut at = h0 * g.w + w0;
                        for ih in (h0..h1).step_by(dh) {
                            for iw in (w0..w1).step_by(dw) {
                                let v = xp[ih * g.w + iw];
                                if v > best || v.is_nan() {
                                    best = v;
                                    at = ih * g.w + iw;
                                }
                            }
                        }
                        yp[oh * g.ow + ow] = best;
                        ip[oh * g.ow + ow] = at as u32;
                    }
                }
            });
    }
    Ok((y, idx))
}

/// Max-pool backward: `dx[index] += dy` for every output position, in output order. The one
/// index rule (the GPU's, PyTorch's CUDA kernel's): an index counts only where it lies in its
/// window's span (between the window's first and last tap, in the input plane); any other index,
/// outside the window or outside the plane (`u32::MAX` included), contributes nothing. Indices
/// from [`max_pool2d_forward`] with the same spec always count.
pub fn max_pool2d_backward<A: Element>(
    dy: ArrayView4<A>,
    indices: ArrayView4<u32>,
    input_hw: [usize; 2],
    spec: &Pool2dSpec,
) -> Result<Array4<A>> {
    let g = spec.max_backward_geometry(dims4(&dy), indices.shape(), input_hw)?;
    let plane = g.h * g.w;
    let mut dx = super::zeros4(g.x_shape(), "dx")?;
    let (dy, indices) = (dy.as_standard_layout(), indices.as_standard_layout());
    let (dys, is) = (
        dy.as_slice().expect("standard layout"),
        indices.as_slice().expect("standard layout"),
    );
    let out_plane = g.oh * g.ow;
    // The windows' column spans, the same for every row and plane.
    let col_spans: Vec<(usize, usize)> = (0..g.ow).map(|ow| g.max_span(1, ow)).collect();
    if plane > 0 {
        planes(&mut dx).enumerate().for_each(|(p, dxp)| {
            for oh in 0..g.oh {
                let (r0, r1) = g.max_span(0, oh);
                let row0 = p * out_plane + oh * g.ow;
                let (idx_row, dy_row) = (&is[row0..row0 + g.ow], &dys[row0..row0 + g.ow]);
                for ((&i, &v), &(c0, c1)) in idx_row.iter().zip(dy_row).zip(&col_spans) {
                    let i = i as usize;
                    let (row, col) = (i / g.w, i % g.w);
                    if i < plane && (r0..r1).contains(&row) && (c0..c1).contains(&col) {
                        dxp[i] += v;
                    }
                }
            }
        });
    }
    Ok(dx)
}

/// Calls `f(plane, out, [oh, ow], rows, cols, divisor)` for every window of an average pool,
/// planes in parallel (`out`: that plane of the result, the pool's output or, backward, dx) and
/// in output order inside a plane: `rows` and `cols` are the window clipped to the input, `divisor` PyTorch's.
fn for_each_avg_window<A: Element>(
    g: &Pool2dGeometry,
    count_include_pad: bool,
    out: &mut Array4<A>,
    f: impl Fn(usize, &mut [A], [usize; 2], Range<usize>, Range<usize>, A) + Sync,
) {
    if out.is_empty() {
        return;
    }
    planes(out).enumerate().for_each(|(p, plane)| {
        for oh in 0..g.oh {
            let (h0, h1, _) = g.avg_window(0, oh);
            for ow in 0..g.ow {
                let (w0, w1, _) = g.avg_window(1, ow);
                let div = g.avg_divisor(oh, ow, count_include_pad);
                let div = A::from(div).expect("divisor fits a float");
                f(p, plane, [oh, ow], h0..h1, w0..w1, div);
            }
        }
    });
}

/// The planes (`[n, c]` slices, contiguous) of a result in standard layout, in parallel.
fn planes<T: Send>(a: &mut Array4<T>) -> ChunksMut<'_, T> {
    let len = a.shape()[2] * a.shape()[3];
    a.as_slice_mut()
        .expect("results are in standard layout")
        .par_chunks_mut(len.max(1))
}

/// Average pool with zero padding: the window's sum over PyTorch's divisor.
pub fn avg_pool2d_forward<A: Element>(
    x: ArrayView4<A>,
    spec: &Pool2dSpec,
    count_include_pad: bool,
) -> Result<Array4<A>> {
    let g = spec.avg_geometry(dims4(&x))?;
    let mut y = super::zeros4(g.y_shape(), "output")?;
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let in_plane = g.h * g.w;
    for_each_avg_window(
        &g,
        count_include_pad,
        &mut y,
        |p, yp, [oh, ow], rows, cols, div: A| {
            let xp = &xs[p * in_plane..(p + 1) * in_plane];
            let mut sum = A::zero();
            for ih in rows {
                for iw in cols.clone() {
                    sum += xp[ih * g.w + iw];
                }
            }
            yp[oh * g.ow + ow] = sum / div;
        },
    );
    Ok(y)
}

/// Average-pool backward: `dy / divisor` added to every input element of the window.
pub fn avg_pool2d_backward<A: Element>(
    dy: ArrayView4<A>,
    input_hw: [usize; 2],
    spec: &Pool2dSpec,
    count_include_pad: bool,
) -> Result<Array4<A>> {
    let g = spec.backward_geometry(dims4(&dy), input_hw, true)?;
    let mut dx = super::zeros4(g.x_shape(), "dx")?;
    let dy = dy.as_standard_layout();
    let dys = dy.as_slice().expect("standard layout");
    let out_plane = g.oh * g.ow;
    for_each_avg_window(
        &g,
        count_include_pad,
        &mut dx,
        |p, dxp, [oh, ow], rows, cols, div: A| {
            let v = dys[p * out_plane + oh * g.ow + ow] / div;
            for ih in rows {
                for iw in cols.clone() {
                    dxp[ih * g.w + iw] += v;
                }
            }
        },
    );
    Ok(dx)
}
