//! Running one layer's ops on an engine (the GPU, or the CPU reference in f32), timing them and
//! checking each result against the reference in f64: the options and the layer loop here, the
//! engines in `engine.rs`, the random inputs in `inputs.rs`, the comparisons in `check.rs`.

mod check;
mod engine;
mod inputs;

use ndarray::{Array, Dimension, Ix4};
use wgconv::{DType, Result, reference};

pub use check::CheckOutcome;
use check::{check_values, check_with_indices};
pub use engine::{CpuEngine, Engine, GpuEngine};
pub use inputs::random;
use inputs::{f64s, seed_for};

use crate::report::{OpResult, Shape};
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
    /// The tensors' element type (the inputs are rounded to it).
    pub dtype: DType,
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

/// FLOPs (or element ops, for db and pools) and the minimum bytes moved by `op` on `layer`.
///
/// conv forward, dx and dW: `2·N·K·OH·OW·(C/g)·kh·kw` FLOPs. db: one add per dy element.
/// Max-pool forward: one compare per window tap (`N·C·OH·OW·kh·kw`); backward: one add per dy
/// element. Avg-pool forward and backward: one add per window tap. Bytes: every input read once
/// and every output written once, `dtype.size_bytes()` per value (4 per u32 index).
pub fn work(kind: &LayerKind, op: Op, dtype: DType) -> Result<(f64, f64)> {
    let num = |s: &[usize]| s.iter().map(|&v| v as f64).product::<f64>();
    let e = dtype.size_bytes() as f64;
    Ok(match *kind {
        LayerKind::Conv { x, k, kernel, spec } => {
            let g =
                spec.forward_geometry(x, [k, x[1] / spec.groups.max(1), kernel[0], kernel[1]])?;
            let (xs, ws, ys) = (num(&g.x_shape()), num(&g.w_shape()), num(&g.y_shape()));
            let kf = k as f64;
            match op {
                Op::ConvForward => (g.flops(), e * (xs + ws + kf + ys)),
                Op::ConvBackwardInput => (g.flops(), e * (ys + ws + xs)),
                Op::ConvBackwardWeight => (g.flops(), e * (xs + ys + ws)),
                _ => (ys, e * (ys + kf)),
            }
        }
        LayerKind::MaxPool { x, spec } => {
            let g = spec.geometry(x)?;
            let (xs, ys) = (num(&g.x_shape()), num(&g.y_shape()));
            match op {
                Op::MaxPoolForward => (ys * num(&spec.kernel), e * (xs + ys) + 4.0 * ys),
                _ => (ys, e * (ys + xs) + 4.0 * ys),
            }
        }
        LayerKind::AvgPool { x, spec, .. } => {
            let g = spec.avg_geometry(x)?;
            let (xs, ys) = (num(&g.x_shape()), num(&g.y_shape()));
            (ys * num(&spec.kernel), e * (xs + ys))
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

/// The check of `got`: skipped without reference inputs (`--no-check`), else `got` compared
/// with the f64 reference that `want` computes from them.
fn check_op<E: Engine, R, D: Dimension>(
    engine: &E,
    dtype: DType,
    got: &E::T,
    refs: Option<R>,
    want: impl FnOnce(R) -> Result<Array<f64, D>>,
) -> Result<CheckOutcome> {
    let Some(refs) = refs else {
        return Ok(CheckOutcome::skipped());
    };
    let want = want(refs)?;
    Ok(check_values(
        engine.get(got)?.view(),
        want.view().into_dyn(),
        dtype,
    ))
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
        let work = work(&layer.kind, op, cfg.dtype)?;
        emit(OpResult::new(
            layer,
            op,
            shape_of(&layer.kind),
            m,
            c,
            work,
            cfg.dtype,
        ));
        Ok(())
    };
    // Inputs rounded to the dtype: the engine stores them exactly, the reference reads them.
    let input = |shape, role: &str| random(shape, seed(role)).mapv(|v| cfg.dtype.round(v));
    let x = input(layer.kind.x(), "x");
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
            let w = input(g.w_shape(), "w");
            let b = random(ndarray::Ix1(k), seed("b")).mapv(|v| cfg.dtype.round(v));
            let dy = input(g.y_shape(), "dy");
            let (wt, bt, dyt) = (engine.put(&w)?, engine.put(&b)?, engine.put(&dy)?);
            let refs = x64.as_ref().map(|x64| (x64, f64s(&w), f64s(&b), f64s(&dy)));
            let hw = [g.h, g.w];

            let (y, m) =
                engine.measure(cfg, || engine.conv2d_forward(&xt, &wt, Some(&bt), &spec))?;
            let c = check_op(engine, cfg.dtype, &y, refs.as_ref(), |(x, w, b, _)| {
                reference::conv2d_forward(x.view(), w.view(), Some(b.view()), &spec)
            })?;
            drop(y);
            result(Op::ConvForward, m, c)?;

            let (dx, m) =
                engine.measure(cfg, || engine.conv2d_backward_input(&dyt, &wt, hw, &spec))?;
            let c = check_op(engine, cfg.dtype, &dx, refs.as_ref(), |(_, w, _, dy)| {
                reference::conv2d_backward_input(dy.view(), w.view(), hw, &spec)
            })?;
            drop(dx);
            result(Op::ConvBackwardInput, m, c)?;

            let (dw, m) = engine.measure(cfg, || {
                engine.conv2d_backward_weight(&xt, &dyt, kernel, &spec)
            })?;
            let c = check_op(engine, cfg.dtype, &dw, refs.as_ref(), |(x, _, _, dy)| {
                reference::conv2d_backward_weight(x.view(), dy.view(), kernel, &spec)
            })?;
            drop(dw);
            result(Op::ConvBackwardWeight, m, c)?;

            let (db, m) = engine.measure(cfg, || engine.conv2d_backward_bias(&dyt))?;
            let c = check_op(engine, cfg.dtype, &db, refs.as_ref(), |(_, _, _, dy)| {
                Ok(reference::conv2d_backward_bias(dy.view()))
            })?;
            drop(db);
            result(Op::ConvBackwardBias, m, c)?;
        }
        LayerKind::MaxPool { x: xs, spec } => {
            let g = spec.geometry(xs)?;
            let hw = [g.h, g.w];
            let dy = input(g.y_shape(), "dy");
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
                        cfg.dtype,
                    )
                }
                _ => CheckOutcome::skipped(),
            };
            drop(y);
            result(Op::MaxPoolForward, m, c)?;

            let (dx, m) =
                engine.measure(cfg, || engine.max_pool2d_backward(&dyt, &idx, hw, &spec))?;
            let c = check_op(engine, cfg.dtype, &dx, idx_host.as_ref(), |got_idx| {
                let idx4 = got_idx.view().into_dimensionality::<Ix4>().expect("4-D");
                reference::max_pool2d_backward(f64s(&dy).view(), idx4, hw, &spec)
            })?;
            result(Op::MaxPoolBackward, m, c)?;
        }
        LayerKind::AvgPool {
            x: xs,
            spec,
            count_include_pad: cip,
        } => {
            let g = spec.avg_geometry(xs)?;
            let hw = [g.h, g.w];
            let dy = input(g.y_shape(), "dy");
            let dyt = engine.put(&dy)?;

            let (y, m) = engine.measure(cfg, || engine.avg_pool2d_forward(&xt, &spec, cip))?;
            let c = check_op(engine, cfg.dtype, &y, x64.as_ref(), |x| {
                reference::avg_pool2d_forward(x.view(), &spec, cip)
            })?;
            drop(y);
            result(Op::AvgPoolForward, m, c)?;

            let (dx, m) =
                engine.measure(cfg, || engine.avg_pool2d_backward(&dyt, hw, &spec, cip))?;
            let c = check_op(
                engine,
                cfg.dtype,
                &dx,
                cfg.check.then(|| f64s(&dy)),
                |dy64| reference::avg_pool2d_backward(dy64.view(), hw, &spec, cip),
            )?;
            result(Op::AvgPoolBackward, m, c)?;
        }
    }
    engine.release();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Check;

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
            dtype: DType::F32,
        };
        let mut got = Vec::new();
        for l in crate::suite::layers(crate::suite::Suite::Tiny, Some(1)) {
            run_layer(&CpuEngine, &cfg, &l, &mut |r| got.push(r)).unwrap();
        }
        assert_eq!(got.len(), 12);
        assert!(got.iter().all(|r| r.check == Check::Ok), "{got:?}");
    }
}
