//! max-pool and avg-pool, forward and backward, on the GPU.

use super::conv::to_u32;
use super::kernels::{Kernel, PoolParams};
use super::tensor::dims4;
use super::{Dispatch, Gpu, IndexTensor, Tensor};
use crate::error::{Result, mismatch};
use crate::spec::{Pool2dGeometry, Pool2dSpec};

fn pool_params(g: &Pool2dGeometry, count_include_pad: bool) -> Result<PoolParams> {
    let s = &g.spec;
    to_u32(g.h + 2 * s.padding[0], "padded input height")?;
    to_u32(g.w + 2 * s.padding[1], "padded input width")?;
    // The kernels compute window bounds in i32: the last window's far end, counted from the top
    // of the padded input, must stay below 2^31.
    for (a, out, what) in [
        (0, g.oh, "pool window rows"),
        (1, g.ow, "pool window columns"),
    ] {
        let span = (s.kernel[a] - 1)
            .checked_mul(s.dilation[a])
            .and_then(|v| v.checked_add((out - 1).checked_mul(s.stride[a])?))
            .and_then(|v| v.checked_add(1));
        to_u32(span.unwrap_or(usize::MAX), what)?;
    }
    Ok(PoolParams {
        h: to_u32(g.h, "H")?,
        w: to_u32(g.w, "W")?,
        oh: to_u32(g.oh, "OH")?,
        ow: to_u32(g.ow, "OW")?,
        kh: to_u32(s.kernel[0], "kernel height")?,
        kw: to_u32(s.kernel[1], "kernel width")?,
        stride_h: to_u32(s.stride[0], "stride height")?,
        stride_w: to_u32(s.stride[1], "stride width")?,
        pad_h: to_u32(s.padding[0], "padding height")?,
        pad_w: to_u32(s.padding[1], "padding width")?,
        dil_h: to_u32(s.dilation[0], "dilation height")?,
        dil_w: to_u32(s.dilation[1], "dilation width")?,
        count_include_pad: count_include_pad as u32,
        ..Default::default()
    })
}

/// Which tensors a pool dispatch binds, each chunked by planes (N·C).
struct PoolBindings<'a> {
    /// `(buffer, elements per plane)`, in binding order; the last is the output.
    tensors: Vec<(&'a wgpu::Buffer, usize, &'static str)>,
    /// Which element offset field each tensor's window offset goes to.
    offsets: Vec<fn(&mut PoolParams, u32)>,
    /// Elements per plane of the output (one invocation each).
    out_unit: usize,
}

impl Gpu {
    fn run_pool(
        &self,
        op: &str,
        kernel: Kernel,
        planes: usize,
        base: PoolParams,
        b: PoolBindings<'_>,
    ) -> Result<()> {
        if planes == 0 || b.out_unit == 0 {
            return Ok(());
        }
        let units: Vec<(usize, &str)> = b.tensors.iter().map(|&(_, u, w)| (u, w)).collect();
        let per = self.items_per_chunk(&units, planes)?;
        let mut ds = Vec::new();
        for p0 in (0..planes).step_by(per) {
            let p1 = (p0 + per).min(planes);
            let mut params = base;
            params.planes = (p1 - p0) as u32;
            params.total = to_u32((p1 - p0) * b.out_unit, "outputs per chunk")?;
            let mut bindings = Vec::new();
            for (&(buffer, unit, _), set) in b.tensors.iter().zip(&b.offsets) {
                let (bind, off) = self.window(buffer, p0 * unit, p1 * unit);
                set(&mut params, off);
                bindings.push(bind);
            }
            ds.push(Dispatch {
                kernel,
                params: bytemuck::bytes_of(&params).to_vec(),
                bindings,
                items: u64::from(params.total),
            });
        }
        self.execute(op, &ds)
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
            self.run_pool(
                OP,
                Kernel::MaxPool2dForward,
                g.n * g.c,
                pool_params(&g, false)?,
                PoolBindings {
                    tensors: vec![
                        (x.raw.buffer(), g.h * g.w, "input plane"),
                        (y.raw.buffer(), g.oh * g.ow, "output plane"),
                        (idx.raw.buffer(), g.oh * g.ow, "index plane"),
                    ],
                    offsets: vec![|p, o| p.in_off = o, |p, o| p.out_off = o, |p, o| {
                        p.idx_off = o
                    }],
                    out_unit: g.oh * g.ow,
                },
            )?;
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
            self.run_pool(
                OP,
                Kernel::MaxPool2dBackward,
                g.n * g.c,
                pool_params(&g, false)?,
                PoolBindings {
                    tensors: vec![
                        (dy.raw.buffer(), g.oh * g.ow, "dy plane"),
                        (indices.raw.buffer(), g.oh * g.ow, "index plane"),
                        (dx.raw.buffer(), g.h * g.w, "dx plane"),
                    ],
                    offsets: vec![|p, o| p.in_off = o, |p, o| p.idx_off = o, |p, o| {
                        p.out_off = o
                    }],
                    out_unit: g.h * g.w,
                },
            )?;
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
            self.run_pool(
                OP,
                Kernel::AvgPool2dForward,
                g.n * g.c,
                pool_params(&g, count_include_pad)?,
                PoolBindings {
                    tensors: vec![
                        (x.raw.buffer(), g.h * g.w, "input plane"),
                        (y.raw.buffer(), g.oh * g.ow, "output plane"),
                    ],
                    offsets: vec![|p, o| p.in_off = o, |p, o| p.out_off = o],
                    out_unit: g.oh * g.ow,
                },
            )?;
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
            self.run_pool(
                OP,
                Kernel::AvgPool2dBackward,
                g.n * g.c,
                pool_params(&g, count_include_pad)?,
                PoolBindings {
                    tensors: vec![
                        (dy.raw.buffer(), g.oh * g.ow, "dy plane"),
                        (dx.raw.buffer(), g.h * g.w, "dx plane"),
                    ],
                    offsets: vec![|p, o| p.in_off = o, |p, o| p.out_off = o],
                    out_unit: g.h * g.w,
                },
            )?;
        }
        if self.checked {
            self.check_avg_pool2d_backward(dy, input_hw, spec, count_include_pad, &dx)?;
        }
        Ok(dx)
    }
}
