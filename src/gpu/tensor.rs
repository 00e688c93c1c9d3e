//! GPU tensors: f32 [`Tensor`] and u32 [`IndexTensor`], their upload and download.

use ndarray::{ArrayBase, ArrayD, Data, Dimension, IxDyn};

use super::Gpu;
use super::buffers::{BufferKind, PooledBuffer};
use crate::error::{Error, Result, mismatch};
use crate::spec::numel;

/// A buffer of 4-byte elements on one [`Gpu`], with a shape. Empty tensors hold no buffer.
pub(crate) struct Raw {
    pub buf: Option<PooledBuffer>,
    pub shape: Vec<usize>,
    pub len: usize,
    pub gpu_id: u64,
}

impl Raw {
    /// The buffer; only called for non-empty tensors.
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buf
            .as_ref()
            .expect("non-empty tensor has a buffer")
            .buffer()
    }
}

/// An f32 tensor in GPU memory, NCHW for the 4-D ones. Made by [`Gpu::upload`] or returned by
/// an op; read back with [`Gpu::download`]. Its buffer returns to the `Gpu`'s pool on drop.
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
        }
    };
}

tensor_accessors!(Tensor);
tensor_accessors!(IndexTensor);

impl Tensor {
    /// The underlying wgpu buffer (`None` for an empty tensor), for interop with other wgpu
    /// code. It may be larger than `4 * len()` bytes; the tensor's data is at its start.
    pub fn buffer(&self) -> Option<&wgpu::Buffer> {
        self.raw.buf.as_ref().map(PooledBuffer::buffer)
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?}", self.raw.shape)
    }
}

impl std::fmt::Debug for IndexTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IndexTensor{:?}", self.raw.shape)
    }
}

impl Gpu {
    /// Elements and bytes of a 4-byte-element tensor of `shape`, or `Err` when it does not fit
    /// one device buffer (`max_buffer_size`).
    fn device_bytes(&self, shape: &[usize], what: &str) -> Result<(usize, u64)> {
        let len = numel(shape, what)?;
        let bytes = (len as u64)
            .checked_mul(4)
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

    /// A tensor of `shape` whose contents are undefined until a kernel writes them.
    pub(crate) fn alloc(&self, shape: &[usize], what: &str) -> Result<Raw> {
        let (len, bytes) = self.device_bytes(shape, what)?;
        let buf = if len == 0 {
            // No GPU work follows for an empty tensor, so the device is checked here: a lost or
            // destroyed one fails every call (it rejects even an empty submission).
            self.check_alive()?;
            self.check_submitted(self.submit([]))?;
            None
        } else {
            Some(self.take_buffer(BufferKind::Storage, bytes))
        };
        Ok(Raw {
            buf,
            shape: shape.to_vec(),
            len,
            gpu_id: self.id,
        })
    }

    fn upload_raw(&self, shape: &[usize], bytes: &[u8], what: &str) -> Result<Raw> {
        self.check_alive()?;
        // Refused before wgpu is called.
        self.device_bytes(shape, what)?;
        let scope = self.scope();
        let raw = self.alloc(shape, what)?;
        if let Some(buf) = &raw.buf {
            self.queue.write_buffer(buf.buffer(), 0, bytes);
        }
        // Flushes the write; a destroyed device rejects it.
        let index = self.submit([]);
        scope.finish(self, "upload")?;
        self.check_submitted(index)?;
        Ok(raw)
    }

    /// Copies an f32 array of any dimension and layout to the GPU.
    ///
    /// ```no_run
    /// # fn main() -> wgconv::Result<()> {
    /// let gpu = wgconv::Gpu::new()?;
    /// let t = gpu.upload(&ndarray::Array4::<f32>::ones((1, 3, 8, 8)))?;
    /// assert_eq!(t.shape(), &[1, 3, 8, 8]);
    /// # Ok(()) }
    /// ```
    pub fn upload<S: Data<Elem = f32>, D: Dimension>(&self, a: &ArrayBase<S, D>) -> Result<Tensor> {
        // Before a (possibly broadcast, hence huge) view is copied into standard layout.
        self.device_bytes(a.shape(), "upload")?;
        let std = a.as_standard_layout();
        let data = std.as_slice().expect("standard layout is contiguous");
        Ok(Tensor {
            raw: self.upload_raw(a.shape(), bytemuck::cast_slice(data), "upload")?,
        })
    }

    /// Copies a u32 array (max-pool indices) to the GPU.
    pub fn upload_indices<S: Data<Elem = u32>, D: Dimension>(
        &self,
        a: &ArrayBase<S, D>,
    ) -> Result<IndexTensor> {
        self.device_bytes(a.shape(), "upload_indices")?;
        let std = a.as_standard_layout();
        let data = std.as_slice().expect("standard layout is contiguous");
        Ok(IndexTensor {
            raw: self.upload_raw(a.shape(), bytemuck::cast_slice(data), "upload_indices")?,
        })
    }

    fn download_raw(&self, raw: &Raw) -> Result<Vec<u8>> {
        self.check_owner(raw, "download")?;
        if raw.len == 0 {
            self.check_alive()?;
            return Ok(Vec::new());
        }
        self.read_bytes(raw.buffer(), raw.len as u64 * 4)
    }

    /// Copies a tensor back to the host (waits for the GPU to finish the work that writes it).
    pub fn download(&self, t: &Tensor) -> Result<ArrayD<f32>> {
        let bytes = self.download_raw(&t.raw)?;
        let data: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        ArrayD::from_shape_vec(IxDyn(&t.raw.shape), data)
            .map_err(|e| mismatch(format!("download of {:?}: {e}", t.raw.shape)))
    }

    /// Copies an index tensor back to the host.
    pub fn download_indices(&self, t: &IndexTensor) -> Result<ArrayD<u32>> {
        let bytes = self.download_raw(&t.raw)?;
        let data: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes);
        ArrayD::from_shape_vec(IxDyn(&t.raw.shape), data)
            .map_err(|e| mismatch(format!("download of {:?}: {e}", t.raw.shape)))
    }

    /// Errs if `raw` was made by another `Gpu` (wgpu would reject it less clearly).
    pub(crate) fn check_owner(&self, raw: &Raw, what: &str) -> Result<()> {
        if raw.gpu_id != self.id {
            return Err(Error::InvalidArgument(format!(
                "{what}: tensor of shape {:?} belongs to another Gpu",
                raw.shape
            )));
        }
        Ok(())
    }
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
