//! The WGSL kernels (one file each under `shaders/`), their parameter blocks, and the pipeline
//! cache.

use std::collections::HashMap;
use std::sync::Mutex;

use bytemuck::{Pod, Zeroable};

/// Every compute kernel of the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `shaders/conv2d_forward.wgsl`
    Conv2dForward,
    /// `shaders/conv2d_backward_input.wgsl`
    Conv2dBackwardInput,
    /// `shaders/conv2d_backward_weight.wgsl`
    Conv2dBackwardWeight,
    /// `shaders/conv2d_backward_bias.wgsl`
    Conv2dBackwardBias,
    /// `shaders/reduce_partials.wgsl`
    ReducePartials,
    /// `shaders/max_pool2d_forward.wgsl`
    MaxPool2dForward,
    /// `shaders/max_pool2d_backward.wgsl`
    MaxPool2dBackward,
    /// `shaders/avg_pool2d_forward.wgsl`
    AvgPool2dForward,
    /// `shaders/avg_pool2d_backward.wgsl`
    AvgPool2dBackward,
}

impl Kernel {
    /// All kernels, for validation tests and warm-up.
    pub const ALL: [Kernel; 9] = [
        Kernel::Conv2dForward,
        Kernel::Conv2dBackwardInput,
        Kernel::Conv2dBackwardWeight,
        Kernel::Conv2dBackwardBias,
        Kernel::ReducePartials,
        Kernel::MaxPool2dForward,
        Kernel::MaxPool2dBackward,
        Kernel::AvgPool2dForward,
        Kernel::AvgPool2dBackward,
    ];

    /// The shader file's stem.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Conv2dForward => "conv2d_forward",
            Kernel::Conv2dBackwardInput => "conv2d_backward_input",
            Kernel::Conv2dBackwardWeight => "conv2d_backward_weight",
            Kernel::Conv2dBackwardBias => "conv2d_backward_bias",
            Kernel::ReducePartials => "reduce_partials",
            Kernel::MaxPool2dForward => "max_pool2d_forward",
            Kernel::MaxPool2dBackward => "max_pool2d_backward",
            Kernel::AvgPool2dForward => "avg_pool2d_forward",
            Kernel::AvgPool2dBackward => "avg_pool2d_backward",
        }
    }

    /// The WGSL source.
    pub fn source(self) -> &'static str {
        match self {
            Kernel::Conv2dForward => include_str!("../../shaders/conv2d_forward.wgsl"),
            Kernel::Conv2dBackwardInput => include_str!("../../shaders/conv2d_backward_input.wgsl"),
            Kernel::Conv2dBackwardWeight => {
                include_str!("../../shaders/conv2d_backward_weight.wgsl")
            }
            Kernel::Conv2dBackwardBias => include_str!("../../shaders/conv2d_backward_bias.wgsl"),
            Kernel::ReducePartials => include_str!("../../shaders/reduce_partials.wgsl"),
            Kernel::MaxPool2dForward => include_str!("../../shaders/max_pool2d_forward.wgsl"),
            Kernel::MaxPool2dBackward => include_str!("../../shaders/max_pool2d_backward.wgsl"),
            Kernel::AvgPool2dForward => include_str!("../../shaders/avg_pool2d_forward.wgsl"),
            Kernel::AvgPool2dBackward => include_str!("../../shaders/avg_pool2d_backward.wgsl"),
        }
    }

    /// Invocations per workgroup. Kernels that reduce within a workgroup own it as a `const`; the
    /// others take it as the `WG` override.
    pub fn workgroup_size(self) -> u32 {
        64
    }

    /// Whether one workgroup handles one work item (the reductions) rather than one invocation.
    pub fn workgroup_per_item(self) -> bool {
        matches!(self, Kernel::Conv2dBackwardWeight | Kernel::Conv2dBackwardBias)
    }

    /// Pipeline-overridable constants this kernel declares.
    pub fn overrides(self) -> &'static [&'static str] {
        if self.workgroup_per_item() {
            &[]
        } else {
            &["WG"]
        }
    }
}

/// Declares a params block: a `#[repr(C)]` struct of `u32`s uploaded as the kernel's uniform,
/// with `FIELDS` listing `(name, byte offset)` for the test that pins it to the WGSL `Params`.
macro_rules! params_struct {
    ($(#[$meta:meta])* $name:ident { $($field:ident),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
        #[allow(missing_docs)]
        pub struct $name { $(pub $field: u32,)* }
        impl $name {
            /// `(field name, byte offset)` in declaration order.
            pub const FIELDS: &'static [(&'static str, usize)] =
                &[$((stringify!($field), std::mem::offset_of!($name, $field)),)*];
        }
    };
}

params_struct! {
    /// Parameters of the conv kernels (`conv2d_*.wgsl`). Offsets are element offsets of each
    /// tensor's range inside its (aligned) binding window.
    ConvParams {
        n, c, h, w, k, kh, kw, groups, oh, ow, cg, kg,
        stride_h, stride_w, dil_h, dil_w, pad_top, pad_left, has_bias, accumulate,
        x_off, w_off, b_off, dy_off, out_off, total, splits, split_len,
        _pad0, _pad1, _pad2, _pad3,
    }
}

params_struct! {
    /// Parameters of `reduce_partials.wgsl`, the second pass of dW and db.
    ReduceParams { elems, splits, accumulate, out_off }
}

params_struct! {
    /// Parameters of the pool kernels (`*_pool2d_*.wgsl`).
    PoolParams {
        planes, h, w, oh, ow, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        count_include_pad, in_off, idx_off, out_off, total, _pad0, _pad1,
    }
}

impl Kernel {
    /// `(field name, byte offset)` of the params block this kernel's `Params` struct mirrors,
    /// and its size in bytes.
    pub fn params_layout(self) -> (&'static [(&'static str, usize)], usize) {
        match self {
            Kernel::ReducePartials => (ReduceParams::FIELDS, std::mem::size_of::<ReduceParams>()),
            Kernel::MaxPool2dForward
            | Kernel::MaxPool2dBackward
            | Kernel::AvgPool2dForward
            | Kernel::AvgPool2dBackward => (PoolParams::FIELDS, std::mem::size_of::<PoolParams>()),
            _ => (ConvParams::FIELDS, std::mem::size_of::<ConvParams>()),
        }
    }
}

/// Compiled pipelines, keyed by kernel and workgroup size.
#[derive(Default)]
pub(crate) struct PipelineCache {
    map: Mutex<HashMap<(Kernel, u32), wgpu::ComputePipeline>>,
}

impl PipelineCache {
    /// The pipeline for `kernel`, compiled on first use. Compilation errors surface through the
    /// caller's error scope.
    pub fn get(&self, device: &wgpu::Device, kernel: Kernel) -> wgpu::ComputePipeline {
        let wg = kernel.workgroup_size();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((kernel, wg))
            .or_insert_with(|| {
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(kernel.name()),
                    source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
                });
                let constants: Vec<(&str, f64)> =
                    kernel.overrides().iter().map(|&name| (name, wg as f64)).collect();
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(kernel.name()),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &constants,
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                })
            })
            .clone()
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
