//! Every invalid input returns `Err` naming the offending value, from every reference entry
//! point and method, and never panics.

use ndarray::{Array1, Array4};
use wgconv::reference::{self, direct, gemm, transposed};
use wgconv::{Conv2dSpec, Error, Padding2d, Pool2dSpec};

/// Runs all conv entry points of all methods on one configuration; every one must fail with a
/// message containing `needle`.
#[track_caller]
fn conv_all_fail(x: [usize; 4], w: [usize; 4], spec: Conv2dSpec, needle: &str) {
    let xa = Array4::<f32>::zeros(x);
    let wa = Array4::<f32>::zeros(w);
    let results: Vec<(&str, Result<Array4<f32>, Error>)> = vec![
        (
            "forward",
            reference::conv2d_forward(xa.view(), wa.view(), None, &spec),
        ),
        (
            "direct forward",
            direct::conv2d_forward(xa.view(), wa.view(), None, &spec),
        ),
        (
            "gemm forward",
            gemm::conv2d_forward(xa.view(), wa.view(), None, &spec),
        ),
    ];
    for (what, r) in results {
        let e = r.expect_err(what).to_string();
        assert!(e.contains(needle), "{what}: {e:?} lacks {needle:?}");
    }
}

#[track_caller]
fn contains(r: Result<impl std::fmt::Debug, Error>, needle: &str) {
    let e = r.expect_err("must fail").to_string();
    assert!(e.contains(needle), "{e:?} lacks {needle:?}");
}

#[test]
fn zero_stride_dilation_groups_kernel() {
    let spec = Conv2dSpec::new();
    conv_all_fail(
        [1, 2, 5, 5],
        [2, 2, 3, 3],
        spec.with_stride([1, 0]),
        "[1, 0]",
    );
    conv_all_fail(
        [1, 2, 5, 5],
        [2, 2, 3, 3],
        spec.with_dilation([0, 2]),
        "[0, 2]",
    );
    conv_all_fail([1, 2, 5, 5], [2, 2, 3, 3], spec.with_groups(0), "groups");
    conv_all_fail([1, 2, 5, 5], [2, 2, 0, 3], spec, "kernel height");
    conv_all_fail([1, 2, 5, 5], [2, 2, 3, 0], spec, "kernel width");
    for bad in [
        Pool2dSpec::new([0, 2]),
        Pool2dSpec::new([2, 2]).with_stride([2, 0]),
        Pool2dSpec::new([2, 2]).with_dilation([0, 1]),
    ] {
        let x = Array4::<f32>::zeros((1, 1, 4, 4));
        contains(reference::max_pool2d_forward(x.view(), &bad), "at least 1");
        contains(
            reference::avg_pool2d_forward(x.view(), &bad, true),
            "at least 1",
        );
    }
}

#[test]
fn channels_and_groups() {
    let g3 = Conv2dSpec::new().with_groups(3);
    conv_all_fail([1, 4, 5, 5], [3, 1, 1, 1], g3, "C = 4");
    conv_all_fail([1, 3, 5, 5], [4, 1, 1, 1], g3, "K = 4");
    // weight expects 2 input channels per group, input has 3.
    conv_all_fail(
        [1, 3, 5, 5],
        [4, 2, 1, 1],
        Conv2dSpec::new(),
        "[4, 2, 1, 1]",
    );
    let spec = Conv2dSpec::new();
    let dy = Array4::<f32>::zeros((1, 5, 3, 3));
    let w = Array4::<f32>::zeros((4, 2, 3, 3));
    for r in [
        reference::conv2d_backward_input(dy.view(), w.view(), [5, 5], &spec),
        direct::conv2d_backward_input(dy.view(), w.view(), [5, 5], &spec),
        transposed::conv2d_backward_input(dy.view(), w.view(), [5, 5], &spec),
    ] {
        contains(r, "[1, 5, 3, 3]");
    }
}

#[test]
fn bias_length() {
    let x = Array4::<f64>::zeros((1, 2, 4, 4));
    let w = Array4::<f64>::zeros((3, 2, 3, 3));
    let b = Array1::<f64>::zeros(4);
    let spec = Conv2dSpec::new();
    contains(
        reference::conv2d_forward(x.view(), w.view(), Some(b.view()), &spec),
        "4 elements",
    );
    contains(
        direct::conv2d_forward(x.view(), w.view(), Some(b.view()), &spec),
        "K = 3",
    );
}

#[test]
fn kernel_larger_than_padded_input() {
    let spec = Conv2dSpec::new()
        .with_padding(Padding2d::symmetric(1, 0))
        .with_dilation([2, 1]);
    // height: 2 + 2 = 4 < 2*(3-1)+1 = 5
    conv_all_fail([1, 1, 2, 9], [1, 1, 3, 3], spec, "spans 5");
    let x = Array4::<f32>::zeros((1, 1, 2, 9));
    contains(
        reference::max_pool2d_forward(x.view(), &Pool2dSpec::new([3, 3])),
        "spans 3",
    );
    contains(
        reference::conv2d_backward_weight(
            x.view(),
            Array4::zeros((1, 1, 1, 1)).view(),
            [3, 3],
            &Conv2dSpec::new(),
        ),
        "spans 3",
    );
}

#[test]
fn pool_padding_and_avg_dilation() {
    let x = Array4::<f32>::zeros((1, 1, 8, 8));
    let pad = Pool2dSpec::new([3, 3]).with_padding([1, 2]);
    contains(reference::max_pool2d_forward(x.view(), &pad), "[1, 2]");
    contains(
        reference::avg_pool2d_forward(x.view(), &pad, false),
        "[1, 2]",
    );
    let dil = Pool2dSpec::new([2, 2]).with_dilation([2, 1]);
    contains(
        reference::avg_pool2d_forward(x.view(), &dil, true),
        "[2, 1]",
    );
    contains(
        reference::avg_pool2d_backward(
            Array4::<f32>::zeros((1, 1, 3, 4)).view(),
            [8, 8],
            &dil,
            true,
        ),
        "[2, 1]",
    );
    // A dilation past the input leaves a window with no element.
    let x = Array4::<f32>::zeros((1, 1, 2, 2));
    let empty = Pool2dSpec::new([2, 2])
        .with_stride([1, 1])
        .with_padding([1, 1])
        .with_dilation([3, 1]);
    contains(
        reference::max_pool2d_forward(x.view(), &empty),
        "holds no input element",
    );
}

#[test]
fn indices_shape_and_range() {
    let spec = Pool2dSpec::new([2, 2]);
    let dy = Array4::<f32>::ones((1, 2, 2, 2));
    let wrong_shape = Array4::<u32>::zeros((1, 2, 2, 3));
    contains(
        reference::max_pool2d_backward(dy.view(), wrong_shape.view(), [4, 4], &spec),
        "[1, 2, 2, 3]",
    );
    // Not an error (the one index rule): an index outside the plane (16 on a 4 x 4 plane) or
    // outside its window (0, for the windows other than the first) contributes nothing.
    let mut outside = Array4::<u32>::zeros((1, 2, 2, 2));
    outside[[0, 1, 1, 0]] = 16;
    let dx = reference::max_pool2d_backward(dy.view(), outside.view(), [4, 4], &spec).unwrap();
    let mut want = Array4::<f32>::zeros((1, 2, 4, 4));
    want[[0, 0, 0, 0]] = 1.0;
    want[[0, 1, 0, 0]] = 1.0;
    assert_eq!(dx, want);
}

#[test]
fn input_and_kernel_sizes_inconsistent_with_dy() {
    let spec = Conv2dSpec::new().with_stride([2, 2]);
    let w = Array4::<f32>::zeros((2, 1, 3, 3));
    let dy = Array4::<f32>::zeros((1, 2, 3, 3)); // from a 7x7 or 8x8 input
    assert!(reference::conv2d_backward_input(dy.view(), w.view(), [8, 7], &spec).is_ok());
    for r in [
        reference::conv2d_backward_input(dy.view(), w.view(), [9, 7], &spec),
        direct::conv2d_backward_input(dy.view(), w.view(), [9, 7], &spec),
        transposed::conv2d_backward_input(dy.view(), w.view(), [9, 7], &spec),
    ] {
        contains(r, "[3, 3]");
    }
    let x = Array4::<f32>::zeros((1, 1, 7, 7));
    for r in [
        reference::conv2d_backward_weight(x.view(), dy.view(), [5, 3], &spec),
        direct::conv2d_backward_weight(x.view(), dy.view(), [5, 3], &spec),
        gemm::conv2d_backward_weight(x.view(), dy.view(), [5, 3], &spec),
    ] {
        contains(r, "kernel [5, 3]");
    }
    let pool = Pool2dSpec::new([2, 2]);
    contains(
        reference::avg_pool2d_backward(dy.view(), [5, 5], &pool, true),
        "[2, 2]",
    );
    let idx = Array4::<u32>::zeros((1, 2, 3, 3));
    contains(
        reference::max_pool2d_backward(dy.view(), idx.view(), [8, 8], &pool),
        "[4, 4]",
    );
}

#[test]
fn batch_mismatch_between_x_and_dy() {
    let spec = Conv2dSpec::new();
    let x = Array4::<f32>::zeros((2, 1, 4, 4));
    let dy = Array4::<f32>::zeros((3, 1, 2, 2));
    for r in [
        reference::conv2d_backward_weight(x.view(), dy.view(), [3, 3], &spec),
        direct::conv2d_backward_weight(x.view(), dy.view(), [3, 3], &spec),
    ] {
        contains(r, "batch of x [2, 1, 4, 4] is 2");
    }
}

#[test]
fn overflowing_sizes_are_errors() {
    let spec = Conv2dSpec::new().with_padding(Padding2d::symmetric(usize::MAX, 0));
    contains(spec.output_hw([5, 5], [3, 3]), "overflows");
    let spec = Conv2dSpec::new().with_dilation([usize::MAX, 1]);
    contains(spec.output_hw([5, 5], [3, 3]), "overflows");
    let spec = Conv2dSpec::new();
    contains(
        spec.forward_geometry([usize::MAX, 2, 5, 5], [1, 2, 1, 1]),
        "too many elements",
    );
    contains(
        Pool2dSpec::new([2, 2])
            .with_padding([1, 1])
            .output_hw([usize::MAX, 3]),
        "padding",
    );
}
