//! The ops in a browser: WebGPU from wasm32, in headless Chromium, run by `scripts/test_web.sh`
//! (`wasm-bindgen-test`). Every op on the quick suite's layers (`src/bin/wgconv-bench/suite.rs`,
//! batch 2) in f32, f16 and bf16 against the CPU reference compiled to wasm (f64 on the rounded
//! inputs, the native tolerances), max-pool indices exact, a recorded batch equal to the eager
//! ops, errors for bad shapes as on native, and the blocking forms refused. Native builds see
//! an empty file.
#![cfg(target_arch = "wasm32")]

use ndarray::{Array, ArrayD, ArrayView4, Ix1, IxDyn};
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};
use wgconv::compare::compare_in;
use wgconv::{Conv2dSpec, DType, Error, Gpu, Padding2d, Pool2dSpec, Tensor, reference};

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

async fn download(gpu: &Gpu, t: &Tensor) -> ArrayD<f32> {
    gpu.download_async(t).await.expect("download_async")
}

fn v4(a: &ArrayD<f64>) -> ArrayView4<'_, f64> {
    a.view().into_dimensionality().expect("4-D")
}

/// One layer's ops in one dtype: random inputs on both sides, each result checked against the
/// f64 reference with the native rule for the dtype ([`compare_in`]), the errors kept.
struct Layer<'g> {
    gpu: &'g Gpu,
    dtype: DType,
    name: &'static str,
    seed: u64,
    errors: Vec<(&'static str, f64)>,
}

impl Layer<'_> {
    /// A random tensor rounded to the dtype: its f64 copy (the reference's input) and its upload.
    fn input(&mut self, shape: &[usize]) -> (ArrayD<f64>, Tensor) {
        self.seed += 1;
        let mut state = self.seed;
        let host = Array::from_shape_fn(IxDyn(shape), |_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.dtype
                .round(((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        });
        let t = self.gpu.upload_as(&host, self.dtype).expect("upload");
        (host.mapv(f64::from), t)
    }

    /// Downloads `got` and checks it against `want`; returns its shape.
    async fn check(&mut self, op: &'static str, got: &Tensor, want: ArrayD<f64>) -> Vec<usize> {
        let got = download(self.gpu, got).await;
        assert_eq!(got.shape(), want.shape(), "{} {op}: shape", self.name);
        let got: Vec<f64> = got.iter().map(|&v| f64::from(v)).collect();
        let (c, ok) = compare_in(self.dtype, &got, &want.iter().copied().collect::<Vec<_>>());
        let (name, dtype, e) = (self.name, self.dtype, c.rel_err());
        assert!(
            ok,
            "{name} {op} ({dtype}): relative error {e:.3e} at {}",
            c.worst
        );
        self.errors.push((op, e));
        want.shape().to_vec()
    }
}

#[wasm_bindgen_test]
async fn every_op_of_the_quick_suite_matches_the_reference() {
    let gpu = Gpu::new_async().await.expect("a WebGPU adapter");
    let info = gpu.adapter_info();
    console_log!("adapter: {:?} ({:?})", info.name, info.backend);
    let mut checks = 0;
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for (seed, (name, kind)) in quick().into_iter().enumerate() {
            let seed = seed as u64 * 16;
            let mut l = Layer {
                gpu: &gpu,
                dtype,
                name,
                seed,
                errors: Vec::new(),
            };
            match kind {
                Kind::Conv(xs, k, kernel, spec) => {
                    let ws = [k, xs[1] / spec.groups, kernel, kernel];
                    let (hw, khw) = ([xs[2], xs[3]], [kernel, kernel]);
                    let ((x, xg), (w, wg), (b, bg)) = (l.input(&xs), l.input(&ws), l.input(&[k]));
                    let b = b.into_dimensionality::<Ix1>().expect("1-D");
                    let y = gpu.conv2d_forward(&xg, &wg, Some(&bg), &spec).unwrap();
                    let want = reference::conv2d_forward(v4(&x), v4(&w), Some(b.view()), &spec);
                    let ys = l.check("forward", &y, want.unwrap().into_dyn()).await;
                    let (dy, dyg) = l.input(&ys);
                    let dx = gpu.conv2d_backward_input(&dyg, &wg, hw, &spec).unwrap();
                    let want = reference::conv2d_backward_input(v4(&dy), v4(&w), hw, &spec);
                    l.check("dx", &dx, want.unwrap().into_dyn()).await;
                    let dw = gpu.conv2d_backward_weight(&xg, &dyg, khw, &spec).unwrap();
                    let want = reference::conv2d_backward_weight(v4(&x), v4(&dy), khw, &spec);
                    l.check("dw", &dw, want.unwrap().into_dyn()).await;
                    let db = gpu.conv2d_backward_bias(&dyg).unwrap();
                    let want = reference::conv2d_backward_bias(v4(&dy));
                    l.check("db", &db, want.into_dyn()).await;
                }
                Kind::Max(xs, spec) => {
                    let hw = [xs[2], xs[3]];
                    let (x, xg) = l.input(&xs);
                    let (y, idx) = gpu.max_pool2d_forward(&xg, &spec).unwrap();
                    let (want, want_idx) = reference::max_pool2d_forward(v4(&x), &spec).unwrap();
                    let ys = l.check("forward", &y, want.into_dyn()).await;
                    let got_idx = gpu.download_indices_async(&idx).await.unwrap();
                    assert_eq!(
                        got_idx,
                        want_idx.clone().into_dyn(),
                        "{name} ({dtype}): indices"
                    );
                    let (dy, dyg) = l.input(&ys);
                    let dx = gpu.max_pool2d_backward(&dyg, &idx, hw, &spec).unwrap();
                    let want = reference::max_pool2d_backward(v4(&dy), want_idx.view(), hw, &spec);
                    l.check("backward", &dx, want.unwrap().into_dyn()).await;
                }
                Kind::Avg(xs, spec, pad) => {
                    let hw = [xs[2], xs[3]];
                    let (x, xg) = l.input(&xs);
                    let y = gpu.avg_pool2d_forward(&xg, &spec, pad).unwrap();
                    let want = reference::avg_pool2d_forward(v4(&x), &spec, pad);
                    let ys = l.check("forward", &y, want.unwrap().into_dyn()).await;
                    let (dy, dyg) = l.input(&ys);
                    let dx = gpu.avg_pool2d_backward(&dyg, hw, &spec, pad).unwrap();
                    let want = reference::avg_pool2d_backward(v4(&dy), hw, &spec, pad);
                    l.check("backward", &dx, want.unwrap().into_dyn()).await;
                }
            }
            checks += l.errors.len();
            let line: Vec<String> = l
                .errors
                .iter()
                .map(|(op, e)| format!("{op} {e:.1e}"))
                .collect();
            console_log!("{name} {dtype}: {}", line.join(", "));
        }
    }
    console_log!("browser checks: {checks}");
}

/// An f32 upload of values from a fixed seed.
fn upload(gpu: &Gpu, shape: &[usize], seed: u64) -> Tensor {
    let mut l = Layer {
        gpu,
        dtype: DType::F32,
        name: "",
        seed,
        errors: Vec::new(),
    };
    l.input(shape).1
}

#[wasm_bindgen_test]
async fn a_recorded_batch_equals_the_eager_ops() {
    let gpu = Gpu::new_async().await.unwrap();
    let spec = Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1));
    let pool = Pool2dSpec::new([2, 2]);
    let x = upload(&gpu, &[2, 8, 12, 12], 5);
    let w = upload(&gpu, &[16, 8, 3, 3], 6);
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
    let x = upload(&gpu, &[1, 3, 8, 8], 9);
    let w = upload(&gpu, &[4, 2, 3, 3], 10);
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
