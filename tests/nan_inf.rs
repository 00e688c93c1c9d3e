//! NaN and ±Inf through the conv ops (tiled and direct kernels), max-pool and avg-pool on the
//! GPU, against the reference and PyTorch's rules (docs/RELIABILITY.md, "NaN and Inf"): exactly
//! the outputs whose windows or reductions hold a non-finite value become non-finite.

mod common;

use common::Rng;
use common::*;
use ndarray::{Array, Array1, Array4, Dimension, Ix1};
use wgconv::compare::{GPU_TOLERANCE, compare};
use wgconv::reference::{self, direct};
use wgconv::{Algorithm, Conv2dSpec, Gpu, Padding2d, Pool2dSpec};

/// `mask[i]` iff `a[i]` is not finite.
fn nonfinite<D: Dimension>(a: &Array<f64, D>) -> Vec<bool> {
    a.iter().map(|v| !v.is_finite()).collect()
}

/// `mask[i]` iff `a[i] != 0`.
fn nonzero<D: Dimension>(a: &Array<f64, D>) -> Vec<bool> {
    a.iter().map(|&v| v != 0.0).collect()
}

/// An array of `shape` with values in ±[0.5, 1.5] (never zero), and `bad` at `at`.
fn spiked(rng: &mut Rng, shape: [usize; 4], at: Option<[usize; 4]>, bad: f64) -> Array4<f64> {
    let mut a = Array4::from_shape_simple_fn(shape, || {
        let u = rng.unit();
        (u.abs() + 0.5).copysign(u)
    });
    if let Some(at) = at {
        a[at] = bad;
    }
    a
}

/// 1 at `at`, else 0.
fn indicator(shape: [usize; 4], at: [usize; 4]) -> Array4<f64> {
    let mut a = Array4::zeros(shape);
    a[at] = 1.0;
    a
}

/// A NaN or ±Inf in x, w, bias or dy makes non-finite exactly the outputs whose windows (or
/// reductions) include it, on the GPU as in the reference; the rest stay finite and correct.
#[test]
fn conv_propagates_nan_and_inf_exactly_through_windows() {
    let mut fails = Vec::new();
    for algorithm in [Algorithm::Tiled, Algorithm::Direct] {
        let gpu = fresh(Gpu::builder().algorithm(algorithm).poison_outputs(true));
        fails.extend(conv_nan_inf(&gpu, &format!("{algorithm:?}")));
    }
    assert!(
        fails.is_empty(),
        "{} failures:\n{}",
        fails.len(),
        fails.join("\n")
    );
}

fn conv_nan_inf(gpu: &Gpu, algo: &str) -> Vec<String> {
    let mut fails = Vec::new();
    let mut rng = Rng::new(404);
    let cases = [
        (
            [2, 4, 7, 6],
            [4, 2, 3, 3],
            Conv2dSpec {
                stride: [2, 1],
                padding: Padding2d {
                    top: 1,
                    bottom: 0,
                    left: 2,
                    right: 1,
                },
                dilation: [1, 2],
                groups: 2,
            },
        ),
        (
            [1, 3, 6, 6],
            [2, 3, 2, 2],
            Conv2dSpec::new().with_stride([3, 3]),
        ),
    ];
    let ones_w = |ws: [usize; 4]| Array4::<f64>::ones(ws);
    for (ci, (xs, ws, spec)) in cases.into_iter().enumerate() {
        let [oh, ow] = spec.output_hw([xs[2], xs[3]], [ws[2], ws[3]]).unwrap();
        let ys = [xs[0], ws[0], oh, ow];
        let (hw, khw) = ([xs[2], xs[3]], [ws[2], ws[3]]);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            for &(where_, at) in &[
                ("x", [1 % xs[0], 1, 2, 3]),
                ("x", [0, 0, 0, 0]),
                ("x", [xs[0] - 1, xs[1] - 1, xs[2] - 1, xs[3] - 1]),
                ("w", [1, 0, 1, 0]),
                ("bias", [1, 0, 0, 0]),
                ("dy", [0, 1, 1, 0]),
                ("dy", [ys[0] - 1, ys[1] - 1, ys[2] - 1, ys[3] - 1]),
            ] {
                let what = format!("{algo} case {ci}, {bad} in {where_} at {at:?}");
                let x = spiked(&mut rng, xs, (where_ == "x").then_some(at), bad);
                let w = spiked(&mut rng, ws, (where_ == "w").then_some(at), bad);
                let dy = spiked(&mut rng, ys, (where_ == "dy").then_some(at), bad);
                let mut b = Array1::from_elem(ws[0], 0.25);
                if where_ == "bias" {
                    b[at[0]] = bad;
                }
                let (xf, wf, dyf, bf) = (f32s(&x), f32s(&w), f32s(&dy), f32s(&b));
                // Round-trip the inputs through f32 so that the reference sees the GPU's inputs.
                let (x, w, dy, b) = (f64s(&xf), f64s(&wf), f64s(&dyf), f64s(&bf));
                let (xt, wt, dyt, bt) = (
                    gpu.upload(&xf).unwrap(),
                    gpu.upload(&wf).unwrap(),
                    gpu.upload(&dyf).unwrap(),
                    gpu.upload(&bf).unwrap(),
                );

                // Forward.
                let y_ref =
                    reference::conv2d_forward(x.view(), w.view(), Some(b.view()), &spec).unwrap();
                let y = dl4(
                    gpu,
                    &gpu.conv2d_forward(&xt, &wt, Some(&bt), &spec).unwrap(),
                );
                let reach = match where_ {
                    "x" => nonzero(
                        &reference::conv2d_forward(
                            indicator(xs, at).view(),
                            ones_w(ws).view(),
                            None,
                            &spec,
                        )
                        .unwrap(),
                    ),
                    // Every output of the channel: taps over the zero padding multiply
                    // 0 x NaN = NaN (and 0 x Inf = NaN), as in PyTorch.
                    "w" | "bias" => (0..y_ref.len())
                        .map(|i| (i / (oh * ow)) % ws[0] == at[0])
                        .collect(),
                    _ => vec![false; y_ref.len()],
                };
                check_mask(
                    &mut fails,
                    &nonfinite(&y_ref),
                    &reach,
                    &format!("{what}: reference forward"),
                );
                let y_direct =
                    direct::conv2d_forward(x.view(), w.view(), Some(b.view()), &spec).unwrap();
                check_mask(
                    &mut fails,
                    &nonfinite(&y_direct),
                    &reach,
                    &format!("{what}: direct reference forward"),
                );
                check_mask(
                    &mut fails,
                    &nonfinite(&y),
                    &reach,
                    &format!("{what}: GPU forward"),
                );
                check_close(&mut fails, &y, &y_ref, &format!("{what}: forward"));
                if bad.is_nan() && !y.iter().zip(&reach).all(|(v, &r)| !r || v.is_nan()) {
                    fails.push(format!("{what}: an output reached by the NaN is not NaN"));
                }

                // dx: reached from dy (NaN/Inf in dy) or w.
                let dx_ref =
                    reference::conv2d_backward_input(dy.view(), w.view(), hw, &spec).unwrap();
                let dx = dl4(
                    gpu,
                    &gpu.conv2d_backward_input(&dyt, &wt, hw, &spec).unwrap(),
                );
                let reach = match where_ {
                    "dy" => nonzero(
                        &reference::conv2d_backward_input(
                            indicator(ys, at).view(),
                            ones_w(ws).view(),
                            hw,
                            &spec,
                        )
                        .unwrap(),
                    ),
                    "w" => nonzero(
                        &reference::conv2d_backward_input(
                            Array4::ones(ys).view(),
                            indicator(ws, at).view(),
                            hw,
                            &spec,
                        )
                        .unwrap(),
                    ),
                    _ => vec![false; dx_ref.len()],
                };
                check_mask(
                    &mut fails,
                    &nonfinite(&dx_ref),
                    &reach,
                    &format!("{what}: reference dx"),
                );
                // The implicit-GEMM dx (the tiled algorithm, which this case's channel counts
                // select) multiplies the zero border of dy like every other A element, so a
                // non-finite weight w[k, c, i, j] reaches every input position of channel
                // g*cg + c in the stride phase that tap (i, j) serves, also where the tap's
                // output row falls outside dy. The col2im reference skips those products.
                let reach_gpu = if where_ == "w" && algo == "Tiled" {
                    let (cg, kg) = (ws[1], ws[0] / spec.groups);
                    let ch = (at[0] / kg) * cg + at[1];
                    let serves = |pos: usize, pad: usize, tap: usize, d: usize, s: usize| {
                        (pos + pad) % s == (tap * d) % s
                    };
                    ndarray::indices(xs)
                        .into_iter()
                        .map(|(_, c, ih, iw)| {
                            c == ch
                                && serves(
                                    ih,
                                    spec.padding.top,
                                    at[2],
                                    spec.dilation[0],
                                    spec.stride[0],
                                )
                                && serves(
                                    iw,
                                    spec.padding.left,
                                    at[3],
                                    spec.dilation[1],
                                    spec.stride[1],
                                )
                        })
                        .collect()
                } else {
                    reach.clone()
                };
                check_mask(
                    &mut fails,
                    &nonfinite(&dx),
                    &reach_gpu,
                    &format!("{what}: GPU dx"),
                );
                if reach_gpu == reach {
                    check_close(&mut fails, &dx, &dx_ref, &format!("{what}: dx"));
                } else {
                    // Everywhere both are finite they agree.
                    let keep = |a: &Array4<f64>| {
                        a.iter()
                            .zip(&reach_gpu)
                            .map(|(&v, &r)| if r { 0.0 } else { v })
                            .collect::<Vec<f64>>()
                    };
                    let c = compare(keep(&dx), keep(&dx_ref));
                    if !c.passes(GPU_TOLERANCE) {
                        fails.push(format!("{what}: dx off the reached positions: {c:?}"));
                    }
                }

                // dW: reached from x or dy.
                let dw_ref =
                    reference::conv2d_backward_weight(x.view(), dy.view(), khw, &spec).unwrap();
                let dw = dl4(
                    gpu,
                    &gpu.conv2d_backward_weight(&xt, &dyt, khw, &spec).unwrap(),
                );
                let reach = match where_ {
                    "x" => nonzero(
                        &reference::conv2d_backward_weight(
                            indicator(xs, at).view(),
                            Array4::ones(ys).view(),
                            khw,
                            &spec,
                        )
                        .unwrap(),
                    ),
                    // Every tap of the channel (padding zeros again).
                    "dy" => (0..dw_ref.len())
                        .map(|i| i / (ws[1] * ws[2] * ws[3]) == at[1])
                        .collect(),
                    _ => vec![false; dw_ref.len()],
                };
                check_mask(
                    &mut fails,
                    &nonfinite(&dw_ref),
                    &reach,
                    &format!("{what}: reference dW"),
                );
                let dw_direct =
                    direct::conv2d_backward_weight(x.view(), dy.view(), khw, &spec).unwrap();
                check_mask(
                    &mut fails,
                    &nonfinite(&dw_direct),
                    &reach,
                    &format!("{what}: direct reference dW"),
                );
                check_mask(
                    &mut fails,
                    &nonfinite(&dw),
                    &reach,
                    &format!("{what}: GPU dW"),
                );
                check_close(&mut fails, &dw, &dw_ref, &format!("{what}: dW"));

                // db: the channel of a bad dy.
                let db_ref = reference::conv2d_backward_bias(dy.view());
                let db = f64s(
                    &gpu.download(&gpu.conv2d_backward_bias(&dyt).unwrap())
                        .unwrap()
                        .into_dimensionality::<Ix1>()
                        .unwrap(),
                );
                let reach: Vec<bool> = (0..ws[0]).map(|k| where_ == "dy" && k == at[1]).collect();
                check_mask(
                    &mut fails,
                    &nonfinite(&db_ref),
                    &reach,
                    &format!("{what}: reference db"),
                );
                check_mask(
                    &mut fails,
                    &nonfinite(&db),
                    &reach,
                    &format!("{what}: GPU db"),
                );
                check_close(&mut fails, &db, &db_ref, &format!("{what}: db"));
            }
        }
    }
    fails
}

/// Records where `got` and `want` (non-finite masks) differ.
fn check_mask(fails: &mut Vec<String>, got: &[bool], want: &[bool], what: &str) {
    let diff: Vec<usize> = (0..want.len()).filter(|&i| got[i] != want[i]).collect();
    if !diff.is_empty() {
        fails.push(format!(
            "{what}: non-finite at the wrong {} of {} positions (first flat {:?}; non-finite \
             {} got, {} expected)",
            diff.len(),
            want.len(),
            &diff[..diff.len().min(6)],
            got.iter().filter(|&&b| b).count(),
            want.iter().filter(|&&b| b).count()
        ));
    }
}

fn check_close<D: Dimension>(
    fails: &mut Vec<String>,
    got: &Array<f64, D>,
    want: &Array<f64, D>,
    what: &str,
) {
    let c = compare(got.iter().copied(), want.iter().copied());
    if !c.passes(GPU_TOLERANCE) {
        fails.push(format!(
            "{what}: max |gpu - ref| = {:e} at flat {}",
            c.max_abs_err, c.worst
        ));
    }
}

/// Max-pool follows PyTorch: a NaN wins its window and its (last) index is reported, +Inf wins
/// at its first occurrence, an all -Inf window gives -Inf at its first in-bounds element (never
/// the padding); backward routes dy (NaN included) to those indices. GPU and reference agree.
#[test]
fn max_pool_nan_and_inf_follow_pytorch() {
    let gpu = gpu();
    let (nan, inf) = (f64::NAN, f64::INFINITY);
    #[rustfmt::skip]
    let plane = [
        1.0, nan, -inf, -inf,
        3.0, nan, -inf, -inf,
        inf, 5.0, nan, inf,
        inf, 2.0, 7.0, -inf,
    ];
    #[rustfmt::skip]
    let padded_plane = [
        -inf, -inf, -inf, -inf,
        -inf, -inf, -inf, -inf,
        -inf, -inf, 4.0, -inf,
        -inf, -inf, -inf, nan,
    ];
    type Case<'a> = (&'a [f64], Pool2dSpec, Vec<f64>, Vec<u32>);
    let cases: [Case; 3] = [
        // NaN wins at its last occurrence even after +Inf; +Inf at its first; -Inf windows
        // report their first element.
        (
            &plane,
            Pool2dSpec::new([2, 2]),
            vec![nan, -inf, inf, nan],
            vec![5, 2, 8, 10],
        ),
        // Windows overhanging the padding: an all -Inf window reports its first in-bounds
        // element, never a padding position.
        (
            &padded_plane,
            Pool2dSpec::new([3, 3])
                .with_stride([2, 2])
                .with_padding([1, 1]),
            vec![-inf, -inf, -inf, nan],
            vec![0, 1, 4, 15],
        ),
        // Dilated windows: the scan order decides.
        (
            &plane,
            Pool2dSpec::new([2, 2])
                .with_stride([1, 2])
                .with_dilation([2, 1]),
            vec![nan, nan, nan, 7.0],
            vec![1, 10, 5, 14],
        ),
    ];
    for (data, spec, want_y, want_i) in cases {
        let what = format!("{spec:?}");
        let x = Array4::from_shape_vec((1, 1, 4, 4), data.to_vec()).unwrap();
        let (y_ref, i_ref) = reference::max_pool2d_forward(x.view(), &spec).unwrap();
        let xt = gpu.upload(&f32s(&x)).unwrap();
        let (yt, it) = gpu.max_pool2d_forward(&xt, &spec).unwrap();
        let y = dl4(gpu, &yt);
        let i = gpu.download_indices(&it).unwrap();
        let want = Array4::from_shape_vec(y_ref.dim(), want_y).unwrap();
        close(&y_ref, &want, &format!("{what}: reference values"));
        close(&y, &want, &format!("{what}: GPU values"));
        assert_eq!(
            i_ref.iter().copied().collect::<Vec<_>>(),
            want_i,
            "{what}: reference indices"
        );
        assert_eq!(
            i.iter().copied().collect::<Vec<_>>(),
            want_i,
            "{what}: GPU indices"
        );
        // Backward: dy (a NaN included) lands on the reported indices.
        let mut dy = Array4::from_shape_fn(y_ref.dim(), |(_, _, a, b)| (1 + a * 2 + b) as f64);
        dy[[0, 0, 0, 0]] = nan;
        let dx_ref =
            reference::max_pool2d_backward(dy.view(), i_ref.view(), [4, 4], &spec).unwrap();
        let dx = dl4(
            gpu,
            &gpu.max_pool2d_backward(&gpu.upload(&f32s(&dy)).unwrap(), &it, [4, 4], &spec)
                .unwrap(),
        );
        close(&dx, &dx_ref, &format!("{what}: dx"));
        let nan_at = want_i[0] as usize;
        assert!(
            dx.iter().nth(nan_at).unwrap().is_nan(),
            "{what}: NaN dy lost"
        );
        assert_eq!(nonfinite(&dx).iter().filter(|&&b| b).count(), 1, "{what}");
    }
}

/// Avg-pool propagates: a NaN or ±Inf makes non-finite exactly the outputs whose (clipped)
/// window holds it, +Inf and -Inf in one window give NaN; backward spreads a bad dy over its
/// window. GPU and reference agree.
#[test]
fn avg_pool_propagates_nan_and_inf() {
    let gpu = gpu();
    let mut rng = Rng::new(505);
    let xs = [1, 2, 7, 6];
    for spec in [
        Pool2dSpec::new([3, 3])
            .with_stride([2, 2])
            .with_padding([1, 1])
            .with_ceil_mode(true),
        Pool2dSpec::new([2, 3]).with_stride([1, 2]),
    ] {
        for cip in [true, false] {
            for (bad, at) in [
                (f64::NAN, [0, 1, 3, 2]),
                (f64::INFINITY, [0, 0, 0, 0]),
                (f64::NEG_INFINITY, [0, 1, 6, 5]),
            ] {
                let what = format!("{spec:?} cip {cip}: {bad} at {at:?}");
                let x = spiked(&mut rng, xs, Some(at), bad);
                let y_ref = reference::avg_pool2d_forward(x.view(), &spec, cip).unwrap();
                let y = dl4(
                    gpu,
                    &gpu.avg_pool2d_forward(&gpu.upload(&f32s(&x)).unwrap(), &spec, cip)
                        .unwrap(),
                );
                let reach = nonzero(
                    &reference::avg_pool2d_forward(indicator(xs, at).view(), &spec, cip).unwrap(),
                );
                assert_eq!(nonfinite(&y_ref), reach, "{what}: reference");
                assert_eq!(nonfinite(&y), reach, "{what}: GPU");
                close(&y, &y_ref, &what);
                // Backward with the bad value in dy.
                let dat = [0, at[1], 1, 1];
                let ys: [usize; 4] = y_ref.shape().try_into().unwrap();
                let dy = spiked(&mut rng, ys, Some(dat), bad);
                let dx_ref =
                    reference::avg_pool2d_backward(dy.view(), [xs[2], xs[3]], &spec, cip).unwrap();
                let dx = dl4(
                    gpu,
                    &gpu.avg_pool2d_backward(
                        &gpu.upload(&f32s(&dy)).unwrap(),
                        [xs[2], xs[3]],
                        &spec,
                        cip,
                    )
                    .unwrap(),
                );
                let reach = nonzero(
                    &reference::avg_pool2d_backward(
                        indicator(ys, dat).view(),
                        [xs[2], xs[3]],
                        &spec,
                        cip,
                    )
                    .unwrap(),
                );
                assert_eq!(nonfinite(&dx_ref), reach, "{what}: reference dx");
                assert_eq!(nonfinite(&dx), reach, "{what}: GPU dx");
                close(&dx, &dx_ref, &format!("{what}: dx"));
            }
        }
        // +Inf and -Inf in one window: NaN.
        let mut x = Array4::<f64>::ones(xs);
        x[[0, 0, 0, 0]] = f64::INFINITY;
        x[[0, 0, 0, 1]] = f64::NEG_INFINITY;
        let y_ref = reference::avg_pool2d_forward(x.view(), &spec, true).unwrap();
        let y = dl4(
            gpu,
            &gpu.avg_pool2d_forward(&gpu.upload(&f32s(&x)).unwrap(), &spec, true)
                .unwrap(),
        );
        assert!(y_ref[[0, 0, 0, 0]].is_nan() && y[[0, 0, 0, 0]].is_nan());
    }
}
