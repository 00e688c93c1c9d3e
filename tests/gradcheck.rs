//! Finite-difference gradient checks in f64: for a loss `L = Σ op(inputs) ⊙ r`, the backward
//! ops applied to `r` must equal the central differences of `L`. Conv and pools: every case
//! moves stride, padding, dilation and groups away from their defaults. The `nn` ops (ReLU,
//! linear, softmax cross-entropy): module `nn`.

mod common;

use common::*;
use ndarray::{Array1, Array4};
use wgconv::reference;
use wgconv::{Conv2dSpec, Padding2d, Pool2dSpec};

const H: f64 = 1e-6;
const TOL: f64 = 1e-6;

fn loss(y: &Array4<f64>, r: &Array4<f64>) -> f64 {
    (y * r).sum()
}

/// Central differences of `f` with respect to every element of `x`.
fn numeric<D: ndarray::Dimension>(
    x: &ndarray::Array<f64, D>,
    f: impl Fn(&ndarray::Array<f64, D>) -> f64,
) -> ndarray::Array<f64, D> {
    let mut g = x.clone();
    let mut xp = x.clone();
    for (i, gi) in g.iter_mut().enumerate() {
        let orig = *x.iter().nth(i).unwrap();
        *xp.iter_mut().nth(i).unwrap() = orig + H;
        let up = f(&xp);
        *xp.iter_mut().nth(i).unwrap() = orig - H;
        let down = f(&xp);
        *xp.iter_mut().nth(i).unwrap() = orig;
        *gi = (up - down) / (2.0 * H);
    }
    g
}

fn conv_specs() -> Vec<(&'static str, [usize; 4], [usize; 4], Conv2dSpec)> {
    vec![
        (
            "stride 2x3, asymmetric padding, dilation 2x1, 2 groups",
            [2, 4, 9, 8],
            [4, 2, 3, 2],
            Conv2dSpec {
                stride: [2, 3],
                padding: Padding2d {
                    top: 2,
                    bottom: 0,
                    left: 1,
                    right: 2,
                },
                dilation: [2, 1],
                groups: 2,
            },
        ),
        (
            "depthwise x2 multiplier, stride 2, padding 1",
            [1, 3, 7, 6],
            [6, 1, 3, 3],
            Conv2dSpec::new()
                .with_stride([2, 2])
                .with_padding(Padding2d::symmetric(1, 1))
                .with_groups(3),
        ),
        (
            "1x1 kernel, padding beyond its reach, stride 3 with remainders",
            [1, 2, 8, 7],
            [3, 2, 1, 1],
            Conv2dSpec::new()
                .with_stride([3, 3])
                .with_padding(Padding2d {
                    top: 2,
                    bottom: 1,
                    left: 0,
                    right: 1,
                }),
        ),
    ]
}

#[test]
fn conv_gradients_match_finite_differences() {
    let mut rng = Rng::new(11);
    for (name, xs, ws, spec) in conv_specs() {
        let x = rng.array4(xs);
        let w = rng.array4(ws);
        let b = Array1::from_shape_fn(ws[0], |_| rng.unit());
        let y = reference::conv2d_forward(x.view(), w.view(), Some(b.view()), &spec).unwrap();
        let r = rng.array4([xs[0], ws[0], y.shape()[2], y.shape()[3]]);
        let f = |x: &Array4<f64>, w: &Array4<f64>, b: &Array1<f64>| {
            loss(
                &reference::conv2d_forward(x.view(), w.view(), Some(b.view()), &spec).unwrap(),
                &r,
            )
        };

        let dx =
            reference::conv2d_backward_input(r.view(), w.view(), [xs[2], xs[3]], &spec).unwrap();
        assert_close(
            &dx,
            &numeric(&x, |x| f(x, &w, &b)),
            TOL,
            &format!("{name}: dx"),
        );
        let dw =
            reference::conv2d_backward_weight(x.view(), r.view(), [ws[2], ws[3]], &spec).unwrap();
        assert_close(
            &dw,
            &numeric(&w, |w| f(&x, w, &b)),
            TOL,
            &format!("{name}: dw"),
        );
        let db = reference::conv2d_backward_bias(r.view());
        assert_close(
            &db,
            &numeric(&b, |b| f(&x, &w, b)),
            TOL,
            &format!("{name}: db"),
        );
    }
}

fn pool_specs() -> Vec<(&'static str, [usize; 4], Pool2dSpec)> {
    vec![
        (
            "3x3 stride 2 padding 1 ceil_mode",
            [2, 2, 8, 7],
            Pool2dSpec::new([3, 3])
                .with_stride([2, 2])
                .with_padding([1, 1])
                .with_ceil_mode(true),
        ),
        (
            "3x2 stride 1x2 padding 1x0, overlapping windows",
            [1, 3, 6, 7],
            Pool2dSpec::new([3, 2])
                .with_stride([1, 2])
                .with_padding([1, 0]),
        ),
    ]
}

#[test]
fn max_pool_gradient_matches_finite_differences() {
    let mut rng = Rng::new(12);
    let mut specs = pool_specs();
    specs.push((
        "2x2 dilation 2 stride 1 padding 1",
        [1, 2, 7, 6],
        Pool2dSpec::new([2, 2])
            .with_stride([1, 1])
            .with_padding([1, 1])
            .with_dilation([2, 2]),
    ));
    for (name, xs, spec) in specs {
        // Distinct values 0.01 apart: the perturbation never changes an argmax.
        let len = xs.iter().product::<usize>();
        let mut vals: Vec<f64> = (0..len).map(|i| i as f64 * 0.01 - 1.0).collect();
        for i in (1..len).rev() {
            vals.swap(i, rng.range(0, i));
        }
        let x = Array4::from_shape_vec(xs, vals).unwrap();
        let (y, idx) = reference::max_pool2d_forward(x.view(), &spec).unwrap();
        let r = rng.array4([xs[0], xs[1], y.shape()[2], y.shape()[3]]);
        let dx =
            reference::max_pool2d_backward(r.view(), idx.view(), [xs[2], xs[3]], &spec).unwrap();
        let num = numeric(&x, |x| {
            loss(
                &reference::max_pool2d_forward(x.view(), &spec).unwrap().0,
                &r,
            )
        });
        assert_close(&dx, &num, TOL, &format!("{name}: max-pool dx"));
    }
}

#[test]
fn avg_pool_gradient_matches_finite_differences() {
    let mut rng = Rng::new(13);
    for (name, xs, spec) in pool_specs() {
        for cip in [true, false] {
            let x = rng.array4(xs);
            let y = reference::avg_pool2d_forward(x.view(), &spec, cip).unwrap();
            let r = rng.array4([xs[0], xs[1], y.shape()[2], y.shape()[3]]);
            let dx = reference::avg_pool2d_backward(r.view(), [xs[2], xs[3]], &spec, cip).unwrap();
            let num = numeric(&x, |x| {
                loss(
                    &reference::avg_pool2d_forward(x.view(), &spec, cip).unwrap(),
                    &r,
                )
            });
            assert_close(
                &dx,
                &num,
                TOL,
                &format!("{name} count_include_pad={cip}: avg-pool dx"),
            );
        }
    }
}

/// The `nn` reference ops, with the same central differences and tolerance.
mod nn {
    use super::{TOL, numeric};
    use crate::common::*;
    use ndarray::{Array1, Array2};
    use wgconv::reference::nn as reference;

    fn rand2(rng: &mut Rng, r: usize, c: usize) -> Array2<f64> {
        Array2::from_shape_simple_fn((r, c), || rng.unit())
    }

    #[test]
    fn relu_gradient_matches_finite_differences() {
        let mut rng = Rng::new(21);
        // Keep inputs away from the kink at 0, where the difference quotient is not the derivative.
        let x = rand2(&mut rng, 4, 6).mapv(|v| if v.abs() < 0.05 { v + 0.1 } else { v });
        let r = rand2(&mut rng, 4, 6);
        let num = numeric(&x, |x| (reference::relu_forward(x.view()) * &r).sum());
        let ana = reference::relu_backward(r.view(), x.view()).unwrap();
        assert_close(&ana, &num, TOL, "relu dx");
    }

    #[test]
    fn linear_gradients_match_finite_differences() {
        let mut rng = Rng::new(22);
        let (x, w, r) = (
            rand2(&mut rng, 3, 5),
            rand2(&mut rng, 4, 5),
            rand2(&mut rng, 3, 4),
        );
        let b = Array1::from_shape_simple_fn(4, || rng.unit());
        let loss = |x: &Array2<f64>, w: &Array2<f64>, b: &Array1<f64>| {
            (reference::linear_forward(x.view(), w.view(), Some(b.view())).unwrap() * &r).sum()
        };
        let dx = reference::linear_backward_input(r.view(), w.view()).unwrap();
        assert_close(&dx, &numeric(&x, |x| loss(x, &w, &b)), TOL, "linear dx");
        let dw = reference::linear_backward_weight(x.view(), r.view()).unwrap();
        assert_close(&dw, &numeric(&w, |w| loss(&x, w, &b)), TOL, "linear dW");
        let db = reference::linear_backward_bias(r.view());
        assert_close(&db, &numeric(&b, |b| loss(&x, &w, b)), TOL, "linear db");
    }

    #[test]
    fn softmax_cross_entropy_gradient_matches_finite_differences() {
        let mut rng = Rng::new(23);
        let logits = rand2(&mut rng, 5, 7).mapv(|v| 4.0 * v);
        let labels = Array1::from_shape_simple_fn(5, || rng.range(0, 6) as u32);
        let (_, grad) = reference::softmax_cross_entropy(logits.view(), labels.view()).unwrap();
        let num = numeric(&logits, |z| {
            reference::softmax_cross_entropy(z.view(), labels.view())
                .unwrap()
                .0
        });
        assert_close(&grad, &num, TOL, "softmax cross-entropy dlogits");
    }
}
