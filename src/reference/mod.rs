//! CPU reference for every op, generic over `f32` and `f64`: the definition of the right answer.
//!
//! The top-level functions are the contract API. Convolutions run on the fast path
//! ([`gemm`]: im2col + GEMM for forward and dW, GEMM + col2im for dx, parallel over the batch);
//! the two other methods stay available and are cross-checked against it in the tests:
//! [`direct`], the obvious loops (the oracle), and [`transposed`], dx as the explicit
//! dilate-pad-rotate transposed convolution. Pooling has one method, direct loops following
//! PyTorch's scan order exactly ([`pool`]).
//!
//! ```
//! use ndarray::Array4;
//! use wgconv::{Conv2dSpec, Padding2d, reference};
//! let x = Array4::<f64>::ones((1, 1, 4, 4));
//! let w = Array4::<f64>::ones((1, 1, 3, 3));
//! let spec = Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1));
//! let y = reference::conv2d_forward(x.view(), w.view(), None, &spec).unwrap();
//! assert_eq!(y[[0, 0, 0, 0]], 4.0); // corner: 2x2 of the window inside the input
//! assert_eq!(y[[0, 0, 1, 1]], 9.0);
//! ```

mod depthwise;
pub mod direct;
pub mod gemm;
pub mod nn;
mod par;
pub mod pool;
pub mod transposed;

use ndarray::{Array1, Array4, ArrayView1, ArrayView4, Axis};

use crate::error::{Result, mismatch};

/// Scalar types the reference runs in: `f32` and `f64`.
pub trait Element:
    num_traits::Float
    + ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + std::iter::Sum
    + std::ops::AddAssign
    + std::fmt::Debug
    + std::fmt::Display
    + Default
    + Send
    + Sync
    + 'static
{
}
impl Element for f32 {}
impl Element for f64 {}

pub(crate) fn dims4<A>(a: &ArrayView4<A>) -> [usize; 4] {
    let s = a.shape();
    [s[0], s[1], s[2], s[3]]
}

/// Bytes of an array of `shape` with elements of `A`, or `Err` when they exceed what the host
/// can address (`isize::MAX`; ndarray and `Vec` would panic).
pub(crate) fn host_bytes<A>(shape: &[usize], what: &str) -> Result<usize> {
    crate::spec::numel(shape, what)?
        .checked_mul(std::mem::size_of::<A>())
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| {
            crate::error::Error::Overflow(format!(
                "{what} shape {shape:?} needs more bytes than the host can address"
            ))
        })
}

/// A zero-filled array for a result; `Err` instead of a panic or an abort when it cannot be
/// allocated (a hostile padding can ask for terabytes).
pub(crate) fn zeros4<A: Clone + num_traits::Zero>(
    shape: [usize; 4],
    what: &str,
) -> Result<Array4<A>> {
    let bytes = host_bytes::<A>(&shape, what)?;
    let len = bytes / std::mem::size_of::<A>().max(1);
    let mut data = Vec::new();
    data.try_reserve_exact(len).map_err(|e| {
        crate::error::Error::Overflow(format!(
            "{what} shape {shape:?}: allocating {bytes} bytes failed: {e}"
        ))
    })?;
    data.resize(len, A::zero());
    Ok(Array4::from_shape_vec(shape, data).expect("length is the shape's product"))
}

pub(crate) fn check_bias<A>(bias: Option<&ArrayView1<A>>, k: usize) -> Result<()> {
    match bias {
        Some(b) if b.len() != k => Err(mismatch(format!(
            "bias has {} elements but the weight has K = {k} output channels",
            b.len()
        ))),
        _ => Ok(()),
    }
}

// The contract's functions: the GEMM methods for the convs (the direct loops and the explicit
// transposed convolution are the cross-checks, in their modules), the pool module's scans.
pub use gemm::{conv2d_backward_input, conv2d_backward_weight, conv2d_forward};
pub use pool::{avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward};

/// db `[K]`: dy summed over N, OH and OW per channel: each plane (OH·OW, row-major) into 8
/// running sums by position mod 8 (the vectorisable order), planes in order of N, then the 8
/// sums pairwise; channels in parallel. Deterministic, the same on every run and thread count.
pub fn conv2d_backward_bias<A: Element>(dy: ArrayView4<A>) -> Array1<A> {
    use par::*;
    const LANES: usize = 8;
    let k = dy.shape()[1];
    let sum_channel = |c: usize| -> A {
        let mut lanes = [A::zero(); LANES];
        for plane in dy.index_axis(Axis(1), c).outer_iter() {
            match plane.as_slice() {
                Some(s) => {
                    let mut chunks = s.chunks_exact(LANES);
                    for chunk in &mut chunks {
                        for (l, &v) in lanes.iter_mut().zip(chunk) {
                            *l += v;
                        }
                    }
                    for (l, &v) in lanes.iter_mut().zip(chunks.remainder()) {
                        *l += v;
                    }
                }
                None => {
                    for (i, &v) in plane.iter().enumerate() {
                        lanes[i % LANES] += v;
                    }
                }
            }
        }
        let [a, b, c, d, e, f, g, h] = lanes;
        ((a + b) + (c + d)) + ((e + f) + (g + h))
    };
    Array1::from_vec((0..k).into_par_iter().map(sum_channel).collect())
}
