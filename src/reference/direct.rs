//! The oracle: convolutions as the obvious nested loops over every index, written from the
//! definition and nothing else. Slow; every other method is tested against these.

use ndarray::{Array4, ArrayView1, ArrayView4};

use super::{Element, check_bias, dims4};
use crate::error::Result;
use crate::spec::{Conv2dGeometry, Conv2dSpec};

/// Input position of output position `o` and kernel tap `i` along one axis, or `None` in the
/// padding.
#[inline]
pub(crate) fn tap(
    o: usize,
    i: usize,
    stride: usize,
    dilation: usize,
    pad_before: usize,
    len: usize,
) -> Option<usize> {
    (o * stride + i * dilation)
        .checked_sub(pad_before)
        .filter(|&p| p < len)
}

/// Input position `[ih, iw]` that output `(oh, ow)` reads through kernel tap `(i, j)`, each
/// `None` in the padding.
#[inline]
fn taps(g: &Conv2dGeometry, [oh, ow]: [usize; 2], [i, j]: [usize; 2]) -> [Option<usize>; 2] {
    let (p, s, d) = (g.padding, g.stride, g.dilation);
    [
        tap(oh, i, s[0], d[0], p.top, g.h),
        tap(ow, j, s[1], d[1], p.left, g.w),
    ]
}

/// `x[n, c, ih, iw]`, or the zero of the padding. The zero is multiplied like any input, so a
/// NaN or Inf weight (or dy) makes the outputs whose windows overhang the padding non-finite
/// too (0 x NaN = NaN), as the GEMM path and PyTorch do.
#[inline]
fn padded<A: Element>(x: &ArrayView4<A>, n: usize, c: usize, at: [Option<usize>; 2]) -> A {
    match at {
        [Some(ih), Some(iw)] => x[[n, c, ih, iw]],
        _ => A::zero(),
    }
}

/// `y[n, k, oh, ow] = bias[k] + Σ_{c, i, j} x[n, g·C/g + c, oh·s - pad + i·d, ...] · w[k, c, i, j]`.
pub fn conv2d_forward<A: Element>(
    x: ArrayView4<A>,
    w: ArrayView4<A>,
    bias: Option<ArrayView1<A>>,
    spec: &Conv2dSpec,
) -> Result<Array4<A>> {
    let g = spec.forward_geometry(dims4(&x), dims4(&w))?;
    check_bias(bias.as_ref(), g.k)?;
    let (cg, kg) = (g.cg(), g.kg());
    let mut y = super::zeros4(g.y_shape(), "output")?;
    for n in 0..g.n {
        for k in 0..g.k {
            let c0 = (k / kg) * cg;
            for oh in 0..g.oh {
                for ow in 0..g.ow {
                    let mut acc = bias.as_ref().map_or(A::zero(), |b| b[k]);
                    for c in 0..cg {
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let xv = padded(&x, n, c0 + c, taps(&g, [oh, ow], [i, j]));
                                acc += xv * w[[k, c, i, j]];
                            }
                        }
                    }
                    y[[n, k, oh, ow]] = acc;
                }
            }
        }
    }
    Ok(y)
}

/// dx as the literal adjoint of the forward loops: every product the forward formed sends
/// `dy · w` back to the input element it read.
pub fn conv2d_backward_input<A: Element>(
    dy: ArrayView4<A>,
    w: ArrayView4<A>,
    input_hw: [usize; 2],
    spec: &Conv2dSpec,
) -> Result<Array4<A>> {
    let g = spec.backward_input_geometry(dims4(&dy), dims4(&w), input_hw)?;
    let (cg, kg) = (g.cg(), g.kg());
    let mut dx = super::zeros4(g.x_shape(), "dx")?;
    for n in 0..g.n {
        for k in 0..g.k {
            let c0 = (k / kg) * cg;
            for oh in 0..g.oh {
                for ow in 0..g.ow {
                    let gy = dy[[n, k, oh, ow]];
                    for c in 0..cg {
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let [Some(ih), Some(iw)] = taps(&g, [oh, ow], [i, j]) else {
                                    continue;
                                };
                                dx[[n, c0 + c, ih, iw]] += gy * w[[k, c, i, j]];
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(dx)
}

/// `dw[k, c, i, j] = Σ_{n, oh, ow} x[n, g·C/g + c, tap] · dy[n, k, oh, ow]`.
pub fn conv2d_backward_weight<A: Element>(
    x: ArrayView4<A>,
    dy: ArrayView4<A>,
    kernel_hw: [usize; 2],
    spec: &Conv2dSpec,
) -> Result<Array4<A>> {
    let g = spec.backward_weight_geometry(dims4(&x), dims4(&dy), kernel_hw)?;
    let (cg, kg) = (g.cg(), g.kg());
    let mut dw = super::zeros4(g.w_shape(), "dW")?;
    for k in 0..g.k {
        let c0 = (k / kg) * cg;
        for c in 0..cg {
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let mut acc = A::zero();
                    for n in 0..g.n {
                        for oh in 0..g.oh {
                            for ow in 0..g.ow {
                                let xv = padded(&x, n, c0 + c, taps(&g, [oh, ow], [i, j]));
                                acc += xv * dy[[n, k, oh, ow]];
                            }
                        }
                    }
                    dw[[k, c, i, j]] = acc;
                }
            }
        }
    }
    Ok(dw)
}
