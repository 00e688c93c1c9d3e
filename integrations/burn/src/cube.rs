//! The ops on burn's cubecl primitives (`CubeTensor`), forward and backward: burn's options as
//! wgconv's specs, burn-allocated outputs, one [`Call`] per op or per backward.

use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn_cubecl::tensor::CubeTensor;
use wgconv::{Conv2dSpec, Padding2d, Pool2dSpec};

use crate::Error;
use crate::bridge::{Call, dims4};

/// burn's conv options as wgconv's spec (padding per side, as burn keeps it).
pub(crate) fn conv_spec(options: &ConvOptions<2>) -> Conv2dSpec {
    let [(top, bottom), (left, right)] = options.padding;
    Conv2dSpec::new()
        .with_stride(options.stride)
        .with_padding(Padding2d {
            top,
            bottom,
            left,
            right,
        })
        .with_dilation(options.dilation)
        .with_groups(options.groups)
}

/// Symmetric pool padding, or an error naming the asymmetric one (PyTorch's pools, and so
/// wgconv's, pad both sides of an axis alike).
fn pool_padding(padding: [(usize, usize); 2]) -> Result<[usize; 2], Error> {
    match padding {
        [(t, b), (l, r)] if t == b && l == r => Ok([t, l]),
        _ => Err(Error::Unsupported(format!(
            "pool padding {padding:?} is asymmetric; wgconv's pools pad both sides of an axis alike"
        ))),
    }
}

/// burn's max-pool options as wgconv's spec.
pub(crate) fn max_pool_spec(options: &MaxPoolOptions<2>) -> Result<Pool2dSpec, Error> {
    Ok(Pool2dSpec::new(options.kernel_size)
        .with_stride(options.stride)
        .with_padding(pool_padding(options.padding)?)
        .with_dilation(options.dilation)
        .with_ceil_mode(options.ceil_mode))
}

/// burn's avg-pool options as wgconv's spec and `count_include_pad`.
pub(crate) fn avg_pool_spec(options: &AvgPoolOptions<2>) -> Result<(Pool2dSpec, bool), Error> {
    let spec = Pool2dSpec::new(options.kernel_size)
        .with_stride(options.stride)
        .with_padding(pool_padding(options.padding)?)
        .with_ceil_mode(options.ceil_mode);
    Ok((spec, options.count_include_pad))
}

/// The conv's output shape, or wgconv's error for these shapes and options.
pub(crate) fn conv_output(
    x: [usize; 4],
    w: [usize; 4],
    bias: Option<usize>,
    options: &ConvOptions<2>,
) -> Result<[usize; 4], Error> {
    let geometry = conv_spec(options)
        .forward_geometry(x, w)
        .map_err(Error::Wgconv)?;
    if let Some(len) = bias
        && len != geometry.k
    {
        return Err(Error::Shape(format!(
            "bias has {len} elements; the weight {w:?} has {} output channels",
            geometry.k
        )));
    }
    Ok(geometry.y_shape())
}

/// The pool's output shape, or wgconv's error for this input and spec.
pub(crate) fn pool_output(x: [usize; 4], spec: &Pool2dSpec) -> Result<[usize; 4], Error> {
    let [oh, ow] = spec.output_hw([x[2], x[3]]).map_err(Error::Wgconv)?;
    Ok([x[0], x[1], oh, ow])
}

fn ok<T>(r: Result<T, Error>) -> T {
    r.unwrap_or_else(|e| panic!("wgconv-burn: {e}"))
}

/// `y = conv2d(x, w) + b`.
pub(crate) fn conv2d(
    x: CubeTensor,
    w: CubeTensor,
    b: Option<CubeTensor>,
    options: &ConvOptions<2>,
) -> CubeTensor {
    let bias_len = b.as_ref().map(|b| dims1(b, "bias"));
    let y_shape = ok(conv_output(
        dims4(&x, "x"),
        dims4(&w, "weight"),
        bias_len,
        options,
    ));
    let spec = conv_spec(options);
    let mut call = Call::on(&x);
    let (_x, xv) = call.input(x, "x");
    let (_w, wv) = call.input(w, "weight");
    let bv = b.map(|b| call.input(b, "bias"));
    let (y, mut yv) = call.output(&y_shape, "y");
    let bias = bv.as_ref().map(|(_, v)| v);
    call.run(move |gpu| gpu.conv2d_forward_into(&xv, &wv, bias, &spec, &mut yv));
    y
}

/// The gradients of a conv2d that `want` (x, weight, bias), from one call.
pub(crate) fn conv2d_backward(
    x: CubeTensor,
    w: CubeTensor,
    dy: CubeTensor,
    options: &ConvOptions<2>,
    want: [bool; 3],
) -> [Option<CubeTensor>; 3] {
    let spec = conv_spec(options);
    let (x_shape, w_shape) = (dims4(&x, "x"), dims4(&w, "weight"));
    let mut call = Call::on(&dy);
    let (_dy, dyv) = call.input(dy, "the output gradient");
    let (_w, wv) = call.input(w, "weight");
    let (_x, xv) = call.input(x, "x");
    let mut dx = want[0].then(|| call.output(&x_shape, "dx"));
    let mut dw = want[1].then(|| call.output(&w_shape, "dw"));
    let mut db = want[2].then(|| call.output(&[w_shape[0]], "db"));
    let (dxv, dwv, dbv) = (
        dx.as_mut().map(|(_, v)| v),
        dw.as_mut().map(|(_, v)| v),
        db.as_mut().map(|(_, v)| v),
    );
    call.run(move |gpu| {
        if let Some(dxv) = dxv {
            gpu.conv2d_backward_input_into(&dyv, &wv, [x_shape[2], x_shape[3]], &spec, dxv)?;
        }
        if let Some(dwv) = dwv {
            gpu.conv2d_backward_weight_into(&xv, &dyv, [w_shape[2], w_shape[3]], &spec, dwv)?;
        }
        if let Some(dbv) = dbv {
            gpu.conv2d_backward_bias_into(&dyv, dbv)?;
        }
        Ok(())
    });
    [dx.map(|(t, _)| t), dw.map(|(t, _)| t), db.map(|(t, _)| t)]
}

/// Max-pool forward: the values and the I32 flat indices of each window's maximum in its plane.
pub(crate) fn max_pool2d(x: CubeTensor, options: &MaxPoolOptions<2>) -> (CubeTensor, CubeTensor) {
    let spec = ok(max_pool_spec(options));
    let y_shape = ok(pool_output(dims4(&x, "x"), &spec));
    let mut call = Call::on(&x);
    let (_x, xv) = call.input(x, "x");
    let (y, mut yv) = call.output(&y_shape, "y");
    let (indices, mut iv) = call.output_indices(&y_shape);
    call.run(move |gpu| gpu.max_pool2d_forward_into(&xv, &spec, &mut yv, &mut iv));
    (y, indices)
}

/// Max-pool backward: the output gradient scattered to the inputs the indices name.
pub(crate) fn max_pool2d_backward(
    x_shape: [usize; 4],
    dy: CubeTensor,
    indices: CubeTensor,
    options: &MaxPoolOptions<2>,
) -> CubeTensor {
    let spec = ok(max_pool_spec(options));
    let mut call = Call::on(&dy);
    let (_dy, dyv) = call.input(dy, "the output gradient");
    let (_i, iv) = call.input_indices(indices);
    let (dx, mut dxv) = call.output(&x_shape, "dx");
    let hw = [x_shape[2], x_shape[3]];
    call.run(move |gpu| gpu.max_pool2d_backward_into(&dyv, &iv, hw, &spec, &mut dxv));
    dx
}

/// Avg-pool forward.
pub(crate) fn avg_pool2d(x: CubeTensor, options: &AvgPoolOptions<2>) -> CubeTensor {
    let (spec, include_pad) = ok(avg_pool_spec(options));
    let y_shape = ok(pool_output(dims4(&x, "x"), &spec));
    let mut call = Call::on(&x);
    let (_x, xv) = call.input(x, "x");
    let (y, mut yv) = call.output(&y_shape, "y");
    call.run(move |gpu| gpu.avg_pool2d_forward_into(&xv, &spec, include_pad, &mut yv));
    y
}

/// Avg-pool backward.
pub(crate) fn avg_pool2d_backward(
    x_shape: [usize; 4],
    dy: CubeTensor,
    options: &AvgPoolOptions<2>,
) -> CubeTensor {
    let (spec, include_pad) = ok(avg_pool_spec(options));
    let mut call = Call::on(&dy);
    let (_dy, dyv) = call.input(dy, "the output gradient");
    let (dx, mut dxv) = call.output(&x_shape, "dx");
    let hw = [x_shape[2], x_shape[3]];
    call.run(move |gpu| gpu.avg_pool2d_backward_into(&dyv, hw, &spec, include_pad, &mut dxv));
    dx
}

fn dims1(t: &CubeTensor, what: &str) -> usize {
    let shape = burn::backend::TensorMetadata::shape(t);
    match shape.as_slice() {
        &[n] => n,
        other => panic!("wgconv-burn: {what} must have 1 dimension, got shape {other:?}"),
    }
}
