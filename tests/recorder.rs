//! Recorded batches (`Gpu::recorder`): bit-identical to eager calls, one submission, inputs
//! dropped after recording, `encode` into the caller's encoder among its own passes, pending
//! results refused by eager ops, chained recorders in both orders, checked mode; `download_async`; the `*_accumulate` ops.

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use common::{Rng, caller_buffer, caller_device, close, dl, fresh};
use ndarray::{Array1, Array4, ArrayD};
use wgconv::{Conv2dSpec, Error, Gpu, Padding2d, Pool2dSpec, Tensor, reference};

fn spec() -> Conv2dSpec {
    Conv2dSpec {
        stride: [2, 2],
        padding: Padding2d::symmetric(1, 1),
        ..Default::default()
    }
}

struct Inputs {
    x: Array4<f32>,
    w: Array4<f32>,
    b: Array1<f32>,
}

fn inputs(seed: u64) -> Inputs {
    let mut rng = Rng::new(seed);
    Inputs {
        x: rng.array4_f32([2, 3, 12, 10]),
        w: rng.array4_f32([8, 3, 3, 3]),
        b: rng
            .array4_f32([1, 1, 1, 8])
            .into_shape_with_order(8)
            .unwrap(),
    }
}

/// A chain of all eight ops: through the recorder (`rec` true) or one by one; the results'
/// bits. The recorder's inputs are dropped right after recording.
fn chain(gpu: &Gpu, i: &Inputs, rec: bool) -> Vec<Vec<u32>> {
    let s = spec();
    let p = Pool2dSpec::new([2, 2]);
    let bits = |t: &Tensor| -> Vec<u32> {
        gpu.download(t)
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    let (x, w, b) = (
        gpu.upload(&i.x).unwrap(),
        gpu.upload(&i.w).unwrap(),
        gpu.upload(&i.b).unwrap(),
    );
    let outs: Vec<Tensor>;
    let idx;
    if rec {
        let mut r = gpu.recorder();
        let y = r.conv2d_forward(&x, &w, Some(&b), &s).unwrap();
        let (m, i_) = r.max_pool2d_forward(&y, &p).unwrap();
        let mdx = r.max_pool2d_backward(&m, &i_, [6, 5], &p).unwrap();
        let a = r.avg_pool2d_forward(&mdx, &p, true).unwrap();
        let adx = r.avg_pool2d_backward(&a, [6, 5], &p, false).unwrap();
        let dx = r.conv2d_backward_input(&adx, &w, [12, 10], &s).unwrap();
        let dw = r.conv2d_backward_weight(&x, &adx, [3, 3], &s).unwrap();
        let db = r.conv2d_backward_bias(&adx).unwrap();
        assert_eq!(r.len(), 8);
        drop((x, w, b));
        let before = gpu.counters().submissions;
        r.submit().unwrap();
        // Checked mode's downloads submit too.
        if !gpu.is_checked() {
            assert_eq!(gpu.counters().submissions - before, 1, "one submission");
        }
        outs = vec![y, m, mdx, a, adx, dx, dw, db];
        idx = i_;
    } else {
        let y = gpu.conv2d_forward(&x, &w, Some(&b), &s).unwrap();
        let (m, i_) = gpu.max_pool2d_forward(&y, &p).unwrap();
        let mdx = gpu.max_pool2d_backward(&m, &i_, [6, 5], &p).unwrap();
        let a = gpu.avg_pool2d_forward(&mdx, &p, true).unwrap();
        let adx = gpu.avg_pool2d_backward(&a, [6, 5], &p, false).unwrap();
        let dx = gpu.conv2d_backward_input(&adx, &w, [12, 10], &s).unwrap();
        let dw = gpu.conv2d_backward_weight(&x, &adx, [3, 3], &s).unwrap();
        let db = gpu.conv2d_backward_bias(&adx).unwrap();
        outs = vec![y, m, mdx, a, adx, dx, dw, db];
        idx = i_;
    }
    let mut all: Vec<Vec<u32>> = outs.iter().map(bits).collect();
    all.push(
        gpu.download_indices(&idx)
            .unwrap()
            .iter()
            .copied()
            .collect(),
    );
    all
}

#[test]
fn recorded_chain_equals_eager_bit_for_bit() {
    let gpu = fresh(Gpu::builder());
    let i = inputs(1);
    let eager = chain(&gpu, &i, false);
    let recorded = chain(&gpu, &i, true);
    assert_eq!(eager.len(), recorded.len());
    for (k, (e, r)) in eager.iter().zip(&recorded).enumerate() {
        assert_eq!(e, r, "result {k}");
    }
    // And right: the forward against the reference.
    let want = reference::conv2d_forward(
        i.x.mapv(f64::from).view(),
        i.w.mapv(f64::from).view(),
        Some(i.b.mapv(f64::from).view()),
        &spec(),
    )
    .unwrap();
    let got = ArrayD::from_shape_vec(
        want.shape(),
        eager[0]
            .iter()
            .map(|&b| f64::from(f32::from_bits(b)))
            .collect(),
    );
    close(&got.unwrap(), &want, "forward");
}

/// Checked mode on a recorded chain: checked at submit (and it catches nothing here).
#[test]
fn checked_mode_checks_a_recorded_chain() {
    let gpu = fresh(Gpu::builder().checked(true));
    let i = inputs(2);
    let recorded = chain(&gpu, &i, true);
    let plain = fresh(Gpu::builder());
    assert_eq!(recorded, chain(&plain, &i, false));
}

/// A pending result is refused by downloads and eager ops until its batch is submitted, and a
/// recorder that reads it cannot be submitted before it; a recorder dropped unsubmitted is harmless; errors at record time leave it usable.
#[test]
fn pending_results_are_refused_and_unsubmitted_batches_are_harmless() {
    let gpu = fresh(Gpu::builder());
    let i = inputs(3);
    let (x, w) = (gpu.upload(&i.x).unwrap(), gpu.upload(&i.w).unwrap());
    let mut rec = gpu.recorder();
    let y = rec.conv2d_forward(&x, &w, None, &spec()).unwrap();
    let e = gpu.download(&y).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("pending"),
        "{e}"
    );
    let e = gpu.conv2d_backward_bias(&y).unwrap_err();
    assert!(e.to_string().contains("pending"), "{e}");
    // Another recorder may read it (chained recorders), but submitting that one first is Err.
    let mut other = gpu.recorder();
    other.conv2d_backward_bias(&y).unwrap();
    let e = other.submit().unwrap_err();
    assert!(e.to_string().contains("another recorder"), "{e}");
    // A bad shape at record time is Err and leaves the recorder usable.
    assert!(rec.conv2d_forward(&w, &x, None, &spec()).is_err());
    let db = rec.conv2d_backward_bias(&y).unwrap();
    rec.submit().unwrap();
    assert_eq!(gpu.download(&db).unwrap().len(), 8);
    assert_eq!(gpu.download(&y).unwrap().shape(), &[2, 8, 6, 5]);
    // Dropped unsubmitted: nothing runs, the pool stays sound.
    let mut dropped = gpu.recorder();
    let z = dropped.conv2d_forward(&x, &w, None, &spec()).unwrap();
    drop(dropped);
    assert!(
        gpu.download(&z)
            .unwrap_err()
            .to_string()
            .contains("pending")
    );
    // A recorder reading it can never run, and says why.
    let mut late = gpu.recorder();
    late.conv2d_backward_bias(&z).unwrap();
    let e = late.submit().unwrap_err();
    assert!(e.to_string().contains("dropped unsubmitted"), "{e}");
    drop(z);
    let again = gpu.conv2d_forward(&x, &w, None, &spec()).unwrap();
    assert_eq!(gpu.download(&again).unwrap(), gpu.download(&y).unwrap());
}

/// How two chained recorders (B reads A's pending results) reach the queue.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Order {
    SubmitAThenB,
    EncodeAThenB,
    SubmitBFirst,
    EncodeBFirst,
}

/// A framework's forward batch (A: conv, max-pool) and backward batch (B: max-pool backward and
/// the conv's three gradients, one accumulated into a gradient that A computed) recorded before
/// either runs: in order, both equal the eager ops bit for bit; B first is `Err` naming the
/// dependency, and A still runs alone.
#[test]
fn chained_recorders_equal_eager_in_order_and_refuse_the_wrong_order() {
    let gpu = fresh(Gpu::builder());
    let i = inputs(6);
    let (s, p) = (spec(), Pool2dSpec::new([2, 2]));
    let (x, w, b) = (
        gpu.upload(&i.x).unwrap(),
        gpu.upload(&i.w).unwrap(),
        gpu.upload(&i.b).unwrap(),
    );
    let bits = |t: &Tensor| common::bits(&gpu, t);
    let eager = {
        let y = gpu.conv2d_forward(&x, &w, Some(&b), &s).unwrap();
        let (m, idx) = gpu.max_pool2d_forward(&y, &p).unwrap();
        let mut dw = gpu.conv2d_backward_weight(&x, &y, [3, 3], &s).unwrap();
        let dy = gpu.max_pool2d_backward(&m, &idx, [6, 5], &p).unwrap();
        let dx = gpu.conv2d_backward_input(&dy, &w, [12, 10], &s).unwrap();
        gpu.conv2d_backward_weight_accumulate(&x, &dy, &s, &mut dw)
            .unwrap();
        let db = gpu.conv2d_backward_bias(&dy).unwrap();
        [&y, &m, &dy, &dx, &dw, &db].map(bits)
    };
    for order in [
        Order::SubmitAThenB,
        Order::EncodeAThenB,
        Order::SubmitBFirst,
        Order::EncodeBFirst,
    ] {
        let mut a = gpu.recorder();
        let y = a.conv2d_forward(&x, &w, Some(&b), &s).unwrap();
        let (m, idx) = a.max_pool2d_forward(&y, &p).unwrap();
        let mut dw = a.conv2d_backward_weight(&x, &y, [3, 3], &s).unwrap();
        let mut bb = gpu.recorder();
        let dy = bb.max_pool2d_backward(&m, &idx, [6, 5], &p).unwrap();
        let dx = bb.conv2d_backward_input(&dy, &w, [12, 10], &s).unwrap();
        bb.conv2d_backward_weight_accumulate(&x, &dy, &s, &mut dw)
            .unwrap();
        let db = bb.conv2d_backward_bias(&dy).unwrap();
        let mut encoder = gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        match order {
            Order::SubmitAThenB => {
                a.submit().unwrap();
                bb.submit().unwrap();
            }
            Order::EncodeAThenB => {
                a.encode(&mut encoder).unwrap();
                bb.encode(&mut encoder).unwrap();
            }
            Order::SubmitBFirst | Order::EncodeBFirst => {
                let e = if order == Order::SubmitBFirst {
                    bb.submit().unwrap_err()
                } else {
                    bb.encode(&mut encoder).unwrap_err()
                };
                let m = e.to_string();
                assert!(
                    matches!(e, Error::InvalidArgument(_))
                        && m.contains("max_pool2d_backward")
                        && m.contains("[2, 8, 3, 2]")
                        && m.contains("another recorder"),
                    "{order:?}: {m}"
                );
                a.submit().unwrap();
                assert_eq!(bits(&y), eager[0], "{order:?}: A alone");
                assert!(gpu.download(&dx).is_err(), "{order:?}: B never ran");
                continue;
            }
        }
        gpu.queue().submit([encoder.finish()]);
        let got = [&y, &m, &dy, &dx, &dw, &db].map(bits);
        assert_eq!(got, eager, "{order:?}");
    }
}

/// `encode` appends to the caller's encoder after its own write to a view, submits nothing, and
/// two recorders go into one encoder in order.
#[test]
fn encode_into_the_callers_encoder_between_its_passes() {
    let (device, queue) = caller_device(wgpu::Limits::downlevel_defaults());
    let gpu = Gpu::from_wgpu(device.clone(), queue.clone()).unwrap();
    let i = inputs(4);
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let src = caller_buffer(&device, 4 * i.x.len() as u64, usage);
    queue.write_buffer(&src, 0, bytemuck::cast_slice(i.x.as_slice().unwrap()));
    let xv_buf = caller_buffer(&device, 4 * i.x.len() as u64, usage);
    let xv = gpu
        .tensor_from_buffer(xv_buf.clone(), 0, &[2, 3, 12, 10])
        .unwrap();
    let w = gpu.upload(&i.w).unwrap();
    let before = gpu.counters().submissions;
    let mut encoder = device.create_command_encoder(&Default::default());
    // The caller's own pass: fill the view.
    encoder.copy_buffer_to_buffer(&src, 0, &xv_buf, 0, 4 * i.x.len() as u64);
    let mut first = gpu.recorder();
    let y = first.conv2d_forward(&xv, &w, None, &spec()).unwrap();
    first.encode(&mut encoder).unwrap();
    let mut second = gpu.recorder();
    let p = second
        .avg_pool2d_forward(&y, &Pool2dSpec::new([2, 2]), true)
        .unwrap();
    second.encode(&mut encoder).unwrap();
    assert_eq!(gpu.counters().submissions, before, "encode submits nothing");
    queue.submit([encoder.finish()]);
    let eager_x = gpu.upload(&i.x).unwrap();
    let want_y = gpu.conv2d_forward(&eager_x, &w, None, &spec()).unwrap();
    let want_p = gpu
        .avg_pool2d_forward(&want_y, &Pool2dSpec::new([2, 2]), true)
        .unwrap();
    assert_eq!(gpu.download(&y).unwrap(), gpu.download(&want_y).unwrap());
    assert_eq!(gpu.download(&p).unwrap(), gpu.download(&want_p).unwrap());
}

fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

/// `download_async`: submitted at the call, pending while the GPU works, ready once done, may be
/// dropped, and outlives its tensor.
#[test]
fn download_async_polls_the_device_itself() {
    let gpu = fresh(Gpu::builder());
    let mut rng = Rng::new(6);
    let x = gpu.upload(&rng.array4_f32([8, 32, 48, 48])).unwrap();
    let w = gpu.upload(&rng.array4_f32([32, 32, 3, 3])).unwrap();
    let s = Conv2dSpec {
        padding: Padding2d::symmetric(1, 1),
        ..Default::default()
    };
    // Enough work queued that the copy is still waiting at the first poll (on a shared, loaded
    // machine the GPU may win the race: more work each try).
    let mut y = gpu.conv2d_forward(&x, &w, None, &s).unwrap();
    let mut pending = false;
    for attempt in 1..=4 {
        for _ in 0..2 * attempt {
            y = gpu.conv2d_forward(&y, &w, None, &s).unwrap();
        }
        let before = gpu.counters().submissions;
        let mut probe = pin!(gpu.download_async(&y));
        assert_eq!(
            gpu.counters().submissions - before,
            1,
            "the copy is submitted at the call"
        );
        if poll_once(probe.as_mut()).is_pending() {
            pending = true;
            let got = pollster::block_on(probe).unwrap();
            assert_eq!(got, gpu.download(&y).unwrap());
            break;
        }
    }
    // wgpu's GL backend runs a submission's commands inside `submit` (llvmpipe finishes them
    // there): no work is outstanding by the first poll, so only Vulkan can show it pending.
    if gpu.adapter_info().backend == wgpu::Backend::Gl {
        eprintln!(
            "download_async_polls_the_device_itself: pending first poll NOT CHECKED on GL (the \
             GL backend completes the work inside submit); it is checked on Vulkan"
        );
    } else {
        assert!(
            pending,
            "the first poll was ready every time: no work was outstanding"
        );
    }
    let fut = gpu.download_async(&y);
    let want = gpu.download(&y).unwrap();
    drop(y);
    let got = pollster::block_on(fut).unwrap();
    assert_eq!(got, want, "awaited after its tensor was dropped");
    // Dropped before it is ready: harmless, and later downloads work.
    let z = gpu.conv2d_forward(&x, &w, None, &s).unwrap();
    drop(gpu.download_async(&z));
    assert_eq!(gpu.download(&z).unwrap().shape(), &[8, 32, 48, 48]);
    // Indices, and an empty tensor.
    let (_, idx) = gpu
        .max_pool2d_forward(&x, &Pool2dSpec::new([2, 2]))
        .unwrap();
    let want = gpu.download_indices(&idx).unwrap();
    assert_eq!(
        pollster::block_on(gpu.download_indices_async(&idx)).unwrap(),
        want
    );
    let empty = gpu.upload(&Array4::<f32>::zeros((0, 3, 4, 4))).unwrap();
    assert_eq!(
        pollster::block_on(gpu.download_async(&empty))
            .unwrap()
            .len(),
        0
    );
    fn send<T: Send + 'static>(_: &T) {}
    send(&gpu.download_async(&z));
}

/// Each accumulate op adds the op's result into the gradient (against the reference), eagerly
/// and recorded, bit-identically; a target sharing a buffer with an input is refused.
#[test]
fn accumulate_ops_add_into_the_gradient() {
    let gpu = fresh(Gpu::builder());
    let mut rng = Rng::new(7);
    let s = spec();
    let x = rng.array4_f32([2, 4, 11, 9]);
    let w = rng.array4_f32([6, 4, 3, 3]);
    let dy = rng.array4_f32([2, 6, 6, 5]);
    let (gx, gw, gdy) = (
        gpu.upload(&x).unwrap(),
        gpu.upload(&w).unwrap(),
        gpu.upload(&dy).unwrap(),
    );
    let f = |a: &Array4<f32>| a.mapv(f64::from);
    let start_dx = rng.array4_f32([2, 4, 11, 9]);
    let start_dw = rng.array4_f32([6, 4, 3, 3]);
    let start_db = rng
        .array4_f32([1, 1, 1, 6])
        .into_shape_with_order(6)
        .unwrap();
    let mut dx = gpu.upload(&start_dx).unwrap();
    let mut dw = gpu.upload(&start_dw).unwrap();
    let mut db = gpu.upload(&start_db).unwrap();
    gpu.conv2d_backward_input_accumulate(&gdy, &gw, &s, &mut dx)
        .unwrap();
    gpu.conv2d_backward_weight_accumulate(&gx, &gdy, &s, &mut dw)
        .unwrap();
    gpu.conv2d_backward_bias_accumulate(&gdy, &mut db).unwrap();
    let want_dx = f(&start_dx)
        + reference::conv2d_backward_input(f(&dy).view(), f(&w).view(), [11, 9], &s).unwrap();
    let want_dw = f(&start_dw)
        + reference::conv2d_backward_weight(f(&x).view(), f(&dy).view(), [3, 3], &s).unwrap();
    let want_db = start_db.mapv(f64::from) + reference::conv2d_backward_bias(f(&dy).view());
    close(&dl(&gpu, &dx), &want_dx, "dx accumulate");
    close(&dl(&gpu, &dw), &want_dw, "dW accumulate");
    close(&dl(&gpu, &db), &want_db, "db accumulate");
    // Recorded: the same bits.
    let mut rdx = gpu.upload(&start_dx).unwrap();
    let mut rdw = gpu.upload(&start_dw).unwrap();
    let mut rdb = gpu.upload(&start_db).unwrap();
    let mut rec = gpu.recorder();
    rec.conv2d_backward_input_accumulate(&gdy, &gw, &s, &mut rdx)
        .unwrap();
    rec.conv2d_backward_weight_accumulate(&gx, &gdy, &s, &mut rdw)
        .unwrap();
    rec.conv2d_backward_bias_accumulate(&gdy, &mut rdb).unwrap();
    assert!(
        gpu.download(&rdw)
            .unwrap_err()
            .to_string()
            .contains("pending")
    );
    rec.submit().unwrap();
    assert_eq!(gpu.download(&rdx).unwrap(), gpu.download(&dx).unwrap());
    assert_eq!(gpu.download(&rdw).unwrap(), gpu.download(&dw).unwrap());
    assert_eq!(gpu.download(&rdb).unwrap(), gpu.download(&db).unwrap());
    // A target sharing a buffer with an input: refused.
    let align = u64::from(gpu.limits().min_storage_buffer_offset_alignment);
    let shared = gpu.upload(&Array1::<f32>::zeros(4096)).unwrap();
    let (buf, _) = shared.into_buffer().unwrap();
    let dyv = gpu
        .tensor_from_buffer(buf.clone(), 0, &[2, 6, 6, 5])
        .unwrap();
    let mut dbv = gpu.tensor_from_buffer(buf, 16 * align, &[6]).unwrap();
    let e = gpu
        .conv2d_backward_bias_accumulate(&dyv, &mut dbv)
        .unwrap_err();
    assert!(e.to_string().contains("shares a buffer"), "{e}");
}

/// Checked mode checks accumulations too (eager and recorded): the value before is kept.
#[test]
fn checked_mode_checks_accumulations() {
    let gpu = fresh(Gpu::builder().checked(true));
    let mut rng = Rng::new(8);
    let s = spec();
    let gx = gpu.upload(&rng.array4_f32([2, 4, 11, 9])).unwrap();
    let gdy = gpu.upload(&rng.array4_f32([2, 6, 6, 5])).unwrap();
    let mut dw = gpu.upload(&rng.array4_f32([6, 4, 3, 3])).unwrap();
    gpu.conv2d_backward_weight_accumulate(&gx, &gdy, &s, &mut dw)
        .unwrap();
    let mut rec = gpu.recorder();
    rec.conv2d_backward_weight_accumulate(&gx, &gdy, &s, &mut dw)
        .unwrap();
    rec.conv2d_backward_bias(&gdy).unwrap();
    rec.submit().unwrap();
}

/// The contract: a recorder can move to another thread.
#[test]
fn recorder_is_send() {
    fn send<T: Send>() {}
    send::<wgconv::Recorder<'static>>();
    let gpu = fresh(Gpu::builder());
    let x = gpu.upload(&Array4::<f32>::ones((1, 1, 4, 4))).unwrap();
    std::thread::scope(|s| {
        let mut rec = gpu.recorder();
        let y = s
            .spawn(move || {
                let y = rec
                    .avg_pool2d_forward(&x, &Pool2dSpec::new([2, 2]), true)
                    .unwrap();
                rec.submit().unwrap();
                y
            })
            .join()
            .unwrap();
        assert!(gpu.download(&y).unwrap().iter().all(|&v| v == 1.0));
    });
}
