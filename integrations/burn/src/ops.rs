//! The ops as a burn backend extension: [`WgconvBackend`], implemented for burn's cubecl backend
//! (the forward on wgconv) and for `Autodiff` over it (the forward, and a backward step that
//! computes the gradients on wgconv too), routed from burn's `Dispatch` by
//! `#[backend_extension]`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Cube, backend_extension};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn_cubecl::tensor::CubeTensor;

use crate::bridge::dims4;
use crate::cube;

/// burn's conv2d and pools on wgconv. Call them through the functions of this crate
/// ([`crate::conv2d`] and the others), which check the arguments first.
#[backend_extension(Cube, Autodiff)]
pub trait WgconvBackend: burn::backend::Backend {
    /// `conv2d(x, weight)` without a bias.
    fn wgconv_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;
    /// `conv2d(x, weight) + bias`.
    fn wgconv_conv2d_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;
    /// Max-pool values and the flat index of each maximum in its plane.
    fn wgconv_max_pool2d(
        x: FloatTensor<Self>,
        options: MaxPoolOptions<2>,
    ) -> (FloatTensor<Self>, IntTensor<Self>);
    /// Avg-pool.
    fn wgconv_avg_pool2d(x: FloatTensor<Self>, options: AvgPoolOptions<2>) -> FloatTensor<Self>;
}

impl WgconvBackend for Cube {
    fn wgconv_conv2d(x: CubeTensor, weight: CubeTensor, options: ConvOptions<2>) -> CubeTensor {
        cube::conv2d(x, weight, None, &options)
    }
    fn wgconv_conv2d_bias(
        x: CubeTensor,
        weight: CubeTensor,
        bias: CubeTensor,
        options: ConvOptions<2>,
    ) -> CubeTensor {
        cube::conv2d(x, weight, Some(bias), &options)
    }
    fn wgconv_max_pool2d(x: CubeTensor, options: MaxPoolOptions<2>) -> (CubeTensor, CubeTensor) {
        cube::max_pool2d(x, &options)
    }
    fn wgconv_avg_pool2d(x: CubeTensor, options: AvgPoolOptions<2>) -> CubeTensor {
        cube::avg_pool2d(x, &options)
    }
}

/// The backward step of a conv2d with `N` parents: x, weight and, with `N == 3`, the bias.
#[derive(Debug)]
struct Conv2dBackward<const N: usize>;

impl<const N: usize> Backward<Cube, N> for Conv2dBackward<N> {
    type State = (CubeTensor, CubeTensor, ConvOptions<2>);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Cube>(&ops.node);
        let (x, w, options) = ops.state;
        let want: [bool; 3] = std::array::from_fn(|i| i < N && ops.parents[i].is_some());
        let grad = cube::conv2d_backward(x, w, dy, &options, want);
        for (parent, grad) in ops.parents.iter().zip(grad) {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<Cube>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct MaxPool2dBackward;

impl Backward<Cube, 1> for MaxPool2dBackward {
    type State = ([usize; 4], CubeTensor, MaxPoolOptions<2>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Cube>(&ops.node);
        let (x_shape, indices, options) = ops.state;
        if let [Some(node)] = ops.parents {
            let dx = cube::max_pool2d_backward(x_shape, dy, indices, &options);
            grads.register::<Cube>(node.id, dx);
        }
    }
}

#[derive(Debug)]
struct AvgPool2dBackward;

impl Backward<Cube, 1> for AvgPool2dBackward {
    type State = ([usize; 4], AvgPoolOptions<2>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Cube>(&ops.node);
        let (x_shape, options) = ops.state;
        if let [Some(node)] = ops.parents {
            grads.register::<Cube>(node.id, cube::avg_pool2d_backward(x_shape, dy, &options));
        }
    }
}

impl<C: CheckpointStrategy> WgconvBackend for Autodiff<Cube, C> {
    fn wgconv_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), weight.node()];
        tracked_conv2d::<C, 2>(
            nodes,
            x.into_primitive(),
            weight.into_primitive(),
            None,
            options,
        )
    }

    fn wgconv_conv2d_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), weight.node(), bias.node()];
        let (x, w, b) = (
            x.into_primitive(),
            weight.into_primitive(),
            bias.into_primitive(),
        );
        tracked_conv2d::<C, 3>(nodes, x, w, Some(b), options)
    }

    fn wgconv_max_pool2d(
        x: FloatTensor<Self>,
        options: MaxPoolOptions<2>,
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        let x_shape = dims4(x.primitive(), "x");
        match MaxPool2dBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, indices) = cube::max_pool2d(x.into_primitive(), &options);
                let state = (x_shape, indices.clone(), options);
                (prep.finish(state, y), indices)
            }
            OpsKind::UnTracked(prep) => {
                let (y, indices) = cube::max_pool2d(x.into_primitive(), &options);
                (prep.finish(y), indices)
            }
        }
    }

    fn wgconv_avg_pool2d(x: FloatTensor<Self>, options: AvgPoolOptions<2>) -> FloatTensor<Self> {
        let x_shape = dims4(x.primitive(), "x");
        match AvgPool2dBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = cube::avg_pool2d(x.into_primitive(), &options);
                prep.finish((x_shape, options), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(cube::avg_pool2d(x.into_primitive(), &options)),
        }
    }
}

/// A conv2d on wgconv, recorded with its backward step when a parent needs a gradient (`N`
/// parents: x, the weight and, with 3, the bias).
fn tracked_conv2d<C: CheckpointStrategy, const N: usize>(
    nodes: [NodeGuard; N],
    x: CubeTensor,
    w: CubeTensor,
    b: Option<CubeTensor>,
    options: ConvOptions<2>,
) -> FloatTensor<Autodiff<Cube, C>> {
    match Conv2dBackward::<N>
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = (x.clone(), w.clone(), options.clone());
            prep.finish(state, cube::conv2d(x, w, b, &options))
        }
        OpsKind::UnTracked(prep) => prep.finish(cube::conv2d(x, w, b, &options)),
    }
}
