//! Invalid and hostile inputs on the GPU: named bad shapes and arguments (the error names the
//! value), tensors of another `Gpu`, and a fuzz of hostile specs on tiny tensors through every
//! GPU op against the reference. The reference's own errors: `reference_errors.rs`; its fuzz:
//! `reference_hostile.rs`.

mod common;

use common::Rng;
use common::*;
use ndarray::{Array1, Array4, ArrayView1};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use wgconv::compare::{GPU_TOLERANCE, compare};
use wgconv::reference;
use wgconv::{Conv2dSpec, Error, Gpu, IndexTensor, Padding2d, Pool2dSpec, Tensor};

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
fn tensors_from_another_gpu_are_rejected() {
    let other = Gpu::new().expect("adapter");
    let x = other.upload(&Array4::<f32>::zeros((1, 1, 4, 4))).unwrap();
    let e = gpu()
        .avg_pool2d_forward(&x, &Pool2dSpec::new([2, 2]), true)
        .unwrap_err();
    assert!(e.to_string().contains("another Gpu"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Fuzz: hostile specs on tiny tensors, GPU against the reference.

const GPU_OUTPUT_LIMIT: u128 = 1 << 14;

fn hostile() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..=4,
        2 => prop::sample::select(vec![
            i32::MAX as usize - 1,
            i32::MAX as usize,
            1 << 31,
            u32::MAX as usize,
            1 << 32,
            (1 << 32) + 1,
            1 << 40,
            usize::MAX / 2,
            usize::MAX,
        ]),
        1 => (15u32..64).prop_map(|b| 1usize << b),
    ]
}

fn small_or(lo: usize, hi: usize) -> BoxedStrategy<usize> {
    prop_oneof![5 => lo..=hi, 1 => hostile()].boxed()
}

fn out_elems(shape: [usize; 4]) -> u128 {
    shape.iter().map(|&d| d as u128).product()
}

/// Runs `gpu_op` and `ref_op`: no panic; the GPU refuses whatever the reference refuses; where
/// the GPU answers, the reference does too and they agree; where only the reference answers, the
/// GPU's error is one of its documented limits.
fn agree(
    what: &str,
    gpu_op: impl FnOnce() -> wgconv::Result<Array4<f64>>,
    ref_op: impl FnOnce() -> wgconv::Result<Array4<f64>>,
) -> Result<(), TestCaseError> {
    let catch = |name: &str, f: Box<dyn FnOnce() -> wgconv::Result<Array4<f64>> + '_>| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .map_err(|_| TestCaseError::fail(format!("{what}: {name} panicked")))
    };
    let r = catch("reference", Box::new(ref_op))?;
    let g = catch("GPU", Box::new(gpu_op))?;
    match (&g, &r) {
        (Ok(g), Ok(r)) => {
            prop_assert_eq!(g.shape(), r.shape(), "{}", what);
            let c = compare(g.iter().copied(), r.iter().copied());
            prop_assert!(
                c.passes(GPU_TOLERANCE),
                "{}: max |gpu - ref| = {:e}\n gpu {:?}\n ref {:?}",
                what,
                c.max_abs_err,
                g,
                r
            );
        }
        (Ok(_), Err(e)) => prop_assert!(
            false,
            "{}: GPU accepted what the reference refused: {}",
            what,
            e
        ),
        (Err(e), Ok(_)) => prop_assert!(
            matches!(e, Error::DeviceLimit(_) | Error::Overflow(_)),
            "{}: GPU refused with {:?}",
            what,
            e
        ),
        (Err(_), Err(_)) => {}
    }
    Ok(())
}

#[allow(clippy::type_complexity)]
fn gpu_fuzz_case(
    (cspec, pspec, xs, ws, cip, seed): (Conv2dSpec, Pool2dSpec, [usize; 4], [usize; 4], bool, u64),
) -> Result<(), TestCaseError> {
    let gpu = gpu();
    let mut rng = Rng::new(seed);
    let x = rng.array4(xs);
    let w = rng.array4(ws);
    let xt = gpu.upload(&f32s(&x)).unwrap();
    let wt = gpu.upload(&f32s(&w)).unwrap();
    let (x, w) = (f64s(&f32s(&x)), f64s(&f32s(&w)));
    let hw = [xs[2], xs[3]];
    let khw = [ws[2], ws[3]];
    let what = format!("x {xs:?} w {ws:?} {cspec:?} {pspec:?}");

    // Conv: run only where the output is small or refused.
    let geo = cspec.forward_geometry(xs, ws);
    if geo
        .as_ref()
        .map_or(true, |g| out_elems(g.y_shape()) <= GPU_OUTPUT_LIMIT)
    {
        agree(
            &format!("forward {what}"),
            || {
                gpu.conv2d_forward(&xt, &wt, None, &cspec)
                    .map(|t| dl4(gpu, &t))
            },
            || reference::conv2d_forward(x.view(), w.view(), None::<ArrayView1<f64>>, &cspec),
        )?;
    }
    if let Ok(g) = geo
        && out_elems(g.y_shape()) <= GPU_OUTPUT_LIMIT
    {
        let dy = rng.array4(g.y_shape());
        let dyt = gpu.upload(&f32s(&dy)).unwrap();
        let dy = f64s(&f32s(&dy));
        agree(
            &format!("dx {what}"),
            || {
                gpu.conv2d_backward_input(&dyt, &wt, hw, &cspec)
                    .map(|t| dl4(gpu, &t))
            },
            || reference::conv2d_backward_input(dy.view(), w.view(), hw, &cspec),
        )?;
        agree(
            &format!("dW {what}"),
            || {
                gpu.conv2d_backward_weight(&xt, &dyt, khw, &cspec)
                    .map(|t| dl4(gpu, &t))
            },
            || reference::conv2d_backward_weight(x.view(), dy.view(), khw, &cspec),
        )?;
    }

    // Pools.
    let geo = pspec.geometry(xs);
    if geo
        .as_ref()
        .map_or(true, |g| out_elems(g.y_shape()) <= GPU_OUTPUT_LIMIT)
    {
        let gp = gpu.max_pool2d_forward(&xt, &pspec);
        let rp = reference::max_pool2d_forward(x.view(), &pspec);
        match (&gp, &rp) {
            (Ok((gy, gi)), Ok((ry, ri))) => {
                close(&dl4(gpu, gy), ry, &format!("max-pool {what}"));
                let gi = gpu.download_indices(gi).unwrap();
                prop_assert_eq!(
                    gi.iter().copied().collect::<Vec<_>>(),
                    ri.iter().copied().collect::<Vec<_>>()
                );
                let dx = gpu
                    .max_pool2d_backward(gy, gpu_indices(gpu, &gp), hw, &pspec)
                    .map(|t| dl4(gpu, &t));
                let dx_ref = reference::max_pool2d_backward(ry.view(), ri.view(), hw, &pspec);
                match (dx, dx_ref) {
                    (Ok(a), Ok(b)) => close(&a, &b, &format!("max-pool dx {what}")),
                    (a, b) => prop_assert!(
                        false,
                        "max-pool dx {}: {:?} vs {:?}",
                        what,
                        a.err(),
                        b.err()
                    ),
                }
            }
            (Ok(_), Err(e)) => {
                prop_assert!(false, "max-pool {}: GPU accepted, reference: {}", what, e)
            }
            (Err(e), Ok(_)) => prop_assert!(
                matches!(e, Error::DeviceLimit(_) | Error::Overflow(_)),
                "max-pool {}: {:?}",
                what,
                e
            ),
            (Err(_), Err(_)) => {}
        }
    }
    let geo = pspec.avg_geometry(xs);
    if geo
        .as_ref()
        .map_or(true, |g| out_elems(g.y_shape()) <= GPU_OUTPUT_LIMIT)
    {
        agree(
            &format!("avg-pool {what}"),
            || {
                gpu.avg_pool2d_forward(&xt, &pspec, cip)
                    .map(|t| dl4(gpu, &t))
            },
            || reference::avg_pool2d_forward(x.view(), &pspec, cip),
        )?;
        if let Ok(g) = geo {
            let dy = f64s(&f32s(&rng.array4(g.y_shape())));
            let dyt = gpu.upload(&f32s(&dy)).unwrap();
            agree(
                &format!("avg-pool dx {what}"),
                || {
                    gpu.avg_pool2d_backward(&dyt, hw, &pspec, cip)
                        .map(|t| dl4(gpu, &t))
                },
                || reference::avg_pool2d_backward(dy.view(), hw, &pspec, cip),
            )?;
        }
    }
    Ok(())
}

fn gpu_indices<'a>(_gpu: &Gpu, r: &'a wgconv::Result<(Tensor, IndexTensor)>) -> &'a IndexTensor {
    &r.as_ref().expect("checked above").1
}

/// A few dozen hostile specs on tiny tensors through every GPU op, against the reference.
#[test]
fn gpu_hostile_specs_never_panic_and_match_the_reference() {
    let strat = (
        (
            [small_or(1, 3), small_or(1, 3)],
            [
                small_or(0, 2),
                small_or(0, 2),
                small_or(0, 2),
                small_or(0, 2),
            ],
            [small_or(1, 2), small_or(1, 2)],
            small_or(1, 2),
        ),
        (
            [small_or(1, 4), small_or(1, 4)],
            [small_or(1, 3), small_or(1, 3)],
            [small_or(0, 1), small_or(0, 1)],
            [small_or(1, 2), small_or(1, 2)],
            any::<bool>(),
        ),
        [0usize..=2, 1usize..=4, 1usize..=6, 1usize..=6],
        [1usize..=4, 1usize..=2, 1usize..=3, 1usize..=3],
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                (stride, [t, b, l, r], dilation, groups),
                (kernel, pstride, padding, pdil, ceil),
                xs,
                ws,
                cip,
                seed,
            )| {
                let cspec = Conv2dSpec {
                    stride,
                    padding: Padding2d {
                        top: t,
                        bottom: b,
                        left: l,
                        right: r,
                    },
                    dilation,
                    groups,
                };
                // Channels consistent with the groups where they are small.
                let mut ws = ws;
                let mut xs = xs;
                if (1..=2).contains(&groups) {
                    xs[1] = ws[1] * groups;
                    ws[0] *= groups;
                }
                let pspec = Pool2dSpec {
                    kernel,
                    stride: pstride,
                    padding,
                    dilation: pdil,
                    ceil_mode: ceil,
                };
                (cspec, pspec, xs, ws, cip, seed)
            },
        );
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x6B0_0007),
        ..Config::default()
    });
    runner
        .run(&strat, gpu_fuzz_case)
        .unwrap_or_else(|e| panic!("{e}"));
}
