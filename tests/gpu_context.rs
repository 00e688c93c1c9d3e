//! The `Gpu` itself: the error when no adapter matches, checked mode (every op also run on the
//! reference), and the buffer pool and pipeline cache in steady state.

mod common;

use common::Rng;
use common::*;
use ndarray::{Array1, Array4};
use wgconv::{Conv2dSpec, Error, Gpu, Padding2d, Pool2dSpec};

#[test]
fn checked_mode_passes_good_results_and_catches_bad_ones() {
    let checked = Gpu::builder().checked(true).build().expect("adapter");
    assert!(checked.is_checked());
    let mut rng = Rng::new(99);
    let b = Array1::from_shape_fn(4, |_| rng.unit() as f32);
    let spec = Conv2dSpec::new()
        .with_stride([2, 1])
        .with_padding(Padding2d::symmetric(1, 1));
    check_conv(
        &checked,
        "checked",
        &rng.array4_f32([2, 2, 7, 6]),
        &rng.array4_f32([4, 2, 3, 3]),
        Some(&b),
        &spec,
    );
    check_max_pool(
        &checked,
        "checked",
        &rng.array4_f32([1, 2, 6, 6]),
        &Pool2dSpec::new([2, 2]),
    );
    // A wrong result is caught: a batch encoded into the caller's encoder, whose own pass then
    // clears the result before it is submitted; the check at the next synchronize fails.
    let x = checked.upload(&Array4::<f32>::ones((1, 1, 4, 4))).unwrap();
    let pool = Pool2dSpec::new([2, 2]);
    let mut encoder = checked.device().create_command_encoder(&Default::default());
    let mut rec = checked.recorder();
    let y = rec.avg_pool2d_forward(&x, &pool, true).unwrap();
    rec.encode(&mut encoder).unwrap();
    encoder.clear_buffer(y.buffer().unwrap(), y.offset(), Some(4 * y.len() as u64));
    checked.queue().submit([encoder.finish()]);
    let e = checked.synchronize().unwrap_err();
    assert!(
        matches!(&e, Error::CheckFailed { op, .. } if op == "avg_pool2d_forward"),
        "{e}"
    );
}

#[test]
fn missing_adapter_error_names_the_driver() {
    // No Metal adapter exists on Linux (and no DX12 elsewhere but Windows).
    let backend = if cfg!(target_os = "macos") {
        wgpu::Backends::DX12
    } else {
        wgpu::Backends::METAL
    };
    let e = Gpu::builder()
        .backends(backend)
        .build()
        .unwrap_err()
        .to_string();
    assert!(e.contains("mesa-vulkan-drivers"), "{e}");
    let e = Gpu::builder()
        .adapter_name("no-such-adapter-xyz")
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no-such-adapter-xyz") && e.contains("available"),
        "{e}"
    );
}

#[test]
fn repeated_calls_reuse_pooled_buffers() {
    let gpu = Gpu::new().expect("adapter");
    let x = gpu.upload(&Array4::<f32>::ones((2, 3, 16, 16))).unwrap();
    let w = gpu.upload(&Array4::<f32>::ones((4, 3, 3, 3))).unwrap();
    let spec = Conv2dSpec::new();
    for _ in 0..3 {
        drop(gpu.conv2d_forward(&x, &w, None, &spec).unwrap());
    }
    let before = gpu.pool_stats().allocations;
    for _ in 0..20 {
        drop(gpu.conv2d_forward(&x, &w, None, &spec).unwrap());
    }
    assert_eq!(
        gpu.pool_stats().allocations,
        before,
        "steady state allocates nothing"
    );
    assert_eq!(gpu.cached_pipelines(), 1);
}
