//! A training step of a small CNN with the `nn` layers on the GPU equals the same step composed
//! from the reference ops in f64: the loss, every parameter gradient, and the parameters after
//! the SGD update (momentum and weight decay), for two steps so that the momentum buffers are
//! used, through both `backward` and `backward_params`. Also: PyTorch's initialisation bounds,
//! seeding, and misuse errors.

mod common;

use common::net::{CLASSES, N, OPTS, conv_spec, pool, small_net};
use common::*;
use ndarray::{Array1, Array4, ArrayD, Ix1, Ix2, Ix4};
use wgconv::Error;
use wgconv::compare::GPU_TOLERANCE;
use wgconv::nn::{Layer, Sgd};
use wgconv::reference::{self, nn as rnn};

/// One step of the same network on the reference: returns the loss and the gradients
/// (w1, b1, w2, b2, w3, b3), and updates `params` and `bufs` in place.
fn reference_step(
    params: &mut [ArrayD<f64>],
    bufs: &mut [Option<ArrayD<f64>>],
    x: &Array4<f64>,
    labels: &Array1<u32>,
) -> (f64, Vec<ArrayD<f64>>) {
    let p4 = |i: usize| params[i].clone().into_dimensionality::<Ix4>().unwrap();
    let p2 = |i: usize| params[i].clone().into_dimensionality::<Ix2>().unwrap();
    let p1 = |i: usize| params[i].clone().into_dimensionality::<Ix1>().unwrap();
    let (w1, b1, w2, b2, w3, b3) = (p4(0), p1(1), p4(2), p1(3), p2(4), p1(5));
    let (spec, pool) = (conv_spec(), pool());

    let h1 = reference::conv2d_forward(x.view(), w1.view(), Some(b1.view()), &spec).unwrap();
    let a1 = rnn::relu_forward(h1.view());
    let (m1, idx1) = reference::max_pool2d_forward(a1.view(), &pool).unwrap();
    let h2 = reference::conv2d_forward(m1.view(), w2.view(), Some(b2.view()), &spec).unwrap();
    let a2 = rnn::relu_forward(h2.view());
    let m2 = reference::avg_pool2d_forward(a2.view(), &pool, true).unwrap();
    let flat = m2.clone().into_shape_with_order((N, 24)).unwrap();
    let logits = rnn::linear_forward(flat.view(), w3.view(), Some(b3.view())).unwrap();
    let (loss, dlogits) = rnn::softmax_cross_entropy(logits.view(), labels.view()).unwrap();

    let dflat = rnn::linear_backward_input(dlogits.view(), w3.view()).unwrap();
    let dw3 = rnn::linear_backward_weight(flat.view(), dlogits.view()).unwrap();
    let db3 = rnn::linear_backward_bias(dlogits.view());
    let dm2 = dflat.into_shape_with_order(m2.dim()).unwrap();
    let da2 = reference::avg_pool2d_backward(dm2.view(), [4, 4], &pool, true).unwrap();
    let dh2 = rnn::relu_backward(da2.view(), h2.view()).unwrap();
    let dm1 = reference::conv2d_backward_input(dh2.view(), w2.view(), [4, 4], &spec).unwrap();
    let dw2 = reference::conv2d_backward_weight(m1.view(), dh2.view(), [3, 3], &spec).unwrap();
    let db2 = reference::conv2d_backward_bias(dh2.view());
    let da1 = reference::max_pool2d_backward(dm1.view(), idx1.view(), [8, 8], &pool).unwrap();
    let dh1 = rnn::relu_backward(da1.view(), h1.view()).unwrap();
    let dw1 = reference::conv2d_backward_weight(x.view(), dh1.view(), [3, 3], &spec).unwrap();
    let db1 = reference::conv2d_backward_bias(dh1.view());

    let grads = vec![
        dw1.into_dyn(),
        db1.into_dyn(),
        dw2.into_dyn(),
        db2.into_dyn(),
        dw3.into_dyn(),
        db3.into_dyn(),
    ];
    for ((p, g), buf) in params.iter_mut().zip(&grads).zip(bufs.iter_mut()) {
        rnn::sgd_step(p.view_mut(), g.view(), buf, &OPTS).unwrap();
    }
    (loss, grads)
}

#[test]
fn gpu_training_step_equals_reference_step() {
    let gpu = gpu();
    let mut model = small_net(gpu, 42);
    let mut sgd = Sgd::new(OPTS).unwrap();
    let mut params: Vec<ArrayD<f64>> = model.parameters().iter().map(|t| dl(gpu, t)).collect();
    let shapes: Vec<Vec<usize>> = params.iter().map(|p| p.shape().to_vec()).collect();
    assert_eq!(
        shapes,
        [
            vec![4, 1, 3, 3],
            vec![4],
            vec![6, 4, 3, 3],
            vec![6],
            vec![10, 24],
            vec![10]
        ]
    );
    let mut bufs = vec![None; params.len()];
    let mut rng = common::Rng::new(7);
    for step in 0..2 {
        let x = rng.array4_f32([N, 1, 8, 8]);
        let labels = Array1::from_shape_simple_fn(N, || rng.range(0, CLASSES - 1) as u32);

        let logits = model.forward(gpu, gpu.upload(&x).unwrap()).unwrap();
        assert_eq!(logits.shape(), &[N, CLASSES]);
        let (loss, dlogits) = gpu
            .softmax_cross_entropy(&logits, &gpu.upload_indices(&labels).unwrap())
            .unwrap();
        // Both backward paths: with the input gradient, and without (what training uses).
        if step == 0 {
            let dx = model.backward(gpu, dlogits).unwrap();
            assert_eq!(dx.shape(), &[N, 1, 8, 8]);
        } else {
            model.backward_params(gpu, dlogits).unwrap();
        }
        let gpu_grads: Vec<ArrayD<f64>> = model
            .parameters_mut()
            .iter()
            .map(|p| dl(gpu, p.grad.expect("a gradient after backward")))
            .collect();
        sgd.step(gpu, model.parameters_mut()).unwrap();

        let (want_loss, want_grads) = reference_step(&mut params, &mut bufs, &f64s(&x), &labels);
        let got_loss = f64::from(gpu.download_scalar(&loss).unwrap());
        assert!(
            (got_loss - want_loss).abs() <= GPU_TOLERANCE * want_loss.abs().max(1.0),
            "step {step}: loss {got_loss} vs {want_loss}"
        );
        for (i, (g, w)) in gpu_grads.iter().zip(&want_grads).enumerate() {
            close(g, w, &format!("step {step}: gradient of parameter {i}"));
        }
        for (i, (t, w)) in model.parameters().iter().zip(&params).enumerate() {
            close(
                &dl(gpu, t),
                w,
                &format!("step {step}: parameter {i} after the update"),
            );
        }
        for (i, (b, w)) in sgd.momentum_buffers().iter().zip(&bufs).enumerate() {
            close(
                &dl(gpu, b.as_ref().expect("momentum buffer")),
                w.as_ref().unwrap(),
                &format!("step {step}: momentum buffer {i}"),
            );
        }
    }
}

#[test]
fn initialisation_follows_pytorch_and_the_seed() {
    let gpu = gpu();
    let a = small_net(gpu, 1);
    let b = small_net(gpu, 1);
    let c = small_net(gpu, 2);
    // fan_in: conv1 1·3·3, conv2 4·3·3, linear 24; weight and bias share the bound.
    let bounds = [9.0f64, 9.0, 36.0, 36.0, 24.0, 24.0].map(|f| 1.0 / f.sqrt());
    let (pa, pb, pc) = (a.parameters(), b.parameters(), c.parameters());
    for (i, bound) in bounds.iter().enumerate() {
        let (va, vb, vc) = (dl(gpu, pa[i]), dl(gpu, pb[i]), dl(gpu, pc[i]));
        assert_eq!(va, vb, "parameter {i}: same seed, same values");
        assert_ne!(va, vc, "parameter {i}: another seed, other values");
        let max = va.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            max <= *bound,
            "parameter {i}: |value| {max} > bound {bound}"
        );
        // Uniform over the whole range, not a narrower one (60 values of conv2's weight and
        // up to 240 of the linear's: the largest lies near the bound).
        if va.len() >= 60 {
            assert!(
                max > 0.8 * bound,
                "parameter {i}: max |value| {max} for bound {bound}"
            );
        }
    }
}

#[test]
fn misuse_is_an_error() {
    let gpu = gpu();
    let mut model = small_net(gpu, 3);
    let dy = gpu
        .upload(&ndarray::Array2::<f32>::zeros((N, CLASSES)))
        .unwrap();
    let err = model.backward(gpu, dy).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument(ref m) if m.contains("without a forward")),
        "{err}"
    );

    // A wrong input shape is an error from the first layer, not a panic.
    let bad = gpu.upload(&Array4::<f32>::zeros((N, 3, 8, 8))).unwrap();
    assert!(model.forward(gpu, bad).is_err());

    // The optimizer refuses a different parameter list than on its first step.
    let x = gpu.upload(&Array4::<f32>::zeros((N, 1, 8, 8))).unwrap();
    let logits = model.forward(gpu, x).unwrap();
    let labels = gpu.upload_indices(&Array1::<u32>::zeros(N)).unwrap();
    let (_, d) = gpu.softmax_cross_entropy(&logits, &labels).unwrap();
    model.backward(gpu, d).unwrap();
    let mut sgd = Sgd::new(OPTS).unwrap();
    sgd.step(gpu, model.parameters_mut()).unwrap();
    let mut fewer = model.parameters_mut();
    fewer.pop();
    assert!(matches!(
        sgd.step(gpu, fewer),
        Err(Error::InvalidArgument(_))
    ));
}
