//! wgconv's ops inside burn against burn's own, on burn's device: forwards and every gradient
//! through burn's autodiff on random shapes and every option, pooling values and indices exact,
//! nothing read back to the host by wgconv, errors for bad arguments.

use std::sync::{Mutex, MutexGuard, OnceLock};

use burn::tensor::module;
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Int, Tensor, TensorData};

/// burn's runtime starts once a process; the tests share it, one at a time (one thread drives
/// burn, as the crate documents).
fn device() -> (MutexGuard<'static, ()>, Device) {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let device = DEVICE
        .get_or_init(|| wgconv_burn::init().expect("burn's wgpu device and wgconv on it"))
        .clone();
    (guard, device)
}

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// In `lo..=hi`.
    fn int(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
            .collect()
    }
    fn tensor<const D: usize>(&mut self, shape: [usize; D], device: &Device) -> Tensor<D> {
        let data = TensorData::new(self.values(shape.iter().product()), shape);
        Tensor::from_data(data, device)
    }
}

fn host(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 data")
}

/// wgconv's error metric: max |a - b| / max(1, max |b|).
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths");
    let scale = want.iter().fold(1.0f64, |m, &v| m.max(f64::from(v).abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
        .fold(0.0, f64::max);
    assert!(got.iter().all(|v| v.is_finite()), "non-finite result");
    worst / scale
}

const TOL: f64 = 1e-4;

/// The gradients of `sum(y * g)` with respect to each input, `y = f(inputs)`.
fn grads_of<const N: usize>(
    inputs: [Tensor<4>; N],
    g: &Tensor<4>,
    f: impl Fn(&[Tensor<4>; N]) -> Tensor<4>,
) -> (Vec<f32>, [Vec<f32>; N]) {
    let inputs = inputs.map(|t| t.require_grad());
    let y = f(&inputs);
    let grads = (y.clone() * g.clone()).sum().backward();
    let d = std::array::from_fn(|i| {
        let grad = inputs[i].grad(&grads).expect("a gradient for every input");
        grad.into_data().try_to_vec::<f32>().expect("f32")
    });
    (host(y.inner()), d)
}

#[test]
fn conv2d_forward_and_gradients_match_burn_on_random_shapes_and_options() {
    let (_guard, device) = device();
    let device = device.autodiff();
    let gpu = wgconv_burn::gpu(&device).expect("registered");
    let mut rng = Rng(7);
    let mut worst = [0.0f64; 4];
    for case in 0..24 {
        let groups = [1, 1, 2, 4][rng.int(0, 3)];
        let depthwise = case % 6 == 5;
        let c = if depthwise { 4 } else { groups * rng.int(1, 3) };
        let k = if depthwise { 4 } else { groups * rng.int(1, 3) };
        let groups = if depthwise { 4 } else { groups };
        let (kh, kw) = (rng.int(1, 3), rng.int(1, 3));
        let stride = [rng.int(1, 2), rng.int(1, 2)];
        let dilation = [rng.int(1, 2), rng.int(1, 2)];
        let padding = [
            (rng.int(0, 2), rng.int(0, 2)),
            (rng.int(0, 2), rng.int(0, 2)),
        ];
        let (h, w) = (rng.int(5, 11), rng.int(5, 11));
        let n = rng.int(1, 3);
        let bias = case % 3 != 0;
        let options = ConvOptions {
            stride,
            padding,
            dilation,
            groups,
        };
        let x = rng.tensor([n, c, h, w], &device);
        let wt = rng.tensor([k, c / groups, kh, kw], &device);
        let b = rng.tensor([k], &device).require_grad();
        let what = format!(
            "case {case}: x {:?} w {:?} {options:?} bias {bias}",
            x.dims(),
            wt.dims()
        );
        // The output shape (and so the loss weights) from burn's own forward.
        let y_dims =
            module::conv2d(x.clone().inner(), wt.clone().inner(), None, options.clone()).dims();
        let g = rng.tensor(y_dims, &device).inner().autodiff();
        let run = |conv: &dyn Fn(Tensor<4>, Tensor<4>, Option<Tensor<1>>) -> Tensor<4>| {
            let b = b.clone().detach().require_grad();
            let (y, [dx, dw]) = grads_of([x.clone(), wt.clone()], &g, |[x, w]| {
                conv(x.clone(), w.clone(), bias.then(|| b.clone()))
            });
            let db = bias.then(|| {
                let y = conv(x.clone(), wt.clone(), Some(b.clone()));
                let grads = (y * g.clone()).sum().backward();
                b.grad(&grads)
                    .expect("db")
                    .into_data()
                    .try_to_vec::<f32>()
                    .expect("f32")
            });
            (y, dx, dw, db)
        };
        let polls = gpu.counters().polls;
        let ours = run(&|x, w, b| wgconv_burn::conv2d(x, w, b, options.clone()));
        assert_eq!(
            gpu.counters().polls,
            polls,
            "{what}: wgconv polled (a host read)"
        );
        let theirs = run(&|x, w, b| module::conv2d(x, w, b, options.clone()));
        for (i, (name, a, b)) in [
            ("y", &ours.0, &theirs.0),
            ("dx", &ours.1, &theirs.1),
            ("dw", &ours.2, &theirs.2),
        ]
        .into_iter()
        .enumerate()
        {
            let e = rel_err(a, b);
            assert!(e <= TOL, "{what}: {name} differs from burn's by {e:.2e}");
            worst[i] = worst[i].max(e);
        }
        if let (Some(a), Some(b)) = (&ours.3, &theirs.3) {
            let e = rel_err(a, b);
            assert!(e <= TOL, "{what}: db differs from burn's by {e:.2e}");
            worst[3] = worst[3].max(e);
        }
    }
    println!(
        "conv2d worst relative error against burn: y {:.1e} dx {:.1e} dw {:.1e} db {:.1e}",
        worst[0], worst[1], worst[2], worst[3]
    );
}

#[test]
fn max_pool_values_indices_and_gradient_match_burn_exactly() {
    let (_guard, device) = device();
    let device = device.autodiff();
    let mut rng = Rng(11);
    for case in 0..16 {
        let kernel = [rng.int(1, 3), rng.int(1, 3)];
        let options = MaxPoolOptions {
            kernel_size: kernel,
            stride: [rng.int(1, 3), rng.int(1, 3)],
            padding: [(0, 0), (0, 0)].map(|_| {
                let p = rng.int(0, kernel[0].min(kernel[1]) / 2);
                (p, p)
            }),
            dilation: [rng.int(1, 2), rng.int(1, 2)],
            ceil_mode: case % 2 == 1,
        };
        let shape = [rng.int(1, 2), rng.int(1, 3), rng.int(5, 10), rng.int(5, 10)];
        let x = rng.tensor(shape, &device);
        let what = format!("case {case}: x {shape:?} {options:?}");
        let (y, i) = wgconv_burn::max_pool2d_with_indices(x.clone().inner(), options.clone());
        let (y0, i0) = module::max_pool2d_with_indices(x.clone().inner(), options.clone());
        assert_eq!(host(y), host(y0.clone()), "{what}: values");
        let ints = |t: Tensor<4, Int>| {
            t.into_data()
                .convert::<i64>()
                .try_to_vec::<i64>()
                .expect("ints")
        };
        assert_eq!(ints(i), ints(i0), "{what}: indices");
        let g = rng.tensor(y0.dims(), &device).inner().autodiff();
        let (_, [dx]) = grads_of([x.clone()], &g, |[x]| {
            wgconv_burn::max_pool2d(x.clone(), options.clone())
        });
        let (_, [dx0]) = grads_of([x.clone()], &g, |[x]| {
            module::max_pool2d(x.clone(), options.clone())
        });
        let e = rel_err(&dx, &dx0);
        assert!(e <= 1e-6, "{what}: dx differs from burn's by {e:.2e}");
    }
}

#[test]
fn avg_pool_forward_and_gradient_match_burn() {
    let (_guard, device) = device();
    let device = device.autodiff();
    let mut rng = Rng(13);
    for case in 0..16 {
        let kernel = [rng.int(1, 3), rng.int(1, 3)];
        let options = AvgPoolOptions {
            kernel_size: kernel,
            stride: [rng.int(1, 3), rng.int(1, 3)],
            padding: [
                (kernel[0] / 2, kernel[0] / 2),
                (kernel[1] / 2, kernel[1] / 2),
            ]
            .map(|p| if case % 3 == 0 { (0, 0) } else { p }),
            count_include_pad: case % 2 == 0,
            ceil_mode: case % 4 >= 2,
        };
        let shape = [rng.int(1, 2), rng.int(1, 3), rng.int(5, 10), rng.int(5, 10)];
        let x = rng.tensor(shape, &device);
        let what = format!("case {case}: x {shape:?} {options:?}");
        let y0 = module::avg_pool2d(x.clone().inner(), options.clone());
        let g = rng.tensor(y0.dims(), &device).inner().autodiff();
        let (y, [dx]) = grads_of([x.clone()], &g, |[x]| {
            wgconv_burn::avg_pool2d(x.clone(), options.clone())
        });
        let (y0, [dx0]) = grads_of([x.clone()], &g, |[x]| {
            module::avg_pool2d(x.clone(), options.clone())
        });
        for (name, a, b) in [("y", &y, &y0), ("dx", &dx, &dx0)] {
            let e = rel_err(a, b);
            assert!(e <= TOL, "{what}: {name} differs from burn's by {e:.2e}");
        }
    }
}

#[test]
fn a_training_step_reads_nothing_back_and_submits_on_burns_queue() {
    let (_guard, device) = device();
    let device = device.autodiff();
    let gpu = wgconv_burn::gpu(&device).expect("registered");
    let mut rng = Rng(17);
    let x = rng.tensor([2, 3, 8, 8], &device);
    let w = rng.tensor([4, 3, 3, 3], &device).require_grad();
    let b = rng.tensor([4], &device).require_grad();
    let before = gpu.counters();
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let y = wgconv_burn::conv2d(x, w.clone(), Some(b.clone()), options);
    let y = wgconv_burn::max_pool2d(y, MaxPoolOptions::new([2, 2]));
    let y = wgconv_burn::avg_pool2d(y, AvgPoolOptions::new([2, 2]));
    let grads = y.sum().backward();
    let (dw, db) = (w.grad(&grads).expect("dw"), b.grad(&grads).expect("db"));
    let after = gpu.counters();
    assert_eq!(after.polls, before.polls, "wgconv polled the device");
    // One submission per forward and per pool backward; the conv's backward makes dw and db
    // (x needs no gradient), one op each.
    assert_eq!(after.submissions - before.submissions, 3 + 1 + 1 + 2);
    // burn reads the results after wgconv's writes, through its own queue.
    assert!(dw.abs().sum().into_scalar::<f32>() > 0.0);
    assert!(db.abs().sum().into_scalar::<f32>() > 0.0);
}

#[test]
fn bad_arguments_are_errors_naming_the_value() {
    let (_guard, device) = device();
    let mut rng = Rng(19);
    let x = rng.tensor([1, 3, 8, 8], &device);
    let w = rng.tensor([4, 2, 3, 3], &device);
    let options = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
    let e = wgconv_burn::try_conv2d(x.clone(), w, None, options.clone()).unwrap_err();
    assert!(
        e.to_string().contains('3') && e.to_string().contains('2'),
        "{e}"
    );
    let w = rng.tensor([4, 3, 3, 3], &device);
    let e =
        wgconv_burn::try_conv2d(x.clone(), w, Some(rng.tensor([5], &device)), options).unwrap_err();
    assert!(e.to_string().contains("5 elements"), "{e}");
    let asymmetric = MaxPoolOptions {
        padding: [(1, 0), (0, 0)],
        ..MaxPoolOptions::new([3, 3])
    };
    let e = wgconv_burn::try_max_pool2d_with_indices(x.clone(), asymmetric).unwrap_err();
    assert!(e.to_string().contains("asymmetric"), "{e}");
    let too_big = AvgPoolOptions::new([9, 9]);
    let e = wgconv_burn::try_avg_pool2d(x, too_big).unwrap_err();
    assert!(e.to_string().contains('9'), "{e}");
}

#[test]
fn sixteen_bit_burn_tensors_are_read_and_written_as_16_bit() {
    let (_guard, device) = device();
    let mut rng = Rng(23);
    let x = rng.tensor([2, 4, 9, 9], &device);
    let w = rng.tensor([6, 4, 3, 3], &device);
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    for (dtype, ulp) in [
        (burn::tensor::DType::F16, 2f64.powi(-10)),
        (burn::tensor::DType::BF16, 2f64.powi(-7)),
    ] {
        let (x16, w16) = (x.clone().cast(dtype), w.clone().cast(dtype));
        let y = wgconv_burn::conv2d(x16.clone(), w16.clone(), None, options.clone());
        assert_eq!(y.dtype(), dtype, "the output keeps the inputs' dtype");
        // The reference: burn's f32 conv of the same rounded inputs.
        let (x32, w32) = (
            x16.cast(burn::tensor::DType::F32),
            w16.cast(burn::tensor::DType::F32),
        );
        let want = host(module::conv2d(x32, w32, None, options.clone()));
        let got = host(y.cast(burn::tensor::DType::F32));
        let scale = want.iter().fold(1.0f64, |m, &v| m.max(f64::from(v).abs()));
        for (g, r) in got.iter().zip(&want) {
            let allowed = f64::from(r.abs()) * ulp + 1e-4 * scale;
            assert!(
                (f64::from(*g) - f64::from(*r)).abs() <= allowed,
                "{dtype:?}: {g} against {r}"
            );
        }
    }
}
