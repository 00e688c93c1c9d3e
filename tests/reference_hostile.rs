//! The CPU reference under hostile specs (issue 7), with tiny real arrays: every conv entry point
//! and method and every pool entry point answers `Ok` exactly when the geometry is accepted, the
//! methods agree, and nothing panics; and named cases whose outputs would not fit the address
//! space or memory. The hostile values: `common::fuzz`; the model: `common::model`.

mod common;

use common::fuzz::*;
use common::model::*;
use ndarray::{Array1, Array4};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use wgconv::reference::{self, direct, gemm, transposed};
use wgconv::{Conv2dSpec, Error, Padding2d, Pool2dSpec};

// ---------------------------------------------------------------------------------------------
// The reference under hostile specs, with tiny real arrays.

/// Largest output the reference is asked to materialise in the fuzzer (elements); past it only
/// the `Err` cases are run (a hostile padding can ask for terabytes, which is the caller's call).
const REF_OUTPUT_LIMIT: usize = 1 << 16;

fn small_array(shape: [usize; 4], seed: u64) -> Array4<f64> {
    let mut s = seed | 1;
    Array4::from_shape_simple_fn(shape, || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % 2001) as f64 / 1000.0 - 1.0
    })
}

/// Tiny dims (product small), but hostile spec values.
fn tiny_dims() -> impl Strategy<Value = [usize; 4]> {
    [0usize..=2, 0usize..=3, 0usize..=4, 0usize..=4]
}

fn out_ok(shape: Option<[usize; 4]>) -> bool {
    shape.is_some_and(|s| product(&s).is_some_and(|p| p <= REF_OUTPUT_LIMIT))
}

/// Conv spec for the reference fuzzer: like [`conv_spec`] but the paddings are small or
/// hostile-but-refusable, so that accepted outputs stay small.
fn ref_conv_spec() -> impl Strategy<Value = Conv2dSpec> {
    let pad = prop_oneof![6 => 0usize..=3, 1 => hostile()];
    (
        [mostly_small(), mostly_small()],
        [pad.clone(), pad.clone(), pad.clone(), pad],
        [mostly_small(), mostly_small()],
        prop_oneof![6 => 1usize..=3, 1 => hostile()],
    )
        .prop_map(
            |(stride, [top, bottom, left, right], dilation, groups)| Conv2dSpec {
                stride,
                padding: Padding2d {
                    top,
                    bottom,
                    left,
                    right,
                },
                dilation,
                groups,
            },
        )
}

/// Every reference conv entry point (and all three methods) on one case: `Ok` exactly when the
/// geometry is accepted, the methods agree, and no panic.
#[allow(clippy::type_complexity)]
fn reference_conv_case(
    (spec, x, w, dy, bias_len, seed): (Conv2dSpec, [usize; 4], [usize; 4], [usize; 4], usize, u64),
) -> Result<(), TestCaseError> {
    let hw = [x[2], x[3]];
    let khw = [w[2], w[3]];
    let (xa, wa, dya) = (
        small_array(x, seed),
        small_array(w, seed ^ 1),
        small_array(dy, seed ^ 2),
    );
    let b = Array1::from_shape_fn(bias_len, |i| i as f64 * 0.25 - 0.5);

    let geo = spec.forward_geometry(x, w).ok().map(|g| g.y_shape());
    let bias_ok = bias_len == w[0];
    if geo.is_none() || out_ok(geo) {
        let r = no_panic("reference::conv2d_forward", || {
            reference::conv2d_forward(xa.view(), wa.view(), Some(b.view()), &spec)
        })?;
        prop_assert_eq!(
            r.is_ok(),
            geo.is_some() && bias_ok,
            "forward: {:?}",
            r.as_ref().err()
        );
        let d = no_panic("direct::conv2d_forward", || {
            direct::conv2d_forward(xa.view(), wa.view(), None, &spec)
        })?;
        let g = no_panic("gemm::conv2d_forward", || {
            gemm::conv2d_forward(xa.view(), wa.view(), None, &spec)
        })?;
        prop_assert_eq!(d.is_ok(), geo.is_some());
        if let (Ok(d), Ok(g)) = (&d, &g) {
            prop_assert_eq!(d.shape(), &geo.unwrap()[..]);
            let err = (d - g).iter().fold(0.0f64, |m, v| m.max(v.abs()));
            prop_assert!(err < 1e-9, "direct vs gemm forward differ by {err}");
        }
    }

    let geo = spec
        .backward_input_geometry(dy, w, hw)
        .ok()
        .map(|g| g.x_shape());
    if geo.is_none() || out_ok(geo) {
        let r = no_panic("reference::conv2d_backward_input", || {
            reference::conv2d_backward_input(dya.view(), wa.view(), hw, &spec)
        })?;
        let d = no_panic("direct::conv2d_backward_input", || {
            direct::conv2d_backward_input(dya.view(), wa.view(), hw, &spec)
        })?;
        prop_assert_eq!(r.is_ok(), geo.is_some());
        prop_assert_eq!(d.is_ok(), geo.is_some());
        if let (Ok(r), Ok(d)) = (&r, &d) {
            let e = (r - d).iter().fold(0.0f64, |m, v| m.max(v.abs()));
            prop_assert!(e < 1e-9, "dx methods differ: {e}");
        }
        // The transposed method materialises dy dilated to H + dil·(kh-1) rows: only where that
        // is small (or so large that it must be refused) is it run.
        let rows = |len: usize, k: usize, d: usize| len as u128 + d as u128 * (k as u128 - 1);
        let dyd = dy[0] as u128
            * dy[1] as u128
            * rows(hw[0], w[2].max(1), spec.dilation[0])
            * rows(hw[1], w[3].max(1), spec.dilation[1]);
        if geo.is_none() || dyd <= 1 << 20 {
            let t = no_panic("transposed::conv2d_backward_input", || {
                transposed::conv2d_backward_input(dya.view(), wa.view(), hw, &spec)
            })?;
            prop_assert_eq!(t.is_ok(), geo.is_some());
            if let (Ok(t), Ok(d)) = (&t, &d) {
                let e = (t - d).iter().fold(0.0f64, |m, v| m.max(v.abs()));
                prop_assert!(e < 1e-9, "transposed dx differs by {e}");
            }
        } else if dyd > 1 << 50 {
            let t = no_panic("transposed::conv2d_backward_input", || {
                transposed::conv2d_backward_input(dya.view(), wa.view(), hw, &spec)
            })?;
            prop_assert!(matches!(t, Err(Error::Overflow(_))), "{:?}", t.err());
        }
    }

    let geo = spec
        .backward_weight_geometry(x, dy, khw)
        .ok()
        .map(|g| g.w_shape());
    if geo.is_none() || out_ok(geo) {
        let r = no_panic("reference::conv2d_backward_weight", || {
            reference::conv2d_backward_weight(xa.view(), dya.view(), khw, &spec)
        })?;
        let d = no_panic("direct::conv2d_backward_weight", || {
            direct::conv2d_backward_weight(xa.view(), dya.view(), khw, &spec)
        })?;
        prop_assert_eq!(r.is_ok(), geo.is_some());
        if let (Ok(r), Ok(d)) = (&r, &d) {
            let e = (r - d).iter().fold(0.0f64, |m, v| m.max(v.abs()));
            prop_assert!(e < 1e-9, "dW methods differ: {e}");
        }
    }
    let db = no_panic("reference::conv2d_backward_bias", || {
        reference::conv2d_backward_bias(dya.view())
    })?;
    prop_assert_eq!(db.len(), dy[1]);
    Ok(())
}

/// A few hundred hostile specs through every reference conv entry point.
#[test]
fn reference_conv_hostile_specs_never_panic() {
    let strat = (
        ref_conv_spec(),
        tiny_dims(),
        tiny_dims(),
        any::<bool>(),
        0usize..=3,
        any::<u64>(),
    )
        .prop_flat_map(|(spec, x, w, derive, bias, seed)| {
            let mut w = w;
            let mut dy = [x[0], w[0], 1, 1];
            if derive {
                if spec.groups != 0 && spec.groups <= 3 {
                    w[1] = x[1] / spec.groups;
                }
                dy[1] = w[0];
                if let Ok([oh, ow]) = spec.output_hw([x[2], x[3]], [w[2], w[3]]) {
                    dy[2] = oh.min(64);
                    dy[3] = ow.min(64);
                }
            }
            let bias = if derive { w[0] } else { bias };
            (
                Just(spec),
                Just(x),
                Just(w),
                Just(dy),
                Just(bias),
                Just(seed),
            )
        });
    runner(400)
        .run(&strat, reference_conv_case)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[allow(clippy::type_complexity)]
fn reference_pool_case(
    (spec, x, dy, idx_shape, cip, seed): (
        Pool2dSpec,
        [usize; 4],
        [usize; 4],
        [usize; 4],
        bool,
        u64,
    ),
) -> Result<(), TestCaseError> {
    let hw = [x[2], x[3]];
    let xa = small_array(x, seed);
    let dya = small_array(dy, seed ^ 3);

    let geo = model_pool_geometry(&spec, x, false);
    if geo.is_none() || out_ok(geo) {
        let r = no_panic("reference::max_pool2d_forward", || {
            reference::max_pool2d_forward(xa.view(), &spec)
        })?;
        prop_assert_eq!(
            r.is_ok(),
            geo.is_some(),
            "max-pool forward: {:?}",
            r.as_ref().err()
        );
        if let Ok((y, i)) = &r {
            let plane = (x[2] * x[3]) as u32;
            prop_assert!(i.iter().all(|&i| i < plane), "index outside the plane");
            // Every value is the input element its index names.
            for (((n, c, _, _), &v), &i) in y.indexed_iter().zip(i.iter()) {
                let i = i as usize;
                prop_assert_eq!(v, xa[[n, c, i / x[3], i % x[3]]]);
            }
        }
    }
    let geo = model_pool_geometry(&spec, x, true);
    if geo.is_none() || out_ok(geo) {
        let r = no_panic("reference::avg_pool2d_forward", || {
            reference::avg_pool2d_forward(xa.view(), &spec, cip)
        })?;
        prop_assert_eq!(
            r.is_ok(),
            geo.is_some(),
            "avg-pool forward: {:?}",
            r.as_ref().err()
        );
        if let Ok(y) = &r {
            prop_assert!(
                y.iter().all(|v| v.is_finite()),
                "non-finite avg-pool output"
            );
        }
    }
    let bx = [dy[0], dy[1], hw[0], hw[1]];
    for avg in [false, true] {
        let geo = model_pool_geometry(&spec, bx, avg).filter(|y| [y[2], y[3]] == [dy[2], dy[3]]);
        if geo.is_some() && !out_ok(Some(bx)) {
            continue;
        }
        if avg {
            let r = no_panic("reference::avg_pool2d_backward", || {
                reference::avg_pool2d_backward(dya.view(), hw, &spec, cip)
            })?;
            prop_assert_eq!(
                r.is_ok(),
                geo.is_some(),
                "avg-pool backward: {:?}",
                r.as_ref().err()
            );
        } else {
            // Indices: valid (in the plane) or hostile, of dy's shape or not.
            let plane = hw[0].saturating_mul(hw[1]).max(1);
            let idx = Array4::from_shape_fn(idx_shape, |(a, b, c, d)| {
                ((a * 7 + b * 5 + c * 3 + d) as u64 ^ seed) as u32 % (plane as u32).max(1)
            });
            let hostile_idx = Array4::from_elem(dy, u32::MAX);
            for (ix, in_range) in [(&idx, true), (&hostile_idx, false)] {
                let r = no_panic("reference::max_pool2d_backward", || {
                    reference::max_pool2d_backward(dya.view(), ix.view(), hw, &spec)
                })?;
                let shape_ok = ix.shape() == dya.shape();
                // One index rule: an index outside its window's span (u32::MAX is) contributes
                // nothing; it is not an error.
                let want_ok = geo.is_some() && shape_ok;
                prop_assert_eq!(
                    r.is_ok(),
                    want_ok,
                    "max-pool backward: {:?}",
                    r.as_ref().err()
                );
                if let (Ok(dx), false) = (&r, in_range) {
                    prop_assert!(
                        dx.iter().all(|&v| v == 0.0) || (plane as u64) > u32::MAX as u64,
                        "hostile indices contributed"
                    );
                }
            }
        }
    }
    Ok(())
}

/// Pool spec for the reference fuzzer: small kernels so that accepted outputs stay small, hostile
/// strides, paddings and dilations.
fn ref_pool_spec() -> impl Strategy<Value = Pool2dSpec> {
    (
        [
            prop_oneof![6 => 1usize..=4, 1 => hostile()],
            prop_oneof![6 => 1usize..=4, 1 => hostile()],
        ],
        [mostly_small(), mostly_small()],
        [
            prop_oneof![4 => 0usize..=2, 1 => hostile()],
            prop_oneof![4 => 0usize..=2, 1 => hostile()],
        ],
        [
            prop_oneof![6 => 1usize..=3, 1 => hostile()],
            prop_oneof![6 => 1usize..=3, 1 => hostile()],
        ],
        any::<bool>(),
    )
        .prop_map(
            |(kernel, stride, padding, dilation, ceil_mode)| Pool2dSpec {
                kernel,
                stride,
                padding,
                dilation,
                ceil_mode,
            },
        )
}

/// A few hundred hostile pool specs through every reference pool entry point, with mismatched
/// dy and index shapes and out-of-range indices.
#[test]
fn reference_pool_hostile_specs_never_panic() {
    let strat = (
        ref_pool_spec(),
        tiny_dims(),
        tiny_dims(),
        any::<u8>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(spec, x, dy, mode, cip, seed)| {
            let mut dy = dy;
            if mode % 3 != 0
                && let Ok([oh, ow]) = spec.output_hw([x[2], x[3]])
            {
                dy = [x[0], x[1], oh.min(64), ow.min(64)];
            }
            let idx_shape = if mode % 5 == 0 {
                [dy[0], dy[1], dy[2], dy[3] + 1]
            } else {
                dy
            };
            (spec, x, dy, idx_shape, cip, seed)
        });
    runner(400)
        .run(&strat, reference_pool_case)
        .unwrap_or_else(|e| panic!("{e}"));
}

// ---------------------------------------------------------------------------------------------
// Named hostile cases, each once, for the table in docs/RELIABILITY.md.

/// A tiny input whose hostile padding asks for an output larger than the address space: `Err`
/// from every reference entry point, before any allocation.
#[test]
fn reference_refuses_outputs_past_the_address_space() {
    let x = Array4::<f32>::ones((1, 1, 1, 1));
    let w = Array4::<f32>::ones((1, 1, 1, 1));
    // 2^31 x 2^31 x f32 = 2^64 bytes: the element count fits usize, the bytes do not.
    let big = 1usize << 30;
    let spec = Conv2dSpec::new().with_padding(Padding2d::symmetric(big, big));
    let r = reference::conv2d_forward(x.view(), w.view(), None, &spec);
    assert!(matches!(r, Err(Error::Overflow(_))), "{r:?}");
    // 2^48 elements (1 PiB as f32): fits isize, but no machine has it; the allocation fails
    // and is reported instead of aborting the process.
    let spec = Conv2dSpec::new().with_padding(Padding2d::symmetric(1 << 23, 1 << 23));
    let r = reference::conv2d_forward(x.view(), w.view(), None, &spec);
    assert!(matches!(r, Err(Error::Overflow(_))), "{r:?}");
    let r = direct::conv2d_forward(x.view(), w.view(), None, &spec);
    assert!(matches!(r, Err(Error::Overflow(_))), "{r:?}");
    let dy = Array4::<f32>::ones((1, 1, 1, 1));
    let r = reference::conv2d_backward_input(
        dy.view(),
        w.view(),
        [1 << 24, 1 << 24],
        &Conv2dSpec::new().with_stride([1 << 24, 1 << 24]),
    );
    assert!(matches!(r, Err(Error::Overflow(_))), "{r:?}");
    // Pools: a dy of one element whose forward input was 2^24 x 2^24.
    let pool = Pool2dSpec::new([1 << 24, 1 << 24]);
    let r = reference::avg_pool2d_backward(dy.view(), [1 << 24, 1 << 24], &pool, true);
    assert!(matches!(r, Err(Error::Overflow(_))), "{r:?}");
    let idx = Array4::<u32>::zeros((1, 1, 1, 1));
    let r = reference::max_pool2d_backward(dy.view(), idx.view(), [1 << 24, 1 << 24], &pool);
    assert!(r.is_err(), "{r:?}");
}

/// dx by explicit transposed convolution under a dilation of 2^46: the dilated dy it would
/// materialise (2^46 rows) is refused; the other methods, which do not materialise it, answer.
#[test]
fn transposed_dx_refuses_a_dilated_dy_past_memory() {
    let d = 1usize << 46;
    let spec = Conv2dSpec::new()
        .with_dilation([d, 1])
        .with_padding(Padding2d {
            top: d,
            bottom: 0,
            left: 0,
            right: 0,
        });
    let dy = Array4::from_elem((1, 1, 1, 1), 2.0f64);
    let w = Array4::from_shape_vec((1, 1, 2, 1), vec![3.0, 5.0]).unwrap();
    // One output row: the window's first tap sits in the padding, its second on x[0].
    let want = reference::conv2d_backward_input(dy.view(), w.view(), [1, 1], &spec).unwrap();
    assert_eq!(want.into_raw_vec_and_offset().0, vec![10.0]);
    let direct = direct::conv2d_backward_input(dy.view(), w.view(), [1, 1], &spec).unwrap();
    assert_eq!(direct.into_raw_vec_and_offset().0, vec![10.0]);
    let r = transposed::conv2d_backward_input(dy.view(), w.view(), [1, 1], &spec);
    assert!(matches!(r, Err(Error::Overflow(_))), "{r:?}");
}
