//! The GPU path: a [`Gpu`] context owning the wgpu device, queue, pipeline cache and buffer pool,
//! and the ops as methods on it.
//!
//! Where things are: the builder and adapter choice in `builder.rs`; submission, error scopes,
//! polls, readback and timing in `submit.rs`; tensors, the buffer pool and checked mode in
//! `tensor.rs`, `buffers.rs`, `check.rs`; the kernel table in [`kernels`]; the pure plans (which
//! kernels, tiles, splits and chunks an op runs) in [`plan`]; the op bodies (validate, plan,
//! bind, submit) in `conv.rs`, `pool.rs` and `nn.rs`. `docs/ARCHITECTURE.md` draws the map.
//!
//! Every op validates its shapes on the host, splits work that exceeds a binding or dispatch
//! limit into chunks, records all dispatches into one compute pass, submits, and returns without
//! waiting for the GPU; [`Gpu::download`] waits. wgpu errors are captured with error scopes and
//! returned as [`Error::Wgpu`](crate::Error::Wgpu); a lost device turns every later call into [`Error::DeviceLost`](crate::Error::DeviceLost).

mod bands;
mod buffers;
mod builder;
mod cast;
mod check;
mod conv;
mod finite;
pub mod kernels;
mod nn;
mod output;
pub mod plan;
mod pool;
mod readback;
mod recorder;
mod sgd;
mod staged;
mod submit;
mod tensor;
mod timing;
mod tune;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use buffers::PoolStats;
use buffers::{BufferKind, Pool, PooledBuffer};
pub use builder::{Algorithm, GpuBuilder};
use builder::{describe, nanos};
pub use conv::ConvOp;
use kernels::{Kernel, PipelineCache, Tile};
use plan::DeviceProfile;
pub use recorder::Recorder;
use submit::Counters;
pub use submit::GpuCounters;
pub use tensor::{IndexTensor, Tensor};
use timing::Profiler;
pub use tune::{TuneKey, TunedEntry, TunedOp};

use crate::dtype::DType;
use crate::error::Result;

static NEXT_GPU_ID: AtomicU64 = AtomicU64::new(1);

/// The GPU context: device, queue, limits, pipeline cache and buffer pool. All ops are methods;
/// it is `Send + Sync`, so threads can share one through an `Arc`.
pub struct Gpu {
    id: u64,
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    pipelines: PipelineCache,
    pool: Arc<Mutex<Pool>>,
    lost: Arc<Mutex<Option<String>>>,
    uncaptured: Arc<Mutex<Option<String>>>,
    /// Bound where a kernel's optional input (bias) is absent.
    dummy: wgpu::Buffer,
    checked: bool,
    poison: bool,
    /// Nanoseconds; see [`Gpu::set_poll_timeout`].
    poll_timeout: AtomicU64,
    /// Set while [`Gpu::time_gpu`] runs: timestamp queries around every compute pass.
    profiler: Mutex<Option<Profiler>>,
    /// Held around every `queue.submit` and `device.poll` (see `Gpu::poll`); shared with the
    /// futures of `download_async`.
    queue_lock: Arc<Mutex<()>>,
    /// Submissions and polls made.
    counters: Arc<Counters>,
    /// Checks of recorded batches the caller encoded, run at the next `synchronize`.
    encoded_checks: Mutex<Vec<recorder::Check>>,
    runtime_checks: bool,
    /// What the plans know of the device and the options.
    profile: DeviceProfile,
    /// The opt-in tuner's state.
    tuner: tune::Tuner,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &describe(&self.info))
            .field("checked", &self.checked)
            .finish_non_exhaustive()
    }
}

/// One dispatch: a kernel, its params block, its storage bindings (bindings 1..) and the number
/// of work items (invocations, or workgroups for [`Kernel::workgroup_per_item`] kernels).
pub(crate) struct Dispatch<'a> {
    pub kernel: Kernel,
    /// How the kernel reads its 16-bit-capable operands.
    pub storage: kernels::Storage,
    pub params: Vec<u8>,
    pub bindings: Vec<Bind<'a>>,
    pub items: u64,
}

/// A byte range of a buffer bound as storage.
#[derive(Clone, Copy)]
pub(crate) struct Bind<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

impl<'a> Bind<'a> {
    /// All of a small buffer (weights, bias, scratch) from its start, `elems` elements long.
    pub fn whole(buffer: &'a wgpu::Buffer, elems: usize) -> Self {
        Bind {
            buffer,
            offset: 0,
            size: (elems.max(1) as u64) * 4,
        }
    }
}

impl Gpu {
    /// A `Gpu` on the adapter the environment selects (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`,
    /// `WGPU_POWER_PREF`; checked mode with `WGCONV_CHECK=1`).
    pub fn new() -> Result<Gpu> {
        GpuBuilder::default().build()
    }

    /// [`Gpu::new`] as a future, the way to make a `Gpu` in a browser (wasm32, WebGPU); see
    /// [`GpuBuilder::build_async`].
    pub async fn new_async() -> Result<Gpu> {
        GpuBuilder::default().build_async().await
    }

    /// A builder for the options [`Gpu::new`] takes from the environment, and more.
    pub fn builder() -> GpuBuilder {
        GpuBuilder::default()
    }

    /// The selected adapter.
    pub fn adapter_info(&self) -> wgpu::AdapterInfo {
        self.info.clone()
    }

    /// The device's limits (all of the adapter's, requested at creation).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The wgpu device, for interop (and for tests that destroy it).
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The conv kernels in use.
    pub fn algorithm(&self) -> Algorithm {
        self.profile.algorithm
    }

    /// The implicit-GEMM tile in use.
    pub fn tile(&self) -> Tile {
        self.profile.tile
    }

    /// What the plans know of this device (limits, CPU driver or not, the options): with
    /// [`plan`], the dispatches an op will record, without running it.
    pub fn profile(&self) -> &DeviceProfile {
        &self.profile
    }

    /// How long a download or [`Gpu::synchronize`] waits for the GPU before returning
    /// [`Error::Readback`](crate::Error::Readback).
    pub fn poll_timeout(&self) -> Duration {
        Duration::from_nanos(self.poll_timeout.load(Ordering::Relaxed))
    }

    /// Changes the poll timeout (set at creation by [`GpuBuilder::poll_timeout`]), e.g. for one
    /// long readback; it applies to the waits that start afterwards.
    pub fn set_poll_timeout(&self, timeout: Duration) {
        self.poll_timeout.store(nanos(timeout), Ordering::Relaxed);
    }

    /// Whether checked mode is on.
    pub fn is_checked(&self) -> bool {
        self.checked
    }

    /// The buffer pool's counters.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).stats()
    }

    /// Frees every buffer the pool holds for reuse.
    pub fn clear_pool(&self) {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Number of compiled pipelines in the cache.
    pub fn cached_pipelines(&self) -> usize {
        self.pipelines.len()
    }

    pub(crate) fn take_buffer(&self, kind: BufferKind, bytes: u64) -> PooledBuffer {
        buffers::take(&self.pool, &self.device, kind, bytes)
    }

    /// Binds elements `[start, end)` of `raw` (see [`DeviceProfile::window`]), at its offset.
    pub(crate) fn window<'a>(
        &self,
        raw: &'a tensor::Raw,
        start: usize,
        end: usize,
    ) -> (Bind<'a>, u32) {
        let (slot, elem_off) = self.profile.window(plan::Role::Out, start, end);
        let bind = Bind {
            buffer: raw.buffer(),
            offset: raw.offset + slot.offset,
            size: slot.size.min(raw.bytes().saturating_sub(slot.offset)),
        };
        (bind, elem_off)
    }

    /// Binds elements `[start, end)` of `raw` in its dtype: a 16-bit window is the words that
    /// hold them (`start` even). Returns the binding and the window's first word in it.
    pub(crate) fn typed_window<'a>(
        &self,
        raw: &'a tensor::Raw,
        start: usize,
        end: usize,
    ) -> (Bind<'a>, u32) {
        match raw.dtype {
            DType::F32 => self.window(raw, start, end),
            DType::F16 | DType::BF16 => self.window(raw, start / 2, end.div_ceil(2)),
        }
    }

    /// All of `raw` (its first `elems` elements), or the placeholder for an empty tensor.
    pub(crate) fn whole<'a>(&'a self, raw: &'a tensor::Raw, elems: usize) -> Bind<'a> {
        match &raw.buf {
            Some(b) => Bind {
                buffer: b.buffer(),
                offset: raw.offset,
                size: raw.dtype.storage_bytes(elems.max(1)).unwrap_or(u64::MAX),
            },
            None => Bind::whole(&self.dummy, 0),
        }
    }

    /// See [`DeviceProfile::items_per_chunk`].
    pub(crate) fn items_per_chunk(&self, units: &[(usize, &str)], total: usize) -> Result<usize> {
        self.profile.items_per_chunk(units, total)
    }

    /// See [`DeviceProfile::check_bindable`].
    pub(crate) fn check_bindable(&self, elems: usize, what: &str) -> Result<()> {
        self.profile.check_bindable(elems, what)
    }

    /// Fills `raw` with `bits` (NaN for f32 outputs) so an element no kernel writes is caught.
    pub(crate) fn poison(&self, raw: &tensor::Raw, bits: u32) -> Result<()> {
        if self.poison && raw.len > 0 {
            // A 16-bit tensor: its whole words only (the half-word after an odd-length view is
            // not its own), with a NaN in each half.
            let (words, bits) = match raw.dtype {
                DType::F32 => (raw.len, bits),
                DType::F16 => (raw.len / 2, 0x7e00_7e00),
                DType::BF16 => (raw.len / 2, 0x7fc0_7fc0),
            };
            if words == 0 {
                return Ok(());
            }
            let fill = vec![bits; words];
            self.scoped("poisoning an output", || {
                self.queue
                    .write_buffer(raw.buffer(), raw.offset, bytemuck::cast_slice(&fill))
            })?;
        }
        Ok(())
    }
}

impl Gpu {
    /// A `Gpu` on the caller's device and queue: any adapter and features, with limits at least
    /// [`wgpu::Limits::downlevel_defaults`] (else `Err(DeviceLimit)` naming the limit). wgconv
    /// adapts its kernels and tiles to `device.limits()`, takes the adapter info from
    /// `device.adapter_info()`, times with timestamps only when the device has them, and installs
    /// no device-lost or uncaptured-error callback: a lost device is found through error scopes
    /// and submission checks, and the next call that would read stale data returns
    /// [`Error::DeviceLost`](crate::Error::DeviceLost).
    ///
    /// wgconv serialises its own polls and submits on the device (wgpu-core 30 can panic when a
    /// waiting poll races a poll or submit on another thread); a caller that also polls or
    /// submits on it from another thread is outside that lock and risks the same race. wgconv
    /// never calls back into the caller while it holds the lock.
    ///
    /// ```no_run
    /// # fn main() -> wgconv::Result<()> {
    /// let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    /// let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
    ///     .expect("an adapter");
    /// let (device, queue) = pollster::block_on(adapter.request_device(&Default::default()))
    ///     .expect("a device");
    /// let gpu = wgconv::Gpu::from_wgpu(device.clone(), queue.clone())?;
    /// # let _ = gpu;
    /// # Ok(()) }
    /// ```
    pub fn from_wgpu(device: wgpu::Device, queue: wgpu::Queue) -> Result<Gpu> {
        GpuBuilder::default().build_from_wgpu(device, queue)
    }
}
