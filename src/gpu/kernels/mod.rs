//! The WGSL kernels: one table row per kernel (its file under `shaders/`, params block,
//! bindings, workgroup mode), the tile and params types, the shader prelude and the pipeline
//! cache.
//!
//! A new kernel is a shader file, a [`Kernel`] variant and a row of [`TABLE`]; the GPU-free
//! tests in `tests/shaders.rs` then validate and translate it, pin its params struct and its
//! bindings against naga's reading of the WGSL.

mod cache;
mod params;
pub mod source;
mod storage;
mod tile;

use std::sync::OnceLock;

use crate::dtype::DType;

pub(crate) use cache::PipelineCache;
pub use cache::aliased_source;
pub use params::{
    ConvParams, EltParams, GemmParams, MatmulParams, PoolParams, ReduceParams, RowsParams,
    SgdParams, WinogradParams,
};
pub(crate) use params::{overflow, sizes, to_i32_bits, to_u32};
pub use storage::Storage;
pub use tile::Tile;

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
    /// `shaders/winograd_filter.wgsl`: Winograd F(2x2, 3x3) filter transform.
    WinogradFilter,
    /// `shaders/winograd_input.wgsl`: Winograd F(2x2, 3x3) input transform.
    WinogradInput,
    /// `shaders/winograd_output.wgsl`: Winograd F(2x2, 3x3) output transform.
    WinogradOutput,
    /// `shaders/winograd_dy.wgsl`: Winograd F(3x3, 2x2) gradient transform (dW).
    WinogradDy,
    /// `shaders/winograd_dw_output.wgsl`: Winograd F(3x3, 2x2) output transform (dW).
    WinogradDwOutput,
    /// `shaders/conv2d_col2im.wgsl`: dx of few-channel layers, gathering the taps a GEMM wrote.
    Conv2dCol2im,
    /// `shaders/cast.wgsl`: a tensor converted from the first dtype to the second.
    Cast(DType, DType),
    /// `shaders/all_finite.wgsl`: sets a flag where an element is inf or NaN.
    AllFinite,
}

/// How a storage binding is accessed (WGSL `read` or `read_write`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `var<storage, read>`
    Read,
    /// `var<storage, read_write>`
    ReadWrite,
}

/// How a kernel's workgroups map to its work items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workgroup {
    /// One invocation per item; 64 invocations per workgroup, given as the `WG` override.
    PerElement,
    /// One workgroup per item (a reduction, a tile of the linear GEMM); the shader owns its size
    /// (64) as a `const`.
    PerItem,
    /// One workgroup per output tile of the implicit GEMM: the tile's invocations, given with
    /// the tile as overrides (`BM`, `BN`, `BK`, `TM`, `TN`, `POINTWISE`).
    Tiled,
}

/// One kernel, as the host sees it.
#[derive(Debug)]
pub struct KernelDef {
    /// The shader file's stem under `shaders/`.
    pub name: &'static str,
    /// The shader file as written (before its includes are joined).
    pub file: &'static str,
    /// `(field name, byte offset)` of its params block (uniform binding 0), and its size.
    pub params: (&'static [(&'static str, usize)], usize),
    /// Its storage bindings 1, 2, ... in order.
    pub bindings: &'static [Access],
    /// Its workgroup mode.
    pub workgroup: Workgroup,
}

/// Invocations per workgroup of the kernels that are not tiled.
const WORKGROUP: u32 = 64;

macro_rules! row {
    ($name:literal, $params:ty, [$($access:ident),*], $wg:ident) => {
        KernelDef {
            name: $name,
            file: include_str!(concat!("../../../shaders/", $name, ".wgsl")),
            params: (<$params>::FIELDS, std::mem::size_of::<$params>()),
            bindings: &[$(Access::$access),*],
            workgroup: Workgroup::$wg,
        }
    };
}

/// Every kernel, one row each, in the order of [`Kernel::row`].
#[rustfmt::skip]
pub static TABLE: [KernelDef; 28] = [
    row!("conv2d_forward", ConvParams, [Read, Read, Read, ReadWrite], PerElement),
    row!("conv2d_depthwise", ConvParams, [Read, Read, Read, ReadWrite], PerElement),
    row!("conv2d_depthwise_backward_input", ConvParams, [Read, Read, ReadWrite], PerElement),
    row!("conv2d_depthwise_backward_weight", ConvParams, [Read, Read, ReadWrite], PerItem),
    row!("conv2d_gemm", GemmParams, [Read, Read, Read, ReadWrite], Tiled),
    row!("conv2d_backward_input", ConvParams, [Read, Read, ReadWrite], PerElement),
    row!("conv2d_backward_weight", ConvParams, [Read, Read, ReadWrite], PerItem),
    row!("conv2d_backward_weight_tiled", ConvParams, [Read, Read, ReadWrite], Tiled),
    row!("conv2d_backward_bias", ConvParams, [Read, ReadWrite], PerItem),
    row!("reduce_partials", ReduceParams, [Read, ReadWrite], PerElement),
    row!("max_pool2d_forward", PoolParams, [Read, ReadWrite, ReadWrite], PerElement),
    row!("max_pool2d_backward", PoolParams, [Read, Read, ReadWrite], PerElement),
    row!("avg_pool2d_forward", PoolParams, [Read, ReadWrite], PerElement),
    row!("avg_pool2d_backward", PoolParams, [Read, ReadWrite], PerElement),
    row!("relu_forward", EltParams, [Read, ReadWrite], PerElement),
    row!("relu_backward", EltParams, [Read, Read, ReadWrite], PerElement),
    row!("matmul", MatmulParams, [Read, Read, Read, ReadWrite], PerItem),
    row!("linear_backward_bias", RowsParams, [Read, ReadWrite], PerItem),
    row!("softmax_cross_entropy", RowsParams, [Read, Read, ReadWrite, ReadWrite], PerItem),
    row!("sgd_step", SgdParams, [ReadWrite, Read, ReadWrite], PerElement),
    row!("winograd_filter", WinogradParams, [Read, ReadWrite], PerElement),
    row!("winograd_input", WinogradParams, [Read, ReadWrite], PerElement),
    row!("winograd_output", WinogradParams, [Read, Read, ReadWrite], PerElement),
    row!("winograd_dy", WinogradParams, [Read, ReadWrite], PerElement),
    row!("winograd_dw_output", WinogradParams, [Read, ReadWrite], PerElement),
    row!("conv2d_col2im", ConvParams, [Read, ReadWrite], PerElement),
    row!("cast", EltParams, [Read, ReadWrite], PerElement),
    row!("all_finite", EltParams, [Read, ReadWrite], PerElement),
];

/// The assembled source of each row, joined on first use.
static SOURCES: [OnceLock<String>; 28] = [const { OnceLock::new() }; 28];

impl Kernel {
    /// All kernels, for validation tests and warm-up.
    pub const ALL: [Kernel; 30] = [
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
        Kernel::WinogradFilter,
        Kernel::WinogradInput,
        Kernel::WinogradOutput,
        Kernel::WinogradDy,
        Kernel::WinogradDwOutput,
        Kernel::Conv2dCol2im,
        Kernel::Cast(DType::F32, DType::F16),
        Kernel::AllFinite,
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

    /// This kernel's row of [`TABLE`] (the one `match` on kernels).
    pub fn row(self) -> usize {
        match self {
            Kernel::Conv2dForward => 0,
            Kernel::Conv2dDepthwise => 1,
            Kernel::Conv2dDepthwiseBackwardInput => 2,
            Kernel::Conv2dDepthwiseBackwardWeight => 3,
            Kernel::Conv2dGemm(..) => 4,
            Kernel::Conv2dBackwardInput => 5,
            Kernel::Conv2dBackwardWeight => 6,
            Kernel::Conv2dBackwardWeightTiled(..) => 7,
            Kernel::Conv2dBackwardBias => 8,
            Kernel::ReducePartials => 9,
            Kernel::MaxPool2dForward => 10,
            Kernel::MaxPool2dBackward => 11,
            Kernel::AvgPool2dForward => 12,
            Kernel::AvgPool2dBackward => 13,
            Kernel::ReluForward => 14,
            Kernel::ReluBackward => 15,
            Kernel::Matmul => 16,
            Kernel::LinearBackwardBias => 17,
            Kernel::SoftmaxCrossEntropy => 18,
            Kernel::SgdStep => 19,
            Kernel::WinogradFilter => 20,
            Kernel::WinogradInput => 21,
            Kernel::WinogradOutput => 22,
            Kernel::WinogradDy => 23,
            Kernel::WinogradDwOutput => 24,
            Kernel::Conv2dCol2im => 25,
            Kernel::Cast(..) => 26,
            Kernel::AllFinite => 27,
        }
    }

    /// Everything the host knows about this kernel.
    pub fn def(self) -> &'static KernelDef {
        &TABLE[self.row()]
    }

    /// The tile and 1x1 specialisation of a tiled kernel.
    fn tile(self) -> Option<(Tile, bool)> {
        match self {
            Kernel::Conv2dGemm(t, pointwise) | Kernel::Conv2dBackwardWeightTiled(t, pointwise) => {
                Some((t, pointwise))
            }
            _ => None,
        }
    }

    /// The shader file's stem.
    pub fn name(self) -> &'static str {
        self.def().name
    }

    /// The WGSL source the pipeline compiles: the file with its `shaders/lib/` includes joined
    /// (see [`source`]).
    pub fn source(self) -> &'static str {
        SOURCES[self.row()].get_or_init(|| source::assemble(self.def().file))
    }

    /// Invocations per workgroup: the tile's for the tiled kernels, 64 for the others.
    pub fn workgroup_size(self) -> u32 {
        match self.tile() {
            Some((t, _)) => t.invocations(),
            None => WORKGROUP,
        }
    }

    /// Whether one workgroup handles one work item (a reduction, an output tile) rather than
    /// each invocation one.
    pub fn workgroup_per_item(self) -> bool {
        self.def().workgroup != Workgroup::PerElement
    }

    /// Values of the pipeline-overridable constants this kernel declares: the tile of the
    /// implicit-GEMM kernels, `WG` of the one-invocation-per-element kernels, none for the
    /// others.
    pub fn constants(self) -> Vec<(&'static str, f64)> {
        match (self.def().workgroup, self.tile()) {
            (Workgroup::Tiled, Some((t, pointwise))) => {
                let mut c = t.constants();
                c.push(("POINTWISE", f64::from(u8::from(pointwise))));
                c
            }
            (Workgroup::PerElement, _) => {
                let mut c = vec![("WG", WORKGROUP.into())];
                if let Kernel::Cast(from, to) = self {
                    c.push(("SRC", from.code().into()));
                    c.push(("DST", to.code().into()));
                }
                c
            }
            _ => vec![],
        }
    }

    /// `(field name, byte offset)` of the params block this kernel's `Params` struct mirrors,
    /// and its size in bytes.
    pub fn params_layout(self) -> (&'static [(&'static str, usize)], usize) {
        self.def().params
    }
}
