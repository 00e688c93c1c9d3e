//! conv2d forward, dx, dW and db on the GPU.

use super::kernels::{ConvParams, Kernel, ReduceParams};
use super::tensor::{Raw, dims4};
use super::{Bind, Dispatch, Gpu, IndexTensor, Tensor};
use crate::error::{Error, Result, mismatch};
use crate::spec::{Conv2dGeometry, Conv2dSpec};

/// Largest number of splits of one reduction (dW, db), and the most partial sums kept.
const MAX_SPLITS: usize = 1024;
const MAX_PARTIALS: usize = 1 << 24;
/// Reduction elements one dW/db workgroup sums, aimed for.
const SPLIT_TARGET: usize = 4096;

/// A size as a kernel `u32`, refusing values past `i32::MAX` so that the kernels' signed
/// position arithmetic cannot wrap.
pub(crate) fn to_u32(v: usize, what: &str) -> Result<u32> {
    if v > i32::MAX as usize {
        return Err(Error::DeviceLimit(format!(
            "{what} = {v} exceeds the GPU kernels' 31-bit index range"
        )));
    }
    Ok(v as u32)
}

/// The params block of a geometry; per-chunk fields (`n`, offsets, `total`) are set by callers.
fn conv_params(g: &Conv2dGeometry) -> Result<ConvParams> {
    let p = g.padding;
    to_u32(g.h + p.top + p.bottom, "padded input height")?;
    to_u32(g.w + p.left + p.right, "padded input width")?;
    Ok(ConvParams {
        c: to_u32(g.c, "C")?,
        h: to_u32(g.h, "H")?,
        w: to_u32(g.w, "W")?,
        k: to_u32(g.k, "K")?,
        kh: to_u32(g.kh, "kh")?,
        kw: to_u32(g.kw, "kw")?,
        groups: to_u32(g.groups, "groups")?,
        oh: to_u32(g.oh, "OH")?,
        ow: to_u32(g.ow, "OW")?,
        cg: to_u32(g.cg(), "C/groups")?,
        kg: to_u32(g.kg(), "K/groups")?,
        stride_h: to_u32(g.stride[0], "stride_h")?,
        stride_w: to_u32(g.stride[1], "stride_w")?,
        dil_h: to_u32(g.dilation[0], "dilation_h")?,
        dil_w: to_u32(g.dilation[1], "dilation_w")?,
        pad_top: to_u32(p.top, "padding top")?,
        pad_left: to_u32(p.left, "padding left")?,
        ..Default::default()
    })
}

/// Batch chunks `(n0, n1)` such that each chunked tensor (`per-sample elements`, name) fits a
/// binding.
fn batch_chunks(gpu: &Gpu, n: usize, units: &[(usize, &str)]) -> Result<Vec<(usize, usize)>> {
    let per = gpu.items_per_chunk(units, n)?;
    Ok((0..n).step_by(per).map(|n0| (n0, (n0 + per).min(n))).collect())
}

/// Splits of a reduction of `count` elements into at most `max_splits` ranges.
fn splits(count: usize, elems: usize) -> (usize, usize) {
    let max_splits = (MAX_PARTIALS / elems.max(1)).clamp(1, MAX_SPLITS);
    let want = count.div_ceil(SPLIT_TARGET).clamp(1, max_splits);
    let split_len = count.div_ceil(want).max(1);
    (count.div_ceil(split_len).max(1), split_len)
}

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

    fn owners(&self, op: &str, raws: &[&Raw]) -> Result<()> {
        raws.iter().try_for_each(|r| self.check_owner(r, op))
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
            self.check_bindable(w.len(), "the weight")?;
            let base = conv_params(&g)?;
            let (xu, yu) = (g.c * g.h * g.w, g.k * g.oh * g.ow);
            let chunks = batch_chunks(self, g.n, &[(xu, "input sample"), (yu, "output sample")])?;
            let wb = Bind::whole(w.raw.buffer(), w.len());
            let bb = match bias {
                Some(b) => Bind::whole(b.raw.buffer(), b.len()),
                None => Bind::whole(&self.dummy, 0),
            };
            let mut ds = Vec::new();
            for (n0, n1) in chunks {
                let (xb, x_off) = self.window(x.raw.buffer(), n0 * xu, n1 * xu);
                let (yb, out_off) = self.window(y.raw.buffer(), n0 * yu, n1 * yu);
                let total = (n1 - n0) * yu;
                let params = ConvParams {
                    n: (n1 - n0) as u32,
                    has_bias: bias.is_some() as u32,
                    x_off,
                    out_off,
                    total: to_u32(total, "outputs per chunk")?,
                    ..base
                };
                ds.push(Dispatch {
                    kernel: Kernel::Conv2dForward,
                    params: bytemuck::bytes_of(&params).to_vec(),
                    bindings: vec![xb, wb, bb, yb],
                    items: total as u64,
                });
            }
            self.execute(OP, &ds)?;
        }
        if self.checked {
            self.check_conv2d_forward(x, w, bias, spec, &y)?;
        }
        Ok(y)
    }

    /// dx on the GPU: the transposed convolution of dy, by index arithmetic. Same semantics as
    /// [`reference::conv2d_backward_input`](crate::reference::conv2d_backward_input).
    pub fn conv2d_backward_input(
        &self,
        dy: &Tensor,
        w: &Tensor,
        input_hw: [usize; 2],
        spec: &Conv2dSpec,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d_backward_input";
        let g = spec.backward_input_geometry(dims4(&dy.raw, "dy")?, dims4(&w.raw, "w")?, input_hw)?;
        self.owners(OP, &[&dy.raw, &w.raw])?;
        let dx = self.new_output(&g.x_shape(), "conv2d_backward_input output")?;
        if g.n > 0 {
            self.check_bindable(w.len(), "the weight")?;
            let base = conv_params(&g)?;
            let (xu, yu) = (g.c * g.h * g.w, g.k * g.oh * g.ow);
            let chunks = batch_chunks(self, g.n, &[(xu, "dx sample"), (yu, "dy sample")])?;
            let wb = Bind::whole(w.raw.buffer(), w.len());
            let mut ds = Vec::new();
            for (n0, n1) in chunks {
                let (dyb, dy_off) = self.window(dy.raw.buffer(), n0 * yu, n1 * yu);
                let (dxb, out_off) = self.window(dx.raw.buffer(), n0 * xu, n1 * xu);
                let total = (n1 - n0) * xu;
                let params = ConvParams {
                    n: (n1 - n0) as u32,
                    dy_off,
                    out_off,
                    total: to_u32(total, "inputs per chunk")?,
                    ..base
                };
                ds.push(Dispatch {
                    kernel: Kernel::Conv2dBackwardInput,
                    params: bytemuck::bytes_of(&params).to_vec(),
                    bindings: vec![dyb, wb, dxb],
                    items: total as u64,
                });
            }
            self.execute(OP, &ds)?;
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
        let g = spec.backward_weight_geometry(dims4(&x.raw, "x")?, dims4(&dy.raw, "dy")?, kernel_hw)?;
        self.owners(OP, &[&x.raw, &dy.raw])?;
        let dw = self.new_output(&g.w_shape(), "conv2d_backward_weight output")?;
        let elems = dw.len();
        self.check_bindable(elems, "dW")?;
        let base = conv_params(&g)?;
        let (xu, yu) = (g.c * g.h * g.w, g.k * g.oh * g.ow);
        let chunks = if g.n == 0 {
            vec![(0, 0)]
        } else {
            batch_chunks(self, g.n, &[(xu, "input sample"), (yu, "dy sample")])?
        };
        let max_count = chunks.iter().map(|&(a, b)| (b - a) * g.oh * g.ow).max().unwrap_or(0);
        let (max_splits, _) = splits(max_count, elems);
        self.check_bindable(max_splits * elems, "dW partial sums")?;
        let partial = self.alloc(&[max_splits * elems], "dW partial sums")?;
        let mut ds = Vec::new();
        for (ci, &(n0, n1)) in chunks.iter().enumerate() {
            let count = (n1 - n0) * g.oh * g.ow;
            let (nsplit, split_len) = splits(count, elems);
            let pb = Bind::whole(partial.buffer(), nsplit * elems);
            if count > 0 {
                let (xb, x_off) = self.window(x.raw.buffer(), n0 * xu, n1 * xu);
                let (dyb, dy_off) = self.window(dy.raw.buffer(), n0 * yu, n1 * yu);
                let params = ConvParams {
                    n: (n1 - n0) as u32,
                    x_off,
                    dy_off,
                    total: to_u32(nsplit * elems, "dW workgroups")?,
                    splits: nsplit as u32,
                    split_len: to_u32(split_len, "dW split length")?,
                    ..base
                };
                ds.push(Dispatch {
                    kernel: Kernel::Conv2dBackwardWeight,
                    params: bytemuck::bytes_of(&params).to_vec(),
                    bindings: vec![xb, dyb, pb],
                    items: (nsplit * elems) as u64,
                });
            }
            ds.push(self.reduce_dispatch(
                pb,
                dw.raw.buffer(),
                elems,
                if count > 0 { nsplit } else { 0 },
                ci > 0,
            ));
        }
        self.execute(OP, &ds)?;
        if self.checked {
            self.check_conv2d_backward_weight(x, dy, kernel_hw, spec, &dw)?;
        }
        Ok(dw)
    }

    /// The second pass of a split reduction: `out (+)= Σ_s partial[s]`.
    fn reduce_dispatch<'a>(
        &self,
        partial: Bind<'a>,
        out: &'a wgpu::Buffer,
        elems: usize,
        splits: usize,
        accumulate: bool,
    ) -> Dispatch<'a> {
        let params = ReduceParams {
            elems: elems as u32,
            splits: splits as u32,
            accumulate: accumulate as u32,
            out_off: 0,
        };
        Dispatch {
            kernel: Kernel::ReducePartials,
            params: bytemuck::bytes_of(&params).to_vec(),
            bindings: vec![partial, Bind::whole(out, elems)],
            items: elems as u64,
        }
    }

    /// db on the GPU: dy summed over N, OH, OW per channel, deterministic.
    pub fn conv2d_backward_bias(&self, dy: &Tensor) -> Result<Tensor> {
        const OP: &str = "conv2d_backward_bias";
        let [n, k, oh, ow] = dims4(&dy.raw, "dy")?;
        self.check_owner(&dy.raw, OP)?;
        let db = self.new_output(&[k], "conv2d_backward_bias output")?;
        if k == 0 {
            return Ok(db);
        }
        let base = ConvParams {
            k: to_u32(k, "K")?,
            oh: to_u32(oh, "OH")?,
            ow: to_u32(ow, "OW")?,
            ..Default::default()
        };
        let yu = k * oh * ow;
        let chunks = if n * oh * ow == 0 {
            vec![(0, 0)]
        } else {
            batch_chunks(self, n, &[(yu, "dy sample")])?
        };
        let max_count = chunks.iter().map(|&(a, b)| (b - a) * oh * ow).max().unwrap_or(0);
        let partial = self.alloc(&[splits(max_count, k).0 * k], "db partial sums")?;
        let mut ds = Vec::new();
        for (ci, &(n0, n1)) in chunks.iter().enumerate() {
            let count = (n1 - n0) * oh * ow;
            let (nsplit, split_len) = splits(count, k);
            let pb = Bind::whole(partial.buffer(), nsplit * k);
            if count > 0 {
                let (dyb, dy_off) = self.window(dy.raw.buffer(), n0 * yu, n1 * yu);
                let params = ConvParams {
                    n: (n1 - n0) as u32,
                    dy_off,
                    total: to_u32(nsplit * k, "db workgroups")?,
                    splits: nsplit as u32,
                    split_len: to_u32(split_len, "db split length")?,
                    ..base
                };
                ds.push(Dispatch {
                    kernel: Kernel::Conv2dBackwardBias,
                    params: bytemuck::bytes_of(&params).to_vec(),
                    bindings: vec![dyb, pb],
                    items: (nsplit * k) as u64,
                });
            }
            ds.push(self.reduce_dispatch(pb, db.raw.buffer(), k, if count > 0 { nsplit } else { 0 }, ci > 0));
        }
        self.execute(OP, &ds)?;
        if self.checked {
            self.check_conv2d_backward_bias(dy, &db)?;
        }
        Ok(db)
    }
}
