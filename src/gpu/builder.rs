//! [`GpuBuilder`]: the options of a [`Gpu`], read from the builder and the environment, and
//! the choice of adapter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::buffers::Pool;
use super::kernels::{PipelineCache, Tile};
use super::plan::{DeviceProfile, ProfileOptions};
use super::{Gpu, NEXT_GPU_ID};
use crate::error::{Error, Result};

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
    max_workspace_bytes: Option<u64>,
    autotune: Option<bool>,
    tuning_file: Option<std::path::PathBuf>,
    taps_dx: Option<bool>,
    packed_16bit: Option<bool>,
}

/// Which conv kernels the ops run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// The first kernels: one invocation per output element, loops over the window.
    Direct,
    /// Implicit GEMM with workgroup tiles (the default).
    #[default]
    Tiled,
    /// Winograd for 3x3 convolutions with stride 1 and dilation 1: F(2x2, 3x3) for the forward
    /// and dx, F(3x3, 2x2) for dW (transforms around a batched GEMM, 2.25x fewer multiplies),
    /// where its transforms fit the bindings and the workspace bound; the tiled kernels for
    /// everything else. Chosen explicitly only: it is not yet
    /// measured faster on a real GPU (see `docs/PERF.md`).
    Winograd,
}

impl Algorithm {
    fn from_env() -> Result<Option<Algorithm>> {
        match std::env::var("WGCONV_ALGO").as_deref().map(str::trim) {
            Err(_) | Ok("") => Ok(None),
            Ok("direct") => Ok(Some(Algorithm::Direct)),
            Ok("tiled") => Ok(Some(Algorithm::Tiled)),
            Ok("winograd") => Ok(Some(Algorithm::Winograd)),
            Ok(other) => Err(Error::InvalidArgument(format!(
                "WGCONV_ALGO={other:?} is not one of direct, tiled, winograd"
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

    /// Most bytes of scratch (split-K partial sums, an accumulation's staging) one op may use;
    /// plans pick fewer splits to stay within it, and an op that cannot is `Err` naming the
    /// bound. Unbounded by default (each plan keeps its partial sums within 256 MiB and one
    /// binding). See [`Gpu::conv2d_workspace_bytes`].
    pub fn max_workspace_bytes(mut self, bytes: u64) -> Self {
        self.max_workspace_bytes = Some(bytes);
        self
    }

    /// dx of layers with at most 4 input channels per group (the 3-channel stem) as a GEMM with
    /// the kernel taps along its columns and a gather pass, instead of the stride-phase GEMM
    /// with 3 of its 32 columns used (see `plan/dx_taps.rs`). By default on CPU drivers only
    /// (7-8x faster there on the stem), off on GPUs until one measures it; the tuner tries
    /// both. Overrides `WGCONV_TAPS_DX=0|1`.
    pub fn taps_dx(mut self, on: bool) -> Self {
        self.taps_dx = Some(on);
        self
    }

    /// Reads f16 operands packed two to a `u32` word even on a device with `SHADER_F16`
    /// (which is otherwise enabled where the adapter has it, and f16 read as WGSL's `f16`).
    /// The results are the same bits either way; this exists to test and measure the packed
    /// path, which devices without the feature (GL, Adreno) and every bf16 operand take.
    /// Overrides `WGCONV_PACKED_16BIT=0|1`.
    pub fn packed_16bit(mut self, on: bool) -> Self {
        self.packed_16bit = Some(on);
        self
    }

    /// Times the candidate plans (algorithms and tiles) of each conv geometry the first time an
    /// op meets it, and keeps the fastest for the rest of the context's life, like
    /// `torch.backends.cudnn.benchmark` (overrides `WGCONV_TUNE=0|1`; off by default). The
    /// measurement runs eagerly on the op's inputs (inside a recorder too) into scratch outputs;
    /// results can differ in the last bits from the default plans. [`Gpu::save_tuning`] writes
    /// the choices; [`GpuBuilder::tuning_file`] loads them.
    ///
    /// [`Gpu::save_tuning`]: crate::Gpu::save_tuning
    pub fn autotune(mut self, on: bool) -> Self {
        self.autotune = Some(on);
        self
    }

    /// Loads tuned choices from a JSON file written by [`Gpu::save_tuning`] (overrides
    /// `WGCONV_TUNING_FILE`): every geometry in it gets its saved plan, so the run is
    /// bit-reproducible; others get the default plans (or are measured with
    /// [`GpuBuilder::autotune`]). `build` fails naming the file if it cannot be read or parsed,
    /// or names a tile this adapter cannot run.
    ///
    /// [`Gpu::save_tuning`]: crate::Gpu::save_tuning
    pub fn tuning_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tuning_file = Some(path.into());
        self
    }

    /// Selects the adapter and creates the device, blocking until they are ready. In a browser
    /// (wasm32), where adapter and device requests resolve through the page's event loop, this
    /// is an `Err(Adapter)`: use [`GpuBuilder::build_async`] there.
    pub fn build(self) -> Result<Gpu> {
        if cfg!(target_arch = "wasm32") {
            return Err(Error::Adapter(
                "a blocking device request is not available in a browser (wasm32): use \
                 GpuBuilder::build_async or Gpu::new_async"
                    .into(),
            ));
        }
        pollster::block_on(self.build_async())
    }

    /// [`GpuBuilder::build`] as a future: the way to make a `Gpu` in a browser (WebGPU, from
    /// wasm32), where the environment variables are absent and the browser chooses the adapter
    /// (a name or power preference given here still filters and ranks what it offers).
    ///
    /// ```no_run
    /// # async fn run() -> wgconv::Result<()> {
    /// let gpu = wgconv::Gpu::builder().build_async().await?;
    /// # let _ = gpu;
    /// # Ok(()) }
    /// ```
    pub async fn build_async(self) -> Result<Gpu> {
        let backends = match self.backends {
            Some(b) => b,
            None => backends_from_env()?,
        };
        let name = self.adapter_name.clone().or_else(|| {
            std::env::var("WGPU_ADAPTER_NAME")
                .ok()
                .filter(|s| !s.is_empty())
        });
        let power = match self.power_preference {
            Some(p) => Some(p),
            None => power_from_env()?,
        };
        let settings = self.settings()?;

        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapter = select_adapter(&instance, backends, name.as_deref(), power).await?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        // Timestamps for the benchmark; f16 for the native 16-bit path (storage.rs).
        let features =
            adapter.features() & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("wgconv"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
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
        self.assemble(device, queue, info, limits, settings, lost, uncaptured)
    }

    /// A [`Gpu`] on the caller's device and queue, with the builder's options (the adapter
    /// options do not apply). See [`Gpu::from_wgpu`].
    pub fn build_from_wgpu(self, device: wgpu::Device, queue: wgpu::Queue) -> Result<Gpu> {
        let settings = self.settings()?;
        let limits = device.limits();
        check_limits(&limits)?;
        let info = device.adapter_info();
        // No callbacks of ours: the caller's stay. Loss is found by the submission checks.
        let (lost, uncaptured) = (Arc::default(), Arc::default());
        self.assemble(device, queue, info, limits, settings, lost, uncaptured)
    }

    /// The options read from the builder and the environment.
    fn settings(&self) -> Result<Settings> {
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
        Ok(Settings {
            runtime_checks,
            checked,
            algorithm,
            tile,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        self,
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        limits: wgpu::Limits,
        settings: Settings,
        lost: Arc<Mutex<Option<String>>>,
        uncaptured: Arc<Mutex<Option<String>>>,
    ) -> Result<Gpu> {
        let profile = DeviceProfile::new(
            &limits,
            info.device_type,
            &info.name,
            ProfileOptions {
                algorithm: settings.algorithm,
                tile: settings.tile,
                split_target: self.split_target,
                max_binding_bytes: self.max_binding_bytes,
                max_workspace_bytes: self.max_workspace_bytes,
                taps_dx: self.taps_dx.or_else(|| env_flag("WGCONV_TAPS_DX")),
                native_f16: device.features().contains(wgpu::Features::SHADER_F16)
                    && !self
                        .packed_16bit
                        .or_else(|| env_flag("WGCONV_PACKED_16BIT"))
                        .unwrap_or(false),
            },
        )?;
        let pool = Arc::new(Mutex::new(Pool::new(
            self.pool_limit_bytes.unwrap_or(1 << 30),
            limits.max_buffer_size,
        )));
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgconv placeholder"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let checked = settings.checked;
        let tuning_file = self.tuning_file.clone().or_else(|| {
            std::env::var_os("WGCONV_TUNING_FILE")
                .filter(|v| !v.is_empty())
                .map(Into::into)
        });
        let tuner = super::tune::Tuner::new(
            self.autotune.unwrap_or_else(|| {
                std::env::var("WGCONV_TUNE").is_ok_and(|v| !v.is_empty() && v != "0")
            }),
            match &tuning_file {
                Some(path) => super::tune::Tuner::load(path, &profile)?,
                None => Default::default(),
            },
        );
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
            profiler: Mutex::new(None),
            queue_lock: Arc::new(Mutex::new(())),
            counters: Arc::default(),
            encoded_checks: Mutex::new(Vec::new()),
            runtime_checks: settings.runtime_checks,
            profile,
            tuner,
        })
    }
}

/// The options [`GpuBuilder::settings`] resolves.
struct Settings {
    runtime_checks: bool,
    checked: bool,
    algorithm: Algorithm,
    tile: Option<Tile>,
}

/// `Err(DeviceLimit)` naming the first limit wgconv needs that `limits` is below
/// [`wgpu::Limits::downlevel_defaults`] on (the compute limits its kernels and bindings use).
pub(crate) fn check_limits(limits: &wgpu::Limits) -> Result<()> {
    let need = wgpu::Limits::downlevel_defaults();
    let at_least: [(&str, u64, u64); 10] = [
        (
            "max_storage_buffer_binding_size",
            limits.max_storage_buffer_binding_size,
            need.max_storage_buffer_binding_size,
        ),
        (
            "max_storage_buffers_per_shader_stage",
            limits.max_storage_buffers_per_shader_stage.into(),
            need.max_storage_buffers_per_shader_stage.into(),
        ),
        (
            "max_uniform_buffers_per_shader_stage",
            limits.max_uniform_buffers_per_shader_stage.into(),
            need.max_uniform_buffers_per_shader_stage.into(),
        ),
        (
            "max_bindings_per_bind_group",
            limits.max_bindings_per_bind_group.into(),
            need.max_bindings_per_bind_group.into(),
        ),
        (
            "max_compute_workgroup_storage_size",
            limits.max_compute_workgroup_storage_size.into(),
            need.max_compute_workgroup_storage_size.into(),
        ),
        (
            "max_compute_invocations_per_workgroup",
            limits.max_compute_invocations_per_workgroup.into(),
            need.max_compute_invocations_per_workgroup.into(),
        ),
        (
            "max_compute_workgroup_size_x",
            limits.max_compute_workgroup_size_x.into(),
            need.max_compute_workgroup_size_x.into(),
        ),
        (
            "max_compute_workgroups_per_dimension",
            limits.max_compute_workgroups_per_dimension.into(),
            need.max_compute_workgroups_per_dimension.into(),
        ),
        (
            "max_uniform_buffer_binding_size",
            limits.max_uniform_buffer_binding_size,
            need.max_uniform_buffer_binding_size,
        ),
        (
            "max_buffer_size",
            limits.max_buffer_size,
            need.max_buffer_size,
        ),
    ];
    for (name, have, want) in at_least {
        if have < want {
            return Err(Error::DeviceLimit(format!(
                "the device's {name} is {have}, below the {want} of \
                 wgpu::Limits::downlevel_defaults() that wgconv needs"
            )));
        }
    }
    let align = limits.min_storage_buffer_offset_alignment;
    if align > need.min_storage_buffer_offset_alignment {
        return Err(Error::DeviceLimit(format!(
            "the device's min_storage_buffer_offset_alignment is {align}, above the {} of \
             wgpu::Limits::downlevel_defaults()",
            need.min_storage_buffer_offset_alignment
        )));
    }
    Ok(())
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

/// A duration in nanoseconds, saturated to `u64` (585 years).
pub(super) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(super) fn describe(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

/// Enumerates the adapters of `backends`, keeps those whose name contains `name`, and picks the
/// best by device type for the power preference.
async fn select_adapter(
    instance: &wgpu::Instance,
    backends: wgpu::Backends,
    name: Option<&str>,
    power: Option<wgpu::PowerPreference>,
) -> Result<wgpu::Adapter> {
    let adapters = instance.enumerate_adapters(backends).await;
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

/// `Some(v != "0")` for a set, non-empty environment variable `name`.
fn env_flag(name: &str) -> Option<bool> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v != "0")
}
