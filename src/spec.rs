//! Layer specifications, their validation, and all shape arithmetic.
//!
//! Every size the reference, the GPU driver and the benchmark use is computed here, in checked
//! integer arithmetic, so that a hostile spec or shape becomes an [`Error`] naming the offending
//! value instead of a panic or a wrapped-around size.

use crate::error::{Error, Result, invalid, mismatch};

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

/// Options of a 2-D convolution (PyTorch's `Conv2d` minus the channel counts and kernel size,
/// which come from the tensors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dSpec {
    /// `[stride_h, stride_w]`, each at least 1.
    pub stride: [usize; 2],
    /// Zero padding, possibly asymmetric.
    pub padding: Padding2d,
    /// `[dilation_h, dilation_w]`, each at least 1.
    pub dilation: [usize; 2],
    /// Number of groups; input and output channels must both be divisible by it.
    pub groups: usize,
}

impl Default for Conv2dSpec {
    fn default() -> Self {
        Conv2dSpec {
            stride: [1, 1],
            padding: Padding2d::default(),
            dilation: [1, 1],
            groups: 1,
        }
    }
}

impl Conv2dSpec {
    /// The default spec: stride 1, no padding, dilation 1, one group.
    pub fn new() -> Self {
        Self::default()
    }
    /// Returns the spec with this stride.
    pub fn with_stride(mut self, stride: [usize; 2]) -> Self {
        self.stride = stride;
        self
    }
    /// Returns the spec with this padding.
    pub fn with_padding(mut self, padding: Padding2d) -> Self {
        self.padding = padding;
        self
    }
    /// Returns the spec with this dilation.
    pub fn with_dilation(mut self, dilation: [usize; 2]) -> Self {
        self.dilation = dilation;
        self
    }
    /// Returns the spec with this many groups.
    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// Checks the fields that do not depend on tensor shapes.
    pub fn validate(&self) -> Result<()> {
        if self.stride.contains(&0) {
            return Err(invalid(format!(
                "conv stride must be at least 1, got {:?}",
                self.stride
            )));
        }
        if self.dilation.contains(&0) {
            return Err(invalid(format!(
                "conv dilation must be at least 1, got {:?}",
                self.dilation
            )));
        }
        if self.groups == 0 {
            return Err(invalid("conv groups must be at least 1, got 0"));
        }
        Ok(())
    }

    /// Output `[OH, OW]` for an input of `input_hw` and a kernel of `kernel_hw`.
    pub fn output_hw(&self, input_hw: [usize; 2], kernel_hw: [usize; 2]) -> Result<[usize; 2]> {
        self.validate()?;
        let mut out = [0; 2];
        for a in 0..2 {
            let (before, after) = self.padding.axis(a);
            out[a] = conv_out_len(
                AXIS[a],
                input_hw[a],
                kernel_hw[a],
                self.stride[a],
                before,
                after,
                self.dilation[a],
            )?;
        }
        Ok(out)
    }

    /// Geometry of `conv2d_forward(x, w)` from the shapes of `x` `[N, C, H, W]` and `w`
    /// `[K, C/groups, kh, kw]`.
    pub fn forward_geometry(&self, x: [usize; 4], w: [usize; 4]) -> Result<Conv2dGeometry> {
        self.validate()?;
        let [n, c, h, wd] = x;
        let [k, cg, kh, kw] = w;
        self.check_channels(c, k)?;
        if cg != c / self.groups {
            return Err(mismatch(format!(
                "weight shape {w:?} has {cg} input channels per group, but input shape {x:?} with \
                 groups = {} needs C/groups = {}",
                self.groups,
                c / self.groups
            )));
        }
        self.geometry(n, c, [h, wd], k, [kh, kw])
    }

    /// Geometry of `conv2d_backward_input(dy, w, input_hw)`; checks that `input_hw` produces
    /// dy's output size.
    pub fn backward_input_geometry(
        &self,
        dy: [usize; 4],
        w: [usize; 4],
        input_hw: [usize; 2],
    ) -> Result<Conv2dGeometry> {
        self.validate()?;
        let [n, k, oh, ow] = dy;
        let [wk, cg, kh, kw] = w;
        if wk != k {
            return Err(mismatch(format!(
                "dy shape {dy:?} has {k} channels but weight shape {w:?} has {wk} output channels"
            )));
        }
        let c = cg.checked_mul(self.groups).ok_or_else(|| {
            Error::Overflow(format!("C/groups {cg} * groups {} overflows", self.groups))
        })?;
        self.check_channels(c, k)?;
        let g = self.geometry(n, c, input_hw, k, [kh, kw])?;
        g.check_output(oh, ow, "dy", dy)?;
        Ok(g)
    }

    /// Geometry of `conv2d_backward_weight(x, dy, kernel_hw)`; checks batch and output size.
    pub fn backward_weight_geometry(
        &self,
        x: [usize; 4],
        dy: [usize; 4],
        kernel_hw: [usize; 2],
    ) -> Result<Conv2dGeometry> {
        self.validate()?;
        let [n, c, h, w] = x;
        let [dn, k, oh, ow] = dy;
        if dn != n {
            return Err(mismatch(format!(
                "batch of x {x:?} is {n} but batch of dy {dy:?} is {dn}"
            )));
        }
        self.check_channels(c, k)?;
        let g = self.geometry(n, c, [h, w], k, kernel_hw)?;
        g.check_output(oh, ow, "dy", dy)?;
        Ok(g)
    }

    fn check_channels(&self, c: usize, k: usize) -> Result<()> {
        if c == 0 || k == 0 {
            return Err(invalid(format!(
                "conv needs at least one input and one output channel, got C = {c}, K = {k}"
            )));
        }
        if !c.is_multiple_of(self.groups) {
            return Err(invalid(format!(
                "input channels C = {c} are not divisible by groups = {}",
                self.groups
            )));
        }
        if !k.is_multiple_of(self.groups) {
            return Err(invalid(format!(
                "output channels K = {k} are not divisible by groups = {}",
                self.groups
            )));
        }
        Ok(())
    }

    fn geometry(
        &self,
        n: usize,
        c: usize,
        input_hw: [usize; 2],
        k: usize,
        kernel_hw: [usize; 2],
    ) -> Result<Conv2dGeometry> {
        let [oh, ow] = self.output_hw(input_hw, kernel_hw)?;
        let g = Conv2dGeometry {
            n,
            c,
            h: input_hw[0],
            w: input_hw[1],
            k,
            kh: kernel_hw[0],
            kw: kernel_hw[1],
            oh,
            ow,
            groups: self.groups,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
        };
        // Every tensor involved must be addressable on the host.
        numel(&g.x_shape(), "input")?;
        numel(&g.w_shape(), "weight")?;
        numel(&g.y_shape(), "output")?;
        numel(&[g.cg(), g.kh, g.kw, g.oh, g.ow], "im2col matrix")?;
        Ok(g)
    }
}

const AXIS: [&str; 2] = ["height", "width"];

/// Output length of a convolution along one axis (floor mode).
fn conv_out_len(
    axis: &str,
    input: usize,
    kernel: usize,
    stride: usize,
    before: usize,
    after: usize,
    dilation: usize,
) -> Result<usize> {
    if kernel == 0 {
        return Err(invalid(format!("kernel {axis} must be at least 1, got 0")));
    }
    if input == 0 {
        return Err(invalid(format!("input {axis} must be at least 1, got 0")));
    }
    let padded = input
        .checked_add(before)
        .and_then(|v| v.checked_add(after))
        .ok_or_else(|| {
            Error::Overflow(format!(
                "padded input {axis} {input} + {before} + {after} overflows"
            ))
        })?;
    let span = effective_kernel(axis, kernel, dilation)?;
    if span > padded {
        return Err(invalid(format!(
            "kernel {axis} {kernel} with dilation {dilation} spans {span}, larger than the padded \
             input {axis} {padded} ({input} + padding {before} + {after})"
        )));
    }
    Ok((padded - span) / stride + 1)
}

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

/// Every size of one convolution: the input `[n, c, h, w]`, the weight `[k, c/groups, kh, kw]`,
/// the output `[n, k, oh, ow]` and the spec's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dGeometry {
    /// Batch.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub k: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Groups.
    pub groups: usize,
    /// Stride.
    pub stride: [usize; 2],
    /// Padding.
    pub padding: Padding2d,
    /// Dilation.
    pub dilation: [usize; 2],
}

impl Conv2dGeometry {
    /// Input channels per group.
    pub fn cg(&self) -> usize {
        self.c / self.groups
    }
    /// Output channels per group.
    pub fn kg(&self) -> usize {
        self.k / self.groups
    }
    /// `[n, c, h, w]`.
    pub fn x_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    /// `[k, c/groups, kh, kw]`.
    pub fn w_shape(&self) -> [usize; 4] {
        [self.k, self.cg(), self.kh, self.kw]
    }
    /// `[n, k, oh, ow]`.
    pub fn y_shape(&self) -> [usize; 4] {
        [self.n, self.k, self.oh, self.ow]
    }
    /// The spec this geometry was built from.
    pub fn spec(&self) -> Conv2dSpec {
        Conv2dSpec {
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
        }
    }
    /// Input rows/columns past the last window: `(H + pads - dil*(k-1) - 1) % stride`.
    pub fn remainder(&self) -> [usize; 2] {
        let r = |input: usize, before: usize, after: usize, k: usize, d: usize, s: usize| {
            (input + before + after - (d * (k - 1) + 1)) % s
        };
        [
            r(
                self.h,
                self.padding.top,
                self.padding.bottom,
                self.kh,
                self.dilation[0],
                self.stride[0],
            ),
            r(
                self.w,
                self.padding.left,
                self.padding.right,
                self.kw,
                self.dilation[1],
                self.stride[1],
            ),
        ]
    }
    /// Padding `(before, after)` of the stride-dilated dy in the transposed convolution that
    /// computes dx, per axis. Negative values crop; values past `isize` (only from hostile
    /// paddings and dilations) saturate.
    pub fn transposed_padding(&self) -> [(isize, isize); 2] {
        let rem = self.remainder();
        let p = |k: usize, d: usize, before: usize, after: usize, rem: usize| {
            let full = (d as i128).saturating_mul(k as i128 - 1);
            let sat = |v: i128| v.clamp(isize::MIN as i128, isize::MAX as i128) as isize;
            (
                sat(full - before as i128),
                sat(full - after as i128 + rem as i128),
            )
        };
        [
            p(
                self.kh,
                self.dilation[0],
                self.padding.top,
                self.padding.bottom,
                rem[0],
            ),
            p(
                self.kw,
                self.dilation[1],
                self.padding.left,
                self.padding.right,
                rem[1],
            ),
        ]
    }
    /// A 1x1 kernel without padding: every tap reads inside the input, so the convolution is
    /// a plain matrix product per sample (strided when the stride is above 1).
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.padding == Padding2d::default()
    }
    /// Multiply-adds of the forward pass times two: `2·N·K·OH·OW·(C/g)·kh·kw` (the same for dx
    /// and dW).
    pub fn flops(&self) -> f64 {
        2.0 * [
            self.n,
            self.k,
            self.oh,
            self.ow,
            self.cg(),
            self.kh,
            self.kw,
        ]
        .iter()
        .map(|&v| v as f64)
        .product::<f64>()
    }

    fn check_output(&self, oh: usize, ow: usize, what: &str, shape: [usize; 4]) -> Result<()> {
        if (oh, ow) != (self.oh, self.ow) {
            return Err(mismatch(format!(
                "{what} shape {shape:?} has spatial size [{oh}, {ow}], but input [{}, {}] with \
                 kernel [{}, {}] and {:?} gives [{}, {}]",
                self.h,
                self.w,
                self.kh,
                self.kw,
                self.spec(),
                self.oh,
                self.ow
            )));
        }
        Ok(())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_output_sizes() {
        let s = Conv2dSpec::new()
            .with_stride([2, 3])
            .with_padding(Padding2d {
                top: 1,
                bottom: 0,
                left: 2,
                right: 1,
            })
            .with_dilation([2, 1]);
        // H: (7 + 1 - 2*2 - 1) / 2 + 1 = 2; W: (5 + 3 - 2 - 1) / 3 + 1 = 2.
        assert_eq!(s.output_hw([7, 5], [3, 3]).unwrap(), [2, 2]);
        let g = s.forward_geometry([1, 1, 7, 5], [1, 1, 3, 3]).unwrap();
        assert_eq!(g.remainder(), [1, 2]);
    }

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
        let e = Conv2dSpec::new()
            .with_stride([0, 1])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("[0, 1]"), "{e}");
        let e = Pool2dSpec::new([3, 3])
            .with_padding([2, 0])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("[2, 0]"), "{e}");
        let e = Conv2dSpec::new()
            .forward_geometry([1, 3, 2, 2], [1, 3, 3, 3])
            .unwrap_err();
        assert!(e.to_string().contains("spans 3"), "{e}");
    }
}
