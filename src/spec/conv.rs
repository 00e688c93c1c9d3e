//! Convolutions: [`Conv2dSpec`], its validation, and [`Conv2dGeometry`], every size of one
//! convolution and of its transposed form (dx).

use super::{AXIS, Padding2d, effective_kernel, numel};
use crate::error::{Error, Result, invalid, mismatch};

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
    fn errors_name_values() {
        let e = Conv2dSpec::new()
            .with_stride([0, 1])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("[0, 1]"), "{e}");
        let e = Conv2dSpec::new()
            .forward_geometry([1, 3, 2, 2], [1, 3, 3, 3])
            .unwrap_err();
        assert!(e.to_string().contains("spans 3"), "{e}");
    }
}
