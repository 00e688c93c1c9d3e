//! Device faults and long runs on the GPU (issue 7): device loss (idle and with work in
//! flight), destroyed buffers, poll timeouts, a 2,000-call soak of the buffer pool, and four
//! threads on one `Gpu`. Shapes stay small: CI runs this on Mesa's software drivers, Vulkan
//! (lavapipe) and GL (llvmpipe). See docs/RELIABILITY.md.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Rng;
use common::*;
use ndarray::{Array1, Array4};
use wgconv::{Conv2dSpec, Error, Gpu, IndexTensor, Padding2d, Pool2dSpec, Tensor};

// `Gpu` can be shared by threads (`Arc<Gpu>`), and tensors sent between them.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Gpu>();
    send_sync::<Tensor>();
    send_sync::<IndexTensor>();
    send_sync::<Error>();
};

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
    // An eager op submits without waiting (no poll): after a loss it may return a tensor, but
    // never data. Its result counts as the download of what it returned.
    let ok = |r: wgconv::Result<Tensor>| r.and_then(|t| gpu.download(&t).map(|_| ()));
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
            ok(gpu.max_pool2d_forward(&t.x, &t.pool).map(|(y, _)| y)),
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
            ok(gpu.max_pool2d_forward(&t.empty_x, &t.pool).map(|(y, _)| y)),
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

/// Destroyed while idle: every call, including downloads of tensors computed before (and of
/// what each op returns), returns `Err(DeviceLost)`; none hands back data.
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
/// then silently drops every call. Every call must still fail (an op's tensor never downloads:
/// no data), and the loss is reported as `DeviceLost` once the queue has drained.
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
