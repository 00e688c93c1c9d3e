//! Winograd F(2x2, 3x3) and, for dW, F(3x3, 2x2), chosen explicitly (`Algorithm::Winograd`), on every adapter the tests
//! run on: the PyTorch fixtures and random 3x3 stride-1 layers against the reference (forward,
//! dx and dW, F(3x3, 2x2), also accumulated; db has no Winograd form), chunked at a small binding, three runs
//! bit-identical, and its error side by side with the implicit GEMM's
//! (`cargo test --release --test winograd -- --nocapture` prints the table in docs/PERF.md).

mod common;

use common::{Rng, check_conv, close, conv_spec, dl4, f32s, f64s, fixture_cases, fresh, tensor4};
use ndarray::{Array1, Array4};
use wgconv::compare::compare;
use wgconv::gpu::plan::{self, ConvAlgorithm};
use wgconv::{Algorithm, Conv2dSpec, Gpu, Padding2d, reference};

fn winograd_gpu(builder: wgconv::GpuBuilder) -> Gpu {
    fresh(builder.algorithm(Algorithm::Winograd))
}

/// Whether the forward, dx and dW of `x`, `w`, `spec` run on Winograd on `gpu`.
fn runs_winograd(gpu: &Gpu, x: [usize; 4], w: [usize; 4], spec: &Conv2dSpec) -> bool {
    let g = spec.forward_geometry(x, w).unwrap();
    let f = plan::conv2d_forward(gpu.profile(), &g, false).unwrap();
    let d = plan::conv2d_backward_input(gpu.profile(), &g, false).unwrap();
    let dw = plan::conv2d_backward_weight(gpu.profile(), &g, false).unwrap();
    let wino = f.algorithm == ConvAlgorithm::Winograd;
    assert_eq!(wino, d.algorithm == ConvAlgorithm::Winograd, "forward, dx");
    assert_eq!(wino, dw.algorithm == ConvAlgorithm::Winograd, "forward, dW");
    wino
}

#[test]
fn fixtures_on_winograd() {
    let gpu = winograd_gpu(Gpu::builder());
    let mut taken = 0;
    for case in fixture_cases("conv2d") {
        let name = case["name"].as_str().unwrap();
        let spec = conv_spec(&case);
        let x = f32s(&tensor4(&case["x"]));
        let w = f32s(&tensor4(&case["w"]));
        let shape = |a: &Array4<f32>| -> [usize; 4] { a.dim().into() };
        if !runs_winograd(&gpu, shape(&x), shape(&w), &spec) {
            continue;
        }
        taken += 1;
        let dy = f32s(&tensor4(&case["dy"]));
        let b: Option<Array1<f32>> = (!case["bias"].is_null()).then(|| {
            f32s(&common::tensor(&case["bias"]))
                .into_dimensionality()
                .unwrap()
        });
        let (xt, wt, dyt) = (
            gpu.upload(&x).unwrap(),
            gpu.upload(&w).unwrap(),
            gpu.upload(&dy).unwrap(),
        );
        let bt = b.as_ref().map(|b| gpu.upload(b).unwrap());
        let y = gpu.conv2d_forward(&xt, &wt, bt.as_ref(), &spec).unwrap();
        close(&dl4(&gpu, &y), &tensor4(&case["y"]), &format!("{name}: y"));
        let hw = [x.shape()[2], x.shape()[3]];
        let dx = gpu.conv2d_backward_input(&dyt, &wt, hw, &spec).unwrap();
        let khw = [w.shape()[2], w.shape()[3]];
        let dw = gpu.conv2d_backward_weight(&xt, &dyt, khw, &spec).unwrap();
        close(
            &dl4(&gpu, &dw),
            &tensor4(&case["dw"]),
            &format!("{name}: dw"),
        );
        close(
            &dl4(&gpu, &dx),
            &tensor4(&case["dx"]),
            &format!("{name}: dx"),
        );
    }
    assert!(taken >= 3, "only {taken} fixtures are 3x3 stride-1 layers");
}

/// Paddings 0 to 3 (asymmetric, and past the kernel's reach for dx's crop), groups (two
/// channels a group), odd and one-row outputs, with bias; all four ops through `check_conv`.
#[test]
fn named_cases_on_winograd() {
    let gpu = winograd_gpu(Gpu::builder());
    let pad = |top, bottom, left, right| Padding2d {
        top,
        bottom,
        left,
        right,
    };
    let cases: [([usize; 4], [usize; 4], Padding2d, usize); 8] = [
        ([2, 3, 8, 8], [4, 3, 3, 3], pad(0, 0, 0, 0), 1),
        ([1, 4, 9, 7], [8, 4, 3, 3], pad(1, 1, 1, 1), 1),
        ([3, 5, 6, 11], [6, 5, 3, 3], pad(2, 0, 1, 2), 1),
        ([1, 2, 5, 5], [3, 2, 3, 3], pad(3, 3, 3, 3), 1),
        ([2, 6, 7, 7], [4, 3, 3, 3], pad(1, 1, 1, 1), 2),
        ([1, 8, 10, 6], [8, 2, 3, 3], pad(1, 1, 1, 1), 4),
        ([1, 3, 3, 40], [5, 3, 3, 3], pad(0, 0, 1, 1), 1),
        ([2, 16, 14, 14], [32, 16, 3, 3], pad(1, 1, 1, 1), 1),
    ];
    let mut rng = Rng::new(2024);
    for (i, (xs, ws, padding, groups)) in cases.into_iter().enumerate() {
        let spec = Conv2dSpec::default()
            .with_padding(padding)
            .with_groups(groups);
        assert!(
            runs_winograd(&gpu, xs, ws, &spec),
            "case {i} plans Winograd"
        );
        let (x, w) = (rng.array4_f32(xs), rng.array4_f32(ws));
        let b = Array1::from_shape_fn(ws[0], |k| k as f32 * 0.1 - 0.3);
        check_conv(&gpu, &format!("case {i}"), &x, &w, Some(&b), &spec);
    }
}

/// Random 3x3 stride-1 layers (channels, groups, paddings, sizes drawn), and the layers it does
/// not take (stride 2, dilation 2, 5x5, depthwise) fall back to the GEMM with the same results.
#[test]
fn random_layers_on_winograd_and_fallbacks() {
    let gpu = winograd_gpu(Gpu::builder());
    let mut rng = Rng::new(7);
    for i in 0..24 {
        let groups = [1, 1, 2, 3][rng.range(0, 3)];
        let (c, k) = (groups * rng.range(2, 5), groups * rng.range(1, 6));
        let (h, w) = (rng.range(1, 13), rng.range(1, 13));
        let padding = Padding2d {
            top: rng.range(0, 2),
            bottom: rng.range(0, 2),
            left: rng.range(0, 2),
            right: rng.range(0, 2),
        };
        let spec = Conv2dSpec::default()
            .with_padding(padding)
            .with_groups(groups);
        let (xs, ws) = ([rng.range(1, 3), c, h, w], [k, c / groups, 3, 3]);
        if spec.forward_geometry(xs, ws).is_err() {
            continue;
        }
        assert!(runs_winograd(&gpu, xs, ws, &spec), "random {i}");
        let (x, wt) = (rng.array4_f32(xs), rng.array4_f32(ws));
        check_conv(
            &gpu,
            &format!("random {i}: {xs:?} {ws:?} {spec:?}"),
            &x,
            &wt,
            None,
            &spec,
        );
    }
    let others = [
        (
            [1, 3, 9, 9],
            [4, 3, 3, 3],
            Conv2dSpec::default().with_stride([2, 2]),
        ),
        (
            [1, 3, 9, 9],
            [4, 3, 3, 3],
            Conv2dSpec::default().with_dilation([2, 2]),
        ),
        ([1, 3, 9, 9], [4, 3, 5, 5], Conv2dSpec::default()),
        (
            [1, 4, 9, 9],
            [4, 1, 3, 3],
            Conv2dSpec::default().with_groups(4),
        ),
    ];
    for (xs, ws, spec) in others {
        assert!(
            !runs_winograd(&gpu, xs, ws, &spec),
            "{spec:?} {ws:?} is not Winograd's"
        );
        let (x, w) = (rng.array4_f32(xs), rng.array4_f32(ws));
        check_conv(&gpu, &format!("fallback {spec:?}"), &x, &w, None, &spec);
    }
}

/// At a 4 KiB binding the transforms are chunked by samples; dx accumulates; three runs give
/// the same bits; and a sample whose transforms pass a binding falls back to the GEMM.
#[test]
fn chunked_accumulated_and_bit_identical() {
    let gpu = winograd_gpu(Gpu::builder().max_binding_bytes(4096));
    let spec = Conv2dSpec::default().with_padding(Padding2d::symmetric(1, 1));
    let (xs, ws) = ([5, 4, 6, 6], [2, 4, 3, 3]);
    let g = spec.forward_geometry(xs, ws).unwrap();
    let p = plan::conv2d_forward(gpu.profile(), &g, true).unwrap();
    assert_eq!(p.algorithm, ConvAlgorithm::Winograd);
    assert!(p.chunks.len() > 1, "chunked: {:?}", p.chunks);
    let mut rng = Rng::new(99);
    let (x, w) = (rng.array4_f32(xs), rng.array4_f32(ws));
    let b = Array1::from_vec(vec![0.5f32, -0.25]);
    check_conv(&gpu, "chunked", &x, &w, Some(&b), &spec);
    let (gx, gw) = (gpu.upload(&x).unwrap(), gpu.upload(&w).unwrap());
    let bits = |t: &wgconv::Tensor| common::bits(&gpu, t);
    let runs: Vec<Vec<u32>> = (0..3)
        .map(|_| bits(&gpu.conv2d_forward(&gx, &gw, None, &spec).unwrap()))
        .collect();
    assert!(runs.iter().all(|r| r == &runs[0]), "three runs, one result");
    // dx += on Winograd.
    let dy = rng.array4_f32([5, 2, 6, 6]);
    let start = Array4::from_elem((5, 4, 6, 6), 1.5f32);
    let mut gdx = gpu.upload(&start).unwrap();
    gpu.conv2d_backward_input_accumulate(&gpu.upload(&dy).unwrap(), &gw, &spec, &mut gdx)
        .unwrap();
    let want = reference::conv2d_backward_input(f64s(&dy).view(), f64s(&w).view(), [6, 6], &spec)
        .unwrap()
        + 1.5;
    close(&dl4(&gpu, &gdx), &want, "dx += on Winograd");
    // dW += on Winograd, over the five chunks in order.
    let gdy = gpu.upload(&dy).unwrap();
    let wstart = Array4::from_elem((2, 4, 3, 3), -0.5f32);
    let mut gdw = gpu.upload(&wstart).unwrap();
    gpu.conv2d_backward_weight_accumulate(&gx, &gdy, &spec, &mut gdw)
        .unwrap();
    let want = reference::conv2d_backward_weight(f64s(&x).view(), f64s(&dy).view(), [3, 3], &spec)
        .unwrap()
        - 0.5;
    close(&dl4(&gpu, &gdw), &want, "dW += on Winograd");
    let g5 = spec.forward_geometry(xs, ws).unwrap();
    let dw_plan = plan::conv2d_backward_weight(gpu.profile(), &g5, true).unwrap();
    assert_eq!(dw_plan.algorithm, ConvAlgorithm::Winograd);
    assert!(dw_plan.chunks.len() > 1, "dW chunked: {:?}", dw_plan.chunks);
    let dws: Vec<Vec<u32>> = (0..3)
        .map(|_| {
            bits(
                &gpu.conv2d_backward_weight(&gx, &gdy, [3, 3], &spec)
                    .unwrap(),
            )
        })
        .collect();
    assert!(
        dws.iter().all(|r| r == &dws[0]),
        "three dW runs, one result"
    );
    // One sample's V (16 x 16 channels x 9 tiles) is past 4 KiB: the GEMM plans it.
    let g = spec.forward_geometry([1, 16, 6, 6], [2, 16, 3, 3]).unwrap();
    let p = plan::conv2d_forward(gpu.profile(), &g, false).unwrap();
    assert_ne!(p.algorithm, ConvAlgorithm::Winograd);
}

/// The error of Winograd and of the implicit GEMM against the f64 reference, side by side, on
/// layers of the benchmark suites' 3x3 shapes (batch 1, values in [-1, 1)): printed for
/// docs/PERF.md, and Winograd's within the checked tolerance.
#[test]
fn error_against_the_gemm() {
    let wino = winograd_gpu(Gpu::builder());
    let gemm = fresh(Gpu::builder().algorithm(Algorithm::Tiled));
    let layers: [(&str, [usize; 4], [usize; 4]); 6] = [
        ("q_conv3x3", [1, 16, 32, 32], [32, 16, 3, 3]),
        ("r18_c2_3x3", [1, 64, 56, 56], [64, 64, 3, 3]),
        ("r50_c3_3x3", [1, 128, 28, 28], [128, 128, 3, 3]),
        ("r50_c4_3x3", [1, 256, 14, 14], [256, 256, 3, 3]),
        ("r50_c5_3x3", [1, 512, 7, 7], [512, 512, 3, 3]),
        ("grouped_3x3", [1, 64, 28, 28], [64, 16, 3, 3]),
    ];
    println!(
        "| layer | op | multiplies direct / Winograd | GEMM max rel. error | Winograd max rel. error |"
    );
    println!("| --- | --- | --- | --- | --- |");
    let mut rng = Rng::new(5);
    for (name, xs, ws) in layers {
        let groups = xs[1] / ws[1];
        let spec = Conv2dSpec::default()
            .with_padding(Padding2d::symmetric(1, 1))
            .with_groups(groups);
        let (x, w) = (rng.array4_f32(xs), rng.array4_f32(ws));
        let y_ref =
            reference::conv2d_forward(f64s(&x).view(), f64s(&w).view(), None, &spec).unwrap();
        let dy = rng.array4_f32(y_ref.dim().into());
        let hw = [xs[2], xs[3]];
        let dx_ref =
            reference::conv2d_backward_input(f64s(&dy).view(), f64s(&w).view(), hw, &spec).unwrap();
        let dw_ref =
            reference::conv2d_backward_weight(f64s(&x).view(), f64s(&dy).view(), [3, 3], &spec)
                .unwrap();
        let g = spec.forward_geometry(xs, ws).unwrap();
        let direct = g.flops() / 2.0;
        let tiles = (g.oh.div_ceil(2) * g.ow.div_ceil(2)) as f64;
        let winograd_mults = 16.0 * tiles * (g.k * g.cg()) as f64;
        let mut errs = Vec::new();
        for gpu in [&gemm, &wino] {
            let (gx, gw, gdy) = (
                gpu.upload(&x).unwrap(),
                gpu.upload(&w).unwrap(),
                gpu.upload(&dy).unwrap(),
            );
            let y = dl4(gpu, &gpu.conv2d_forward(&gx, &gw, None, &spec).unwrap());
            let dx = dl4(
                gpu,
                &gpu.conv2d_backward_input(&gdy, &gw, hw, &spec).unwrap(),
            );
            let rel = |got: &Array4<f64>, want: &Array4<f64>| {
                let c = compare(got.iter().copied(), want.iter().copied());
                c.max_abs_err / c.scale
            };
            let dw = dl4(
                gpu,
                &gpu.conv2d_backward_weight(&gx, &gdy, [3, 3], &spec)
                    .unwrap(),
            );
            errs.push([rel(&y, &y_ref), rel(&dx, &dx_ref), rel(&dw, &dw_ref)]);
        }
        for (o, op) in ["forward", "dx", "dW"].iter().enumerate() {
            println!(
                "| {name} | {op} | {:.2e} / {:.2e} ({:.2}x) | {:.1e} | {:.1e} |",
                direct,
                winograd_mults,
                direct / winograd_mults,
                errs[0][o],
                errs[1][o]
            );
            assert!(
                errs[1][o] <= wgconv::compare::GPU_TOLERANCE,
                "{name} {op}: {:e}",
                errs[1][o]
            );
        }
    }
}
