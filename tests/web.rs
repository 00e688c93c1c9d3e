//! The ops in a browser: WebGPU from wasm32, in headless Chromium, run by `scripts/test_web.sh`
//! (`wasm-bindgen-test`). Every op on the quick suite's layers (`src/bin/wgconv-bench/suite.rs`,
//! batch 2) in f32, f16 and bf16 against the CPU reference compiled to wasm (f64 on the rounded
//! inputs, the native tolerances), max-pool indices exact, a recorded batch equal to the eager
//! ops, errors for bad shapes as on native, and the blocking forms refused. Native builds see
//! an empty file.
#![cfg(target_arch = "wasm32")]

use ndarray::{Array, ArrayBase, ArrayD, Data, Dimension, IxDyn};
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};
use wgconv::compare::compare_in;
use wgconv::{Conv2dSpec, DType, Error, Gpu, Padding2d, Pool2dSpec, reference};

wasm_bindgen_test_configure!(run_in_browser);

const N: usize = 2;

enum Kind {
    /// Input channels, output channels, kernel.
    Conv([usize; 4], usize, usize, Conv2dSpec),
    Max([usize; 4], Pool2dSpec),
    Avg([usize; 4], Pool2dSpec, bool),
}

/// The quick suite's layers (names and shapes as `wgconv-bench --suite quick`), at batch `N`.
fn quick() -> Vec<(&'static str, Kind)> {
    let same = |p| Conv2dSpec::new().with_padding(Padding2d::symmetric(p, p));
    let s2 = Pool2dSpec::new([3, 3])
        .with_stride([2, 2])
        .with_padding([1, 1]);
    vec![
        (
            "q_conv3x3s2",
            Kind::Conv([N, 32, 32, 32], 64, 3, same(1).with_stride([2, 2])),
        ),
        (
            "q_conv1x1",
            Kind::Conv([N, 64, 16, 16], 128, 1, Conv2dSpec::new()),
        ),
        (
            "q_dw3x3",
            Kind::Conv([N, 64, 32, 32], 64, 3, same(1).with_groups(64)),
        ),
        (
            "q_dil3x3d2",
            Kind::Conv([N, 32, 24, 24], 32, 3, same(2).with_dilation([2, 2])),
        ),
        (
            "q_conv4x4same",
            Kind::Conv(
                [N, 16, 16, 16],
                16,
                4,
                Conv2dSpec::new().with_padding(Padding2d::same([4, 4], [1, 1])),
            ),
        ),
        ("q_maxpool3x3s2", Kind::Max([N, 32, 32, 32], s2)),
        (
            "q_avgpool3x3s2",
            Kind::Avg([N, 32, 32, 32], s2.with_ceil_mode(true), false),
        ),
        (
            "q_avgpool_global8",
            Kind::Avg([N, 64, 8, 8], Pool2dSpec::new([8, 8]), true),
        ),
    ]
}

/// Values in [-1, 1) from a fixed seed, rounded to `dtype` (so the reference sees what the
/// GPU sees).
fn random(shape: &[usize], seed: u64, dtype: DType) -> ArrayD<f32> {
    let mut state = seed;
    Array::from_shape_fn(IxDyn(shape), |_| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        dtype.round(((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
    })
}

fn f64s<S: Data<Elem = f32>, D: Dimension>(a: &ArrayBase<S, D>) -> Array<f64, D> {
    a.mapv(f64::from)
}

async fn download(gpu: &Gpu, t: &wgconv::Tensor) -> ArrayD<f32> {
    gpu.download_async(t).await.expect("download_async")
}

/// Checks `got` against the f64 reference with the native rule for `dtype`; returns the
/// relative error.
fn check(what: &str, dtype: DType, got: &ArrayD<f32>, want: &ArrayD<f64>) -> f64 {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let got: Vec<f64> = got.iter().map(|&v| f64::from(v)).collect();
    let want: Vec<f64> = want.iter().copied().collect();
    let (c, ok) = compare_in(dtype, &got, &want);
    assert!(
        ok,
        "{what} ({dtype}): relative error {:.3e} at {}",
        c.rel_err(),
        c.worst
    );
    c.rel_err()
}

#[wasm_bindgen_test]
async fn every_op_of_the_quick_suite_matches_the_reference() {
    let gpu = Gpu::new_async().await.expect("a WebGPU adapter");
    let info = gpu.adapter_info();
    console_log!("adapter: {} ({:?})", info.name, info.backend);
    let mut checks = 0;
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for (seed, (name, kind)) in quick().into_iter().enumerate() {
            let seed = seed as u64 * 7 + 1;
            let mut worst = Vec::new();
            match kind {
                Kind::Conv(xs, k, kernel, spec) => {
                    let ws = [k, xs[1] / spec.groups, kernel, kernel];
                    let (x, w) = (random(&xs, seed, dtype), random(&ws, seed + 1, dtype));
                    let b = random(&[k], seed + 2, dtype);
                    let (x4, w4) = (
                        x.view().into_dimensionality().unwrap(),
                        w.view().into_dimensionality().unwrap(),
                    );
                    let b1 = b.view().into_dimensionality().unwrap();
                    let (xg, wg) = (
                        gpu.upload_as(&x, dtype).unwrap(),
                        gpu.upload_as(&w, dtype).unwrap(),
                    );
                    let bg = gpu.upload_as(&b, dtype).unwrap();
                    let y = gpu.conv2d_forward(&xg, &wg, Some(&bg), &spec).unwrap();
                    let want = reference::conv2d_forward(
                        f64s(&x4).view(),
                        f64s(&w4).view(),
                        Some(f64s(&b1).view()),
                        &spec,
                    )
                    .unwrap();
                    let got = download(&gpu, &y).await;
                    worst.push((
                        "forward",
                        check(&format!("{name} forward"), dtype, &got, &want.into_dyn()),
                    ));
                    let dy = random(got.shape(), seed + 3, dtype);
                    let dy4 = dy.view().into_dimensionality().unwrap();
                    let dyg = gpu.upload_as(&dy, dtype).unwrap();
                    let dx = gpu
                        .conv2d_backward_input(&dyg, &wg, [xs[2], xs[3]], &spec)
                        .unwrap();
                    let want = reference::conv2d_backward_input(
                        f64s(&dy4).view(),
                        f64s(&w4).view(),
                        [xs[2], xs[3]],
                        &spec,
                    )
                    .unwrap();
                    let got = download(&gpu, &dx).await;
                    worst.push((
                        "dx",
                        check(&format!("{name} dx"), dtype, &got, &want.into_dyn()),
                    ));
                    let dw = gpu
                        .conv2d_backward_weight(&xg, &dyg, [kernel, kernel], &spec)
                        .unwrap();
                    let want = reference::conv2d_backward_weight(
                        f64s(&x4).view(),
                        f64s(&dy4).view(),
                        [kernel, kernel],
                        &spec,
                    )
                    .unwrap();
                    let got = download(&gpu, &dw).await;
                    worst.push((
                        "dw",
                        check(&format!("{name} dw"), dtype, &got, &want.into_dyn()),
                    ));
                    let db = gpu.conv2d_backward_bias(&dyg).unwrap();
                    let want = reference::conv2d_backward_bias(f64s(&dy4).view());
                    let got = download(&gpu, &db).await;
                    worst.push((
                        "db",
                        check(&format!("{name} db"), dtype, &got, &want.into_dyn()),
                    ));
                }
                Kind::Max(xs, spec) => {
                    let x = random(&xs, seed, dtype);
                    let x4 = x.view().into_dimensionality().unwrap();
                    let xg = gpu.upload_as(&x, dtype).unwrap();
                    let (y, idx) = gpu.max_pool2d_forward(&xg, &spec).unwrap();
                    let (want, want_idx) =
                        reference::max_pool2d_forward(f64s(&x4).view(), &spec).unwrap();
                    let got = download(&gpu, &y).await;
                    worst.push((
                        "forward",
                        check(&format!("{name} forward"), dtype, &got, &want.into_dyn()),
                    ));
                    let got_idx = gpu.download_indices_async(&idx).await.unwrap();
                    assert_eq!(got_idx, want_idx.into_dyn(), "{name} ({dtype}): indices");
                    let dy = random(got.shape(), seed + 3, dtype);
                    let dy4 = dy.view().into_dimensionality().unwrap();
                    let dyg = gpu.upload_as(&dy, dtype).unwrap();
                    let dx = gpu
                        .max_pool2d_backward(&dyg, &idx, [xs[2], xs[3]], &spec)
                        .unwrap();
                    let want = reference::max_pool2d_backward(
                        f64s(&dy4).view(),
                        got_idx.view().into_dimensionality().unwrap(),
                        [xs[2], xs[3]],
                        &spec,
                    )
                    .unwrap();
                    let got = download(&gpu, &dx).await;
                    worst.push((
                        "backward",
                        check(&format!("{name} backward"), dtype, &got, &want.into_dyn()),
                    ));
                }
                Kind::Avg(xs, spec, include_pad) => {
                    let x = random(&xs, seed, dtype);
                    let x4 = x.view().into_dimensionality().unwrap();
                    let xg = gpu.upload_as(&x, dtype).unwrap();
                    let y = gpu.avg_pool2d_forward(&xg, &spec, include_pad).unwrap();
                    let want = reference::avg_pool2d_forward(f64s(&x4).view(), &spec, include_pad)
                        .unwrap();
                    let got = download(&gpu, &y).await;
                    worst.push((
                        "forward",
                        check(&format!("{name} forward"), dtype, &got, &want.into_dyn()),
                    ));
                    let dy = random(got.shape(), seed + 3, dtype);
                    let dy4 = dy.view().into_dimensionality().unwrap();
                    let dyg = gpu.upload_as(&dy, dtype).unwrap();
                    let dx = gpu
                        .avg_pool2d_backward(&dyg, [xs[2], xs[3]], &spec, include_pad)
                        .unwrap();
                    let want = reference::avg_pool2d_backward(
                        f64s(&dy4).view(),
                        [xs[2], xs[3]],
                        &spec,
                        include_pad,
                    )
                    .unwrap();
                    let got = download(&gpu, &dx).await;
                    worst.push((
                        "backward",
                        check(&format!("{name} backward"), dtype, &got, &want.into_dyn()),
                    ));
                }
            }
            checks += worst.len();
            let line: Vec<String> = worst
                .iter()
                .map(|(op, e)| format!("{op} {e:.1e}"))
                .collect();
            console_log!("{name} {dtype}: {}", line.join(", "));
        }
    }
    console_log!("browser checks: {checks}");
}

#[wasm_bindgen_test]
async fn a_recorded_batch_equals_the_eager_ops() {
    let gpu = Gpu::new_async().await.unwrap();
    let spec = Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1));
    let pool = Pool2dSpec::new([2, 2]);
    let x = gpu.upload(&random(&[2, 8, 12, 12], 5, DType::F32)).unwrap();
    let w = gpu.upload(&random(&[16, 8, 3, 3], 6, DType::F32)).unwrap();
    let y = gpu.conv2d_forward(&x, &w, None, &spec).unwrap();
    let (p, _) = gpu.max_pool2d_forward(&y, &pool).unwrap();
    let mut rec = gpu.recorder();
    let ry = rec.conv2d_forward(&x, &w, None, &spec).unwrap();
    let (rp, _) = rec.max_pool2d_forward(&ry, &pool).unwrap();
    rec.submit().unwrap();
    let bits = |a: ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(download(&gpu, &ry).await),
        bits(download(&gpu, &y).await)
    );
    assert_eq!(
        bits(download(&gpu, &rp).await),
        bits(download(&gpu, &p).await)
    );
}

#[wasm_bindgen_test]
async fn bad_shapes_are_errors_and_blocking_forms_are_refused() {
    let gpu = Gpu::new_async().await.unwrap();
    let x = gpu.upload(&random(&[1, 3, 8, 8], 9, DType::F32)).unwrap();
    let w = gpu.upload(&random(&[4, 2, 3, 3], 10, DType::F32)).unwrap();
    let e = gpu
        .conv2d_forward(&x, &w, None, &Conv2dSpec::new())
        .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch(_)), "{e}");
    assert!(
        e.to_string().contains('3') && e.to_string().contains('2'),
        "{e}"
    );
    let e = gpu
        .max_pool2d_forward(&x, &Pool2dSpec::new([9, 9]))
        .unwrap_err();
    assert!(e.to_string().contains('9'), "{e}");
    // No blocking waits in a page: clear errors, never a hang.
    let e = gpu.download(&x).unwrap_err();
    assert!(e.to_string().contains("download_async"), "{e}");
    let e = gpu.synchronize().unwrap_err();
    assert!(e.to_string().contains("browser"), "{e}");
    let e = Gpu::new().err().expect("Gpu::new refuses to block");
    assert!(e.to_string().contains("new_async"), "{e}");
    // The tensor is still readable the asynchronous way.
    assert_eq!(download(&gpu, &x).await.shape(), &[1, 3, 8, 8]);
}
