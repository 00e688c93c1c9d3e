//! The engines the ops run on: the GPU, or the CPU reference in f32, and how each one times an
//! op.

use std::time::Instant;

use ndarray::{Array, ArrayD, ArrayView4, Dimension, Ix1, Ix4};
use wgconv::{Conv2dSpec, DType, Gpu, IndexTensor, Pool2dSpec, Result, Tensor, reference};

use super::{Config, Measured, TimingMode};

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
    /// The dtype of the tensors it puts.
    pub dtype: DType,
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
        self.gpu.upload_as(a, self.dtype)
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
