//! Robustness of the shape math and the CPU reference under fuzzed, hostile inputs (issue 7).
//!
//! Every spec field and shape dimension is drawn from a mix of small values and hostile ones:
//! zero, powers of two and their neighbours up to 2^63, `i32::MAX`, `u32::MAX`, `isize::MAX`,
//! `usize::MAX` and its neighbours, values whose squares just overflow 64 bits, and uniformly
//! random 64-bit values. The shape math must answer `Ok` or `Err` and never panic, and where it
//! answers `Ok` it must agree with an independent model computed in 128-bit arithmetic. The
//! reference runs on tiny real arrays under the same hostile specs.
//!
//! The fuzzers use a fixed seed so that CI is reproducible; set `WGCONV_FUZZ_SEED` to explore
//! other cases locally.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ndarray::{Array1, Array4};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use wgconv::reference::{self, direct, gemm, transposed};
use wgconv::{Conv2dGeometry, Conv2dSpec, Error, Padding2d, Pool2dGeometry, Pool2dSpec};

const MAX: u128 = usize::MAX as u128;

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

/// Values chosen to break size arithmetic.
const SPECIAL: &[usize] = &[
    0,
    1,
    2,
    u16::MAX as usize,
    1 << 16,
    (1 << 16) + 1,
    i32::MAX as usize,
    1 << 31,
    u32::MAX as usize,
    1 << 32,
    (1 << 32) + 1,
    3_037_000_499, // floor(sqrt(2^63))
    3_037_000_500,
    4_294_967_295,
    1 << 40,
    isize::MAX as usize,
    (isize::MAX as usize) + 1,
    usize::MAX / 2 - 1,
    usize::MAX / 3,
    usize::MAX - 1,
    usize::MAX,
];

/// A size or spec value: mostly small, often hostile.
fn hostile() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..=6,
        2 => 7usize..=300,
        3 => prop::sample::select(SPECIAL),
        2 => (0u32..64, -1isize..=1).prop_map(|(b, d)| (1usize << b).wrapping_add_signed(d)),
        1 => any::<usize>(),
    ]
}

/// A size that is usually small and occasionally hostile (used where most cases should reach
/// the deeper checks).
fn mostly_small() -> impl Strategy<Value = usize> {
    prop_oneof![
        12 => 1usize..=9,
        1 => 0usize..=0,
        2 => hostile(),
    ]
}

/// Raw random words decoded into spec values. Proptest's value trees for nested unions are
/// costly to build (they made 100,000 cases take seconds); arrays of `u64` are cheap, and they
/// still shrink towards 0, which decodes to the smallest values.
struct Draw<'a>(std::slice::Iter<'a, u64>);

impl Draw<'_> {
    fn word(&mut self) -> u64 {
        *self.0.next().expect("enough random words")
    }
    fn below(&mut self, n: u64) -> usize {
        (self.word() % n) as usize
    }
    fn flag(&mut self) -> bool {
        self.word() & 1 == 1
    }
    /// Like [`hostile`]: mostly small, often hostile.
    fn hostile(&mut self) -> usize {
        hostile_from(self.word())
    }
    /// Like [`mostly_small`].
    fn mostly_small(&mut self) -> usize {
        let r = self.word();
        match r % 15 {
            0..=11 => 1 + (r >> 4) as usize % 9,
            12 => 0,
            _ => hostile_from(r >> 4),
        }
    }
    /// Mostly 1 (so that more cases reach the deeper checks), otherwise `mostly_small`.
    fn mostly_one(&mut self) -> usize {
        if self.below(5) < 3 {
            1
        } else {
            self.mostly_small()
        }
    }
    /// Small (0..=3) or hostile.
    fn pad(&mut self) -> usize {
        let r = self.word();
        if r % 5 < 3 {
            (r >> 3) as usize % 4
        } else {
            hostile_from(r >> 3)
        }
    }
    fn conv_spec(&mut self) -> Conv2dSpec {
        Conv2dSpec {
            stride: [self.mostly_small(), self.mostly_small()],
            padding: Padding2d {
                top: self.pad(),
                bottom: self.pad(),
                left: self.pad(),
                right: self.pad(),
            },
            dilation: [self.mostly_one(), self.mostly_one()],
            groups: if self.below(7) < 6 {
                1 + self.below(4)
            } else {
                self.hostile()
            },
        }
    }
    fn pool_spec(&mut self) -> Pool2dSpec {
        let kernel = [self.mostly_small(), self.mostly_small()];
        let stride = [self.mostly_small(), self.mostly_small()];
        let mut padding = [self.hostile(), self.hostile()];
        let dilation = [self.mostly_one(), self.mostly_one()];
        let ceil_mode = self.flag();
        // Most cases keep the padding legal (<= kernel / 2) so that the deeper checks run.
        if self.below(4) > 0 {
            padding = [
                padding[0] % (kernel[0] / 2 + 1),
                padding[1] % (kernel[1] / 2 + 1),
            ];
        }
        Pool2dSpec {
            kernel,
            stride,
            padding,
            dilation,
            ceil_mode,
        }
    }
    /// Tiny dimensions (zero included), or hostile ones.
    fn dims4(&mut self) -> [usize; 4] {
        if self.flag() {
            [self.below(3), self.below(4), self.below(6), self.below(6)]
        } else {
            [
                self.mostly_small(),
                self.mostly_small(),
                self.mostly_small(),
                self.mostly_small(),
            ]
        }
    }
}

/// The value [`hostile`] would draw, from one random word.
fn hostile_from(r: u64) -> usize {
    let v = r >> 4;
    match r & 15 {
        0..=7 => (v % 7) as usize,
        8 | 9 => 7 + (v % 294) as usize,
        10..=12 => SPECIAL[(v % SPECIAL.len() as u64) as usize],
        13 | 14 => (1usize << (v % 64)).wrapping_add_signed((v >> 6) as isize % 3 - 1),
        _ => r.rotate_left(29) as usize,
    }
}

// ---------------------------------------------------------------------------------------------
// The model: the documented formulas in 128-bit arithmetic, `None` where the library must err.

fn product(dims: &[usize]) -> Option<usize> {
    let p = dims.iter().try_fold(1u128, |acc, &d| {
        let v = acc * d as u128;
        (v <= MAX).then_some(v)
    })?;
    Some(p as usize)
}

fn span(kernel: usize, dilation: usize) -> Option<u128> {
    let s = dilation as u128 * (kernel as u128 - 1) + 1;
    (s <= MAX).then_some(s)
}

/// `(H + before + after - dil*(k-1) - 1) / stride + 1`.
fn model_conv_len(
    input: usize,
    kernel: usize,
    stride: usize,
    before: usize,
    after: usize,
    dilation: usize,
) -> Option<usize> {
    if input == 0 || kernel == 0 {
        return None;
    }
    let padded = input as u128 + before as u128 + after as u128;
    let span = span(kernel, dilation)?;
    if padded > MAX || span > padded {
        return None;
    }
    Some(((padded - span) / stride as u128 + 1) as usize)
}

fn model_conv_out(spec: &Conv2dSpec, input: [usize; 2], kernel: [usize; 2]) -> Option<[usize; 2]> {
    if spec.stride.contains(&0) || spec.dilation.contains(&0) || spec.groups == 0 {
        return None;
    }
    let p = spec.padding;
    Some([
        model_conv_len(
            input[0],
            kernel[0],
            spec.stride[0],
            p.top,
            p.bottom,
            spec.dilation[0],
        )?,
        model_conv_len(
            input[1],
            kernel[1],
            spec.stride[1],
            p.left,
            p.right,
            spec.dilation[1],
        )?,
    ])
}

/// The output shape `[n, k, oh, ow]` of a conv geometry the model accepts.
fn model_conv_geometry(
    spec: &Conv2dSpec,
    n: usize,
    c: usize,
    hw: [usize; 2],
    k: usize,
    khw: [usize; 2],
) -> Option<[usize; 4]> {
    let [oh, ow] = model_conv_out(spec, hw, khw)?;
    let g = spec.groups;
    if c == 0 || k == 0 || !c.is_multiple_of(g) || !k.is_multiple_of(g) {
        return None;
    }
    product(&[n, c, hw[0], hw[1]])?;
    product(&[k, c / g, khw[0], khw[1]])?;
    product(&[n, k, oh, ow])?;
    product(&[c / g, khw[0], khw[1], oh, ow])?;
    Some([n, k, oh, ow])
}

/// PyTorch's `pooling_output_shape` in 128-bit arithmetic.
fn model_pool_len(
    input: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
    ceil: bool,
) -> Option<usize> {
    if input == 0 {
        return None;
    }
    let padded = input as u128 + 2 * pad as u128;
    let span = span(kernel, dilation)?;
    let reach = padded + if ceil { stride as u128 - 1 } else { 0 };
    if padded > MAX || span > reach {
        return None;
    }
    let mut out = (reach - span) / stride as u128 + 1;
    if ceil && (out - 1) * stride as u128 >= input as u128 + pad as u128 {
        out -= 1;
    }
    Some(out as usize)
}

fn model_pool_valid(s: &Pool2dSpec) -> bool {
    !(s.kernel.contains(&0) || s.stride.contains(&0) || s.dilation.contains(&0))
        && (0..2).all(|a| s.padding[a] <= s.kernel[a] / 2)
}

fn model_pool_out(s: &Pool2dSpec, input: [usize; 2]) -> Option<[usize; 2]> {
    if !model_pool_valid(s) {
        return None;
    }
    let len = |a: usize| {
        model_pool_len(
            input[a],
            s.kernel[a],
            s.stride[a],
            s.padding[a],
            s.dilation[a],
            s.ceil_mode,
        )
    };
    Some([len(0)?, len(1)?])
}

/// Window `o` along one axis in 128-bit arithmetic: the max-pool scan's first in-bounds tap and
/// its clipped end, and the avg-pool `(start, end, span)`.
struct ModelWindow {
    max_first: i128,
    max_end: i128,
    avg: (i128, i128, i128),
}

fn model_window(input: usize, k: usize, s: usize, p: usize, d: usize, o: usize) -> ModelWindow {
    let (input, k, s, p, d, o) = (
        input as i128,
        k as i128,
        s as i128,
        p as i128,
        d as i128,
        o as i128,
    );
    let start = o * s - p;
    let span = d * (k - 1) + 1;
    let max_end = (start + span).min(input);
    let max_first = if start >= 0 {
        start
    } else {
        start + (-start + d - 1) / d * d
    };
    let avg_end = (start + k).min(input + p);
    let avg_span = avg_end - start;
    let (a0, a1) = (start.max(0), avg_end.min(input));
    ModelWindow {
        max_first,
        max_end,
        avg: (a0, a1.max(a0), avg_span),
    }
}

fn model_pool_geometry(s: &Pool2dSpec, x: [usize; 4], avg: bool) -> Option<[usize; 4]> {
    if avg && (s.dilation != [1, 1] || product(&s.kernel).is_none()) {
        return None;
    }
    product(&x)?;
    let [oh, ow] = model_pool_out(s, [x[2], x[3]])?;
    product(&[x[0], x[1], oh, ow])?;
    if x[0] > 0 && x[1] > 0 {
        for (a, out) in [(0, oh), (1, ow)] {
            let (input, k, st, p, d) = (
                x[2 + a],
                s.kernel[a],
                s.stride[a],
                s.padding[a],
                s.dilation[a],
            );
            // A window starting at -j (j <= p <= k/2 <= k-1 <= d(k-1)) reaches its first tap,
            // ceil(j/d)*d - j < d steps in, inside the input unless d > input. Only windows
            // starting in the padding can miss the input, and the accepted sizes bound their
            // number by the input size.
            if d <= input {
                continue;
            }
            for o in 0..out.min(p / st + 2) {
                let w = model_window(input, k, st, p, d, o);
                if w.max_first >= w.max_end {
                    return None;
                }
            }
        }
    }
    Some([x[0], x[1], oh, ow])
}

// ---------------------------------------------------------------------------------------------
// Checks of one case against the model.

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

/// Runs `f`, turning a panic into a test failure that names `what`.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        fail(format!("{what} panicked: {msg}"))
    })
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

fn runner(cases: u32) -> TestRunner {
    let seed = std::env::var("WGCONV_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0007);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_iters: 4096,
        ..Config::default()
    })
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
                let want_ok = geo.is_some()
                    && shape_ok
                    && (in_range || ix.is_empty() || (plane as u64) > u32::MAX as u64);
                prop_assert_eq!(
                    r.is_ok(),
                    want_ok,
                    "max-pool backward: {:?}",
                    r.as_ref().err()
                );
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

/// N = 0 and C = 0 give empty results from every reference entry point.
#[test]
fn empty_batch_and_channels() {
    let spec = Conv2dSpec::new();
    let x = Array4::<f64>::zeros((0, 2, 4, 4));
    let w = Array4::<f64>::ones((3, 2, 3, 3));
    let y = reference::conv2d_forward(x.view(), w.view(), None, &spec).unwrap();
    assert_eq!(y.shape(), &[0, 3, 2, 2]);
    let dx = reference::conv2d_backward_input(y.view(), w.view(), [4, 4], &spec).unwrap();
    assert_eq!(dx.shape(), &[0, 2, 4, 4]);
    let dw = reference::conv2d_backward_weight(x.view(), y.view(), [3, 3], &spec).unwrap();
    assert!(dw.iter().all(|&v| v == 0.0) && dw.shape() == [3, 2, 3, 3]);
    assert_eq!(
        reference::conv2d_backward_bias(y.view()).to_vec(),
        vec![0.0; 3]
    );
    // C = 0 is refused by conv (no channel to convolve) but is an empty pool.
    let c0 = Array4::<f64>::zeros((2, 0, 4, 4));
    let e = reference::conv2d_forward(c0.view(), Array4::zeros((1, 0, 3, 3)).view(), None, &spec);
    assert!(e.unwrap_err().to_string().contains("C = 0"));
    let pool = Pool2dSpec::new([2, 2]);
    let (y, i) = reference::max_pool2d_forward(c0.view(), &pool).unwrap();
    assert_eq!(
        (y.shape(), i.shape()),
        (&[2, 0, 2, 2][..], &[2, 0, 2, 2][..])
    );
    let dx = reference::max_pool2d_backward(y.view(), i.view(), [4, 4], &pool).unwrap();
    assert_eq!(dx.shape(), &[2, 0, 4, 4]);
    let y = reference::avg_pool2d_forward(c0.view(), &pool, false).unwrap();
    assert_eq!(
        reference::avg_pool2d_backward(y.view(), [4, 4], &pool, false)
            .unwrap()
            .shape(),
        &[2, 0, 4, 4]
    );
}
