//! The conv and pool ops on 16-bit operands, through f32 staging: the operands are widened
//! exactly into f32 scratch tensors (`cast.wgsl`), the f32 op runs on them with its own plan
//! (bands, chunks, Winograd, dx by taps, depthwise kernels, checked mode: all as in f32), and
//! its result is rounded once into the 16-bit output. So the products and sums are f32, each
//! output element is rounded once, the bits are those of the f32 op on the widened inputs,
//! rounded, on every device, and a kernel that reads 16-bit data directly must give the same
//! bits. The scratch tensors are alive only inside the op (or its recorded batch).
//!
//! Outputs: a new tensor is the operands' dtype; an `_into` output or `_accumulate` gradient
//! may be the operands' dtype or f32 (an f32 master gradient from 16-bit operands, with no
//! rounding in between); a 16-bit gradient receives `round(old + sum)`, rounded once.

use super::output::Out;
use super::submit::Sink;
use super::tensor::Raw;
use super::{Gpu, Tensor};
use crate::dtype::DType;
use crate::error::{Error, Result, mismatch};

/// Operand `i` of the f32 copies a body gets: `via_f32` keeps every given operand.
pub(crate) fn operand<'a>(wide: &[Option<&'a Tensor>], i: usize) -> &'a Tensor {
    wide[i].expect("via_f32 keeps every given operand")
}

impl Gpu {
    /// The dtype an op computes in: its operands' common one (`Err` naming two that differ),
    /// with the output's dtype checked (the operands' or f32). `None` for the plain f32 op
    /// (f32 operands and output), which runs unchanged.
    pub(crate) fn staged_dtype(
        &self,
        op: &str,
        operands: &[Option<&Tensor>],
        out: Option<&Tensor>,
    ) -> Result<Option<DType>> {
        let mut dtypes = operands.iter().flatten().map(|t| t.dtype());
        let dtype = dtypes.next().unwrap_or(DType::F32);
        if let Some(other) = dtypes.find(|&d| d != dtype) {
            return Err(Error::InvalidArgument(format!(
                "{op}: operands of dtypes {dtype} and {other}; every operand must have one dtype \
                 (convert with Gpu::cast)"
            )));
        }
        match out.map(Tensor::dtype) {
            Some(t) if t != dtype && t != DType::F32 => Err(Error::InvalidArgument(match dtype {
                DType::F32 => {
                    format!("{op}: f32 operands and a {t} output; the output must be f32")
                }
                _ => format!(
                    "{op}: {dtype} operands and a {t} output; the output may be {dtype} or f32"
                ),
            })),
            _ if dtype == DType::F32 => Ok(None),
            _ => Ok(Some(dtype)),
        }
    }

    /// Runs `body` on f32 copies of `operands` (of `dtype`, 16-bit), its result rounded once to
    /// `dtype` for a new tensor or a 16-bit output, or written straight into an f32 output.
    pub(crate) fn via_f32(
        &self,
        sink: &mut Sink<'_>,
        op: &str,
        dtype: DType,
        operands: &[Option<&Tensor>],
        out: Out<'_>,
        body: impl FnOnce(&mut Sink<'_>, &[Option<&Tensor>], Out<'_>) -> Result<Option<Tensor>>,
    ) -> Result<Option<Tensor>> {
        let raws: Vec<&Raw> = operands.iter().flatten().map(|t| &t.raw).collect();
        self.check_inputs(sink, op, &raws)?;
        // The caller's output against the operands as given (the f32 op sees only their
        // copies): a view overlapping one, or a gradient sharing a buffer with one, is `Err`.
        // Its shape is checked against the result below.
        if let Some(t) = out.given() {
            let shape = t.shape().to_vec();
            self.target(sink, op, &out, &shape, &raws)?;
        }
        let wide = operands
            .iter()
            .map(|t| {
                t.map(|t| self.cast_raw(sink, &t.raw, DType::F32))
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        let wide: Vec<Option<&Tensor>> = wide.iter().map(Option::as_ref).collect();
        self.rounded_out(sink, dtype, out, |sink, out| body(sink, &wide, out))
    }

    /// Runs `body`, an op that reads its 16-bit `operands` (of `dtype`) directly and writes an
    /// f32 result (kernels on [`Storage`](super::kernels::Storage) paths), that result rounded
    /// once as [`Gpu::via_f32`]'s is.
    pub(crate) fn reading_16bit(
        &self,
        sink: &mut Sink<'_>,
        op: &str,
        dtype: DType,
        operands: &[&Raw],
        out: Out<'_>,
        body: impl FnOnce(&mut Sink<'_>, Out<'_>) -> Result<Option<Tensor>>,
    ) -> Result<Option<Tensor>> {
        self.check_inputs(sink, op, operands)?;
        if let Some(t) = out.given() {
            let shape = t.shape().to_vec();
            self.target(sink, op, &out, &shape, operands)?;
        }
        self.rounded_out(sink, dtype, out, body)
    }

    /// `body`'s f32 result rounded once to `dtype` for a new tensor or a 16-bit output (a
    /// 16-bit gradient gets `round(old + sum)`), or written by `body` straight into an f32 one.
    fn rounded_out(
        &self,
        sink: &mut Sink<'_>,
        dtype: DType,
        out: Out<'_>,
        body: impl FnOnce(&mut Sink<'_>, Out<'_>) -> Result<Option<Tensor>>,
    ) -> Result<Option<Tensor>> {
        match out {
            Out::New => {
                let r = body(sink, Out::New)?.ok_or_else(no_result)?;
                Ok(Some(self.cast_raw(sink, &r.raw, dtype)?))
            }
            Out::Into(t) if t.dtype() == DType::F32 => body(sink, Out::Into(t)),
            Out::Accumulate(t) if t.dtype() == DType::F32 => body(sink, Out::Accumulate(t)),
            Out::Into(t) => {
                let r = body(sink, Out::New)?.ok_or_else(no_result)?;
                self.cast_into(sink, &r.raw, t)?;
                Ok(None)
            }
            Out::Accumulate(t) => {
                let mut sum = self.cast_raw(sink, &t.raw, DType::F32)?;
                body(sink, Out::Accumulate(&mut sum))?;
                self.cast_into(sink, &sum.raw, t)?;
                Ok(None)
            }
        }
    }

    /// An `nn` op on 16-bit operands: `f` on exact f32 copies of them, its result rounded once
    /// to their dtype; `None` for f32 operands (the op then runs as it is).
    pub(crate) fn nn_via_f32(
        &self,
        op: &str,
        operands: &[Option<&Tensor>],
        f: impl FnOnce(&[Option<&Tensor>]) -> Result<Tensor>,
    ) -> Result<Option<Tensor>> {
        let Some(dtype) = self.staged_dtype(op, operands, None)? else {
            return Ok(None);
        };
        let wide = operands
            .iter()
            .map(|t| t.map(|t| self.cast(t, DType::F32)).transpose())
            .collect::<Result<Vec<_>>>()?;
        let wide: Vec<Option<&Tensor>> = wide.iter().map(Option::as_ref).collect();
        Ok(Some(self.cast(&f(&wide)?, dtype)?))
    }

    /// `src` converted into the caller's tensor `t` (same shape), in this op or its batch.
    pub(crate) fn cast_into(&self, sink: &mut Sink<'_>, src: &Raw, t: &mut Tensor) -> Result<()> {
        if src.shape != t.raw.shape {
            return Err(mismatch(format!(
                "the output tensor has shape {:?}, the op's result {:?}",
                t.shape(),
                src.shape
            )));
        }
        self.cast_raw_into(sink, src, &t.raw)?;
        if let Sink::Record(rec) = sink {
            t.raw.batch = Some(rec.batch.clone());
        }
        Ok(())
    }
}

pub(crate) fn no_result() -> Error {
    mismatch("internal: an op returned no result for a new output".to_string())
}
