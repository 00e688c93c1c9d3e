//! Running one layer's ops on an engine (the GPU, or the CPU reference in f32), timing them and
//! checking each result against the reference in f64.

use std::time::Instant;

use ndarray::{Array, ArrayD, ArrayView4, ArrayViewD, Dimension, Ix1, Ix4, ShapeBuilder};
use wgconv::compare::{GPU_TOLERANCE, compare};
use wgconv::{Conv2dSpec, Gpu, IndexTensor, Pool2dSpec, Result, Tensor, reference};

use crate::report::{Check, OpResult, Shape};
use crate::suite::{Layer, LayerKind, Op};

/// How GPU time is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TimingMode {
    /// Timestamp queries when the adapter has them, else wall time.
    Auto,
    /// Timestamp queries (falls back to wall time when the adapter has none).
    Timestamp,
    /// Submit-to-completion wall time over many iterations.
    Wall,
}

/// Measurement options.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub warmup: usize,
    pub repeats: usize,
    pub check: bool,
    pub timing: TimingMode,
    /// In wall-time mode each sample runs the op back to back until it lasts at least this long.
    pub min_sample_ms: f64,
    pub max_iterations: usize,
    pub seed: u64,
}

/// The samples of one op.
#[derive(Clone, Debug)]
pub struct Measured {
    /// Milliseconds per op call, one per sample.
    pub samples_ms: Vec<f64>,
    /// Op calls per sample.
    pub iterations: usize,
    /// `"timestamp"` or `"wall"`.
    pub timing: &'static str,
}

/// Where the ops run: the eight ops plus moving data in and out and timing.
pub trait Engine {
    /// A float tensor.
    type T;
    /// An index tensor.
    type I;
    fn put<D: Dimension>(&self, a: &Array<f32, D>) -> Result<Self::T>;
    fn get(&self, t: &Self::T) -> Result<ArrayD<f32>>;
    fn get_indices(&self, t: &Self::I) -> Result<ArrayD<u32>>;
    /// Warm-up, then `cfg.repeats` samples; returns the last result.
    fn measure<R>(&self, cfg: &Config, f: impl FnMut() -> Result<R>) -> Result<(R, Measured)>;
    fn conv2d_forward(
        &self,
        x: &Self::T,
        w: &Self::T,
        b: Option<&Self::T>,
        s: &Conv2dSpec,
    ) -> Result<Self::T>;
    fn conv2d_backward_input(
        &self,
        dy: &Self::T,
        w: &Self::T,
        hw: [usize; 2],
        s: &Conv2dSpec,
    ) -> Result<Self::T>;
    fn conv2d_backward_weight(
        &self,
        x: &Self::T,
        dy: &Self::T,
        k: [usize; 2],
        s: &Conv2dSpec,
    ) -> Result<Self::T>;
    fn conv2d_backward_bias(&self, dy: &Self::T) -> Result<Self::T>;
    fn max_pool2d_forward(&self, x: &Self::T, s: &Pool2dSpec) -> Result<(Self::T, Self::I)>;
    fn max_pool2d_backward(
        &self,
        dy: &Self::T,
        idx: &Self::I,
        hw: [usize; 2],
        s: &Pool2dSpec,
    ) -> Result<Self::T>;
    fn avg_pool2d_forward(&self, x: &Self::T, s: &Pool2dSpec, cip: bool) -> Result<Self::T>;
    fn avg_pool2d_backward(
        &self,
        dy: &Self::T,
        hw: [usize; 2],
        s: &Pool2dSpec,
        cip: bool,
    ) -> Result<Self::T>;
    /// Frees cached memory between layers.
    fn release(&self) {}
}

/// Runs `f` `warmup` times, then takes samples of `iterations` back-to-back calls each, chosen
/// so that a sample lasts at least `min_sample_ms`; `sync` waits for the work to finish.
///
/// With `per_call` (the CPU, where a call ends when it returns) every call is timed on its own
/// and a sample is the median of its calls, so a thread descheduled on a busy machine does not
/// dominate; otherwise (the GPU without timestamps) a sample is the submit-to-completion time of
/// all its calls divided by their number.
fn measure_wall<R>(
    cfg: &Config,
    mut f: impl FnMut() -> Result<R>,
    sync: impl Fn() -> Result<()>,
    per_call: bool,
) -> Result<(R, Measured)> {
    for _ in 0..cfg.warmup {
        drop(f()?);
    }
    sync()?;
    let t = Instant::now();
    let mut last = f()?;
    sync()?;
    let one_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut iterations = if one_ms >= cfg.min_sample_ms {
        1
    } else {
        ((cfg.min_sample_ms / one_ms.max(1e-6)).ceil() as usize).clamp(1, cfg.max_iterations.max(1))
    };
    if per_call && one_ms < 100.0 {
        // A median of at least three calls.
        iterations = iterations.max(3);
    }
    let mut samples_ms = Vec::with_capacity(cfg.repeats);
    let mut calls = Vec::with_capacity(iterations);
    for _ in 0..cfg.repeats {
        calls.clear();
        let t = Instant::now();
        for _ in 0..iterations {
            let c = Instant::now();
            let out = f()?;
            if per_call {
                calls.push(c.elapsed().as_secs_f64() * 1e3);
            }
            last = out;
        }
        sync()?;
        samples_ms.push(if per_call {
            crate::report::median(&calls)
        } else {
            t.elapsed().as_secs_f64() * 1e3 / iterations as f64
        });
    }
    Ok((
        last,
        Measured {
            samples_ms,
            iterations,
            timing: "wall",
        },
    ))
}

/// Least time the GPU runs an op before its timed samples (unless `--warmup 0`).
const WARM_UP: std::time::Duration = std::time::Duration::from_millis(150);

/// The GPU engine.
pub struct GpuEngine<'a> {
    pub gpu: &'a Gpu,
}

impl GpuEngine<'_> {
    /// Whether this run times with timestamp queries.
    pub fn uses_timestamps(&self, mode: TimingMode) -> bool {
        mode != TimingMode::Wall && self.gpu.has_timestamps()
    }
}

impl Engine for GpuEngine<'_> {
    type T = Tensor;
    type I = IndexTensor;

    fn put<D: Dimension>(&self, a: &Array<f32, D>) -> Result<Tensor> {
        self.gpu.upload(a)
    }
    fn get(&self, t: &Tensor) -> Result<ArrayD<f32>> {
        self.gpu.download(t)
    }
    fn get_indices(&self, t: &IndexTensor) -> Result<ArrayD<u32>> {
        self.gpu.download_indices(t)
    }

    fn measure<R>(&self, cfg: &Config, mut f: impl FnMut() -> Result<R>) -> Result<(R, Measured)> {
        let gpu = self.gpu;
        if !self.uses_timestamps(cfg.timing) {
            return measure_wall(cfg, f, || gpu.synchronize(), false);
        }
        // Warm up by count and by time: a GPU left idle while the CPU checked the previous
        // result runs at a low clock for a while (seen on an H100: 5x slower first samples).
        let start = std::time::Instant::now();
        let mut calls = 0;
        while calls < cfg.warmup || (cfg.warmup > 0 && start.elapsed() < WARM_UP && calls < 2000) {
            drop(f()?);
            calls += 1;
            if calls % 16 == 0 {
                gpu.synchronize()?;
            }
        }
        gpu.synchronize()?;
        let mut last = None;
        let mut samples_ms = Vec::with_capacity(cfg.repeats);
        for _ in 0..cfg.repeats {
            let (out, ms) = gpu.time_gpu(&mut f)?;
            match ms {
                Some(ms) => samples_ms.push(ms),
                // Not reachable when has_timestamps(); measure this op by wall time instead.
                None => return measure_wall(cfg, f, || gpu.synchronize(), false),
            }
            last = Some(out);
        }
        let last = match last {
            Some(l) => l,
            None => f()?,
        };
        Ok((
            last,
            Measured {
                samples_ms,
                iterations: 1,
                timing: "timestamp",
            },
        ))
    }

    fn conv2d_forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        s: &Conv2dSpec,
    ) -> Result<Tensor> {
        self.gpu.conv2d_forward(x, w, b, s)
    }
    fn conv2d_backward_input(
        &self,
        dy: &Tensor,
        w: &Tensor,
        hw: [usize; 2],
        s: &Conv2dSpec,
    ) -> Result<Tensor> {
        self.gpu.conv2d_backward_input(dy, w, hw, s)
    }
    fn conv2d_backward_weight(
        &self,
        x: &Tensor,
        dy: &Tensor,
        k: [usize; 2],
        s: &Conv2dSpec,
    ) -> Result<Tensor> {
        self.gpu.conv2d_backward_weight(x, dy, k, s)
    }
    fn conv2d_backward_bias(&self, dy: &Tensor) -> Result<Tensor> {
        self.gpu.conv2d_backward_bias(dy)
    }
    fn max_pool2d_forward(&self, x: &Tensor, s: &Pool2dSpec) -> Result<(Tensor, IndexTensor)> {
        self.gpu.max_pool2d_forward(x, s)
    }
    fn max_pool2d_backward(
        &self,
        dy: &Tensor,
        idx: &IndexTensor,
        hw: [usize; 2],
        s: &Pool2dSpec,
    ) -> Result<Tensor> {
        self.gpu.max_pool2d_backward(dy, idx, hw, s)
    }
    fn avg_pool2d_forward(&self, x: &Tensor, s: &Pool2dSpec, cip: bool) -> Result<Tensor> {
        self.gpu.avg_pool2d_forward(x, s, cip)
    }
    fn avg_pool2d_backward(
        &self,
        dy: &Tensor,
        hw: [usize; 2],
        s: &Pool2dSpec,
        cip: bool,
    ) -> Result<Tensor> {
        self.gpu.avg_pool2d_backward(dy, hw, s, cip)
    }
    fn release(&self) {
        self.gpu.clear_pool();
    }
}

/// The CPU engine: the reference's fast path in f32.
pub struct CpuEngine;

fn v4(a: &ArrayD<f32>) -> ArrayView4<'_, f32> {
    a.view()
        .into_dimensionality::<Ix4>()
        .expect("the benchmark only makes 4-D tensors here")
}

impl Engine for CpuEngine {
    type T = ArrayD<f32>;
    type I = ArrayD<u32>;

    fn put<D: Dimension>(&self, a: &Array<f32, D>) -> Result<ArrayD<f32>> {
        Ok(a.clone().into_dyn())
    }
    fn get(&self, t: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        Ok(t.clone())
    }
    fn get_indices(&self, t: &ArrayD<u32>) -> Result<ArrayD<u32>> {
        Ok(t.clone())
    }
    fn measure<R>(&self, cfg: &Config, f: impl FnMut() -> Result<R>) -> Result<(R, Measured)> {
        measure_wall(cfg, f, || Ok(()), true)
    }

    fn conv2d_forward(
        &self,
        x: &ArrayD<f32>,
        w: &ArrayD<f32>,
        b: Option<&ArrayD<f32>>,
        s: &Conv2dSpec,
    ) -> Result<ArrayD<f32>> {
        let b = b.map(|b| b.view().into_dimensionality::<Ix1>().expect("bias is 1-D"));
        Ok(reference::conv2d_forward(v4(x), v4(w), b, s)?.into_dyn())
    }
    fn conv2d_backward_input(
        &self,
        dy: &ArrayD<f32>,
        w: &ArrayD<f32>,
        hw: [usize; 2],
        s: &Conv2dSpec,
    ) -> Result<ArrayD<f32>> {
        Ok(reference::conv2d_backward_input(v4(dy), v4(w), hw, s)?.into_dyn())
    }
    fn conv2d_backward_weight(
        &self,
        x: &ArrayD<f32>,
        dy: &ArrayD<f32>,
        k: [usize; 2],
        s: &Conv2dSpec,
    ) -> Result<ArrayD<f32>> {
        Ok(reference::conv2d_backward_weight(v4(x), v4(dy), k, s)?.into_dyn())
    }
    fn conv2d_backward_bias(&self, dy: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        Ok(reference::conv2d_backward_bias(v4(dy)).into_dyn())
    }
    fn max_pool2d_forward(
        &self,
        x: &ArrayD<f32>,
        s: &Pool2dSpec,
    ) -> Result<(ArrayD<f32>, ArrayD<u32>)> {
        let (y, i) = reference::max_pool2d_forward(v4(x), s)?;
        Ok((y.into_dyn(), i.into_dyn()))
    }
    fn max_pool2d_backward(
        &self,
        dy: &ArrayD<f32>,
        idx: &ArrayD<u32>,
        hw: [usize; 2],
        s: &Pool2dSpec,
    ) -> Result<ArrayD<f32>> {
        let idx = idx
            .view()
            .into_dimensionality::<Ix4>()
            .expect("indices are 4-D");
        Ok(reference::max_pool2d_backward(v4(dy), idx, hw, s)?.into_dyn())
    }
    fn avg_pool2d_forward(
        &self,
        x: &ArrayD<f32>,
        s: &Pool2dSpec,
        cip: bool,
    ) -> Result<ArrayD<f32>> {
        Ok(reference::avg_pool2d_forward(v4(x), s, cip)?.into_dyn())
    }
    fn avg_pool2d_backward(
        &self,
        dy: &ArrayD<f32>,
        hw: [usize; 2],
        s: &Pool2dSpec,
        cip: bool,
    ) -> Result<ArrayD<f32>> {
        Ok(reference::avg_pool2d_backward(v4(dy), hw, s, cip)?.into_dyn())
    }
}

/// Deterministic uniform values in `[-1, 1)` (SplitMix64), never all zero.
pub fn random<Sh: ShapeBuilder>(shape: Sh, seed: u64) -> Array<f32, Sh::Dim> {
    let mut state = seed;
    Array::from_shape_simple_fn(shape, || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
    })
}

/// A seed from the run's seed, the layer's name and the tensor's role.
fn seed_for(base: u64, layer: &str, role: &str) -> u64 {
    // FNV-1a.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ base;
    for b in layer.bytes().chain([0]).chain(role.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A check's outcome.
#[derive(Clone, Debug)]
pub struct CheckOutcome {
    pub check: Check,
    pub max_rel_err: Option<f64>,
    /// What differed, for mismatches.
    pub detail: Option<String>,
}

impl CheckOutcome {
    fn skipped() -> Self {
        CheckOutcome {
            check: Check::Skipped,
            max_rel_err: None,
            detail: None,
        }
    }
}

/// Compares a result with the f64 reference at [`GPU_TOLERANCE`].
pub fn check_values(got: ArrayViewD<f32>, want: ArrayViewD<f64>) -> CheckOutcome {
    if got.shape() != want.shape() {
        return CheckOutcome {
            check: Check::Mismatch,
            max_rel_err: None,
            detail: Some(format!(
                "shape {:?}, expected {:?}",
                got.shape(),
                want.shape()
            )),
        };
    }
    let c = compare(got.iter().map(|&v| f64::from(v)), want.iter().copied());
    let ok = c.passes(GPU_TOLERANCE);
    let detail = (!ok).then(|| {
        let got_v = got.iter().nth(c.worst).copied().unwrap_or(f32::NAN);
        let want_v = want.iter().nth(c.worst).copied().unwrap_or(f64::NAN);
        format!(
            "max |got - ref| = {:.3e} at flat index {} (got {got_v}, ref {want_v}), scale {:.3e}, \
             relative {:.3e} > tolerance {GPU_TOLERANCE:e}",
            c.max_abs_err,
            c.worst,
            c.scale,
            c.rel_err()
        )
    });
    CheckOutcome {
        check: if ok { Check::Ok } else { Check::Mismatch },
        max_rel_err: Some(c.rel_err()),
        detail,
    }
}

/// Values checked as [`check_values`], indices exactly.
fn check_with_indices(
    got: ArrayViewD<f32>,
    want: ArrayViewD<f64>,
    got_idx: ArrayViewD<u32>,
    want_idx: ArrayViewD<u32>,
) -> CheckOutcome {
    let mut out = check_values(got, want);
    if got_idx.shape() != want_idx.shape() {
        out.check = Check::Mismatch;
        out.detail = Some(format!(
            "index shape {:?}, expected {:?}",
            got_idx.shape(),
            want_idx.shape()
        ));
        return out;
    }
    let wrong = got_idx
        .iter()
        .zip(want_idx.iter())
        .filter(|(a, b)| a != b)
        .count();
    if wrong > 0 {
        let first = got_idx
            .iter()
            .zip(want_idx.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        out.check = Check::Mismatch;
        let prev = out
            .detail
            .take()
            .map(|d| format!("; {d}"))
            .unwrap_or_default();
        out.detail = Some(format!(
            "{wrong} of {} indices differ, first at flat index {first} (got {}, ref {}){prev}",
            want_idx.len(),
            got_idx.iter().nth(first).copied().unwrap_or(0),
            want_idx.iter().nth(first).copied().unwrap_or(0),
        ));
    }
    out
}

/// FLOPs (or element ops, for db and pools) and the minimum bytes moved by `op` on `layer`.
///
/// conv forward, dx and dW: `2·N·K·OH·OW·(C/g)·kh·kw` FLOPs. db: one add per dy element.
/// Max-pool forward: one compare per window tap (`N·C·OH·OW·kh·kw`); backward: one add per dy
/// element. Avg-pool forward and backward: one add per window tap. Bytes: every input read once
/// and every output written once, 4 bytes per f32/u32 element.
pub fn work(kind: &LayerKind, op: Op) -> Result<(f64, f64)> {
    let num = |s: &[usize]| s.iter().map(|&v| v as f64).product::<f64>();
    Ok(match *kind {
        LayerKind::Conv { x, k, kernel, spec } => {
            let g =
                spec.forward_geometry(x, [k, x[1] / spec.groups.max(1), kernel[0], kernel[1]])?;
            let (xs, ws, ys) = (num(&g.x_shape()), num(&g.w_shape()), num(&g.y_shape()));
            let kf = k as f64;
            match op {
                Op::ConvForward => (g.flops(), 4.0 * (xs + ws + kf + ys)),
                Op::ConvBackwardInput => (g.flops(), 4.0 * (ys + ws + xs)),
                Op::ConvBackwardWeight => (g.flops(), 4.0 * (xs + ys + ws)),
                _ => (ys, 4.0 * (ys + kf)),
            }
        }
        LayerKind::MaxPool { x, spec } => {
            let g = spec.geometry(x)?;
            let (xs, ys) = (num(&g.x_shape()), num(&g.y_shape()));
            match op {
                Op::MaxPoolForward => (ys * num(&spec.kernel), 4.0 * (xs + 2.0 * ys)),
                _ => (ys, 4.0 * (2.0 * ys + xs)),
            }
        }
        LayerKind::AvgPool { x, spec, .. } => {
            let g = spec.avg_geometry(x)?;
            let (xs, ys) = (num(&g.x_shape()), num(&g.y_shape()));
            (ys * num(&spec.kernel), 4.0 * (xs + ys))
        }
    })
}

/// The JSON `shape` of a layer.
pub fn shape_of(kind: &LayerKind) -> Shape {
    match *kind {
        LayerKind::Conv { x, k, kernel, spec } => Shape::conv(x, k, kernel, &spec),
        LayerKind::MaxPool { x, spec } => Shape::pool(x, &spec, None),
        LayerKind::AvgPool {
            x,
            spec,
            count_include_pad,
        } => Shape::pool(x, &spec, Some(count_include_pad)),
    }
}

fn f64s<D: Dimension>(a: &Array<f32, D>) -> Array<f64, D> {
    a.mapv(f64::from)
}

fn dyn4(a: &ArrayD<f64>) -> ArrayView4<'_, f64> {
    a.view().into_dimensionality::<Ix4>().expect("4-D")
}

/// Runs every op of `layer` on `engine`, calling `emit` with each result as it completes.
pub fn run_layer<E: Engine>(
    engine: &E,
    cfg: &Config,
    layer: &Layer,
    emit: &mut dyn FnMut(OpResult),
) -> Result<()> {
    let seed = |role: &str| seed_for(cfg.seed, &layer.name, role);
    let mut result = |op: Op, m: Measured, c: CheckOutcome| -> Result<()> {
        let (flops, bytes) = work(&layer.kind, op)?;
        emit(OpResult::new(
            layer,
            op,
            shape_of(&layer.kind),
            m,
            c,
            flops,
            bytes,
        ));
        Ok(())
    };
    let x = random(layer.kind.x(), seed("x"));
    let xt = engine.put(&x)?;
    let x64 = cfg.check.then(|| f64s(&x));
    match layer.kind {
        LayerKind::Conv {
            x: xs,
            k,
            kernel,
            spec,
        } => {
            let g = spec.forward_geometry(xs, [k, xs[1] / spec.groups, kernel[0], kernel[1]])?;
            let w = random(g.w_shape(), seed("w"));
            let b = random(ndarray::Ix1(k), seed("b"));
            let dy = random(g.y_shape(), seed("dy"));
            let (wt, bt, dyt) = (engine.put(&w)?, engine.put(&b)?, engine.put(&dy)?);
            let refs = x64.as_ref().map(|x64| (x64, f64s(&w), f64s(&b), f64s(&dy)));
            let hw = [g.h, g.w];

            let (y, m) =
                engine.measure(cfg, || engine.conv2d_forward(&xt, &wt, Some(&bt), &spec))?;
            let c = match &refs {
                Some((x, w, b, _)) => {
                    let want =
                        reference::conv2d_forward(x.view(), w.view(), Some(b.view()), &spec)?;
                    check_values(engine.get(&y)?.view(), want.view().into_dyn())
                }
                None => CheckOutcome::skipped(),
            };
            drop(y);
            result(Op::ConvForward, m, c)?;

            let (dx, m) =
                engine.measure(cfg, || engine.conv2d_backward_input(&dyt, &wt, hw, &spec))?;
            let c = match &refs {
                Some((_, w, _, dy)) => {
                    let want = reference::conv2d_backward_input(dy.view(), w.view(), hw, &spec)?;
                    check_values(engine.get(&dx)?.view(), want.view().into_dyn())
                }
                None => CheckOutcome::skipped(),
            };
            drop(dx);
            result(Op::ConvBackwardInput, m, c)?;

            let (dw, m) = engine.measure(cfg, || {
                engine.conv2d_backward_weight(&xt, &dyt, kernel, &spec)
            })?;
            let c = match &refs {
                Some((x, _, _, dy)) => {
                    let want =
                        reference::conv2d_backward_weight(x.view(), dy.view(), kernel, &spec)?;
                    check_values(engine.get(&dw)?.view(), want.view().into_dyn())
                }
                None => CheckOutcome::skipped(),
            };
            drop(dw);
            result(Op::ConvBackwardWeight, m, c)?;

            let (db, m) = engine.measure(cfg, || engine.conv2d_backward_bias(&dyt))?;
            let c = match &refs {
                Some((_, _, _, dy)) => {
                    let want = reference::conv2d_backward_bias(dy.view());
                    check_values(engine.get(&db)?.view(), want.view().into_dyn())
                }
                None => CheckOutcome::skipped(),
            };
            drop(db);
            result(Op::ConvBackwardBias, m, c)?;
        }
        LayerKind::MaxPool { x: xs, spec } => {
            let g = spec.geometry(xs)?;
            let hw = [g.h, g.w];
            let dy = random(g.y_shape(), seed("dy"));
            let dyt = engine.put(&dy)?;

            let ((y, idx), m) = engine.measure(cfg, || engine.max_pool2d_forward(&xt, &spec))?;
            // The backward uses the engine's own indices; the reference backward too, so each
            // check stands on its own.
            let idx_host = if cfg.check {
                Some(engine.get_indices(&idx)?)
            } else {
                None
            };
            let c = match (&x64, &idx_host) {
                (Some(x), Some(got_idx)) => {
                    let (want, want_idx) = reference::max_pool2d_forward(x.view(), &spec)?;
                    check_with_indices(
                        engine.get(&y)?.view(),
                        want.view().into_dyn(),
                        got_idx.view(),
                        want_idx.view().into_dyn(),
                    )
                }
                _ => CheckOutcome::skipped(),
            };
            drop(y);
            result(Op::MaxPoolForward, m, c)?;

            let (dx, m) =
                engine.measure(cfg, || engine.max_pool2d_backward(&dyt, &idx, hw, &spec))?;
            let c = match &idx_host {
                Some(got_idx) => {
                    let idx4 = got_idx.view().into_dimensionality::<Ix4>().expect("4-D");
                    let want = reference::max_pool2d_backward(f64s(&dy).view(), idx4, hw, &spec)?;
                    check_values(engine.get(&dx)?.view(), want.view().into_dyn())
                }
                None => CheckOutcome::skipped(),
            };
            result(Op::MaxPoolBackward, m, c)?;
        }
        LayerKind::AvgPool {
            x: xs,
            spec,
            count_include_pad: cip,
        } => {
            let g = spec.avg_geometry(xs)?;
            let hw = [g.h, g.w];
            let dy = random(g.y_shape(), seed("dy"));
            let dyt = engine.put(&dy)?;

            let (y, m) = engine.measure(cfg, || engine.avg_pool2d_forward(&xt, &spec, cip))?;
            let c = match &x64 {
                Some(x) => {
                    let want = reference::avg_pool2d_forward(x.view(), &spec, cip)?;
                    check_values(engine.get(&y)?.view(), want.view().into_dyn())
                }
                None => CheckOutcome::skipped(),
            };
            drop(y);
            result(Op::AvgPoolForward, m, c)?;

            let (dx, m) =
                engine.measure(cfg, || engine.avg_pool2d_backward(&dyt, hw, &spec, cip))?;
            let c = if cfg.check {
                let dy64 = f64s(&dy).into_dyn();
                let want = reference::avg_pool2d_backward(dyn4(&dy64), hw, &spec, cip)?;
                check_values(engine.get(&dx)?.view(), want.view().into_dyn())
            } else {
                CheckOutcome::skipped()
            };
            result(Op::AvgPoolBackward, m, c)?;
        }
    }
    engine.release();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_is_in_range_and_seeded() {
        let a = random(ndarray::Ix1(1000), 7);
        assert!(a.iter().all(|&v| (-1.0..1.0).contains(&v)));
        assert!(a.iter().any(|&v| v != 0.0));
        assert_eq!(a, random(ndarray::Ix1(1000), 7));
        assert_ne!(a, random(ndarray::Ix1(1000), 8));
    }

    #[test]
    fn cpu_engine_checks_ok() {
        let cfg = Config {
            warmup: 0,
            repeats: 1,
            check: true,
            timing: TimingMode::Auto,
            min_sample_ms: 0.0,
            max_iterations: 1,
            seed: 1,
        };
        let mut got = Vec::new();
        for l in crate::suite::layers(crate::suite::Suite::Tiny, Some(1)) {
            run_layer(&CpuEngine, &cfg, &l, &mut |r| got.push(r)).unwrap();
        }
        assert_eq!(got.len(), 12);
        assert!(got.iter().all(|r| r.check == Check::Ok), "{got:?}");
    }
}
