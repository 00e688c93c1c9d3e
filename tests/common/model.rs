//! The model of the shape math: the documented formulas in 128-bit arithmetic, `None` where the
//! library must err.

use wgconv::{Conv2dSpec, Pool2dSpec};

pub const MAX: u128 = usize::MAX as u128;

pub fn product(dims: &[usize]) -> Option<usize> {
    let p = dims.iter().try_fold(1u128, |acc, &d| {
        let v = acc * d as u128;
        (v <= MAX).then_some(v)
    })?;
    Some(p as usize)
}

pub fn span(kernel: usize, dilation: usize) -> Option<u128> {
    let s = dilation as u128 * (kernel as u128 - 1) + 1;
    (s <= MAX).then_some(s)
}

/// `(H + before + after - dil*(k-1) - 1) / stride + 1`.
pub fn model_conv_len(
    input: usize,
    kernel: usize,
    stride: usize,
    before: usize,
    after: usize,
    dilation: usize,
) -> Option<usize> {
    if input == 0 || kernel == 0 {
        return None;
    }
    let padded = input as u128 + before as u128 + after as u128;
    let span = span(kernel, dilation)?;
    if padded > MAX || span > padded {
        return None;
    }
    Some(((padded - span) / stride as u128 + 1) as usize)
}

pub fn model_conv_out(
    spec: &Conv2dSpec,
    input: [usize; 2],
    kernel: [usize; 2],
) -> Option<[usize; 2]> {
    if spec.stride.contains(&0) || spec.dilation.contains(&0) || spec.groups == 0 {
        return None;
    }
    let p = spec.padding;
    Some([
        model_conv_len(
            input[0],
            kernel[0],
            spec.stride[0],
            p.top,
            p.bottom,
            spec.dilation[0],
        )?,
        model_conv_len(
            input[1],
            kernel[1],
            spec.stride[1],
            p.left,
            p.right,
            spec.dilation[1],
        )?,
    ])
}

/// The output shape `[n, k, oh, ow]` of a conv geometry the model accepts.
pub fn model_conv_geometry(
    spec: &Conv2dSpec,
    n: usize,
    c: usize,
    hw: [usize; 2],
    k: usize,
    khw: [usize; 2],
) -> Option<[usize; 4]> {
    let [oh, ow] = model_conv_out(spec, hw, khw)?;
    let g = spec.groups;
    if c == 0 || k == 0 || !c.is_multiple_of(g) || !k.is_multiple_of(g) {
        return None;
    }
    product(&[n, c, hw[0], hw[1]])?;
    product(&[k, c / g, khw[0], khw[1]])?;
    product(&[n, k, oh, ow])?;
    product(&[c / g, khw[0], khw[1], oh, ow])?;
    Some([n, k, oh, ow])
}

/// PyTorch's `pooling_output_shape` in 128-bit arithmetic.
pub fn model_pool_len(
    input: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
    ceil: bool,
) -> Option<usize> {
    if input == 0 {
        return None;
    }
    let padded = input as u128 + 2 * pad as u128;
    let span = span(kernel, dilation)?;
    let reach = padded + if ceil { stride as u128 - 1 } else { 0 };
    if padded > MAX || span > reach {
        return None;
    }
    let mut out = (reach - span) / stride as u128 + 1;
    if ceil && (out - 1) * stride as u128 >= input as u128 + pad as u128 {
        out -= 1;
    }
    Some(out as usize)
}

pub fn model_pool_valid(s: &Pool2dSpec) -> bool {
    !(s.kernel.contains(&0) || s.stride.contains(&0) || s.dilation.contains(&0))
        && (0..2).all(|a| s.padding[a] <= s.kernel[a] / 2)
}

pub fn model_pool_out(s: &Pool2dSpec, input: [usize; 2]) -> Option<[usize; 2]> {
    if !model_pool_valid(s) {
        return None;
    }
    let len = |a: usize| {
        model_pool_len(
            input[a],
            s.kernel[a],
            s.stride[a],
            s.padding[a],
            s.dilation[a],
            s.ceil_mode,
        )
    };
    Some([len(0)?, len(1)?])
}

/// Window `o` along one axis in 128-bit arithmetic: the max-pool scan's first in-bounds tap and
/// its clipped end, and the avg-pool `(start, end, span)`.
pub struct ModelWindow {
    pub max_first: i128,
    pub max_end: i128,
    pub avg: (i128, i128, i128),
}

pub fn model_window(input: usize, k: usize, s: usize, p: usize, d: usize, o: usize) -> ModelWindow {
    let (input, k, s, p, d, o) = (
        input as i128,
        k as i128,
        s as i128,
        p as i128,
        d as i128,
        o as i128,
    );
    let start = o * s - p;
    let span = d * (k - 1) + 1;
    let max_end = (start + span).min(input);
    let max_first = if start >= 0 {
        start
    } else {
        start + (-start + d - 1) / d * d
    };
    let avg_end = (start + k).min(input + p);
    let avg_span = avg_end - start;
    let (a0, a1) = (start.max(0), avg_end.min(input));
    ModelWindow {
        max_first,
        max_end,
        avg: (a0, a1.max(a0), avg_span),
    }
}

pub fn model_pool_geometry(s: &Pool2dSpec, x: [usize; 4], avg: bool) -> Option<[usize; 4]> {
    if avg && (s.dilation != [1, 1] || product(&s.kernel).is_none()) {
        return None;
    }
    product(&x)?;
    let [oh, ow] = model_pool_out(s, [x[2], x[3]])?;
    product(&[x[0], x[1], oh, ow])?;
    if x[0] > 0 && x[1] > 0 {
        for (a, out) in [(0, oh), (1, ow)] {
            let (input, k, st, p, d) = (
                x[2 + a],
                s.kernel[a],
                s.stride[a],
                s.padding[a],
                s.dilation[a],
            );
            // A window starting at -j (j <= p <= k/2 <= k-1 <= d(k-1)) reaches its first tap,
            // ceil(j/d)*d - j < d steps in, inside the input unless d > input. Only windows
            // starting in the padding can miss the input, and the accepted sizes bound their
            // number by the input size.
            if d <= input {
                continue;
            }
            for o in 0..out.min(p / st + 2) {
                let w = model_window(input, k, st, p, d, o);
                if w.max_first >= w.max_end {
                    return None;
                }
            }
        }
    }
    Some([x[0], x[1], oh, ow])
}
