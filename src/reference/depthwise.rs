//! The fast path's depthwise family (one input channel per group): per output plane, the taps
//! as row-wise multiply-adds, instead of one tiny matrix product per group. Planes run in
//! parallel; inside a plane the order is fixed (taps row-major, rows in order), so the result
//! does not depend on the thread count.

use ndarray::Array4;

use super::Element;
use super::direct::tap;
use super::par::*;
use crate::spec::Conv2dGeometry;

/// The output columns `[lo, hi)` whose tap column `j` lands inside the input row, and the
/// input column of `lo`: `iw = ow * stride + j * dilation - pad`.
fn columns(g: &Conv2dGeometry, j: usize) -> (usize, usize, usize) {
    let (s, d, p) = (g.stride[1], g.dilation[1], g.padding.left);
    let shift = j * d;
    let lo = p.saturating_sub(shift).div_ceil(s).min(g.ow);
    let hi = (g.w + p).saturating_sub(shift).div_ceil(s).min(g.ow);
    let hi = hi.max(lo);
    (lo, hi, (lo * s + shift).saturating_sub(p))
}

/// `dst[ow] += wv * src[iw(ow)]` over the columns `cols` ([`columns`]) of a tap column.
fn row_axpy<A: Element>(
    g: &Conv2dGeometry,
    cols: (usize, usize, usize),
    wv: A,
    src: &[A],
    dst: &mut [A],
) {
    let (lo, hi, iw) = cols;
    if lo == hi {
        return;
    }
    let src = src[iw..].iter().step_by(g.stride[1]);
    dst[lo..hi]
        .iter_mut()
        .zip(src)
        .for_each(|(o, &v)| *o += wv * v);
}

/// `dst[iw(ow)] += wv * src[ow]`: the transpose of [`row_axpy`].
fn row_scatter<A: Element>(
    g: &Conv2dGeometry,
    cols: (usize, usize, usize),
    wv: A,
    src: &[A],
    dst: &mut [A],
) {
    let (lo, hi, iw) = cols;
    if lo == hi {
        return;
    }
    let src = &src[lo..hi];
    if g.stride[1] == 1 {
        let dst = &mut dst[iw..iw + src.len()];
        dst.iter_mut().zip(src).for_each(|(o, &v)| *o += wv * v);
    } else {
        let dst = dst[iw..].iter_mut().step_by(g.stride[1]);
        dst.zip(src).for_each(|(o, &v)| *o += wv * v);
    }
}

/// `Σ_ow dy[ow] · x[iw(ow)]` over the columns `cols` ([`columns`]) of a tap column.
fn row_dot<A: Element>(g: &Conv2dGeometry, cols: (usize, usize, usize), dy: &[A], x: &[A]) -> A {
    let (lo, hi, iw) = cols;
    if lo == hi {
        return A::zero();
    }
    let x = x[iw..].iter().step_by(g.stride[1]);
    dy[lo..hi]
        .iter()
        .zip(x)
        .fold(A::zero(), |a, (&v, &xv)| a + v * xv)
}

/// `y` (zeros or the bias, `[N, K, OH, OW]`) += the depthwise conv of `x` (standard layout)
/// with `w` (`[K, 1, kh, kw]`, standard layout).
pub(super) fn forward<A: Element>(g: &Conv2dGeometry, x: &[A], w: &[A], y: &mut Array4<A>) {
    let (plane, out_plane, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    let ys = y.as_slice_mut().expect("fresh array is standard layout");
    ys.par_chunks_mut(out_plane.max(1))
        .enumerate()
        .for_each(|(p, yp)| {
            let (n, k) = (p / g.k, p % g.k);
            let c = k / g.kg();
            let xp = &x[(n * g.c + c) * plane..(n * g.c + c + 1) * plane];
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let wv = w[k * taps + i * g.kw + j];
                    let cols = columns(g, j);
                    for oh in 0..g.oh {
                        let Some(ih) = tap(oh, i, g.stride[0], g.dilation[0], g.padding.top, g.h)
                        else {
                            continue;
                        };
                        let dst = &mut yp[oh * g.ow..(oh + 1) * g.ow];
                        row_axpy(g, cols, wv, &xp[ih * g.w..(ih + 1) * g.w], dst);
                    }
                }
            }
        });
}

/// dx (zeros, `[N, C, H, W]`) of a depthwise conv: per input plane, each of its group's output
/// channels' taps scattered back.
pub(super) fn backward_input<A: Element>(
    g: &Conv2dGeometry,
    dy: &[A],
    w: &[A],
    dx: &mut Array4<A>,
) {
    let (plane, out_plane, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    let (s, d, p) = (g.stride, g.dilation, g.padding);
    let dxs = dx.as_slice_mut().expect("fresh array is standard layout");
    dxs.par_chunks_mut(plane.max(1))
        .enumerate()
        .for_each(|(pi, dxp)| {
            let (n, c) = (pi / g.c, pi % g.c);
            for k in c * g.kg()..(c + 1) * g.kg() {
                let dyp = &dy[(n * g.k + k) * out_plane..(n * g.k + k + 1) * out_plane];
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let wv = w[k * taps + i * g.kw + j];
                        let cols = columns(g, j);
                        for oh in 0..g.oh {
                            let Some(ih) = tap(oh, i, s[0], d[0], p.top, g.h) else {
                                continue;
                            };
                            let src = &dyp[oh * g.ow..(oh + 1) * g.ow];
                            row_scatter(g, cols, wv, src, &mut dxp[ih * g.w..(ih + 1) * g.w]);
                        }
                    }
                }
            }
        });
}

/// dW (`[K, 1, kh, kw]`) of a depthwise conv: per output channel (in parallel), per tap, the
/// sum over samples (in order) and output rows of dy's row times x's tapped row.
pub(super) fn backward_weight<A: Element>(g: &Conv2dGeometry, x: &[A], dy: &[A], dw: &mut [A]) {
    let (plane, out_plane, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    let (s, d, p) = (g.stride, g.dilation, g.padding);
    dw.par_chunks_mut(taps.max(1))
        .enumerate()
        .for_each(|(k, dwk)| {
            let c = k / g.kg();
            for (t, acc) in dwk.iter_mut().enumerate() {
                let (i, j) = (t / g.kw, t % g.kw);
                let cols = columns(g, j);
                for n in 0..g.n {
                    let xp = &x[(n * g.c + c) * plane..(n * g.c + c + 1) * plane];
                    let dyp = &dy[(n * g.k + k) * out_plane..(n * g.k + k + 1) * out_plane];
                    for oh in 0..g.oh {
                        let Some(ih) = tap(oh, i, s[0], d[0], p.top, g.h) else {
                            continue;
                        };
                        let xr = &xp[ih * g.w..(ih + 1) * g.w];
                        *acc += row_dot(g, cols, &dyp[oh * g.ow..(oh + 1) * g.ow], xr);
                    }
                }
            }
        });
}
