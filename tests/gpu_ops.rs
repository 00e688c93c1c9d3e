//! The GPU ops against the reference and PyTorch: every fixture, named edge cases, proptest-drawn
//! shapes and options, chunked bindings, large tensors and folded dispatches, determinism, and
//! bad inputs. Runs on whatever adapter `WGPU_BACKEND` selects (CI: lavapipe, then GL llvmpipe).

mod common;

use common::Rng;
use common::*;
use ndarray::{Array1, Array4, Ix1, Ix4};
use proptest::prelude::*;
use wgconv::compare::{GPU_TOLERANCE, compare};
use wgconv::reference;
use wgconv::{Conv2dSpec, Error, Gpu, Padding2d, Pool2dSpec, Tensor};

fn dl(gpu: &Gpu, t: &Tensor) -> Array4<f64> {
    f64s(
        &gpu.download(t)
            .unwrap()
            .into_dimensionality::<Ix4>()
            .unwrap(),
    )
}

#[track_caller]
fn close(got: &Array4<f64>, want: &Array4<f64>, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let c = compare(got.iter().copied(), want.iter().copied());
    assert!(
        c.passes(GPU_TOLERANCE),
        "{what}: max |gpu - ref| = {:e} (scale {}) at flat {}",
        c.max_abs_err,
        c.scale,
        c.worst
    );
}

/// All four conv ops on the GPU against the reference, run in f64 on the same f32 inputs.
fn check_conv(
    gpu: &Gpu,
    what: &str,
    x: &Array4<f32>,
    w: &Array4<f32>,
    b: Option<&Array1<f32>>,
    spec: &Conv2dSpec,
) {
    let (xd, wd) = (f64s(x), f64s(w));
    let bd = b.map(f64s);
    let y_ref =
        reference::conv2d_forward(xd.view(), wd.view(), bd.as_ref().map(|b| b.view()), spec)
            .unwrap();
    let mut rng = Rng::new(y_ref.len() as u64);
    let dy = rng.array4_f32(y_ref.dim().into());
    let dyd = f64s(&dy);
    let hw = [x.shape()[2], x.shape()[3]];
    let khw = [w.shape()[2], w.shape()[3]];

    let (xt, wt, dyt) = (
        gpu.upload(x).unwrap(),
        gpu.upload(w).unwrap(),
        gpu.upload(&dy).unwrap(),
    );
    let bt = b.map(|b| gpu.upload(b).unwrap());
    let y = gpu.conv2d_forward(&xt, &wt, bt.as_ref(), spec).unwrap();
    close(&dl(gpu, &y), &y_ref, &format!("{what}: forward"));
    let dx = gpu.conv2d_backward_input(&dyt, &wt, hw, spec).unwrap();
    let dx_ref = reference::conv2d_backward_input(dyd.view(), wd.view(), hw, spec).unwrap();
    close(&dl(gpu, &dx), &dx_ref, &format!("{what}: dx"));
    let dw = gpu.conv2d_backward_weight(&xt, &dyt, khw, spec).unwrap();
    let dw_ref = reference::conv2d_backward_weight(xd.view(), dyd.view(), khw, spec).unwrap();
    close(&dl(gpu, &dw), &dw_ref, &format!("{what}: dw"));
    let db = gpu.conv2d_backward_bias(&dyt).unwrap();
    let db_ref = reference::conv2d_backward_bias(dyd.view());
    let got = f64s(
        &gpu.download(&db)
            .unwrap()
            .into_dimensionality::<Ix1>()
            .unwrap(),
    );
    let c = compare(got.iter().copied(), db_ref.iter().copied());
    assert!(
        c.passes(GPU_TOLERANCE),
        "{what}: db error {:e}",
        c.max_abs_err
    );
}

fn check_max_pool(gpu: &Gpu, what: &str, x: &Array4<f32>, spec: &Pool2dSpec) {
    let xd = f64s(x);
    let (y_ref, i_ref) = reference::max_pool2d_forward(xd.view(), spec).unwrap();
    let xt = gpu.upload(x).unwrap();
    let (y, i) = gpu.max_pool2d_forward(&xt, spec).unwrap();
    close(&dl(gpu, &y), &y_ref, &format!("{what}: max-pool y"));
    let i_got = gpu
        .download_indices(&i)
        .unwrap()
        .into_dimensionality::<Ix4>()
        .unwrap();
    assert_eq!(i_got, i_ref, "{what}: max-pool indices");
    let mut rng = Rng::new(7);
    let dy = rng.array4_f32(y_ref.dim().into());
    let hw = [x.shape()[2], x.shape()[3]];
    let dx = gpu
        .max_pool2d_backward(&gpu.upload(&dy).unwrap(), &i, hw, spec)
        .unwrap();
    let dx_ref = reference::max_pool2d_backward(f64s(&dy).view(), i_ref.view(), hw, spec).unwrap();
    close(&dl(gpu, &dx), &dx_ref, &format!("{what}: max-pool dx"));
}

fn check_avg_pool(gpu: &Gpu, what: &str, x: &Array4<f32>, spec: &Pool2dSpec, cip: bool) {
    let y_ref = reference::avg_pool2d_forward(f64s(x).view(), spec, cip).unwrap();
    let y = gpu
        .avg_pool2d_forward(&gpu.upload(x).unwrap(), spec, cip)
        .unwrap();
    close(&dl(gpu, &y), &y_ref, &format!("{what}: avg-pool y"));
    let mut rng = Rng::new(8);
    let dy = rng.array4_f32(y_ref.dim().into());
    let hw = [x.shape()[2], x.shape()[3]];
    let dx = gpu
        .avg_pool2d_backward(&gpu.upload(&dy).unwrap(), hw, spec, cip)
        .unwrap();
    let dx_ref = reference::avg_pool2d_backward(f64s(&dy).view(), hw, spec, cip).unwrap();
    close(&dl(gpu, &dx), &dx_ref, &format!("{what}: avg-pool dx"));
}

#[test]
fn conv_fixtures_match_pytorch() {
    let gpu = gpu();
    for case in fixture_cases("conv2d") {
        let name = case["name"].as_str().unwrap();
        let spec = conv_spec(&case);
        let x = f32s(&tensor4(&case["x"]));
        let w = f32s(&tensor4(&case["w"]));
        let dy = f32s(&tensor4(&case["dy"]));
        let b: Option<Array1<f32>> = (!case["bias"].is_null())
            .then(|| f32s(&tensor(&case["bias"])).into_dimensionality().unwrap());
        let (xt, wt, dyt) = (
            gpu.upload(&x).unwrap(),
            gpu.upload(&w).unwrap(),
            gpu.upload(&dy).unwrap(),
        );
        let bt = b.as_ref().map(|b| gpu.upload(b).unwrap());
        let hw = [x.shape()[2], x.shape()[3]];
        let khw = [w.shape()[2], w.shape()[3]];
        let y = gpu.conv2d_forward(&xt, &wt, bt.as_ref(), &spec).unwrap();
        close(&dl(gpu, &y), &tensor4(&case["y"]), &format!("{name}: y"));
        let dx = gpu.conv2d_backward_input(&dyt, &wt, hw, &spec).unwrap();
        close(&dl(gpu, &dx), &tensor4(&case["dx"]), &format!("{name}: dx"));
        let dw = gpu.conv2d_backward_weight(&xt, &dyt, khw, &spec).unwrap();
        close(&dl(gpu, &dw), &tensor4(&case["dw"]), &format!("{name}: dw"));
        if !case["db"].is_null() {
            let db = gpu
                .download(&gpu.conv2d_backward_bias(&dyt).unwrap())
                .unwrap();
            let want = tensor(&case["db"]);
            let c = compare(db.iter().map(|&v| f64::from(v)), want.iter().copied());
            assert!(c.passes(GPU_TOLERANCE), "{name}: db");
        }
    }
}

#[test]
fn max_pool_fixtures_match_pytorch() {
    let gpu = gpu();
    for case in fixture_cases("max_pool2d") {
        let name = case["name"].as_str().unwrap();
        let spec = pool_spec(&case);
        let x = f32s(&tensor4(&case["x"]));
        let (y, i) = gpu
            .max_pool2d_forward(&gpu.upload(&x).unwrap(), &spec)
            .unwrap();
        close(&dl(gpu, &y), &tensor4(&case["y"]), &format!("{name}: y"));
        let got = gpu
            .download_indices(&i)
            .unwrap()
            .into_dimensionality::<Ix4>()
            .unwrap();
        assert_eq!(got, indices4(&case["indices"]), "{name}: indices");
        let dy = gpu.upload(&f32s(&tensor4(&case["dy"]))).unwrap();
        let dx = gpu
            .max_pool2d_backward(&dy, &i, [x.shape()[2], x.shape()[3]], &spec)
            .unwrap();
        close(&dl(gpu, &dx), &tensor4(&case["dx"]), &format!("{name}: dx"));
    }
}

#[test]
fn avg_pool_fixtures_match_pytorch() {
    let gpu = gpu();
    for case in fixture_cases("avg_pool2d") {
        let name = case["name"].as_str().unwrap();
        let spec = pool_spec(&case);
        let cip = case["count_include_pad"].as_bool().unwrap();
        let x = f32s(&tensor4(&case["x"]));
        let y = gpu
            .avg_pool2d_forward(&gpu.upload(&x).unwrap(), &spec, cip)
            .unwrap();
        close(&dl(gpu, &y), &tensor4(&case["y"]), &format!("{name}: y"));
        let dy = gpu.upload(&f32s(&tensor4(&case["dy"]))).unwrap();
        let dx = gpu
            .avg_pool2d_backward(&dy, [x.shape()[2], x.shape()[3]], &spec, cip)
            .unwrap();
        close(&dl(gpu, &dx), &tensor4(&case["dx"]), &format!("{name}: dx"));
    }
}

#[test]
fn named_edge_cases() {
    let gpu = gpu();
    let mut rng = Rng::new(31);
    let cases: Vec<(&str, [usize; 4], [usize; 4], Conv2dSpec)> = vec![
        (
            "resnet-like 3x3 s2 with remainder",
            [2, 8, 15, 14],
            [8, 8, 3, 3],
            Conv2dSpec::new()
                .with_stride([2, 2])
                .with_padding(Padding2d::symmetric(1, 1)),
        ),
        (
            "depthwise x3 multiplier, dilation 2",
            [1, 4, 11, 9],
            [12, 1, 3, 3],
            Conv2dSpec::new()
                .with_groups(4)
                .with_dilation([2, 2])
                .with_padding(Padding2d::same([3, 3], [2, 2])),
        ),
        (
            // Strips of 8 rows with a remainder, stride phases that start below zero.
            "depthwise x2 multiplier, stride 3x2, asymmetric padding, 21 rows",
            [2, 3, 21, 10],
            [6, 1, 5, 3],
            Conv2dSpec::new()
                .with_groups(3)
                .with_stride([3, 2])
                .with_padding(Padding2d {
                    top: 4,
                    bottom: 1,
                    left: 0,
                    right: 2,
                }),
        ),
        (
            // Found on GL: taps reach dy rows above the input (negative quotients), where
            // WGSL's % and / of negative integers are not GLSL's.
            "one channel, stride 3, taps above the input",
            [1, 1, 1, 2],
            [1, 1, 4, 1],
            Conv2dSpec::new()
                .with_stride([3, 1])
                .with_padding(Padding2d {
                    top: 1,
                    bottom: 2,
                    left: 0,
                    right: 0,
                }),
        ),
        (
            "kernel 5x7 larger than 3x4 input",
            [2, 3, 3, 4],
            [2, 3, 5, 7],
            Conv2dSpec::new().with_padding(Padding2d {
                top: 2,
                bottom: 1,
                left: 3,
                right: 1,
            }),
        ),
        (
            "1x1 stride 3 with padding beyond reach",
            [1, 5, 10, 8],
            [7, 5, 1, 1],
            Conv2dSpec::new()
                .with_stride([3, 3])
                .with_padding(Padding2d {
                    top: 2,
                    bottom: 0,
                    left: 1,
                    right: 3,
                }),
        ),
        (
            "grouped 3, non-square everything",
            [3, 6, 9, 13],
            [9, 2, 2, 4],
            Conv2dSpec {
                stride: [2, 3],
                padding: Padding2d {
                    top: 1,
                    bottom: 2,
                    left: 0,
                    right: 3,
                },
                dilation: [3, 1],
                groups: 3,
            },
        ),
        (
            "reduction longer than one workgroup split",
            [4, 2, 40, 40],
            [3, 2, 3, 3],
            Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1)),
        ),
    ];
    for (what, xs, ws, spec) in cases {
        let b = Array1::from_shape_fn(ws[0], |_| rng.unit() as f32);
        check_conv(
            gpu,
            what,
            &rng.array4_f32(xs),
            &rng.array4_f32(ws),
            Some(&b),
            &spec,
        );
    }
    check_max_pool(
        gpu,
        "stem pool",
        &rng.array4_f32([2, 3, 17, 16]),
        &Pool2dSpec::new([3, 3])
            .with_stride([2, 2])
            .with_padding([1, 1]),
    );
    check_max_pool(
        gpu,
        "dilated ceil",
        &rng.array4_f32([1, 2, 13, 10]),
        &Pool2dSpec::new([3, 2])
            .with_dilation([2, 3])
            .with_stride([2, 1])
            .with_padding([1, 1])
            .with_ceil_mode(true),
    );
    for cip in [true, false] {
        check_avg_pool(
            gpu,
            "ceil clipped",
            &rng.array4_f32([2, 2, 7, 9]),
            &Pool2dSpec::new([3, 3])
                .with_stride([2, 2])
                .with_padding([1, 1])
                .with_ceil_mode(true),
            cip,
        );
    }
}

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

type ConvCase = ([usize; 4], [usize; 4], Conv2dSpec, bool);
type Range = std::ops::RangeInclusive<usize>;

/// Convolutions with every option drawn: `(n, groups, C/g, K/g)`, `(H, W, kh, kw)`,
/// `(sh, sw, dh, dw)` and each padding from the given ranges, bias on or off.
fn conv_strategy(
    counts: (Range, Range, Range, Range),
    sizes: (Range, Range, Range, Range),
    steps: (Range, Range, Range, Range),
    pad: Range,
) -> impl Strategy<Value = ConvCase> {
    (
        counts,
        sizes,
        steps,
        (pad.clone(), pad.clone(), pad.clone(), pad),
        any::<bool>(),
    )
        .prop_map(
            |((n, groups, cg, kg), (h, w, kh, kw), (sh, sw, dh, dw), (t, b, l, r), bias)| {
                let spec = Conv2dSpec {
                    stride: [sh, sw],
                    padding: Padding2d {
                        top: t,
                        bottom: b,
                        left: l,
                        right: r,
                    },
                    dilation: [dh, dw],
                    groups,
                };
                (
                    [n, groups * cg, h, w],
                    [groups * kg, cg, kh, kw],
                    spec,
                    bias,
                )
            },
        )
        .prop_filter("output must be non-empty", |(x, w, spec, _)| {
            spec.output_hw([x[2], x[3]], [w[2], w[3]]).is_ok()
        })
}

/// Small channel counts: the direct kernels.
fn conv_case() -> impl Strategy<Value = ConvCase> {
    conv_strategy(
        (1..=2, 1..=3, 1..=3, 1..=3),
        (1..=10, 1..=10, 1..=4, 1..=4),
        (1..=3, 1..=3, 1..=3, 1..=2),
        0..=3,
    )
}

fn pool_case() -> impl Strategy<Value = ([usize; 4], Pool2dSpec)> {
    (
        (1usize..=2, 1usize..=3, 1usize..=12, 1usize..=12),
        (1usize..=4, 1usize..=4, 1usize..=3, 1usize..=3),
        (
            0usize..=2,
            0usize..=2,
            1usize..=2,
            1usize..=2,
            any::<bool>(),
        ),
    )
        .prop_map(
            |((n, c, h, w), (kh, kw, sh, sw), (ph, pw, dh, dw, ceil_mode))| {
                let spec = Pool2dSpec {
                    kernel: [kh, kw],
                    stride: [sh, sw],
                    padding: [ph.min(kh / 2), pw.min(kw / 2)],
                    dilation: [dh, dw],
                    ceil_mode,
                };
                ([n, c, h, w], spec)
            },
        )
        .prop_filter("pool must be valid", |(x, spec)| spec.geometry(*x).is_ok())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn conv_random_shapes(case in conv_case(), seed in any::<u64>()) {
        let (xs, ws, spec, bias) = case;
        let mut rng = Rng::new(seed);
        let b = bias.then(|| Array1::from_shape_fn(ws[0], |_| rng.unit() as f32));
        check_conv(gpu(), &format!("x {xs:?} w {ws:?} {spec:?}"), &rng.array4_f32(xs), &rng.array4_f32(ws), b.as_ref(), &spec);
    }

    #[test]
    fn pool_random_shapes(case in pool_case(), seed in any::<u64>(), cip in any::<bool>()) {
        let (xs, spec) = case;
        let mut rng = Rng::new(seed);
        let x = rng.array4_f32(xs);
        check_max_pool(gpu(), &format!("x {xs:?} {spec:?}"), &x, &spec);
        let avg = Pool2dSpec { dilation: [1, 1], ..spec };
        if avg.avg_geometry(xs).is_ok() {
            check_avg_pool(gpu(), &format!("x {xs:?} {avg:?}"), &x, &avg, cip);
        }
    }
}

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
    // A single sample larger than a binding is refused with the sizes named.
    let big = small.upload(&Array4::<f32>::zeros((1, 2, 32, 32))).unwrap();
    let w = small.upload(&Array4::<f32>::zeros((1, 2, 1, 1))).unwrap();
    let e = small
        .conv2d_forward(&big, &w, None, &Conv2dSpec::new())
        .unwrap_err();
    assert!(
        matches!(e, Error::DeviceLimit(_)) && e.to_string().contains("8192 bytes"),
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

#[test]
fn bad_inputs_are_errors() {
    let gpu = gpu();
    let x = gpu.upload(&Array4::<f32>::zeros((1, 4, 6, 6))).unwrap();
    let w = gpu.upload(&Array4::<f32>::zeros((2, 4, 3, 3))).unwrap();
    let flat = gpu.upload(&Array1::<f32>::zeros(5)).unwrap();
    let spec = Conv2dSpec::new();
    let err = |r: wgconv::Result<Tensor>| r.map(|_| ()).unwrap_err().to_string();
    assert!(err(gpu.conv2d_forward(&x, &w, None, &spec.with_stride([0, 1]))).contains("[0, 1]"));
    assert!(err(gpu.conv2d_forward(&x, &w, None, &spec.with_groups(3))).contains("groups = 3"));
    assert!(err(gpu.conv2d_forward(&x, &w, Some(&flat), &spec)).contains("[5]"));
    assert!(err(gpu.conv2d_forward(&flat, &w, None, &spec)).contains("4-D"));
    assert!(err(gpu.conv2d_forward(&x, &w, None, &spec.with_dilation([4, 1]))).contains("spans 9"));
    let dy = gpu.upload(&Array4::<f32>::zeros((1, 2, 4, 4))).unwrap();
    assert!(err(gpu.conv2d_backward_input(&dy, &w, [7, 6], &spec)).contains("[4, 4]"));
    assert!(err(gpu.conv2d_backward_weight(&x, &dy, [2, 3], &spec)).contains("kernel [2, 3]"));
    let dy3 = gpu.upload(&Array4::<f32>::zeros((3, 2, 4, 4))).unwrap();
    assert!(err(gpu.conv2d_backward_weight(&x, &dy3, [3, 3], &spec)).contains("batch"));
    let pool = Pool2dSpec::new([3, 3]).with_padding([2, 1]);
    assert!(
        gpu.max_pool2d_forward(&x, &pool)
            .unwrap_err()
            .to_string()
            .contains("[2, 1]")
    );
    let dil = Pool2dSpec::new([2, 2]).with_dilation([2, 2]);
    assert!(err(gpu.avg_pool2d_forward(&x, &dil, true)).contains("dilation"));
    let ok = Pool2dSpec::new([2, 2]);
    let (py, pi) = gpu.max_pool2d_forward(&x, &ok).unwrap();
    assert!(err(gpu.max_pool2d_backward(&py, &pi, [8, 6], &ok)).contains("[3, 3]"));
    let wrong_idx = gpu
        .upload_indices(&Array4::<u32>::zeros((1, 4, 3, 2)))
        .unwrap();
    assert!(err(gpu.max_pool2d_backward(&py, &wrong_idx, [6, 6], &ok)).contains("[1, 4, 3, 2]"));
    // Beyond the device's max_buffer_size: refused before wgpu is asked.
    let huge = Array4::<f32>::zeros((0, 1, 1, 1));
    let empty = gpu.upload(&huge).unwrap();
    assert!(empty.is_empty());
}

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
    // Indices that name an element outside their window: the reference scatters to it, the GPU
    // gather (like PyTorch's CUDA kernel) ignores it; checked mode reports the difference.
    let pool = Pool2dSpec::new([2, 2]);
    let dy = checked.upload(&Array4::<f32>::ones((1, 1, 2, 2))).unwrap();
    let idx = checked
        .upload_indices(&Array4::<u32>::from_elem((1, 1, 2, 2), 15))
        .unwrap();
    let e = checked
        .max_pool2d_backward(&dy, &idx, [4, 4], &pool)
        .unwrap_err();
    assert!(
        matches!(&e, Error::CheckFailed { op, .. } if op == "max_pool2d_backward"),
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
fn tensors_from_another_gpu_are_rejected() {
    let other = Gpu::new().expect("adapter");
    let x = other.upload(&Array4::<f32>::zeros((1, 1, 4, 4))).unwrap();
    let e = gpu()
        .avg_pool2d_forward(&x, &Pool2dSpec::new([2, 2]), true)
        .unwrap_err();
    assert!(e.to_string().contains("another Gpu"), "{e}");
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

/// Channel counts that select the implicit-GEMM kernels.
fn tiled_case() -> impl Strategy<Value = ConvCase> {
    conv_strategy(
        (1..=2, 1..=2, 2..=9, 4..=20),
        (1..=9, 1..=9, 1..=3, 1..=3),
        (1..=3, 1..=3, 1..=2, 1..=2),
        0..=2,
    )
}

/// A `Gpu` per implicit-GEMM tile the library may pick, plus the direct algorithm.
fn tile_gpus() -> &'static [Gpu] {
    static GPUS: std::sync::OnceLock<Vec<Gpu>> = std::sync::OnceLock::new();
    GPUS.get_or_init(|| {
        let mut v: Vec<Gpu> = wgconv::gpu::kernels::Tile::CANDIDATES
            .iter()
            .filter_map(|&t| Gpu::builder().tile(t).poison_outputs(true).build().ok())
            .collect();
        v.push(
            Gpu::builder()
                .algorithm(wgconv::Algorithm::Direct)
                .poison_outputs(true)
                .build()
                .expect("adapter"),
        );
        // Split-K on every implicit GEMM whose reduction is long enough to split.
        v.push(
            Gpu::builder()
                .split_target(1 << 20)
                .poison_outputs(true)
                .build()
                .expect("adapter"),
        );
        assert!(v.len() >= 4, "at least two tiles fit the adapter");
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// Channel counts that select the implicit-GEMM kernels, with every option drawn, on every
    /// tile (and the direct kernels for comparison).
    #[test]
    fn tiled_conv_random_shapes(case in tiled_case(), seed in any::<u64>(), which in 0usize..8) {
        let (xs, ws, spec, bias) = case;
        let gpus = tile_gpus();
        let gpu = &gpus[which % gpus.len()];
        let mut rng = Rng::new(seed);
        let b = bias.then(|| Array1::from_shape_fn(ws[0], |_| rng.unit() as f32));
        check_conv(gpu, &format!("{:?} x {xs:?} w {ws:?} {spec:?}", gpu.tile()), &rng.array4_f32(xs), &rng.array4_f32(ws), b.as_ref(), &spec);
    }
}

/// Larger layers through the tiled kernels: many tiles, long reductions, stride-2 phases.
#[test]
fn tiled_layers() {
    let mut rng = Rng::new(123);
    let layers: Vec<(&str, [usize; 4], [usize; 4], Conv2dSpec)> = vec![
        (
            "3x3 s1",
            [2, 16, 12, 12],
            [24, 16, 3, 3],
            Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1)),
        ),
        (
            "3x3 s2",
            [2, 12, 13, 11],
            [16, 12, 3, 3],
            Conv2dSpec::new()
                .with_stride([2, 2])
                .with_padding(Padding2d::symmetric(1, 1)),
        ),
        (
            "1x1 s2",
            [3, 20, 9, 9],
            [40, 20, 1, 1],
            Conv2dSpec::new().with_stride([2, 2]),
        ),
        (
            "7x7 s2 stem-like",
            [1, 4, 21, 19],
            [16, 4, 7, 7],
            Conv2dSpec::new()
                .with_stride([2, 2])
                .with_padding(Padding2d::symmetric(3, 3)),
        ),
        (
            "dilated 3x3 d2 s3",
            [1, 8, 17, 16],
            [8, 8, 3, 3],
            Conv2dSpec::new()
                .with_stride([3, 3])
                .with_dilation([2, 2])
                .with_padding(Padding2d::symmetric(2, 2)),
        ),
        // Reductions long enough for split-K: forward (C*9 = 360) and dx (K*9 = 432).
        (
            "long forward reduction",
            [2, 40, 7, 6],
            [16, 40, 3, 3],
            Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1)),
        ),
        (
            "long dx reduction s2",
            [1, 8, 9, 8],
            [48, 8, 3, 3],
            Conv2dSpec::new()
                .with_stride([2, 2])
                .with_padding(Padding2d::symmetric(1, 1)),
        ),
    ];
    for gpu in tile_gpus() {
        for (what, xs, ws, spec) in &layers {
            let b = Array1::from_shape_fn(ws[0], |_| rng.unit() as f32);
            check_conv(
                gpu,
                &format!("{what} {:?}", gpu.tile()),
                &rng.array4_f32(*xs),
                &rng.array4_f32(*ws),
                Some(&b),
                spec,
            );
        }
    }
}
