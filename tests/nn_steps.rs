//! The rules of a training step in `wgconv::nn` (see its module docs): evaluation forwards
//! (`Layer::infer`) save nothing and change no later gradient, bit for bit; an inference loop
//! holds GPU memory flat; gradients belong to one step (the first backward of a step replaces
//! them, later ones add, `Sgd::step` and `zero_grad` end the step); weight sharing sums both
//! uses; a backward without a forward of its step is an `Err` naming the layer.

mod common;

use common::net::{CLASSES, N, OPTS, small_net};
use common::*;
use ndarray::{Array1, Array2, Array4, ArrayD, IxDyn};
use wgconv::nn::{AvgPool2d, Conv2d, Flatten, Layer, Linear, MaxPool2d, Relu, Sequential, Sgd};
use wgconv::{Conv2dSpec, Error, Gpu, Padding2d, Pool2dSpec, Tensor, reference};

/// The bits of every parameter gradient of `model`.
fn grad_bits(gpu: &Gpu, model: &mut Sequential) -> Vec<Vec<u32>> {
    model
        .parameters_mut()
        .iter()
        .map(|p| bits(gpu, p.grad.expect("a gradient after backward")))
        .collect()
}

/// How a run evaluates between its training steps.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Eval {
    None,
    /// `Layer::infer` before each step, between its forward and backward, and after it.
    Infer,
    /// `Layer::forward` (a training forward no backward follows) after each step's update.
    TrainingForward,
}

/// Three SGD steps of the small net from seed 5 on the same batches; returns each step's loss
/// and gradients and the final parameters, as bits.
fn run(gpu: &Gpu, eval: Eval) -> Vec<Vec<u32>> {
    let mut model = small_net(gpu, 5);
    let mut sgd = Sgd::new(OPTS).unwrap();
    let mut rng = Rng::new(11);
    let mut eval_rng = Rng::new(12);
    let test = gpu.upload(&eval_rng.array4_f32([7, 1, 8, 8])).unwrap();
    let mut out = Vec::new();
    for _ in 0..3 {
        let x = rng.array4_f32([N, 1, 8, 8]);
        let labels = Array1::from_shape_simple_fn(N, || rng.range(0, CLASSES - 1) as u32);
        if eval == Eval::Infer {
            model.infer(gpu, &test).unwrap();
        }
        let logits = model.forward(gpu, gpu.upload(&x).unwrap()).unwrap();
        if eval == Eval::Infer {
            // Same batch size as the training batch: nothing could tell them apart by shape.
            let same = gpu.upload(&eval_rng.array4_f32([N, 1, 8, 8])).unwrap();
            model.infer(gpu, &same).unwrap();
        }
        let labels = gpu.upload_indices(&labels).unwrap();
        let (loss, dlogits) = gpu.softmax_cross_entropy(&logits, &labels).unwrap();
        model.backward_params(gpu, dlogits).unwrap();
        out.push(bits(gpu, &loss));
        out.extend(grad_bits(gpu, &mut model));
        sgd.step(gpu, model.parameters_mut()).unwrap();
        match eval {
            Eval::None => {}
            Eval::Infer => drop(model.infer(gpu, &test).unwrap()),
            Eval::TrainingForward => {
                let copy = gpu.download(&test).unwrap();
                drop(model.forward(gpu, gpu.upload(&copy).unwrap()).unwrap());
            }
        }
    }
    out.extend(model.parameters().iter().map(|t| bits(gpu, t)));
    out
}

/// The regression of `train_digits` ending at 0.10: an evaluation after a step used to turn
/// every later backward into a running sum of all steps' gradients.
#[test]
fn evaluation_forwards_leave_training_bit_identical() {
    let gpu = gpu();
    let plain = run(gpu, Eval::None);
    assert_eq!(plain.len(), 3 * 7 + 6);
    assert_eq!(
        run(gpu, Eval::Infer),
        plain,
        "losses, gradients and parameters with infer between and inside the steps"
    );
    assert_eq!(
        run(gpu, Eval::TrainingForward),
        plain,
        "losses, gradients and parameters with an unmatched training forward after each step"
    );
}

#[test]
fn infer_equals_the_training_forward() {
    let gpu = gpu();
    let mut model = small_net(gpu, 9);
    let x = Rng::new(3).array4_f32([N, 1, 8, 8]);
    let inferred = bits(gpu, &model.infer(gpu, &gpu.upload(&x).unwrap()).unwrap());
    let trained = bits(gpu, &model.forward(gpu, gpu.upload(&x).unwrap()).unwrap());
    assert_eq!(inferred, trained);
    // An empty network's infer is a copy of its input.
    let empty = Sequential::new();
    let t = gpu.upload(&x).unwrap();
    assert_eq!(bits(gpu, &empty.infer(gpu, &t).unwrap()), bits(gpu, &t));
}

/// An inference loop through the `nn` layers keeps no tensor: after warm-up the buffer pool
/// neither allocates nor changes what it holds (a fresh `Gpu`, so no other test's work counts).
#[test]
fn an_inference_loop_holds_memory_flat() {
    let gpu = fresh(Gpu::builder());
    let model = small_net(&gpu, 2);
    let x = gpu.upload(&Rng::new(4).array4_f32([N, 1, 8, 8])).unwrap();
    for _ in 0..10 {
        drop(model.infer(&gpu, &x).unwrap());
    }
    gpu.synchronize().unwrap();
    let warm = gpu.pool_stats();
    for _ in 0..1000 {
        drop(model.infer(&gpu, &x).unwrap());
    }
    gpu.synchronize().unwrap();
    let end = gpu.pool_stats();
    eprintln!("1,000 infers: after warm-up {warm:?}, after the loop {end:?}");
    assert_eq!(end.allocations, warm.allocations, "buffers created");
    assert_eq!(end.held_bytes, warm.held_bytes, "bytes held");
    assert_eq!(end.held_buffers, warm.held_buffers, "buffers held");
    assert!(end.reuses >= warm.reuses + 1000, "{end:?}");
}

fn spec() -> Conv2dSpec {
    Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1))
}

/// A conv layer and a linear layer each applied twice in a step: their gradients are the sums
/// of both uses' (against the reference in f64); `Sgd::step` ends the step, so the next step's
/// single use replaces them; `zero_grad` drops them.
#[test]
fn weight_sharing_sums_both_backward_passes() {
    let gpu = gpu();
    let mut rng = Rng::new(21);
    let f = |a: &Array4<f32>| f64s(a);

    let w = rng.array4_f32([4, 3, 3, 3]);
    let b = Array1::from_vec(rng.array4_f32([1, 1, 1, 4]).into_raw_vec_and_offset().0);
    let mut conv = Conv2d::from_parameters(
        gpu.upload(&w).unwrap(),
        Some(gpu.upload(&b).unwrap()),
        spec(),
    )
    .unwrap();
    let xs = [rng.array4_f32([2, 3, 6, 6]), rng.array4_f32([2, 3, 6, 6])];
    let dys = [rng.array4_f32([2, 4, 6, 6]), rng.array4_f32([2, 4, 6, 6])];
    let dw = |i: usize| {
        reference::conv2d_backward_weight(f(&xs[i]).view(), f(&dys[i]).view(), [3, 3], &spec())
            .unwrap()
    };
    let db = |i: usize| reference::conv2d_backward_bias(f(&dys[i]).view());
    for x in &xs {
        conv.forward(gpu, gpu.upload(x).unwrap()).unwrap();
    }
    for dy in dys.iter().rev() {
        conv.backward(gpu, gpu.upload(dy).unwrap()).unwrap();
    }
    close(
        &dl(gpu, conv.weight_grad().unwrap()),
        &(dw(0) + dw(1)),
        "conv dW of both uses",
    );
    close(
        &dl(gpu, conv.bias_grad().unwrap()),
        &(db(0) + db(1)),
        "conv db of both uses",
    );

    // The optimizer's step ends the step: the next single use replaces the gradients.
    let mut sgd = Sgd::new(OPTS).unwrap();
    sgd.step(gpu, conv.parameters_mut()).unwrap();
    conv.forward(gpu, gpu.upload(&xs[0]).unwrap()).unwrap();
    conv.backward(gpu, gpu.upload(&dys[0]).unwrap()).unwrap();
    close(
        &dl(gpu, conv.bias_grad().unwrap()),
        &db(0),
        "conv db of the next step",
    );

    // zero_grad ends it too, and drops the gradients.
    conv.zero_grad();
    assert!(conv.weight_grad().is_none() && conv.bias_grad().is_none());

    // The linear layer, twice in a step.
    let wl = Array2::from_shape_vec(
        (5, 6),
        rng.array4_f32([1, 1, 5, 6]).into_raw_vec_and_offset().0,
    )
    .unwrap();
    let bl = Array1::from_vec(rng.array4_f32([1, 1, 1, 5]).into_raw_vec_and_offset().0);
    let mut linear =
        Linear::from_parameters(gpu.upload(&wl).unwrap(), Some(gpu.upload(&bl).unwrap())).unwrap();
    let two = |r: &mut Rng, c: usize| {
        Array2::from_shape_vec(
            (3, c),
            r.array4_f32([1, 1, 3, c]).into_raw_vec_and_offset().0,
        )
        .unwrap()
    };
    let lx = [two(&mut rng, 6), two(&mut rng, 6)];
    let ldy = [two(&mut rng, 5), two(&mut rng, 5)];
    for x in &lx {
        linear.forward(gpu, gpu.upload(x).unwrap()).unwrap();
    }
    for dy in ldy.iter().rev() {
        linear.backward(gpu, gpu.upload(dy).unwrap()).unwrap();
    }
    let g = |a: &Array2<f32>| a.mapv(f64::from);
    let ldw = |i: usize| {
        wgconv::reference::nn::linear_backward_weight(g(&lx[i]).view(), g(&ldy[i]).view()).unwrap()
    };
    let ldb = |i: usize| wgconv::reference::nn::linear_backward_bias(g(&ldy[i]).view());
    close(
        &dl(gpu, linear.weight_grad().unwrap()),
        &(ldw(0) + ldw(1)),
        "linear dW of both uses",
    );
    close(
        &dl(gpu, linear.bias_grad().unwrap()),
        &(ldb(0) + ldb(1)),
        "linear db of both uses",
    );
    sgd = Sgd::new(OPTS).unwrap();
    sgd.step(gpu, linear.parameters_mut()).unwrap();
    linear.forward(gpu, gpu.upload(&lx[1]).unwrap()).unwrap();
    linear
        .backward_params(gpu, gpu.upload(&ldy[1]).unwrap())
        .unwrap();
    close(
        &dl(gpu, linear.weight_grad().unwrap()),
        &ldw(1),
        "linear dW of the next step",
    );
}

#[track_caller]
fn assert_no_forward(err: Error, layer: &str) {
    let m = err.to_string();
    assert!(
        matches!(err, Error::InvalidArgument(_))
            && m.contains(layer)
            && m.contains("without a forward"),
        "{layer}: {m}"
    );
}

/// Every layer: a backward with no training forward of its step (none at all, only an
/// evaluation forward, or one from before `zero_grad` or the optimizer's step) is an `Err`
/// naming the layer, never a computation on stale data.
#[test]
fn a_backward_without_a_forward_of_its_step_names_the_layer() {
    let gpu = gpu();
    let mut rng = wgconv::nn::Rng::new(1);
    let pool = Pool2dSpec::new([2, 2]);
    let layers: Vec<(Box<dyn Layer>, &str, Vec<usize>)> = vec![
        (
            Box::new(Conv2d::new(gpu, 2, 3, [3, 3], spec(), true, &mut rng).unwrap()),
            "Conv2d",
            vec![2, 2, 4, 4],
        ),
        (
            Box::new(Linear::new(gpu, 4, 3, true, &mut rng).unwrap()),
            "Linear",
            vec![2, 4],
        ),
        (Box::new(Relu::new()), "Relu", vec![2, 2, 4, 4]),
        (
            Box::new(MaxPool2d::new(pool)),
            "MaxPool2d",
            vec![2, 2, 4, 4],
        ),
        (
            Box::new(AvgPool2d::new(pool, true)),
            "AvgPool2d",
            vec![2, 2, 4, 4],
        ),
        (Box::new(Flatten::new()), "Flatten", vec![2, 2, 4, 4]),
    ];
    for (mut layer, name, input) in layers {
        let input = gpu.upload(&ArrayD::<f32>::ones(IxDyn(&input))).unwrap();
        let dy_of = |y: &Tensor| gpu.reshaped_copy(y, y.shape()).unwrap();
        // Never a forward.
        let y = layer.infer(gpu, &input).unwrap();
        assert_no_forward(layer.backward(gpu, dy_of(&y)).unwrap_err(), name);
        // A forward, then zero_grad.
        layer.forward(gpu, dy_of(&input)).unwrap();
        layer.zero_grad();
        assert_no_forward(layer.backward(gpu, dy_of(&y)).unwrap_err(), name);
        // One forward, two backwards: the second has nothing.
        layer.forward(gpu, dy_of(&input)).unwrap();
        layer.backward(gpu, dy_of(&y)).unwrap();
        assert_no_forward(layer.backward(gpu, dy_of(&y)).unwrap_err(), name);
        // A forward, then the optimizer's step (layers with parameters count steps).
        if !layer.parameters().is_empty() {
            layer.forward(gpu, dy_of(&input)).unwrap();
            Sgd::new(OPTS)
                .unwrap()
                .step(gpu, layer.parameters_mut())
                .unwrap();
            assert_no_forward(layer.backward(gpu, dy_of(&y)).unwrap_err(), name);
            assert_no_forward(layer.backward_params(gpu, dy_of(&y)).unwrap_err(), name);
        }
    }
}
