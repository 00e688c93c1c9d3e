//! The WGSL kernels (one file each under `shaders/`), their parameter blocks, and the pipeline
//! cache.

use std::collections::HashMap;
use std::sync::Mutex;

use bytemuck::{Pod, Zeroable};

/// Tile shape of the implicit-GEMM conv kernels: a workgroup computes a `bm x bn` output tile,
/// stepping `bk` reduction elements at a time; each invocation owns a `tm x tn` register block
/// (4 or 8 each), so a workgroup has `(bm / tm) * (bn / tn)` invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    /// Tile rows (output pixels for forward and dx, output channels for dW).
    pub bm: u32,
    /// Tile columns.
    pub bn: u32,
    /// Reduction step.
    pub bk: u32,
    /// Register block rows per invocation.
    pub tm: u32,
    /// Register block columns per invocation.
    pub tn: u32,
}

impl Tile {
    /// 64 x 64 tiles of 4 x 4 blocks: 256 invocations, 4 KiB of workgroup memory.
    pub const SMALL: Tile = Tile {
        bm: 64,
        bn: 64,
        bk: 8,
        tm: 4,
        tn: 4,
    };

    /// 128 x 64 tiles of 8 x 8 blocks: 128 invocations, 6 KiB of workgroup memory. The best of
    /// the candidates on an H100 (see docs/PERF.md).
    pub const LARGE: Tile = Tile {
        bm: 128,
        bn: 64,
        bk: 8,
        tm: 8,
        tn: 8,
    };

    /// 64 x 64 tiles of 8 x 8 blocks: 64 invocations. dW's tile on CPU drivers.
    pub const MEDIUM: Tile = Tile {
        bm: 64,
        bn: 64,
        bk: 8,
        tm: 8,
        tn: 8,
    };

    /// 128 x 32 tiles of 8 x 4 blocks: for GEMMs with few columns (K or C per group <= 32).
    pub const NARROW: Tile = Tile {
        bm: 128,
        bn: 32,
        bk: 8,
        tm: 8,
        tn: 4,
    };

    /// 128 x 32 tiles of 8 x 8 blocks: 64 invocations, each staging two A rows. The narrow
    /// tile on CPU drivers, where the inner loop's workgroup loads per multiply-add decide the
    /// speed (see docs/PERF.md).
    pub const NARROW_CPU: Tile = Tile {
        bm: 128,
        bn: 32,
        bk: 8,
        tm: 8,
        tn: 8,
    };

    /// Every tile the library may choose (tests translate each).
    pub const CANDIDATES: [Tile; 7] = [
        Tile::SMALL,
        Tile::LARGE,
        Tile::NARROW,
        Tile::NARROW_CPU,
        Tile {
            bm: 64,
            bn: 128,
            bk: 8,
            tm: 8,
            tn: 8,
        },
        Tile::MEDIUM,
        Tile {
            bm: 32,
            bn: 32,
            bk: 8,
            tm: 4,
            tn: 4,
        },
    ];

    /// Parses `bm,bn,bk,tm,tn` (the `WGCONV_TILE` variable).
    pub fn parse(s: &str) -> Option<Tile> {
        let v: Vec<u32> = s
            .split(',')
            .map(|p| p.trim().parse().ok())
            .collect::<Option<_>>()?;
        let [bm, bn, bk, tm, tn] = v[..] else {
            return None;
        };
        let t = Tile { bm, bn, bk, tm, tn };
        t.is_valid().then_some(t)
    }

    /// The tile's override values.
    fn constants(self) -> Vec<(&'static str, f64)> {
        vec![
            ("BM", self.bm.into()),
            ("BN", self.bn.into()),
            ("BK", self.bk.into()),
            ("TM", self.tm.into()),
            ("TN", self.tn.into()),
        ]
    }

    /// Invocations per workgroup.
    pub fn invocations(self) -> u32 {
        (self.bm / self.tm) * (self.bn / self.tn)
    }

    /// Workgroup memory the tile stages, in bytes.
    pub fn workgroup_bytes(self) -> u32 {
        4 * self.bk * (self.bm + self.bn)
    }

    /// Whether the kernels accept this shape: register blocks of 4 or 8 rows and columns
    /// (whole vec4s) dividing the tile, and a workgroup of a whole multiple of `bn`
    /// invocations (each loads one B column) and of `bm` or half of `bm` (each loads one or
    /// two A rows).
    pub fn is_valid(self) -> bool {
        let Tile { bm, bn, bk, tm, tn } = self;
        matches!(tm, 4 | 8)
            && matches!(tn, 4 | 8)
            && bk >= 1
            && bm % tm == 0
            && bn % tn == 0
            && (self.invocations().is_multiple_of(bm) || bm == 2 * self.invocations())
            && self.invocations().is_multiple_of(bn)
            // Each invocation stages whole numbers of elements of A (at most 16) and B (at
            // most 8) per step (dW: of one reduction index, so the workgroup is a multiple of
            // bk).
            && self.invocations().is_multiple_of(bk)
            && (bk * bm) % self.invocations() == 0
            && (bk * bn) % self.invocations() == 0
            && bk * bm / self.invocations() <= 16
            && bk * bn / self.invocations() <= 8
    }
}

/// Outputs per invocation of `conv2d_depthwise.wgsl` and `conv2d_depthwise_backward_input.wgsl`
/// (their `const VW`).
pub const DEPTHWISE_STRIP: usize = 8;

/// Kernel taps per workgroup of `conv2d_depthwise_backward_weight.wgsl` (its `const TAPS`).
pub const DEPTHWISE_TAPS: usize = 9;

/// Every compute kernel of the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `shaders/conv2d_forward.wgsl`: one invocation per output (the first, direct kernel).
    Conv2dForward,
    /// `shaders/conv2d_depthwise.wgsl`: forward of depthwise convolutions (one input channel per
    /// group), a strip of [`DEPTHWISE_STRIP`] outputs per invocation.
    Conv2dDepthwise,
    /// `shaders/conv2d_depthwise_backward_input.wgsl`: dx of depthwise convolutions, a strip of
    /// [`DEPTHWISE_STRIP`] elements per invocation.
    Conv2dDepthwiseBackwardInput,
    /// `shaders/conv2d_depthwise_backward_weight.wgsl`: dW of depthwise convolutions, one
    /// workgroup per output channel, [`DEPTHWISE_TAPS`] kernel taps and split.
    Conv2dDepthwiseBackwardWeight,
    /// `shaders/conv2d_gemm.wgsl`: the implicit GEMM behind the fast forward and dx; `true`
    /// specialises it for 1x1 kernels without padding (a plain GEMM).
    Conv2dGemm(Tile, bool),
    /// `shaders/conv2d_backward_input.wgsl`: one invocation per input element.
    Conv2dBackwardInput,
    /// `shaders/conv2d_backward_weight.wgsl`: one workgroup per weight element and split.
    Conv2dBackwardWeight,
    /// `shaders/conv2d_backward_weight_tiled.wgsl`: implicit GEMM with split-K; `true` for 1x1
    /// kernels without padding.
    Conv2dBackwardWeightTiled(Tile, bool),
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
    /// `shaders/relu_forward.wgsl`
    ReluForward,
    /// `shaders/relu_backward.wgsl`
    ReluBackward,
    /// `shaders/matmul.wgsl`: the tiled GEMM of the linear layer (forward, dx, dW).
    Matmul,
    /// `shaders/linear_backward_bias.wgsl`
    LinearBackwardBias,
    /// `shaders/softmax_cross_entropy.wgsl`
    SoftmaxCrossEntropy,
    /// `shaders/sgd_step.wgsl`
    SgdStep,
}

impl Kernel {
    /// All kernels, for validation tests and warm-up.
    pub const ALL: [Kernel; 22] = [
        Kernel::Conv2dForward,
        Kernel::Conv2dDepthwise,
        Kernel::Conv2dDepthwiseBackwardInput,
        Kernel::Conv2dDepthwiseBackwardWeight,
        Kernel::Conv2dGemm(Tile::SMALL, false),
        Kernel::Conv2dGemm(Tile::SMALL, true),
        Kernel::Conv2dBackwardWeightTiled(Tile::SMALL, false),
        Kernel::Conv2dBackwardWeightTiled(Tile::SMALL, true),
        Kernel::Conv2dBackwardInput,
        Kernel::Conv2dBackwardWeight,
        Kernel::Conv2dBackwardBias,
        Kernel::ReducePartials,
        Kernel::MaxPool2dForward,
        Kernel::MaxPool2dBackward,
        Kernel::AvgPool2dForward,
        Kernel::AvgPool2dBackward,
        Kernel::ReluForward,
        Kernel::ReluBackward,
        Kernel::Matmul,
        Kernel::LinearBackwardBias,
        Kernel::SoftmaxCrossEntropy,
        Kernel::SgdStep,
    ];

    /// The implicit-GEMM kernels specialised for a tile.
    pub fn tiled(tile: Tile) -> Vec<Kernel> {
        vec![
            Kernel::Conv2dGemm(tile, false),
            Kernel::Conv2dGemm(tile, true),
            Kernel::Conv2dBackwardWeightTiled(tile, false),
            Kernel::Conv2dBackwardWeightTiled(tile, true),
        ]
    }

    /// The shader file's stem.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Conv2dForward => "conv2d_forward",
            Kernel::Conv2dDepthwise => "conv2d_depthwise",
            Kernel::Conv2dDepthwiseBackwardInput => "conv2d_depthwise_backward_input",
            Kernel::Conv2dDepthwiseBackwardWeight => "conv2d_depthwise_backward_weight",
            Kernel::Conv2dGemm(..) => "conv2d_gemm",
            Kernel::Conv2dBackwardInput => "conv2d_backward_input",
            Kernel::Conv2dBackwardWeightTiled(..) => "conv2d_backward_weight_tiled",
            Kernel::Conv2dBackwardWeight => "conv2d_backward_weight",
            Kernel::Conv2dBackwardBias => "conv2d_backward_bias",
            Kernel::ReducePartials => "reduce_partials",
            Kernel::MaxPool2dForward => "max_pool2d_forward",
            Kernel::MaxPool2dBackward => "max_pool2d_backward",
            Kernel::AvgPool2dForward => "avg_pool2d_forward",
            Kernel::AvgPool2dBackward => "avg_pool2d_backward",
            Kernel::ReluForward => "relu_forward",
            Kernel::ReluBackward => "relu_backward",
            Kernel::Matmul => "matmul",
            Kernel::LinearBackwardBias => "linear_backward_bias",
            Kernel::SoftmaxCrossEntropy => "softmax_cross_entropy",
            Kernel::SgdStep => "sgd_step",
        }
    }

    /// The WGSL source.
    pub fn source(self) -> &'static str {
        match self {
            Kernel::Conv2dForward => include_str!("../../shaders/conv2d_forward.wgsl"),
            Kernel::Conv2dDepthwise => include_str!("../../shaders/conv2d_depthwise.wgsl"),
            Kernel::Conv2dDepthwiseBackwardInput => {
                include_str!("../../shaders/conv2d_depthwise_backward_input.wgsl")
            }
            Kernel::Conv2dDepthwiseBackwardWeight => {
                include_str!("../../shaders/conv2d_depthwise_backward_weight.wgsl")
            }
            Kernel::Conv2dGemm(..) => include_str!("../../shaders/conv2d_gemm.wgsl"),
            Kernel::Conv2dBackwardInput => include_str!("../../shaders/conv2d_backward_input.wgsl"),
            Kernel::Conv2dBackwardWeightTiled(..) => {
                include_str!("../../shaders/conv2d_backward_weight_tiled.wgsl")
            }
            Kernel::Conv2dBackwardWeight => {
                include_str!("../../shaders/conv2d_backward_weight.wgsl")
            }
            Kernel::Conv2dBackwardBias => include_str!("../../shaders/conv2d_backward_bias.wgsl"),
            Kernel::ReducePartials => include_str!("../../shaders/reduce_partials.wgsl"),
            Kernel::MaxPool2dForward => include_str!("../../shaders/max_pool2d_forward.wgsl"),
            Kernel::MaxPool2dBackward => include_str!("../../shaders/max_pool2d_backward.wgsl"),
            Kernel::AvgPool2dForward => include_str!("../../shaders/avg_pool2d_forward.wgsl"),
            Kernel::AvgPool2dBackward => include_str!("../../shaders/avg_pool2d_backward.wgsl"),
            Kernel::ReluForward => include_str!("../../shaders/relu_forward.wgsl"),
            Kernel::ReluBackward => include_str!("../../shaders/relu_backward.wgsl"),
            Kernel::Matmul => include_str!("../../shaders/matmul.wgsl"),
            Kernel::LinearBackwardBias => include_str!("../../shaders/linear_backward_bias.wgsl"),
            Kernel::SoftmaxCrossEntropy => {
                include_str!("../../shaders/softmax_cross_entropy.wgsl")
            }
            Kernel::SgdStep => include_str!("../../shaders/sgd_step.wgsl"),
        }
    }

    /// Invocations per workgroup. Kernels that reduce within a workgroup own it as a `const`;
    /// the tiled ones derive it from their tile; the others take it as the `WG` override.
    pub fn workgroup_size(self) -> u32 {
        match self {
            Kernel::Conv2dGemm(t, _) | Kernel::Conv2dBackwardWeightTiled(t, _) => t.invocations(),
            _ => 64,
        }
    }

    /// Whether one workgroup handles one work item (a reduction, an output tile) rather than
    /// each invocation one.
    pub fn workgroup_per_item(self) -> bool {
        matches!(
            self,
            Kernel::Conv2dGemm(..)
                | Kernel::Conv2dBackwardWeightTiled(..)
                | Kernel::Conv2dBackwardWeight
                | Kernel::Conv2dDepthwiseBackwardWeight
                | Kernel::Conv2dBackwardBias
                | Kernel::Matmul
                | Kernel::LinearBackwardBias
                | Kernel::SoftmaxCrossEntropy
        )
    }

    /// Values of the pipeline-overridable constants this kernel declares: the tile of the
    /// implicit-GEMM kernels, `WG` of the one-invocation-per-element kernels, none for the
    /// others.
    pub fn constants(self) -> Vec<(&'static str, f64)> {
        match self {
            Kernel::Conv2dGemm(t, pointwise) | Kernel::Conv2dBackwardWeightTiled(t, pointwise) => {
                let mut c = t.constants();
                c.push(("POINTWISE", f64::from(u8::from(pointwise))));
                c
            }
            _ if self.workgroup_per_item() => vec![],
            _ => vec![("WG", self.workgroup_size().into())],
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
        tiles_m, tiles_n, reduce, _pad0,
    }
}

params_struct! {
    /// Parameters of `conv2d_gemm.wgsl` (see the shader for their meaning). `base_h`,
    /// `base_w`, `tap_dh` and `tap_dw` hold i32 bits.
    GemmParams {
        n, rows, cols, groups, in_c, in_cg, in_h, in_w,
        a_step_h, a_step_w, base_h, base_w, out_c, out_cg, out_h, out_w,
        o_step_h, o_step_w, first_h, first_w, reduce, w_group, w_col, act_off,
        w_off, out_off, b_off, has_bias, tiles_m, tiles_n, total, splits,
        split_len, out_len, tap_rows, tap_cols, tap_dh, tap_dw, w_per_ch, w_per_row,
        w_per_col, w_first, _pad0, _pad1,
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

params_struct! {
    /// Parameters of the element-wise kernels (`relu_*.wgsl`): element count and the element
    /// offsets of each tensor inside its binding window.
    EltParams { total, a_off, b_off, out_off }
}

params_struct! {
    /// Parameters of `matmul.wgsl`: `c[m, n] = op(a) · op(b) (+ bias)`.
    MatmulParams { m, n, k, trans_a, trans_b, has_bias, _pad0, _pad1 }
}

params_struct! {
    /// Parameters of the row-wise kernels (`linear_backward_bias.wgsl`,
    /// `softmax_cross_entropy.wgsl`) on a `[rows, cols]` matrix.
    RowsParams { rows, cols, _pad0, _pad1 }
}

params_struct! {
    /// Parameters of `sgd_step.wgsl`. `lr`, `momentum` and `weight_decay` hold `f32` bits
    /// (`f32::to_bits`); the WGSL struct declares them `f32`.
    SgdParams {
        total, p_off, g_off, buf_off, lr, momentum, weight_decay, first_step,
        has_momentum, _pad0, _pad1, _pad2,
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
            Kernel::ReluForward | Kernel::ReluBackward => {
                (EltParams::FIELDS, std::mem::size_of::<EltParams>())
            }
            Kernel::Matmul => (MatmulParams::FIELDS, std::mem::size_of::<MatmulParams>()),
            Kernel::LinearBackwardBias | Kernel::SoftmaxCrossEntropy => {
                (RowsParams::FIELDS, std::mem::size_of::<RowsParams>())
            }
            Kernel::SgdStep => (SgdParams::FIELDS, std::mem::size_of::<SgdParams>()),
            Kernel::Conv2dGemm(..) => (GemmParams::FIELDS, std::mem::size_of::<GemmParams>()),
            Kernel::Conv2dForward
            | Kernel::Conv2dDepthwise
            | Kernel::Conv2dDepthwiseBackwardInput
            | Kernel::Conv2dDepthwiseBackwardWeight
            | Kernel::Conv2dBackwardWeightTiled(..)
            | Kernel::Conv2dBackwardInput
            | Kernel::Conv2dBackwardWeight
            | Kernel::Conv2dBackwardBias => (ConvParams::FIELDS, std::mem::size_of::<ConvParams>()),
        }
    }
}

/// Compiled pipelines, keyed by kernel (which includes its specialisation, e.g. the tile).
#[derive(Default)]
pub(crate) struct PipelineCache {
    map: Mutex<HashMap<Kernel, wgpu::ComputePipeline>>,
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
        runtime_checks: bool,
    ) -> wgpu::ComputePipeline {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(kernel)
            .or_insert_with(|| {
                // Kernel tuning without a rebuild: WGCONV_SHADER_DIR=dir loads dir/<name>.wgsl
                // instead of the built-in source where such a file exists.
                let source = std::env::var_os("WGCONV_SHADER_DIR")
                    .and_then(|dir| {
                        let path =
                            std::path::Path::new(&dir).join(format!("{}.wgsl", kernel.name()));
                        std::fs::read_to_string(path).ok()
                    })
                    .map_or(
                        std::borrow::Cow::Borrowed(kernel.source()),
                        std::borrow::Cow::Owned,
                    );
                let desc = wgpu::ShaderModuleDescriptor {
                    label: Some(kernel.name()),
                    source: wgpu::ShaderSource::Wgsl(source),
                };
                let module = if runtime_checks {
                    device.create_shader_module(desc)
                } else {
                    // SAFETY: every array access in our kernels is guarded by an explicit
                    // bounds test against sizes the host validated and bound, every loop has a
                    // finite trip count set by those sizes, and no divisor can be zero (the
                    // host rejects zero strides, dilations, sizes and groups).
                    unsafe {
                        device.create_shader_module_trusted(
                            desc,
                            wgpu::ShaderRuntimeChecks::unchecked(),
                        )
                    }
                };
                let constants = kernel.constants();
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
