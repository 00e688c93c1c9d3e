//! CPU reference for the other pieces of a training step, generic over `f32` and `f64`: ReLU,
//! the linear layer, softmax cross-entropy and SGD. The GPU ops of the same names
//! ([`Gpu::relu_forward`](crate::Gpu::relu_forward), ...) take the same arguments in the same
//! order.
//!
//! ```
//! use ndarray::array;
//! use wgconv::reference::nn;
//! let logits = array![[2.0f64, 0.0, -1.0], [0.5, 0.5, 3.0]];
//! let (loss, dlogits) = nn::softmax_cross_entropy(logits.view(), array![0u32, 2].view()).unwrap();
//! assert!(loss > 0.0 && loss < 0.2);
//! // Each gradient row sums to zero: softmax minus one-hot, over the batch size.
//! assert!(dlogits.rows().into_iter().all(|r| r.sum().abs() < 1e-12));
//! ```

use ndarray::{
    Array, Array1, Array2, ArrayView, ArrayView1, ArrayView2, ArrayViewMut, Axis, Dimension, Zip,
};

use super::{Element, check_bias};
use crate::error::{Result, invalid, mismatch};
use crate::spec::{SgdOptions, check_sgd_shapes};

/// `y = max(x, 0)`; NaN passes through, as in PyTorch.
pub fn relu_forward<A: Element, D: Dimension>(x: ArrayView<A, D>) -> Array<A, D> {
    x.mapv(|v| {
        if v > A::zero() || v.is_nan() {
            v
        } else {
            A::zero()
        }
    })
}

/// `dx = dy` where the forward input `x > 0`, else 0 (a NaN input passes no gradient, as in
/// PyTorch's `threshold_backward`).
pub fn relu_backward<A: Element, D: Dimension>(
    dy: ArrayView<A, D>,
    x: ArrayView<A, D>,
) -> Result<Array<A, D>> {
    if dy.shape() != x.shape() {
        return Err(mismatch(format!(
            "relu_backward: dy shape {:?} differs from x shape {:?}",
            dy.shape(),
            x.shape()
        )));
    }
    Ok(Zip::from(&dy)
        .and(&x)
        .map_collect(|&g, &v| if v > A::zero() { g } else { A::zero() }))
}

/// The `[N, in]` and `[out, in]` of a linear layer's input and weight, checked to agree.
pub(crate) fn linear_dims(x: &[usize], w: &[usize]) -> Result<(usize, usize, usize)> {
    let (&[n, i], &[o, wi]) = (x, w) else {
        return Err(mismatch(format!(
            "linear: x must be 2-D [N, in] and w 2-D [out, in], got x {x:?} and w {w:?}"
        )));
    };
    if i != wi {
        return Err(mismatch(format!(
            "linear: x has {i} features but w {w:?} expects {wi}"
        )));
    }
    Ok((n, i, o))
}

/// `y = x · wᵀ + bias`: x `[N, in]`, w `[out, in]`, bias `[out]`, y `[N, out]`.
pub fn linear_forward<A: Element>(
    x: ArrayView2<A>,
    w: ArrayView2<A>,
    bias: Option<ArrayView1<A>>,
) -> Result<Array2<A>> {
    let (_, _, o) = linear_dims(x.shape(), w.shape())?;
    check_bias(bias.as_ref(), o)?;
    let mut y = x.dot(&w.t());
    if let Some(b) = bias {
        y += &b;
    }
    Ok(y)
}

/// `dx = dy · w`: dy `[N, out]`, w `[out, in]`, dx `[N, in]`.
pub fn linear_backward_input<A: Element>(dy: ArrayView2<A>, w: ArrayView2<A>) -> Result<Array2<A>> {
    match (dy.shape(), w.shape()) {
        (&[_, o], &[wo, _]) if o == wo => Ok(dy.dot(&w)),
        (d, w) => Err(mismatch(format!(
            "linear_backward_input: dy must be [N, out] and w [out, in], got dy {d:?} and w {w:?}"
        ))),
    }
}

/// `dW = dyᵀ · x`: x `[N, in]`, dy `[N, out]`, dW `[out, in]`.
pub fn linear_backward_weight<A: Element>(
    x: ArrayView2<A>,
    dy: ArrayView2<A>,
) -> Result<Array2<A>> {
    match (x.shape(), dy.shape()) {
        (&[n, _], &[dn, _]) if n == dn => Ok(dy.t().dot(&x)),
        (x, d) => Err(mismatch(format!(
            "linear_backward_weight: x must be [N, in] and dy [N, out] with the same N, got x \
             {x:?} and dy {d:?}"
        ))),
    }
}

/// `db = Σ_n dy[n, :]`.
pub fn linear_backward_bias<A: Element>(dy: ArrayView2<A>) -> Array1<A> {
    dy.sum_axis(Axis(0))
}

/// Checks a `[N, C]` logits / `[N]` labels pair.
pub(crate) fn check_cross_entropy(logits: &[usize], labels: &[usize]) -> Result<(usize, usize)> {
    let &[n, c] = logits else {
        return Err(mismatch(format!(
            "softmax_cross_entropy: logits must be 2-D [N, classes], got {logits:?}"
        )));
    };
    if labels != [n] {
        return Err(mismatch(format!(
            "softmax_cross_entropy: labels shape {labels:?} must be [N] = [{n}]"
        )));
    }
    if c == 0 {
        return Err(invalid("softmax_cross_entropy: logits have 0 classes"));
    }
    Ok((n, c))
}

/// Softmax cross-entropy of logits `[N, C]` against class labels `[N]`, averaged over the batch
/// (PyTorch's `cross_entropy` with `reduction="mean"`), and its gradient with respect to the
/// logits, `(softmax(z) - onehot(label)) / N`. The log-sum-exp is taken around each row's
/// maximum, so large logits do not overflow. An empty batch gives a NaN loss (as in PyTorch) and
/// an empty gradient; a label `>= C` is an error.
pub fn softmax_cross_entropy<A: Element>(
    logits: ArrayView2<A>,
    labels: ArrayView1<u32>,
) -> Result<(A, Array2<A>)> {
    let (n, c) = check_cross_entropy(logits.shape(), labels.shape())?;
    if let Some((r, &l)) = labels.iter().enumerate().find(|(_, l)| **l as usize >= c) {
        return Err(invalid(format!(
            "softmax_cross_entropy: label {l} of sample {r} is not below the {c} classes"
        )));
    }
    let inv_n = A::one() / A::from(n).expect("batch size as a float");
    let mut grad = Array2::zeros((n, c));
    let mut total = A::zero();
    for ((z, mut g), &label) in logits.rows().into_iter().zip(grad.rows_mut()).zip(labels) {
        let m = z.iter().copied().fold(
            A::neg_infinity(),
            |m, v| {
                if v > m || v.is_nan() { v } else { m }
            },
        );
        let s: A = z.iter().map(|&v| (v - m).exp()).sum();
        total += m + s.ln() - z[label as usize];
        for (j, (gj, &v)) in g.iter_mut().zip(&z).enumerate() {
            let onehot = if j == label as usize {
                A::one()
            } else {
                A::zero()
            };
            *gj = ((v - m).exp() / s - onehot) * inv_n;
        }
    }
    Ok((total * inv_n, grad))
}

/// One SGD step in place, PyTorch's rule (`torch.optim.SGD`, no dampening, no Nesterov):
/// `g = grad + weight_decay·p`; `buf = g` on the first step (when `momentum_buffer` is `None`,
/// which this then fills), else `buf = momentum·buf + g`; `p -= lr·buf`. With momentum 0 no
/// buffer is kept and `p -= lr·g`.
pub fn sgd_step<A: Element, D: Dimension>(
    mut param: ArrayViewMut<A, D>,
    grad: ArrayView<A, D>,
    momentum_buffer: &mut Option<Array<A, D>>,
    options: &SgdOptions,
) -> Result<()> {
    options.validate()?;
    check_sgd_shapes(
        param.shape(),
        grad.shape(),
        momentum_buffer.as_ref().map(|b| b.shape()),
    )?;
    let cast = |v: f64| A::from(v).expect("hyperparameter as a float");
    let (lr, momentum, wd) = (
        cast(options.lr),
        cast(options.momentum),
        cast(options.weight_decay),
    );
    let mut g = grad.to_owned();
    if options.weight_decay != 0.0 {
        g.zip_mut_with(&param, |g, &p| *g += wd * p);
    }
    if options.momentum != 0.0 {
        match momentum_buffer {
            Some(buf) => {
                buf.zip_mut_with(&g, |b, &g| *b = momentum * *b + g);
                g.assign(buf);
            }
            None => *momentum_buffer = Some(g.clone()),
        }
    }
    param.zip_mut_with(&g, |p, &g| *p = *p - lr * g);
    Ok(())
}
