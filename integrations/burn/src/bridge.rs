//! burn's tensors as wgconv's views, and wgconv's work on burn's queue in burn's order.
//!
//! A [`Call`] gathers one wgconv call: the inputs (made contiguous by burn, then viewed in place),
//! the outputs (allocated by burn's memory manager, then viewed), and the `ManagedResource` guards
//! that pin each allocation while wgconv's views exist. [`Call::run`] first flushes burn's pending
//! encoder (so wgconv's submission comes after every burn write of its inputs), then runs the
//! wgconv ops on burn's device thread through `client.exclusive`, so that cubecl's own submits
//! and polls never race wgconv's (RELIABILITY.md, row 34). burn's later work is submitted after
//! it on the same queue and so sees wgconv's writes. Nothing is read back to the host.

use std::any::Any;
use std::sync::Arc;

use burn::backend::DType;
use burn::tensor::Shape;
use burn_cubecl::CubeDevice;
use burn_cubecl::cubecl::client::Client;
use burn_cubecl::cubecl::wgpu::{AutoCompiler, WgpuServer};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use wgconv::{Gpu, IndexTensor, Tensor};

use crate::device::gpu_of;

/// The dtype of wgconv's view of a burn float tensor.
fn float_dtype(dtype: DType, what: &str) -> wgconv::DType {
    match dtype {
        DType::F32 => wgconv::DType::F32,
        DType::F16 => wgconv::DType::F16,
        DType::BF16 => wgconv::DType::BF16,
        other => panic!("wgconv-burn: {what} has dtype {other:?}; wgconv takes F32, F16 and BF16"),
    }
}

/// The four dimensions of an NCHW tensor.
pub(crate) fn dims4(t: &CubeTensor, what: &str) -> [usize; 4] {
    let shape = burn::backend::TensorMetadata::shape(t);
    match shape.as_slice() {
        &[n, c, h, w] => [n, c, h, w],
        other => panic!("wgconv-burn: {what} must have 4 dimensions (NCHW), got shape {other:?}"),
    }
}

/// One wgconv call on burn's device.
pub(crate) struct Call {
    gpu: Arc<Gpu>,
    client: Client,
    device: CubeDevice,
    dtype: DType,
    /// cubecl's `ManagedResource`s: each pins an allocation while it lives.
    guards: Vec<Box<dyn Any>>,
}

impl Call {
    /// A call on the device of `like`, with outputs of its dtype.
    pub(crate) fn on(like: &CubeTensor) -> Call {
        let gpu = gpu_of(&like.device).unwrap_or_else(|e| panic!("wgconv-burn: {e}"));
        Call {
            gpu,
            client: like.client.clone(),
            device: like.device.clone(),
            dtype: like.dtype,
            guards: Vec::new(),
        }
    }

    /// Pins `t`'s allocation and returns its buffer range.
    fn pin(&mut self, t: &CubeTensor) -> (wgpu::Buffer, u64) {
        let guard = self
            .client
            .get_resource::<WgpuServer<AutoCompiler>>(t.handle.clone())
            .unwrap_or_else(|e| panic!("wgconv-burn: burn's buffer is not available: {e:?}"));
        let resource = guard.resource();
        let range = (resource.buffer.clone(), resource.offset);
        self.guards.push(Box::new(guard));
        range
    }

    /// wgconv's view of the float tensor `t` (made contiguous first); returns the tensor burn
    /// keeps (the contiguous one) with it.
    pub(crate) fn input(&mut self, t: CubeTensor, what: &str) -> (CubeTensor, Tensor) {
        if t.dtype != self.dtype {
            panic!(
                "wgconv-burn: {what} has dtype {:?} but the op's input has {:?}; wgconv takes \
                 operands of one dtype",
                t.dtype, self.dtype
            );
        }
        let t = into_contiguous(t);
        let shape = burn::backend::TensorMetadata::shape(&t);
        let view = self.view(&t, shape.as_slice(), what);
        (t, view)
    }

    /// A contiguous float output of `shape`, allocated by burn, and wgconv's view of it.
    pub(crate) fn output(&mut self, shape: &[usize], what: &str) -> (CubeTensor, Tensor) {
        let t = self.alloc(shape, self.dtype);
        let view = self.view(&t, shape, what);
        (t, view)
    }

    /// A contiguous I32 output of `shape` for max-pool indices, and wgconv's u32 view of it
    /// (the indices are below 2^31, so their bits are the same in both).
    pub(crate) fn output_indices(&mut self, shape: &[usize]) -> (CubeTensor, IndexTensor) {
        let t = self.alloc(shape, DType::I32);
        let view = self.index_view(&t);
        (t, view)
    }

    /// wgconv's u32 view of burn's max-pool indices (I32, made contiguous first).
    pub(crate) fn input_indices(&mut self, t: CubeTensor) -> (CubeTensor, IndexTensor) {
        if !matches!(t.dtype, DType::I32 | DType::U32) {
            panic!(
                "wgconv-burn: max-pool indices have dtype {:?}; wgconv's are 32-bit",
                t.dtype
            );
        }
        let t = into_contiguous(t);
        let view = self.index_view(&t);
        (t, view)
    }

    fn alloc(&self, shape: &[usize], dtype: DType) -> CubeTensor {
        let bytes = shape.iter().product::<usize>() * dtype.size();
        // wgpu binds whole 4-byte words; an odd count of 16-bit elements gets its last half-word.
        let handle = self.client.empty(bytes.div_ceil(4).max(1) * 4);
        CubeTensor::new_contiguous(
            self.client.clone(),
            self.device.clone(),
            Shape::from(shape.to_vec()),
            handle,
            dtype,
        )
    }

    fn view(&mut self, t: &CubeTensor, shape: &[usize], what: &str) -> Tensor {
        let dtype = float_dtype(t.dtype, what);
        let (buffer, offset) = self.pin(t);
        self.gpu
            .tensor_from_buffer_as(buffer, offset, shape, dtype)
            .unwrap_or_else(|e| panic!("wgconv-burn: a view of {what}: {e}"))
    }

    fn index_view(&mut self, t: &CubeTensor) -> IndexTensor {
        let shape = burn::backend::TensorMetadata::shape(t);
        let (buffer, offset) = self.pin(t);
        self.gpu
            .index_tensor_from_buffer(buffer, offset, shape.as_slice())
            .unwrap_or_else(|e| panic!("wgconv-burn: a view of the max-pool indices: {e}"))
    }

    /// Runs `ops` (wgconv ops on the views made by this call) after burn's pending work and
    /// before burn's next, then releases the pins. An error of wgconv's panics, as burn's own
    /// ops do on bad input; the public functions check their arguments before they get here.
    pub(crate) fn run(self, ops: impl FnOnce(&Gpu) -> wgconv::Result<()> + Send) {
        self.client
            .flush()
            .unwrap_or_else(|e| panic!("wgconv-burn: burn's queue did not flush: {e:?}"));
        let gpu = &*self.gpu;
        self.client
            .exclusive(move || ops(gpu).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| panic!("wgconv-burn: burn's device was not available: {e:?}"))
            .unwrap_or_else(|e| panic!("wgconv-burn: {e}"));
        drop(self.guards);
    }
}
