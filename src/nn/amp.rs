//! Mixed-precision training: dynamic loss scaling for f16, as PyTorch's `GradScaler` does it.

use super::{Param, Sgd};
use crate::error::Result;
use crate::{Gpu, IndexTensor, Tensor};

/// Dynamic loss scaling for f16 training (PyTorch's `torch.amp.GradScaler`): the loss gradient
/// is multiplied by the scale before the backward, so small f16 gradients do not flush to
/// zero; [`GradScaler::step`] checks the gradients on the GPU, skips the optimizer step and
/// halves the scale when one is inf or NaN, else steps on the unscaled gradients, and doubles
/// the scale after `growth_interval` clean steps in a row. The scale starts at 2^16. (bf16 has
/// f32's range and needs no scaling.)
///
/// ```no_run
/// use wgconv::nn::{GradScaler, Layer, Sequential, Sgd, SgdOptions};
/// # fn step(gpu: &wgconv::Gpu, model: &mut Sequential, sgd: &mut Sgd, scaler: &mut GradScaler,
/// #         x: wgconv::Tensor, labels: &wgconv::IndexTensor) -> wgconv::Result<()> {
/// let logits = model.forward(gpu, x)?; // x in f16: f16 activations, f32 master weights
/// let (loss, dlogits) = scaler.softmax_cross_entropy(gpu, &logits, labels)?;
/// model.backward_params(gpu, dlogits)?; // f32 weight gradients, scaled
/// let stepped = scaler.step(gpu, sgd, model.parameters_mut())?;
/// # let _ = (loss, stepped); Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct GradScaler {
    scale: f32,
    growth_interval: u32,
    clean_steps: u32,
    skipped: u64,
}

impl Default for GradScaler {
    fn default() -> Self {
        Self::new()
    }
}

impl GradScaler {
    /// PyTorch's defaults: scale 2^16, halved on an overflow, doubled after 2,000 clean steps.
    pub fn new() -> Self {
        GradScaler {
            scale: 65536.0,
            growth_interval: 2000,
            clean_steps: 0,
            skipped: 0,
        }
    }

    /// The scaler with `interval` clean steps between doublings (at least 1).
    pub fn with_growth_interval(mut self, interval: u32) -> Self {
        self.growth_interval = interval.max(1);
        self
    }

    /// The scale the next loss gradient is multiplied by.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Optimizer steps skipped for an inf or NaN gradient so far.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped
    }

    /// The loss (unscaled, f32) and its gradient multiplied by the scale, in the logits' dtype:
    /// [`Gpu::softmax_cross_entropy_scaled`].
    pub fn softmax_cross_entropy(
        &self,
        gpu: &Gpu,
        logits: &Tensor,
        labels: &IndexTensor,
    ) -> Result<(Tensor, Tensor)> {
        gpu.softmax_cross_entropy_scaled(logits, labels, self.scale)
    }

    /// Steps `sgd` on the gradients divided by the scale, unless one of them is inf or NaN
    /// (checked on the GPU, one flag read back): then the parameters stay as they are and the
    /// scale halves. Ends every parameter's step either way; returns whether it stepped.
    pub fn step(&mut self, gpu: &Gpu, sgd: &mut Sgd, params: Vec<Param<'_>>) -> Result<bool> {
        let grads: Vec<&Tensor> = params.iter().filter_map(|p| p.grad).collect();
        if !gpu.all_finite(&grads)? {
            self.scale *= 0.5;
            self.clean_steps = 0;
            self.skipped += 1;
            params.iter().for_each(Param::end_step);
            return Ok(false);
        }
        sgd.step_scaled(gpu, params, 1.0 / self.scale)?;
        self.clean_steps += 1;
        if self.clean_steps >= self.growth_interval {
            self.scale *= 2.0;
            self.clean_steps = 0;
        }
        Ok(true)
    }
}
