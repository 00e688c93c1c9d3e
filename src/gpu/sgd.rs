//! The SGD step of `wgconv::nn` on the GPU (`shaders/sgd_step.wgsl`), with the gradient
//! multiplier of mixed-precision training's loss scaling.

use super::check::verdict;
use super::kernels::{Kernel, SgdParams, Storage};
use super::{Bind, Dispatch, Gpu, Tensor};
use crate::error::{Error, Result};
use crate::reference::nn as reference;
use crate::spec::{SgdOptions, check_sgd_shapes};

impl Gpu {
    /// One SGD step, in place in `param`'s buffer, PyTorch's rule (`torch.optim.SGD`, no
    /// dampening, no Nesterov): `g = grad + weight_decay·p`; `buf = g` on the first step (when
    /// `momentum_buffer` is `None`, which this then fills), else `buf = momentum·buf + g`;
    /// `p -= lr·buf`. With momentum 0 no buffer is kept. Same semantics as
    /// [`reference::nn::sgd_step`](crate::reference::nn::sgd_step); the hyperparameters are
    /// rounded to f32.
    pub fn sgd_step(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        momentum_buffer: &mut Option<Tensor>,
        options: &SgdOptions,
    ) -> Result<()> {
        self.sgd_step_scaled(param, grad, momentum_buffer, options, 1.0)
    }

    /// [`Gpu::sgd_step`] with the gradient multiplied by `grad_scale` first (1 / the loss scale
    /// of mixed-precision training; not applied at 1.0).
    pub fn sgd_step_scaled(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        momentum_buffer: &mut Option<Tensor>,
        options: &SgdOptions,
        grad_scale: f32,
    ) -> Result<()> {
        const OP: &str = "sgd_step";
        if !grad_scale.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "{OP}: the gradient scale must be finite, got {grad_scale}"
            )));
        }
        options.validate()?;
        let buf_shape = momentum_buffer.as_ref().map(|b| b.shape());
        check_sgd_shapes(param.shape(), grad.shape(), buf_shape)?;
        self.check_operand(&param.raw, OP)?;
        self.check_operand(&grad.raw, OP)?;
        if let Some(buf) = momentum_buffer.as_ref() {
            self.check_operand(&buf.raw, OP)?;
        }
        let has_momentum = options.momentum != 0.0;
        let first_step = has_momentum && momentum_buffer.is_none();
        // Stored in `momentum_buffer` only once the step has run.
        let fresh = match first_step {
            true => Some(self.new_output(param.shape(), "sgd momentum buffer")?),
            false => None,
        };
        // Checked mode needs the values before the update.
        let before = if self.checked {
            let buf = match momentum_buffer.as_ref() {
                Some(b) if has_momentum => Some(self.host_f64(b)?),
                _ => None,
            };
            let g = self.host_f64(grad)? * f64::from(grad_scale);
            Some((self.host_f64(param)?, g, buf))
        } else {
            None
        };
        let len = param.len();
        if len > 0 {
            let buf_raw = fresh
                .as_ref()
                .or(momentum_buffer.as_ref())
                .filter(|_| has_momentum)
                .map(|b| &b.raw);
            let units = [(1, "parameter slice"); 3];
            let per = self.items_per_chunk(&units, len)?;
            let mut ds = Vec::new();
            for e0 in (0..len).step_by(per) {
                let e1 = (e0 + per).min(len);
                let (pb, p_off) = self.window(&param.raw, e0, e1);
                let (gb, g_off) = self.window(&grad.raw, e0, e1);
                let (bb, buf_off) = match buf_raw {
                    Some(raw) => self.window(raw, e0, e1),
                    None => (Bind::whole(&self.dummy, 0), 0),
                };
                let params = SgdParams {
                    total: (e1 - e0) as u32,
                    p_off,
                    g_off,
                    buf_off,
                    lr: (options.lr as f32).to_bits(),
                    momentum: (options.momentum as f32).to_bits(),
                    weight_decay: (options.weight_decay as f32).to_bits(),
                    first_step: first_step as u32,
                    has_momentum: has_momentum as u32,
                    grad_scale: grad_scale.to_bits(),
                    ..Default::default()
                };
                ds.push(Dispatch {
                    kernel: Kernel::SgdStep,
                    storage: Storage::F32,
                    params: bytemuck::bytes_of(&params).to_vec(),
                    bindings: vec![pb, gb, bb],
                    items: (e1 - e0) as u64,
                });
            }
            self.execute(OP, &ds)?;
        }
        if fresh.is_some() {
            *momentum_buffer = fresh;
        }
        if let Some((mut p, g, mut buf)) = before {
            reference::sgd_step(p.view_mut(), g.view(), &mut buf, options)?;
            verdict(OP, &self.download(param)?, &p)?;
            if let (Some(got), Some(want)) = (momentum_buffer.as_ref(), buf.as_ref()) {
                verdict(OP, &self.download(got)?, want)?;
            }
        }
        Ok(())
    }
}
