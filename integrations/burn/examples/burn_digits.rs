//! A small CNN trained with burn on the 8x8 digits (`data/digits.bin`, 1437 training and 360
//! test images) twice from the same initial weights: once with burn's own conv2d and pools,
//! once with wgconv's through `wgconv_burn`, inside burn's device, buffers and autodiff. Both
//! runs see the same batches in the same order; everything else (ReLU, the linear layer, the
//! loss, SGD with momentum) is burn's.
//!
//! conv 1→16 3x3 pad 1, ReLU → depthwise conv 16→16 3x3 pad 1 (groups 16), ReLU, max-pool 2 →
//! conv 16→32 1x1, ReLU, avg-pool 2 → linear 128→10, softmax cross-entropy; batch 64, SGD with
//! momentum 0.9, learning rate 0.05, 12 epochs.
//!
//! Prints both loss curves per epoch, both test accuracies and the mean step times (after the
//! first epoch, which compiles the kernels), and ends with
//! `burn-equivalence: steps=<n> max_loss_rel_diff=<x> wgconv_polls=<k>` (the largest relative
//! difference between the two runs' losses over their first `n` steps, and the device polls
//! wgconv made: 0, nothing is read back by wgconv). Exits 1 if the difference is above 1e-4,
//! wgconv polled, or either model ends below 0.95 test accuracy.
//!
//! ```text
//! WGPU_BACKEND=vulkan cargo run --release -p wgconv-burn --example burn_digits
//! ```

use std::time::Instant;

use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Int, Tensor, TensorData, module};

const EPOCHS: usize = 12;
const BATCH: usize = 64;
const LR: f64 = 0.05;
const MOMENTUM: f64 = 0.9;
/// The epochs over which the two runs' step losses are compared for the equivalence line.
/// Later, with the loss small, a ReLU or a max-pool decision that a last-bit difference flips
/// makes the two trajectories drift apart (to about 1e-2 relative by epoch 12), as any two
/// conv implementations that round differently do.
const EQUIVALENCE_EPOCHS: usize = 3;

/// The conv and pool functions a model runs: burn's or wgconv's.
struct Ops {
    name: &'static str,
    conv2d: fn(Tensor<4>, Tensor<4>, Option<Tensor<1>>, ConvOptions<2>) -> Tensor<4>,
    max_pool2d: fn(Tensor<4>, MaxPoolOptions<2>) -> Tensor<4>,
    avg_pool2d: fn(Tensor<4>, AvgPoolOptions<2>) -> Tensor<4>,
}

const BURN: Ops = Ops {
    name: "burn",
    conv2d: |x, w, b, options| module::conv2d(x, w, b, options),
    max_pool2d: module::max_pool2d,
    avg_pool2d: module::avg_pool2d,
};

const WGCONV: Ops = Ops {
    name: "wgconv",
    conv2d: |x, w, b, options| wgconv_burn::conv2d(x, w, b, options),
    max_pool2d: wgconv_burn::max_pool2d,
    avg_pool2d: wgconv_burn::avg_pool2d,
};

/// The model's parameters as host data: the same start for both runs.
#[derive(Clone)]
struct Init(Vec<(Vec<f32>, Vec<usize>)>);

/// Kaiming-uniform weights and zero biases from a fixed seed (SplitMix64).
fn init() -> Init {
    let mut state = 0u64;
    let mut uniform = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut weight = |shape: Vec<usize>, fan_in: usize| {
        let bound = (6.0 / fan_in as f32).sqrt();
        let n = shape.iter().product();
        ((0..n).map(|_| uniform() * bound).collect(), shape)
    };
    Init(vec![
        weight(vec![16, 1, 3, 3], 9),
        (vec![0.0; 16], vec![16]),
        weight(vec![16, 1, 3, 3], 9),
        (vec![0.0; 16], vec![16]),
        weight(vec![32, 16, 1, 1], 16),
        (vec![0.0; 32], vec![32]),
        weight(vec![128, 10], 128),
        (vec![0.0; 10], vec![10]),
    ])
}

/// The parameters on the device, as one list of flat tensors (reshaped where used).
struct Params(Vec<Tensor<1>>);

impl Params {
    fn new(init: &Init, device: &Device) -> Params {
        Params(
            init.0
                .iter()
                .map(|(data, _)| {
                    Tensor::from_data(TensorData::new(data.clone(), [data.len()]), device)
                })
                .collect(),
        )
    }
    fn w4(&self, i: usize, shape: [usize; 4]) -> Tensor<4> {
        self.0[i].clone().reshape(shape)
    }
}

/// The logits of `x` (`[n, 1, 8, 8]`).
fn forward(ops: &Ops, p: &Params, x: Tensor<4>) -> Tensor<2> {
    let same = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let x = relu((ops.conv2d)(
        x,
        p.w4(0, [16, 1, 3, 3]),
        Some(p.0[1].clone()),
        same,
    ));
    let depthwise = ConvOptions::new([1, 1], [1, 1], [1, 1], 16);
    let x = relu((ops.conv2d)(
        x,
        p.w4(2, [16, 1, 3, 3]),
        Some(p.0[3].clone()),
        depthwise,
    ));
    let x = (ops.max_pool2d)(x, MaxPoolOptions::new([2, 2]));
    let pointwise = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
    let x = relu((ops.conv2d)(
        x,
        p.w4(4, [32, 16, 1, 1]),
        Some(p.0[5].clone()),
        pointwise,
    ));
    let x = (ops.avg_pool2d)(x, AvgPoolOptions::new([2, 2]));
    let [n, ..] = x.dims();
    let x: Tensor<2> = x.reshape([n, 128]);
    x.matmul(p.0[6].clone().reshape([128, 10])) + p.0[7].clone().reshape([1, 10])
}

struct Digits {
    x: Vec<f32>,
    y: Vec<u8>,
}

/// `data/digits.bin` (format in `scripts/make_digits.py`): training and test splits,
/// standardised with the training split's mean and standard deviation.
fn digits() -> Result<(Digits, Digits), String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/digits.bin");
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    if bytes.len() < 24 || &bytes[..8] != b"WGDIGIT1" {
        return Err(format!("{path}: not a digits file"));
    }
    let header = |i: usize| u32::from_le_bytes(bytes[8 + 4 * i..12 + 4 * i].try_into().unwrap());
    let [n, n_train, h, w] = [0, 1, 2, 3].map(|i| header(i) as usize);
    if (h, w) != (8, 8) || bytes.len() != 24 + n * 65 || n_train > n {
        return Err(format!(
            "{path}: {} bytes are not {n} 8x8 images",
            bytes.len()
        ));
    }
    let pixels: Vec<f32> = bytes[24..24 + n * 64]
        .iter()
        .map(|&p| f32::from(p) / 16.0)
        .collect();
    let labels = &bytes[24 + n * 64..];
    let train = &pixels[..n_train * 64];
    let mean = train.iter().sum::<f32>() / train.len() as f32;
    let var = train.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / train.len() as f32;
    let std = var.sqrt().max(1e-6);
    let standard: Vec<f32> = pixels.iter().map(|v| (v - mean) / std).collect();
    Ok((
        Digits {
            x: standard[..n_train * 64].to_vec(),
            y: labels[..n_train].to_vec(),
        },
        Digits {
            x: standard[n_train * 64..].to_vec(),
            y: labels[n_train..].to_vec(),
        },
    ))
}

/// The batches of an epoch: a fixed permutation per epoch, the same for both runs.
fn batches(n: usize, epoch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = epoch as u64 + 1;
    for i in (1..n).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (state >> 33) as usize % (i + 1));
    }
    order.chunks(BATCH).map(<[usize]>::to_vec).collect()
}

fn gather(data: &Digits, idx: &[usize], device: &Device) -> (Tensor<4>, Tensor<2>) {
    let x: Vec<f32> = idx
        .iter()
        .flat_map(|&i| data.x[i * 64..i * 64 + 64].iter().copied())
        .collect();
    let mut onehot = vec![0.0f32; idx.len() * 10];
    for (row, &i) in idx.iter().enumerate() {
        onehot[row * 10 + data.y[i] as usize] = 1.0;
    }
    (
        Tensor::from_data(TensorData::new(x, [idx.len(), 1, 8, 8]), device),
        Tensor::from_data(TensorData::new(onehot, [idx.len(), 10]), device),
    )
}

fn accuracy(ops: &Ops, p: &Params, test: &Digits, device: &Device) -> f64 {
    let inner = Params(p.0.iter().map(|t| t.clone().inner()).collect());
    let idx: Vec<usize> = (0..test.y.len()).collect();
    let (x, _) = gather(test, &idx, device);
    let predicted: Tensor<1, Int> = forward(ops, &inner, x).argmax(1).reshape([test.y.len()]);
    let predicted = predicted
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .expect("ints");
    let correct = predicted
        .iter()
        .zip(&test.y)
        .filter(|(p, y)| **p == i64::from(**y))
        .count();
    correct as f64 / test.y.len() as f64
}

struct Run {
    losses: Vec<f32>,
    epoch_losses: Vec<f32>,
    accuracy: f64,
    step_ms: f64,
}

fn train(ops: &Ops, init: &Init, train: &Digits, test: &Digits, device: &Device) -> Run {
    let ad = device.clone().autodiff();
    let mut params = Params::new(init, &ad);
    let mut velocity: Vec<Tensor<1>> = params
        .0
        .iter()
        .map(|p| p.clone().inner().zeros_like())
        .collect();
    let (mut losses, mut epoch_losses) = (Vec::new(), Vec::new());
    let (mut seconds, mut timed_steps) = (0.0, 0);
    for epoch in 0..EPOCHS {
        let start = Instant::now();
        let mut sum = 0.0;
        let steps = batches(train.y.len(), epoch);
        for idx in &steps {
            let tracked = Params(params.0.iter().map(|p| p.clone().require_grad()).collect());
            let (x, onehot) = gather(train, idx, &ad);
            let logits = forward(ops, &tracked, x);
            let loss = (log_softmax(logits, 1) * onehot).sum().neg() / idx.len() as f64;
            let grads = loss.backward();
            for (i, p) in tracked.0.iter().enumerate() {
                let g = p.grad(&grads).expect("every parameter has a gradient");
                velocity[i] = velocity[i].clone() * MOMENTUM + g;
                params.0[i] = (p.clone().inner() - velocity[i].clone() * LR).autodiff();
            }
            let value = loss.into_scalar::<f32>();
            losses.push(value);
            sum += value;
        }
        device.sync().expect("burn's device");
        if epoch > 0 {
            seconds += start.elapsed().as_secs_f64();
            timed_steps += steps.len();
        }
        epoch_losses.push(sum / steps.len() as f32);
    }
    Run {
        step_ms: seconds * 1e3 / timed_steps as f64,
        accuracy: accuracy(ops, &params, test, device),
        losses,
        epoch_losses,
    }
}

fn main() {
    let device = wgconv_burn::init().unwrap_or_else(|e| {
        eprintln!("burn_digits: {e}");
        std::process::exit(2);
    });
    let gpu = wgconv_burn::gpu(&device).expect("registered by init");
    let (train_split, test_split) = digits().unwrap_or_else(|e| {
        eprintln!("burn_digits: {e}");
        std::process::exit(2);
    });
    let adapter = gpu.adapter_info();
    println!("adapter: {} ({:?})", adapter.name, adapter.backend);
    let init = init();
    let runs: Vec<Run> = [BURN, WGCONV]
        .iter()
        .map(|ops| {
            println!("training with {}'s convs and pools ...", ops.name);
            let polls = gpu.counters().polls;
            let run = train(ops, &init, &train_split, &test_split, &device);
            if ops.name == "wgconv" {
                let polled = gpu.counters().polls - polls;
                println!("wgconv polls during training: {polled}");
            }
            run
        })
        .collect();
    let polls = gpu.counters().polls;
    println!("epoch  loss(burn)  loss(wgconv)");
    for e in 0..EPOCHS {
        println!(
            "{e:5}  {:10.6}  {:12.6}",
            runs[0].epoch_losses[e], runs[1].epoch_losses[e]
        );
    }
    for (ops, run) in [BURN, WGCONV].iter().zip(&runs) {
        println!(
            "{}: test_accuracy={:.4} step_ms={:.2} ({} steps)",
            ops.name,
            run.accuracy,
            run.step_ms,
            run.losses.len()
        );
    }
    let rel = |a: f32, b: f32| f64::from((a - b).abs()) / f64::from(b.abs()).max(1e-12);
    let max_rel = |steps: usize| {
        (0..steps)
            .map(|i| rel(runs[1].losses[i], runs[0].losses[i]))
            .fold(0.0, f64::max)
    };
    let all = runs[0].losses.len();
    println!(
        "largest loss difference over all {all} steps: {:.2e} (the runs drift apart by rounding \
         once the loss is small)",
        max_rel(all)
    );
    let steps = EQUIVALENCE_EPOCHS * all / EPOCHS;
    let max_rel = max_rel(steps);
    println!(
        "burn-equivalence: steps={steps} max_loss_rel_diff={max_rel:.2e} wgconv_polls={polls}"
    );
    let ok = max_rel <= 1e-4 && polls == 0 && runs.iter().all(|r| r.accuracy >= 0.95);
    if !ok {
        eprintln!(
            "burn_digits: FAILED (need max_loss_rel_diff <= 1e-4, no polls, accuracy >= 0.95)"
        );
        std::process::exit(1);
    }
}
