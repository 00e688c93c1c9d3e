//! Faults through the embedding API: device loss around recorded batches (before `submit`,
//! between `encode` and the caller's submit), views of destroyed buffers, views outliving their
//! `Gpu`, recorders on four threads, and a 10,000-op soak through the recorder with views and
//! accumulation.

mod common;

use std::sync::Arc;

use common::{Rng, caller_buffer, caller_device, fresh};
use ndarray::{Array1, Array4};
use wgconv::{Conv2dSpec, Error, Gpu, Padding2d, Pool2dSpec, Tensor};

fn spec() -> Conv2dSpec {
    Conv2dSpec {
        padding: Padding2d::symmetric(1, 1),
        ..Default::default()
    }
}

/// No result of a batch on a lost device ever downloads: `Err`, never stale or zero data.
fn never_data(gpu: &Gpu, results: &[&Tensor], what: &str) {
    for (i, t) in results.iter().enumerate() {
        let r = gpu.download(t);
        assert!(r.is_err(), "{what}: result {i} downloaded {r:?}");
    }
}

#[test]
fn device_lost_before_submit_fails_the_batch() {
    let gpu = fresh(Gpu::builder());
    let mut rng = Rng::new(1);
    let x = gpu.upload(&rng.array4_f32([2, 3, 8, 8])).unwrap();
    let w = gpu.upload(&rng.array4_f32([4, 3, 3, 3])).unwrap();
    let mut rec = gpu.recorder();
    let y = rec.conv2d_forward(&x, &w, None, &spec()).unwrap();
    let p = rec
        .avg_pool2d_forward(&y, &Pool2dSpec::new([2, 2]), true)
        .unwrap();
    gpu.synchronize().unwrap();
    gpu.device().destroy();
    let r = rec.submit();
    assert!(r.is_err(), "submit after the loss: {r:?}");
    never_data(&gpu, &[&y, &p], "before submit");
}

#[test]
fn device_lost_during_a_recorded_batch_fails_its_results() {
    let gpu = fresh(Gpu::builder());
    let mut rng = Rng::new(2);
    let x = gpu.upload(&rng.array4_f32([4, 16, 24, 24])).unwrap();
    let w = gpu.upload(&rng.array4_f32([16, 16, 3, 3])).unwrap();
    let mut rec = gpu.recorder();
    let mut y = rec.conv2d_forward(&x, &w, None, &spec()).unwrap();
    for _ in 0..6 {
        y = rec.conv2d_forward(&y, &w, None, &spec()).unwrap();
    }
    rec.submit().unwrap();
    // Lost while the batch runs.
    gpu.device().destroy();
    never_data(&gpu, &[&y], "during the batch");
    assert!(
        gpu.conv2d_forward(&x, &w, None, &spec())
            .and_then(|t| gpu.download(&t))
            .is_err()
    );
}

#[test]
fn device_lost_between_encode_and_the_callers_submit() {
    let (device, queue) = caller_device(wgpu::Limits::downlevel_defaults());
    let gpu = Gpu::from_wgpu(device.clone(), queue.clone()).unwrap();
    let mut rng = Rng::new(3);
    let x = gpu.upload(&rng.array4_f32([2, 3, 8, 8])).unwrap();
    let w = gpu.upload(&rng.array4_f32([4, 3, 3, 3])).unwrap();
    let mut encoder = device.create_command_encoder(&Default::default());
    let mut rec = gpu.recorder();
    let y = rec.conv2d_forward(&x, &w, None, &spec()).unwrap();
    rec.encode(&mut encoder).unwrap();
    gpu.synchronize().unwrap();
    device.destroy();
    queue.submit([encoder.finish()]);
    never_data(&gpu, &[&y], "between encode and submit");
    let e = gpu.synchronize().unwrap_err();
    assert!(matches!(e, Error::DeviceLost(_)), "{e}");
}

#[test]
fn views_of_destroyed_buffers_and_views_outliving_their_gpu() {
    let (device, queue) = caller_device(wgpu::Limits::downlevel_defaults());
    let gpu = Gpu::from_wgpu(device.clone(), queue.clone()).unwrap();
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let buf = caller_buffer(&device, 4096, usage);
    let v = gpu
        .tensor_from_buffer(buf.clone(), 0, &[1, 1, 8, 8])
        .unwrap();
    buf.destroy();
    let e = gpu.download(&v).unwrap_err();
    assert!(matches!(e, Error::Wgpu { .. }), "{e}");
    let r = gpu.avg_pool2d_forward(&v, &Pool2dSpec::new([2, 2]), true);
    assert!(
        r.and_then(|t| gpu.download(&t)).is_err(),
        "an op reading a destroyed view"
    );
    // The Gpu carries on.
    let t = gpu.upload(&Array1::<f32>::ones(16)).unwrap();
    assert_eq!(gpu.download(&t).unwrap().sum(), 16.0);
    // A view and a pooled tensor that outlive their Gpu: another Gpu refuses them, and
    // dropping them afterwards is harmless.
    let live = caller_buffer(&device, 4096, usage);
    let view = gpu.tensor_from_buffer(live, 0, &[1, 1, 8, 8]).unwrap();
    let pooled = gpu.upload(&Array4::<f32>::ones((1, 1, 8, 8))).unwrap();
    drop(gpu);
    let other = Gpu::from_wgpu(device, queue).unwrap();
    for t in [&view, &pooled] {
        let e = other.download(t).unwrap_err();
        assert!(e.to_string().contains("another Gpu"), "{e}");
    }
    drop((view, pooled));
}

/// Each thread records and submits its own batches on one `Arc<Gpu>`; the results equal one
/// thread's, bit for bit.
#[test]
fn four_threads_with_their_own_recorders_match_one_thread() {
    let gpu = Arc::new(fresh(Gpu::builder()));
    let work = |gpu: &Gpu, seed: u64| -> Vec<Vec<u32>> {
        let mut rng = Rng::new(seed);
        let x = gpu.upload(&rng.array4_f32([2, 4, 10, 10])).unwrap();
        let w = gpu.upload(&rng.array4_f32([4, 4, 3, 3])).unwrap();
        let mut dw = gpu.upload(&Array4::<f32>::zeros((4, 4, 3, 3))).unwrap();
        let mut out = Vec::new();
        for _ in 0..5 {
            let mut rec = gpu.recorder();
            let y = rec.conv2d_forward(&x, &w, None, &spec()).unwrap();
            let (m, i) = rec
                .max_pool2d_forward(&y, &Pool2dSpec::new([2, 2]))
                .unwrap();
            let dy = rec
                .max_pool2d_backward(&m, &i, [10, 10], &Pool2dSpec::new([2, 2]))
                .unwrap();
            rec.conv2d_backward_weight_accumulate(&x, &dy, &spec(), &mut dw)
                .unwrap();
            let dx = rec
                .conv2d_backward_input(&dy, &w, [10, 10], &spec())
                .unwrap();
            rec.submit().unwrap();
            for t in [&y, &dx, &dw] {
                out.push(
                    gpu.download(t)
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect(),
                );
            }
        }
        out
    };
    let one: Vec<_> = (0..4).map(|t| work(&gpu, 10 + t)).collect();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let gpu = gpu.clone();
            std::thread::spawn(move || work(&gpu, 10 + t))
        })
        .collect();
    for (t, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), one[t], "thread {t}");
    }
}

/// 10,000 ops through the recorder in batches of 1 to 64, with views of a caller's arena as
/// inputs and outputs and gradient accumulation: the pool's held bytes and buffer count after
/// a warm-up are the same at the end, and the results of the last round equal the first's.
#[test]
fn soak_10000_recorded_ops_keep_the_pool_flat() {
    let gpu = fresh(Gpu::builder());
    let mut rng = Rng::new(4);
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let arena = caller_buffer(gpu.device(), 1 << 16, usage);
    let align = u64::from(gpu.limits().min_storage_buffer_offset_alignment);
    let x_host = rng.array4_f32([1, 2, 6, 6]);
    gpu.queue()
        .write_buffer(&arena, 0, bytemuck::cast_slice(x_host.as_slice().unwrap()));
    let x = gpu
        .tensor_from_buffer(arena.clone(), 0, &[1, 2, 6, 6])
        .unwrap();
    let w = gpu.upload(&rng.array4_f32([2, 2, 3, 3])).unwrap();
    let out_off = (4 * 72u64).div_ceil(align) * align;
    let mut y_view = gpu
        .tensor_from_buffer(arena.clone(), out_off, &[1, 2, 3, 3])
        .unwrap();
    let p = Pool2dSpec::new([2, 2]);
    // One round: 100 ops in batches of growing size (1, 2, 4, ..., 64, the rest).
    let round = |gpu: &Gpu, y_view: &mut Tensor| -> (usize, Vec<u32>) {
        let mut ops = 0;
        let mut db = gpu.upload(&Array1::<f32>::zeros(2)).unwrap();
        let mut size = 1;
        let mut last = None;
        while ops < 100 {
            let mut rec = gpu.recorder();
            let n = size.min(100 - ops);
            for k in 0..n {
                match (ops + k) % 4 {
                    0 => last = Some(rec.conv2d_forward(&x, &w, None, &spec()).unwrap()),
                    1 => rec.conv2d_backward_bias_accumulate(&x, &mut db).unwrap(),
                    2 => last = Some(rec.avg_pool2d_forward(&x, &p, true).unwrap()),
                    _ => drop(rec.max_pool2d_forward(&x, &p).unwrap()),
                }
            }
            rec.submit().unwrap();
            // Done before the next batch: what this one held is back in the pool (the
            // recycling runs in a poll), so every round needs the same buffers.
            gpu.synchronize().unwrap();
            ops += n;
            size = (size * 2).min(64);
        }
        gpu.avg_pool2d_forward_into(&x, &p, false, y_view).unwrap();
        drop(last);
        let bits = gpu
            .download(&db)
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect();
        (ops + 1, bits)
    };
    let mut total = 0;
    let mut first = None;
    for _ in 0..2 {
        let (n, bits) = round(&gpu, &mut y_view);
        total += n;
        first.get_or_insert(bits);
    }
    gpu.synchronize().unwrap();
    let warm = gpu.pool_stats();
    let mut last = Vec::new();
    while total < 10_000 {
        let (n, bits) = round(&gpu, &mut y_view);
        total += n;
        last = bits;
    }
    gpu.synchronize().unwrap();
    let end = gpu.pool_stats();
    eprintln!("soak: {total} ops; after warm-up {warm:?}; at the end {end:?}");
    assert_eq!(
        (end.held_bytes, end.held_buffers),
        (warm.held_bytes, warm.held_buffers)
    );
    assert_eq!(
        end.allocations, warm.allocations,
        "no allocation after the warm-up"
    );
    assert_eq!(Some(last), first, "every round gives the same bits");
}
