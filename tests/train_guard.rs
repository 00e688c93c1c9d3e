//! The training guard: the `train_digits` example's own training (the same code, included from
//! `examples/train_digits.rs`) must still learn. It failed silently once (an evaluation forward
//! turned every later step's gradients into a running sum, and the example ended at 0.10 while
//! CI stayed green); this fails CI instead, in f32 and in mixed precision (f16 with loss
//! scaling, bf16). About 10-15 s a precision on lavapipe.

#[path = "../examples/train_digits.rs"]
#[allow(dead_code)]
mod train_digits;

use train_digits::{data, min_accuracy, train};
use wgconv::DType;

#[test]
fn the_digits_cnn_learns_in_f32() {
    learns(DType::F32);
}

/// Mixed precision with f16 activations and dynamic loss scaling.
#[test]
fn the_digits_cnn_learns_in_f16() {
    learns(DType::F16);
}

/// Mixed precision with bf16 activations.
#[test]
fn the_digits_cnn_learns_in_bf16() {
    learns(DType::BF16);
}

fn learns(precision: DType) {
    let (train_split, test) = data().expect("data/digits.bin");
    let gpu = wgconv::Gpu::new().expect("a wgpu adapter (see tests/common for the drivers)");
    let info = gpu.adapter_info();
    eprintln!(
        "training guard in {precision} on {} ({:?})",
        info.name, info.backend
    );
    let report = train(&gpu, &train_split, &test, precision).unwrap();
    let train_loss: Vec<f64> = report.epochs.iter().map(|e| e.0).collect();
    let (first, last) = (train_loss[0], train_loss[train_loss.len() - 1]);
    assert!(
        last < first / 20.0,
        "the training loss must fall: {train_loss:?}"
    );
    // Falling over the run, not just at its end: each third's mean below the one before.
    let thirds: Vec<f64> = train_loss
        .chunks(train_loss.len() / 3)
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect();
    assert!(
        thirds.windows(2).all(|w| w[1] < w[0]),
        "mean training loss by thirds {thirds:?}"
    );
    let test_loss: Vec<f32> = report.epochs.iter().map(|e| e.1).collect();
    assert!(
        test_loss[test_loss.len() - 1] < test_loss[0] / 4.0,
        "the test loss must fall: {test_loss:?}"
    );
    assert!(
        report.test_accuracy >= min_accuracy(precision),
        "{precision}: test accuracy {} below {}",
        report.test_accuracy,
        min_accuracy(precision)
    );
}
