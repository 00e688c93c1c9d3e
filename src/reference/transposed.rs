//! dx as the explicit transposed convolution, built step by step as the textbook states it:
//! dilate dy by the stride (zeros between rows and columns), pad it by `dil·(k-1) - pad_before`
//! before and `dil·(k-1) - pad_after + remainder` after (negative amounts crop), rotate the kernel
//! by 180° and swap its input and output channels within each group, and convolve at stride 1
//! with the forward's dilation. The `remainder` rows and columns are the input positions no
//! forward window reached; they come out as zeros.

use ndarray::{Array4, ArrayView4};

use super::{Element, dims4, gemm};
use crate::error::{Error, Result};
use crate::spec::Conv2dSpec;

/// dx by the dilate-pad-rotate construction (materialises the dilated dy; a cross-check, not a
/// fast path).
pub fn conv2d_backward_input<A: Element>(
    dy: ArrayView4<A>,
    w: ArrayView4<A>,
    input_hw: [usize; 2],
    spec: &Conv2dSpec,
) -> Result<Array4<A>> {
    let g = spec.backward_input_geometry(dims4(&dy), dims4(&w), input_hw)?;
    let (s, d) = (g.stride, g.dilation);
    // Size of the dilated, padded dy: pad + (O - 1)·s + 1 + pad (pads may be negative), which is
    // H + dil·(k-1). In 128 bits: hostile paddings and dilations pass `isize`.
    let full = |k: usize, d: usize| d as i128 * (k as i128 - 1);
    let (fh, fw) = (full(g.kh, d[0]), full(g.kw, d[1]));
    let (top, left) = (fh - g.padding.top as i128, fw - g.padding.left as i128);
    let len = |input: usize, f: i128| {
        usize::try_from(input as i128 + f).map_err(|_| {
            Error::Overflow(format!(
                "the dilated dy of dx by transposed convolution has {input} + {f} rows or columns"
            ))
        })
    };
    let (hd, wd) = (len(g.h, fh)?, len(g.w, fw)?);
    let mut dyd = super::zeros4([g.n, g.k, hd, wd], "dilated dy")?;
    for ((n, k, oh, ow), &v) in dy.indexed_iter() {
        let r = top + (oh * s[0]) as i128;
        let c = left + (ow * s[1]) as i128;
        if (0..hd as i128).contains(&r) && (0..wd as i128).contains(&c) {
            dyd[[n, k, r as usize, c as usize]] = v;
        }
    }
    let (cg, kg) = (g.cg(), g.kg());
    let wt = Array4::from_shape_fn((g.c, kg, g.kh, g.kw), |(c, kk, i, j)| {
        let grp = c / cg;
        w[[grp * kg + kk, c % cg, g.kh - 1 - i, g.kw - 1 - j]]
    });
    let inner = Conv2dSpec {
        stride: [1, 1],
        padding: Default::default(),
        dilation: d,
        groups: g.groups,
    };
    let dx = gemm::conv2d_forward(dyd.view(), wt.view(), None, &inner)?;
    debug_assert_eq!(dx.shape(), &g.x_shape());
    Ok(dx)
}
