//! conv2d forward, dx, dW and db on the GPU: validate, plan ([`plan`](super::plan)), bind the
//! plan's roles to the tensors and submit.

use super::plan::{self, ConvPlan};
use super::submit::Buffers;
use super::tensor::{Raw, dims4};
use super::{Gpu, IndexTensor, Tensor};
use crate::error::{Result, mismatch};
use crate::spec::Conv2dSpec;

impl Gpu {
    /// Output tensor for an op, poisoned in checked mode.
    pub(crate) fn new_output(&self, shape: &[usize], what: &str) -> Result<Tensor> {
        let raw = self.alloc(shape, what)?;
        self.poison(&raw, f32::NAN.to_bits());
        Ok(Tensor { raw })
    }

    pub(crate) fn output_indices(&self, shape: &[usize], what: &str) -> Result<IndexTensor> {
        let raw = self.alloc(shape, what)?;
        self.poison(&raw, u32::MAX);
        Ok(IndexTensor { raw })
    }

    pub(crate) fn owners(&self, op: &str, raws: &[&Raw]) -> Result<()> {
        raws.iter().try_for_each(|r| self.check_owner(r, op))
    }

    /// The scratch buffer a plan asks for (split-K partial sums), if any.
    fn plan_scratch(&self, plan: &ConvPlan) -> Result<Option<Raw>> {
        plan.scratch
            .map(|(elems, what)| self.alloc(&[elems], what))
            .transpose()
    }

    /// Runs a conv plan: its scratch, then its steps with `buffers` (plus the scratch) bound.
    fn run_conv(&self, op: &str, plan: &ConvPlan, buffers: Buffers<'_>) -> Result<()> {
        let scratch = self.plan_scratch(plan)?;
        let buffers = Buffers {
            partial: scratch.as_ref().map(Raw::buffer),
            ..buffers
        };
        self.run(op, &plan.steps, &buffers)
    }

    /// `y = conv2d(x, w) + bias` on the GPU. Same semantics as
    /// [`reference::conv2d_forward`](crate::reference::conv2d_forward).
    pub fn conv2d_forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        spec: &Conv2dSpec,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d_forward";
        let g = spec.forward_geometry(dims4(&x.raw, "x")?, dims4(&w.raw, "w")?)?;
        if let Some(b) = bias
            && b.shape() != [g.k]
        {
            return Err(mismatch(format!(
                "bias shape {:?} must be [K] = [{}]",
                b.shape(),
                g.k
            )));
        }
        self.owners(OP, &[&x.raw, &w.raw])?;
        if let Some(b) = bias {
            self.check_owner(&b.raw, OP)?;
        }
        let y = self.new_output(&g.y_shape(), "conv2d_forward output")?;
        if g.n > 0 {
            let plan = plan::conv2d_forward(&self.profile, &g, bias.is_some())?;
            let buffers = Buffers {
                x: Some(x.raw.buffer()),
                w: Some(w.raw.buffer()),
                bias: bias.map(|b| b.raw.buffer()),
                out: Some(y.raw.buffer()),
                ..Default::default()
            };
            self.run_conv(OP, &plan, buffers)?;
        }
        if self.checked {
            self.check_conv2d_forward(x, w, bias, spec, &y)?;
        }
        Ok(y)
    }

    /// dx on the GPU: the transposed convolution of dy, by index arithmetic (the implicit GEMM
    /// split by stride phase, the depthwise kernel or the direct one). Same semantics as
    /// [`reference::conv2d_backward_input`](crate::reference::conv2d_backward_input).
    pub fn conv2d_backward_input(
        &self,
        dy: &Tensor,
        w: &Tensor,
        input_hw: [usize; 2],
        spec: &Conv2dSpec,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d_backward_input";
        let g =
            spec.backward_input_geometry(dims4(&dy.raw, "dy")?, dims4(&w.raw, "w")?, input_hw)?;
        self.owners(OP, &[&dy.raw, &w.raw])?;
        let dx = self.new_output(&g.x_shape(), "conv2d_backward_input output")?;
        if g.n > 0 {
            let plan = plan::conv2d_backward_input(&self.profile, &g)?;
            let buffers = Buffers {
                dy: Some(dy.raw.buffer()),
                w: Some(w.raw.buffer()),
                out: Some(dx.raw.buffer()),
                ..Default::default()
            };
            self.run_conv(OP, &plan, buffers)?;
        }
        if self.checked {
            self.check_conv2d_backward_input(dy, w, input_hw, spec, &dx)?;
        }
        Ok(dx)
    }

    /// dW on the GPU: per-workgroup partial sums over N·OH·OW and an ordered second pass
    /// (deterministic, no atomics). Same semantics as
    /// [`reference::conv2d_backward_weight`](crate::reference::conv2d_backward_weight).
    pub fn conv2d_backward_weight(
        &self,
        x: &Tensor,
        dy: &Tensor,
        kernel_hw: [usize; 2],
        spec: &Conv2dSpec,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d_backward_weight";
        let g =
            spec.backward_weight_geometry(dims4(&x.raw, "x")?, dims4(&dy.raw, "dy")?, kernel_hw)?;
        self.owners(OP, &[&x.raw, &dy.raw])?;
        let dw = self.new_output(&g.w_shape(), "conv2d_backward_weight output")?;
        let plan = plan::conv2d_backward_weight(&self.profile, &g)?;
        let buffers = Buffers {
            x: x.raw.buf.as_ref().map(|b| b.buffer()),
            dy: dy.raw.buf.as_ref().map(|b| b.buffer()),
            out: Some(dw.raw.buffer()),
            ..Default::default()
        };
        self.run_conv(OP, &plan, buffers)?;
        if self.checked {
            self.check_conv2d_backward_weight(x, dy, kernel_hw, spec, &dw)?;
        }
        Ok(dw)
    }

    /// db on the GPU: dy summed over N, OH, OW per channel, deterministic.
    pub fn conv2d_backward_bias(&self, dy: &Tensor) -> Result<Tensor> {
        const OP: &str = "conv2d_backward_bias";
        let shape = dims4(&dy.raw, "dy")?;
        self.check_owner(&dy.raw, OP)?;
        let db = self.new_output(&[shape[1]], "conv2d_backward_bias output")?;
        if shape[1] == 0 {
            return Ok(db);
        }
        let plan = plan::conv2d_backward_bias(&self.profile, shape)?;
        let buffers = Buffers {
            dy: dy.raw.buf.as_ref().map(|b| b.buffer()),
            out: Some(db.raw.buffer()),
            ..Default::default()
        };
        self.run_conv(OP, &plan, buffers)?;
        if self.checked {
            self.check_conv2d_backward_bias(dy, &db)?;
        }
        Ok(db)
    }
}
