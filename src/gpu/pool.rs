//! max-pool and avg-pool, forward and backward, on the GPU: validate, plan
//! ([`plan::pool`]), bind and submit.

use super::plan::{self, PoolKind};
use super::submit::Buffers;
use super::tensor::dims4;
use super::{Gpu, IndexTensor, Tensor};
use crate::error::{Result, mismatch};
use crate::spec::{Pool2dGeometry, Pool2dSpec};

impl Gpu {
    /// Plans and runs a pool op whose result is not empty.
    fn run_pool(
        &self,
        op: &str,
        kind: PoolKind,
        g: &Pool2dGeometry,
        count_include_pad: bool,
        buffers: Buffers<'_>,
    ) -> Result<()> {
        let steps = plan::pool(&self.profile, kind, g, count_include_pad)?;
        if steps.is_empty() {
            return Ok(());
        }
        self.run(op, &steps, &buffers)
    }

    /// Max-pool on the GPU: values and u32 argmax indices (flat `h * W + w` in the input
    /// plane), following PyTorch's scan exactly. Same semantics as
    /// [`reference::max_pool2d_forward`](crate::reference::max_pool2d_forward).
    pub fn max_pool2d_forward(
        &self,
        x: &Tensor,
        spec: &Pool2dSpec,
    ) -> Result<(Tensor, IndexTensor)> {
        const OP: &str = "max_pool2d_forward";
        let g = spec.geometry(dims4(&x.raw, "x")?)?;
        crate::reference::pool::check_plane_indexable(g.h, g.w)?;
        self.check_owner(&x.raw, OP)?;
        let y = self.new_output(&g.y_shape(), "max_pool2d_forward output")?;
        let idx = self.output_indices(&g.y_shape(), "max_pool2d_forward indices")?;
        if !y.is_empty() {
            let buffers = Buffers {
                x: Some(x.raw.buffer()),
                out: Some(y.raw.buffer()),
                indices: Some(idx.raw.buffer()),
                ..Default::default()
            };
            self.run_pool(OP, PoolKind::MaxForward, &g, false, buffers)?;
        }
        if self.checked {
            self.check_max_pool2d_forward(x, spec, &y, &idx)?;
        }
        Ok((y, idx))
    }

    /// Max-pool backward on the GPU: each input element gathers dy from the windows that can
    /// contain it and whose index names it (no atomics). Indices must come from
    /// [`Gpu::max_pool2d_forward`] with the same spec: an index outside its window is ignored
    /// here (as in PyTorch's CUDA kernel), while the reference scatters to it.
    pub fn max_pool2d_backward(
        &self,
        dy: &Tensor,
        indices: &IndexTensor,
        input_hw: [usize; 2],
        spec: &Pool2dSpec,
    ) -> Result<Tensor> {
        const OP: &str = "max_pool2d_backward";
        let g = spec.backward_geometry(dims4(&dy.raw, "dy")?, input_hw, false)?;
        crate::reference::pool::check_plane_indexable(g.h, g.w)?;
        if indices.shape() != dy.shape() {
            return Err(mismatch(format!(
                "indices shape {:?} differs from dy shape {:?}",
                indices.shape(),
                dy.shape()
            )));
        }
        self.check_owner(&dy.raw, OP)?;
        self.check_owner(&indices.raw, OP)?;
        let dx = self.new_output(&g.x_shape(), "max_pool2d_backward output")?;
        if !dx.is_empty() {
            let buffers = Buffers {
                dy: Some(dy.raw.buffer()),
                indices: Some(indices.raw.buffer()),
                out: Some(dx.raw.buffer()),
                ..Default::default()
            };
            self.run_pool(OP, PoolKind::MaxBackward, &g, false, buffers)?;
        }
        if self.checked {
            self.check_max_pool2d_backward(dy, indices, input_hw, spec, &dx)?;
        }
        Ok(dx)
    }

    /// Average pool on the GPU. Same semantics as
    /// [`reference::avg_pool2d_forward`](crate::reference::avg_pool2d_forward).
    pub fn avg_pool2d_forward(
        &self,
        x: &Tensor,
        spec: &Pool2dSpec,
        count_include_pad: bool,
    ) -> Result<Tensor> {
        const OP: &str = "avg_pool2d_forward";
        let g = spec.avg_geometry(dims4(&x.raw, "x")?)?;
        self.check_owner(&x.raw, OP)?;
        let y = self.new_output(&g.y_shape(), "avg_pool2d_forward output")?;
        if !y.is_empty() {
            let buffers = Buffers {
                x: Some(x.raw.buffer()),
                out: Some(y.raw.buffer()),
                ..Default::default()
            };
            self.run_pool(OP, PoolKind::AvgForward, &g, count_include_pad, buffers)?;
        }
        if self.checked {
            self.check_avg_pool2d_forward(x, spec, count_include_pad, &y)?;
        }
        Ok(y)
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
        const OP: &str = "avg_pool2d_backward";
        let g = spec.backward_geometry(dims4(&dy.raw, "dy")?, input_hw, true)?;
        self.check_owner(&dy.raw, OP)?;
        let dx = self.new_output(&g.x_shape(), "avg_pool2d_backward output")?;
        if !dx.is_empty() {
            let buffers = Buffers {
                dy: Some(dy.raw.buffer()),
                out: Some(dx.raw.buffer()),
                ..Default::default()
            };
            self.run_pool(OP, PoolKind::AvgBackward, &g, count_include_pad, buffers)?;
        }
        if self.checked {
            self.check_avg_pool2d_backward(dy, input_hw, spec, count_include_pad, &dx)?;
        }
        Ok(dx)
    }
}
