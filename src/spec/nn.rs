//! Options of the training ops: [`SgdOptions`], the hyperparameters of
//! [`reference::nn::sgd_step`](crate::reference::nn::sgd_step) and
//! [`Gpu::sgd_step`](crate::Gpu::sgd_step).

use crate::error::{Result, invalid, mismatch};

/// Hyperparameters of SGD (`torch.optim.SGD` without dampening or Nesterov).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdOptions {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor; 0 keeps no momentum buffer.
    pub momentum: f64,
    /// L2 penalty added to the gradient: `g = grad + weight_decay · p`.
    pub weight_decay: f64,
}

impl SgdOptions {
    /// Errs unless every hyperparameter is finite and non-negative.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("lr", self.lr),
            ("momentum", self.momentum),
            ("weight_decay", self.weight_decay),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(format!("SGD {name} = {v} must be finite and >= 0")));
            }
        }
        Ok(())
    }
}

/// Checks the shapes of one SGD step: the gradient and the momentum buffer (when there is one)
/// must have the parameter's shape.
pub(crate) fn check_sgd_shapes(
    param: &[usize],
    grad: &[usize],
    momentum_buffer: Option<&[usize]>,
) -> Result<()> {
    if param != grad {
        return Err(mismatch(format!(
            "sgd_step: grad shape {grad:?} differs from the parameter's {param:?}"
        )));
    }
    if let Some(buf) = momentum_buffer
        && buf != param
    {
        return Err(mismatch(format!(
            "sgd_step: momentum buffer shape {buf:?} differs from the parameter's {param:?}"
        )));
    }
    Ok(())
}
