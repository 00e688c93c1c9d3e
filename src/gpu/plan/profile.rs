//! What a plan knows of the device: the limits that shape dispatches and bindings, whether it
//! is a CPU driver, and the options the context was built with.

use super::Role;
use super::Slot;
use super::rules::{MAX_BINDING, SPLIT_TARGET_CPU, SPLIT_TARGET_GPU, default_tile};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::Algorithm;
use crate::gpu::kernels::{Storage, Tile};

/// The device as plans see it. [`Gpu`](crate::Gpu) builds one from its adapter and options
/// ([`Gpu::profile`](crate::Gpu::profile)); tests build their own to plan without a GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceProfile {
    /// A CPU driver (lavapipe, llvmpipe, WARP): its workgroups run on a few threads, and every
    /// memory access is a loop over the SIMD lanes, so it gets its own tiles and split rules.
    pub cpu: bool,
    /// The conv kernels asked for.
    pub algorithm: Algorithm,
    /// The implicit-GEMM tile: set by the caller or chosen by [`default_tile`].
    pub tile: Tile,
    /// The tile was chosen from the adapter, not set: the rules may narrow it per GEMM.
    pub auto_tile: bool,
    /// Workgroups an implicit GEMM should launch before its reduction is not split.
    pub split_target: usize,
    /// The largest storage binding the ops make, in bytes.
    pub max_binding: u64,
    /// `min_storage_buffer_offset_alignment`.
    pub align: u64,
    /// `max_compute_invocations_per_workgroup`.
    pub max_invocations: u32,
    /// `max_compute_workgroup_storage_size`.
    pub max_workgroup_bytes: u32,
    /// Most bytes of scratch (split-K partial sums) one op may use; plans pick fewer splits
    /// to stay within it ([`GpuBuilder::max_workspace_bytes`](crate::GpuBuilder::max_workspace_bytes)).
    pub max_workspace: u64,
    /// dx of few-channel layers with the kernel taps along the GEMM's columns
    /// ([`backward_input_by_taps`](super::backward_input_by_taps)). On CPU drivers by default;
    /// off on GPUs until one measures it (the tuner tries it).
    pub taps_dx: bool,
    /// f16 operands read as WGSL's `f16` (the device has `SHADER_F16`, enabled by the
    /// context, and the packed path is not forced); otherwise packed in `u32` words. See
    /// [`Storage::for_dtype`].
    pub native_f16: bool,
}

/// The options of [`GpuBuilder`](crate::GpuBuilder) that a profile takes.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProfileOptions {
    /// See [`GpuBuilder::algorithm`](crate::GpuBuilder::algorithm).
    pub algorithm: Algorithm,
    /// See [`GpuBuilder::tile`](crate::GpuBuilder::tile).
    pub tile: Option<Tile>,
    /// See [`GpuBuilder::split_target`](crate::GpuBuilder::split_target).
    pub split_target: Option<usize>,
    /// See [`GpuBuilder::max_binding_bytes`](crate::GpuBuilder::max_binding_bytes).
    pub max_binding_bytes: Option<u64>,
    /// See [`GpuBuilder::max_workspace_bytes`](crate::GpuBuilder::max_workspace_bytes).
    pub max_workspace_bytes: Option<u64>,
    /// See [`GpuBuilder::taps_dx`](crate::GpuBuilder::taps_dx); `None`: on CPU drivers only.
    pub taps_dx: Option<bool>,
    /// The device reads f16 natively (see [`DeviceProfile::native_f16`]).
    pub native_f16: bool,
}

impl DeviceProfile {
    /// The profile of a device with `limits`, of type `device_type` named `name` (for messages).
    /// `Err` when the options do not fit the device.
    pub fn new(
        limits: &wgpu::Limits,
        device_type: wgpu::DeviceType,
        name: &str,
        options: ProfileOptions,
    ) -> Result<DeviceProfile> {
        let max_binding = options
            .max_binding_bytes
            .unwrap_or(u64::MAX)
            .min(limits.max_storage_buffer_binding_size)
            .min(MAX_BINDING);
        let align = u64::from(limits.min_storage_buffer_offset_alignment);
        if max_binding < 4 * align {
            return Err(Error::InvalidArgument(format!(
                "max_binding_bytes {max_binding} must be at least 4 x the storage offset \
                 alignment {align}"
            )));
        }
        let cpu = device_type == wgpu::DeviceType::Cpu;
        let profile = DeviceProfile {
            cpu,
            algorithm: options.algorithm,
            tile: options.tile.unwrap_or_else(|| default_tile(limits)),
            auto_tile: options.tile.is_none(),
            split_target: options.split_target.unwrap_or(if cpu {
                SPLIT_TARGET_CPU
            } else {
                SPLIT_TARGET_GPU
            }),
            max_binding,
            align,
            max_invocations: limits.max_compute_invocations_per_workgroup,
            max_workgroup_bytes: limits.max_compute_workgroup_storage_size,
            max_workspace: options.max_workspace_bytes.unwrap_or(u64::MAX),
            // Measured 7-8x faster on lavapipe for the stem's dx (docs/PERF.md); a GPU's plan
            // keeps the stride phases until one measures it.
            taps_dx: options.taps_dx.unwrap_or(cpu),
            native_f16: options.native_f16,
        };
        let tile = profile.tile;
        if !profile.fits(tile) {
            return Err(Error::DeviceLimit(format!(
                "tile {tile:?} needs {} invocations and {} bytes of workgroup memory; {name} \
                 allows {} and {}",
                tile.invocations(),
                tile.workgroup_bytes(),
                profile.max_invocations,
                profile.max_workgroup_bytes
            )));
        }
        Ok(profile)
    }

    /// Whether the device can run a workgroup of `tile`.
    pub fn fits(&self, tile: Tile) -> bool {
        tile.invocations() <= self.max_invocations
            && tile.workgroup_bytes() <= self.max_workgroup_bytes
    }

    /// Elements one binding holds at an aligned offset: the largest binding less the alignment
    /// slack of a window.
    pub fn binding_elems(&self) -> usize {
        ((self.max_binding - self.align) / 4) as usize
    }

    /// This profile with `used` bytes of the workspace bound taken (by a plan's own scratch,
    /// before it plans a part of itself with the rest).
    pub fn less_workspace(&self, used: u64) -> DeviceProfile {
        DeviceProfile {
            max_workspace: self.max_workspace.saturating_sub(used),
            ..self.clone()
        }
    }

    /// Binds elements `[start, end)` of `role`: the window starts at the alignment boundary at
    /// or below `start`; returns the binding and `start`'s element offset inside it.
    pub fn window(&self, role: Role, start: usize, end: usize) -> (Slot, u32) {
        self.window_in(Storage::F32, role, start, end)
    }

    /// [`DeviceProfile::window`] of a tensor whose elements take `storage`'s bytes (a 16-bit
    /// window is whole words: its end rounded up to one).
    pub fn window_in(&self, storage: Storage, role: Role, start: usize, end: usize) -> (Slot, u32) {
        let bytes = storage.elem_bytes() as u64;
        let first = start as u64 * bytes;
        let offset = first / self.align * self.align;
        let size = (end.max(start + 1) as u64 * bytes).next_multiple_of(4) - offset;
        let elem_off = ((first - offset) / bytes) as u32;
        (Slot { role, offset, size }, elem_off)
    }

    /// How this device's kernels read operands of `dtype` (see [`Storage::for_dtype`]).
    pub fn storage(&self, dtype: DType) -> Storage {
        Storage::for_dtype(dtype, self.native_f16)
    }

    /// Items per chunk such that every chunked tensor's window (`unit` elements per item, plus
    /// alignment slack) fits one binding.
    pub fn items_per_chunk(&self, units: &[(usize, &str)], total: usize) -> Result<usize> {
        let max_elems = self.binding_elems();
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

    /// Chunks `(i0, i1)` of `total` items such that each chunked tensor (`elements per item`,
    /// name) fits a binding.
    pub fn chunks(&self, total: usize, units: &[(usize, &str)]) -> Result<Vec<(usize, usize)>> {
        let per = self.items_per_chunk(units, total)?;
        Ok(chunks_of(total, per))
    }

    /// Splits of a reduction into `elems` partial sums each that the workspace bound allows
    /// (at least 1), or `Err` naming the bound when not even one fits.
    pub fn workspace_splits(&self, elems: usize, what: &str) -> Result<usize> {
        let one = elems as u64 * 4;
        let cap = self.max_workspace / one.max(1);
        if cap == 0 {
            return Err(Error::DeviceLimit(format!(
                "{what} need {one} bytes of workspace, more than the bound of {} bytes \
                 (max_workspace_bytes)",
                self.max_workspace
            )));
        }
        Ok(usize::try_from(cap).unwrap_or(usize::MAX))
    }

    /// Errs if a whole (unchunked) tensor does not fit one binding.
    pub fn check_bindable(&self, elems: usize, what: &str) -> Result<()> {
        if elems as u64 * 4 > self.max_binding {
            return Err(Error::DeviceLimit(format!(
                "{what} has {} bytes, more than the largest storage binding of {} bytes",
                elems as u64 * 4,
                self.max_binding
            )));
        }
        Ok(())
    }
}

/// The chunks `(i0, i1)` of `total` items, `per` a chunk (`per > 0`), in order.
pub(super) fn chunks_of(total: usize, per: usize) -> Vec<(usize, usize)> {
    (0..total)
        .step_by(per)
        .map(|i0| (i0, (i0 + per).min(total)))
        .collect()
}
