//! # wgconv
//!
//! Convolution and pooling layers for CNN training as WGSL compute kernels on `wgpu`, with
//! PyTorch's semantics and a CPU reference that defines the right answer.
#![warn(missing_docs)]

pub mod compare;
pub mod dtype;
pub mod error;
pub mod gpu;
pub mod nn;
pub mod reference;
pub mod spec;

pub use dtype::DType;
pub use error::{Error, Result};
pub use gpu::{
    Algorithm, Gpu, GpuBuilder, GpuCounters, IndexTensor, PoolStats, Recorder, Tensor, TuneKey,
    TunedEntry, TunedOp,
};
pub use spec::{Conv2dGeometry, Conv2dSpec, Padding2d, Pool2dGeometry, Pool2dSpec};

/// The README's examples, compiled as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
