//! The shape math (`Conv2dSpec` and `Pool2dSpec`: output sizes, geometries, windows, divisors,
//! `Padding2d::same`) under fuzzed, hostile inputs (issue 7).
//!
//! Every spec field and shape dimension is drawn from a mix of small values and hostile ones
//! (`common::fuzz`). The shape math must answer `Ok` or `Err` and never panic, and where it
//! answers `Ok` it must agree with an independent model computed in 128-bit arithmetic
//! (`common::model`). Also named hostile pool windows, through the reference too.
//!
//! The fuzzers use a fixed seed so that CI is reproducible; set `WGCONV_FUZZ_SEED` to explore
//! other cases locally.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::fuzz::*;
use common::model::*;
use ndarray::Array4;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use wgconv::reference;
use wgconv::{Conv2dGeometry, Conv2dSpec, Error, Padding2d, Pool2dGeometry, Pool2dSpec};

/// How many fuzz cases each function accepted, by label: the fuzzer must reach the `Ok` paths,
/// not only the early errors.
static ACCEPTED: Mutex<BTreeMap<&'static str, usize>> = Mutex::new(BTreeMap::new());

fn accepted(what: &'static str) {
    *ACCEPTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(what)
        .or_default() += 1;
}

/// An error must name something: never an empty message.
fn check_err(what: &str, e: &Error) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    if msg.len() < 20 {
        return Err(fail(format!("{what}: error message too terse: {msg:?}")));
    }
    Ok(())
}

fn check_conv_geometry(
    what: &'static str,
    got: wgconv::Result<Conv2dGeometry>,
    want: Option<[usize; 4]>,
    x: [usize; 4],
    w: [usize; 4],
) -> Result<(), TestCaseError> {
    match (got, want) {
        (Err(e), None) => check_err(what, &e),
        (Ok(g), Some(y)) => {
            accepted(what);
            if g.y_shape() != y || g.x_shape() != x || g.w_shape() != w {
                return Err(fail(format!(
                    "{what}: geometry {g:?} disagrees with x {x:?} w {w:?} y {y:?}"
                )));
            }
            // Derived quantities must not panic and must agree with the model.
            let rem = no_panic("remainder", || g.remainder())?;
            let tp = no_panic("transposed_padding", || g.transposed_padding())?;
            let p = g.padding;
            for (a, (input, before, after, k, d, s)) in [
                (g.h, p.top, p.bottom, g.kh, g.dilation[0], g.stride[0]),
                (g.w, p.left, p.right, g.kw, g.dilation[1], g.stride[1]),
            ]
            .into_iter()
            .enumerate()
            {
                let padded = input as i128 + before as i128 + after as i128;
                let full = d as i128 * (k as i128 - 1);
                let r = (padded - full - 1) % s as i128;
                if rem[a] as i128 != r {
                    return Err(fail(format!("{what}: remainder {rem:?} axis {a} != {r}")));
                }
                let want_tp = (full - before as i128, full - after as i128 + r);
                let fits = |v: i128| v >= isize::MIN as i128 && v <= isize::MAX as i128;
                if fits(want_tp.0)
                    && fits(want_tp.1)
                    && (tp[a].0 as i128, tp[a].1 as i128) != want_tp
                {
                    return Err(fail(format!(
                        "{what}: transposed padding {tp:?} axis {a} != {want_tp:?}"
                    )));
                }
            }
            let flops = g.flops();
            if flops.is_nan() || flops < 0.0 {
                return Err(fail(format!("{what}: flops {flops}")));
            }
            Ok(())
        }
        (Ok(g), None) => Err(fail(format!("{what}: accepted {g:?}, the model refuses"))),
        (Err(e), Some(y)) => Err(fail(format!(
            "{what}: refused ({e}), the model gives y {y:?}"
        ))),
    }
}

fn check_pool_geometry(
    what: &'static str,
    got: wgconv::Result<Pool2dGeometry>,
    want: Option<[usize; 4]>,
    x: [usize; 4],
) -> Result<(), TestCaseError> {
    match (got, want) {
        (Err(e), None) => check_err(what, &e),
        (Ok(g), Some(y)) => {
            accepted(what);
            if g.y_shape() != y || g.x_shape() != x {
                return Err(fail(format!("{what}: {g:?} disagrees with y {y:?}")));
            }
            let s = g.spec;
            for (a, out, input) in [(0, g.oh, g.h), (1, g.ow, g.w)] {
                for o in [0, 1, out / 2, out - 1] {
                    if o >= out {
                        continue;
                    }
                    let m = model_window(
                        input,
                        s.kernel[a],
                        s.stride[a],
                        s.padding[a],
                        s.dilation[a],
                        o,
                    );
                    let (f, e) = no_panic("max_window", || g.max_window(a, o))?;
                    if (f as i128, e as i128) != (m.max_first, m.max_end) {
                        return Err(fail(format!(
                            "{what}: max_window({a}, {o}) = {:?}, model {:?}",
                            (f, e),
                            (m.max_first, m.max_end)
                        )));
                    }
                    if x[0] > 0 && x[1] > 0 && f >= e {
                        return Err(fail(format!("{what}: window {o} axis {a} is empty")));
                    }
                    if s.dilation == [1, 1] {
                        let (a0, a1, sp) = no_panic("avg_window", || g.avg_window(a, o))?;
                        if (a0 as i128, a1 as i128, sp as i128) != m.avg {
                            return Err(fail(format!(
                                "{what}: avg_window({a}, {o}) = {:?}, model {:?}",
                                (a0, a1, sp),
                                m.avg
                            )));
                        }
                    }
                }
            }
            // The divisor is defined for geometries an avg-pool accepts (kernel area in range).
            if s.dilation == [1, 1] && product(&s.kernel).is_some() {
                for (oh, ow) in [(0, 0), (g.oh - 1, g.ow - 1)] {
                    for cip in [true, false] {
                        let div = no_panic("avg_divisor", || g.avg_divisor(oh, ow, cip))?;
                        let (h, w) = (
                            model_window(g.h, s.kernel[0], s.stride[0], s.padding[0], 1, oh).avg,
                            model_window(g.w, s.kernel[1], s.stride[1], s.padding[1], 1, ow).avg,
                        );
                        let want = if cip {
                            h.2 * w.2
                        } else {
                            (h.1 - h.0) * (w.1 - w.0)
                        };
                        if div as i128 != want {
                            return Err(fail(format!(
                                "{what}: avg_divisor({oh}, {ow}, {cip}) = {div}, model {want}"
                            )));
                        }
                        if cip && div == 0 {
                            return Err(fail(format!("{what}: zero divisor")));
                        }
                    }
                }
            }
            Ok(())
        }
        (Ok(g), None) => Err(fail(format!("{what}: accepted {g:?}, the model refuses"))),
        (Err(e), Some(y)) => Err(fail(format!(
            "{what}: refused ({e}), the model gives y {y:?}"
        ))),
    }
}

/// One fuzz case of the shape math: every function, every result checked against the model.
fn shape_math_case((cspec, pspec, x, w, dy, hw, khw): ShapeCase) -> Result<(), TestCaseError> {
    // Conv2dSpec::output_hw
    let got = no_panic("Conv2dSpec::output_hw", || cspec.output_hw(hw, khw))?;
    let want = model_conv_out(&cspec, hw, khw);
    match (&got, want) {
        (Ok(o), Some(m)) if *o == m => accepted("Conv2dSpec::output_hw"),
        (Err(e), None) => check_err("output_hw", e)?,
        _ => {
            return Err(fail(format!(
                "output_hw({hw:?}, {khw:?}) = {got:?}, model {want:?}"
            )));
        }
    }
    // forward_geometry
    let got = no_panic("forward_geometry", || cspec.forward_geometry(x, w))?;
    let want = if cspec.groups != 0 && x[1] % cspec.groups == 0 && w[1] == x[1] / cspec.groups {
        model_conv_geometry(&cspec, x[0], x[1], [x[2], x[3]], w[0], [w[2], w[3]])
    } else {
        None
    };
    check_conv_geometry("forward_geometry", got, want, x, w)?;
    // backward_input_geometry: dy [n, k, oh, ow], w, input_hw
    let got = no_panic("backward_input_geometry", || {
        cspec.backward_input_geometry(dy, w, hw)
    })?;
    let c = (w[1] as u128) * (cspec.groups as u128);
    let want = if dy[1] == w[0] && c <= MAX {
        model_conv_geometry(&cspec, dy[0], c as usize, hw, w[0], [w[2], w[3]])
            .filter(|y| [y[2], y[3]] == [dy[2], dy[3]])
    } else {
        None
    };
    let xs = [dy[0], c as usize, hw[0], hw[1]];
    check_conv_geometry("backward_input_geometry", got, want, xs, w)?;
    // backward_weight_geometry: x, dy, kernel_hw
    let got = no_panic("backward_weight_geometry", || {
        cspec.backward_weight_geometry(x, dy, khw)
    })?;
    let want = if x[0] == dy[0] {
        model_conv_geometry(&cspec, x[0], x[1], [x[2], x[3]], dy[1], khw)
            .filter(|y| [y[2], y[3]] == [dy[2], dy[3]])
    } else {
        None
    };
    let g = cspec.groups.max(1);
    let ws = [dy[1], x[1] / g, khw[0], khw[1]];
    check_conv_geometry("backward_weight_geometry", got, want, x, ws)?;

    // Padding2d::same never panics; where its total fits, it splits it with the extra at the end
    // and keeps a stride-1 output the size of the input.
    let same = no_panic("Padding2d::same", || Padding2d::same(khw, cspec.dilation))?;
    for (a, (before, after)) in [(same.top, same.bottom), (same.left, same.right)]
        .into_iter()
        .enumerate()
    {
        let total = cspec.dilation[a] as u128 * (khw[a] as u128).saturating_sub(1);
        if total <= MAX
            && (before as u128 + after as u128 != total || after < before || after - before > 1)
        {
            return Err(fail(format!(
                "same({khw:?}, {:?}) = {same:?}",
                cspec.dilation
            )));
        }
    }
    let s = Conv2dSpec {
        stride: [1, 1],
        padding: same,
        dilation: cspec.dilation,
        groups: 1,
    };
    match no_panic("output_hw of same", || s.output_hw(hw, khw))? {
        Ok(o) if o == hw => {}
        Err(_) if model_conv_out(&s, hw, khw).is_none() => {}
        other => {
            return Err(fail(format!(
                "same padding {same:?} maps {hw:?} to {other:?} (kernel {khw:?})"
            )));
        }
    }

    // Pool2dSpec::output_hw, geometry, avg_geometry, backward_geometry
    let got = no_panic("Pool2dSpec::output_hw", || pspec.output_hw(hw))?;
    let want = model_pool_out(&pspec, hw);
    match (&got, want) {
        (Ok(o), Some(m)) if *o == m => {
            accepted("Pool2dSpec::output_hw");
            // ceil mode adds at most one window to floor mode, and the last window starts inside
            // the input or the left padding.
            for a in 0..2 {
                let st = pspec.stride[a] as u128;
                if (o[a] as u128 - 1) * st >= hw[a] as u128 + pspec.padding[a] as u128 {
                    return Err(fail(format!(
                        "pool output {o:?}: last window starts in the right padding"
                    )));
                }
            }
        }
        (Err(e), None) => check_err("pool output_hw", e)?,
        _ => {
            return Err(fail(format!(
                "pool output_hw({hw:?}) of {pspec:?} = {got:?}, model {want:?}"
            )));
        }
    }
    let got = no_panic("Pool2dSpec::geometry", || pspec.geometry(x))?;
    check_pool_geometry(
        "pool geometry",
        got,
        model_pool_geometry(&pspec, x, false),
        x,
    )?;
    let got = no_panic("Pool2dSpec::avg_geometry", || pspec.avg_geometry(x))?;
    check_pool_geometry("avg geometry", got, model_pool_geometry(&pspec, x, true), x)?;
    for avg in [false, true] {
        let got = no_panic("Pool2dSpec::backward_geometry", || {
            pspec.backward_geometry(dy, hw, avg)
        })?;
        let xs = [dy[0], dy[1], hw[0], hw[1]];
        let want = model_pool_geometry(&pspec, xs, avg).filter(|y| [y[2], y[3]] == [dy[2], dy[3]]);
        check_pool_geometry("pool backward_geometry", got, want, xs)?;
    }
    Ok(())
}

/// A case: conv spec, pool spec, x, w, dy, input_hw, kernel_hw.
type ShapeCase = (
    Conv2dSpec,
    Pool2dSpec,
    [usize; 4],
    [usize; 4],
    [usize; 4],
    [usize; 2],
    [usize; 2],
);

/// Shapes that are either tiny or hostile, and a dy that is often the true output shape of the
/// conv or of the pool.
fn shape_math_inputs() -> impl Strategy<Value = ShapeCase> {
    (any::<[u64; 20]>(), any::<[u64; 20]>()).prop_map(|(a, b)| {
        let words: Vec<u64> = a.into_iter().chain(b).collect();
        let mut d = Draw(words.iter());
        let (cspec, pspec) = (d.conv_spec(), d.pool_spec());
        let (x, mut w, mut dy) = (d.dims4(), d.dims4(), d.dims4());
        // Often make the shapes consistent, so that the later checks are reached.
        match d.below(3) {
            1 => {
                if cspec.groups != 0 && cspec.groups <= 4 {
                    w[1] = x[1] / cspec.groups;
                }
                dy[0] = x[0];
                dy[1] = w[0];
                if let Ok([oh, ow]) = cspec.output_hw([x[2], x[3]], [w[2], w[3]]) {
                    dy[2] = oh;
                    dy[3] = ow;
                }
            }
            2 => {
                if let Ok([oh, ow]) = pspec.output_hw([x[2], x[3]]) {
                    dy = [x[0], x[1], oh, ow];
                }
            }
            _ => {}
        }
        (cspec, pspec, x, w, dy, [x[2], x[3]], [w[2], w[3]])
    })
}

/// 100,000 fuzzed cases of all the shape math; a few seconds in `--release`.
#[test]
fn shape_math_never_panics_and_matches_the_model() {
    let cases = 100_000;
    let start = Instant::now();
    let result = runner(cases).run(&shape_math_inputs(), shape_math_case);
    let took = start.elapsed();
    eprintln!("shape math: {cases} fuzzed cases in {took:.2?}");
    if let Err(e) = result {
        panic!("{e}");
    }
    let counts = ACCEPTED.lock().unwrap().clone();
    eprintln!("accepted (Ok) cases per function: {counts:?}");
    for what in [
        "Conv2dSpec::output_hw",
        "forward_geometry",
        "backward_input_geometry",
        "backward_weight_geometry",
        "Pool2dSpec::output_hw",
        "pool geometry",
        "avg geometry",
        "pool backward_geometry",
    ] {
        let n = counts.get(what).copied().unwrap_or(0);
        assert!(
            n >= cases as usize / 200,
            "{what} accepted only {n} of {cases} cases"
        );
    }
    if !cfg!(debug_assertions) {
        assert!(
            took < Duration::from_secs(60),
            "100k shape-math cases took {took:?}"
        );
    }
}

/// PyTorch's ceil rule, case by case: ceil mode adds at most one window to floor mode and
/// never refuses what floor mode accepts.
#[test]
fn pool_ceil_mode_adds_at_most_one_window() {
    let mut r = runner(20_000);
    let strat = (any::<[u64; 12]>(), [1usize..=50, 1usize..=50])
        .prop_map(|(words, hw)| (Draw(words.iter()).pool_spec(), hw));
    r.run(&strat, |(spec, hw)| {
        let floor = Pool2dSpec {
            ceil_mode: false,
            ..spec
        };
        let ceil = Pool2dSpec {
            ceil_mode: true,
            ..spec
        };
        if let (Ok(f), Ok(c)) = (floor.output_hw(hw), ceil.output_hw(hw)) {
            for a in 0..2 {
                prop_assert!(
                    c[a] == f[a] || c[a] == f[a] + 1,
                    "{spec:?} {hw:?}: {f:?} {c:?}"
                );
            }
        }
        // ceil mode never refuses what floor mode accepts.
        if floor.output_hw(hw).is_ok() {
            prop_assert!(ceil.output_hw(hw).is_ok());
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

/// An avg-pool window whose area overflows 64 bits: an error, not a wrapped divisor.
#[test]
fn avg_pool_kernel_area_overflow_is_an_error() {
    let spec = Pool2dSpec::new([1 << 33, 1 << 33])
        .with_padding([1 << 32, 1 << 32])
        .with_stride([1, 1]);
    let r = spec.avg_geometry([1, 1, 1, 1]);
    assert!(matches!(r, Err(Error::Overflow(_))), "{r:?}");
    let x = Array4::<f64>::ones((1, 1, 1, 1));
    assert!(reference::avg_pool2d_forward(x.view(), &spec, true).is_err());
    // Max-pool has no divisor: the same spec is fine there.
    let (y, i) = reference::max_pool2d_forward(x.view(), &spec).unwrap();
    assert_eq!(y.shape(), &[1, 1, 2, 2]);
    assert!(y.iter().all(|&v| v == 1.0) && i.iter().all(|&i| i == 0));
}

/// A max-pool kernel longer than `isize::MAX` (accepted in ceil mode with an equally huge
/// stride): the window arithmetic must not wrap.
#[test]
fn max_pool_window_longer_than_isize_max() {
    let k = (1usize << 63) + 10;
    let spec = Pool2dSpec::new([k, 1])
        .with_stride([k, 1])
        .with_ceil_mode(true);
    let g = spec.geometry([1, 1, 1, 3]).expect("accepted: one window");
    assert_eq!(g.y_shape(), [1, 1, 1, 3]);
    assert_eq!(g.max_window(0, 0), (0, 1));
    let x = Array4::from_shape_vec((1, 1, 1, 3), vec![3.0f32, -1.0, 2.0]).unwrap();
    let (y, i) = reference::max_pool2d_forward(x.view(), &spec).unwrap();
    assert_eq!(y.into_raw_vec_and_offset().0, vec![3.0, -1.0, 2.0]);
    assert_eq!(i.into_raw_vec_and_offset().0, vec![0, 1, 2]);
}
