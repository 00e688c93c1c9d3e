//! Checked mode: after each op (or, for a recorded batch, once it has run), run the CPU
//! reference in f64 on the same f32 inputs and compare.

use ndarray::{ArrayD, Ix1, Ix4};

use super::Gpu;
use super::tensor::Raw;
use crate::compare::{GPU_TOLERANCE, compare};
use crate::error::{Error, Result};
use crate::reference;
use crate::spec::{Conv2dSpec, Pool2dSpec};

/// One op call as checked mode sees it: its inputs (handles that keep them alive) and options.
#[derive(Clone)]
pub(crate) enum OpCall {
    ConvForward {
        x: Raw,
        w: Raw,
        bias: Option<Raw>,
        spec: Conv2dSpec,
    },
    ConvBackwardInput {
        dy: Raw,
        w: Raw,
        input_hw: [usize; 2],
        spec: Conv2dSpec,
    },
    ConvBackwardWeight {
        x: Raw,
        dy: Raw,
        kernel_hw: [usize; 2],
        spec: Conv2dSpec,
    },
    ConvBackwardBias {
        dy: Raw,
    },
    MaxForward {
        x: Raw,
        spec: Pool2dSpec,
    },
    MaxBackward {
        dy: Raw,
        indices: Raw,
        input_hw: [usize; 2],
        spec: Pool2dSpec,
    },
    AvgForward {
        x: Raw,
        spec: Pool2dSpec,
        count_include_pad: bool,
    },
    AvgBackward {
        dy: Raw,
        input_hw: [usize; 2],
        spec: Pool2dSpec,
        count_include_pad: bool,
    },
}

/// What an accumulating op added to: its value before, on the host (eager) or in a scratch copy
/// made inside the batch (recorded).
pub(crate) enum Before {
    Host(ArrayD<f64>),
    Device(Raw),
}

/// A check to run: the call, what it wrote (and the indices of a max-pool forward), and for an
/// accumulation the value it added to.
pub(crate) struct CheckJob {
    pub call: OpCall,
    pub out: Raw,
    pub indices: Option<Raw>,
    pub before: Option<Before>,
}

impl OpCall {
    pub fn name(&self) -> &'static str {
        match self {
            OpCall::ConvForward { .. } => "conv2d_forward",
            OpCall::ConvBackwardInput { .. } => "conv2d_backward_input",
            OpCall::ConvBackwardWeight { .. } => "conv2d_backward_weight",
            OpCall::ConvBackwardBias { .. } => "conv2d_backward_bias",
            OpCall::MaxForward { .. } => "max_pool2d_forward",
            OpCall::MaxBackward { .. } => "max_pool2d_backward",
            OpCall::AvgForward { .. } => "avg_pool2d_forward",
            OpCall::AvgBackward { .. } => "avg_pool2d_backward",
        }
    }
}

fn dims<D: ndarray::Dimension>(a: ArrayD<f64>) -> Result<ndarray::Array<f64, D>> {
    a.into_dimensionality::<D>()
        .map_err(|e| Error::ShapeMismatch(e.to_string()))
}

/// Checked mode's comparison of one result with the reference (run in f64).
pub(crate) fn verdict(op: &str, got: &ArrayD<f32>, want: &ArrayD<f64>) -> Result<()> {
    let c = compare(got.iter().map(|&v| f64::from(v)), want.iter().copied());
    if c.passes(GPU_TOLERANCE) {
        return Ok(());
    }
    // Flat position to a multi-index, for the message.
    let mut rest = c.worst;
    let mut pos = vec![0; want.ndim()];
    for (p, &d) in pos.iter_mut().zip(want.shape()).rev() {
        *p = rest % d.max(1);
        rest /= d.max(1);
    }
    Err(Error::CheckFailed {
        op: op.to_string(),
        detail: format!(
            "max |gpu - ref| = {:e} at {pos:?} (gpu {}, ref {}) exceeds {GPU_TOLERANCE:e} x scale {}",
            c.max_abs_err,
            got.iter().nth(c.worst).copied().unwrap_or(f32::NAN),
            want.iter().nth(c.worst).copied().unwrap_or(f64::NAN),
            c.scale
        ),
    })
}

impl Gpu {
    fn host(&self, r: &Raw) -> Result<ArrayD<f64>> {
        Ok(self.download_f32(r)?.mapv(f64::from))
    }

    fn download_f32(&self, r: &Raw) -> Result<ArrayD<f32>> {
        let bytes = self.download_raw(r)?;
        let data: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        ArrayD::from_shape_vec(r.shape.clone(), data)
            .map_err(|e| Error::ShapeMismatch(e.to_string()))
    }

    fn download_u32(&self, r: &Raw) -> Result<ArrayD<u32>> {
        let bytes = self.download_raw(r)?;
        let data: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes);
        ArrayD::from_shape_vec(r.shape.clone(), data)
            .map_err(|e| Error::ShapeMismatch(e.to_string()))
    }

    /// The reference's result of `call`, and for a max-pool forward its indices.
    fn expected(&self, call: &OpCall) -> Result<(ArrayD<f64>, Option<ArrayD<u32>>)> {
        let x4 = |r: &Raw| -> Result<ndarray::Array4<f64>> { dims::<Ix4>(self.host(r)?) };
        let want = match call {
            OpCall::ConvForward { x, w, bias, spec } => {
                let b = bias.as_ref().map(|b| self.host(b)).transpose()?;
                let b = b.map(dims::<Ix1>).transpose()?;
                let (x, w) = (x4(x)?, x4(w)?);
                reference::conv2d_forward(x.view(), w.view(), b.as_ref().map(|b| b.view()), spec)?
                    .into_dyn()
            }
            OpCall::ConvBackwardInput {
                dy,
                w,
                input_hw,
                spec,
            } => {
                let (dy, w) = (x4(dy)?, x4(w)?);
                reference::conv2d_backward_input(dy.view(), w.view(), *input_hw, spec)?.into_dyn()
            }
            OpCall::ConvBackwardWeight {
                x,
                dy,
                kernel_hw,
                spec,
            } => {
                let (x, dy) = (x4(x)?, x4(dy)?);
                reference::conv2d_backward_weight(x.view(), dy.view(), *kernel_hw, spec)?.into_dyn()
            }
            OpCall::ConvBackwardBias { dy } => {
                reference::conv2d_backward_bias(x4(dy)?.view()).into_dyn()
            }
            OpCall::MaxForward { x, spec } => {
                let (y, idx) = reference::max_pool2d_forward(x4(x)?.view(), spec)?;
                return Ok((y.into_dyn(), Some(idx.into_dyn())));
            }
            OpCall::MaxBackward {
                dy,
                indices,
                input_hw,
                spec,
            } => {
                let idx = self
                    .download_u32(indices)?
                    .into_dimensionality::<Ix4>()
                    .map_err(|e| Error::ShapeMismatch(e.to_string()))?;
                reference::max_pool2d_backward(x4(dy)?.view(), idx.view(), *input_hw, spec)?
                    .into_dyn()
            }
            OpCall::AvgForward {
                x,
                spec,
                count_include_pad,
            } => reference::avg_pool2d_forward(x4(x)?.view(), spec, *count_include_pad)?.into_dyn(),
            OpCall::AvgBackward {
                dy,
                input_hw,
                spec,
                count_include_pad,
            } => {
                reference::avg_pool2d_backward(x4(dy)?.view(), *input_hw, spec, *count_include_pad)?
                    .into_dyn()
            }
        };
        Ok((want, None))
    }

    /// Runs one check: the reference's result (plus the value accumulated into) against what the
    /// op wrote, and a max-pool's indices exactly.
    pub(crate) fn run_check(&self, job: CheckJob) -> Result<()> {
        let op = job.call.name();
        let (mut want, want_idx) = self.expected(&job.call)?;
        match job.before {
            Some(Before::Host(before)) => want = want + before,
            Some(Before::Device(raw)) => want = want + self.host(&raw)?,
            None => {}
        }
        verdict(op, &self.download_f32(&job.out)?, &want)?;
        if let (Some(idx), Some(want_idx)) = (&job.indices, want_idx) {
            let got = self.download_u32(idx)?;
            if let Some((pos, (g, w))) = got
                .iter()
                .zip(want_idx.iter())
                .enumerate()
                .find(|(_, (g, w))| g != w)
            {
                return Err(Error::CheckFailed {
                    op: op.into(),
                    detail: format!("index {pos} (flat) is {g} on the GPU, {w} in the reference"),
                });
            }
        }
        Ok(())
    }

    /// The value of an accumulation target before the op, for its check.
    pub(crate) fn before_host(&self, target: &Raw) -> Result<Before> {
        Ok(Before::Host(self.host(target)?))
    }
}
