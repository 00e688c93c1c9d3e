//! The GPU path: a [`Gpu`] context owning the wgpu device, queue, pipeline cache and buffer pool,
//! and the eight ops as methods on it (`conv.rs`, `pool.rs`).
//!
//! Every op validates its shapes on the host, splits work that exceeds a binding or dispatch
//! limit into chunks, records all dispatches into one compute pass, submits, and returns without
//! waiting for the GPU; [`Gpu::download`] waits. wgpu errors are captured with error scopes and
//! returned as [`Error::Wgpu`]; a lost device turns every later call into [`Error::DeviceLost`].

mod buffers;
mod check;
mod conv;
pub mod kernels;
mod nn;
mod pool;
mod tensor;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use buffers::PoolStats;
use buffers::{BufferKind, Pool, PooledBuffer};
use kernels::{Kernel, PipelineCache, Tile};
pub use tensor::{IndexTensor, Tensor};

use crate::error::{Error, Result};

static NEXT_GPU_ID: AtomicU64 = AtomicU64::new(1);

/// Configures a [`Gpu`]. Unset fields fall back to the environment (`WGPU_BACKEND`,
/// `WGPU_ADAPTER_NAME`, `WGPU_POWER_PREF`, `WGCONV_CHECK`), then to defaults.
///
/// ```no_run
/// # fn main() -> wgconv::Result<()> {
/// let gpu = wgconv::Gpu::builder()
///     .adapter_name("llvmpipe")
///     .checked(true)
///     .build()?;
/// println!("{}", gpu.adapter_info().name);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct GpuBuilder {
    backends: Option<wgpu::Backends>,
    adapter_name: Option<String>,
    power_preference: Option<wgpu::PowerPreference>,
    checked: Option<bool>,
    poison_outputs: Option<bool>,
    poll_timeout: Option<Duration>,
    max_binding_bytes: Option<u64>,
    pool_limit_bytes: Option<u64>,
    algorithm: Option<Algorithm>,
    tile: Option<Tile>,
    runtime_checks: Option<bool>,
    split_target: Option<usize>,
}

/// Which conv kernels the ops run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// The first kernels: one invocation per output element, loops over the window.
    Direct,
    /// Implicit GEMM with workgroup tiles (the default).
    #[default]
    Tiled,
}

impl Algorithm {
    fn from_env() -> Result<Option<Algorithm>> {
        match std::env::var("WGCONV_ALGO").as_deref().map(str::trim) {
            Err(_) | Ok("") => Ok(None),
            Ok("direct") => Ok(Some(Algorithm::Direct)),
            Ok("tiled") => Ok(Some(Algorithm::Tiled)),
            Ok(other) => Err(Error::InvalidArgument(format!(
                "WGCONV_ALGO={other:?} is not one of direct, tiled"
            ))),
        }
    }
}

impl GpuBuilder {
    /// Backends to search (overrides `WGPU_BACKEND`).
    pub fn backends(mut self, backends: wgpu::Backends) -> Self {
        self.backends = Some(backends);
        self
    }
    /// Pick the first adapter whose name contains this, ignoring case (overrides
    /// `WGPU_ADAPTER_NAME`).
    pub fn adapter_name(mut self, name: impl Into<String>) -> Self {
        self.adapter_name = Some(name.into());
        self
    }
    /// Prefer discrete (`HighPerformance`) or integrated (`LowPower`) adapters (overrides
    /// `WGPU_POWER_PREF`).
    pub fn power_preference(mut self, pref: wgpu::PowerPreference) -> Self {
        self.power_preference = Some(pref);
        self
    }
    /// Checked mode (overrides `WGCONV_CHECK=1`): every op also runs the CPU reference and
    /// returns [`Error::CheckFailed`] when the results differ past `1e-4 · max(1, max|ref|)`.
    /// Outputs are poisoned with NaN first, so an element a kernel forgot to write fails too.
    pub fn checked(mut self, on: bool) -> Self {
        self.checked = Some(on);
        self
    }
    /// Fill every op's output with NaN (indices with `u32::MAX`) before the kernel runs; on by
    /// default in checked mode.
    pub fn poison_outputs(mut self, on: bool) -> Self {
        self.poison_outputs = Some(on);
        self
    }
    /// How long a download waits for the GPU before returning [`Error::Readback`] (default 60 s).
    pub fn poll_timeout(mut self, timeout: Duration) -> Self {
        self.poll_timeout = Some(timeout);
        self
    }
    /// Lowers the largest storage binding the ops use below the device's
    /// `max_storage_buffer_binding_size`, so that chunking can be exercised on small tensors.
    pub fn max_binding_bytes(mut self, bytes: u64) -> Self {
        self.max_binding_bytes = Some(bytes);
        self
    }
    /// Which conv kernels to run (overrides `WGCONV_ALGO=direct|tiled`; default tiled).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = Some(algorithm);
        self
    }
    /// The implicit-GEMM tile (overrides `WGCONV_TILE=bm,bn,bk,tm,tn`); by default chosen from
    /// the adapter's limits and type.
    pub fn tile(mut self, tile: Tile) -> Self {
        self.tile = Some(tile);
        self
    }
    /// Keep naga's runtime checks in the shaders (bounds clamping, loop bounding, division
    /// guards; overrides `WGCONV_RUNTIME_CHECKS=0|1`). Off by default: the kernels check their
    /// own indices against host-validated sizes, and the checks cost time in every loop.
    pub fn runtime_checks(mut self, on: bool) -> Self {
        self.runtime_checks = Some(on);
        self
    }
    /// Workgroups an implicit GEMM should launch before its reduction is not split (split-K,
    /// with a deterministic second pass): 528 on GPUs (four per SM of a large part), 0 (never
    /// split) on CPU drivers. Tests raise it to exercise split-K on any adapter.
    pub fn split_target(mut self, workgroups: usize) -> Self {
        self.split_target = Some(workgroups);
        self
    }
    /// Most bytes of free buffers the pool keeps for reuse (default 1 GiB).
    pub fn pool_limit_bytes(mut self, bytes: u64) -> Self {
        self.pool_limit_bytes = Some(bytes);
        self
    }

    /// Selects the adapter and creates the device.
    pub fn build(self) -> Result<Gpu> {
        let backends = match self.backends {
            Some(b) => b,
            None => backends_from_env()?,
        };
        let name = self.adapter_name.or_else(|| {
            std::env::var("WGPU_ADAPTER_NAME")
                .ok()
                .filter(|s| !s.is_empty())
        });
        let power = match self.power_preference {
            Some(p) => Some(p),
            None => power_from_env()?,
        };
        let runtime_checks = self.runtime_checks.unwrap_or_else(|| {
            std::env::var("WGCONV_RUNTIME_CHECKS").is_ok_and(|v| !v.is_empty() && v != "0")
        });
        let checked = self.checked.unwrap_or_else(|| {
            std::env::var("WGCONV_CHECK").is_ok_and(|v| !v.is_empty() && v != "0")
        });

        let algorithm = match self.algorithm {
            Some(a) => a,
            None => Algorithm::from_env()?.unwrap_or_default(),
        };
        let tile = match (self.tile, std::env::var("WGCONV_TILE")) {
            (Some(t), _) => Some(t),
            (None, Ok(v)) if !v.trim().is_empty() => Some(Tile::parse(&v).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "WGCONV_TILE={v:?} is not a valid bm,bn,bk,tm,tn tile"
                ))
            })?),
            _ => None,
        };
        if let Some(t) = tile
            && !t.is_valid()
        {
            return Err(Error::InvalidArgument(format!("tile {t:?} is not valid")));
        }

        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapter = select_adapter(&instance, backends, name.as_deref(), power)?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features() & wgpu::Features::TIMESTAMP_QUERY;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("wgconv"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::Adapter(format!("requesting a device from {}: {e}", info.name)))?;

        let lost = Arc::new(Mutex::new(None::<String>));
        let lost_cb = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            *lost_cb.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(format!("{reason:?}: {message}"));
        });
        let uncaptured = Arc::new(Mutex::new(None::<String>));
        let uncaptured_cb = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = uncaptured_cb.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert_with(|| e.to_string());
        }));

        let device_binding = limits.max_storage_buffer_binding_size;
        // Also keeps every element index of a binding far below 2^31.
        let max_binding = self
            .max_binding_bytes
            .unwrap_or(u64::MAX)
            .min(device_binding)
            .min(1 << 31);
        let align = u64::from(limits.min_storage_buffer_offset_alignment);
        if max_binding < 4 * align {
            return Err(Error::InvalidArgument(format!(
                "max_binding_bytes {max_binding} must be at least 4 x the storage offset \
                 alignment {align}"
            )));
        }
        let pool = Arc::new(Mutex::new(Pool::new(
            self.pool_limit_bytes.unwrap_or(1 << 30),
            limits.max_buffer_size,
        )));
        let auto_tile = tile.is_none();
        let tile = tile.unwrap_or_else(|| default_tile(&limits));
        let split_target =
            self.split_target
                .unwrap_or(if info.device_type == wgpu::DeviceType::Cpu {
                    0
                } else {
                    528
                });
        if tile.invocations() > limits.max_compute_invocations_per_workgroup
            || tile.workgroup_bytes() > limits.max_compute_workgroup_storage_size
        {
            return Err(Error::DeviceLimit(format!(
                "tile {tile:?} needs {} invocations and {} bytes of workgroup memory; {} allows \
                 {} and {}",
                tile.invocations(),
                tile.workgroup_bytes(),
                info.name,
                limits.max_compute_invocations_per_workgroup,
                limits.max_compute_workgroup_storage_size
            )));
        }
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgconv placeholder"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(Gpu {
            id: NEXT_GPU_ID.fetch_add(1, Ordering::Relaxed),
            device,
            queue,
            info,
            limits,
            pipelines: PipelineCache::default(),
            pool,
            lost,
            uncaptured,
            dummy,
            checked,
            poison: self.poison_outputs.unwrap_or(checked),
            poll_timeout: AtomicU64::new(nanos(
                self.poll_timeout.unwrap_or(Duration::from_secs(60)),
            )),
            max_binding,
            align,
            profiler: Mutex::new(None),
            queue_lock: Mutex::new(()),
            algorithm,
            tile,
            runtime_checks,
            split_target,
            auto_tile,
        })
    }
}

fn backends_from_env() -> Result<wgpu::Backends> {
    match std::env::var("WGPU_BACKEND") {
        Ok(v) if !v.trim().is_empty() => {
            let b = wgpu::Backends::from_comma_list(&v);
            if b.is_empty() {
                Err(Error::Adapter(format!(
                    "WGPU_BACKEND={v:?} names no known backend (vulkan, gl, metal, dx12)"
                )))
            } else {
                Ok(b)
            }
        }
        _ => Ok(wgpu::Backends::all()),
    }
}

fn power_from_env() -> Result<Option<wgpu::PowerPreference>> {
    let Ok(v) = std::env::var("WGPU_POWER_PREF") else {
        return Ok(None);
    };
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "none" => Ok(None),
        "low" | "low-power" | "lowpower" => Ok(Some(wgpu::PowerPreference::LowPower)),
        "high" | "high-performance" | "highperformance" => {
            Ok(Some(wgpu::PowerPreference::HighPerformance))
        }
        _ => Err(Error::Adapter(format!(
            "WGPU_POWER_PREF={v:?} is not one of low, high, none"
        ))),
    }
}

/// The tile for an adapter: 128 x 64, the fastest on an H100 and for the forward and dx on
/// lavapipe (docs/PERF.md), shrunk to fit the adapter's limits.
fn default_tile(limits: &wgpu::Limits) -> Tile {
    let fits = |t: &Tile| {
        t.invocations() <= limits.max_compute_invocations_per_workgroup
            && t.workgroup_bytes() <= limits.max_compute_workgroup_storage_size
    };
    std::iter::once(Tile::LARGE)
        .chain(Tile::CANDIDATES)
        .find(fits)
        .unwrap_or(Tile::CANDIDATES[Tile::CANDIDATES.len() - 1])
}

/// A duration in nanoseconds, saturated to `u64` (585 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

/// Enumerates the adapters of `backends`, keeps those whose name contains `name`, and picks the
/// best by device type for the power preference.
fn select_adapter(
    instance: &wgpu::Instance,
    backends: wgpu::Backends,
    name: Option<&str>,
    power: Option<wgpu::PowerPreference>,
) -> Result<wgpu::Adapter> {
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    if adapters.is_empty() {
        return Err(Error::Adapter(format!(
            "no GPU adapter found for backends {backends:?}. Without a GPU, install Mesa's \
             software drivers: `apt-get install mesa-vulkan-drivers` (Vulkan lavapipe) and \
             `libegl-mesa0 libgl1-mesa-dri` (GL llvmpipe), then select one with \
             WGPU_BACKEND=vulkan or WGPU_BACKEND=gl"
        )));
    }
    let all: Vec<String> = adapters.iter().map(|a| describe(&a.get_info())).collect();
    let matching: Vec<wgpu::Adapter> = match name {
        Some(n) => {
            let n = n.to_lowercase();
            adapters
                .into_iter()
                .filter(|a| a.get_info().name.to_lowercase().contains(&n))
                .collect()
        }
        None => adapters,
    };
    use wgpu::DeviceType as T;
    let rank = |t: T| -> u8 {
        match (power, t) {
            (Some(wgpu::PowerPreference::LowPower), T::IntegratedGpu) => 5,
            (Some(wgpu::PowerPreference::LowPower), T::DiscreteGpu) => 4,
            (_, T::DiscreteGpu) => 5,
            (_, T::IntegratedGpu) => 4,
            (_, T::VirtualGpu) => 3,
            (_, T::Cpu) => 2,
            (_, T::Other) => 1,
        }
    };
    // Stable: among equals the first enumerated wins.
    let mut best: Option<wgpu::Adapter> = None;
    for a in matching {
        let better = best
            .as_ref()
            .is_none_or(|b| rank(a.get_info().device_type) > rank(b.get_info().device_type));
        if better {
            best = Some(a);
        }
    }
    best.ok_or_else(|| {
        Error::Adapter(format!(
            "no adapter name contains {:?}; available: {}",
            name.unwrap_or_default(),
            all.join(", ")
        ))
    })
}

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
    /// Largest storage binding the ops make, in bytes.
    max_binding: u64,
    /// `min_storage_buffer_offset_alignment`.
    align: u64,
    /// Set while [`Gpu::time_gpu`] runs: timestamp queries around every compute pass.
    profiler: Mutex<Option<Profiler>>,
    /// Held around every `queue.submit` and `device.poll` (see [`Gpu::poll`]).
    queue_lock: Mutex<()>,
    algorithm: Algorithm,
    tile: Tile,
    runtime_checks: bool,
    /// See [`GpuBuilder::split_target`].
    pub(crate) split_target: usize,
    /// The tile was chosen from the adapter, not set: GEMMs with few columns may narrow it.
    pub(crate) auto_tile: bool,
}

/// Timestamp queries for the compute passes recorded while [`Gpu::time_gpu`] runs.
struct Profiler {
    query: wgpu::QuerySet,
    capacity: u32,
    used: u32,
}

/// Compute passes one [`Gpu::time_gpu`] call can time.
const PROFILE_PASSES: u32 = 1024;

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

/// Error scopes around one op: validation and out-of-memory errors become `Err`.
pub(crate) struct Scope {
    // Fields drop in declaration order and wgpu panics unless scopes are popped in reverse
    // order of their push: `validation` (pushed last) must come first, so that an early return
    // between `scope()` and `finish()` drops them correctly.
    validation: wgpu::ErrorScopeGuard,
    oom: wgpu::ErrorScopeGuard,
}

impl Scope {
    pub fn finish(self, gpu: &Gpu, op: &str) -> Result<()> {
        let validation = pollster::block_on(self.validation.pop());
        let oom = pollster::block_on(self.oom.pop());
        if let Some(e) = validation.or(oom) {
            gpu.note_error();
            return Err(Error::Wgpu {
                op: op.to_string(),
                message: e.to_string(),
            });
        }
        gpu.check_alive()
    }
}

impl Gpu {
    /// A `Gpu` on the adapter the environment selects (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`,
    /// `WGPU_POWER_PREF`; checked mode with `WGCONV_CHECK=1`).
    pub fn new() -> Result<Gpu> {
        GpuBuilder::default().build()
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
        self.algorithm
    }

    /// The implicit-GEMM tile in use.
    pub fn tile(&self) -> Tile {
        self.tile
    }

    /// How long a download or [`Gpu::synchronize`] waits for the GPU before returning
    /// [`Error::Readback`].
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

    /// Waits until all submitted work has finished (or the poll timeout passes).
    pub fn synchronize(&self) -> Result<()> {
        self.check_alive()?;
        self.wait_for(None)?;
        self.check_alive()
    }

    /// `Err(DeviceLost)` once the device is lost; also reports an error wgpu raised outside any
    /// of our error scopes.
    pub(crate) fn check_alive(&self) -> Result<()> {
        // wgpu reports a destroyed device only through the lost callback, which runs in a poll
        // once the queue is empty; until then its calls do nothing, silently.
        let _ = self.poll(wgpu::PollType::Poll);
        if let Some(reason) = self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(Error::DeviceLost(reason));
        }
        if let Some(msg) = self
            .uncaptured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            self.note_error();
            return Err(Error::Wgpu {
                op: "earlier call".into(),
                message: msg,
            });
        }
        Ok(())
    }

    /// `device.poll`, serialised with every other poll and submit of this `Gpu`: wgpu-core 30
    /// panics ("If the queue is empty, the current submission index ... should be at least the
    /// wait submission index") when a `Wait` poll races a poll or submit on another thread that
    /// retires the awaited submission.
    fn poll(&self, ty: wgpu::PollType) -> std::result::Result<wgpu::PollStatus, wgpu::PollError> {
        let _one = self.queue_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.device.poll(ty)
    }

    /// `queue.submit` (which polls the device internally), serialised like [`Gpu::poll`].
    pub(crate) fn submit<I: IntoIterator<Item = wgpu::CommandBuffer>>(
        &self,
        commands: I,
    ) -> wgpu::SubmissionIndex {
        let _one = self.queue_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.queue.submit(commands)
    }

    fn note_error(&self) {
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note_error();
    }

    pub(crate) fn scope(&self) -> Scope {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        Scope { oom, validation }
    }

    pub(crate) fn take_buffer(&self, kind: BufferKind, bytes: u64) -> PooledBuffer {
        buffers::take(&self.pool, &self.device, kind, bytes)
    }

    /// Binds elements `[start, end)` of `buffer`: the window starts at the alignment boundary at
    /// or below `start`; returns the binding and `start`'s element offset inside it.
    pub(crate) fn window<'a>(
        &self,
        buffer: &'a wgpu::Buffer,
        start: usize,
        end: usize,
    ) -> (Bind<'a>, u32) {
        let first = start as u64 * 4;
        let offset = first / self.align * self.align;
        let size = (end.max(start + 1) as u64 * 4 - offset).min(buffer.size() - offset);
        let elem_off = ((first - offset) / 4) as u32;
        (
            Bind {
                buffer,
                offset,
                size,
            },
            elem_off,
        )
    }

    /// Items per chunk such that every chunked tensor's window (`unit` elements per item, plus
    /// alignment slack) fits one binding.
    pub(crate) fn items_per_chunk(&self, units: &[(usize, &str)], total: usize) -> Result<usize> {
        let max_elems = ((self.max_binding - self.align) / 4) as usize;
        let mut per = total.max(1);
        for &(unit, what) in units {
            if unit > max_elems {
                return Err(Error::DeviceLimit(format!(
                    "one {what} slice has {} bytes, more than the largest storage binding of \
                     {} bytes (max_storage_buffer_binding_size)",
                    unit as u64 * 4,
                    self.max_binding
                )));
            }
            if let Some(fit) = max_elems.checked_div(unit) {
                per = per.min(fit);
            }
        }
        Ok(per)
    }

    /// Errs if a whole (unchunked) tensor does not fit one binding.
    pub(crate) fn check_bindable(&self, elems: usize, what: &str) -> Result<()> {
        if elems as u64 * 4 > self.max_binding {
            return Err(Error::DeviceLimit(format!(
                "{what} has {} bytes, more than the largest storage binding of {} bytes",
                elems as u64 * 4,
                self.max_binding
            )));
        }
        Ok(())
    }

    /// Workgroup grid for `items` work items: 1-D up to `max_compute_workgroups_per_dimension`,
    /// folded into 2-D beyond (kernels rebuild the linear id and skip the excess).
    fn grid(&self, kernel: Kernel, items: u64) -> Result<(u32, u32)> {
        let per = if kernel.workgroup_per_item() {
            1
        } else {
            u64::from(kernel.workgroup_size())
        };
        let groups = items.div_ceil(per).max(1);
        let max = u64::from(self.limits.max_compute_workgroups_per_dimension);
        if groups <= max {
            return Ok((groups as u32, 1));
        }
        let rows = groups.div_ceil(max);
        if rows > max {
            return Err(Error::DeviceLimit(format!(
                "{} needs {groups} workgroups, more than {max} x {max}",
                kernel.name()
            )));
        }
        Ok((max as u32, rows as u32))
    }

    /// Records `dispatches` into one compute pass, in order, and submits it.
    pub(crate) fn execute(&self, op: &str, dispatches: &[Dispatch<'_>]) -> Result<()> {
        self.check_alive()?;
        let scope = self.scope();
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(op) });
        let mut uniforms = Vec::with_capacity(dispatches.len());
        {
            let mut profiler = self.profiler.lock().unwrap_or_else(|e| e.into_inner());
            let timestamp_writes = profiler.as_mut().and_then(|p| {
                (p.used < p.capacity).then(|| {
                    p.used += 1;
                    wgpu::ComputePassTimestampWrites {
                        query_set: &p.query,
                        beginning_of_pass_write_index: Some(2 * p.used - 2),
                        end_of_pass_write_index: Some(2 * p.used - 1),
                    }
                })
            });
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(op),
                timestamp_writes,
            });
            for d in dispatches {
                let (gx, gy) = self.grid(d.kernel, d.items)?;
                let pipeline = self
                    .pipelines
                    .get(&self.device, d.kernel, self.runtime_checks);
                let uniform = self.take_buffer(BufferKind::Uniform, d.params.len() as u64);
                self.queue.write_buffer(uniform.buffer(), 0, &d.params);
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: uniform.buffer(),
                        offset: 0,
                        size: wgpu::BufferSize::new(d.params.len() as u64),
                    }),
                }];
                for (i, b) in d.bindings.iter().enumerate() {
                    entries.push(wgpu::BindGroupEntry {
                        binding: i as u32 + 1,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: b.buffer,
                            offset: b.offset,
                            size: wgpu::BufferSize::new(b.size),
                        }),
                    });
                }
                let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(d.kernel.name()),
                    layout: &pipeline.get_bind_group_layout(0),
                    entries: &entries,
                });
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(gx, gy, 1);
                uniforms.push(uniform);
            }
        }
        let index = self.submit([encoder.finish()]);
        scope.finish(self, op)?;
        self.check_submitted(index)
    }

    /// `Err` if the device silently rejected submission `index`: a destroyed device does
    /// nothing and reports nothing until its queue drains and the lost callback runs, but a zero
    /// wait on a rejected submission fails at once.
    pub(crate) fn check_submitted(&self, index: wgpu::SubmissionIndex) -> Result<()> {
        match self.poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: Some(Duration::ZERO),
        }) {
            Err(wgpu::PollError::WrongSubmissionIndex(..)) => Err(self.rejected()),
            _ => Ok(()),
        }
    }

    fn rejected(&self) -> Error {
        match self.check_alive() {
            Err(e) => e,
            Ok(()) => {
                Error::DeviceLost("the device rejected a submission (destroyed or lost)".into())
            }
        }
    }

    /// Waits until submission `index` (all work when `None`) is done, up to the poll timeout.
    /// One wait may end early (GL caps it near 2 s), so it is repeated until the deadline.
    fn wait_for(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        let start = std::time::Instant::now();
        let timeout = self.poll_timeout();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let asked = std::time::Instant::now();
            match self.poll(wgpu::PollType::Wait {
                submission_index: index.clone(),
                timeout: Some(left),
            }) {
                Ok(_) => return Ok(()),
                Err(wgpu::PollError::WrongSubmissionIndex(..)) => return Err(self.rejected()),
                Err(wgpu::PollError::Timeout) if start.elapsed() < timeout => {
                    // Not a busy loop where a backend returns early without waiting.
                    if asked.elapsed() < left / 2 {
                        std::thread::sleep(Duration::from_millis(1).min(left));
                    }
                }
                Err(e) => {
                    return Err(Error::Readback(format!(
                        "waiting {timeout:?} for the GPU to finish: {e}"
                    )));
                }
            }
        }
    }

    /// Whether the device has timestamp queries, so [`Gpu::time_gpu`] can measure on the GPU.
    pub fn has_timestamps(&self) -> bool {
        self.device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Runs `f` and measures, with timestamp queries, the GPU time of the compute passes the ops
    /// inside it record (the sum of their durations, in milliseconds; one pass per op call).
    /// Waits for the GPU. Returns `None` for the time when the adapter has no timestamp queries.
    /// Passes recorded by other threads meanwhile are counted too.
    ///
    /// ```no_run
    /// # fn main() -> wgconv::Result<()> {
    /// # let gpu = wgconv::Gpu::new()?;
    /// # let x = gpu.upload(&ndarray::Array4::<f32>::ones((1, 1, 8, 8)))?;
    /// let spec = wgconv::Pool2dSpec::new([2, 2]);
    /// let (y, ms) = gpu.time_gpu(|| gpu.avg_pool2d_forward(&x, &spec, true))?;
    /// println!("{:?} in {ms:?} ms", y.shape());
    /// # Ok(()) }
    /// ```
    pub fn time_gpu<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, Option<f64>)> {
        if !self.has_timestamps() {
            return Ok((f()?, None));
        }
        let query = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("wgconv timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * PROFILE_PASSES,
        });
        *self.profiler.lock().unwrap_or_else(|e| e.into_inner()) = Some(Profiler {
            query,
            capacity: PROFILE_PASSES,
            used: 0,
        });
        let out = f();
        let profiler = self
            .profiler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let out = out?;
        let Some(p) = profiler.filter(|p| p.used > 0) else {
            return Ok((out, Some(0.0)));
        };
        let bytes = u64::from(p.used) * 16;
        let scope = self.scope();
        let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgconv timestamp resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("timestamps"),
            });
        encoder.resolve_query_set(&p.query, 0..2 * p.used, &resolve, 0);
        self.submit([encoder.finish()]);
        scope.finish(self, "time_gpu")?;
        let stamps: Vec<u64> = bytemuck::pod_collect_to_vec(&self.read_bytes(&resolve, bytes)?);
        let period_ns = f64::from(self.queue.get_timestamp_period());
        let ticks: u64 = stamps
            .chunks_exact(2)
            .map(|pair| pair[1].saturating_sub(pair[0]))
            .sum();
        Ok((out, Some(ticks as f64 * period_ns / 1e6)))
    }

    /// A storage buffer holding `data` (small per-call tables).
    pub(crate) fn scratch(&self, data: &[u8]) -> PooledBuffer {
        let buf = self.take_buffer(BufferKind::Storage, data.len() as u64);
        self.queue.write_buffer(buf.buffer(), 0, data);
        buf
    }

    /// Fills `raw` with `bits` (NaN for f32 outputs) so an element no kernel writes is caught.
    pub(crate) fn poison(&self, raw: &tensor::Raw, bits: u32) {
        if self.poison && raw.len > 0 {
            let fill = vec![bits; raw.len];
            self.queue
                .write_buffer(raw.buffer(), 0, bytemuck::cast_slice(&fill));
        }
    }

    /// Copies the first `bytes` of `src` to a staging buffer and reads them on the host.
    pub(crate) fn read_bytes(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        self.check_alive()?;
        let scope = self.scope();
        let staging = self.take_buffer(BufferKind::Staging, bytes);
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        encoder.copy_buffer_to_buffer(src, 0, staging.buffer(), 0, bytes);
        let index = self.submit([encoder.finish()]);
        scope.finish(self, "download")?;

        let out = self.map_read(staging.buffer(), index, bytes);
        if out.is_err() {
            staging.discard();
        }
        let out = out?;
        // A device lost mid-flight must not hand back stale data.
        self.check_alive()?;
        Ok(out)
    }

    /// Maps the first `bytes` of `staging` once submission `index` (which fills it) is done,
    /// copies them out and unmaps it.
    fn map_read(
        &self,
        staging: &wgpu::Buffer,
        index: wgpu::SubmissionIndex,
        bytes: u64,
    ) -> Result<Vec<u8>> {
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, ..bytes, move |r| {
            let _ = tx.send(r);
        });
        self.wait_for(Some(index))?;
        let mapped = match rx.try_recv() {
            Ok(r) => r,
            // The callback runs on a later poll on some backends.
            Err(_) => {
                let _ = self.poll(wgpu::PollType::Poll);
                rx.recv_timeout(self.poll_timeout())
                    .map_err(|_| Error::Readback("buffer map did not complete".into()))?
            }
        };
        mapped.map_err(|e| Error::Readback(format!("mapping the staging buffer: {e}")))?;
        let out = {
            let view = staging
                .get_mapped_range(..bytes)
                .map_err(|e| Error::Readback(format!("reading the staging buffer: {e}")))?;
            view.to_vec()
        };
        staging.unmap();
        Ok(out)
    }
}
