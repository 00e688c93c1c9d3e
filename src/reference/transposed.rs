//! dx as the explicit transposed convolution, built step by step as the textbook states it:
//! dilate dy by the stride (zeros between rows and columns), pad it by `dil·(k-1) - pad_before`
//! before and `dil·(k-1) - pad_after + remainder` after (negative amounts crop), rotate the kernel
//! by 180° and swap its input and output channels within each group, and convolve at stride 1
//! with the forward's dilation. The `remainder` rows and columns are the input positions no
//! forward window reached; they come out as zeros.

use ndarray::{Array4, ArrayView4};

use super::{Element, dims4, gemm};
use crate::error::Result;
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
    let [(top, bottom), (left, right)] = g.transposed_padding();
    let (s, d) = (g.stride, g.dilation);
    // Size of the dilated, padded dy: pad + (O - 1)·s + 1 + pad (pads may be negative).
    let hd = top + ((g.oh - 1) * s[0] + 1) as isize + bottom;
    let wd = left + ((g.ow - 1) * s[1] + 1) as isize + right;
    let (hd, wd) = (hd as usize, wd as usize);
    let mut dyd = Array4::zeros((g.n, g.k, hd, wd));
    for ((n, k, oh, ow), &v) in dy.indexed_iter() {
        let r = top + (oh * s[0]) as isize;
        let c = left + (ow * s[1]) as isize;
        if (0..hd as isize).contains(&r) && (0..wd as isize).contains(&c) {
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
