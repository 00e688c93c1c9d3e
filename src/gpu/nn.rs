//! The other pieces of a training step on the GPU: ReLU, the linear layer (a tiled GEMM),
//! softmax cross-entropy, SGD in place, and reshaping. Same names and argument order as
//! [`reference::nn`](crate::reference::nn); checked mode compares each with it.

use ndarray::{ArrayD, Ix1, Ix2};

use super::check::verdict;
use super::kernels::to_u32;
use super::kernels::{EltParams, Kernel, MatmulParams, RowsParams, Storage};
use super::recorder::Record;
use super::staged::operand;
use super::tensor::Raw;
use super::{Bind, Dispatch, Gpu, IndexTensor, Tensor};
use crate::dtype::DType;
use crate::error::{Error, Result, mismatch};
use crate::reference::nn as reference;
use crate::spec::numel;

/// Which stored operand layouts a GEMM reads (see `shaders/matmul.wgsl`).
struct Gemm<'a> {
    a: &'a Tensor,
    b: &'a Tensor,
    bias: Option<&'a Tensor>,
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
}

fn dims<D: ndarray::Dimension>(a: ArrayD<f64>) -> Result<ndarray::Array<f64, D>> {
    a.into_dimensionality::<D>()
        .map_err(|e| Error::ShapeMismatch(e.to_string()))
}

impl Gpu {
    pub(crate) fn host_f64(&self, t: &Tensor) -> Result<ArrayD<f64>> {
        Ok(self.download(t)?.mapv(f64::from))
    }

    /// The tensor with a new shape of the same number of elements, without copying: the
    /// buffer moves to the result (Flatten of an NCHW tensor is `reshape(t, &[n, c * h * w])`).
    pub fn reshape(&self, t: Tensor, shape: &[usize]) -> Result<Tensor> {
        self.check_owner(&t.raw, "reshape")?;
        let len = numel(shape, "reshape target")?;
        if len != t.len() {
            return Err(mismatch(format!(
                "reshape: tensor of shape {:?} ({} elements) cannot take shape {shape:?} ({len} \
                 elements)",
                t.shape(),
                t.len()
            )));
        }
        let mut t = t;
        t.raw.shape = shape.to_vec();
        Ok(t)
    }

    /// A copy of `t` with a new shape of the same number of elements, in a buffer of its own
    /// (what [`Gpu::reshape`] gives where the source must stay: an evaluation forward).
    pub fn reshaped_copy(&self, t: &Tensor, shape: &[usize]) -> Result<Tensor> {
        const OP: &str = "reshaped_copy";
        self.check_owner(&t.raw, OP)?;
        let len = numel(shape, "reshape target")?;
        if len != t.len() {
            return Err(mismatch(format!(
                "{OP}: tensor of shape {:?} ({} elements) cannot take shape {shape:?} ({len} \
                 elements)",
                t.shape(),
                t.len()
            )));
        }
        let out = self.alloc_as(shape, t.dtype(), "reshaped_copy output")?;
        if len > 0 {
            let mut rec = Record::new();
            rec.push_copy(&t.raw, &out);
            rec.keep_raws([&t.raw, &out].into_iter());
            self.submit_record(&mut rec, OP)?;
        }
        Ok(Tensor { raw: out })
    }

    /// A second handle on `t`'s elements with another shape of the same length: no copy, no
    /// check (the caller reads it only, within the crate).
    pub(crate) fn shaped_alias(&self, t: &Tensor, shape: &[usize]) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), t.len());
        let mut raw = t.raw.clone();
        raw.shape = shape.to_vec();
        Tensor { raw }
    }

    /// All of a tensor, or the placeholder buffer for an empty one (never read then).
    fn bind_all<'a>(&'a self, t: &'a Tensor) -> Bind<'a> {
        self.whole(&t.raw, t.len())
    }

    /// Reads a one-element tensor (a loss) back to the host.
    pub fn download_scalar(&self, t: &Tensor) -> Result<f32> {
        if t.len() != 1 {
            return Err(mismatch(format!(
                "download_scalar: tensor of shape {:?} has {} elements, not 1",
                t.shape(),
                t.len()
            )));
        }
        Ok(self.download(t)?.iter().copied().next().unwrap_or(f32::NAN))
    }

    /// An element-wise kernel over `len` elements: `inputs` then the output, each chunked into
    /// binding windows of the same element range.
    fn elementwise(&self, op: &str, kernel: Kernel, inputs: &[&Raw], out: &Raw) -> Result<()> {
        let len = out.len;
        if len == 0 {
            return Ok(());
        }
        let units: Vec<(usize, &str)> = vec![(1, "element"); inputs.len() + 1];
        let per = self.items_per_chunk(&units, len)?;
        let mut ds = Vec::new();
        for e0 in (0..len).step_by(per) {
            let e1 = (e0 + per).min(len);
            let mut params = EltParams {
                total: (e1 - e0) as u32,
                ..Default::default()
            };
            let mut bindings = Vec::new();
            for (i, raw) in inputs.iter().enumerate() {
                let (bind, off) = self.window(raw, e0, e1);
                match i {
                    0 => params.a_off = off,
                    _ => params.b_off = off,
                }
                bindings.push(bind);
            }
            let (bind, off) = self.window(out, e0, e1);
            params.out_off = off;
            bindings.push(bind);
            ds.push(Dispatch {
                kernel,
                storage: Storage::F32,
                params: bytemuck::bytes_of(&params).to_vec(),
                bindings,
                items: (e1 - e0) as u64,
            });
        }
        self.execute(op, &ds)
    }

    /// `y = max(x, 0)` on a tensor of any shape; NaN passes through. Same semantics as
    /// [`reference::nn::relu_forward`](crate::reference::nn::relu_forward).
    pub fn relu_forward(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "relu_forward";
        if let Some(y) = self.nn_via_f32(OP, &[Some(x)], |t| self.relu_forward(operand(t, 0)))? {
            return Ok(y);
        }
        self.check_operand(&x.raw, OP)?;
        let y = self.new_output(x.shape(), "relu_forward output")?;
        self.elementwise(OP, Kernel::ReluForward, &[&x.raw], &y.raw)?;
        if self.checked {
            let want = reference::relu_forward(self.host_f64(x)?.view());
            verdict(OP, &self.download(&y)?, &want)?;
        }
        Ok(y)
    }

    /// `dx = dy` where the forward input `x > 0`, else 0. Same semantics as
    /// [`reference::nn::relu_backward`](crate::reference::nn::relu_backward).
    pub fn relu_backward(&self, dy: &Tensor, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "relu_backward";
        let staged = self.nn_via_f32(OP, &[Some(dy), Some(x)], |t| {
            self.relu_backward(operand(t, 0), operand(t, 1))
        })?;
        if let Some(dx) = staged {
            return Ok(dx);
        }
        if dy.shape() != x.shape() {
            return Err(mismatch(format!(
                "relu_backward: dy shape {:?} differs from x shape {:?}",
                dy.shape(),
                x.shape()
            )));
        }
        self.check_operand(&dy.raw, OP)?;
        self.check_operand(&x.raw, OP)?;
        let dx = self.new_output(x.shape(), "relu_backward output")?;
        self.elementwise(OP, Kernel::ReluBackward, &[&dy.raw, &x.raw], &dx.raw)?;
        if self.checked {
            let want =
                reference::relu_backward(self.host_f64(dy)?.view(), self.host_f64(x)?.view())?;
            verdict(OP, &self.download(&dx)?, &want)?;
        }
        Ok(dx)
    }

    /// Runs one GEMM into `c` (`[m, n]`). Operands must each fit one binding.
    fn gemm(&self, op: &str, g: Gemm<'_>, c: &Tensor) -> Result<()> {
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        let mut operands = vec![(g.a, "a"), (g.b, "b"), (c, "the output")];
        if let Some(b) = g.bias {
            operands.push((b, "the bias"));
        }
        for (t, what) in operands {
            self.check_operand(&t.raw, op)?;
            self.check_bindable(t.len(), &format!("{op}: {what}"))?;
        }
        let bias = match g.bias {
            Some(b) => self.bind_all(b),
            None => Bind::whole(&self.dummy, 0),
        };
        let params = MatmulParams {
            m: to_u32(g.m, "GEMM rows")?,
            n: to_u32(g.n, "GEMM columns")?,
            k: to_u32(g.k, "GEMM reduction length")?,
            trans_a: g.trans_a as u32,
            trans_b: g.trans_b as u32,
            has_bias: g.bias.is_some() as u32,
            ..Default::default()
        };
        let tiles = g.m.div_ceil(32) as u64 * g.n.div_ceil(32) as u64;
        self.execute(
            op,
            &[Dispatch {
                kernel: Kernel::Matmul,
                storage: Storage::F32,
                params: bytemuck::bytes_of(&params).to_vec(),
                bindings: vec![
                    self.bind_all(g.a),
                    self.bind_all(g.b),
                    bias,
                    self.bind_all(c),
                ],
                items: tiles,
            }],
        )
    }

    /// Linear layer forward `y = x · wᵀ + bias`: x `[N, in]`, w `[out, in]`, bias `[out]`,
    /// y `[N, out]`, by a tiled GEMM. Same semantics as
    /// [`reference::nn::linear_forward`](crate::reference::nn::linear_forward).
    pub fn linear_forward(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        const OP: &str = "linear_forward";
        let staged = self.nn_via_f32(OP, &[Some(x), Some(w), bias], |t| {
            self.linear_forward(operand(t, 0), operand(t, 1), t[2])
        })?;
        if let Some(y) = staged {
            return Ok(y);
        }
        let (n, i, o) = reference::linear_dims(x.shape(), w.shape())?;
        if let Some(b) = bias
            && b.shape() != [o]
        {
            return Err(mismatch(format!(
                "linear: bias shape {:?} must be [out] = [{o}]",
                b.shape()
            )));
        }
        let y = self.new_output(&[n, o], "linear_forward output")?;
        let g = Gemm {
            a: x,
            b: w,
            bias,
            m: n,
            n: o,
            k: i,
            trans_a: false,
            trans_b: true,
        };
        self.gemm(OP, g, &y)?;
        if self.checked {
            let b = bias
                .map(|b| self.host_f64(b))
                .transpose()?
                .map(dims::<Ix1>)
                .transpose()?;
            let want = reference::linear_forward(
                dims::<Ix2>(self.host_f64(x)?)?.view(),
                dims::<Ix2>(self.host_f64(w)?)?.view(),
                b.as_ref().map(|b| b.view()),
            )?;
            verdict(OP, &self.download(&y)?, &want.into_dyn())?;
        }
        Ok(y)
    }

    /// Linear layer dx `= dy · w`: dy `[N, out]`, w `[out, in]`, dx `[N, in]`.
    pub fn linear_backward_input(&self, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
        const OP: &str = "linear_backward_input";
        let staged = self.nn_via_f32(OP, &[Some(dy), Some(w)], |t| {
            self.linear_backward_input(operand(t, 0), operand(t, 1))
        })?;
        if let Some(dx) = staged {
            return Ok(dx);
        }
        let (n, o, i) = match (dy.shape(), w.shape()) {
            (&[n, o], &[wo, i]) if o == wo => (n, o, i),
            (d, w) => {
                return Err(mismatch(format!(
                    "linear_backward_input: dy must be [N, out] and w [out, in], got dy {d:?} \
                     and w {w:?}"
                )));
            }
        };
        let dx = self.new_output(&[n, i], "linear_backward_input output")?;
        let g = Gemm {
            a: dy,
            b: w,
            bias: None,
            m: n,
            n: i,
            k: o,
            trans_a: false,
            trans_b: false,
        };
        self.gemm(OP, g, &dx)?;
        if self.checked {
            let want = reference::linear_backward_input(
                dims::<Ix2>(self.host_f64(dy)?)?.view(),
                dims::<Ix2>(self.host_f64(w)?)?.view(),
            )?;
            verdict(OP, &self.download(&dx)?, &want.into_dyn())?;
        }
        Ok(dx)
    }

    /// Linear layer dW `= dyᵀ · x`: x `[N, in]`, dy `[N, out]`, dW `[out, in]`, summed over the
    /// batch in a fixed order.
    pub fn linear_backward_weight(&self, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        const OP: &str = "linear_backward_weight";
        let staged = self.nn_via_f32(OP, &[Some(x), Some(dy)], |t| {
            self.linear_backward_weight(operand(t, 0), operand(t, 1))
        })?;
        if let Some(dw) = staged {
            return Ok(dw);
        }
        let (n, i, o) = match (x.shape(), dy.shape()) {
            (&[n, i], &[dn, o]) if n == dn => (n, i, o),
            (x, d) => {
                return Err(mismatch(format!(
                    "linear_backward_weight: x must be [N, in] and dy [N, out] with the same N, \
                     got x {x:?} and dy {d:?}"
                )));
            }
        };
        let dw = self.new_output(&[o, i], "linear_backward_weight output")?;
        let g = Gemm {
            a: dy,
            b: x,
            bias: None,
            m: o,
            n: i,
            k: n,
            trans_a: true,
            trans_b: false,
        };
        self.gemm(OP, g, &dw)?;
        if self.checked {
            let want = reference::linear_backward_weight(
                dims::<Ix2>(self.host_f64(x)?)?.view(),
                dims::<Ix2>(self.host_f64(dy)?)?.view(),
            )?;
            verdict(OP, &self.download(&dw)?, &want.into_dyn())?;
        }
        Ok(dw)
    }

    /// Linear layer db: dy `[N, out]` summed over the batch, one workgroup per column with a
    /// fixed reduction tree.
    pub fn linear_backward_bias(&self, dy: &Tensor) -> Result<Tensor> {
        const OP: &str = "linear_backward_bias";
        let staged = self.nn_via_f32(OP, &[Some(dy)], |t| {
            self.linear_backward_bias(operand(t, 0))
        })?;
        if let Some(db) = staged {
            return Ok(db);
        }
        let &[n, o] = dy.shape() else {
            return Err(mismatch(format!(
                "linear_backward_bias: dy must be 2-D [N, out], got {:?}",
                dy.shape()
            )));
        };
        self.check_operand(&dy.raw, OP)?;
        let db = self.new_output(&[o], "linear_backward_bias output")?;
        if o > 0 {
            self.check_bindable(dy.len(), "linear_backward_bias: dy")?;
            let params = RowsParams {
                rows: to_u32(n, "N")?,
                cols: to_u32(o, "out features")?,
                ..Default::default()
            };
            self.execute(
                OP,
                &[Dispatch {
                    kernel: Kernel::LinearBackwardBias,
                    storage: Storage::F32,
                    params: bytemuck::bytes_of(&params).to_vec(),
                    bindings: vec![self.bind_all(dy), self.whole(&db.raw, o)],
                    items: o as u64,
                }],
            )?;
        }
        if self.checked {
            let want = reference::linear_backward_bias(dims::<Ix2>(self.host_f64(dy)?)?.view());
            verdict(OP, &self.download(&db)?, &want.into_dyn())?;
        }
        Ok(db)
    }

    /// Softmax cross-entropy of logits `[N, C]` against labels `[N]` (u32 class indices, e.g.
    /// from [`Gpu::upload_indices`]), averaged over the batch: returns the loss (a 0-D tensor,
    /// read it with [`Gpu::download_scalar`]) and its gradient `[N, C]` with respect to the
    /// logits. Deterministic. Labels are not read back to be checked: a label `>= C` makes the
    /// loss NaN (the reference returns an error). An empty batch gives a NaN loss.
    pub fn softmax_cross_entropy(
        &self,
        logits: &Tensor,
        labels: &IndexTensor,
    ) -> Result<(Tensor, Tensor)> {
        self.softmax_cross_entropy_scaled(logits, labels, 1.0)
    }

    /// [`Gpu::softmax_cross_entropy`] with the gradient multiplied by `scale` (mixed-precision
    /// training's loss scale; a power of two scales exactly), the loss unscaled. 16-bit logits
    /// are widened exactly: the loss is computed in f32 (an f32 tensor), the gradient rounded
    /// once to the logits' dtype after scaling.
    pub fn softmax_cross_entropy_scaled(
        &self,
        logits: &Tensor,
        labels: &IndexTensor,
        scale: f32,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "softmax_cross_entropy";
        if !scale.is_finite() || scale <= 0.0 {
            return Err(Error::InvalidArgument(format!(
                "{OP}: the gradient scale must be finite and positive, got {scale}"
            )));
        }
        if logits.dtype() != DType::F32 {
            self.check_owner(&logits.raw, OP)?;
            let wide = self.cast(logits, DType::F32)?;
            let (loss, grad) = self.softmax_cross_entropy_scaled(&wide, labels, scale)?;
            return Ok((loss, self.cast(&grad, logits.dtype())?));
        }
        let (n, c) = reference::check_cross_entropy(logits.shape(), labels.shape())?;
        self.check_operand(&logits.raw, OP)?;
        self.check_owner(&labels.raw, OP)?;
        let loss = self.new_output(&[], "softmax_cross_entropy loss")?;
        let grad = self.new_output(&[n, c], "softmax_cross_entropy gradient")?;
        if n == 0 {
            self.check_alive()?;
            self.queue.write_buffer(
                loss.raw.buffer(),
                loss.raw.offset,
                bytemuck::bytes_of(&f32::NAN),
            );
            return Ok((loss, grad));
        }
        self.check_bindable(logits.len(), "softmax_cross_entropy: logits")?;
        let params = RowsParams {
            rows: to_u32(n, "N")?,
            cols: to_u32(c, "classes")?,
            scale: scale.to_bits(),
            ..Default::default()
        };
        self.execute(
            OP,
            &[Dispatch {
                kernel: Kernel::SoftmaxCrossEntropy,
                storage: Storage::F32,
                params: bytemuck::bytes_of(&params).to_vec(),
                bindings: vec![
                    self.whole(&logits.raw, logits.len()),
                    self.whole(&labels.raw, n),
                    self.whole(&loss.raw, 1),
                    self.whole(&grad.raw, grad.len()),
                ],
                items: 1,
            }],
        )?;
        if self.checked {
            let labels_host = self
                .download_indices(labels)?
                .into_dimensionality::<Ix1>()
                .map_err(|e| Error::ShapeMismatch(e.to_string()))?;
            let (want_loss, want_grad) = reference::softmax_cross_entropy(
                dims::<Ix2>(self.host_f64(logits)?)?.view(),
                labels_host.view(),
            )?;
            verdict(
                OP,
                &self.download(&loss)?,
                &ArrayD::from_elem(ndarray::IxDyn(&[]), want_loss),
            )?;
            let want_grad = want_grad * f64::from(scale);
            verdict(OP, &self.download(&grad)?, &want_grad.into_dyn())?;
        }
        Ok((loss, grad))
    }
}
