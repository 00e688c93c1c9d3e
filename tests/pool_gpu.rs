//! Max-pool and avg-pool (forward and backward) on the GPU against PyTorch and the reference:
//! every fixture and proptest-drawn shapes and options. NaN and Inf: `nan_inf.rs`; windows at
//! the edge of 32-bit arithmetic: `limits.rs`.

mod common;

use common::Rng;
use common::*;
use ndarray::Ix4;
use proptest::prelude::*;
use wgconv::Pool2dSpec;

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

/// The one index rule of max-pool backward: indices outside their window (in the plane or not,
/// `u32::MAX` too) contribute nothing, on the GPU, in the reference and in checked mode alike;
/// an index between dilated taps, inside the span, counts in both.
#[test]
fn max_pool_backward_index_rule_is_the_same_everywhere() {
    use ndarray::Array4;
    use wgconv::{Gpu, Pool2dSpec, reference};
    let spec = Pool2dSpec::new([3, 3])
        .with_stride([2, 2])
        .with_dilation([2, 1]);
    let g = spec.geometry([1, 2, 9, 8]).unwrap();
    let shape = g.y_shape();
    let mut rng = Rng::new(31);
    let dy = rng.array4_f32(shape);
    let (oh, ow) = (g.oh, g.ow);
    let idx = Array4::from_shape_fn(shape, |(_, c, o, p)| match (c + o + p) % 5 {
        0 => u32::MAX,                         // outside the plane
        1 => 72,                               // outside the plane (9 x 8 = 72)
        2 => 0,                                // in the plane, outside most windows
        3 => ((2 * o + 1) * 8 + 2 * p) as u32, // between dilated taps: inside the span
        _ => ((2 * o) * 8 + 2 * p) as u32,     // the window's first tap
    });
    let want = reference::max_pool2d_backward(dy.mapv(f64::from).view(), idx.view(), [9, 8], &spec)
        .unwrap();
    for checked in [false, true] {
        let gpu = fresh(Gpu::builder().checked(checked));
        let gdy = gpu.upload(&dy).unwrap();
        let gi = gpu.upload_indices(&idx).unwrap();
        let dx = gpu.max_pool2d_backward(&gdy, &gi, [9, 8], &spec).unwrap();
        close(&dl(&gpu, &dx), &want, "GPU against the reference");
    }
    // Some indices counted, and the between-taps ones among them.
    assert_eq!((oh, ow), (3, 3));
    assert!(want.iter().any(|&v| v != 0.0));
    // Window (1, 2) of channel 0 names row 3 (between its taps at rows 2 and 4), column 4.
    assert!(want[[0, 0, 3, 4]] != 0.0);
}
