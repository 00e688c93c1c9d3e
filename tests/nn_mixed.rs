//! Mixed-precision training in `wgconv::nn`: 16-bit activations with f32 master weights give
//! the f32 step's gradients to 16-bit accuracy; `GradScaler` scales, checks on the GPU, skips
//! and halves on an overflow, and doubles after its growth interval; the nn ops take 16-bit
//! tensors.

mod common;

use common::net::{CLASSES, N, OPTS, small_net};
use common::*;
use ndarray::{Array1, Array2};
use wgconv::DType;
use wgconv::nn::{GradScaler, Layer, Sgd};

/// One step of the small net from the same weights and batch in f32 and in f16/bf16 (f16 with
/// a loss scale of 2^16, unscaled here): every master gradient within a few 16-bit ulps of the
/// f32 one (relative to the gradient's largest value), every gradient f32.
#[test]
fn sixteen_bit_steps_give_the_f32_gradients_to_16_bit_accuracy() {
    let gpu = gpu();
    let mut rng = Rng::new(3);
    let x = rng.array4_f32([N, 1, 8, 8]);
    let labels = Array1::from_shape_simple_fn(N, || rng.range(0, CLASSES - 1) as u32);
    let labels = gpu.upload_indices(&labels).unwrap();
    let grads = |dtype: DType, scale: f32| -> Vec<ndarray::ArrayD<f64>> {
        let mut model = small_net(gpu, 8);
        let logits = model
            .forward(gpu, gpu.upload_as(&x, dtype).unwrap())
            .unwrap();
        assert_eq!(logits.dtype(), dtype);
        let (loss, dlogits) = gpu
            .softmax_cross_entropy_scaled(&logits, &labels, scale)
            .unwrap();
        assert_eq!(loss.dtype(), DType::F32);
        model.backward_params(gpu, dlogits).unwrap();
        model
            .parameters_mut()
            .iter()
            .map(|p| {
                let g = p.grad.unwrap();
                assert_eq!(g.dtype(), DType::F32, "master gradients are f32");
                dl(gpu, g) / f64::from(scale)
            })
            .collect()
    };
    let want = grads(DType::F32, 1.0);
    for (dtype, scale, tol) in [(DType::F16, 65536.0, 2e-2), (DType::BF16, 1.0, 8e-2)] {
        for (i, (g, w)) in grads(dtype, scale).iter().zip(&want).enumerate() {
            let scale = w.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
            let err = (g - w).iter().fold(0f64, |m, v| m.max(v.abs())) / scale;
            eprintln!("{dtype}: parameter {i}: relative error {err:.2e}");
            assert!(err < tol, "{dtype}: parameter {i}: relative error {err}");
        }
    }
}

/// The scaler: a finite step steps and keeps the scale; an inf gradient skips the step (the
/// parameters unchanged), halves the scale and ends the step; `growth_interval` clean steps
/// double it.
#[test]
fn grad_scaler_skips_halves_and_grows() {
    let gpu = gpu();
    let mut model = small_net(gpu, 4);
    let mut sgd = Sgd::new(OPTS).unwrap();
    let mut scaler = GradScaler::new().with_growth_interval(2);
    assert_eq!(scaler.scale(), 65536.0);
    let x = Rng::new(5).array4_f32([N, 1, 8, 8]);
    let labels = gpu.upload_indices(&Array1::<u32>::zeros(N)).unwrap();
    let step = |model: &mut wgconv::nn::Sequential,
                scaler: &mut GradScaler,
                sgd: &mut Sgd,
                scale_override: Option<f32>|
     -> bool {
        let logits = model
            .forward(gpu, gpu.upload_as(&x, DType::F16).unwrap())
            .unwrap();
        let s = scale_override.unwrap_or(scaler.scale());
        let (_, d) = gpu
            .softmax_cross_entropy_scaled(&logits, &labels, s)
            .unwrap();
        model.backward_params(gpu, d).unwrap();
        scaler.step(gpu, sgd, model.parameters_mut()).unwrap()
    };
    assert!(step(&mut model, &mut scaler, &mut sgd, None));
    assert_eq!(scaler.scale(), 65536.0);
    assert!(step(&mut model, &mut scaler, &mut sgd, None));
    assert_eq!(scaler.scale(), 131072.0, "doubled after 2 clean steps");
    // A scale past f16's range overflows the gradients: skipped, halved, parameters kept.
    let before: Vec<Vec<f32>> = model
        .parameters()
        .iter()
        .map(|t| gpu.download(t).unwrap().iter().copied().collect())
        .collect();
    assert!(!step(&mut model, &mut scaler, &mut sgd, Some(1e30)));
    assert_eq!(scaler.scale(), 65536.0);
    assert_eq!(scaler.skipped_steps(), 1);
    let after: Vec<Vec<f32>> = model
        .parameters()
        .iter()
        .map(|t| gpu.download(t).unwrap().iter().copied().collect())
        .collect();
    assert_eq!(before, after, "a skipped step leaves the parameters");
    // The step ended: the next backward replaces the inf gradients, and steps.
    assert!(step(&mut model, &mut scaler, &mut sgd, None));
}

/// The GPU's finite check, and the nn ops on 16-bit tensors: rounded once from the f32 op on
/// the widened inputs.
#[test]
fn all_finite_and_nn_ops_in_16_bits() {
    let gpu = gpu();
    let ok = gpu.upload(&Array2::<f32>::ones((3, 5))).unwrap();
    let bad = gpu
        .upload(&Array1::from(vec![1.0f32, 2.0, f32::NAN]))
        .unwrap();
    let big = gpu
        .upload_as(&Array1::from(vec![1e5f32]), DType::F16)
        .unwrap();
    assert!(gpu.all_finite(&[&ok]).unwrap());
    assert!(!gpu.all_finite(&[&ok, &bad]).unwrap());
    assert!(!gpu.all_finite(&[&big]).unwrap(), "1e5 is inf in f16");
    let mut rng = Rng::new(2);
    let a = Array2::from_shape_vec(
        (4, 6),
        rng.array4_f32([1, 1, 4, 6]).into_raw_vec_and_offset().0,
    )
    .unwrap();
    let w = Array2::from_shape_vec(
        (3, 6),
        rng.array4_f32([1, 1, 3, 6]).into_raw_vec_and_offset().0,
    )
    .unwrap();
    for dt in [DType::F16, DType::BF16] {
        let (a16, w16) = (
            gpu.upload_as(&a, dt).unwrap(),
            gpu.upload_as(&w, dt).unwrap(),
        );
        let wide = |t: &wgconv::Tensor| gpu.cast(t, DType::F32).unwrap();
        let bits = |t: &wgconv::Tensor| bits(gpu, t);
        let y = gpu.linear_forward(&a16, &w16, None).unwrap();
        assert_eq!(y.dtype(), dt);
        let y32 = gpu.linear_forward(&wide(&a16), &wide(&w16), None).unwrap();
        assert_eq!(bits(&y), bits(&gpu.cast(&y32, dt).unwrap()), "{dt}: linear");
        let r = gpu.relu_forward(&a16).unwrap();
        assert_eq!(
            bits(&r),
            bits(&gpu.relu_forward(&wide(&a16)).unwrap()),
            "{dt}: relu"
        );
    }
}
