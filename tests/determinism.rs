//! The same inputs give the same bits, run after run: the GPU conv and pool ops (fixed
//! summation orders, no atomics) and the reference's rayon fast path. Threads on one `Gpu`:
//! `faults.rs`; the `nn` ops: `nn_ops.rs`.

mod common;

use common::Rng;
use common::*;
use wgconv::reference::gemm;
use wgconv::{Conv2dSpec, Padding2d, Pool2dSpec, Tensor};

/// The same inputs give the same bits, run after run (fixed summation orders, no atomics).
#[test]
fn three_runs_are_bitwise_identical() {
    let gpu = gpu();
    let mut rng = Rng::new(77);
    let spec = Conv2dSpec::new()
        .with_stride([2, 2])
        .with_padding(Padding2d::symmetric(1, 1))
        .with_groups(2);
    let x = gpu.upload(&rng.array4_f32([3, 4, 19, 17])).unwrap();
    let w = gpu.upload(&rng.array4_f32([6, 2, 3, 3])).unwrap();
    let dy = gpu.upload(&rng.array4_f32([3, 6, 10, 9])).unwrap();
    let pool = Pool2dSpec::new([3, 3])
        .with_stride([2, 2])
        .with_padding([1, 1]);
    let run = || -> Vec<Vec<u32>> {
        let bits = |t: &Tensor| {
            gpu.download(t)
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        let (py, pi) = gpu.max_pool2d_forward(&x, &pool).unwrap();
        let ay = gpu.avg_pool2d_forward(&x, &pool, false).unwrap();
        vec![
            bits(&gpu.conv2d_forward(&x, &w, None, &spec).unwrap()),
            bits(&gpu.conv2d_backward_input(&dy, &w, [19, 17], &spec).unwrap()),
            bits(&gpu.conv2d_backward_weight(&x, &dy, [3, 3], &spec).unwrap()),
            bits(&gpu.conv2d_backward_bias(&dy).unwrap()),
            bits(&gpu.max_pool2d_backward(&py, &pi, [19, 17], &pool).unwrap()),
            bits(
                &gpu.avg_pool2d_backward(&ay, [19, 17], &pool, false)
                    .unwrap(),
            ),
            bits(&py),
            gpu.download_indices(&pi).unwrap().iter().copied().collect(),
        ]
    };
    let first = run();
    assert_eq!(first, run(), "second run differs");
    assert_eq!(first, run(), "third run differs");
}

/// The fast path is deterministic: bitwise identical results on repeated runs (rayon's thread
/// scheduling must not change the summation order).
#[test]
fn fast_path_is_deterministic() {
    let mut rng = Rng::new(9);
    let x = rng.array4_f32([9, 4, 12, 12]);
    let spec = Conv2dSpec::new()
        .with_groups(2)
        .with_padding(Padding2d::symmetric(1, 1));
    let dy = rng.array4_f32([9, 6, 12, 12]);
    let first = gemm::conv2d_backward_weight(x.view(), dy.view(), [3, 3], &spec).unwrap();
    for _ in 0..5 {
        let again = gemm::conv2d_backward_weight(x.view(), dy.view(), [3, 3], &spec).unwrap();
        assert!(
            first
                .iter()
                .zip(again.iter())
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }
}
