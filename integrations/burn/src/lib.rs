//! burn's conv2d, max-pool and avg-pool running on [wgconv], inside burn's own wgpu device,
//! buffers and command stream, with their gradients through burn's autodiff.
//!
//! The functions here take and return burn tensors, with the options of
//! `burn::tensor::module`; they are drop-in replacements for `module::conv2d`,
//! `module::max_pool2d`, `module::max_pool2d_with_indices` and `module::avg_pool2d`. Each
//! reads burn's buffers in place and writes outputs that burn's memory manager allocated: no
//! copy through the host, no second device, and every wgconv submission ordered after burn's
//! pending work and before its next on the one queue.
//!
//! ```no_run
//! use burn::tensor::{Distribution, Tensor, ops::ConvOptions};
//!
//! # fn main() -> Result<(), wgconv_burn::Error> {
//! let device = wgconv_burn::init()?.autodiff();
//! let x = Tensor::<4>::random([8, 3, 32, 32], Distribution::Default, &device).require_grad();
//! let w = Tensor::<4>::random([16, 3, 3, 3], Distribution::Default, &device).require_grad();
//! let y = wgconv_burn::conv2d(x.clone(), w.clone(), None, ConvOptions::new([1, 1], [1, 1], [1, 1], 1));
//! let grads = y.sum().backward();
//! let dw = w.grad(&grads).expect("the weight's gradient");
//! # let _ = dw;
//! # Ok(()) }
//! ```
//!
//! What is covered: burn 0.22 on its wgpu backend, fusion off (burn's `fusion` feature makes
//! tensors lazy, without a buffer to read), one thread driving burn, first-order gradients. See
//! the README section "Inside burn".

mod bridge;
mod cube;
mod device;
mod ops;

use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn::tensor::{Int, Tensor};

pub use device::{gpu, init, register};
pub use ops::WgconvBackend;

use burn::backend::Dispatch;

/// What can go wrong before an op runs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// burn's wgpu runtime did not start.
    #[error("{0}")]
    Init(String),
    /// The tensor's device was not registered with [`init`] or [`register`].
    #[error(
        "burn device {0} has no wgconv Gpu: start it with wgconv_burn::init() or register it \
         with wgconv_burn::register()"
    )]
    NotRegistered(String),
    /// The device is not one of burn's wgpu devices.
    #[error("burn device {0} is not a wgpu device; wgconv runs on burn's wgpu backend")]
    NotWgpu(String),
    /// Shapes that do not fit together.
    #[error("{0}")]
    Shape(String),
    /// An option wgconv does not take.
    #[error("{0}")]
    Unsupported(String),
    /// wgconv's own error (its messages name the offending value).
    #[error(transparent)]
    Wgconv(#[from] wgconv::Error),
}

/// [`conv2d`] with the arguments checked first: an `Err` names a bad shape or option.
pub fn try_conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: impl Into<ConvOptions<2>>,
) -> Result<Tensor<4>, Error> {
    let options = options.into();
    let bias_len = bias.as_ref().map(|b| b.dims()[0]);
    cube::conv_output(x.dims(), weight.dims(), bias_len, &options)?;
    device::gpu(&x.device())?;
    let (x, w) = (x.into_dispatch(), weight.into_dispatch());
    Ok(Tensor::from_dispatch(match bias {
        Some(b) => Dispatch::wgconv_conv2d_bias(x, w, b.into_dispatch(), options),
        None => Dispatch::wgconv_conv2d(x, w, options),
    }))
}

/// A 2-D convolution on wgconv, as `burn::tensor::module::conv2d` (PyTorch's `conv2d`): `x`
/// is `[N, C, H, W]`, `weight` `[K, C / groups, KH, KW]`, `bias` `[K]`.
///
/// # Panics
///
/// On a bad shape or option, as burn's own ops do; [`try_conv2d`] returns the error instead.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: impl Into<ConvOptions<2>>,
) -> Tensor<4> {
    try_conv2d(x, weight, bias, options).unwrap_or_else(|e| panic!("wgconv-burn conv2d: {e}"))
}

/// [`max_pool2d_with_indices`] with the arguments checked first.
pub fn try_max_pool2d_with_indices(
    x: Tensor<4>,
    options: MaxPoolOptions<2>,
) -> Result<(Tensor<4>, Tensor<4, Int>), Error> {
    cube::pool_output(x.dims(), &cube::max_pool_spec(&options)?)?;
    device::gpu(&x.device())?;
    let int_dtype = x.device().settings().int_dtype;
    let (y, indices) = Dispatch::wgconv_max_pool2d(x.into_dispatch(), options);
    let indices = Tensor::<4, Int>::from_dispatch(indices);
    // wgconv writes 32-bit indices; a device whose integers are wider gets them cast.
    let indices = if indices.dtype() == int_dtype.into() {
        indices
    } else {
        indices.cast(int_dtype)
    };
    Ok((Tensor::from_dispatch(y), indices))
}

/// Max-pool on wgconv with the flat index (`h * W + w`) of each maximum in its input plane,
/// as `burn::tensor::module::max_pool2d_with_indices` (PyTorch's `return_indices=True`).
/// Symmetric padding only, as in PyTorch.
///
/// # Panics
///
/// On a bad shape or option; [`try_max_pool2d_with_indices`] returns the error instead.
pub fn max_pool2d_with_indices(
    x: Tensor<4>,
    options: MaxPoolOptions<2>,
) -> (Tensor<4>, Tensor<4, Int>) {
    try_max_pool2d_with_indices(x, options)
        .unwrap_or_else(|e| panic!("wgconv-burn max_pool2d: {e}"))
}

/// Max-pool on wgconv, as `burn::tensor::module::max_pool2d`.
///
/// # Panics
///
/// On a bad shape or option.
pub fn max_pool2d(x: Tensor<4>, options: MaxPoolOptions<2>) -> Tensor<4> {
    max_pool2d_with_indices(x, options).0
}

/// [`avg_pool2d`] with the arguments checked first.
pub fn try_avg_pool2d(x: Tensor<4>, options: AvgPoolOptions<2>) -> Result<Tensor<4>, Error> {
    cube::pool_output(x.dims(), &cube::avg_pool_spec(&options)?.0)?;
    device::gpu(&x.device())?;
    Ok(Tensor::from_dispatch(Dispatch::wgconv_avg_pool2d(
        x.into_dispatch(),
        options,
    )))
}

/// Avg-pool on wgconv, as `burn::tensor::module::avg_pool2d` (PyTorch's `avg_pool2d` with its
/// `count_include_pad` and `ceil_mode`). Symmetric padding only.
///
/// # Panics
///
/// On a bad shape or option; [`try_avg_pool2d`] returns the error instead.
pub fn avg_pool2d(x: Tensor<4>, options: AvgPoolOptions<2>) -> Tensor<4> {
    try_avg_pool2d(x, options).unwrap_or_else(|e| panic!("wgconv-burn avg_pool2d: {e}"))
}
