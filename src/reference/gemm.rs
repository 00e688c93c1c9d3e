//! The fast path: im2col + GEMM for forward and dW, GEMM + col2im for dx, parallel over the
//! batch with rayon, matrix products by ndarray (matrixmultiply's packed kernels); layers with
//! one input channel per group (depthwise) by row-wise taps per plane (`depthwise.rs`).
//!
//! Per sample and group the convolution is one matrix product: the column matrix `col` holds,
//! for every `(c, i, j)` kernel tap (rows) and every output position (columns), the input
//! element that tap reads (zero in the padding).

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, Array4, ArrayView1, ArrayView2, ArrayView4, ArrayViewMut2, Axis, s};

use super::direct::tap;
use super::par::*;
use super::{Element, check_bias, dims4};
use crate::error::Result;
use crate::spec::{Conv2dGeometry, Conv2dSpec};

/// Samples whose dW contributions one task sums before the partial sums are added in batch
/// order; fixed so that the result does not depend on the thread count.
const DW_CHUNK: usize = 4;

/// Fills `col` (`[cg·kh·kw, oh·ow]`) from one sample's group `x_g` (`[cg, h, w]`, standard
/// layout).
fn im2col<A: Element>(g: &Conv2dGeometry, x_g: &[A], col: &mut ArrayViewMut2<A>) {
    let (p, s, d) = (g.padding, g.stride, g.dilation);
    let plane = g.h * g.w;
    let mut row = 0;
    for c in 0..g.cg() {
        let xc = &x_g[c * plane..(c + 1) * plane];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let mut dst = col.row_mut(row);
                let dst = dst.as_slice_mut().expect("col rows are contiguous");
                for oh in 0..g.oh {
                    let out = &mut dst[oh * g.ow..(oh + 1) * g.ow];
                    match tap(oh, i, s[0], d[0], p.top, g.h) {
                        None => out.fill(A::zero()),
                        Some(ih) => {
                            let xr = &xc[ih * g.w..(ih + 1) * g.w];
                            for (ow, o) in out.iter_mut().enumerate() {
                                *o = tap(ow, j, s[1], d[1], p.left, g.w)
                                    .map_or(A::zero(), |iw| xr[iw]);
                            }
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// Adds `dcol` (`[cg·kh·kw, oh·ow]`) back onto one sample's group `dx_g` (`[cg, h, w]`).
fn col2im<A: Element>(g: &Conv2dGeometry, dcol: &ArrayView2<A>, dx_g: &mut [A]) {
    let (p, s, d) = (g.padding, g.stride, g.dilation);
    let plane = g.h * g.w;
    let mut row = 0;
    for c in 0..g.cg() {
        let dxc = &mut dx_g[c * plane..(c + 1) * plane];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let src = dcol.row(row);
                let src = src.as_slice().expect("dcol rows are contiguous");
                for oh in 0..g.oh {
                    let Some(ih) = tap(oh, i, s[0], d[0], p.top, g.h) else {
                        continue;
                    };
                    let dr = &mut dxc[ih * g.w..(ih + 1) * g.w];
                    for (ow, &v) in src[oh * g.ow..(oh + 1) * g.ow].iter().enumerate() {
                        if let Some(iw) = tap(ow, j, s[1], d[1], p.left, g.w) {
                            dr[iw] += v;
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// Weight as `[K, cg·kh·kw]`.
fn weight_matrix<A: Element>(g: &Conv2dGeometry, w: &ArrayView4<A>) -> Array2<A> {
    let w = w.as_standard_layout().into_owned();
    w.into_shape_with_order((g.k, g.cg() * g.kh * g.kw))
        .expect("weight is standard layout")
}

/// `y = conv2d(x, w) + bias`: x `[N, C, H, W]`, w `[K, C/groups, kh, kw]`, bias `[K]`; by
/// im2col + GEMM, parallel over the batch.
pub fn conv2d_forward<A: Element>(
    x: ArrayView4<A>,
    w: ArrayView4<A>,
    bias: Option<ArrayView1<A>>,
    spec: &Conv2dSpec,
) -> Result<Array4<A>> {
    let g = spec.forward_geometry(dims4(&x), dims4(&w))?;
    check_bias(bias.as_ref(), g.k)?;
    let x = x.as_standard_layout();
    let wm = weight_matrix(&g, &w);
    let (cg, kg, taps, pix) = (g.cg(), g.kg(), g.cg() * g.kh * g.kw, g.oh * g.ow);
    let mut y = super::zeros4(g.y_shape(), "output")?;
    if cg == 1 {
        if let Some(b) = &bias {
            y.axis_iter_mut(Axis(1))
                .zip(b.iter())
                .for_each(|(mut yk, &bv)| yk.fill(bv));
        }
        let w = w.as_standard_layout();
        let (xs, ws) = (x.as_slice(), w.as_slice());
        super::depthwise::forward(&g, xs.expect("standard"), ws.expect("standard"), &mut y);
        return Ok(y);
    }
    super::host_bytes::<A>(&[taps, pix], "im2col matrix")?;
    y.outer_iter_mut()
        .into_par_iter()
        .zip(x.outer_iter().into_par_iter())
        .for_each(|(mut yn, xn)| {
            let xn = xn.to_slice().expect("standard layout");
            let mut yn = yn
                .view_mut()
                .into_shape_with_order((g.k, pix))
                .expect("fresh array is standard layout");
            if let Some(b) = &bias {
                for (mut row, &bv) in yn.outer_iter_mut().zip(b.iter()) {
                    row.fill(bv);
                }
            }
            let mut col = Array2::zeros((taps, pix));
            for grp in 0..g.groups {
                im2col(
                    &g,
                    &xn[grp * cg * g.h * g.w..(grp + 1) * cg * g.h * g.w],
                    &mut col.view_mut(),
                );
                general_mat_mul(
                    A::one(),
                    &wm.slice(s![grp * kg..(grp + 1) * kg, ..]),
                    &col,
                    A::one(),
                    &mut yn.slice_mut(s![grp * kg..(grp + 1) * kg, ..]),
                );
            }
        });
    Ok(y)
}

/// dx `[N, C, H, W]` from dy `[N, K, OH, OW]` and w; `input_hw` is the forward input's `[H, W]`;
/// by GEMM + col2im, parallel over the batch.
pub fn conv2d_backward_input<A: Element>(
    dy: ArrayView4<A>,
    w: ArrayView4<A>,
    input_hw: [usize; 2],
    spec: &Conv2dSpec,
) -> Result<Array4<A>> {
    let g = spec.backward_input_geometry(dims4(&dy), dims4(&w), input_hw)?;
    let dy = dy.as_standard_layout();
    let wm = weight_matrix(&g, &w);
    let (cg, kg, taps, pix) = (g.cg(), g.kg(), g.cg() * g.kh * g.kw, g.oh * g.ow);
    let group_len = cg * g.h * g.w;
    let mut dx = super::zeros4(g.x_shape(), "dx")?;
    if cg == 1 {
        let w = w.as_standard_layout();
        let (dys, ws) = (dy.as_slice(), w.as_slice());
        super::depthwise::backward_input(
            &g,
            dys.expect("standard"),
            ws.expect("standard"),
            &mut dx,
        );
        return Ok(dx);
    }
    super::host_bytes::<A>(&[taps, pix], "im2col matrix")?;
    dx.outer_iter_mut()
        .into_par_iter()
        .zip(dy.outer_iter().into_par_iter())
        .for_each(|(mut dxn, dyn_)| {
            let dyn_ = dyn_
                .into_shape_with_order((g.k, pix))
                .expect("standard layout");
            let dxn = dxn.as_slice_mut().expect("fresh array is standard layout");
            let mut dcol = Array2::zeros((taps, pix));
            for grp in 0..g.groups {
                general_mat_mul(
                    A::one(),
                    &wm.slice(s![grp * kg..(grp + 1) * kg, ..]).t(),
                    &dyn_.slice(s![grp * kg..(grp + 1) * kg, ..]),
                    A::zero(),
                    &mut dcol,
                );
                col2im(
                    &g,
                    &dcol.view(),
                    &mut dxn[grp * group_len..(grp + 1) * group_len],
                );
            }
        });
    Ok(dx)
}

/// dW `[K, C/groups, kh, kw]` from x and dy, summed over the batch and output positions; by
/// im2col + GEMM, per chunk of samples a partial sum, partials added in batch order.
pub fn conv2d_backward_weight<A: Element>(
    x: ArrayView4<A>,
    dy: ArrayView4<A>,
    kernel_hw: [usize; 2],
    spec: &Conv2dSpec,
) -> Result<Array4<A>> {
    let g = spec.backward_weight_geometry(dims4(&x), dims4(&dy), kernel_hw)?;
    let x = x.as_standard_layout();
    let dy = dy.as_standard_layout();
    let (cg, kg, taps, pix) = (g.cg(), g.kg(), g.cg() * g.kh * g.kw, g.oh * g.ow);
    let group_len = cg * g.h * g.w;
    // Allocated before the per-chunk partial sums (of its size) so that a dW too large for the
    // host is an error, not an abort inside the parallel loop.
    let mut dw = super::zeros4::<A>(g.w_shape(), "dW")?
        .into_shape_with_order((g.k, taps))
        .expect("standard layout");
    if cg == 1 {
        let (xs, dys) = (x.as_slice(), dy.as_slice());
        let dws = dw.as_slice_mut().expect("fresh array is standard layout");
        super::depthwise::backward_weight(&g, xs.expect("standard"), dys.expect("standard"), dws);
        return Ok(dw
            .into_shape_with_order(g.w_shape())
            .expect("standard layout"));
    }
    super::host_bytes::<A>(&[taps, pix], "im2col matrix")?;
    let partials: Vec<Array2<A>> = (0..g.n.div_ceil(DW_CHUNK))
        .into_par_iter()
        .map(|chunk| {
            let mut acc = Array2::zeros((g.k, taps));
            let mut col = Array2::zeros((taps, pix));
            for n in chunk * DW_CHUNK..((chunk + 1) * DW_CHUNK).min(g.n) {
                let xn = x.index_axis(Axis(0), n);
                let xn = xn.to_slice().expect("standard layout");
                let dyn_ = dy
                    .index_axis(Axis(0), n)
                    .into_shape_with_order((g.k, pix))
                    .expect("standard layout");
                for grp in 0..g.groups {
                    im2col(
                        &g,
                        &xn[grp * group_len..(grp + 1) * group_len],
                        &mut col.view_mut(),
                    );
                    general_mat_mul(
                        A::one(),
                        &dyn_.slice(s![grp * kg..(grp + 1) * kg, ..]),
                        &col.t(),
                        A::one(),
                        &mut acc.slice_mut(s![grp * kg..(grp + 1) * kg, ..]),
                    );
                }
            }
            acc
        })
        .collect();
    for p in &partials {
        dw += p;
    }
    Ok(dw
        .into_shape_with_order(g.w_shape())
        .expect("standard layout"))
}
