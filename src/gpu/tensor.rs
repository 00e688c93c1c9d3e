//! GPU tensors: f32 [`Tensor`] and u32 [`IndexTensor`], in a pooled buffer of the `Gpu` or as a
//! view of a buffer the caller owns, and the state a recorded batch gives its results.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use super::Gpu;
use super::buffers::PooledBuffer;
use crate::dtype::DType;
use crate::error::{Error, Result, mismatch};
use crate::spec::numel;

/// Where a tensor's elements live.
pub(crate) enum Storage {
    /// A buffer of the `Gpu`'s pool, from its start; back to the pool when the last holder (the
    /// tensor, a batch that reads or writes it) drops it, unless it was handed out.
    Pooled(PooledBuffer),
    /// The caller's buffer (a view from `offset`); never pooled.
    View(wgpu::Buffer),
}

impl Storage {
    pub fn buffer(&self) -> &wgpu::Buffer {
        match self {
            Storage::Pooled(b) => b.buffer(),
            Storage::View(b) => b,
        }
    }
}

/// The state of the recorded batch whose result a tensor is.
pub(crate) struct Batch {
    state: AtomicU8,
}

impl Batch {
    /// Recorded, nothing submitted.
    pub const RECORDED: u8 = 0;
    /// Submitted by wgconv, or handed to the caller's encoder.
    pub const RELEASED: u8 = 1;
    /// Its recorder was dropped unsubmitted: it never runs.
    pub const DISCARDED: u8 = 2;

    pub fn new() -> Arc<Batch> {
        Arc::new(Batch {
            state: AtomicU8::new(Batch::RECORDED),
        })
    }

    pub fn release(&self) {
        self.state.store(Batch::RELEASED, Ordering::Release);
    }

    /// Marks a batch that never ran as discarded (a released one stays released).
    pub fn discard(&self) {
        let _ = self.state.compare_exchange(
            Batch::RECORDED,
            Batch::DISCARDED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Whether the batch is unsubmitted: recorded and not yet run, or discarded.
    pub fn is_recorded(&self) -> bool {
        self.state.load(Ordering::Acquire) != Batch::RELEASED
    }

    /// Whether the batch was discarded.
    pub fn is_discarded(&self) -> bool {
        self.state.load(Ordering::Acquire) == Batch::DISCARDED
    }

    /// Whether the batch was submitted or handed to an encoder (so a batch encoded after it
    /// runs after it).
    pub fn has_run_first(&self) -> bool {
        !self.is_recorded()
    }
}

/// A run of elements on one [`Gpu`], with a shape and a dtype. Empty tensors hold no buffer.
#[derive(Clone)]
pub(crate) struct Raw {
    pub buf: Option<Arc<Storage>>,
    /// Byte offset of element 0 in the buffer (a multiple of the storage offset alignment).
    pub offset: u64,
    pub shape: Vec<usize>,
    pub len: usize,
    pub gpu_id: u64,
    /// The batch whose result this is, while it may be unsubmitted.
    pub batch: Option<Arc<Batch>>,
    /// The element type (index tensors: 4-byte u32 elements, stored as F32 is).
    pub dtype: DType,
}

impl Raw {
    /// The buffer; only called for non-empty tensors.
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buf
            .as_ref()
            .expect("non-empty tensor has a buffer")
            .buffer()
    }

    /// Bytes of the tensor's data: 4 an element, or 2 for a 16-bit dtype, rounded up to whole
    /// 4-byte words (the size was checked when the tensor was made).
    pub fn bytes(&self) -> u64 {
        self.dtype.storage_bytes(self.len).unwrap_or(u64::MAX)
    }

    /// Whether this is the result of a recorded batch not yet submitted.
    pub fn is_pending(&self) -> bool {
        self.batch.as_ref().is_some_and(|b| b.is_recorded())
    }

    /// The buffer for the caller: a pooled one is marked so that it never returns to the pool
    /// (the caller may keep a clone).
    fn hand_out(&self) -> Option<&wgpu::Buffer> {
        let storage = self.buf.as_deref()?;
        if let Storage::Pooled(p) = storage {
            p.keep_out_of_pool();
        }
        Some(storage.buffer())
    }

    /// Whether `self` and `other` lie in the same wgpu buffer.
    pub fn shares_buffer(&self, other: &Raw) -> bool {
        match (&self.buf, &other.buf) {
            (Some(a), Some(b)) => a.buffer() == b.buffer(),
            _ => false,
        }
    }
}

/// A tensor in GPU memory, NCHW for the 4-D ones, of f32, f16 or bf16 elements
/// ([`Tensor::dtype`]; a 16-bit tensor takes 2 bytes an element). Made by [`Gpu::upload`] or
/// [`Gpu::upload_as`], returned by an op or [`Gpu::cast`], or a view of the caller's buffer
/// ([`Gpu::tensor_from_buffer`], [`Gpu::tensor_from_buffer_as`]); read back as f32 with
/// [`Gpu::download`]. A pooled buffer returns to the `Gpu`'s pool on drop.
pub struct Tensor {
    pub(crate) raw: Raw,
}

/// A u32 tensor in GPU memory: the argmax indices of max-pooling.
pub struct IndexTensor {
    pub(crate) raw: Raw,
}

/// The accessors both tensor types share.
macro_rules! tensor_accessors {
    ($t:ty) => {
        impl $t {
            /// The dimensions.
            pub fn shape(&self) -> &[usize] {
                &self.raw.shape
            }
            /// Number of elements.
            pub fn len(&self) -> usize {
                self.raw.len
            }
            /// Whether the tensor has no elements.
            pub fn is_empty(&self) -> bool {
                self.raw.len == 0
            }
            /// The underlying wgpu buffer (`None` for an empty tensor), for interop with other
            /// wgpu code; the data starts at [`offset`](Self::offset) and may be followed by
            /// other bytes. A buffer handed out here is never recycled by the `Gpu`'s pool
            /// (the caller may keep a clone): it is freed when the last handle drops.
            pub fn buffer(&self) -> Option<&wgpu::Buffer> {
                self.raw.hand_out()
            }
            /// Byte offset of element 0 in [`buffer`](Self::buffer) (0 unless a view).
            pub fn offset(&self) -> u64 {
                self.raw.offset
            }
            /// The buffer and the offset of element 0, for the caller to keep (`None` for an
            /// empty tensor). It is never recycled by the pool; if a recorded batch still uses
            /// it, the batch keeps its own handle until it has run.
            pub fn into_buffer(self) -> Option<(wgpu::Buffer, u64)> {
                let offset = self.raw.offset;
                self.raw.hand_out().cloned().map(|b| (b, offset))
            }
        }

        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}{:?}", stringify!($t), self.raw.shape)
            }
        }
    };
}

tensor_accessors!(Tensor);
tensor_accessors!(IndexTensor);

impl Tensor {
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.raw.dtype
    }
}

impl Gpu {
    /// Elements and bytes of a 4-byte-element tensor of `shape`, or `Err` when it does not fit
    /// one device buffer (`max_buffer_size`).
    pub(crate) fn device_bytes(&self, shape: &[usize], what: &str) -> Result<(usize, u64)> {
        self.device_bytes_as(shape, DType::F32, what)
    }

    /// Elements and bytes of a tensor of `shape` and `dtype`, or `Err` when it does not fit one
    /// device buffer (`max_buffer_size`).
    pub(crate) fn device_bytes_as(
        &self,
        shape: &[usize],
        dtype: DType,
        what: &str,
    ) -> Result<(usize, u64)> {
        let len = numel(shape, what)?;
        let bytes = dtype
            .storage_bytes(len)
            .ok_or_else(|| Error::Overflow(format!("{what} shape {shape:?} has too many bytes")))?;
        if bytes > self.limits.max_buffer_size {
            return Err(Error::DeviceLimit(format!(
                "{what} shape {shape:?} needs {bytes} bytes, more than the device's \
                 max_buffer_size of {} bytes",
                self.limits.max_buffer_size
            )));
        }
        Ok((len, bytes))
    }

    /// The element count of a tensor of `shape` on this device: `Err` naming `what` when it
    /// overflows or passes `max_buffer_size`, before anything is allocated.
    pub fn tensor_len(&self, shape: &[usize], what: &str) -> Result<usize> {
        Ok(self.device_bytes(shape, what)?.0)
    }

    /// An f32 (or index) tensor of `shape` whose contents are undefined until a kernel writes
    /// them.
    pub(crate) fn alloc(&self, shape: &[usize], what: &str) -> Result<Raw> {
        self.alloc_as(shape, DType::F32, what)
    }

    /// A tensor of `shape` and `dtype` whose contents are undefined until a kernel writes them.
    pub(crate) fn alloc_as(&self, shape: &[usize], dtype: DType, what: &str) -> Result<Raw> {
        let (len, bytes) = self.device_bytes_as(shape, dtype, what)?;
        let buf = if len == 0 {
            // No GPU work follows for an empty tensor; a lost device still fails the call.
            self.check_lost()?;
            None
        } else {
            let kind = super::buffers::BufferKind::Storage;
            let b = self.scoped(what, || self.take_buffer(kind, bytes))?;
            Some(Arc::new(Storage::Pooled(b)))
        };
        Ok(Raw {
            buf,
            offset: 0,
            shape: shape.to_vec(),
            len,
            gpu_id: self.id,
            batch: None,
            dtype,
        })
    }

    /// A view of the caller's `buffer` from byte `offset`, of `shape` and `dtype`.
    fn view(
        &self,
        buffer: wgpu::Buffer,
        offset: u64,
        shape: &[usize],
        dtype: DType,
        what: &str,
    ) -> Result<Raw> {
        let len = numel(shape, what)?;
        let align = u64::from(self.limits.min_storage_buffer_offset_alignment);
        if !offset.is_multiple_of(align) {
            return Err(Error::InvalidArgument(format!(
                "{what}: offset {offset} is not a multiple of the storage offset alignment \
                 {align} (min_storage_buffer_offset_alignment)"
            )));
        }
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::InvalidArgument(format!(
                "{what}: the buffer has usage {:?}, without STORAGE",
                buffer.usage()
            )));
        }
        dtype
            .storage_bytes(len)
            .and_then(|b| b.checked_add(offset))
            .filter(|&end| end <= buffer.size())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{what}: shape {shape:?} ({len} {dtype} elements) from byte {offset} does \
                     not fit the buffer of {} bytes",
                    buffer.size()
                ))
            })?;
        self.check_lost()?;
        Ok(Raw {
            buf: (len > 0).then(|| Arc::new(Storage::View(buffer))),
            offset,
            shape: shape.to_vec(),
            len,
            gpu_id: self.id,
            batch: None,
            dtype,
        })
    }

    /// A view of `shape.iter().product()` f32 elements of the caller's `buffer` from byte
    /// `offset`, without a copy: ops read it and write into it in place. `offset` must be a
    /// multiple of `min_storage_buffer_offset_alignment`, the buffer must have `STORAGE` usage
    /// (downloading the view, or checked mode, also needs `COPY_SRC`) and hold the view. The
    /// buffer must belong to this `Gpu`'s device; the view keeps it alive and never pools it.
    ///
    /// ```no_run
    /// # fn main() -> wgconv::Result<()> {
    /// let gpu = wgconv::Gpu::new()?;
    /// let buffer = gpu.device().create_buffer(&wgpu::BufferDescriptor {
    ///     label: Some("arena"),
    ///     size: 4096,
    ///     usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    ///     mapped_at_creation: false,
    /// });
    /// let x = gpu.tensor_from_buffer(buffer, 256, &[1, 2, 8, 8])?;
    /// assert_eq!(x.offset(), 256);
    /// # Ok(()) }
    /// ```
    pub fn tensor_from_buffer(
        &self,
        buffer: wgpu::Buffer,
        offset: u64,
        shape: &[usize],
    ) -> Result<Tensor> {
        self.tensor_from_buffer_as(buffer, offset, shape, DType::F32)
    }

    /// A view of the caller's data in `dtype`, as [`Gpu::tensor_from_buffer`] (which is F32):
    /// f16 as IEEE binary16, bf16 as the upper halves of binary32, little-endian, element `i`
    /// at byte `offset + 2 i`. A view of `n` 16-bit elements needs `offset + 4 · ceil(n / 2)`
    /// bytes in the buffer; the half-word after an odd-length view is never changed. No device
    /// feature is needed (`SHADER_F16` or not).
    ///
    /// ```no_run
    /// # fn main() -> wgconv::Result<()> {
    /// use wgconv::DType;
    /// let gpu = wgconv::Gpu::new()?;
    /// let buffer = gpu.device().create_buffer(&wgpu::BufferDescriptor {
    ///     label: Some("bf16 activations"),
    ///     size: 512,
    ///     usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    ///     mapped_at_creation: false,
    /// });
    /// let x = gpu.tensor_from_buffer_as(buffer, 0, &[1, 2, 8, 8], DType::BF16)?;
    /// assert_eq!(x.dtype(), DType::BF16);
    /// # Ok(()) }
    /// ```
    pub fn tensor_from_buffer_as(
        &self,
        buffer: wgpu::Buffer,
        offset: u64,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        Ok(Tensor {
            raw: self.view(buffer, offset, shape, dtype, "tensor_from_buffer")?,
        })
    }

    /// A view of the caller's buffer as u32 max-pool indices; see [`Gpu::tensor_from_buffer`].
    pub fn index_tensor_from_buffer(
        &self,
        buffer: wgpu::Buffer,
        offset: u64,
        shape: &[usize],
    ) -> Result<IndexTensor> {
        Ok(IndexTensor {
            raw: self.view(
                buffer,
                offset,
                shape,
                DType::F32,
                "index_tensor_from_buffer",
            )?,
        })
    }

    /// Errs if `raw` was made by another `Gpu` (wgpu would reject it less clearly), or is the
    /// pending result of a recorded batch not yet submitted.
    pub(crate) fn check_owner(&self, raw: &Raw, what: &str) -> Result<()> {
        if raw.gpu_id != self.id {
            return Err(Error::InvalidArgument(format!(
                "{what}: tensor of shape {:?} belongs to another Gpu",
                raw.shape
            )));
        }
        if raw.is_pending() {
            return Err(pending(what, &raw.shape));
        }
        Ok(())
    }
}

/// The error for a pending result used before its batch is submitted.
pub(crate) fn pending(what: &str, shape: &[usize]) -> Error {
    Error::InvalidArgument(format!(
        "{what}: tensor of shape {shape:?} is the pending result of a recorded batch; submit \
         (or encode) the batch first"
    ))
}

/// The shape of a tensor that must be 4-D, as an array.
pub(crate) fn dims4(raw: &Raw, name: &str) -> Result<[usize; 4]> {
    <[usize; 4]>::try_from(raw.shape.as_slice()).map_err(|_| {
        mismatch(format!(
            "{name} must be 4-D [N, C, H, W], got shape {:?}",
            raw.shape
        ))
    })
}
