//! Layer specifications, their validation, and all shape arithmetic.
//!
//! Every size the reference, the GPU driver and the benchmark use is computed here, in checked
//! integer arithmetic, so that a hostile spec or shape becomes an [`Error`] naming the offending
//! value instead of a panic or a wrapped-around size.
//!
//! [`Padding2d`] and the helpers both layer kinds share live here; convolutions in `conv.rs`
//! ([`Conv2dSpec`], [`Conv2dGeometry`]), pooling in `pool.rs` ([`Pool2dSpec`],
//! [`Pool2dGeometry`]), and the options of the training ops in `nn.rs` ([`SgdOptions`]).

mod conv;
mod nn;
mod pool;

pub use conv::{Conv2dGeometry, Conv2dSpec};
pub use nn::SgdOptions;
pub(crate) use nn::check_sgd_shapes;
pub use pool::{Pool2dGeometry, Pool2dSpec};

use crate::error::{Error, Result};

/// Padding of a 2-D convolution, possibly asymmetric (`top`/`bottom` rows, `left`/`right` columns).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Padding2d {
    /// Rows of zeros above the input.
    pub top: usize,
    /// Rows of zeros below the input.
    pub bottom: usize,
    /// Columns of zeros left of the input.
    pub left: usize,
    /// Columns of zeros right of the input.
    pub right: usize,
}

impl Padding2d {
    /// `h` rows above and below, `w` columns left and right (PyTorch's `padding=(h, w)`).
    pub fn symmetric(h: usize, w: usize) -> Self {
        Padding2d {
            top: h,
            bottom: h,
            left: w,
            right: w,
        }
    }

    /// Stride-1 "same" padding for a kernel and dilation: the output has the input's size.
    /// The total `dilation * (kernel - 1)` is split with the extra row/column at the bottom/right,
    /// as PyTorch's `padding="same"` does.
    ///
    /// ```
    /// use wgconv::Padding2d;
    /// assert_eq!(Padding2d::same([3, 4], [1, 1]), Padding2d { top: 1, bottom: 1, left: 1, right: 2 });
    /// ```
    pub fn same(kernel: [usize; 2], dilation: [usize; 2]) -> Self {
        let total = |a: usize| dilation[a].saturating_mul(kernel[a].saturating_sub(1));
        let (th, tw) = (total(0), total(1));
        Padding2d {
            top: th / 2,
            bottom: th - th / 2,
            left: tw / 2,
            right: tw - tw / 2,
        }
    }

    /// `[top, bottom, left, right]`.
    pub fn to_array(self) -> [usize; 4] {
        [self.top, self.bottom, self.left, self.right]
    }

    /// Padding before and after along axis 0 (height) or 1 (width).
    pub fn axis(self, axis: usize) -> (usize, usize) {
        if axis == 0 {
            (self.top, self.bottom)
        } else {
            (self.left, self.right)
        }
    }
}

/// Names of axis 0 and 1, for messages.
const AXIS: [&str; 2] = ["height", "width"];

/// `dilation * (kernel - 1) + 1`, checked.
fn effective_kernel(axis: &str, kernel: usize, dilation: usize) -> Result<usize> {
    dilation
        .checked_mul(kernel - 1)
        .and_then(|v| v.checked_add(1))
        .ok_or_else(|| {
            Error::Overflow(format!(
                "dilated kernel {axis}: dilation {dilation} * (kernel {kernel} - 1) + 1 overflows"
            ))
        })
}

/// Product of dims, or an [`Error::Overflow`] naming the tensor and its shape.
pub fn numel(shape: &[usize], what: &str) -> Result<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        acc.checked_mul(d)
            .ok_or_else(|| Error::Overflow(format!("{what} shape {shape:?} has too many elements")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_keeps_size() {
        for k in 1..6 {
            for d in 1..4 {
                let s = Conv2dSpec::new()
                    .with_padding(Padding2d::same([k, k], [d, d]))
                    .with_dilation([d, d]);
                assert_eq!(
                    s.output_hw([11, 11], [k, k]).unwrap(),
                    [11, 11],
                    "k {k} d {d}"
                );
            }
        }
    }
}
