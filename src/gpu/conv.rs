//! conv2d forward, dx, dW and db on the GPU: validate, plan ([`plan`](super::plan)), bind the
//! plan's roles to the tensors and submit (or record). Each op has an eager form returning a new
//! tensor, an `_into` form writing the caller's tensor, and for the gradients an `_accumulate`
//! form adding into it.

use super::check::OpCall;
use super::output::Out;
use super::plan::{self, ConvPlan, DeviceProfile};
use super::staged::operand;
use super::submit::{Buffers, Sink};
use super::tensor::dims4;
use super::tune::{TuneKey, TunedOp, tuned_plan};
use super::{Gpu, IndexTensor, Tensor};
use crate::error::{Result, mismatch};
use crate::spec::Conv2dSpec;

/// One sample of a conv's input and output: when either is larger than a binding, the op runs
/// by row bands (`gpu/bands.rs`).
fn conv_units(g: &crate::spec::Conv2dGeometry) -> [(usize, &'static str); 2] {
    [
        (g.c * g.h * g.w, "input sample"),
        (g.k * g.oh * g.ow, "output sample"),
    ]
}

/// The new tensor of an op called with [`Out::New`].
pub(crate) fn new(t: Option<Tensor>) -> Result<Tensor> {
    t.ok_or_else(|| mismatch("internal: an op with a new output returned none".to_string()))
}

impl Gpu {
    /// Output tensor for an op, poisoned in checked mode.
    pub(crate) fn new_output(&self, shape: &[usize], what: &str) -> Result<Tensor> {
        let raw = self.alloc(shape, what)?;
        self.poison(&raw, f32::NAN.to_bits())?;
        Ok(Tensor { raw })
    }

    pub(crate) fn output_indices(&self, shape: &[usize], what: &str) -> Result<IndexTensor> {
        let raw = self.alloc(shape, what)?;
        self.poison(&raw, u32::MAX)?;
        Ok(IndexTensor { raw })
    }

    /// Runs (or records) a conv plan: its scratch, then its steps with `buffers` (plus the
    /// scratch) bound.
    pub(crate) fn run_conv(
        &self,
        sink: &mut Sink<'_>,
        op: &'static str,
        plan: &ConvPlan,
        buffers: Buffers<'_>,
    ) -> Result<()> {
        let alloc = |s: Option<(usize, &str)>| s.map(|(elems, what)| self.alloc(&[elems], what));
        let scratch = alloc(plan.scratch).transpose()?;
        let transforms = alloc(plan.transforms).transpose()?;
        let buffers = Buffers {
            partial: scratch.as_ref(),
            transform: transforms.as_ref(),
            ..buffers
        };
        self.run(sink, op, &plan.steps, &buffers)
    }

    pub(crate) fn conv2d_forward_op(
        &self,
        sink: &mut Sink<'_>,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        spec: &Conv2dSpec,
        out: Out<'_>,
    ) -> Result<Option<Tensor>> {
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
        let operands = [Some(x), Some(w), bias];
        if let Some(dt) = self.staged_dtype(OP, &operands, out.given())? {
            let body = |sink: &mut Sink<'_>, t: &[Option<&Tensor>], out: Out<'_>| {
                self.conv2d_forward_op(sink, operand(t, 0), operand(t, 1), t[2], spec, out)
            };
            return self.via_f32(sink, OP, dt, &operands, out, body);
        }
        let mut inputs = vec![&x.raw, &w.raw];
        inputs.extend(bias.map(|b| &b.raw));
        self.check_inputs(sink, OP, &inputs)?;
        let y = self.target(sink, OP, &out, &g.y_shape(), &inputs)?;
        if g.n > 0 && !plan::sample_fits(&self.profile, &conv_units(&g)) {
            let bias = bias.map(|b| &b.raw);
            self.conv2d_forward_bands(sink, &g, &x.raw, &w.raw, bias, &y)?;
        } else if g.n > 0 {
            let has_bias = bias.is_some();
            let buffers = Buffers {
                x: Some(&x.raw),
                w: Some(&w.raw),
                bias: bias.map(|b| &b.raw),
                out: Some(&y),
                ..Default::default()
            };
            let key = TuneKey::new(TunedOp::Forward, &g, has_bias);
            let plan_of = |p: &DeviceProfile| plan::conv2d_forward(p, &g, has_bias);
            let plan = tuned_plan(self, key, &plan_of, &buffers, y.len)?;
            self.run_conv(sink, OP, &plan, buffers)?;
        }
        let call = OpCall::ConvForward {
            x: x.raw.clone(),
            w: w.raw.clone(),
            bias: bias.map(|b| b.raw.clone()),
            spec: *spec,
        };
        self.finish(sink, out, y, Some((call, None, None)))
    }

    pub(crate) fn conv2d_backward_input_op(
        &self,
        sink: &mut Sink<'_>,
        dy: &Tensor,
        w: &Tensor,
        input_hw: [usize; 2],
        spec: &Conv2dSpec,
        out: Out<'_>,
    ) -> Result<Option<Tensor>> {
        const OP: &str = "conv2d_backward_input";
        let g =
            spec.backward_input_geometry(dims4(&dy.raw, "dy")?, dims4(&w.raw, "w")?, input_hw)?;
        let operands = [Some(dy), Some(w)];
        if let Some(dt) = self.staged_dtype(OP, &operands, out.given())? {
            let body = |sink: &mut Sink<'_>, t: &[Option<&Tensor>], out: Out<'_>| {
                let (dy, w) = (operand(t, 0), operand(t, 1));
                self.conv2d_backward_input_op(sink, dy, w, input_hw, spec, out)
            };
            return self.via_f32(sink, OP, dt, &operands, out, body);
        }
        let inputs = [&dy.raw, &w.raw];
        self.check_inputs(sink, OP, &inputs)?;
        let dx = self.target(sink, OP, &out, &g.x_shape(), &inputs)?;
        let before = self.before(sink, &out)?;
        if g.n > 0 && !plan::sample_fits(&self.profile, &conv_units(&g)) {
            let accumulate = matches!(out, Out::Accumulate(_));
            self.conv2d_backward_input_bands(sink, &g, &dy.raw, &w.raw, &dx, accumulate)?;
        } else if g.n > 0 {
            let accumulate = matches!(out, Out::Accumulate(_));
            let buffers = Buffers {
                dy: Some(&dy.raw),
                w: Some(&w.raw),
                out: Some(&dx),
                ..Default::default()
            };
            let key = TuneKey::new(TunedOp::BackwardInput, &g, accumulate);
            let plan_of = |p: &DeviceProfile| plan::conv2d_backward_input(p, &g, accumulate);
            let plan = tuned_plan(self, key, &plan_of, &buffers, dx.len)?;
            self.run_conv(sink, OP, &plan, buffers)?;
        }
        let call = OpCall::ConvBackwardInput {
            dy: dy.raw.clone(),
            w: w.raw.clone(),
            input_hw,
            spec: *spec,
        };
        self.finish(sink, out, dx, Some((call, None, before)))
    }

    pub(crate) fn conv2d_backward_weight_op(
        &self,
        sink: &mut Sink<'_>,
        x: &Tensor,
        dy: &Tensor,
        kernel_hw: [usize; 2],
        spec: &Conv2dSpec,
        out: Out<'_>,
    ) -> Result<Option<Tensor>> {
        const OP: &str = "conv2d_backward_weight";
        let g =
            spec.backward_weight_geometry(dims4(&x.raw, "x")?, dims4(&dy.raw, "dy")?, kernel_hw)?;
        let operands = [Some(x), Some(dy)];
        if let Some(dt) = self.staged_dtype(OP, &operands, out.given())? {
            let body = |sink: &mut Sink<'_>, t: &[Option<&Tensor>], out: Out<'_>| {
                let (x, dy) = (operand(t, 0), operand(t, 1));
                self.conv2d_backward_weight_op(sink, x, dy, kernel_hw, spec, out)
            };
            return self.via_f32(sink, OP, dt, &operands, out, body);
        }
        let inputs = [&x.raw, &dy.raw];
        self.check_inputs(sink, OP, &inputs)?;
        let dw = self.target(sink, OP, &out, &g.w_shape(), &inputs)?;
        let before = self.before(sink, &out)?;
        let accumulate = matches!(out, Out::Accumulate(_));
        if g.n > 0 && !plan::sample_fits(&self.profile, &conv_units(&g)) {
            self.conv2d_backward_weight_bands(sink, &g, &x.raw, &dy.raw, &dw, accumulate)?;
        } else {
            let buffers = Buffers {
                x: Some(&x.raw),
                dy: Some(&dy.raw),
                out: Some(&dw),
                ..Default::default()
            };
            let key = TuneKey::new(TunedOp::BackwardWeight, &g, accumulate);
            let plan_of = |p: &DeviceProfile| plan::conv2d_backward_weight(p, &g, accumulate);
            let plan = tuned_plan(self, key, &plan_of, &buffers, dw.len)?;
            self.run_conv(sink, OP, &plan, buffers)?;
        }
        let call = OpCall::ConvBackwardWeight {
            x: x.raw.clone(),
            dy: dy.raw.clone(),
            kernel_hw,
            spec: *spec,
        };
        self.finish(sink, out, dw, Some((call, None, before)))
    }

    pub(crate) fn conv2d_backward_bias_op(
        &self,
        sink: &mut Sink<'_>,
        dy: &Tensor,
        out: Out<'_>,
    ) -> Result<Option<Tensor>> {
        const OP: &str = "conv2d_backward_bias";
        let shape = dims4(&dy.raw, "dy")?;
        if let Some(dt) = self.staged_dtype(OP, &[Some(dy)], out.given())? {
            let body = |sink: &mut Sink<'_>, t: &[Option<&Tensor>], out: Out<'_>| {
                self.conv2d_backward_bias_op(sink, operand(t, 0), out)
            };
            return self.via_f32(sink, OP, dt, &[Some(dy)], out, body);
        }
        self.check_inputs(sink, OP, &[&dy.raw])?;
        let db = self.target(sink, OP, &out, &[shape[1]], &[&dy.raw])?;
        let before = self.before(sink, &out)?;
        let accumulate = matches!(out, Out::Accumulate(_));
        let [n, k, oh, ow] = shape;
        if n * oh * ow > 0 && !plan::sample_fits(&self.profile, &[(k * oh * ow, "dy sample")]) {
            self.conv2d_backward_bias_bands(sink, shape, &dy.raw, &db, accumulate)?;
        } else if shape[1] > 0 {
            let plan = plan::conv2d_backward_bias(&self.profile, shape, accumulate)?;
            let buffers = Buffers {
                dy: Some(&dy.raw),
                out: Some(&db),
                ..Default::default()
            };
            self.run_conv(sink, OP, &plan, buffers)?;
        }
        let call = OpCall::ConvBackwardBias { dy: dy.raw.clone() };
        self.finish(sink, out, db, Some((call, None, before)))
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
        new(self.conv2d_forward_op(&mut Sink::Eager, x, w, bias, spec, Out::New)?)
    }

    /// [`Gpu::conv2d_forward`] into the caller's tensor `y` (e.g. a view of its own buffer),
    /// which must have the result's shape and not overlap an input.
    pub fn conv2d_forward_into(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        spec: &Conv2dSpec,
        y: &mut Tensor,
    ) -> Result<()> {
        self.conv2d_forward_op(&mut Sink::Eager, x, w, bias, spec, Out::Into(y))
            .map(drop)
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
        let out = Out::New;
        new(self.conv2d_backward_input_op(&mut Sink::Eager, dy, w, input_hw, spec, out)?)
    }

    /// [`Gpu::conv2d_backward_input`] into the caller's tensor `dx`.
    pub fn conv2d_backward_input_into(
        &self,
        dy: &Tensor,
        w: &Tensor,
        input_hw: [usize; 2],
        spec: &Conv2dSpec,
        dx: &mut Tensor,
    ) -> Result<()> {
        self.conv2d_backward_input_op(&mut Sink::Eager, dy, w, input_hw, spec, Out::Into(dx))
            .map(drop)
    }

    /// `dx += conv2d_backward_input(dy, w)` in place (gradient accumulation); the input size is
    /// `dx`'s. Deterministic: the op's result is computed into scratch and added in one pass.
    /// `Err` if `dx` shares a buffer with `dy` or `w`.
    pub fn conv2d_backward_input_accumulate(
        &self,
        dy: &Tensor,
        w: &Tensor,
        spec: &Conv2dSpec,
        dx: &mut Tensor,
    ) -> Result<()> {
        let [_, _, h, wd] = dims4(&dx.raw, "dx")?;
        let out = Out::Accumulate(dx);
        self.conv2d_backward_input_op(&mut Sink::Eager, dy, w, [h, wd], spec, out)
            .map(drop)
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
        let out = Out::New;
        new(self.conv2d_backward_weight_op(&mut Sink::Eager, x, dy, kernel_hw, spec, out)?)
    }

    /// [`Gpu::conv2d_backward_weight`] into the caller's tensor `dw`.
    pub fn conv2d_backward_weight_into(
        &self,
        x: &Tensor,
        dy: &Tensor,
        kernel_hw: [usize; 2],
        spec: &Conv2dSpec,
        dw: &mut Tensor,
    ) -> Result<()> {
        self.conv2d_backward_weight_op(&mut Sink::Eager, x, dy, kernel_hw, spec, Out::Into(dw))
            .map(drop)
    }

    /// `dw += conv2d_backward_weight(x, dy)` in place; the kernel size is `dw`'s. Deterministic:
    /// the reduction's ordered second pass adds into `dw`. `Err` if `dw` shares a buffer with
    /// `x` or `dy`.
    pub fn conv2d_backward_weight_accumulate(
        &self,
        x: &Tensor,
        dy: &Tensor,
        spec: &Conv2dSpec,
        dw: &mut Tensor,
    ) -> Result<()> {
        let [_, _, kh, kw] = dims4(&dw.raw, "dw")?;
        let out = Out::Accumulate(dw);
        self.conv2d_backward_weight_op(&mut Sink::Eager, x, dy, [kh, kw], spec, out)
            .map(drop)
    }

    /// db on the GPU: dy summed over N, OH, OW per channel, deterministic.
    pub fn conv2d_backward_bias(&self, dy: &Tensor) -> Result<Tensor> {
        new(self.conv2d_backward_bias_op(&mut Sink::Eager, dy, Out::New)?)
    }

    /// [`Gpu::conv2d_backward_bias`] into the caller's tensor `db`.
    pub fn conv2d_backward_bias_into(&self, dy: &Tensor, db: &mut Tensor) -> Result<()> {
        self.conv2d_backward_bias_op(&mut Sink::Eager, dy, Out::Into(db))
            .map(drop)
    }

    /// `db += conv2d_backward_bias(dy)` in place. `Err` if `db` shares a buffer with `dy`.
    pub fn conv2d_backward_bias_accumulate(&self, dy: &Tensor, db: &mut Tensor) -> Result<()> {
        self.conv2d_backward_bias_op(&mut Sink::Eager, dy, Out::Accumulate(db))
            .map(drop)
    }
}

/// A conv op, for [`Gpu::conv2d_workspace_bytes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvOp {
    /// [`Gpu::conv2d_forward`] (with a bias or not: the same scratch).
    Forward,
    /// [`Gpu::conv2d_backward_input`].
    BackwardInput,
    /// [`Gpu::conv2d_backward_input_accumulate`].
    BackwardInputAccumulate,
    /// [`Gpu::conv2d_backward_weight`] and its accumulating form.
    BackwardWeight,
    /// [`Gpu::conv2d_backward_bias`] and its accumulating form.
    BackwardBias,
}

impl Gpu {
    /// The scratch bytes (split-K partial sums) `op` will allocate for an input of shape `x`
    /// `[N, C, H, W]` and a weight of shape `w` `[K, C/groups, kh, kw]` under `spec`, on this
    /// device and within its workspace bound ([`GpuBuilder::max_workspace_bytes`]); 0 when it
    /// needs none. Pools need none. `Err` for shapes the op would refuse.
    ///
    /// ```no_run
    /// # fn main() -> wgconv::Result<()> {
    /// use wgconv::gpu::ConvOp;
    /// let gpu = wgconv::Gpu::builder().max_workspace_bytes(1 << 20).build()?;
    /// let spec = wgconv::Conv2dSpec::default();
    /// let bytes = gpu.conv2d_workspace_bytes(ConvOp::BackwardWeight, [8, 64, 28, 28], [64, 64, 3, 3], &spec)?;
    /// assert!(bytes <= 1 << 20);
    /// # Ok(()) }
    /// ```
    ///
    /// [`GpuBuilder::max_workspace_bytes`]: super::GpuBuilder::max_workspace_bytes
    pub fn conv2d_workspace_bytes(
        &self,
        op: ConvOp,
        x: [usize; 4],
        w: [usize; 4],
        spec: &Conv2dSpec,
    ) -> Result<u64> {
        let g = spec.forward_geometry(x, w)?;
        if let Some(bytes) = self.band_workspace(op, &g)? {
            return Ok(bytes);
        }
        let p = &self.profile;
        let plan = match op {
            _ if g.n == 0 && op != ConvOp::BackwardWeight => return Ok(0),
            ConvOp::Forward => plan::conv2d_forward(p, &g, false)?,
            ConvOp::BackwardInput => plan::conv2d_backward_input(p, &g, false)?,
            ConvOp::BackwardInputAccumulate => plan::conv2d_backward_input(p, &g, true)?,
            ConvOp::BackwardWeight => plan::conv2d_backward_weight(p, &g, false)?,
            ConvOp::BackwardBias => plan::conv2d_backward_bias(p, g.y_shape(), false)?,
        };
        Ok(plan.workspace_bytes())
    }

    /// [`Gpu::conv2d_workspace_bytes`] for tensors of `dtype`: for 16-bit tensors also the f32
    /// copies the op stages its operands and result through (`x`, `w`, the bias, `y` for the
    /// forward; `dy`, `w`, `dx` for dx; `x`, `dy`, `dW` for dW; `dy`, `db` for db), alive only
    /// while the op runs.
    pub fn conv2d_workspace_bytes_as(
        &self,
        op: ConvOp,
        x: [usize; 4],
        w: [usize; 4],
        spec: &Conv2dSpec,
        dtype: crate::DType,
    ) -> Result<u64> {
        let bytes = self.conv2d_workspace_bytes(op, x, w, spec)?;
        if dtype == crate::DType::F32 {
            return Ok(bytes);
        }
        let g = spec.forward_geometry(x, w)?;
        let n = |s: &[usize]| s.iter().map(|&d| d as u64).product::<u64>();
        let (xs, ws, ys, k) = (
            n(&g.x_shape()),
            n(&g.w_shape()),
            n(&g.y_shape()),
            g.k as u64,
        );
        let staged = match op {
            ConvOp::Forward => xs + ws + k + ys,
            ConvOp::BackwardInput | ConvOp::BackwardInputAccumulate => ys + ws + xs,
            ConvOp::BackwardWeight => xs + ys + ws,
            ConvOp::BackwardBias => ys + k,
        };
        Ok(bytes.saturating_add(staged.saturating_mul(4)))
    }

    /// The workspace of an op whose samples are cut into row bands (`None` when they are not):
    /// the band tensors and the most scratch one band's plan takes.
    fn band_workspace(&self, op: ConvOp, g: &crate::spec::Conv2dGeometry) -> Result<Option<u64>> {
        let p = &self.profile;
        let dy_units = [(g.k * g.oh * g.ow, "dy sample")];
        let banded = match op {
            ConvOp::BackwardBias => !plan::sample_fits(p, &dy_units),
            _ => !plan::sample_fits(p, &conv_units(g)),
        };
        if g.n * g.oh * g.ow == 0 || !banded {
            return Ok(None);
        }
        let scratch = |plan: ConvPlan| plan.workspace_bytes();
        if op == ConvOp::BackwardBias {
            let ranges = plan::row_ranges(p, [g.k, g.oh, g.ow])?;
            let most = ranges.iter().map(|&(a, b)| b - a).max().unwrap_or(0);
            let band = (g.k * most * g.ow) as u64 * 4;
            let sub = p.less_workspace(band);
            let plan = plan::conv2d_backward_bias(&sub, [1, g.k, most, g.ow], true)?;
            return Ok(Some(band + scratch(plan)));
        }
        let bands = match op {
            ConvOp::Forward => plan::forward_bands(p, g, false)?,
            ConvOp::BackwardWeight => plan::forward_bands(p, g, true)?,
            _ => plan::backward_input_bands(p, g)?,
        };
        let [a, b] = plan::band_sizes(&bands);
        let bytes = (a + b) as u64 * 4;
        let sub = p.less_workspace(bytes);
        let mut most = 0;
        for band in &bands {
            let bg = &band.geometry;
            let plan = match op {
                ConvOp::Forward => plan::conv2d_forward(&sub, bg, false)?,
                ConvOp::BackwardWeight => plan::conv2d_backward_weight(&sub, bg, true)?,
                ConvOp::BackwardInput => plan::conv2d_backward_input(&sub, bg, false)?,
                _ => plan::conv2d_backward_input(&sub, bg, true)?,
            };
            most = most.max(scratch(plan));
        }
        Ok(Some(bytes + most))
    }
}
