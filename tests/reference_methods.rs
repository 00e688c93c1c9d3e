//! The three convolution methods of the reference agree with each other on random shapes with
//! every option drawn: direct loops (the oracle), im2col/col2im + GEMM, and the explicit
//! transposed convolution for dx; rows no window reaches; empty batches (N = 0) and channels
//! (C = 0) from every entry point. The fast path's determinism: `determinism.rs`.

mod common;

use common::*;
use ndarray::{Array1, Array4};
use wgconv::reference::{self, direct, gemm, transposed};
use wgconv::{Conv2dSpec, Padding2d, Pool2dSpec};

const TOL: f64 = 1e-12;

#[test]
fn methods_agree_on_random_convolutions() {
    let mut rng = Rng::new(2024);
    for case in 0..300 {
        let (xs, ws, spec) = random_conv(&mut rng, 9);
        let x = rng.array4(xs);
        let w = rng.array4(ws);
        let b = Array1::from_shape_fn(ws[0], |_| rng.unit());
        let y = direct::conv2d_forward(x.view(), w.view(), Some(b.view()), &spec).unwrap();
        let dy = rng.array4([xs[0], ws[0], y.shape()[2], y.shape()[3]]);
        let what = |op: &str| format!("case {case} {op}: x {xs:?} w {ws:?} {spec:?}");
        let hw = [xs[2], xs[3]];
        let khw = [ws[2], ws[3]];

        let yg = gemm::conv2d_forward(x.view(), w.view(), Some(b.view()), &spec).unwrap();
        assert_close(&yg, &y, TOL, &what("forward gemm"));

        let dx = direct::conv2d_backward_input(dy.view(), w.view(), hw, &spec).unwrap();
        let dxg = gemm::conv2d_backward_input(dy.view(), w.view(), hw, &spec).unwrap();
        let dxt = transposed::conv2d_backward_input(dy.view(), w.view(), hw, &spec).unwrap();
        assert_close(&dxg, &dx, TOL, &what("dx gemm"));
        assert_close(&dxt, &dx, TOL, &what("dx transposed"));

        let dw = direct::conv2d_backward_weight(x.view(), dy.view(), khw, &spec).unwrap();
        let dwg = gemm::conv2d_backward_weight(x.view(), dy.view(), khw, &spec).unwrap();
        assert_close(&dwg, &dw, TOL, &what("dw gemm"));
    }
}

/// Inputs whose last rows/columns no window reaches get exactly zero gradient, in every method.
#[test]
fn remainder_rows_get_zero_gradient() {
    let spec = Conv2dSpec::new()
        .with_stride([3, 2])
        .with_padding(Padding2d {
            top: 1,
            bottom: 0,
            left: 0,
            right: 0,
        });
    // H: 9 + 1 - 3 = 7 -> 7 % 3 = 1 remainder row; W: 8 - 3 = 5 -> 5 % 2 = 1 remainder column.
    let mut rng = Rng::new(5);
    let w = rng.array4([2, 2, 3, 3]);
    let g = spec.forward_geometry([1, 2, 9, 8], [2, 2, 3, 3]).unwrap();
    assert_eq!(g.remainder(), [1, 1]);
    let dy = rng.array4(g.y_shape());
    for dx in [
        direct::conv2d_backward_input(dy.view(), w.view(), [9, 8], &spec).unwrap(),
        gemm::conv2d_backward_input(dy.view(), w.view(), [9, 8], &spec).unwrap(),
        transposed::conv2d_backward_input(dy.view(), w.view(), [9, 8], &spec).unwrap(),
    ] {
        assert!(
            dx.slice(ndarray::s![.., .., 8, ..])
                .iter()
                .all(|&v| v == 0.0)
        );
        assert!(
            dx.slice(ndarray::s![.., .., .., 7])
                .iter()
                .all(|&v| v == 0.0)
        );
        assert!(
            dx.slice(ndarray::s![.., .., 7, ..])
                .iter()
                .any(|&v| v != 0.0)
        );
    }
}

/// A batch of zero gives empty results of the right shapes, from every entry point.
#[test]
fn empty_batch_gives_empty_results() {
    let spec = Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1));
    let x = Array4::<f32>::zeros((0, 3, 5, 5));
    let w = Array4::<f32>::ones((4, 3, 3, 3));
    let dy = Array4::<f32>::zeros((0, 4, 5, 5));
    for y in [
        reference::conv2d_forward(x.view(), w.view(), None, &spec).unwrap(),
        direct::conv2d_forward(x.view(), w.view(), None, &spec).unwrap(),
    ] {
        assert_eq!(y.shape(), &[0, 4, 5, 5]);
    }
    for dx in [
        reference::conv2d_backward_input(dy.view(), w.view(), [5, 5], &spec).unwrap(),
        direct::conv2d_backward_input(dy.view(), w.view(), [5, 5], &spec).unwrap(),
        transposed::conv2d_backward_input(dy.view(), w.view(), [5, 5], &spec).unwrap(),
    ] {
        assert_eq!(dx.shape(), &[0, 3, 5, 5]);
    }
    let dw = reference::conv2d_backward_weight(x.view(), dy.view(), [3, 3], &spec).unwrap();
    assert_eq!(dw, Array4::<f32>::zeros((4, 3, 3, 3)));
    assert_eq!(
        reference::conv2d_backward_bias(dy.view()),
        Array1::<f32>::zeros(4)
    );
    let pool = wgconv::Pool2dSpec::new([2, 2]);
    let (y, i) = reference::max_pool2d_forward(x.view(), &pool).unwrap();
    assert_eq!(
        (y.shape(), i.shape()),
        (&[0, 3, 2, 2][..], &[0, 3, 2, 2][..])
    );
    let dx = reference::max_pool2d_backward(y.view(), i.view(), [5, 5], &pool).unwrap();
    assert_eq!(dx.shape(), &[0, 3, 5, 5]);
    let y = reference::avg_pool2d_forward(x.view(), &pool, true).unwrap();
    let dx = reference::avg_pool2d_backward(y.view(), [5, 5], &pool, true).unwrap();
    assert_eq!(dx.shape(), &[0, 3, 5, 5]);
}

/// N = 0 and C = 0 give empty results from every reference entry point.
#[test]
fn empty_batch_and_channels() {
    let spec = Conv2dSpec::new();
    let x = Array4::<f64>::zeros((0, 2, 4, 4));
    let w = Array4::<f64>::ones((3, 2, 3, 3));
    let y = reference::conv2d_forward(x.view(), w.view(), None, &spec).unwrap();
    assert_eq!(y.shape(), &[0, 3, 2, 2]);
    let dx = reference::conv2d_backward_input(y.view(), w.view(), [4, 4], &spec).unwrap();
    assert_eq!(dx.shape(), &[0, 2, 4, 4]);
    let dw = reference::conv2d_backward_weight(x.view(), y.view(), [3, 3], &spec).unwrap();
    assert!(dw.iter().all(|&v| v == 0.0) && dw.shape() == [3, 2, 3, 3]);
    assert_eq!(
        reference::conv2d_backward_bias(y.view()).to_vec(),
        vec![0.0; 3]
    );
    // C = 0 is refused by conv (no channel to convolve) but is an empty pool.
    let c0 = Array4::<f64>::zeros((2, 0, 4, 4));
    let e = reference::conv2d_forward(c0.view(), Array4::zeros((1, 0, 3, 3)).view(), None, &spec);
    assert!(e.unwrap_err().to_string().contains("C = 0"));
    let pool = Pool2dSpec::new([2, 2]);
    let (y, i) = reference::max_pool2d_forward(c0.view(), &pool).unwrap();
    assert_eq!(
        (y.shape(), i.shape()),
        (&[2, 0, 2, 2][..], &[2, 0, 2, 2][..])
    );
    let dx = reference::max_pool2d_backward(y.view(), i.view(), [4, 4], &pool).unwrap();
    assert_eq!(dx.shape(), &[2, 0, 4, 4]);
    let y = reference::avg_pool2d_forward(c0.view(), &pool, false).unwrap();
    assert_eq!(
        reference::avg_pool2d_backward(y.view(), [4, 4], &pool, false)
            .unwrap()
            .shape(),
        &[2, 0, 4, 4]
    );
}
