//! The training ops (ReLU, linear, softmax cross-entropy, SGD, reshape) on the GPU against the
//! reference, run in f64 on the same f32 inputs, and known values; determinism, chunked
//! bindings, checked mode and bad inputs. Finite-difference checks of the reference's backward
//! ops: `gradcheck.rs`; a whole training step: `nn_train_step.rs`.

mod common;

use common::*;
use ndarray::{Array1, Array2, ArrayD, IxDyn, array};
use wgconv::compare::GPU_TOLERANCE;
use wgconv::nn::SgdOptions;
use wgconv::reference::nn as reference;
use wgconv::{Error, Gpu, Tensor};

fn random2(rng: &mut Rng, rows: usize, cols: usize) -> Array2<f32> {
    Array2::from_shape_simple_fn((rows, cols), || rng.unit() as f32)
}

fn random1(rng: &mut Rng, len: usize) -> Array1<f32> {
    Array1::from_shape_simple_fn(len, || rng.unit() as f32)
}

/// Values around zero with exact zeros, signed zeros, infinities and NaN mixed in.
fn relu_input(rng: &mut Rng, shape: &[usize]) -> ArrayD<f32> {
    let mut x = ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.unit() as f32);
    let specials = [
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e-30,
        -1e-30,
    ];
    for (v, s) in x.iter_mut().step_by(13).zip(specials.iter().cycle()) {
        *v = *s;
    }
    x
}

#[test]
fn relu_matches_reference() {
    let gpu = gpu();
    let mut rng = Rng::new(1);
    for shape in [
        vec![1],
        vec![63],
        vec![3, 5, 7, 9],
        vec![2, 1000],
        vec![4, 8, 8, 8],
    ] {
        let x = relu_input(&mut rng, &shape);
        let dy = ArrayD::from_shape_simple_fn(IxDyn(&shape), || rng.unit() as f32);
        let (xt, dyt) = (gpu.upload(&x).unwrap(), gpu.upload(&dy).unwrap());
        let y = gpu.relu_forward(&xt).unwrap();
        close(
            &dl(gpu, &y),
            &reference::relu_forward(f64s(&x).view()),
            &format!("relu {shape:?}"),
        );
        let dx = gpu.relu_backward(&dyt, &xt).unwrap();
        let want = reference::relu_backward(f64s(&dy).view(), f64s(&x).view()).unwrap();
        close(&dl(gpu, &dx), &want, &format!("relu backward {shape:?}"));
    }
}

#[test]
fn relu_follows_pytorch_on_special_values() {
    let x = array![
        -1.0f64,
        -0.0,
        0.0,
        2.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY
    ];
    let y = reference::relu_forward(x.view());
    assert_eq!(&y.to_vec()[..4], &[0.0, 0.0, 0.0, 2.0]);
    assert!(y[4].is_nan(), "NaN passes through relu");
    assert_eq!((y[5], y[6]), (f64::INFINITY, 0.0));
    // threshold_backward: gradient only where x > 0; none through NaN.
    let dx = reference::relu_backward(Array1::from_elem(7, 3.0).view(), x.view()).unwrap();
    assert_eq!(dx.to_vec(), vec![0.0, 0.0, 0.0, 3.0, 0.0, 3.0, 0.0]);
}

/// Forward, dx, dW and db of a linear layer on the GPU against the reference.
fn check_linear(gpu: &Gpu, n: usize, i: usize, o: usize, bias: bool, seed: u64) {
    let what = format!("linear N={n} in={i} out={o} bias={bias}");
    let mut rng = Rng::new(seed);
    let (x, w, b, dy) = (
        random2(&mut rng, n, i),
        random2(&mut rng, o, i),
        random1(&mut rng, o),
        random2(&mut rng, n, o),
    );
    let (xd, wd, bd, dyd) = (f64s(&x), f64s(&w), f64s(&b), f64s(&dy));
    let (xt, wt, bt, dyt) = (
        gpu.upload(&x).unwrap(),
        gpu.upload(&w).unwrap(),
        gpu.upload(&b).unwrap(),
        gpu.upload(&dy).unwrap(),
    );
    let y = gpu.linear_forward(&xt, &wt, bias.then_some(&bt)).unwrap();
    let y_ref = reference::linear_forward(xd.view(), wd.view(), bias.then(|| bd.view())).unwrap();
    close(&dl(gpu, &y), &y_ref, &format!("{what}: y"));
    let dx = gpu.linear_backward_input(&dyt, &wt).unwrap();
    let dx_ref = reference::linear_backward_input(dyd.view(), wd.view()).unwrap();
    close(&dl(gpu, &dx), &dx_ref, &format!("{what}: dx"));
    let dw = gpu.linear_backward_weight(&xt, &dyt).unwrap();
    let dw_ref = reference::linear_backward_weight(xd.view(), dyd.view()).unwrap();
    close(&dl(gpu, &dw), &dw_ref, &format!("{what}: dW"));
    let db = gpu.linear_backward_bias(&dyt).unwrap();
    close(
        &dl(gpu, &db),
        &reference::linear_backward_bias(dyd.view()),
        &format!("{what}: db"),
    );
}

#[test]
fn linear_matches_reference() {
    let gpu = gpu();
    // Sizes below, at and across the 32 x 32 x 16 tiles, and ragged in every dimension.
    let cases = [
        (1, 1, 1, true),
        (5, 7, 3, false),
        (32, 16, 32, true),
        (37, 70, 45, true),
        (64, 64, 10, true),
        (33, 17, 65, false),
        (2, 300, 100, true),
        (130, 9, 3, true),
    ];
    for (seed, &(n, i, o, bias)) in cases.iter().enumerate() {
        check_linear(gpu, n, i, o, bias, seed as u64);
    }
}

#[test]
fn linear_with_empty_dimensions() {
    let gpu = gpu();
    // N = 0: empty y and dx; dW and db are zero sums.
    let x = gpu.upload(&Array2::<f32>::zeros((0, 3))).unwrap();
    let w = gpu.upload(&Array2::<f32>::ones((4, 3))).unwrap();
    let b = gpu.upload(&Array1::<f32>::ones(4)).unwrap();
    let dy = gpu.upload(&Array2::<f32>::zeros((0, 4))).unwrap();
    assert_eq!(
        gpu.linear_forward(&x, &w, Some(&b)).unwrap().shape(),
        &[0, 4]
    );
    assert_eq!(gpu.linear_backward_input(&dy, &w).unwrap().shape(), &[0, 3]);
    let dw = gpu.linear_backward_weight(&x, &dy).unwrap();
    close(
        &dl(gpu, &dw),
        &ArrayD::<f64>::zeros(IxDyn(&[4, 3])),
        "dW of an empty batch",
    );
    let db = gpu.linear_backward_bias(&dy).unwrap();
    close(
        &dl(gpu, &db),
        &ArrayD::<f64>::zeros(IxDyn(&[4])),
        "db of an empty batch",
    );
    // in = 0: y is the bias broadcast.
    let x = gpu.upload(&Array2::<f32>::zeros((2, 0))).unwrap();
    let w = gpu.upload(&Array2::<f32>::zeros((4, 0))).unwrap();
    let y = gpu.linear_forward(&x, &w, Some(&b)).unwrap();
    close(
        &dl(gpu, &y),
        &ArrayD::<f64>::ones(IxDyn(&[2, 4])),
        "y with no input features",
    );
}

#[test]
fn softmax_cross_entropy_matches_reference() {
    let gpu = gpu();
    let mut rng = Rng::new(5);
    // Rows past one workgroup (64), many classes, and logits far from zero (the log-sum-exp
    // must not overflow: exp(1e4) is inf in f32 and f64).
    for &(n, c, offset, scale) in &[
        (1, 1, 0.0, 1.0),
        (7, 10, 0.0, 3.0),
        (130, 10, 0.0, 5.0),
        (3, 1000, 0.0, 1.0),
        (9, 4, 1e4, 1.0),
        (5, 3, -1e4, 50.0),
    ] {
        let logits = Array2::from_shape_simple_fn((n, c), || (offset + scale * rng.unit()) as f32);
        let labels = Array1::from_shape_simple_fn(n, || rng.range(0, c - 1) as u32);
        let (loss, grad) = gpu
            .softmax_cross_entropy(
                &gpu.upload(&logits).unwrap(),
                &gpu.upload_indices(&labels).unwrap(),
            )
            .unwrap();
        let (want_loss, want_grad) =
            reference::softmax_cross_entropy(f64s(&logits).view(), labels.view()).unwrap();
        let what = format!("softmax CE N={n} C={c} offset={offset}");
        assert_eq!(loss.shape(), &[] as &[usize], "{what}: loss is 0-D");
        let got = f64::from(gpu.download_scalar(&loss).unwrap());
        assert!(want_loss.is_finite(), "{what}: reference loss {want_loss}");
        assert!(
            (got - want_loss).abs() <= GPU_TOLERANCE * want_loss.abs().max(1.0),
            "{what}: loss {got} vs {want_loss}"
        );
        close(&dl(gpu, &grad), &want_grad, &format!("{what}: gradient"));
    }
}

#[test]
fn softmax_cross_entropy_known_values() {
    // Uniform logits: loss ln(C), gradient (1/C - onehot) / N.
    let logits = Array2::<f64>::zeros((2, 4));
    let (loss, grad) =
        reference::softmax_cross_entropy(logits.view(), array![1u32, 3].view()).unwrap();
    assert!((loss - 4f64.ln()).abs() < 1e-15);
    assert_eq!(
        grad,
        array![[0.125, -0.375, 0.125, 0.125], [0.125, 0.125, 0.125, -0.375]]
    );
    // log(1 + e^-1000) = 0 to f64 precision: no overflow for huge logits.
    let (loss, _) =
        reference::softmax_cross_entropy(array![[1000.0f64, 0.0]].view(), array![0u32].view())
            .unwrap();
    assert_eq!(loss, 0.0);
}

#[test]
fn softmax_cross_entropy_bad_labels_and_empty_batch() {
    let gpu = gpu();
    let logits = array![[1.0f32, 2.0, 3.0], [0.0, 0.0, 0.0]];
    let labels = array![0u32, 3];
    let err = reference::softmax_cross_entropy(f64s(&logits).view(), labels.view()).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument(ref m) if m.contains("label 3")),
        "{err}"
    );
    let (loss, _) = gpu
        .softmax_cross_entropy(
            &gpu.upload(&logits).unwrap(),
            &gpu.upload_indices(&labels).unwrap(),
        )
        .unwrap();
    assert!(
        gpu.download_scalar(&loss).unwrap().is_nan(),
        "a label out of range gives a NaN loss"
    );

    let empty = gpu.upload(&Array2::<f32>::zeros((0, 10))).unwrap();
    let no_labels = gpu.upload_indices(&Array1::<u32>::zeros(0)).unwrap();
    let (loss, grad) = gpu.softmax_cross_entropy(&empty, &no_labels).unwrap();
    assert!(
        gpu.download_scalar(&loss).unwrap().is_nan(),
        "mean over no samples is NaN"
    );
    assert_eq!(grad.shape(), &[0, 10]);
    let (loss, _) = reference::softmax_cross_entropy(
        Array2::<f64>::zeros((0, 10)).view(),
        Array1::<u32>::zeros(0).view(),
    )
    .unwrap();
    assert!(loss.is_nan());
}

#[test]
fn sgd_known_values() {
    // PyTorch's rule by hand: lr 0.1, momentum 0.9, weight decay 0.01, p = 1, grad 0.5.
    // Step 1: g = 0.5 + 0.01 = 0.51, buf = g, p = 1 - 0.051 = 0.949.
    // Step 2: g = 0.5 + 0.00949 = 0.50949, buf = 0.9 * 0.51 + 0.50949 = 0.96849,
    //         p = 0.949 - 0.096849 = 0.852151.
    let opts = SgdOptions {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.01,
    };
    let mut p = array![1.0f64];
    let mut buf = None;
    reference::sgd_step(p.view_mut(), array![0.5].view(), &mut buf, &opts).unwrap();
    assert!((p[0] - 0.949).abs() < 1e-15 && (buf.as_ref().unwrap()[0] - 0.51).abs() < 1e-15);
    reference::sgd_step(p.view_mut(), array![0.5].view(), &mut buf, &opts).unwrap();
    assert!((p[0] - 0.852151).abs() < 1e-15, "{}", p[0]);
    assert!((buf.as_ref().unwrap()[0] - 0.96849).abs() < 1e-15);

    let gpu = gpu();
    let mut pt = gpu.upload(&array![1.0f32]).unwrap();
    let g = gpu.upload(&array![0.5f32]).unwrap();
    let mut bt = None;
    for _ in 0..2 {
        gpu.sgd_step(&mut pt, &g, &mut bt, &opts).unwrap();
    }
    assert!((gpu.download_scalar(&pt).unwrap() - 0.852151).abs() < 1e-6);
    assert!((gpu.download_scalar(bt.as_ref().unwrap()).unwrap() - 0.96849).abs() < 1e-6);
}

/// Several SGD steps of a parameter on the GPU and on the reference, the same gradients each.
fn check_sgd(gpu: &Gpu, shape: &[usize], opts: SgdOptions, seed: u64) {
    let mut rng = Rng::new(seed);
    let p0 = ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.unit() as f32);
    let mut p_ref = f64s(&p0);
    let mut buf_ref = None;
    let mut p = gpu.upload(&p0).unwrap();
    let mut buf = None;
    for step in 0..3 {
        let g = ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.unit() as f32);
        gpu.sgd_step(&mut p, &gpu.upload(&g).unwrap(), &mut buf, &opts)
            .unwrap();
        reference::sgd_step(p_ref.view_mut(), f64s(&g).view(), &mut buf_ref, &opts).unwrap();
        let what = format!("sgd {shape:?} {opts:?} step {step}");
        close(&dl(gpu, &p), &p_ref, &what);
        assert_eq!(
            buf.is_some(),
            opts.momentum != 0.0,
            "{what}: momentum buffer kept"
        );
        if let (Some(b), Some(b_ref)) = (&buf, &buf_ref) {
            close(&dl(gpu, b), b_ref, &format!("{what}: momentum buffer"));
        }
    }
}

#[test]
fn sgd_matches_reference() {
    let gpu = gpu();
    let full = SgdOptions {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    check_sgd(gpu, &[8, 1, 3, 3], full, 1);
    check_sgd(gpu, &[1000], full, 2);
    check_sgd(
        gpu,
        &[10, 64],
        SgdOptions {
            momentum: 0.0,
            ..full
        },
        3,
    );
    check_sgd(
        gpu,
        &[7],
        SgdOptions {
            weight_decay: 0.0,
            ..full
        },
        4,
    );
    check_sgd(gpu, &[0, 3], full, 5);
}

#[test]
fn chunked_bindings() {
    // Bindings of at most 4 KiB: the element-wise ops and SGD run in many windows.
    let gpu = Gpu::builder()
        .max_binding_bytes(4096)
        .poison_outputs(true)
        .build()
        .unwrap();
    let mut rng = Rng::new(9);
    let x = relu_input(&mut rng, &[5001]);
    let dy = ArrayD::from_shape_simple_fn(IxDyn(&[5001]), || rng.unit() as f32);
    let (xt, dyt) = (gpu.upload(&x).unwrap(), gpu.upload(&dy).unwrap());
    close(
        &dl(&gpu, &gpu.relu_forward(&xt).unwrap()),
        &reference::relu_forward(f64s(&x).view()),
        "chunked relu",
    );
    let want = reference::relu_backward(f64s(&dy).view(), f64s(&x).view()).unwrap();
    close(
        &dl(&gpu, &gpu.relu_backward(&dyt, &xt).unwrap()),
        &want,
        "chunked relu backward",
    );
    let opts = SgdOptions {
        lr: 0.1,
        momentum: 0.5,
        weight_decay: 0.1,
    };
    check_sgd(&gpu, &[3, 1667], opts, 10);
}

#[test]
fn checked_mode_accepts_every_op() {
    let gpu = Gpu::builder().checked(true).build().unwrap();
    let mut rng = Rng::new(11);
    let x = gpu.upload(&random2(&mut rng, 9, 20)).unwrap();
    let w = gpu.upload(&random2(&mut rng, 6, 20)).unwrap();
    let b = gpu.upload(&random1(&mut rng, 6)).unwrap();
    let h = gpu.linear_forward(&x, &w, Some(&b)).unwrap();
    let a = gpu.relu_forward(&h).unwrap();
    let labels = gpu
        .upload_indices(&Array1::from_shape_simple_fn(9, || rng.range(0, 5) as u32))
        .unwrap();
    let (_, da) = gpu.softmax_cross_entropy(&a, &labels).unwrap();
    let dh = gpu.relu_backward(&da, &h).unwrap();
    gpu.linear_backward_input(&dh, &w).unwrap();
    let dw = gpu.linear_backward_weight(&x, &dh).unwrap();
    gpu.linear_backward_bias(&dh).unwrap();
    let mut w = w;
    let mut buf = None;
    let opts = SgdOptions {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.01,
    };
    gpu.sgd_step(&mut w, &dw, &mut buf, &opts).unwrap();
    gpu.sgd_step(&mut w, &dw, &mut buf, &opts).unwrap();
}

#[test]
fn results_are_bitwise_reproducible() {
    let gpu = gpu();
    let mut rng = Rng::new(12);
    let x = gpu.upload(&random2(&mut rng, 100, 77)).unwrap();
    let w = gpu.upload(&random2(&mut rng, 50, 77)).unwrap();
    let dy = gpu.upload(&random2(&mut rng, 100, 50)).unwrap();
    let labels = gpu
        .upload_indices(&Array1::from_shape_simple_fn(100, || {
            rng.range(0, 49) as u32
        }))
        .unwrap();
    let run = || {
        let y = gpu.linear_forward(&x, &w, None).unwrap();
        let dw = gpu.linear_backward_weight(&x, &dy).unwrap();
        let db = gpu.linear_backward_bias(&dy).unwrap();
        let (loss, g) = gpu.softmax_cross_entropy(&y, &labels).unwrap();
        [y, dw, db, loss, g].map(|t| gpu.download(&t).unwrap().mapv(f32::to_bits))
    };
    assert_eq!(run(), run());
}

#[test]
fn reshape_keeps_the_buffer() {
    let gpu = gpu();
    let a = ndarray::Array4::from_shape_fn((2, 3, 4, 5), |(n, c, h, w)| {
        (n * 1000 + c * 100 + h * 10 + w) as f32
    });
    let t = gpu.upload(&a).unwrap();
    let before = t.buffer().unwrap().clone();
    let flat = gpu.reshape(t, &[2, 60]).unwrap();
    assert!(*flat.buffer().unwrap() == before, "reshape must not copy");
    assert_eq!(flat.shape(), &[2, 60]);
    let want = a.into_shape_with_order((2, 60)).unwrap().mapv(f64::from);
    close(&dl(gpu, &flat), &want, "flattened data");
    let err = gpu.reshape(flat, &[7, 17]).unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch(ref m) if m.contains("[7, 17]")),
        "{err}"
    );
}

#[test]
fn bad_inputs_are_errors() {
    let gpu = gpu();
    let t = |shape: &[usize]| gpu.upload(&ArrayD::<f32>::zeros(IxDyn(shape))).unwrap();
    let mismatch = |r: Result<Tensor, Error>| matches!(r, Err(Error::ShapeMismatch(_)));
    assert!(mismatch(gpu.linear_forward(&t(&[2, 3]), &t(&[4, 5]), None)));
    assert!(mismatch(gpu.linear_forward(
        &t(&[2, 3, 1]),
        &t(&[4, 3]),
        None
    )));
    assert!(mismatch(gpu.linear_forward(
        &t(&[2, 3]),
        &t(&[4, 3]),
        Some(&t(&[3]))
    )));
    assert!(mismatch(
        gpu.linear_backward_input(&t(&[2, 4]), &t(&[5, 3]))
    ));
    assert!(mismatch(
        gpu.linear_backward_weight(&t(&[2, 3]), &t(&[3, 4]))
    ));
    assert!(mismatch(gpu.linear_backward_bias(&t(&[2, 3, 4]))));
    assert!(mismatch(gpu.relu_backward(&t(&[2, 3]), &t(&[3, 2]))));
    let labels = gpu.upload_indices(&Array1::<u32>::zeros(3)).unwrap();
    assert!(matches!(
        gpu.softmax_cross_entropy(&t(&[2, 5]), &labels),
        Err(Error::ShapeMismatch(_))
    ));
    assert!(matches!(
        gpu.softmax_cross_entropy(&t(&[3, 0]), &labels),
        Err(Error::InvalidArgument(_))
    ));
    let opts = SgdOptions {
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.0,
    };
    let mut p = t(&[4]);
    assert!(matches!(
        gpu.sgd_step(&mut p, &t(&[5]), &mut None, &opts),
        Err(Error::ShapeMismatch(_))
    ));
    for bad in [
        SgdOptions { lr: -0.1, ..opts },
        SgdOptions {
            momentum: f64::NAN,
            ..opts
        },
        SgdOptions {
            weight_decay: f64::INFINITY,
            ..opts
        },
    ] {
        let err = gpu.sgd_step(&mut p, &t(&[4]), &mut None, &bad).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(wgconv::nn::Sgd::new(bad).is_err());
    }
    // The reference rejects the same inputs.
    let z = |r: usize, c: usize| Array2::<f64>::zeros((r, c));
    assert!(reference::linear_forward(z(2, 3).view(), z(4, 5).view(), None).is_err());
    assert!(reference::linear_backward_input(z(2, 4).view(), z(5, 3).view()).is_err());
    assert!(reference::linear_backward_weight(z(2, 3).view(), z(3, 4).view()).is_err());
    assert!(
        reference::softmax_cross_entropy(z(3, 0).view(), Array1::<u32>::zeros(3).view()).is_err()
    );
}

/// Layer sizes past any device or host memory: `Err` naming the size, before anything is
/// allocated (was: a panic "capacity overflow", or an allocation abort).
#[test]
fn impossible_layer_sizes_are_errors() {
    use wgconv::nn::{Conv2d, Linear, Rng as NnRng};
    let gpu = gpu();
    let mut rng = NnRng::new(1);
    let e = Linear::new(gpu, usize::MAX, 3, true, &mut rng)
        .err()
        .unwrap();
    assert!(e.to_string().contains("18446744073709551615"), "{e}");
    let e = Linear::new(gpu, 1 << 31, 1 << 31, true, &mut rng)
        .err()
        .unwrap();
    assert!(e.to_string().contains("2147483648"), "{e}");
    let spec = wgconv::Conv2dSpec::default();
    let e = Conv2d::new(gpu, 1, 1 << 31, [1 << 31, 1], spec, true, &mut rng)
        .err()
        .unwrap();
    assert!(e.to_string().contains("2147483648"), "{e}");
    // Past max_buffer_size but representable: refused by the device's limit, not allocated.
    let e = Linear::new(gpu, 1 << 20, 1 << 20, false, &mut rng)
        .err()
        .unwrap();
    assert!(matches!(e, Error::DeviceLimit(_)), "{e}");
}
