//! Recorded batches: ops validated and planned at record time, encoded and submitted together
//! (one queue submission), or appended to the caller's command encoder.

use std::sync::Arc;

use super::buffers::PooledBuffer;
use super::conv::new;
use super::output::Out;
use super::submit::Sink;
use super::tensor::{Batch, Raw, dims4};
use super::{Bind, Dispatch, Gpu, IndexTensor, Tensor};
use crate::error::{Result, mismatch};
use crate::spec::{Conv2dSpec, Pool2dSpec};

/// A dispatch whose bindings own their buffer handles, so that it can be encoded later.
pub(crate) struct OwnedDispatch {
    pub kernel: super::kernels::Kernel,
    pub storage: super::kernels::Storage,
    pub params: Vec<u8>,
    pub bindings: Vec<(wgpu::Buffer, u64, u64)>,
    pub items: u64,
}

/// One recorded piece of a batch.
pub(crate) enum Piece {
    /// An op's dispatches, one compute pass.
    Pass {
        op: &'static str,
        dispatches: Vec<OwnedDispatch>,
    },
    /// A buffer copy (checked mode keeps a gradient's value before an accumulation; the row
    /// bands of a sample larger than a binding are gathered and scattered).
    Copy {
        src: wgpu::Buffer,
        src_offset: u64,
        dst: wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    },
    /// Zeros written to a byte range (rows of dx no band writes).
    Clear {
        buffer: wgpu::Buffer,
        offset: u64,
        bytes: u64,
    },
}

/// A check of one recorded op, run once its batch has finished.
pub(crate) type Check = Box<dyn FnOnce(&Gpu) -> Result<()> + Send>;

/// A batch whose pending result a recorded op reads: the op and the tensor's shape, to name
/// it if that batch has not run first.
struct Dependency {
    batch: Arc<Batch>,
    op: String,
    shape: Vec<usize>,
}

/// The state of a batch being recorded.
pub(crate) struct Record {
    pub batch: Arc<Batch>,
    /// Other recorders' batches whose results this one reads.
    depends_on: Vec<Dependency>,
    pieces: Vec<Piece>,
    /// Every tensor and scratch buffer the batch reads or writes, alive until it has run.
    keep: Vec<Raw>,
    pub checks: Vec<Check>,
}

impl Record {
    pub fn new() -> Record {
        Record {
            batch: Batch::new(),
            depends_on: Vec::new(),
            pieces: Vec::new(),
            keep: Vec::new(),
            checks: Vec::new(),
        }
    }

    /// Notes that an op of this batch reads a result of `batch` (a no-op for this batch's own).
    pub fn depend_on(&mut self, batch: &Arc<Batch>, op: &str, shape: &[usize]) {
        let known = |d: &Dependency| Arc::ptr_eq(&d.batch, batch);
        if !Arc::ptr_eq(batch, &self.batch) && !self.depends_on.iter().any(known) {
            self.depends_on.push(Dependency {
                batch: batch.clone(),
                op: op.to_string(),
                shape: shape.to_vec(),
            });
        }
    }

    /// `Err` naming the first batch this one reads a result of that has not been submitted or
    /// encoded yet (`what` names the call).
    fn check_dependencies(&self, what: &str) -> Result<()> {
        match self.depends_on.iter().find(|d| !d.batch.has_run_first()) {
            None => Ok(()),
            Some(d) => Err(crate::Error::InvalidArgument(format!(
                "{what}: this batch's {} reads the tensor of shape {:?}, the pending result of \
                 another recorder that {}; submit or encode that recorder first",
                d.op,
                d.shape,
                if d.batch.is_discarded() {
                    "was dropped unsubmitted"
                } else {
                    "has not been submitted or encoded"
                }
            ))),
        }
    }

    pub fn keep_raws<'a>(&mut self, raws: impl Iterator<Item = &'a Raw>) {
        self.keep.extend(raws.cloned());
    }

    pub fn push_pass(&mut self, op: &'static str, dispatches: &[Dispatch<'_>]) {
        let dispatches = dispatches
            .iter()
            .map(|d| OwnedDispatch {
                kernel: d.kernel,
                storage: d.storage,
                params: d.params.clone(),
                bindings: d
                    .bindings
                    .iter()
                    .map(|b| (b.buffer.clone(), b.offset, b.size))
                    .collect(),
                items: d.items,
            })
            .collect();
        self.pieces.push(Piece::Pass { op, dispatches });
    }

    /// Copies all of `src` (any dtype) to the start of `dst`.
    pub fn push_copy(&mut self, src: &Raw, dst: &Raw) {
        if src.len > 0 {
            self.pieces.push(Piece::Copy {
                src: src.buffer().clone(),
                src_offset: src.offset,
                dst: dst.buffer().clone(),
                dst_offset: dst.offset,
                bytes: src.bytes(),
            });
        }
    }

    /// Copies `elems` elements from element `from` of `src` to element `to` of `dst`.
    pub fn push_copy_elems(&mut self, src: &Raw, from: usize, dst: &Raw, to: usize, elems: usize) {
        if elems > 0 {
            self.pieces.push(Piece::Copy {
                src: src.buffer().clone(),
                src_offset: src.offset + from as u64 * 4,
                dst: dst.buffer().clone(),
                dst_offset: dst.offset + to as u64 * 4,
                bytes: elems as u64 * 4,
            });
        }
    }

    /// Writes zeros to all of `t`.
    pub fn push_clear(&mut self, t: &Raw) {
        if t.len > 0 {
            self.pieces.push(Piece::Clear {
                buffer: t.buffer().clone(),
                offset: t.offset,
                bytes: t.bytes(),
            });
        }
    }
}

/// What a batch must keep alive until the GPU has run it.
struct Kept {
    _raws: Vec<Raw>,
    _uniforms: Vec<PooledBuffer>,
}

/// Records ops without submitting anything; see [`Gpu::recorder`]. It has the eight op methods
/// and the three `*_accumulate` methods of [`Gpu`], with the same arguments and results; shape
/// and option errors are `Err` at record time and leave the recorder usable. Inputs may be
/// dropped after recording: the batch keeps every tensor, view and scratch buffer it uses alive
/// until it has run. Its results are bit-identical to the same ops called one by one (same
/// plans), in recording order, and are pending until the batch is submitted: downloading one, or
/// using it in an eager op, before [`submit`](Recorder::submit) or
/// [`encode`](Recorder::encode) is `Err`. A pending result may be an input of another
/// recorder's op (a framework records its forward batch and its backward batch, then encodes
/// both): that recorder must then be submitted or encoded after this one, else its `submit` or
/// `encode` is `Err` naming the dependency (and discards its batch). Dropping a recorder
/// unsubmitted discards the batch.
///
/// ```no_run
/// # fn main() -> wgconv::Result<()> {
/// use wgconv::{Conv2dSpec, Pool2dSpec};
/// let gpu = wgconv::Gpu::new()?;
/// let x = gpu.upload(&ndarray::Array4::<f32>::ones((2, 3, 8, 8)))?;
/// let w = gpu.upload(&ndarray::Array4::<f32>::ones((4, 3, 3, 3)))?;
/// let mut rec = gpu.recorder();
/// let y = rec.conv2d_forward(&x, &w, None, &Conv2dSpec::default())?;
/// let p = rec.avg_pool2d_forward(&y, &Pool2dSpec::new([2, 2]), true)?;
/// rec.submit()?; // one queue submission for both ops
/// assert_eq!(gpu.download(&p)?.shape(), &[2, 4, 3, 3]);
/// # Ok(()) }
/// ```
pub struct Recorder<'g> {
    pub(crate) gpu: &'g Gpu,
    pub(crate) rec: Record,
}

impl Gpu {
    /// A recorder of ops for one batch: nothing is submitted until
    /// [`Recorder::submit`] (one submission) or [`Recorder::encode`] (the caller's encoder).
    pub fn recorder(&self) -> Recorder<'_> {
        Recorder {
            gpu: self,
            rec: Record::new(),
        }
    }

    /// Encodes a batch's pieces into `encoder`; the uniform buffers go to `uniforms`.
    fn encode_pieces(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        pieces: &[Piece],
        uniforms: &mut Vec<PooledBuffer>,
    ) -> Result<()> {
        for piece in pieces {
            match piece {
                Piece::Pass { op, dispatches } => {
                    let borrowed: Vec<Dispatch<'_>> = dispatches
                        .iter()
                        .map(|d| Dispatch {
                            kernel: d.kernel,
                            storage: d.storage,
                            params: d.params.clone(),
                            bindings: d
                                .bindings
                                .iter()
                                .map(|(buffer, offset, size)| Bind {
                                    buffer,
                                    offset: *offset,
                                    size: *size,
                                })
                                .collect(),
                            items: d.items,
                        })
                        .collect();
                    self.encode_pass(encoder, op, &borrowed, uniforms, false)?;
                }
                Piece::Copy {
                    src,
                    src_offset,
                    dst,
                    dst_offset,
                    bytes,
                } => encoder.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *bytes),
                Piece::Clear {
                    buffer,
                    offset,
                    bytes,
                } => encoder.clear_buffer(buffer, *offset, Some(*bytes)),
            }
        }
        Ok(())
    }

    /// Encodes a record's pieces into one encoder and submits it (one submission), keeping what
    /// the batch uses alive until the GPU has run it; `Err(DeviceLost)` if the device did not
    /// accept it (a zero wait, no more). Its checks stay in the record.
    pub(crate) fn submit_record(
        &self,
        rec: &mut Record,
        what: &str,
    ) -> Result<wgpu::SubmissionIndex> {
        self.check_lost()?;
        let scope = self.scope();
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgconv batch"),
            });
        let mut uniforms = Vec::new();
        let encoded = self.encode_pieces(&mut encoder, &rec.pieces, &mut uniforms);
        let index = self.submit([encoder.finish()]);
        rec.batch.release();
        let kept = Kept {
            _raws: std::mem::take(&mut rec.keep),
            _uniforms: uniforms,
        };
        self.queue.on_submitted_work_done(move || drop(kept));
        scope.finish(self, what)?;
        encoded?;
        // A lost device drops the submission silently: say so now rather than at a download.
        self.check_submitted(index.clone())?;
        Ok(index)
    }

    /// Runs the checks of batches the caller encoded and has submitted since (checked mode).
    pub(crate) fn run_encoded_checks(&self) -> Result<()> {
        let checks: Vec<Check> = std::mem::take(
            &mut *self
                .encoded_checks
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        checks.into_iter().try_for_each(|check| check(self))
    }
}

impl Recorder<'_> {
    /// Submits the batch: one queue submission, whatever the number of ops, and a check (no
    /// wait) that the device accepted it (`Err(DeviceLost)` if not). The results may then be
    /// downloaded or used by any op. In checked mode, waits for the batch and checks every op
    /// against the reference.
    pub fn submit(mut self) -> Result<wgpu::SubmissionIndex> {
        let gpu = self.gpu;
        self.rec.check_dependencies("Recorder::submit")?;
        let index = gpu.submit_record(&mut self.rec, "Recorder::submit")?;
        if !self.rec.checks.is_empty() {
            gpu.wait_for(Some(index.clone()))?;
            for check in std::mem::take(&mut self.rec.checks) {
                check(gpu)?;
            }
        }
        Ok(index)
    }

    /// Appends the batch to the caller's `encoder`, between the caller's own passes, and submits
    /// nothing (no hidden submission either, even for empty tensors). The caller must submit the
    /// encoder before wgconv reads a result; the batch's buffers live until that submission has
    /// run (or the encoder is dropped). Several recorders may be encoded into one encoder, in
    /// order (a recorder that reads another's results after that one). In checked mode the checks run at the next [`Gpu::synchronize`], after the caller
    /// has submitted.
    pub fn encode(mut self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let gpu = self.gpu;
        self.rec.check_dependencies("Recorder::encode")?;
        gpu.check_lost()?;
        let scope = gpu.scope();
        let mut uniforms = Vec::new();
        let encoded = gpu.encode_pieces(encoder, &self.rec.pieces, &mut uniforms);
        self.rec.batch.release();
        let kept = Kept {
            _raws: std::mem::take(&mut self.rec.keep),
            _uniforms: uniforms,
        };
        encoder.on_submitted_work_done(move || drop(kept));
        scope.finish(gpu, "Recorder::encode")?;
        encoded?;
        gpu.encoded_checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(std::mem::take(&mut self.rec.checks));
        Ok(())
    }

    /// Ops recorded so far (each op's dispatches are one compute pass).
    pub fn len(&self) -> usize {
        let pass = |p: &&Piece| matches!(p, Piece::Pass { .. });
        self.rec.pieces.iter().filter(pass).count()
    }

    /// Whether no op has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A recorder dropped unsubmitted discards its batch: its results stay pending for good, and a
/// recorder that reads one says so.
impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        self.rec.batch.discard();
    }
}

impl std::fmt::Debug for Recorder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("pieces", &self.rec.pieces.len())
            .finish_non_exhaustive()
    }
}

/// The ops, as on [`Gpu`], recorded into the batch.
impl Recorder<'_> {
    fn sink(&mut self) -> Sink<'_> {
        Sink::Record(&mut self.rec)
    }

    /// Records [`Gpu::conv2d_forward`].
    pub fn conv2d_forward(
        &mut self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        spec: &Conv2dSpec,
    ) -> Result<Tensor> {
        let gpu = self.gpu;
        new(gpu.conv2d_forward_op(&mut self.sink(), x, w, bias, spec, Out::New)?)
    }

    /// Records [`Gpu::conv2d_backward_input`].
    pub fn conv2d_backward_input(
        &mut self,
        dy: &Tensor,
        w: &Tensor,
        input_hw: [usize; 2],
        spec: &Conv2dSpec,
    ) -> Result<Tensor> {
        let gpu = self.gpu;
        let out = Out::New;
        new(gpu.conv2d_backward_input_op(&mut self.sink(), dy, w, input_hw, spec, out)?)
    }

    /// Records [`Gpu::conv2d_backward_weight`].
    pub fn conv2d_backward_weight(
        &mut self,
        x: &Tensor,
        dy: &Tensor,
        kernel_hw: [usize; 2],
        spec: &Conv2dSpec,
    ) -> Result<Tensor> {
        let gpu = self.gpu;
        let out = Out::New;
        new(gpu.conv2d_backward_weight_op(&mut self.sink(), x, dy, kernel_hw, spec, out)?)
    }

    /// Records [`Gpu::conv2d_backward_bias`].
    pub fn conv2d_backward_bias(&mut self, dy: &Tensor) -> Result<Tensor> {
        let gpu = self.gpu;
        new(gpu.conv2d_backward_bias_op(&mut self.sink(), dy, Out::New)?)
    }

    /// Records [`Gpu::max_pool2d_forward`].
    pub fn max_pool2d_forward(
        &mut self,
        x: &Tensor,
        spec: &Pool2dSpec,
    ) -> Result<(Tensor, IndexTensor)> {
        let gpu = self.gpu;
        gpu.max_pool2d_forward_op(&mut self.sink(), x, spec, None)?
            .ok_or_else(|| mismatch("internal: max-pool forward returned no output".to_string()))
    }

    /// Records [`Gpu::max_pool2d_backward`].
    pub fn max_pool2d_backward(
        &mut self,
        dy: &Tensor,
        indices: &IndexTensor,
        input_hw: [usize; 2],
        spec: &Pool2dSpec,
    ) -> Result<Tensor> {
        let gpu = self.gpu;
        let out = Out::New;
        new(gpu.max_pool2d_backward_op(&mut self.sink(), dy, indices, input_hw, spec, out)?)
    }

    /// Records [`Gpu::avg_pool2d_forward`].
    pub fn avg_pool2d_forward(
        &mut self,
        x: &Tensor,
        spec: &Pool2dSpec,
        count_include_pad: bool,
    ) -> Result<Tensor> {
        let gpu = self.gpu;
        let (cip, out) = (count_include_pad, Out::New);
        new(gpu.avg_pool2d_forward_op(&mut self.sink(), x, spec, cip, out)?)
    }

    /// Records [`Gpu::avg_pool2d_backward`].
    pub fn avg_pool2d_backward(
        &mut self,
        dy: &Tensor,
        input_hw: [usize; 2],
        spec: &Pool2dSpec,
        count_include_pad: bool,
    ) -> Result<Tensor> {
        let gpu = self.gpu;
        let (cip, out) = (count_include_pad, Out::New);
        new(gpu.avg_pool2d_backward_op(&mut self.sink(), dy, input_hw, spec, cip, out)?)
    }

    /// Records [`Gpu::conv2d_backward_input_accumulate`]: `dx` is pending until the batch is
    /// submitted.
    pub fn conv2d_backward_input_accumulate(
        &mut self,
        dy: &Tensor,
        w: &Tensor,
        spec: &Conv2dSpec,
        dx: &mut Tensor,
    ) -> Result<()> {
        let gpu = self.gpu;
        let [_, _, h, wd] = dims4(&dx.raw, "dx")?;
        let out = Out::Accumulate(dx);
        gpu.conv2d_backward_input_op(&mut self.sink(), dy, w, [h, wd], spec, out)
            .map(drop)
    }

    /// Records [`Gpu::conv2d_backward_weight_accumulate`].
    pub fn conv2d_backward_weight_accumulate(
        &mut self,
        x: &Tensor,
        dy: &Tensor,
        spec: &Conv2dSpec,
        dw: &mut Tensor,
    ) -> Result<()> {
        let gpu = self.gpu;
        let [_, _, kh, kw] = dims4(&dw.raw, "dw")?;
        let out = Out::Accumulate(dw);
        gpu.conv2d_backward_weight_op(&mut self.sink(), x, dy, [kh, kw], spec, out)
            .map(drop)
    }

    /// Records [`Gpu::conv2d_backward_bias_accumulate`].
    pub fn conv2d_backward_bias_accumulate(&mut self, dy: &Tensor, db: &mut Tensor) -> Result<()> {
        let gpu = self.gpu;
        gpu.conv2d_backward_bias_op(&mut self.sink(), dy, Out::Accumulate(db))
            .map(drop)
    }
}
