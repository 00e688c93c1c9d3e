//! The conv ops (forward, dx, dW, db) on the GPU against PyTorch and the reference: every
//! fixture, named edge cases (with three pool edge cases), proptest-drawn shapes and options on
//! the direct kernels and on every implicit-GEMM tile, split-K, and larger tiled layers. Runs on
//! whatever adapter `WGPU_BACKEND` selects (CI: lavapipe, then GL llvmpipe).

mod common;

use common::Rng;
use common::*;
use ndarray::Array1;
use proptest::prelude::*;
use wgconv::compare::{GPU_TOLERANCE, compare};
use wgconv::{Conv2dSpec, Gpu, Padding2d, Pool2dSpec};

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

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn conv_random_shapes(case in conv_case(), seed in any::<u64>()) {
        let (xs, ws, spec, bias) = case;
        let mut rng = Rng::new(seed);
        let b = bias.then(|| Array1::from_shape_fn(ws[0], |_| rng.unit() as f32));
        check_conv(gpu(), &format!("x {xs:?} w {ws:?} {spec:?}"), &rng.array4_f32(xs), &rng.array4_f32(ws), b.as_ref(), &spec);
    }
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

/// dx of few-channel layers with the kernel taps along the GEMM's columns (`taps_dx`; by
/// default on CPU drivers only): the stem's shape, one channel, groups with dilation, chunked at a small binding,
/// accumulated; against the reference.
#[test]
fn few_channel_dx_by_taps() {
    use wgconv::gpu::kernels::Kernel;
    use wgconv::gpu::plan;
    let cases: [(usize, [usize; 4], [usize; 4], Conv2dSpec); 4] = [
        (
            1 << 30,
            [2, 3, 20, 20],
            [16, 3, 7, 7],
            Conv2dSpec::default()
                .with_stride([2, 2])
                .with_padding(Padding2d::symmetric(3, 3)),
        ),
        (1 << 30, [1, 1, 9, 9], [8, 1, 3, 3], Conv2dSpec::default()),
        (
            1 << 30,
            [1, 4, 10, 10],
            [16, 2, 3, 3],
            Conv2dSpec::default()
                .with_groups(2)
                .with_dilation([2, 1])
                .with_padding(Padding2d::symmetric(1, 1)),
        ),
        (
            8192,
            [4, 3, 6, 6],
            [8, 3, 3, 3],
            Conv2dSpec::default().with_padding(Padding2d::symmetric(1, 1)),
        ),
    ];
    let mut rng = Rng::new(1234);
    for (i, (binding, xs, ws, spec)) in cases.into_iter().enumerate() {
        let gpu = fresh(
            Gpu::builder()
                .taps_dx(true)
                .max_binding_bytes(binding as u64),
        );
        let g = spec.forward_geometry(xs, ws).unwrap();
        let p = plan::conv2d_backward_input(gpu.profile(), &g, false).unwrap();
        assert!(
            p.steps.iter().any(|s| s.kernel == Kernel::Conv2dCol2im),
            "case {i} runs by taps"
        );
        if binding < 1 << 30 {
            assert!(p.chunks.len() > 1, "case {i} chunked: {:?}", p.chunks);
        }
        let (x, w) = (rng.array4_f32(xs), rng.array4_f32(ws));
        check_conv(&gpu, &format!("taps case {i}"), &x, &w, None, &spec);
        // dx += by taps.
        let dy = rng.array4_f32(g.y_shape());
        let start = ndarray::Array4::from_elem(xs, 0.75f32);
        let mut gdx = gpu.upload(&start).unwrap();
        let (gdy, gw) = (gpu.upload(&dy).unwrap(), gpu.upload(&w).unwrap());
        gpu.conv2d_backward_input_accumulate(&gdy, &gw, &spec, &mut gdx)
            .unwrap();
        let want = wgconv::reference::conv2d_backward_input(
            f64s(&dy).view(),
            f64s(&w).view(),
            [xs[2], xs[3]],
            &spec,
        )
        .unwrap()
            + 0.75;
        close(&dl(&gpu, &gdx), &want, &format!("taps case {i}: dx +="));
    }
    // By default on CPU drivers only.
    let g = cases_default();
    let profile = common::gpu().profile();
    let p = plan::conv2d_backward_input(profile, &g, false).unwrap();
    let by_taps = p.steps.iter().any(|s| s.kernel == Kernel::Conv2dCol2im);
    assert_eq!(
        by_taps, profile.cpu,
        "by taps by default on CPU drivers only"
    );
}

fn cases_default() -> wgconv::Conv2dGeometry {
    Conv2dSpec::default()
        .with_stride([2, 2])
        .with_padding(Padding2d::symmetric(3, 3))
        .forward_geometry([2, 3, 20, 20], [16, 3, 7, 7])
        .unwrap()
}
