//! Pooling: [`Pool2dSpec`], its validation and PyTorch's output-size rule, and
//! [`Pool2dGeometry`], the window bounds and divisors of one max- or average-pool.

use super::{AXIS, effective_kernel, numel};
use crate::error::{Error, Result, invalid, mismatch};

/// Options of a 2-D max- or average-pool (PyTorch's `MaxPool2d` / `AvgPool2d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool2dSpec {
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// `[ph, pw]`, symmetric; at most `kernel / 2` per axis.
    pub padding: [usize; 2],
    /// `[dh, dw]`; must be `[1, 1]` for average pooling.
    pub dilation: [usize; 2],
    /// Round the output size up instead of down.
    pub ceil_mode: bool,
}

impl Pool2dSpec {
    /// A pool of this kernel with stride = kernel, no padding, dilation 1, floor mode.
    pub fn new(kernel: [usize; 2]) -> Self {
        Pool2dSpec {
            kernel,
            stride: kernel,
            padding: [0, 0],
            dilation: [1, 1],
            ceil_mode: false,
        }
    }
    /// Returns the spec with this stride.
    pub fn with_stride(mut self, stride: [usize; 2]) -> Self {
        self.stride = stride;
        self
    }
    /// Returns the spec with this padding.
    pub fn with_padding(mut self, padding: [usize; 2]) -> Self {
        self.padding = padding;
        self
    }
    /// Returns the spec with this dilation.
    pub fn with_dilation(mut self, dilation: [usize; 2]) -> Self {
        self.dilation = dilation;
        self
    }
    /// Returns the spec with `ceil_mode` set.
    pub fn with_ceil_mode(mut self, ceil_mode: bool) -> Self {
        self.ceil_mode = ceil_mode;
        self
    }

    /// Checks the fields that do not depend on the input shape.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("kernel", self.kernel),
            ("stride", self.stride),
            ("dilation", self.dilation),
        ] {
            if v.contains(&0) {
                return Err(invalid(format!(
                    "pool {name} must be at least 1, got {v:?}"
                )));
            }
        }
        for (a, axis) in AXIS.iter().enumerate() {
            if self.padding[a] > self.kernel[a] / 2 {
                return Err(invalid(format!(
                    "pool padding {:?} must be at most half the kernel {:?} ({} > {} / 2 in {axis})",
                    self.padding, self.kernel, self.padding[a], self.kernel[a]
                )));
            }
        }
        Ok(())
    }

    /// Output `[OH, OW]` for an input of `input_hw`, with PyTorch's `ceil_mode` rule.
    pub fn output_hw(&self, input_hw: [usize; 2]) -> Result<[usize; 2]> {
        self.validate()?;
        let mut out = [0; 2];
        for a in 0..2 {
            out[a] = pool_out_len(
                AXIS[a],
                input_hw[a],
                self.kernel[a],
                self.stride[a],
                self.padding[a],
                self.dilation[a],
                self.ceil_mode,
            )?;
        }
        Ok(out)
    }

    /// Geometry of a pool over `x` `[N, C, H, W]`. Every window must contain at least one input
    /// element (only a dilation larger than the input can break this).
    pub fn geometry(&self, x: [usize; 4]) -> Result<Pool2dGeometry> {
        let [n, c, h, w] = x;
        numel(&x, "input")?;
        let [oh, ow] = self.output_hw([h, w])?;
        let g = Pool2dGeometry {
            n,
            c,
            h,
            w,
            oh,
            ow,
            spec: *self,
        };
        numel(&g.y_shape(), "output")?;
        for a in 0..2 {
            g.check_windows_nonempty(a)?;
        }
        Ok(g)
    }

    /// Geometry of an average pool: as [`Pool2dSpec::geometry`], and dilation must be 1.
    pub fn avg_geometry(&self, x: [usize; 4]) -> Result<Pool2dGeometry> {
        self.validate()?;
        if self.dilation != [1, 1] {
            return Err(invalid(format!(
                "avg-pool dilation must be [1, 1], got {:?}",
                self.dilation
            )));
        }
        // The divisor is at most kh * kw; it must not wrap.
        if self.kernel[0].checked_mul(self.kernel[1]).is_none() {
            return Err(Error::Overflow(format!(
                "avg-pool kernel {:?}: its area, the largest divisor, overflows",
                self.kernel
            )));
        }
        self.geometry(x)
    }

    /// Geometry of a pool backward from dy `[N, C, OH, OW]` and the forward's input size.
    pub fn backward_geometry(
        &self,
        dy: [usize; 4],
        input_hw: [usize; 2],
        avg: bool,
    ) -> Result<Pool2dGeometry> {
        let x = [dy[0], dy[1], input_hw[0], input_hw[1]];
        let g = if avg {
            self.avg_geometry(x)?
        } else {
            self.geometry(x)?
        };
        if [dy[2], dy[3]] != [g.oh, g.ow] {
            return Err(mismatch(format!(
                "dy shape {dy:?} has spatial size [{}, {}], but input_hw {input_hw:?} with {self:?} \
                 gives [{}, {}]",
                dy[2], dy[3], g.oh, g.ow
            )));
        }
        Ok(g)
    }

    /// Geometry of a max-pool forward, whose flat `h * W + w` indices must fit `u32`.
    pub fn max_geometry(&self, x: [usize; 4]) -> Result<Pool2dGeometry> {
        let g = self.geometry(x)?;
        check_plane_indexable(g.h, g.w)?;
        Ok(g)
    }

    /// Geometry of a max-pool backward from dy `[N, C, OH, OW]`, its indices' shape (dy's) and
    /// the forward's input size.
    pub fn max_backward_geometry(
        &self,
        dy: [usize; 4],
        indices: &[usize],
        input_hw: [usize; 2],
    ) -> Result<Pool2dGeometry> {
        let g = self.backward_geometry(dy, input_hw, false)?;
        check_plane_indexable(g.h, g.w)?;
        if indices != dy {
            return Err(mismatch(format!(
                "indices shape {indices:?} differs from dy shape {dy:?}"
            )));
        }
        Ok(g)
    }
}

/// PyTorch's `pooling_output_shape`: floor or ceil, and in ceil mode a last window that would
/// start in the right/bottom padding is dropped.
fn pool_out_len(
    axis: &str,
    input: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
    ceil_mode: bool,
) -> Result<usize> {
    if input == 0 {
        return Err(invalid(format!(
            "pool input {axis} must be at least 1, got 0"
        )));
    }
    let overflow = || Error::Overflow(format!("pool {axis}: input {input} + 2 * padding {pad}"));
    let padded = pad
        .checked_mul(2)
        .and_then(|p| p.checked_add(input))
        .ok_or_else(overflow)?;
    let span = effective_kernel(axis, kernel, dilation)?;
    // PyTorch: out = div_rtn(padded - span + (ceil ? stride - 1 : 0), stride) + 1, which must be
    // at least 1. In ceil mode a window may thus overhang the padded input (it is clipped).
    // In 128 bits: with a huge stride, `padded + stride - 1` passes `usize::MAX`.
    let slack = if ceil_mode { stride as u128 - 1 } else { 0 };
    let reach = padded as u128 + slack;
    if span as u128 > reach {
        return Err(invalid(format!(
            "pool kernel {axis} {kernel} with dilation {dilation} spans {span}, larger than the \
             padded input {axis} {padded} ({input} + 2 * padding {pad}{})",
            if ceil_mode {
                format!(" + stride {stride} - 1 in ceil mode")
            } else {
                String::new()
            }
        )));
    }
    let mut out = (reach - span as u128) / stride as u128 + 1;
    // PyTorch: `if ((out - 1) * stride >= input + pad_l) --out;` (only reachable in ceil mode).
    if ceil_mode && (out - 1) * stride as u128 >= (input + pad) as u128 {
        out -= 1;
    }
    // At most `padded` (stride 1) or `padded / stride + 2`.
    Ok(out as usize)
}

/// `o * stride - padding`, the padded-input position where window `o` starts, in 128 bits.
fn window_start(o: usize, stride: usize, pad: usize) -> i128 {
    (o as i128).saturating_mul(stride as i128) - pad as i128
}

/// Every size of one pool: input `[n, c, h, w]`, output `[n, c, oh, ow]`, and the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool2dGeometry {
    /// Batch.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// The spec.
    pub spec: Pool2dSpec,
}

impl Pool2dGeometry {
    /// `[n, c, h, w]`.
    pub fn x_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    /// `[n, c, oh, ow]`.
    pub fn y_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.oh, self.ow]
    }

    /// First in-bounds tap of window `o` along `axis`: the input position where PyTorch's scan
    /// starts, and one past the window's last position clipped to the input (step = dilation).
    pub fn max_window(&self, axis: usize, o: usize) -> (usize, usize) {
        let (input, k, s, p, d) = self.axis_params(axis);
        // In 128 bits: a hostile spec's window can be longer than `isize::MAX`.
        let (start, d) = (window_start(o, s, p), d.max(1) as i128);
        let span = (k as i128 - 1).saturating_mul(d).saturating_add(1);
        let end = start.saturating_add(span).clamp(0, input as i128) as usize;
        let first = if start >= 0 {
            start
        } else {
            // Smallest start + j*d that is >= 0.
            start + (-start + d - 1) / d * d
        };
        (first.min(usize::MAX as i128) as usize, end)
    }

    /// The span of max-pool window `o` along `axis`, from its first to its last tap (the
    /// positions between dilated taps included), clipped to the input: `[start, end)`. An index
    /// of max-pool backward counts only inside its window's span (see
    /// [`reference::max_pool2d_backward`](crate::reference::max_pool2d_backward)).
    pub fn max_span(&self, axis: usize, o: usize) -> (usize, usize) {
        let (input, k, s, p, d) = self.axis_params(axis);
        let start = window_start(o, s, p);
        let last = start.saturating_add((k as i128 - 1).saturating_mul(d as i128));
        let clip = |v: i128| v.clamp(0, input as i128) as usize;
        (clip(start), clip(last.saturating_add(1)))
    }

    /// Window `o` of an average pool along `axis`: `(start, end, span)`, where `[start, end)` is
    /// the window clipped to the input and `span` the window's length clipped to the padded input
    /// (PyTorch's divisor when `count_include_pad`).
    pub fn avg_window(&self, axis: usize, o: usize) -> (usize, usize, usize) {
        let (input, k, s, p, _) = self.axis_params(axis);
        let start = window_start(o, s, p);
        let end = start
            .saturating_add(k as i128)
            .min(input as i128 + p as i128);
        let span = (end - start).clamp(0, usize::MAX as i128) as usize;
        let clip = |v: i128| v.clamp(0, input as i128) as usize;
        let (start, end) = (clip(start), clip(end));
        (start, end.max(start), span)
    }

    /// Divisor of output position `(oh, ow)` of an average pool.
    pub fn avg_divisor(&self, oh: usize, ow: usize, count_include_pad: bool) -> usize {
        let (h0, h1, hs) = self.avg_window(0, oh);
        let (w0, w1, ws) = self.avg_window(1, ow);
        if count_include_pad {
            // Cannot saturate in a geometry from `avg_geometry`, which bounds kh * kw.
            hs.saturating_mul(ws)
        } else {
            (h1 - h0) * (w1 - w0)
        }
    }

    fn axis_params(&self, axis: usize) -> (usize, usize, usize, usize, usize) {
        let s = &self.spec;
        let input = if axis == 0 { self.h } else { self.w };
        (
            input,
            s.kernel[axis],
            s.stride[axis],
            s.padding[axis],
            s.dilation[axis],
        )
    }

    /// A window that starts in the padding skips forward by whole dilation steps; with a dilation
    /// larger than the input it can skip past the input and hold nothing, which PyTorch answers
    /// with `-inf` and an index outside the plane. Such specs are refused.
    fn check_windows_nonempty(&self, axis: usize) -> Result<()> {
        let (input, _, s, p, d) = self.axis_params(axis);
        if self.n == 0 || self.c == 0 || d <= input {
            return Ok(());
        }
        // Only windows that start in the padding (o * s < p) can be empty; p <= kernel / 2 keeps
        // this loop short because an accepted dilated kernel fits in input + 2p.
        let out = if axis == 0 { self.oh } else { self.ow };
        for o in 0..out.min(p / s + 1) {
            let (first, end) = self.max_window(axis, o);
            if first >= end {
                return Err(invalid(format!(
                    "pool window {o} along {} holds no input element: dilation {d} exceeds the \
                     input {} {input} (kernel {:?}, padding {:?})",
                    AXIS[axis], AXIS[axis], self.spec.kernel, self.spec.padding
                )));
            }
        }
        Ok(())
    }
}

/// Indices are `u32` flat positions in an `H × W` plane.
pub(crate) fn check_plane_indexable(h: usize, w: usize) -> Result<()> {
    match h.checked_mul(w) {
        Some(p) if p as u64 <= 1 << 32 => Ok(()),
        _ => Err(Error::Overflow(format!(
            "max-pool input plane {h} x {w} has more elements than u32 indices can address"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_ceil_mode_drops_window_starting_in_padding() {
        // input 5, kernel 2, stride 2, pad 1: floor -> 3; ceil -> 4, but the 4th window starts at
        // padded position 6 >= 5 + 1 and is dropped -> 3.
        let s = Pool2dSpec::new([2, 2])
            .with_padding([1, 1])
            .with_ceil_mode(true);
        assert_eq!(s.output_hw([5, 5]).unwrap(), [3, 3]);
        let s = Pool2dSpec::new([3, 3])
            .with_stride([2, 2])
            .with_ceil_mode(true);
        // (6 - 3) / 2 ceil = 2, + 1 = 3; last start 4 < 6: kept.
        assert_eq!(s.output_hw([6, 6]).unwrap(), [3, 3]);
    }

    #[test]
    fn errors_name_values() {
        let e = Pool2dSpec::new([3, 3])
            .with_padding([2, 0])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("[2, 0]"), "{e}");
    }
}
