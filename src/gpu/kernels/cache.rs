//! The pipeline cache: each kernel (with its specialisation, e.g. the tile) compiled once, with
//! an explicit bind group layout built from its [`TABLE`](super::TABLE) row.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Access, Kernel, Storage, source};

/// A compiled kernel and the layout its bind groups take.
#[derive(Clone)]
pub(crate) struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// Compiled pipelines, keyed by kernel (which includes its specialisation, e.g. the tile), by
/// the storage of its 16-bit-capable operands and by whether its storage bindings are all
/// `read_write` (see [`aliased_source`]).
#[derive(Default)]
pub(crate) struct PipelineCache {
    map: Mutex<HashMap<(Kernel, Storage, bool), Pipeline>>,
}

/// The variant of a kernel for a dispatch that binds one buffer both as an input and as an
/// output (views of one arena buffer of the caller's): wgpu refuses a buffer bound read-only and
/// read-write in one dispatch, so every storage binding of the variant is `read_write`. The
/// kernel reads and writes the same elements either way; only the declared access differs.
pub fn aliased_source(source: &str) -> String {
    source.replace("var<storage, read>", "var<storage, read_write>")
}

/// The bind group layout of a kernel: its params block as uniform binding 0, then its storage
/// bindings with their access.
fn bind_group_layout(
    device: &wgpu::Device,
    kernel: Kernel,
    aliased: bool,
) -> wgpu::BindGroupLayout {
    let def = kernel.def();
    let uniform = wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: wgpu::BufferSize::new(def.params.1 as u64),
        },
        count: None,
    };
    let storage = def
        .bindings
        .iter()
        .enumerate()
        .map(|(i, &access)| wgpu::BindGroupLayoutEntry {
            binding: i as u32 + 1,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage {
                    read_only: access == Access::Read && !aliased,
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
    let entries: Vec<_> = std::iter::once(uniform).chain(storage).collect();
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(def.name),
        entries: &entries,
    })
}

impl PipelineCache {
    /// The pipeline for `kernel`, compiled on first use. Compilation errors surface through the
    /// caller's error scope. Without `runtime_checks` the shader is created without naga's
    /// bounds checks, loop bounding and division guards (the kernels check their own indices
    /// against sizes the host validated).
    pub fn get(
        &self,
        device: &wgpu::Device,
        kernel: Kernel,
        storage: Storage,
        runtime_checks: bool,
        aliased: bool,
    ) -> Pipeline {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((kernel, storage, aliased))
            .or_insert_with(|| compile(device, kernel, storage, runtime_checks, aliased))
            .clone()
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

fn compile(
    device: &wgpu::Device,
    kernel: Kernel,
    storage: Storage,
    runtime_checks: bool,
    aliased: bool,
) -> Pipeline {
    // Kernel tuning without a rebuild: WGCONV_SHADER_DIR=dir loads dir/<name>.wgsl (joined with
    // the built-in library) instead of the built-in file where such a file exists.
    let source = std::env::var_os("WGCONV_SHADER_DIR")
        .and_then(|dir| {
            let path = std::path::Path::new(&dir).join(format!("{}.wgsl", kernel.name()));
            std::fs::read_to_string(path).ok()
        })
        .map_or(std::borrow::Cow::Borrowed(kernel.source()), |file| {
            std::borrow::Cow::Owned(source::assemble(&file))
        });
    let source = if storage != Storage::F32 {
        std::borrow::Cow::Owned(storage.specialise(&source))
    } else {
        source
    };
    let source = if aliased {
        std::borrow::Cow::Owned(aliased_source(&source))
    } else {
        source
    };
    let desc = wgpu::ShaderModuleDescriptor {
        label: Some(kernel.name()),
        source: wgpu::ShaderSource::Wgsl(source),
    };
    let module = if runtime_checks {
        device.create_shader_module(desc)
    } else {
        // SAFETY: every array access in our kernels is guarded by an explicit bounds test
        // against sizes the host validated and bound, every loop has a finite trip count set by
        // those sizes, and no divisor can be zero (the host rejects zero strides, dilations,
        // sizes and groups).
        unsafe { device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
    };
    let layout = bind_group_layout(device, kernel, aliased);
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(kernel.name()),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let constants = kernel.constants();
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(kernel.name()),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &constants,
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    Pipeline { pipeline, layout }
}
