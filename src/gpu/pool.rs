//! max-pool and avg-pool, forward and backward, on the GPU: validate, plan ([`plan::pool`]),
//! bind and submit (or record); each op also has an `_into` form writing the caller's tensors.

use super::check::OpCall;
use super::conv::new;
use super::output::Out;
use super::plan::{self, PoolKind};
use super::staged::no_result;
use super::submit::{Buffers, Sink};
use super::tensor::{Raw, dims4};
use super::{Gpu, IndexTensor, Tensor};
use crate::dtype::DType;
use crate::error::{Result, mismatch};
use crate::spec::{Pool2dGeometry, Pool2dSpec};

impl Gpu {
    /// Plans and runs (or records) a pool op on an operand (x or dy) of `dtype`.
    #[allow(clippy::too_many_arguments)]
    fn run_pool(
        &self,
        sink: &mut Sink<'_>,
        op: &'static str,
        kind: PoolKind,
        g: &Pool2dGeometry,
        count_include_pad: bool,
        dtype: DType,
        buffers: Buffers<'_>,
    ) -> Result<()> {
        let steps = plan::pool(&self.profile, kind, g, count_include_pad, dtype)?;
        self.run(sink, op, &steps, &buffers)
    }

    /// The indices tensor of a max-pool forward: a new one (poisoned in checked mode), or the
    /// caller's, checked like [`Gpu::target`]'s.
    fn target_indices(
        &self,
        sink: &mut Sink<'_>,
        given: Option<&IndexTensor>,
        shape: &[usize],
        inputs: &[&Raw],
    ) -> Result<Raw> {
        const OP: &str = "max_pool2d_forward";
        let Some(t) = given else {
            return Ok(self
                .output_indices(shape, "max_pool2d_forward indices")?
                .raw);
        };
        // The same checks as a value output's, on a stand-in tensor of the caller's raw.
        let mut stand_in = Tensor { raw: t.raw.clone() };
        let raw = self.target(sink, OP, &Out::Into(&mut stand_in), shape, inputs)?;
        self.poison(&raw, u32::MAX)?;
        Ok(raw)
    }

    pub(crate) fn max_pool2d_forward_op(
        &self,
        sink: &mut Sink<'_>,
        x: &Tensor,
        spec: &Pool2dSpec,
        outs: Option<(&mut Tensor, &mut IndexTensor)>,
    ) -> Result<Option<(Tensor, IndexTensor)>> {
        const OP: &str = "max_pool2d_forward";
        spec.max_geometry(dims4(&x.raw, "x")?)?;
        let y_given = outs.as_ref().map(|(y, _)| &**y);
        if let Some(dt) = self.staged_dtype(OP, &[Some(x)], y_given)? {
            return self.max_pool2d_forward_16bit(sink, x, spec, outs, dt);
        }
        self.max_pool2d_forward_run(sink, x, spec, outs)
    }

    /// Max-pool forward of an `x` of any dtype into f32 values (and the indices).
    fn max_pool2d_forward_run(
        &self,
        sink: &mut Sink<'_>,
        x: &Tensor,
        spec: &Pool2dSpec,
        outs: Option<(&mut Tensor, &mut IndexTensor)>,
    ) -> Result<Option<(Tensor, IndexTensor)>> {
        const OP: &str = "max_pool2d_forward";
        let g = spec.max_geometry(dims4(&x.raw, "x")?)?;
        self.check_inputs(sink, OP, &[&x.raw])?;
        let (out, idx_out) = match outs {
            Some((y, idx)) => (Out::Into(y), Some(idx)),
            None => (Out::New, None),
        };
        let y = self.target(sink, OP, &out, &g.y_shape(), &[&x.raw])?;
        let inputs = [&x.raw, &y];
        let mut idx = self.target_indices(sink, idx_out.as_deref(), &g.y_shape(), &inputs)?;
        if y.len > 0 {
            let buffers = Buffers {
                x: Some(&x.raw),
                out: Some(&y),
                indices: Some(&idx),
                ..Default::default()
            };
            let kind = PoolKind::MaxForward;
            self.run_pool(sink, OP, kind, &g, false, x.dtype(), buffers)?;
        }
        let call = OpCall::MaxForward {
            x: x.raw.clone(),
            spec: *spec,
        };
        let y = self.finish(sink, out, y, Some((call, Some(idx.clone()), None)))?;
        if let Sink::Record(rec) = sink {
            idx.batch = Some(rec.batch.clone());
        }
        match idx_out {
            Some(t) => {
                t.raw.batch = idx.batch;
                Ok(None)
            }
            None => Ok(Some((new(y)?, IndexTensor { raw: idx }))),
        }
    }

    pub(crate) fn max_pool2d_backward_op(
        &self,
        sink: &mut Sink<'_>,
        dy: &Tensor,
        indices: &IndexTensor,
        input_hw: [usize; 2],
        spec: &Pool2dSpec,
        out: Out<'_>,
    ) -> Result<Option<Tensor>> {
        const OP: &str = "max_pool2d_backward";
        let g = spec.max_backward_geometry(dims4(&dy.raw, "dy")?, indices.shape(), input_hw)?;
        let inputs = [&dy.raw, &indices.raw];
        let run = |sink: &mut Sink<'_>, out: Out<'_>| {
            self.check_inputs(sink, OP, &inputs)?;
            let dx = self.target(sink, OP, &out, &g.x_shape(), &inputs)?;
            if dx.len > 0 {
                let buffers = Buffers {
                    dy: Some(&dy.raw),
                    indices: Some(&indices.raw),
                    out: Some(&dx),
                    ..Default::default()
                };
                let kind = PoolKind::MaxBackward;
                self.run_pool(sink, OP, kind, &g, false, dy.dtype(), buffers)?;
            }
            let call = OpCall::MaxBackward {
                dy: dy.raw.clone(),
                indices: indices.raw.clone(),
                input_hw,
                spec: *spec,
            };
            self.finish(sink, out, dx, Some((call, None, None)))
        };
        match self.staged_dtype(OP, &[Some(dy)], out.given())? {
            Some(dt) => self.reading_16bit(sink, OP, dt, &inputs, out, run),
            None => run(sink, out),
        }
    }

    pub(crate) fn avg_pool2d_forward_op(
        &self,
        sink: &mut Sink<'_>,
        x: &Tensor,
        spec: &Pool2dSpec,
        count_include_pad: bool,
        out: Out<'_>,
    ) -> Result<Option<Tensor>> {
        const OP: &str = "avg_pool2d_forward";
        let g = spec.avg_geometry(dims4(&x.raw, "x")?)?;
        let run = |sink: &mut Sink<'_>, out: Out<'_>| {
            self.check_inputs(sink, OP, &[&x.raw])?;
            let y = self.target(sink, OP, &out, &g.y_shape(), &[&x.raw])?;
            if y.len > 0 {
                let buffers = Buffers {
                    x: Some(&x.raw),
                    out: Some(&y),
                    ..Default::default()
                };
                let (kind, cip) = (PoolKind::AvgForward, count_include_pad);
                self.run_pool(sink, OP, kind, &g, cip, x.dtype(), buffers)?;
            }
            let call = OpCall::AvgForward {
                x: x.raw.clone(),
                spec: *spec,
                count_include_pad,
            };
            self.finish(sink, out, y, Some((call, None, None)))
        };
        match self.staged_dtype(OP, &[Some(x)], out.given())? {
            Some(dt) => self.reading_16bit(sink, OP, dt, &[&x.raw], out, run),
            None => run(sink, out),
        }
    }

    pub(crate) fn avg_pool2d_backward_op(
        &self,
        sink: &mut Sink<'_>,
        dy: &Tensor,
        input_hw: [usize; 2],
        spec: &Pool2dSpec,
        count_include_pad: bool,
        out: Out<'_>,
    ) -> Result<Option<Tensor>> {
        const OP: &str = "avg_pool2d_backward";
        let g = spec.backward_geometry(dims4(&dy.raw, "dy")?, input_hw, true)?;
        let run = |sink: &mut Sink<'_>, out: Out<'_>| {
            self.check_inputs(sink, OP, &[&dy.raw])?;
            let dx = self.target(sink, OP, &out, &g.x_shape(), &[&dy.raw])?;
            if dx.len > 0 {
                let buffers = Buffers {
                    dy: Some(&dy.raw),
                    out: Some(&dx),
                    ..Default::default()
                };
                let (kind, cip) = (PoolKind::AvgBackward, count_include_pad);
                self.run_pool(sink, OP, kind, &g, cip, dy.dtype(), buffers)?;
            }
            let call = OpCall::AvgBackward {
                dy: dy.raw.clone(),
                input_hw,
                spec: *spec,
                count_include_pad,
            };
            self.finish(sink, out, dx, Some((call, None, None)))
        };
        match self.staged_dtype(OP, &[Some(dy)], out.given())? {
            Some(dt) => self.reading_16bit(sink, OP, dt, &[&dy.raw], out, run),
            None => run(sink, out),
        }
    }

    /// Max-pool on the GPU: values and u32 argmax indices (flat `h * W + w` in the input
    /// plane), following PyTorch's scan exactly. Same semantics as
    /// [`reference::max_pool2d_forward`](crate::reference::max_pool2d_forward).
    pub fn max_pool2d_forward(
        &self,
        x: &Tensor,
        spec: &Pool2dSpec,
    ) -> Result<(Tensor, IndexTensor)> {
        self.max_pool2d_forward_op(&mut Sink::Eager, x, spec, None)?
            .ok_or_else(|| mismatch("internal: max-pool forward returned no output".to_string()))
    }

    /// [`Gpu::max_pool2d_forward`] into the caller's tensors `y` and `indices`.
    pub fn max_pool2d_forward_into(
        &self,
        x: &Tensor,
        spec: &Pool2dSpec,
        y: &mut Tensor,
        indices: &mut IndexTensor,
    ) -> Result<()> {
        self.max_pool2d_forward_op(&mut Sink::Eager, x, spec, Some((y, indices)))
            .map(drop)
    }

    /// Max-pool backward on the GPU: each input element gathers dy from the windows that can
    /// contain it and whose index names it (no atomics). The index rule is the reference's (and
    /// PyTorch's CUDA kernel's): an index counts only inside its window's span; one outside its
    /// window or outside the plane contributes nothing. Indices from
    /// [`Gpu::max_pool2d_forward`] with the same spec always count.
    pub fn max_pool2d_backward(
        &self,
        dy: &Tensor,
        indices: &IndexTensor,
        input_hw: [usize; 2],
        spec: &Pool2dSpec,
    ) -> Result<Tensor> {
        let out = Out::New;
        new(self.max_pool2d_backward_op(&mut Sink::Eager, dy, indices, input_hw, spec, out)?)
    }

    /// [`Gpu::max_pool2d_backward`] into the caller's tensor `dx`.
    pub fn max_pool2d_backward_into(
        &self,
        dy: &Tensor,
        indices: &IndexTensor,
        input_hw: [usize; 2],
        spec: &Pool2dSpec,
        dx: &mut Tensor,
    ) -> Result<()> {
        let out = Out::Into(dx);
        self.max_pool2d_backward_op(&mut Sink::Eager, dy, indices, input_hw, spec, out)
            .map(drop)
    }

    /// Average pool on the GPU. Same semantics as
    /// [`reference::avg_pool2d_forward`](crate::reference::avg_pool2d_forward).
    pub fn avg_pool2d_forward(
        &self,
        x: &Tensor,
        spec: &Pool2dSpec,
        count_include_pad: bool,
    ) -> Result<Tensor> {
        let out = Out::New;
        new(self.avg_pool2d_forward_op(&mut Sink::Eager, x, spec, count_include_pad, out)?)
    }

    /// [`Gpu::avg_pool2d_forward`] into the caller's tensor `y`.
    pub fn avg_pool2d_forward_into(
        &self,
        x: &Tensor,
        spec: &Pool2dSpec,
        count_include_pad: bool,
        y: &mut Tensor,
    ) -> Result<()> {
        let out = Out::Into(y);
        self.avg_pool2d_forward_op(&mut Sink::Eager, x, spec, count_include_pad, out)
            .map(drop)
    }

    /// Average-pool backward on the GPU: each input element gathers `dy / divisor` from the
    /// windows that cover it (no atomics).
    pub fn avg_pool2d_backward(
        &self,
        dy: &Tensor,
        input_hw: [usize; 2],
        spec: &Pool2dSpec,
        count_include_pad: bool,
    ) -> Result<Tensor> {
        let (sink, out) = (&mut Sink::Eager, Out::New);
        new(self.avg_pool2d_backward_op(sink, dy, input_hw, spec, count_include_pad, out)?)
    }

    /// [`Gpu::avg_pool2d_backward`] into the caller's tensor `dx`.
    pub fn avg_pool2d_backward_into(
        &self,
        dy: &Tensor,
        input_hw: [usize; 2],
        spec: &Pool2dSpec,
        count_include_pad: bool,
        dx: &mut Tensor,
    ) -> Result<()> {
        let (sink, out) = (&mut Sink::Eager, Out::Into(dx));
        self.avg_pool2d_backward_op(sink, dy, input_hw, spec, count_include_pad, out)
            .map(drop)
    }
}

impl Gpu {
    /// Max-pool forward of a 16-bit `x`, read directly (see `kernels/storage.rs`): the values
    /// and indices are the f32 op's on the widened `x`, the values rounded once (exactly: a
    /// max is one of the inputs) into `dt` or written into an f32 output.
    fn max_pool2d_forward_16bit(
        &self,
        sink: &mut Sink<'_>,
        x: &Tensor,
        spec: &Pool2dSpec,
        outs: Option<(&mut Tensor, &mut IndexTensor)>,
        dt: DType,
    ) -> Result<Option<(Tensor, IndexTensor)>> {
        const OP: &str = "max_pool2d_forward";
        self.check_inputs(sink, OP, &[&x.raw])?;
        match outs {
            None => {
                let (y, idx) = self
                    .max_pool2d_forward_run(sink, x, spec, None)?
                    .ok_or_else(no_result)?;
                Ok(Some((self.cast_raw(sink, &y.raw, dt)?, idx)))
            }
            Some((y, idx)) if y.dtype() == DType::F32 => {
                self.max_pool2d_forward_run(sink, x, spec, Some((y, idx)))
            }
            Some((y, idx)) => {
                let shape = spec.max_geometry(dims4(&x.raw, "x")?)?.y_shape();
                self.target(sink, OP, &Out::Into(&mut *y), &shape, &[&x.raw])?;
                let mut y32 = Tensor {
                    raw: self.alloc(&shape, "max_pool2d_forward staged output")?,
                };
                self.max_pool2d_forward_run(sink, x, spec, Some((&mut y32, idx)))?;
                self.cast_into(sink, &y32.raw, y)?;
                Ok(None)
            }
        }
    }
}
