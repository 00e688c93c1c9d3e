//! What every op body shares around its plan: its inputs checked, the tensor it writes (a new
//! one, the caller's, or the caller's to add into), and afterwards the result marked pending in a
//! recorded batch and checked-mode's check run or recorded.

use super::check::{Before, CheckJob, OpCall};
use super::submit::Sink;
use super::tensor::Raw;
use super::{Gpu, Tensor};
use crate::dtype::DType;
use crate::error::{Error, Result, mismatch};

/// Where an op's result goes.
pub(crate) enum Out<'t> {
    /// A new tensor from the pool.
    New,
    /// The caller's tensor (e.g. a view of its own buffer), overwritten.
    Into(&'t mut Tensor),
    /// The caller's tensor, added into (gradient accumulation, cuDNN's beta = 1).
    Accumulate(&'t mut Tensor),
}

impl Out<'_> {
    /// The caller's tensor, if the op writes one.
    pub(crate) fn given(&self) -> Option<&Tensor> {
        match self {
            Out::New => None,
            Out::Into(t) | Out::Accumulate(t) => Some(t),
        }
    }
}

/// `Err` naming the dtype unless `raw` is f32: the `nn` ops' f32 bodies (16-bit operands reach
/// them widened, `staged.rs`) and SGD, which updates f32 master weights.
pub(crate) fn require_f32(raw: &Raw, op: &str) -> Result<()> {
    if raw.dtype == DType::F32 {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "{op}: the tensor of shape {:?} is {}, and this op takes f32 tensors (master weights \
         and gradients are f32); convert it with Gpu::cast(&t, DType::F32)",
        raw.shape, raw.dtype
    )))
}

/// Whether two tensors' bytes overlap in one buffer.
fn overlaps(a: &Raw, b: &Raw) -> bool {
    a.shares_buffer(b) && a.offset < b.offset + b.bytes() && b.offset < a.offset + a.bytes()
}

impl Gpu {
    /// `Err` unless every input belongs to this `Gpu` and is not pending (of any dtype: the
    /// conv and pool ops stage 16-bit operands through f32, `staged.rs`), except results of a
    /// recorded batch when this op is recorded too: its own batch's, or another recorder's,
    /// which then becomes a dependency of this batch (that one must be submitted or encoded
    /// first).
    pub(crate) fn check_inputs(&self, sink: &mut Sink<'_>, op: &str, raws: &[&Raw]) -> Result<()> {
        for raw in raws {
            if let (Sink::Record(rec), Some(batch)) = (&mut *sink, &raw.batch)
                && raw.gpu_id == self.id
                && (std::sync::Arc::ptr_eq(batch, &rec.batch) || batch.is_recorded())
            {
                rec.depend_on(batch, op, &raw.shape);
                continue;
            }
            self.check_owner(raw, op)?;
        }
        Ok(())
    }

    /// [`Gpu::check_owner`], and `Err` unless the tensor is f32 (see [`require_f32`]).
    pub(crate) fn check_operand(&self, raw: &Raw, op: &str) -> Result<()> {
        self.check_owner(raw, op)?;
        require_f32(raw, op)
    }

    /// The tensor an op writes, of `shape`: a new one (poisoned in checked mode), or the caller's,
    /// which must have that shape, belong to this `Gpu`, not overlap an input, and, to be added
    /// into, not share a buffer with one.
    pub(crate) fn target(
        &self,
        sink: &mut Sink<'_>,
        op: &str,
        out: &Out<'_>,
        shape: &[usize],
        inputs: &[&Raw],
    ) -> Result<Raw> {
        let Some(t) = out.given() else {
            return Ok(self.new_output(shape, &format!("{op} output"))?.raw);
        };
        if t.shape() != shape {
            return Err(mismatch(format!(
                "{op}: the output tensor has shape {:?}, the op's result {shape:?}",
                t.shape()
            )));
        }
        self.check_inputs(sink, op, &[&t.raw])?;
        let accumulate = matches!(out, Out::Accumulate(_));
        for input in inputs {
            if accumulate && input.shares_buffer(&t.raw) {
                return Err(Error::InvalidArgument(format!(
                    "{op}: the gradient to accumulate into (shape {:?}) shares a buffer with an \
                     input (shape {:?})",
                    t.shape(),
                    input.shape
                )));
            }
            if overlaps(input, &t.raw) {
                return Err(Error::InvalidArgument(format!(
                    "{op}: the output (shape {:?}, byte {}) overlaps an input (shape {:?}, byte \
                     {}) in the same buffer",
                    t.shape(),
                    t.raw.offset,
                    input.shape,
                    input.offset
                )));
            }
        }
        if !accumulate {
            self.poison(&t.raw, f32::NAN.to_bits())?;
        }
        Ok(t.raw.clone())
    }

    /// For an accumulation in checked mode: the target's value before the op (downloaded now,
    /// or copied inside the batch being recorded).
    pub(crate) fn before(&self, sink: &mut Sink<'_>, out: &Out<'_>) -> Result<Option<Before>> {
        let (Out::Accumulate(t), true) = (out, self.checked) else {
            return Ok(None);
        };
        match sink {
            Sink::Eager => self.before_host(&t.raw).map(Some),
            Sink::Record(rec) => {
                let copy = self.alloc(&t.raw.shape, "checked-mode copy")?;
                rec.push_copy(&t.raw, &copy);
                rec.keep_raws([&t.raw, &copy].into_iter());
                Ok(Some(Before::Device(copy)))
            }
        }
    }

    /// After an op ran (or was recorded): the results of a recorded batch are pending until it
    /// is submitted, and checked mode checks the op now (eager) or once the batch has run.
    /// Returns the new result tensor, `None` when the caller gave the output.
    pub(crate) fn finish(
        &self,
        sink: &mut Sink<'_>,
        out: Out<'_>,
        mut result: Raw,
        job: Option<(OpCall, Option<Raw>, Option<Before>)>,
    ) -> Result<Option<Tensor>> {
        let check = job
            .filter(|_| self.checked)
            .map(|(call, indices, before)| CheckJob {
                call,
                out: result.clone(),
                indices,
                before,
            });
        match sink {
            Sink::Eager => {
                if let Some(job) = check {
                    self.run_check(job)?;
                }
            }
            Sink::Record(rec) => {
                let batch = rec.batch.clone();
                result.batch = Some(batch.clone());
                if let Some(job) = check {
                    rec.checks
                        .push(Box::new(move |gpu: &Gpu| gpu.run_check(job)));
                }
            }
        }
        match out {
            Out::New => Ok(Some(Tensor { raw: result })),
            Out::Into(t) | Out::Accumulate(t) => {
                t.raw.batch = result.batch;
                Ok(None)
            }
        }
    }
}
