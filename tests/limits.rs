//! Sizes at the edges, on the GPU: empty batches, bindings capped so that every op runs in
//! chunks, a tensor past the common 128 MiB binding limit, dispatches folded into 2-D, requests
//! past `max_buffer_size` refused before wgpu is asked, and pool windows at the edge of the
//! kernels' 32-bit arithmetic. See docs/RELIABILITY.md.

mod common;

use common::Rng;
use common::*;
use ndarray::{Array1, Array4, Ix4};
use wgconv::compare::{GPU_TOLERANCE, compare};
use wgconv::reference;
use wgconv::{Conv2dSpec, Error, Gpu, Padding2d, Pool2dSpec};

#[test]
fn empty_batch_gives_empty_results() {
    let gpu = gpu();
    let spec = Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1));
    let x = gpu.upload(&Array4::<f32>::zeros((0, 3, 5, 5))).unwrap();
    let w = gpu.upload(&Array4::<f32>::ones((4, 3, 3, 3))).unwrap();
    let dy = gpu.upload(&Array4::<f32>::zeros((0, 4, 5, 5))).unwrap();
    assert_eq!(
        gpu.conv2d_forward(&x, &w, None, &spec).unwrap().shape(),
        &[0, 4, 5, 5]
    );
    assert_eq!(
        gpu.conv2d_backward_input(&dy, &w, [5, 5], &spec)
            .unwrap()
            .shape(),
        &[0, 3, 5, 5]
    );
    let dw = gpu.conv2d_backward_weight(&x, &dy, [3, 3], &spec).unwrap();
    assert!(
        gpu.download(&dw).unwrap().iter().all(|&v| v == 0.0),
        "dW over no samples is zero"
    );
    let db = gpu.conv2d_backward_bias(&dy).unwrap();
    assert!(gpu.download(&db).unwrap().iter().all(|&v| v == 0.0));
    let pool = Pool2dSpec::new([2, 2]);
    let (y, i) = gpu.max_pool2d_forward(&x, &pool).unwrap();
    assert_eq!(y.shape(), &[0, 3, 2, 2]);
    assert_eq!(
        gpu.max_pool2d_backward(&y, &i, [5, 5], &pool)
            .unwrap()
            .shape(),
        &[0, 3, 5, 5]
    );
    let y = gpu.avg_pool2d_forward(&x, &pool, true).unwrap();
    assert_eq!(
        gpu.avg_pool2d_backward(&y, [5, 5], &pool, true)
            .unwrap()
            .shape(),
        &[0, 3, 5, 5]
    );
    assert_eq!(gpu.download(&y).unwrap().shape(), &[0, 3, 2, 2]);
}

/// With bindings capped at 4 KiB, every op splits its tensors into many aligned windows; the
/// results must not change.
#[test]
fn chunked_bindings_give_the_same_results() {
    let small = Gpu::builder()
        .max_binding_bytes(4096)
        .poison_outputs(true)
        .build()
        .expect("adapter (see the gpu() helper for the drivers)");
    let mut rng = Rng::new(5);
    // Samples of 3*7*9 = 189 elements: windows start off the 256-byte alignment.
    let spec = Conv2dSpec::new()
        .with_padding(Padding2d::symmetric(1, 0))
        .with_stride([1, 2]);
    let b = Array1::from_shape_fn(4, |_| rng.unit() as f32);
    check_conv(
        &small,
        "chunked conv",
        &rng.array4_f32([23, 3, 7, 9]),
        &rng.array4_f32([4, 3, 3, 3]),
        Some(&b),
        &spec,
    );
    let pool = Pool2dSpec::new([2, 3])
        .with_stride([1, 2])
        .with_padding([1, 1]);
    let x = rng.array4_f32([9, 13, 5, 7]);
    check_max_pool(&small, "chunked max-pool", &x, &pool);
    check_avg_pool(&small, "chunked avg-pool", &x, &pool, false);
    // A single sample larger than a binding is split into row bands (tests/conv_bands.rs); a
    // row of all its channels past a binding is refused with the sizes named.
    let w = small.upload(&Array4::<f32>::ones((1, 2, 1, 1))).unwrap();
    let big = small.upload(&Array4::<f32>::ones((1, 2, 32, 32))).unwrap();
    let y = small
        .conv2d_forward(&big, &w, None, &Conv2dSpec::new())
        .unwrap();
    assert!(small.download(&y).unwrap().iter().all(|&v| v == 2.0));
    let wide = small
        .upload(&Array4::<f32>::zeros((1, 2, 2, 1024)))
        .unwrap();
    let e = small
        .conv2d_forward(&wide, &w, None, &Conv2dSpec::new())
        .unwrap_err();
    assert!(
        matches!(e, Error::DeviceLimit(_))
            && e.to_string().contains("8192 bytes")
            && e.to_string().contains("not by channels"),
        "{e}"
    );
}

/// A 132 MiB input (past the common 128 MiB binding limit) and dispatches of more than 65,535
/// workgroups along one dimension.
#[test]
fn large_tensor_and_folded_dispatch() {
    let gpu = gpu();
    let (n, h, w) = (33, 1024, 1024);
    let mut rng = Rng::new(3);
    let x = Array4::from_shape_fn((n, 1, h, w), |(a, _, c, d)| {
        ((a * 31 + c * 7 + d * 3) % 101) as f32 / 50.0 - 1.0
    });
    assert!(x.len() * 4 > 128 << 20);
    let xt = gpu.upload(&x).unwrap();
    // 1x1 conv: 33M outputs, 540k workgroups of 64: folded into 2-D.
    assert!(x.len() / 64 > 65_535);
    let wv = Array4::from_shape_fn((1, 1, 1, 1), |_| 0.5f32);
    let y = gpu
        .conv2d_forward(&xt, &gpu.upload(&wv).unwrap(), None, &Conv2dSpec::new())
        .unwrap();
    let yh = gpu.download(&y).unwrap();
    assert!(
        yh.iter().zip(x.iter()).all(|(a, b)| *a == 0.5 * b),
        "1x1 conv over 132 MiB"
    );
    // Pooling over the same tensor, chunked by planes, against the reference.
    let pool = Pool2dSpec::new([2, 2]);
    let (py, _) = gpu.max_pool2d_forward(&xt, &pool).unwrap();
    let (want, _) = reference::max_pool2d_forward(x.view(), &pool).unwrap();
    assert_eq!(gpu.download(&py).unwrap(), want.into_dyn());
    // The direct dW kernel runs one workgroup per weight element: 128 * 64 * 9 = 73,728 of
    // them, folded into 2-D.
    let direct = Gpu::builder()
        .algorithm(wgconv::Algorithm::Direct)
        .poison_outputs(true)
        .build()
        .expect("adapter");
    let xs = rng.array4_f32([1, 64, 8, 8]);
    let dys = rng.array4_f32([1, 128, 8, 8]);
    let spec = Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1));
    let dw = direct
        .conv2d_backward_weight(
            &direct.upload(&xs).unwrap(),
            &direct.upload(&dys).unwrap(),
            [3, 3],
            &spec,
        )
        .unwrap();
    assert!(dw.len() > 65_535);
    let dw_ref =
        reference::conv2d_backward_weight(f64s(&xs).view(), f64s(&dys).view(), [3, 3], &spec)
            .unwrap();
    close(&dl(&direct, &dw), &dw_ref, "dW with many workgroups");
}

/// Requests past the device's `max_buffer_size` are refused with `Err` before wgpu is asked for
/// a buffer (the pool's allocation count does not move), and the Gpu carries on.
#[test]
fn requests_past_max_buffer_size_are_refused_before_wgpu() {
    let gpu = fresh(Gpu::builder());
    let max = gpu.limits().max_buffer_size;
    let allocs = gpu.pool_stats().allocations;
    let past = usize::try_from(max / 4 + 1).unwrap();
    let is_limit = |e: &Error| matches!(e, Error::DeviceLimit(_) | Error::Overflow(_));

    // Uploads of broadcast views: huge shapes, one element of host memory, never materialised.
    let one = Array1::<f32>::ones(1);
    let e = gpu.upload(&one.broadcast(past).unwrap()).unwrap_err();
    assert!(matches!(e, Error::DeviceLimit(_)), "{e}");
    assert!(e.to_string().contains("max_buffer_size"), "{e}");
    let e = gpu
        .upload(&one.broadcast((1 << 31, 1 << 31)).unwrap())
        .unwrap_err();
    assert!(matches!(e, Error::Overflow(_)), "{e}");
    let ones = Array1::<u32>::ones(1);
    let e = gpu
        .upload_indices(&ones.broadcast(past).unwrap())
        .unwrap_err();
    assert!(matches!(e, Error::DeviceLimit(_)), "{e}");

    // Op outputs past the limit from tiny inputs and a hostile padding or size.
    let side = ((max / 4) as f64).sqrt() as usize + 2;
    let pad = side / 2;
    let one4 = gpu.upload(&Array4::<f32>::ones((1, 1, 1, 1))).unwrap();
    let spec = Conv2dSpec::new().with_padding(Padding2d::symmetric(pad, pad));
    let e = gpu.conv2d_forward(&one4, &one4, None, &spec).unwrap_err();
    assert!(is_limit(&e), "{e}");
    let e = gpu
        .conv2d_backward_weight(&one4, &one4, [2 * pad + 1, 2 * pad + 1], &spec)
        .unwrap_err();
    assert!(is_limit(&e), "{e}");
    let big = Conv2dSpec::new().with_stride([side, side]);
    let e = gpu
        .conv2d_backward_input(&one4, &one4, [side, side], &big)
        .unwrap_err();
    assert!(is_limit(&e), "{e}");
    let pool = Pool2dSpec::new([side, side]);
    let e = gpu
        .avg_pool2d_backward(&one4, [side, side], &pool, true)
        .unwrap_err();
    assert!(is_limit(&e), "{e}");
    let idx = gpu
        .upload_indices(&Array4::<u32>::zeros((1, 1, 1, 1)))
        .unwrap();
    let e = gpu
        .max_pool2d_backward(&one4, &idx, [side, side], &pool)
        .unwrap_err();
    assert!(is_limit(&e), "{e}");
    // The two 1-element uploads took buffers; nothing else did.
    assert_eq!(gpu.pool_stats().allocations, allocs + 2);
    let y = gpu
        .conv2d_forward(&one4, &one4, None, &Conv2dSpec::new())
        .unwrap();
    assert_eq!(
        gpu.download(&y)
            .unwrap()
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        [1.0]
    );
}

/// Windows at the edge of the kernels' 32-bit arithmetic: either refused as a device limit or
/// computed exactly as the reference does.
#[test]
fn pool_windows_at_the_edge_of_32_bit_arithmetic() {
    let gpu = gpu();
    let cases: [(Pool2dSpec, [usize; 4]); 2] = [
        // A 65536 x 65536 avg-pool window: its divisor is 2^32.
        (
            Pool2dSpec::new([1 << 16, 1 << 16]).with_padding([1 << 15, 1 << 15]),
            [1, 1, 1, 1],
        ),
        // Ceil mode, second window starting at row 3 and reaching past i32::MAX.
        (
            Pool2dSpec::new([(1 << 31) - 3, 1])
                .with_padding([(1 << 30) - 3, 0])
                .with_stride([1 << 30, 1])
                .with_ceil_mode(true),
            [1, 1, 4, 1],
        ),
    ];
    let mut failures = Vec::new();
    for (spec, xs) in cases {
        let x = Array4::from_shape_fn(xs, |(_, _, h, w)| (h * 3 + w + 1) as f64);
        let xt = gpu.upload(&f32s(&x)).unwrap();
        for cip in [true, false] {
            let what = format!("{spec:?} cip {cip}");
            let want = reference::avg_pool2d_forward(x.view(), &spec, cip).unwrap();
            match gpu.avg_pool2d_forward(&xt, &spec, cip) {
                Ok(y) => {
                    let got = dl4(gpu, &y);
                    let c = compare(got.iter().copied(), want.iter().copied());
                    if !c.passes(GPU_TOLERANCE) {
                        failures.push(format!("avg {what}: got {got:?}, want {want:?}"));
                    }
                }
                Err(Error::DeviceLimit(_)) => {}
                Err(e) => failures.push(format!("avg {what}: {e}")),
            }
        }
        let (want, want_i) = reference::max_pool2d_forward(x.view(), &spec).unwrap();
        match gpu.max_pool2d_forward(&xt, &spec) {
            Ok((y, i)) => {
                let got = dl4(gpu, &y);
                let i = gpu.download_indices(&i).unwrap();
                if got != want || i.into_dimensionality::<Ix4>().unwrap() != want_i {
                    failures.push(format!("max {spec:?}: got {got:?}, want {want:?}"));
                }
            }
            Err(Error::DeviceLimit(_)) => {}
            Err(e) => failures.push(format!("max {spec:?}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
