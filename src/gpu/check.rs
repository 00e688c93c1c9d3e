//! Checked mode: after each op, run the CPU reference (in f64, on the same f32 inputs) and
//! compare.

use ndarray::{Array4, ArrayD, Ix1, Ix4};

use super::{Gpu, IndexTensor, Tensor};
use crate::compare::{GPU_TOLERANCE, compare};
use crate::error::{Error, Result};
use crate::reference;
use crate::spec::{Conv2dSpec, Pool2dSpec};

fn f64_4(a: ArrayD<f32>) -> Result<Array4<f64>> {
    a.mapv(f64::from)
        .into_dimensionality::<Ix4>()
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
    fn host(&self, t: &Tensor) -> Result<Array4<f64>> {
        f64_4(self.download(t)?)
    }

    pub(crate) fn check_conv2d_forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        spec: &Conv2dSpec,
        y: &Tensor,
    ) -> Result<()> {
        let b = match bias {
            Some(b) => Some(
                self.download(b)?
                    .mapv(f64::from)
                    .into_dimensionality::<Ix1>()
                    .map_err(|e| Error::ShapeMismatch(e.to_string()))?,
            ),
            None => None,
        };
        let want = reference::conv2d_forward(
            self.host(x)?.view(),
            self.host(w)?.view(),
            b.as_ref().map(|b| b.view()),
            spec,
        )?;
        verdict("conv2d_forward", &self.download(y)?, &want.into_dyn())
    }

    pub(crate) fn check_conv2d_backward_input(
        &self,
        dy: &Tensor,
        w: &Tensor,
        input_hw: [usize; 2],
        spec: &Conv2dSpec,
        dx: &Tensor,
    ) -> Result<()> {
        let want = reference::conv2d_backward_input(
            self.host(dy)?.view(),
            self.host(w)?.view(),
            input_hw,
            spec,
        )?;
        verdict(
            "conv2d_backward_input",
            &self.download(dx)?,
            &want.into_dyn(),
        )
    }

    pub(crate) fn check_conv2d_backward_weight(
        &self,
        x: &Tensor,
        dy: &Tensor,
        kernel_hw: [usize; 2],
        spec: &Conv2dSpec,
        dw: &Tensor,
    ) -> Result<()> {
        let want = reference::conv2d_backward_weight(
            self.host(x)?.view(),
            self.host(dy)?.view(),
            kernel_hw,
            spec,
        )?;
        verdict(
            "conv2d_backward_weight",
            &self.download(dw)?,
            &want.into_dyn(),
        )
    }

    pub(crate) fn check_conv2d_backward_bias(&self, dy: &Tensor, db: &Tensor) -> Result<()> {
        let want = reference::conv2d_backward_bias(self.host(dy)?.view());
        verdict(
            "conv2d_backward_bias",
            &self.download(db)?,
            &want.into_dyn(),
        )
    }

    pub(crate) fn check_max_pool2d_forward(
        &self,
        x: &Tensor,
        spec: &Pool2dSpec,
        y: &Tensor,
        idx: &IndexTensor,
    ) -> Result<()> {
        let (want, want_idx) = reference::max_pool2d_forward(self.host(x)?.view(), spec)?;
        verdict("max_pool2d_forward", &self.download(y)?, &want.into_dyn())?;
        let got_idx = self.download_indices(idx)?;
        if let Some((pos, (g, w))) = got_idx
            .iter()
            .zip(want_idx.iter())
            .enumerate()
            .find(|(_, (g, w))| g != w)
        {
            return Err(Error::CheckFailed {
                op: "max_pool2d_forward".into(),
                detail: format!("index {pos} (flat) is {g} on the GPU, {w} in the reference"),
            });
        }
        Ok(())
    }

    pub(crate) fn check_max_pool2d_backward(
        &self,
        dy: &Tensor,
        indices: &IndexTensor,
        input_hw: [usize; 2],
        spec: &Pool2dSpec,
        dx: &Tensor,
    ) -> Result<()> {
        let idx = self
            .download_indices(indices)?
            .into_dimensionality::<Ix4>()
            .map_err(|e| Error::ShapeMismatch(e.to_string()))?;
        let want =
            reference::max_pool2d_backward(self.host(dy)?.view(), idx.view(), input_hw, spec)?;
        verdict("max_pool2d_backward", &self.download(dx)?, &want.into_dyn())
    }

    pub(crate) fn check_avg_pool2d_forward(
        &self,
        x: &Tensor,
        spec: &Pool2dSpec,
        count_include_pad: bool,
        y: &Tensor,
    ) -> Result<()> {
        let want = reference::avg_pool2d_forward(self.host(x)?.view(), spec, count_include_pad)?;
        verdict("avg_pool2d_forward", &self.download(y)?, &want.into_dyn())
    }

    pub(crate) fn check_avg_pool2d_backward(
        &self,
        dy: &Tensor,
        input_hw: [usize; 2],
        spec: &Pool2dSpec,
        count_include_pad: bool,
        dx: &Tensor,
    ) -> Result<()> {
        let want = reference::avg_pool2d_backward(
            self.host(dy)?.view(),
            input_hw,
            spec,
            count_include_pad,
        )?;
        verdict("avg_pool2d_backward", &self.download(dx)?, &want.into_dyn())
    }
}
