//! Robustness of the GPU path (issue 7): device loss, readback failures and poll timeouts,
//! requests past the device's limits, a 2,000-call soak of the buffer pool, four threads on one
//! `Gpu`, NaN and Inf, and a fuzz over hostile specs. Shapes stay small: CI runs this on Mesa's
//! software drivers, Vulkan (lavapipe) and GL (llvmpipe). See docs/RELIABILITY.md.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Rng;
use common::*;
use ndarray::{Array, Array1, Array4, ArrayView1, Dimension, Ix1, Ix4};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use wgconv::compare::{GPU_TOLERANCE, compare};
use wgconv::reference::{self, direct};
use wgconv::{Algorithm, Conv2dSpec, Error, Gpu, IndexTensor, Padding2d, Pool2dSpec, Tensor};

// `Gpu` can be shared by threads (`Arc<Gpu>`), and tensors sent between them.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Gpu>();
    send_sync::<Tensor>();
    send_sync::<IndexTensor>();
    send_sync::<Error>();
};

/// A fresh `Gpu` (not the shared one: these tests destroy devices and count allocations).
fn fresh(builder: wgconv::GpuBuilder) -> Gpu {
    builder
        .build()
        .expect("a wgpu adapter (see tests/common for the drivers)")
}

fn dl4(gpu: &Gpu, t: &Tensor) -> Array4<f64> {
    f64s(
        &gpu.download(t)
            .unwrap()
            .into_dimensionality::<Ix4>()
            .unwrap(),
    )
}

fn bits(gpu: &Gpu, t: &Tensor) -> Vec<u32> {
    gpu.download(t)
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[track_caller]
fn close<D: Dimension>(got: &Array<f64, D>, want: &Array<f64, D>, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let c = compare(got.iter().copied(), want.iter().copied());
    assert!(
        c.passes(GPU_TOLERANCE),
        "{what}: max |gpu - ref| = {:e} (scale {}) at flat {}\n got {got:?}\nwant {want:?}",
        c.max_abs_err,
        c.scale,
        c.worst
    );
}

// ---------------------------------------------------------------------------------------------
// Device faults.

/// Inputs for every op, uploaded once.
struct Inputs {
    x: Tensor,
    w: Tensor,
    b: Tensor,
    dy: Tensor,
    pdy: Tensor,
    idx: IndexTensor,
    empty_x: Tensor,
    empty_dy: Tensor,
    spec: Conv2dSpec,
    pool: Pool2dSpec,
}

impl Inputs {
    fn new(gpu: &Gpu, n: usize, c: usize, hw: usize) -> Inputs {
        let mut rng = Rng::new(11);
        let spec = Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1));
        let pool = Pool2dSpec::new([2, 2]);
        let ph = hw / 2;
        Inputs {
            x: gpu.upload(&rng.array4_f32([n, c, hw, hw])).unwrap(),
            w: gpu.upload(&rng.array4_f32([c, c, 3, 3])).unwrap(),
            b: gpu.upload(&Array1::<f32>::ones(c)).unwrap(),
            dy: gpu.upload(&rng.array4_f32([n, c, hw, hw])).unwrap(),
            pdy: gpu.upload(&rng.array4_f32([n, c, ph, ph])).unwrap(),
            idx: gpu
                .upload_indices(&Array4::<u32>::zeros((n, c, ph, ph)))
                .unwrap(),
            empty_x: gpu.upload(&Array4::<f32>::zeros((0, c, hw, hw))).unwrap(),
            empty_dy: gpu.upload(&Array4::<f32>::zeros((0, c, hw, hw))).unwrap(),
            spec,
            pool,
        }
    }
}

/// Every public call on `gpu`, each reduced to `Ok(())` or its error, with a name.
fn every_call(gpu: &Gpu, t: &Inputs, made_before: &[&Tensor]) -> Vec<(String, wgconv::Result<()>)> {
    let hw = [t.x.shape()[2], t.x.shape()[3]];
    let ok = |r: wgconv::Result<Tensor>| r.map(|_| ());
    let mut out: Vec<(String, wgconv::Result<()>)> = vec![
        (
            "upload".into(),
            gpu.upload(&Array4::<f32>::ones((1, 1, 2, 2))).map(|_| ()),
        ),
        (
            "upload_indices".into(),
            gpu.upload_indices(&Array4::<u32>::ones((1, 1, 2, 2)))
                .map(|_| ()),
        ),
        (
            "download_indices".into(),
            gpu.download_indices(&t.idx).map(|_| ()),
        ),
        (
            "conv2d_forward".into(),
            ok(gpu.conv2d_forward(&t.x, &t.w, Some(&t.b), &t.spec)),
        ),
        (
            "conv2d_backward_input".into(),
            ok(gpu.conv2d_backward_input(&t.dy, &t.w, hw, &t.spec)),
        ),
        (
            "conv2d_backward_weight".into(),
            ok(gpu.conv2d_backward_weight(&t.x, &t.dy, [3, 3], &t.spec)),
        ),
        (
            "conv2d_backward_bias".into(),
            ok(gpu.conv2d_backward_bias(&t.dy)),
        ),
        (
            "max_pool2d_forward".into(),
            gpu.max_pool2d_forward(&t.x, &t.pool).map(|_| ()),
        ),
        (
            "max_pool2d_backward".into(),
            ok(gpu.max_pool2d_backward(&t.pdy, &t.idx, hw, &t.pool)),
        ),
        (
            "avg_pool2d_forward".into(),
            ok(gpu.avg_pool2d_forward(&t.x, &t.pool, true)),
        ),
        (
            "avg_pool2d_backward".into(),
            ok(gpu.avg_pool2d_backward(&t.pdy, hw, &t.pool, false)),
        ),
        (
            "conv2d_forward N=0".into(),
            ok(gpu.conv2d_forward(&t.empty_x, &t.w, None, &t.spec)),
        ),
        (
            "conv2d_backward_input N=0".into(),
            ok(gpu.conv2d_backward_input(&t.empty_dy, &t.w, hw, &t.spec)),
        ),
        (
            "conv2d_backward_weight N=0".into(),
            ok(gpu.conv2d_backward_weight(&t.empty_x, &t.empty_dy, [3, 3], &t.spec)),
        ),
        (
            "conv2d_backward_bias N=0".into(),
            ok(gpu.conv2d_backward_bias(&t.empty_dy)),
        ),
        (
            "max_pool2d_forward N=0".into(),
            gpu.max_pool2d_forward(&t.empty_x, &t.pool).map(|_| ()),
        ),
        (
            "avg_pool2d_forward N=0".into(),
            ok(gpu.avg_pool2d_forward(&t.empty_x, &t.pool, false)),
        ),
        ("synchronize".into(), gpu.synchronize()),
    ];
    for (i, tensor) in made_before.iter().enumerate() {
        out.push((
            format!("download of tensor {i} made before the loss"),
            gpu.download(tensor).map(|_| ()),
        ));
    }
    out.push((
        "download of the input x".into(),
        gpu.download(&t.x).map(|_| ()),
    ));
    out
}

/// Destroyed while idle: every call, including downloads of tensors computed before, returns
/// `Err(DeviceLost)`; none hands back data.
#[test]
fn destroyed_device_fails_every_call() {
    let gpu = fresh(Gpu::builder());
    let t = Inputs::new(&gpu, 2, 3, 8);
    let y = gpu.conv2d_forward(&t.x, &t.w, Some(&t.b), &t.spec).unwrap();
    let (py, _) = gpu.max_pool2d_forward(&t.x, &t.pool).unwrap();
    // Everything works before.
    for (name, r) in every_call(&gpu, &t, &[&y, &py]) {
        assert!(r.is_ok(), "{name} before the loss: {r:?}");
    }
    gpu.synchronize().unwrap();
    gpu.device().destroy();
    for round in 0..2 {
        for (name, r) in every_call(&gpu, &t, &[&y, &py]) {
            assert!(
                matches!(r, Err(Error::DeviceLost(_))),
                "{name} after the loss (round {round}): {r:?}"
            );
        }
    }
}

/// Destroyed with work in flight: wgpu reports the loss only once the queue drains, and until
/// then silently drops every call. Every call must still fail (no `Ok` tensor, no data), and the
/// loss is reported as `DeviceLost` once the queue has drained.
#[test]
fn device_destroyed_with_work_in_flight_fails_every_call() {
    let gpu = fresh(Gpu::builder());
    let t = Inputs::new(&gpu, 4, 8, 24);
    let mut made = Vec::new();
    for _ in 0..4 {
        made.push(gpu.conv2d_forward(&t.x, &t.w, Some(&t.b), &t.spec).unwrap());
        made.push(
            gpu.conv2d_backward_weight(&t.x, &t.dy, [3, 3], &t.spec)
                .unwrap(),
        );
    }
    gpu.device().destroy();
    let made_refs: Vec<&Tensor> = made.iter().collect();
    for (name, r) in every_call(&gpu, &t, &made_refs) {
        assert!(r.is_err(), "{name} after the loss: {r:?}");
    }
    let start = Instant::now();
    loop {
        match gpu.synchronize() {
            Err(Error::DeviceLost(_)) => break,
            other => assert!(
                start.elapsed() < Duration::from_secs(60),
                "loss never reported: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for (name, r) in every_call(&gpu, &t, &made_refs) {
        assert!(
            matches!(r, Err(Error::DeviceLost(_))),
            "{name} once drained: {r:?}"
        );
    }
}

/// A tensor whose wgpu buffer is destroyed under it (through `Tensor::buffer`): its download
/// and the ops reading it fail with `Err(Wgpu)`, and the buffer is not recycled afterwards (it
/// would fail every later request of its size).
#[test]
fn destroyed_tensor_buffer_fails_and_does_not_poison_the_pool() {
    let gpu = fresh(Gpu::builder());
    let x = gpu.upload(&Array4::<f32>::ones((1, 2, 6, 6))).unwrap();
    x.buffer().unwrap().destroy();
    let e = gpu.download(&x).unwrap_err();
    assert!(matches!(e, Error::Wgpu { .. }), "{e}");
    let e = gpu
        .avg_pool2d_forward(&x, &Pool2dSpec::new([2, 2]), true)
        .unwrap_err();
    assert!(matches!(e, Error::Wgpu { .. }), "{e}");
    drop(x);
    for i in 0..4 {
        let v = 1.0 + i as f32;
        let y = gpu
            .upload(&Array4::<f32>::from_elem((1, 2, 6, 6), v))
            .unwrap_or_else(|e| panic!("upload {i} after the destroyed buffer: {e}"));
        let p = gpu
            .avg_pool2d_forward(&y, &Pool2dSpec::new([2, 2]), true)
            .unwrap();
        assert!(gpu.download(&y).unwrap().iter().all(|&a| a == v));
        assert!(gpu.download(&p).unwrap().iter().all(|&a| a == v));
    }
}

/// A download whose source buffer was destroyed while the copy was queued: `Err`, never data.
#[test]
fn buffer_destroyed_after_an_op_was_queued() {
    let gpu = fresh(Gpu::builder());
    let x = gpu.upload(&Array4::<f32>::ones((2, 3, 16, 16))).unwrap();
    let w = gpu.upload(&Array4::<f32>::ones((3, 3, 3, 3))).unwrap();
    let y = gpu
        .conv2d_forward(&x, &w, None, &Conv2dSpec::new())
        .unwrap();
    y.buffer().unwrap().destroy();
    let r = gpu.download(&y);
    assert!(matches!(r, Err(Error::Wgpu { .. })), "{r:?}");
    // The Gpu carries on.
    let y = gpu
        .conv2d_forward(&x, &w, None, &Conv2dSpec::new())
        .unwrap();
    assert!(gpu.download(&y).unwrap().iter().all(|&v| v == 27.0));
}

/// Enough queued work to outlast a short poll timeout on a software driver.
fn queue_heavy_work(gpu: &Gpu) -> (Vec<Tensor>, f32) {
    let (c, hw) = (16, 32);
    let x = gpu.upload(&Array4::<f32>::ones((4, c, hw, hw))).unwrap();
    let w = gpu.upload(&Array4::<f32>::ones((c, c, 3, 3))).unwrap();
    let outs = (0..6)
        .map(|_| {
            gpu.conv2d_forward(&x, &w, None, &Conv2dSpec::new())
                .unwrap()
        })
        .collect();
    (outs, (c * 9) as f32)
}

/// With a 1 ns poll timeout a download of long-running work either completes with the right
/// values or returns `Err(Readback)`, promptly: never a hang, a panic or partial data; and the
/// Gpu recovers.
#[test]
fn tiny_poll_timeout_completes_or_errs_and_recovers() {
    let gpu = fresh(Gpu::builder().poll_timeout(Duration::from_nanos(1)));
    let (outs, want) = queue_heavy_work(&gpu);
    let mut timed_out = 0;
    for y in &outs {
        let start = Instant::now();
        match gpu.download(y) {
            Ok(a) => assert!(a.iter().all(|&v| v == want), "partial data"),
            Err(Error::Readback(msg)) => {
                timed_out += 1;
                assert!(msg.contains("1ns"), "{msg}");
            }
            Err(e) => panic!("unexpected error {e}"),
        }
        // Bounded by the GPU work already queued (software drivers may run it in the call).
        assert!(start.elapsed() < Duration::from_secs(120));
    }
    // Recovery: with the timeout raised at run time, every tensor downloads with the right
    // values at the first try, including those whose readback timed out (their staging
    // buffers, whose maps were left pending, must not come back from the pool).
    gpu.set_poll_timeout(Duration::from_secs(60));
    assert_eq!(gpu.poll_timeout(), Duration::from_secs(60));
    for _ in 0..2 {
        for (i, y) in outs.iter().enumerate() {
            let a = gpu
                .download(y)
                .unwrap_or_else(|e| panic!("tensor {i} after the timeouts: {e}"));
            assert!(a.iter().all(|&v| v == want), "tensor {i}: wrong data");
        }
    }
    eprintln!(
        "1 ns poll timeout: {timed_out} of {} downloads timed out; afterwards all downloaded",
        outs.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Memory.

/// Requests past the device's `max_buffer_size` are refused with `Err` before wgpu is asked for
/// a buffer (the pool's allocation count does not move), and the Gpu carries on.
#[test]
fn requests_past_max_buffer_size_are_refused_before_wgpu() {
    let gpu = fresh(Gpu::builder());
    let max = gpu.limits().max_buffer_size;
    let allocs = gpu.pool_stats().allocations;
    let past = usize::try_from(max / 4 + 1).unwrap();
    let is_limit = |e: &Error| matches!(e, Error::DeviceLimit(_) | Error::Overflow(_));

    // Uploads of broadcast views: huge shapes, one element of host memory, never materialised.
    let one = Array1::<f32>::ones(1);
    let e = gpu.upload(&one.broadcast(past).unwrap()).unwrap_err();
    assert!(matches!(e, Error::DeviceLimit(_)), "{e}");
    assert!(e.to_string().contains("max_buffer_size"), "{e}");
    let e = gpu
        .upload(&one.broadcast((1 << 31, 1 << 31)).unwrap())
        .unwrap_err();
    assert!(matches!(e, Error::Overflow(_)), "{e}");
    let ones = Array1::<u32>::ones(1);
    let e = gpu
        .upload_indices(&ones.broadcast(past).unwrap())
        .unwrap_err();
    assert!(matches!(e, Error::DeviceLimit(_)), "{e}");

    // Op outputs past the limit from tiny inputs and a hostile padding or size.
    let side = ((max / 4) as f64).sqrt() as usize + 2;
    let pad = side / 2;
    let one4 = gpu.upload(&Array4::<f32>::ones((1, 1, 1, 1))).unwrap();
    let spec = Conv2dSpec::new().with_padding(Padding2d::symmetric(pad, pad));
    let e = gpu.conv2d_forward(&one4, &one4, None, &spec).unwrap_err();
    assert!(is_limit(&e), "{e}");
    let e = gpu
        .conv2d_backward_weight(&one4, &one4, [2 * pad + 1, 2 * pad + 1], &spec)
        .unwrap_err();
    assert!(is_limit(&e), "{e}");
    let big = Conv2dSpec::new().with_stride([side, side]);
    let e = gpu
        .conv2d_backward_input(&one4, &one4, [side, side], &big)
        .unwrap_err();
    assert!(is_limit(&e), "{e}");
    let pool = Pool2dSpec::new([side, side]);
    let e = gpu
        .avg_pool2d_backward(&one4, [side, side], &pool, true)
        .unwrap_err();
    assert!(is_limit(&e), "{e}");
    let idx = gpu
        .upload_indices(&Array4::<u32>::zeros((1, 1, 1, 1)))
        .unwrap();
    let e = gpu
        .max_pool2d_backward(&one4, &idx, [side, side], &pool)
        .unwrap_err();
    assert!(is_limit(&e), "{e}");
    // The two 1-element uploads took buffers; nothing else did.
    assert_eq!(gpu.pool_stats().allocations, allocs + 2);
    let y = gpu
        .conv2d_forward(&one4, &one4, None, &Conv2dSpec::new())
        .unwrap();
    assert_eq!(
        gpu.download(&y)
            .unwrap()
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        [1.0]
    );
}

/// 2,000 mixed calls of all eight ops over three shapes, outputs dropped as they go: after a
/// warm-up the pool allocates nothing more and holds the same bytes, and recycled buffers never
/// leak stale data (every checked result is bitwise the first one).
#[test]
fn soak_2000_mixed_calls_keep_the_pool_flat() {
    let gpu = fresh(Gpu::builder());
    let mut rng = Rng::new(2000);
    struct Case {
        x: Tensor,
        w: Tensor,
        b: Tensor,
        dy: Tensor,
        hw: [usize; 2],
        khw: [usize; 2],
        spec: Conv2dSpec,
        pool: Pool2dSpec,
    }
    let shapes = [
        (
            [2, 4, 12, 12],
            [6, 4, 3, 3],
            Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1)),
            Pool2dSpec::new([2, 2]),
        ),
        (
            [1, 3, 9, 7],
            [6, 1, 3, 3],
            Conv2dSpec::new().with_stride([2, 2]).with_groups(3),
            Pool2dSpec::new([3, 3])
                .with_stride([2, 2])
                .with_padding([1, 1]),
        ),
        (
            [3, 2, 8, 8],
            [5, 2, 1, 1],
            Conv2dSpec::new().with_dilation([2, 2]),
            Pool2dSpec::new([2, 3]).with_ceil_mode(true),
        ),
    ];
    let cases: Vec<Case> = shapes
        .iter()
        .map(|&(xs, ws, spec, pool)| {
            let [oh, ow] = spec.output_hw([xs[2], xs[3]], [ws[2], ws[3]]).unwrap();
            Case {
                x: gpu.upload(&rng.array4_f32(xs)).unwrap(),
                w: gpu.upload(&rng.array4_f32(ws)).unwrap(),
                b: gpu.upload(&Array1::from_elem(ws[0], 0.5f32)).unwrap(),
                dy: gpu.upload(&rng.array4_f32([xs[0], ws[0], oh, ow])).unwrap(),
                hw: [xs[2], xs[3]],
                khw: [ws[2], ws[3]],
                spec,
                pool,
            }
        })
        .collect();
    // One call of op `op` on case `c`; returns the output's bits when `check`.
    let call = |c: &Case, op: usize, check: bool| -> Option<Vec<u32>> {
        let t = match op {
            0 => gpu.conv2d_forward(&c.x, &c.w, Some(&c.b), &c.spec).unwrap(),
            1 => gpu
                .conv2d_backward_input(&c.dy, &c.w, c.hw, &c.spec)
                .unwrap(),
            2 => gpu
                .conv2d_backward_weight(&c.x, &c.dy, c.khw, &c.spec)
                .unwrap(),
            3 => gpu.conv2d_backward_bias(&c.dy).unwrap(),
            4 => gpu.max_pool2d_forward(&c.x, &c.pool).unwrap().0,
            5 => {
                let (y, i) = gpu.max_pool2d_forward(&c.x, &c.pool).unwrap();
                gpu.max_pool2d_backward(&y, &i, c.hw, &c.pool).unwrap()
            }
            6 => gpu.avg_pool2d_forward(&c.x, &c.pool, true).unwrap(),
            _ => {
                let y = gpu.avg_pool2d_forward(&c.x, &c.pool, false).unwrap();
                gpu.avg_pool2d_backward(&y, c.hw, &c.pool, false).unwrap()
            }
        };
        check.then(|| bits(&gpu, &t))
    };
    let start_stats = gpu.pool_stats();
    let mut calls = 0;
    let mut first: Vec<Vec<u32>> = Vec::new();
    // Warm-up: two rounds of every op on every case, with the checked downloads.
    for round in 0..2 {
        for c in &cases {
            for op in 0..8 {
                let r = call(c, op, true).unwrap();
                calls += 1 + (op == 5 || op == 7) as usize;
                if round == 0 {
                    first.push(r);
                }
            }
        }
    }
    gpu.synchronize().unwrap();
    let warm = gpu.pool_stats();
    let mut round = 0;
    while calls < 2000 {
        round += 1;
        let check = round % 10 == 0;
        let mut k = 0;
        for c in &cases {
            for op in 0..8 {
                if let Some(r) = call(c, op, check) {
                    assert_eq!(r, first[k], "round {round}: case result {k} changed");
                }
                k += 1;
                calls += 1 + (op == 5 || op == 7) as usize;
            }
        }
        if check {
            gpu.synchronize().unwrap();
            let s = gpu.pool_stats();
            assert_eq!(s.allocations, warm.allocations, "round {round}: {s:?}");
            assert_eq!(s.held_bytes, warm.held_bytes, "round {round}: {s:?}");
        }
    }
    gpu.synchronize().unwrap();
    let end = gpu.pool_stats();
    eprintln!(
        "soak: {calls} op calls; at start {start_stats:?}; after warm-up {warm:?}; at end {end:?}"
    );
    assert_eq!(end.allocations, warm.allocations, "allocations grew");
    assert_eq!(end.held_bytes, warm.held_bytes, "held bytes changed");
    assert!(end.reuses > warm.reuses + 2000, "{end:?}");
}

// ---------------------------------------------------------------------------------------------
// Threads.

/// A fixed piece of work touching all eight ops, uploads and downloads; returns every output's
/// bits.
fn work(gpu: &Gpu, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed);
    let spec = Conv2dSpec::new()
        .with_stride([2, 1])
        .with_padding(Padding2d::symmetric(1, 1))
        .with_groups(2);
    let pool = Pool2dSpec::new([3, 3])
        .with_stride([2, 2])
        .with_padding([1, 1]);
    let x = gpu.upload(&rng.array4_f32([2, 4, 11, 9])).unwrap();
    let w = gpu.upload(&rng.array4_f32([6, 2, 3, 3])).unwrap();
    let b = gpu
        .upload(&Array1::from_shape_fn(6, |i| i as f32 / 4.0))
        .unwrap();
    let dy = gpu.upload(&rng.array4_f32([2, 6, 6, 9])).unwrap();
    let (py, pi) = gpu.max_pool2d_forward(&x, &pool).unwrap();
    let ay = gpu.avg_pool2d_forward(&x, &pool, true).unwrap();
    vec![
        bits(gpu, &gpu.conv2d_forward(&x, &w, Some(&b), &spec).unwrap()),
        bits(
            gpu,
            &gpu.conv2d_backward_input(&dy, &w, [11, 9], &spec).unwrap(),
        ),
        bits(
            gpu,
            &gpu.conv2d_backward_weight(&x, &dy, [3, 3], &spec).unwrap(),
        ),
        bits(gpu, &gpu.conv2d_backward_bias(&dy).unwrap()),
        bits(gpu, &py),
        gpu.download_indices(&pi).unwrap().iter().copied().collect(),
        bits(
            gpu,
            &gpu.max_pool2d_backward(&py, &pi, [11, 9], &pool).unwrap(),
        ),
        bits(gpu, &ay),
        bits(
            gpu,
            &gpu.avg_pool2d_backward(&ay, [11, 9], &pool, true).unwrap(),
        ),
    ]
}

/// Four threads issuing ops at once on one shared `Gpu` get the same bits as one thread doing
/// the same work in turn.
#[test]
fn four_threads_on_one_gpu_match_one_thread() {
    let gpu = Arc::new(fresh(Gpu::builder().poison_outputs(true)));
    let seeds = [1u64, 2, 3, 4];
    let rounds = 5;
    let serial: Vec<Vec<Vec<u32>>> = seeds.iter().map(|&s| work(&gpu, s)).collect();
    let handles: Vec<_> = seeds
        .iter()
        .map(|&s| {
            let gpu = Arc::clone(&gpu);
            std::thread::spawn(move || (0..rounds).map(|_| work(&gpu, s)).collect::<Vec<_>>())
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let results = h.join().expect("thread panicked");
        for (r, got) in results.iter().enumerate() {
            assert_eq!(
                got, &serial[i],
                "thread {i}, round {r}: differs from the serial run"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// NaN and Inf.

/// `mask[i]` iff `a[i]` is not finite.
fn nonfinite<D: Dimension>(a: &Array<f64, D>) -> Vec<bool> {
    a.iter().map(|v| !v.is_finite()).collect()
}

/// `mask[i]` iff `a[i] != 0`.
fn nonzero<D: Dimension>(a: &Array<f64, D>) -> Vec<bool> {
    a.iter().map(|&v| v != 0.0).collect()
}

/// An array of `shape` with values in ±[0.5, 1.5] (never zero), and `bad` at `at`.
fn spiked(rng: &mut Rng, shape: [usize; 4], at: Option<[usize; 4]>, bad: f64) -> Array4<f64> {
    let mut a = Array4::from_shape_simple_fn(shape, || {
        let u = rng.unit();
        (u.abs() + 0.5).copysign(u)
    });
    if let Some(at) = at {
        a[at] = bad;
    }
    a
}

/// 1 at `at`, else 0.
fn indicator(shape: [usize; 4], at: [usize; 4]) -> Array4<f64> {
    let mut a = Array4::zeros(shape);
    a[at] = 1.0;
    a
}

/// A NaN or ±Inf in x, w, bias or dy makes non-finite exactly the outputs whose windows (or
/// reductions) include it, on the GPU as in the reference; the rest stay finite and correct.
#[test]
fn conv_propagates_nan_and_inf_exactly_through_windows() {
    let mut fails = Vec::new();
    for algorithm in [Algorithm::Tiled, Algorithm::Direct] {
        let gpu = fresh(Gpu::builder().algorithm(algorithm).poison_outputs(true));
        fails.extend(conv_nan_inf(&gpu, &format!("{algorithm:?}")));
    }
    assert!(
        fails.is_empty(),
        "{} failures:\n{}",
        fails.len(),
        fails.join("\n")
    );
}

fn conv_nan_inf(gpu: &Gpu, algo: &str) -> Vec<String> {
    let mut fails = Vec::new();
    let mut rng = Rng::new(404);
    let cases = [
        (
            [2, 4, 7, 6],
            [4, 2, 3, 3],
            Conv2dSpec {
                stride: [2, 1],
                padding: Padding2d {
                    top: 1,
                    bottom: 0,
                    left: 2,
                    right: 1,
                },
                dilation: [1, 2],
                groups: 2,
            },
        ),
        (
            [1, 3, 6, 6],
            [2, 3, 2, 2],
            Conv2dSpec::new().with_stride([3, 3]),
        ),
    ];
    let ones_w = |ws: [usize; 4]| Array4::<f64>::ones(ws);
    for (ci, (xs, ws, spec)) in cases.into_iter().enumerate() {
        let [oh, ow] = spec.output_hw([xs[2], xs[3]], [ws[2], ws[3]]).unwrap();
        let ys = [xs[0], ws[0], oh, ow];
        let (hw, khw) = ([xs[2], xs[3]], [ws[2], ws[3]]);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            for &(where_, at) in &[
                ("x", [1 % xs[0], 1, 2, 3]),
                ("x", [0, 0, 0, 0]),
                ("x", [xs[0] - 1, xs[1] - 1, xs[2] - 1, xs[3] - 1]),
                ("w", [1, 0, 1, 0]),
                ("bias", [1, 0, 0, 0]),
                ("dy", [0, 1, 1, 0]),
                ("dy", [ys[0] - 1, ys[1] - 1, ys[2] - 1, ys[3] - 1]),
            ] {
                let what = format!("{algo} case {ci}, {bad} in {where_} at {at:?}");
                let x = spiked(&mut rng, xs, (where_ == "x").then_some(at), bad);
                let w = spiked(&mut rng, ws, (where_ == "w").then_some(at), bad);
                let dy = spiked(&mut rng, ys, (where_ == "dy").then_some(at), bad);
                let mut b = Array1::from_elem(ws[0], 0.25);
                if where_ == "bias" {
                    b[at[0]] = bad;
                }
                let (xf, wf, dyf, bf) = (f32s(&x), f32s(&w), f32s(&dy), f32s(&b));
                // Round-trip the inputs through f32 so that the reference sees the GPU's inputs.
                let (x, w, dy, b) = (f64s(&xf), f64s(&wf), f64s(&dyf), f64s(&bf));
                let (xt, wt, dyt, bt) = (
                    gpu.upload(&xf).unwrap(),
                    gpu.upload(&wf).unwrap(),
                    gpu.upload(&dyf).unwrap(),
                    gpu.upload(&bf).unwrap(),
                );

                // Forward.
                let y_ref =
                    reference::conv2d_forward(x.view(), w.view(), Some(b.view()), &spec).unwrap();
                let y = dl4(
                    gpu,
                    &gpu.conv2d_forward(&xt, &wt, Some(&bt), &spec).unwrap(),
                );
                let reach = match where_ {
                    "x" => nonzero(
                        &reference::conv2d_forward(
                            indicator(xs, at).view(),
                            ones_w(ws).view(),
                            None,
                            &spec,
                        )
                        .unwrap(),
                    ),
                    // Every output of the channel: taps over the zero padding multiply
                    // 0 x NaN = NaN (and 0 x Inf = NaN), as in PyTorch.
                    "w" | "bias" => (0..y_ref.len())
                        .map(|i| (i / (oh * ow)) % ws[0] == at[0])
                        .collect(),
                    _ => vec![false; y_ref.len()],
                };
                check_mask(
                    &mut fails,
                    &nonfinite(&y_ref),
                    &reach,
                    &format!("{what}: reference forward"),
                );
                let y_direct =
                    direct::conv2d_forward(x.view(), w.view(), Some(b.view()), &spec).unwrap();
                check_mask(
                    &mut fails,
                    &nonfinite(&y_direct),
                    &reach,
                    &format!("{what}: direct reference forward"),
                );
                check_mask(
                    &mut fails,
                    &nonfinite(&y),
                    &reach,
                    &format!("{what}: GPU forward"),
                );
                check_close(&mut fails, &y, &y_ref, &format!("{what}: forward"));
                if bad.is_nan() && !y.iter().zip(&reach).all(|(v, &r)| !r || v.is_nan()) {
                    fails.push(format!("{what}: an output reached by the NaN is not NaN"));
                }

                // dx: reached from dy (NaN/Inf in dy) or w.
                let dx_ref =
                    reference::conv2d_backward_input(dy.view(), w.view(), hw, &spec).unwrap();
                let dx = dl4(
                    gpu,
                    &gpu.conv2d_backward_input(&dyt, &wt, hw, &spec).unwrap(),
                );
                let reach = match where_ {
                    "dy" => nonzero(
                        &reference::conv2d_backward_input(
                            indicator(ys, at).view(),
                            ones_w(ws).view(),
                            hw,
                            &spec,
                        )
                        .unwrap(),
                    ),
                    "w" => nonzero(
                        &reference::conv2d_backward_input(
                            Array4::ones(ys).view(),
                            indicator(ws, at).view(),
                            hw,
                            &spec,
                        )
                        .unwrap(),
                    ),
                    _ => vec![false; dx_ref.len()],
                };
                check_mask(
                    &mut fails,
                    &nonfinite(&dx_ref),
                    &reach,
                    &format!("{what}: reference dx"),
                );
                // The implicit-GEMM dx (the tiled algorithm, which this case's channel counts
                // select) multiplies the zero border of dy like every other A element, so a
                // non-finite weight w[k, c, i, j] reaches every input position of channel
                // g*cg + c in the stride phase that tap (i, j) serves, also where the tap's
                // output row falls outside dy. The col2im reference skips those products.
                let reach_gpu = if where_ == "w" && algo == "Tiled" {
                    let (cg, kg) = (ws[1], ws[0] / spec.groups);
                    let ch = (at[0] / kg) * cg + at[1];
                    let serves = |pos: usize, pad: usize, tap: usize, d: usize, s: usize| {
                        (pos + pad) % s == (tap * d) % s
                    };
                    ndarray::indices(xs)
                        .into_iter()
                        .map(|(_, c, ih, iw)| {
                            c == ch
                                && serves(
                                    ih,
                                    spec.padding.top,
                                    at[2],
                                    spec.dilation[0],
                                    spec.stride[0],
                                )
                                && serves(
                                    iw,
                                    spec.padding.left,
                                    at[3],
                                    spec.dilation[1],
                                    spec.stride[1],
                                )
                        })
                        .collect()
                } else {
                    reach.clone()
                };
                check_mask(
                    &mut fails,
                    &nonfinite(&dx),
                    &reach_gpu,
                    &format!("{what}: GPU dx"),
                );
                if reach_gpu == reach {
                    check_close(&mut fails, &dx, &dx_ref, &format!("{what}: dx"));
                } else {
                    // Everywhere both are finite they agree.
                    let keep = |a: &Array4<f64>| {
                        a.iter()
                            .zip(&reach_gpu)
                            .map(|(&v, &r)| if r { 0.0 } else { v })
                            .collect::<Vec<f64>>()
                    };
                    let c = compare(keep(&dx), keep(&dx_ref));
                    if !c.passes(GPU_TOLERANCE) {
                        fails.push(format!("{what}: dx off the reached positions: {c:?}"));
                    }
                }

                // dW: reached from x or dy.
                let dw_ref =
                    reference::conv2d_backward_weight(x.view(), dy.view(), khw, &spec).unwrap();
                let dw = dl4(
                    gpu,
                    &gpu.conv2d_backward_weight(&xt, &dyt, khw, &spec).unwrap(),
                );
                let reach = match where_ {
                    "x" => nonzero(
                        &reference::conv2d_backward_weight(
                            indicator(xs, at).view(),
                            Array4::ones(ys).view(),
                            khw,
                            &spec,
                        )
                        .unwrap(),
                    ),
                    // Every tap of the channel (padding zeros again).
                    "dy" => (0..dw_ref.len())
                        .map(|i| i / (ws[1] * ws[2] * ws[3]) == at[1])
                        .collect(),
                    _ => vec![false; dw_ref.len()],
                };
                check_mask(
                    &mut fails,
                    &nonfinite(&dw_ref),
                    &reach,
                    &format!("{what}: reference dW"),
                );
                let dw_direct =
                    direct::conv2d_backward_weight(x.view(), dy.view(), khw, &spec).unwrap();
                check_mask(
                    &mut fails,
                    &nonfinite(&dw_direct),
                    &reach,
                    &format!("{what}: direct reference dW"),
                );
                check_mask(
                    &mut fails,
                    &nonfinite(&dw),
                    &reach,
                    &format!("{what}: GPU dW"),
                );
                check_close(&mut fails, &dw, &dw_ref, &format!("{what}: dW"));

                // db: the channel of a bad dy.
                let db_ref = reference::conv2d_backward_bias(dy.view());
                let db = f64s(
                    &gpu.download(&gpu.conv2d_backward_bias(&dyt).unwrap())
                        .unwrap()
                        .into_dimensionality::<Ix1>()
                        .unwrap(),
                );
                let reach: Vec<bool> = (0..ws[0]).map(|k| where_ == "dy" && k == at[1]).collect();
                check_mask(
                    &mut fails,
                    &nonfinite(&db_ref),
                    &reach,
                    &format!("{what}: reference db"),
                );
                check_mask(
                    &mut fails,
                    &nonfinite(&db),
                    &reach,
                    &format!("{what}: GPU db"),
                );
                check_close(&mut fails, &db, &db_ref, &format!("{what}: db"));
            }
        }
    }
    fails
}

/// Records where `got` and `want` (non-finite masks) differ.
fn check_mask(fails: &mut Vec<String>, got: &[bool], want: &[bool], what: &str) {
    let diff: Vec<usize> = (0..want.len()).filter(|&i| got[i] != want[i]).collect();
    if !diff.is_empty() {
        fails.push(format!(
            "{what}: non-finite at the wrong {} of {} positions (first flat {:?}; non-finite \
             {} got, {} expected)",
            diff.len(),
            want.len(),
            &diff[..diff.len().min(6)],
            got.iter().filter(|&&b| b).count(),
            want.iter().filter(|&&b| b).count()
        ));
    }
}

fn check_close<D: Dimension>(
    fails: &mut Vec<String>,
    got: &Array<f64, D>,
    want: &Array<f64, D>,
    what: &str,
) {
    let c = compare(got.iter().copied(), want.iter().copied());
    if !c.passes(GPU_TOLERANCE) {
        fails.push(format!(
            "{what}: max |gpu - ref| = {:e} at flat {}",
            c.max_abs_err, c.worst
        ));
    }
}

/// Max-pool follows PyTorch: a NaN wins its window and its (last) index is reported, +Inf wins
/// at its first occurrence, an all -Inf window gives -Inf at its first in-bounds element (never
/// the padding); backward routes dy (NaN included) to those indices. GPU and reference agree.
#[test]
fn max_pool_nan_and_inf_follow_pytorch() {
    let gpu = gpu();
    let (nan, inf) = (f64::NAN, f64::INFINITY);
    #[rustfmt::skip]
    let plane = [
        1.0, nan, -inf, -inf,
        3.0, nan, -inf, -inf,
        inf, 5.0, nan, inf,
        inf, 2.0, 7.0, -inf,
    ];
    #[rustfmt::skip]
    let padded_plane = [
        -inf, -inf, -inf, -inf,
        -inf, -inf, -inf, -inf,
        -inf, -inf, 4.0, -inf,
        -inf, -inf, -inf, nan,
    ];
    type Case<'a> = (&'a [f64], Pool2dSpec, Vec<f64>, Vec<u32>);
    let cases: [Case; 3] = [
        // NaN wins at its last occurrence even after +Inf; +Inf at its first; -Inf windows
        // report their first element.
        (
            &plane,
            Pool2dSpec::new([2, 2]),
            vec![nan, -inf, inf, nan],
            vec![5, 2, 8, 10],
        ),
        // Windows overhanging the padding: an all -Inf window reports its first in-bounds
        // element, never a padding position.
        (
            &padded_plane,
            Pool2dSpec::new([3, 3])
                .with_stride([2, 2])
                .with_padding([1, 1]),
            vec![-inf, -inf, -inf, nan],
            vec![0, 1, 4, 15],
        ),
        // Dilated windows: the scan order decides.
        (
            &plane,
            Pool2dSpec::new([2, 2])
                .with_stride([1, 2])
                .with_dilation([2, 1]),
            vec![nan, nan, nan, 7.0],
            vec![1, 10, 5, 14],
        ),
    ];
    for (data, spec, want_y, want_i) in cases {
        let what = format!("{spec:?}");
        let x = Array4::from_shape_vec((1, 1, 4, 4), data.to_vec()).unwrap();
        let (y_ref, i_ref) = reference::max_pool2d_forward(x.view(), &spec).unwrap();
        let xt = gpu.upload(&f32s(&x)).unwrap();
        let (yt, it) = gpu.max_pool2d_forward(&xt, &spec).unwrap();
        let y = dl4(gpu, &yt);
        let i = gpu.download_indices(&it).unwrap();
        let want = Array4::from_shape_vec(y_ref.dim(), want_y).unwrap();
        close(&y_ref, &want, &format!("{what}: reference values"));
        close(&y, &want, &format!("{what}: GPU values"));
        assert_eq!(
            i_ref.iter().copied().collect::<Vec<_>>(),
            want_i,
            "{what}: reference indices"
        );
        assert_eq!(
            i.iter().copied().collect::<Vec<_>>(),
            want_i,
            "{what}: GPU indices"
        );
        // Backward: dy (a NaN included) lands on the reported indices.
        let mut dy = Array4::from_shape_fn(y_ref.dim(), |(_, _, a, b)| (1 + a * 2 + b) as f64);
        dy[[0, 0, 0, 0]] = nan;
        let dx_ref =
            reference::max_pool2d_backward(dy.view(), i_ref.view(), [4, 4], &spec).unwrap();
        let dx = dl4(
            gpu,
            &gpu.max_pool2d_backward(&gpu.upload(&f32s(&dy)).unwrap(), &it, [4, 4], &spec)
                .unwrap(),
        );
        close(&dx, &dx_ref, &format!("{what}: dx"));
        let nan_at = want_i[0] as usize;
        assert!(
            dx.iter().nth(nan_at).unwrap().is_nan(),
            "{what}: NaN dy lost"
        );
        assert_eq!(nonfinite(&dx).iter().filter(|&&b| b).count(), 1, "{what}");
    }
}

/// Avg-pool propagates: a NaN or ±Inf makes non-finite exactly the outputs whose (clipped)
/// window holds it, +Inf and -Inf in one window give NaN; backward spreads a bad dy over its
/// window. GPU and reference agree.
#[test]
fn avg_pool_propagates_nan_and_inf() {
    let gpu = gpu();
    let mut rng = Rng::new(505);
    let xs = [1, 2, 7, 6];
    for spec in [
        Pool2dSpec::new([3, 3])
            .with_stride([2, 2])
            .with_padding([1, 1])
            .with_ceil_mode(true),
        Pool2dSpec::new([2, 3]).with_stride([1, 2]),
    ] {
        for cip in [true, false] {
            for (bad, at) in [
                (f64::NAN, [0, 1, 3, 2]),
                (f64::INFINITY, [0, 0, 0, 0]),
                (f64::NEG_INFINITY, [0, 1, 6, 5]),
            ] {
                let what = format!("{spec:?} cip {cip}: {bad} at {at:?}");
                let x = spiked(&mut rng, xs, Some(at), bad);
                let y_ref = reference::avg_pool2d_forward(x.view(), &spec, cip).unwrap();
                let y = dl4(
                    gpu,
                    &gpu.avg_pool2d_forward(&gpu.upload(&f32s(&x)).unwrap(), &spec, cip)
                        .unwrap(),
                );
                let reach = nonzero(
                    &reference::avg_pool2d_forward(indicator(xs, at).view(), &spec, cip).unwrap(),
                );
                assert_eq!(nonfinite(&y_ref), reach, "{what}: reference");
                assert_eq!(nonfinite(&y), reach, "{what}: GPU");
                close(&y, &y_ref, &what);
                // Backward with the bad value in dy.
                let dat = [0, at[1], 1, 1];
                let ys: [usize; 4] = y_ref.shape().try_into().unwrap();
                let dy = spiked(&mut rng, ys, Some(dat), bad);
                let dx_ref =
                    reference::avg_pool2d_backward(dy.view(), [xs[2], xs[3]], &spec, cip).unwrap();
                let dx = dl4(
                    gpu,
                    &gpu.avg_pool2d_backward(
                        &gpu.upload(&f32s(&dy)).unwrap(),
                        [xs[2], xs[3]],
                        &spec,
                        cip,
                    )
                    .unwrap(),
                );
                let reach = nonzero(
                    &reference::avg_pool2d_backward(
                        indicator(ys, dat).view(),
                        [xs[2], xs[3]],
                        &spec,
                        cip,
                    )
                    .unwrap(),
                );
                assert_eq!(nonfinite(&dx_ref), reach, "{what}: reference dx");
                assert_eq!(nonfinite(&dx), reach, "{what}: GPU dx");
                close(&dx, &dx_ref, &format!("{what}: dx"));
            }
        }
        // +Inf and -Inf in one window: NaN.
        let mut x = Array4::<f64>::ones(xs);
        x[[0, 0, 0, 0]] = f64::INFINITY;
        x[[0, 0, 0, 1]] = f64::NEG_INFINITY;
        let y_ref = reference::avg_pool2d_forward(x.view(), &spec, true).unwrap();
        let y = dl4(
            gpu,
            &gpu.avg_pool2d_forward(&gpu.upload(&f32s(&x)).unwrap(), &spec, true)
                .unwrap(),
        );
        assert!(y_ref[[0, 0, 0, 0]].is_nan() && y[[0, 0, 0, 0]].is_nan());
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzz: hostile specs on tiny tensors, GPU against the reference.

const GPU_OUTPUT_LIMIT: u128 = 1 << 14;

fn hostile() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..=4,
        2 => prop::sample::select(vec![
            i32::MAX as usize - 1,
            i32::MAX as usize,
            1 << 31,
            u32::MAX as usize,
            1 << 32,
            (1 << 32) + 1,
            1 << 40,
            usize::MAX / 2,
            usize::MAX,
        ]),
        1 => (15u32..64).prop_map(|b| 1usize << b),
    ]
}

fn small_or(lo: usize, hi: usize) -> BoxedStrategy<usize> {
    prop_oneof![5 => lo..=hi, 1 => hostile()].boxed()
}

fn out_elems(shape: [usize; 4]) -> u128 {
    shape.iter().map(|&d| d as u128).product()
}

/// Runs `gpu_op` and `ref_op`: no panic; the GPU refuses whatever the reference refuses; where
/// the GPU answers, the reference does too and they agree; where only the reference answers, the
/// GPU's error is one of its documented limits.
fn agree(
    what: &str,
    gpu_op: impl FnOnce() -> wgconv::Result<Array4<f64>>,
    ref_op: impl FnOnce() -> wgconv::Result<Array4<f64>>,
) -> Result<(), TestCaseError> {
    let catch = |name: &str, f: Box<dyn FnOnce() -> wgconv::Result<Array4<f64>> + '_>| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .map_err(|_| TestCaseError::fail(format!("{what}: {name} panicked")))
    };
    let r = catch("reference", Box::new(ref_op))?;
    let g = catch("GPU", Box::new(gpu_op))?;
    match (&g, &r) {
        (Ok(g), Ok(r)) => {
            prop_assert_eq!(g.shape(), r.shape(), "{}", what);
            let c = compare(g.iter().copied(), r.iter().copied());
            prop_assert!(
                c.passes(GPU_TOLERANCE),
                "{}: max |gpu - ref| = {:e}\n gpu {:?}\n ref {:?}",
                what,
                c.max_abs_err,
                g,
                r
            );
        }
        (Ok(_), Err(e)) => prop_assert!(
            false,
            "{}: GPU accepted what the reference refused: {}",
            what,
            e
        ),
        (Err(e), Ok(_)) => prop_assert!(
            matches!(e, Error::DeviceLimit(_) | Error::Overflow(_)),
            "{}: GPU refused with {:?}",
            what,
            e
        ),
        (Err(_), Err(_)) => {}
    }
    Ok(())
}

#[allow(clippy::type_complexity)]
fn gpu_fuzz_case(
    (cspec, pspec, xs, ws, cip, seed): (Conv2dSpec, Pool2dSpec, [usize; 4], [usize; 4], bool, u64),
) -> Result<(), TestCaseError> {
    let gpu = gpu();
    let mut rng = Rng::new(seed);
    let x = rng.array4(xs);
    let w = rng.array4(ws);
    let xt = gpu.upload(&f32s(&x)).unwrap();
    let wt = gpu.upload(&f32s(&w)).unwrap();
    let (x, w) = (f64s(&f32s(&x)), f64s(&f32s(&w)));
    let hw = [xs[2], xs[3]];
    let khw = [ws[2], ws[3]];
    let what = format!("x {xs:?} w {ws:?} {cspec:?} {pspec:?}");

    // Conv: run only where the output is small or refused.
    let geo = cspec.forward_geometry(xs, ws);
    if geo
        .as_ref()
        .map_or(true, |g| out_elems(g.y_shape()) <= GPU_OUTPUT_LIMIT)
    {
        agree(
            &format!("forward {what}"),
            || {
                gpu.conv2d_forward(&xt, &wt, None, &cspec)
                    .map(|t| dl4(gpu, &t))
            },
            || reference::conv2d_forward(x.view(), w.view(), None::<ArrayView1<f64>>, &cspec),
        )?;
    }
    if let Ok(g) = geo
        && out_elems(g.y_shape()) <= GPU_OUTPUT_LIMIT
    {
        let dy = rng.array4(g.y_shape());
        let dyt = gpu.upload(&f32s(&dy)).unwrap();
        let dy = f64s(&f32s(&dy));
        agree(
            &format!("dx {what}"),
            || {
                gpu.conv2d_backward_input(&dyt, &wt, hw, &cspec)
                    .map(|t| dl4(gpu, &t))
            },
            || reference::conv2d_backward_input(dy.view(), w.view(), hw, &cspec),
        )?;
        agree(
            &format!("dW {what}"),
            || {
                gpu.conv2d_backward_weight(&xt, &dyt, khw, &cspec)
                    .map(|t| dl4(gpu, &t))
            },
            || reference::conv2d_backward_weight(x.view(), dy.view(), khw, &cspec),
        )?;
    }

    // Pools.
    let geo = pspec.geometry(xs);
    if geo
        .as_ref()
        .map_or(true, |g| out_elems(g.y_shape()) <= GPU_OUTPUT_LIMIT)
    {
        let gp = gpu.max_pool2d_forward(&xt, &pspec);
        let rp = reference::max_pool2d_forward(x.view(), &pspec);
        match (&gp, &rp) {
            (Ok((gy, gi)), Ok((ry, ri))) => {
                close(&dl4(gpu, gy), ry, &format!("max-pool {what}"));
                let gi = gpu.download_indices(gi).unwrap();
                prop_assert_eq!(
                    gi.iter().copied().collect::<Vec<_>>(),
                    ri.iter().copied().collect::<Vec<_>>()
                );
                let dx = gpu
                    .max_pool2d_backward(gy, gpu_indices(gpu, &gp), hw, &pspec)
                    .map(|t| dl4(gpu, &t));
                let dx_ref = reference::max_pool2d_backward(ry.view(), ri.view(), hw, &pspec);
                match (dx, dx_ref) {
                    (Ok(a), Ok(b)) => close(&a, &b, &format!("max-pool dx {what}")),
                    (a, b) => prop_assert!(
                        false,
                        "max-pool dx {}: {:?} vs {:?}",
                        what,
                        a.err(),
                        b.err()
                    ),
                }
            }
            (Ok(_), Err(e)) => {
                prop_assert!(false, "max-pool {}: GPU accepted, reference: {}", what, e)
            }
            (Err(e), Ok(_)) => prop_assert!(
                matches!(e, Error::DeviceLimit(_) | Error::Overflow(_)),
                "max-pool {}: {:?}",
                what,
                e
            ),
            (Err(_), Err(_)) => {}
        }
    }
    let geo = pspec.avg_geometry(xs);
    if geo
        .as_ref()
        .map_or(true, |g| out_elems(g.y_shape()) <= GPU_OUTPUT_LIMIT)
    {
        agree(
            &format!("avg-pool {what}"),
            || {
                gpu.avg_pool2d_forward(&xt, &pspec, cip)
                    .map(|t| dl4(gpu, &t))
            },
            || reference::avg_pool2d_forward(x.view(), &pspec, cip),
        )?;
        if let Ok(g) = geo {
            let dy = f64s(&f32s(&rng.array4(g.y_shape())));
            let dyt = gpu.upload(&f32s(&dy)).unwrap();
            agree(
                &format!("avg-pool dx {what}"),
                || {
                    gpu.avg_pool2d_backward(&dyt, hw, &pspec, cip)
                        .map(|t| dl4(gpu, &t))
                },
                || reference::avg_pool2d_backward(dy.view(), hw, &pspec, cip),
            )?;
        }
    }
    Ok(())
}

fn gpu_indices<'a>(_gpu: &Gpu, r: &'a wgconv::Result<(Tensor, IndexTensor)>) -> &'a IndexTensor {
    &r.as_ref().expect("checked above").1
}

/// A few dozen hostile specs on tiny tensors through every GPU op, against the reference.
#[test]
fn gpu_hostile_specs_never_panic_and_match_the_reference() {
    let strat = (
        (
            [small_or(1, 3), small_or(1, 3)],
            [
                small_or(0, 2),
                small_or(0, 2),
                small_or(0, 2),
                small_or(0, 2),
            ],
            [small_or(1, 2), small_or(1, 2)],
            small_or(1, 2),
        ),
        (
            [small_or(1, 4), small_or(1, 4)],
            [small_or(1, 3), small_or(1, 3)],
            [small_or(0, 1), small_or(0, 1)],
            [small_or(1, 2), small_or(1, 2)],
            any::<bool>(),
        ),
        [0usize..=2, 1usize..=4, 1usize..=6, 1usize..=6],
        [1usize..=4, 1usize..=2, 1usize..=3, 1usize..=3],
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                (stride, [t, b, l, r], dilation, groups),
                (kernel, pstride, padding, pdil, ceil),
                xs,
                ws,
                cip,
                seed,
            )| {
                let cspec = Conv2dSpec {
                    stride,
                    padding: Padding2d {
                        top: t,
                        bottom: b,
                        left: l,
                        right: r,
                    },
                    dilation,
                    groups,
                };
                // Channels consistent with the groups where they are small.
                let mut ws = ws;
                let mut xs = xs;
                if (1..=2).contains(&groups) {
                    xs[1] = ws[1] * groups;
                    ws[0] *= groups;
                }
                let pspec = Pool2dSpec {
                    kernel,
                    stride: pstride,
                    padding,
                    dilation: pdil,
                    ceil_mode: ceil,
                };
                (cspec, pspec, xs, ws, cip, seed)
            },
        );
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x6B0_0007),
        ..Config::default()
    });
    runner
        .run(&strat, gpu_fuzz_case)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Windows at the edge of the kernels' 32-bit arithmetic: either refused as a device limit or
/// computed exactly as the reference does.
#[test]
fn pool_windows_at_the_edge_of_32_bit_arithmetic() {
    let gpu = gpu();
    let cases: [(Pool2dSpec, [usize; 4]); 2] = [
        // A 65536 x 65536 avg-pool window: its divisor is 2^32.
        (
            Pool2dSpec::new([1 << 16, 1 << 16]).with_padding([1 << 15, 1 << 15]),
            [1, 1, 1, 1],
        ),
        // Ceil mode, second window starting at row 3 and reaching past i32::MAX.
        (
            Pool2dSpec::new([(1 << 31) - 3, 1])
                .with_padding([(1 << 30) - 3, 0])
                .with_stride([1 << 30, 1])
                .with_ceil_mode(true),
            [1, 1, 4, 1],
        ),
    ];
    let mut failures = Vec::new();
    for (spec, xs) in cases {
        let x = Array4::from_shape_fn(xs, |(_, _, h, w)| (h * 3 + w + 1) as f64);
        let xt = gpu.upload(&f32s(&x)).unwrap();
        for cip in [true, false] {
            let what = format!("{spec:?} cip {cip}");
            let want = reference::avg_pool2d_forward(x.view(), &spec, cip).unwrap();
            match gpu.avg_pool2d_forward(&xt, &spec, cip) {
                Ok(y) => {
                    let got = dl4(gpu, &y);
                    let c = compare(got.iter().copied(), want.iter().copied());
                    if !c.passes(GPU_TOLERANCE) {
                        failures.push(format!("avg {what}: got {got:?}, want {want:?}"));
                    }
                }
                Err(Error::DeviceLimit(_)) => {}
                Err(e) => failures.push(format!("avg {what}: {e}")),
            }
        }
        let (want, want_i) = reference::max_pool2d_forward(x.view(), &spec).unwrap();
        match gpu.max_pool2d_forward(&xt, &spec) {
            Ok((y, i)) => {
                let got = dl4(gpu, &y);
                let i = gpu.download_indices(&i).unwrap();
                if got != want || i.into_dimensionality::<Ix4>().unwrap() != want_i {
                    failures.push(format!("max {spec:?}: got {got:?}, want {want:?}"));
                }
            }
            Err(Error::DeviceLimit(_)) => {}
            Err(e) => failures.push(format!("max {spec:?}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
