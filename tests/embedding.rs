//! The embedding API on the caller's device: `from_wgpu` on downlevel limits, views of the
//! caller's buffers in and out, outputs into the caller's tensors, buffers handed out never
//! recycled, the submission and poll counts of eager ops, and the workspace bound.

mod common;

use common::{Rng, caller_buffer, caller_device, close, dl, fresh};
use ndarray::{Array1, Array4};
use wgconv::gpu::ConvOp;
use wgconv::{Conv2dSpec, Error, Gpu, Padding2d, Pool2dSpec, Tensor, reference};

const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE;
const COPY: wgpu::BufferUsages = wgpu::BufferUsages::COPY_SRC.union(wgpu::BufferUsages::COPY_DST);

fn spec() -> Conv2dSpec {
    Conv2dSpec {
        stride: [2, 1],
        padding: Padding2d::symmetric(1, 1),
        ..Default::default()
    }
}

fn f64s(a: &Array4<f32>) -> Array4<f64> {
    a.mapv(f64::from)
}

/// Every op on a `Gpu` made from a device with `downlevel_defaults()` limits and no features,
/// against the reference.
#[test]
fn every_op_runs_through_from_wgpu_on_downlevel_limits() {
    let (device, queue) = caller_device(wgpu::Limits::downlevel_defaults());
    let gpu = Gpu::from_wgpu(device.clone(), queue).unwrap();
    assert!(!gpu.has_timestamps(), "no features were asked for");
    assert_eq!(gpu.limits().max_storage_buffers_per_shader_stage, 4);
    let mut rng = Rng::new(11);
    let x = rng.array4_f32([2, 4, 9, 7]);
    let w = rng.array4_f32([6, 4, 3, 3]);
    let (gx, gw) = (gpu.upload(&x).unwrap(), gpu.upload(&w).unwrap());
    let s = spec();
    let y = gpu.conv2d_forward(&gx, &gw, None, &s).unwrap();
    let want = reference::conv2d_forward(f64s(&x).view(), f64s(&w).view(), None, &s).unwrap();
    close(&dl(&gpu, &y), &want, "forward");
    let dy = rng.array4_f32([2, 6, want.shape()[2], want.shape()[3]]);
    let gdy = gpu.upload(&dy).unwrap();
    let dx = gpu.conv2d_backward_input(&gdy, &gw, [9, 7], &s).unwrap();
    let want = reference::conv2d_backward_input(f64s(&dy).view(), f64s(&w).view(), [9, 7], &s);
    close(&dl(&gpu, &dx), &want.unwrap(), "dx");
    let dw = gpu.conv2d_backward_weight(&gx, &gdy, [3, 3], &s).unwrap();
    let want = reference::conv2d_backward_weight(f64s(&x).view(), f64s(&dy).view(), [3, 3], &s);
    close(&dl(&gpu, &dw), &want.unwrap(), "dW");
    let db = gpu.conv2d_backward_bias(&gdy).unwrap();
    close(
        &dl(&gpu, &db),
        &reference::conv2d_backward_bias(f64s(&dy).view()),
        "db",
    );
    let p = Pool2dSpec::new([2, 2]);
    let (py, idx) = gpu.max_pool2d_forward(&gx, &p).unwrap();
    let (want_y, want_idx) = reference::max_pool2d_forward(f64s(&x).view(), &p).unwrap();
    close(&dl(&gpu, &py), &want_y, "max-pool");
    assert_eq!(gpu.download_indices(&idx).unwrap(), want_idx.into_dyn());
    let pdy = gpu.upload(&rng.array4_f32([2, 4, 4, 3])).unwrap();
    let pdx = gpu.max_pool2d_backward(&pdy, &idx, [9, 7], &p).unwrap();
    let want = reference::max_pool2d_backward(
        common::dl4(&gpu, &pdy).view(),
        gpu.download_indices(&idx)
            .unwrap()
            .into_dimensionality()
            .unwrap()
            .view(),
        [9, 7],
        &p,
    );
    close(&dl(&gpu, &pdx), &want.unwrap(), "max-pool backward");
    let ay = gpu.avg_pool2d_forward(&gx, &p, true).unwrap();
    close(
        &dl(&gpu, &ay),
        &reference::avg_pool2d_forward(f64s(&x).view(), &p, true).unwrap(),
        "avg-pool",
    );
    let adx = gpu.avg_pool2d_backward(&pdy, [9, 7], &p, false).unwrap();
    let want = reference::avg_pool2d_backward(common::dl4(&gpu, &pdy).view(), [9, 7], &p, false);
    close(&dl(&gpu, &adx), &want.unwrap(), "avg-pool backward");
    // The timing falls back without timestamps.
    let (_, ms) = gpu
        .time_gpu(|| gpu.conv2d_forward(&gx, &gw, None, &s))
        .unwrap();
    assert_eq!(ms, None);
}

/// Limits below the downlevel defaults are refused, naming the limit.
#[test]
fn limits_below_downlevel_are_refused_by_name() {
    let limits = wgpu::Limits {
        max_compute_invocations_per_workgroup: 128,
        max_compute_workgroup_size_x: 128,
        ..wgpu::Limits::downlevel_defaults()
    };
    let (device, queue) = caller_device(limits);
    let e = Gpu::from_wgpu(device, queue).unwrap_err();
    assert!(matches!(e, Error::DeviceLimit(_)), "{e}");
    assert!(
        e.to_string()
            .contains("max_compute_invocations_per_workgroup"),
        "{e}"
    );
}

/// Views of the caller's buffer at non-zero aligned offsets, f32 and u32, as inputs and as
/// outputs (the `_into` forms), with the bytes around them untouched.
#[test]
fn views_at_offsets_in_and_out() {
    let (device, queue) = caller_device(wgpu::Limits::downlevel_defaults());
    let gpu = Gpu::from_wgpu(device.clone(), queue.clone()).unwrap();
    let align = u64::from(gpu.limits().min_storage_buffer_offset_alignment);
    let mut rng = Rng::new(3);
    let x = rng.array4_f32([1, 2, 8, 8]);
    let arena = caller_buffer(&device, 1 << 16, STORAGE | COPY);
    // The next aligned offset after `bytes` from `off`.
    let after = |off: u64, bytes: u64| (off + bytes).div_ceil(align) * align;
    // A sentinel pattern everywhere, then x at offset 4 * align.
    queue.write_buffer(&arena, 0, bytemuck::cast_slice(&vec![7.5f32; 1 << 14]));
    let x_off = 4 * align;
    queue.write_buffer(&arena, x_off, bytemuck::cast_slice(x.as_slice().unwrap()));
    let vx = gpu
        .tensor_from_buffer(arena.clone(), x_off, &[1, 2, 8, 8])
        .unwrap();
    assert_eq!(vx.offset(), x_off);
    assert_eq!(gpu.download(&vx).unwrap(), x.clone().into_dyn());
    // Outputs into views of the same arena, after the input.
    let y_off = after(x_off, 4 * 128);
    let i_off = after(y_off, 4 * 32);
    let p = Pool2dSpec::new([2, 2]);
    let mut vy = gpu
        .tensor_from_buffer(arena.clone(), y_off, &[1, 2, 4, 4])
        .unwrap();
    let mut vi = gpu
        .index_tensor_from_buffer(arena.clone(), i_off, &[1, 2, 4, 4])
        .unwrap();
    gpu.max_pool2d_forward_into(&vx, &p, &mut vy, &mut vi)
        .unwrap();
    let (want, want_idx) = reference::max_pool2d_forward(f64s(&x).view(), &p).unwrap();
    close(&dl(&gpu, &vy), &want, "max-pool into a view");
    assert_eq!(gpu.download_indices(&vi).unwrap(), want_idx.into_dyn());
    // Every op's _into form on views.
    let w = rng.array4_f32([3, 2, 3, 3]);
    let vw_off = after(i_off, 4 * 32);
    queue.write_buffer(&arena, vw_off, bytemuck::cast_slice(w.as_slice().unwrap()));
    let vw = gpu
        .tensor_from_buffer(arena.clone(), vw_off, &[3, 2, 3, 3])
        .unwrap();
    let s = Conv2dSpec::default();
    let mut vc = gpu
        .tensor_from_buffer(arena.clone(), after(vw_off, 4 * 54), &[1, 3, 6, 6])
        .unwrap();
    gpu.conv2d_forward_into(&vx, &vw, None, &s, &mut vc)
        .unwrap();
    let want = reference::conv2d_forward(f64s(&x).view(), f64s(&w).view(), None, &s).unwrap();
    close(&dl(&gpu, &vc), &want, "conv into a view");
    let eager = gpu.conv2d_forward(&vx, &vw, None, &s).unwrap();
    assert_eq!(
        gpu.download(&eager).unwrap(),
        gpu.download(&vc).unwrap(),
        "view == pooled, bitwise"
    );
    let mut dx = gpu.upload(&Array4::<f32>::zeros((1, 2, 8, 8))).unwrap();
    gpu.conv2d_backward_input_into(&vc, &vw, [8, 8], &s, &mut dx)
        .unwrap();
    let want = gpu.conv2d_backward_input(&vc, &vw, [8, 8], &s).unwrap();
    assert_eq!(gpu.download(&dx).unwrap(), gpu.download(&want).unwrap());
    let mut dw = gpu.upload(&Array4::<f32>::zeros((3, 2, 3, 3))).unwrap();
    gpu.conv2d_backward_weight_into(&vx, &vc, [3, 3], &s, &mut dw)
        .unwrap();
    let want = gpu.conv2d_backward_weight(&vx, &vc, [3, 3], &s).unwrap();
    assert_eq!(gpu.download(&dw).unwrap(), gpu.download(&want).unwrap());
    let mut db = gpu.upload(&Array1::<f32>::zeros(3)).unwrap();
    gpu.conv2d_backward_bias_into(&vc, &mut db).unwrap();
    assert_eq!(
        gpu.download(&db).unwrap(),
        gpu.download(&gpu.conv2d_backward_bias(&vc).unwrap())
            .unwrap()
    );
    let mut pdx = gpu.upload(&Array4::<f32>::zeros((1, 2, 8, 8))).unwrap();
    gpu.max_pool2d_backward_into(&vy, &vi, [8, 8], &p, &mut pdx)
        .unwrap();
    let want = gpu.max_pool2d_backward(&vy, &vi, [8, 8], &p).unwrap();
    assert_eq!(gpu.download(&pdx).unwrap(), gpu.download(&want).unwrap());
    let mut ay = gpu.upload(&Array4::<f32>::zeros((1, 2, 4, 4))).unwrap();
    gpu.avg_pool2d_forward_into(&vx, &p, true, &mut ay).unwrap();
    let want = gpu.avg_pool2d_forward(&vx, &p, true).unwrap();
    assert_eq!(gpu.download(&ay).unwrap(), gpu.download(&want).unwrap());
    let mut adx = gpu.upload(&Array4::<f32>::zeros((1, 2, 8, 8))).unwrap();
    gpu.avg_pool2d_backward_into(&vy, [8, 8], &p, false, &mut adx)
        .unwrap();
    let want = gpu.avg_pool2d_backward(&vy, [8, 8], &p, false).unwrap();
    assert_eq!(gpu.download(&adx).unwrap(), gpu.download(&want).unwrap());
    // The bytes before the first view are the sentinel still.
    let head = gpu
        .tensor_from_buffer(arena, 0, &[(x_off / 4) as usize])
        .unwrap();
    assert!(gpu.download(&head).unwrap().iter().all(|&v| v == 7.5));
}

/// Views the contract refuses: misaligned, too short, without STORAGE; downloads need COPY_SRC;
/// outputs of the wrong shape or overlapping an input.
#[test]
fn bad_views_and_outputs_are_refused() {
    let (device, queue) = caller_device(wgpu::Limits::downlevel_defaults());
    let gpu = Gpu::from_wgpu(device.clone(), queue).unwrap();
    let align = u64::from(gpu.limits().min_storage_buffer_offset_alignment);
    let buf = caller_buffer(&device, 4096, STORAGE | COPY);
    let e = gpu.tensor_from_buffer(buf.clone(), 4, &[4]).unwrap_err();
    assert!(
        e.to_string().contains("offset 4") && e.to_string().contains("alignment"),
        "{e}"
    );
    let e = gpu
        .tensor_from_buffer(buf.clone(), align, &[1024])
        .unwrap_err();
    assert!(e.to_string().contains("does not fit"), "{e}");
    let e = gpu
        .index_tensor_from_buffer(buf.clone(), 0, &[usize::MAX, 2])
        .unwrap_err();
    assert!(
        matches!(e, Error::Overflow(_) | Error::InvalidArgument(_)),
        "{e}"
    );
    let uniform = caller_buffer(
        &device,
        256,
        wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
    );
    let e = gpu.tensor_from_buffer(uniform, 0, &[4]).unwrap_err();
    assert!(e.to_string().contains("without STORAGE"), "{e}");
    let no_copy = caller_buffer(&device, 256, STORAGE);
    let v = gpu.tensor_from_buffer(no_copy, 0, &[4]).unwrap();
    let e = gpu.download(&v).unwrap_err();
    assert!(e.to_string().contains("without COPY_SRC"), "{e}");
    // Outputs: wrong shape; overlapping an input.
    let x = gpu
        .tensor_from_buffer(buf.clone(), 0, &[1, 1, 8, 8])
        .unwrap();
    let mut wrong = gpu
        .tensor_from_buffer(buf.clone(), 8 * align, &[1, 1, 3, 3])
        .unwrap();
    let e = gpu
        .avg_pool2d_forward_into(&x, &Pool2dSpec::new([2, 2]), true, &mut wrong)
        .unwrap_err();
    assert!(e.to_string().contains("[1, 1, 4, 4]"), "{e}");
    let mut overlapping = gpu.tensor_from_buffer(buf, 0, &[1, 1, 4, 4]).unwrap();
    let e = gpu
        .avg_pool2d_forward_into(&x, &Pool2dSpec::new([2, 2]), true, &mut overlapping)
        .unwrap_err();
    assert!(e.to_string().contains("overlaps an input"), "{e}");
}

/// A pooled buffer handed out (by `buffer()` or `into_buffer()`) is never recycled: a clone the
/// caller keeps still holds the tensor's data after the tensor is dropped and other tensors are
/// made.
#[test]
fn buffers_handed_out_are_never_recycled() {
    let gpu = fresh(Gpu::builder());
    let read = |b: &wgpu::Buffer, off: u64| {
        let v = gpu.tensor_from_buffer(b.clone(), off, &[64]).unwrap();
        gpu.download(&v).unwrap()
    };
    let t = gpu.upload(&Array1::<f32>::from_elem(64, 3.0)).unwrap();
    let kept = t.buffer().unwrap().clone();
    drop(t);
    let u = gpu.upload(&Array1::<f32>::from_elem(64, 4.0)).unwrap();
    let (owned, off) = u.into_buffer().unwrap();
    for _ in 0..4 {
        let _other = gpu.upload(&Array1::<f32>::from_elem(64, 9.0)).unwrap();
    }
    assert!(
        read(&kept, 0).iter().all(|&v| v == 3.0),
        "buffer() clone kept its data"
    );
    assert!(
        read(&owned, off).iter().all(|&v| v == 4.0),
        "into_buffer() kept its data"
    );
}

/// An eager op costs one queue submission and no device poll (no blocking wait on the way
/// in); a download polls.
#[test]
fn eager_ops_submit_once_and_never_poll() {
    let gpu = fresh(Gpu::builder().checked(false));
    let mut rng = Rng::new(5);
    let x = gpu.upload(&rng.array4_f32([2, 3, 8, 8])).unwrap();
    let w = gpu.upload(&rng.array4_f32([4, 3, 3, 3])).unwrap();
    let dy = gpu.upload(&rng.array4_f32([2, 4, 6, 6])).unwrap();
    let p = Pool2dSpec::new([2, 2]);
    let (_, idx) = gpu.max_pool2d_forward(&x, &p).unwrap();
    let pdy = gpu.upload(&rng.array4_f32([2, 3, 4, 4])).unwrap();
    let s = Conv2dSpec::default();
    type Op<'a> = Box<dyn Fn() -> wgconv::Result<Tensor> + 'a>;
    let ops: Vec<(&str, Op<'_>)> = vec![
        (
            "conv2d_forward",
            Box::new(|| gpu.conv2d_forward(&x, &w, None, &s)),
        ),
        (
            "conv2d_backward_input",
            Box::new(|| gpu.conv2d_backward_input(&dy, &w, [8, 8], &s)),
        ),
        (
            "conv2d_backward_weight",
            Box::new(|| gpu.conv2d_backward_weight(&x, &dy, [3, 3], &s)),
        ),
        (
            "conv2d_backward_bias",
            Box::new(|| gpu.conv2d_backward_bias(&dy)),
        ),
        (
            "max_pool2d_forward",
            Box::new(|| gpu.max_pool2d_forward(&x, &p).map(|r| r.0)),
        ),
        (
            "max_pool2d_backward",
            Box::new(|| gpu.max_pool2d_backward(&pdy, &idx, [8, 8], &p)),
        ),
        (
            "avg_pool2d_forward",
            Box::new(|| gpu.avg_pool2d_forward(&x, &p, true)),
        ),
        (
            "avg_pool2d_backward",
            Box::new(|| gpu.avg_pool2d_backward(&pdy, [8, 8], &p, true)),
        ),
    ];
    for (name, op) in &ops {
        let before = gpu.counters();
        let t = op().unwrap();
        let after = gpu.counters();
        assert_eq!(
            after.submissions - before.submissions,
            1,
            "{name}: submissions"
        );
        assert_eq!(after.polls - before.polls, 0, "{name}: polls");
        gpu.download(&t).unwrap();
        assert!(
            gpu.counters().polls > after.polls,
            "{name}: the download waits"
        );
    }
}

/// The workspace query names the scratch a plan will take, and a bound makes the plan pick
/// fewer splits (the results stay right), or is `Err` naming it when not one split fits.
#[test]
fn the_workspace_bound_is_honoured() {
    let mut rng = Rng::new(9);
    let x = rng.array4_f32([4, 16, 12, 12]);
    let dy = rng.array4_f32([4, 32, 12, 12]);
    let s = Conv2dSpec {
        padding: Padding2d::symmetric(1, 1),
        ..Default::default()
    };
    let (xs, ws) = ([4, 16, 12, 12], [32, 16, 3, 3]);
    let free = fresh(Gpu::builder());
    let unbounded = free
        .conv2d_workspace_bytes(ConvOp::BackwardWeight, xs, ws, &s)
        .unwrap();
    assert!(unbounded > 0, "dW keeps partial sums");
    let one: u64 = 32 * 16 * 9 * 4;
    for bound in [one, 2 * one + 4] {
        let gpu = fresh(Gpu::builder().max_workspace_bytes(bound));
        let bytes = gpu
            .conv2d_workspace_bytes(ConvOp::BackwardWeight, xs, ws, &s)
            .unwrap();
        assert!(bytes <= bound, "{bytes} within {bound}");
        let (gx, gdy) = (gpu.upload(&x).unwrap(), gpu.upload(&dy).unwrap());
        let dw = gpu.conv2d_backward_weight(&gx, &gdy, [3, 3], &s).unwrap();
        let want = reference::conv2d_backward_weight(f64s(&x).view(), f64s(&dy).view(), [3, 3], &s);
        close(&dl(&gpu, &dw), &want.unwrap(), "dW within the bound");
    }
    let tight = fresh(Gpu::builder().max_workspace_bytes(one - 4));
    let (gx, gdy) = (tight.upload(&x).unwrap(), tight.upload(&dy).unwrap());
    let e = tight
        .conv2d_backward_weight(&gx, &gdy, [3, 3], &s)
        .unwrap_err();
    assert!(e.to_string().contains("max_workspace_bytes"), "{e}");
    // Split-K of the forward on a GPU-like split target shrinks to the bound too.
    let split = fresh(Gpu::builder().split_target(4096));
    let big = split
        .conv2d_workspace_bytes(ConvOp::Forward, [1, 64, 8, 8], [16, 64, 3, 3], &s)
        .unwrap();
    assert!(big > 0, "split-K forced");
    let bounded = fresh(
        Gpu::builder()
            .split_target(4096)
            .max_workspace_bytes(big / 2),
    );
    let b = bounded
        .conv2d_workspace_bytes(ConvOp::Forward, [1, 64, 8, 8], [16, 64, 3, 3], &s)
        .unwrap();
    assert!(b <= big / 2 && b < big, "{b} vs {big}");
}
