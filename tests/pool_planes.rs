//! Pools on planes larger than one storage binding: split by rows of the plane (with the rows
//! the windows reach), bit-identical to the unsplit kernels and right against the reference,
//! for every option; and a 164 MB single-plane image through all four pool ops.

mod common;

use common::{Rng, close, dl, fresh};
use ndarray::Array4;
use wgconv::{Gpu, Pool2dSpec, reference};

/// A small binding (4 KiB: 1,016 elements with alignment slack) against planes of 1,400 to
/// 2,500 elements, for every option; each result equals the unsplit one bit for bit.
#[test]
fn planes_past_a_binding_split_by_rows_for_every_option() {
    let small = fresh(Gpu::builder().max_binding_bytes(4096));
    let whole = fresh(Gpu::builder());
    let mut rng = Rng::new(41);
    let specs = [
        Pool2dSpec::new([2, 2]),
        Pool2dSpec::new([3, 3])
            .with_stride([2, 2])
            .with_padding([1, 1]),
        Pool2dSpec::new([3, 2])
            .with_stride([2, 1])
            .with_padding([1, 0])
            .with_ceil_mode(true),
        Pool2dSpec::new([3, 3])
            .with_stride([1, 2])
            .with_dilation([2, 1]),
        Pool2dSpec::new([5, 3])
            .with_stride([3, 3])
            .with_padding([2, 1])
            .with_ceil_mode(true),
    ];
    let bits = |gpu: &Gpu, t: &wgconv::Tensor| -> Vec<u32> {
        gpu.download(t)
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    for (case, spec) in specs.iter().enumerate() {
        let x = rng.array4_f32([2, 1, 50, 37]);
        let hw = [50, 37];
        let x64 = x.mapv(f64::from);
        // Max-pool, and its backward with the forward's indices.
        let (want, want_idx) = reference::max_pool2d_forward(x64.view(), spec).unwrap();
        let dy = rng.array4_f32([2, 1, want.shape()[2], want.shape()[3]]);
        let mut results = Vec::new();
        for gpu in [&small, &whole] {
            let gx = gpu.upload(&x).unwrap();
            let (y, idx) = gpu.max_pool2d_forward(&gx, spec).unwrap();
            close(&dl(gpu, &y), &want, &format!("case {case} max-pool"));
            assert_eq!(
                gpu.download_indices(&idx).unwrap(),
                want_idx.clone().into_dyn()
            );
            let gdy = gpu.upload(&dy).unwrap();
            let dx = gpu.max_pool2d_backward(&gdy, &idx, hw, spec).unwrap();
            let want_dx = reference::max_pool2d_backward(
                dy.mapv(f64::from).view(),
                want_idx.view(),
                hw,
                spec,
            )
            .unwrap();
            close(
                &dl(gpu, &dx),
                &want_dx,
                &format!("case {case} max-pool backward"),
            );
            results.push([bits(gpu, &y), bits(gpu, &dx)]);
        }
        assert_eq!(
            results[0], results[1],
            "case {case}: split == unsplit (max)"
        );
        // Avg-pool (dilation 1), both divisors.
        if spec.dilation != [1, 1] {
            continue;
        }
        for cip in [true, false] {
            let want = reference::avg_pool2d_forward(x64.view(), spec, cip).unwrap();
            let dy = rng.array4_f32([2, 1, want.shape()[2], want.shape()[3]]);
            let want_dx =
                reference::avg_pool2d_backward(dy.mapv(f64::from).view(), hw, spec, cip).unwrap();
            let mut results = Vec::new();
            for gpu in [&small, &whole] {
                let gx = gpu.upload(&x).unwrap();
                let y = gpu.avg_pool2d_forward(&gx, spec, cip).unwrap();
                close(&dl(gpu, &y), &want, &format!("case {case} avg-pool {cip}"));
                let dx = gpu
                    .avg_pool2d_backward(&gpu.upload(&dy).unwrap(), hw, spec, cip)
                    .unwrap();
                close(
                    &dl(gpu, &dx),
                    &want_dx,
                    &format!("case {case} avg backward {cip}"),
                );
                results.push([bits(gpu, &y), bits(gpu, &dx)]);
            }
            assert_eq!(
                results[0], results[1],
                "case {case}: split == unsplit (avg {cip})"
            );
        }
    }
}

/// One 1 x 1 x 6400 x 6400 image (164 MB, past the 128 MiB binding of the software drivers)
/// through max-pool and avg-pool, forward and backward, checked on closed forms.
#[test]
fn a_164_mb_image_through_every_pool_op() {
    let gpu = fresh(Gpu::builder());
    let n = 6400;
    // Window (oh, ow) holds 4 * base + {0, 1, 2, 3}, base = (oh + ow) % 1000 (exact in f32):
    // distinct, its maximum at the bottom right.
    let base = |oh: usize, ow: usize| ((oh + ow) % 1000) as f32 * 4.0;
    let x = Array4::from_shape_fn((1, 1, n, n), |(_, _, h, w)| {
        base(h / 2, w / 2) + ((h % 2) * 2 + w % 2) as f32
    });
    let gx = gpu.upload(&x).unwrap();
    assert!(gx.len() * 4 > 128 << 20, "the image exceeds a binding");
    let p = Pool2dSpec::new([2, 2]);
    let (y, idx) = gpu.max_pool2d_forward(&gx, &p).unwrap();
    let (y, idx) = (
        gpu.download(&y).unwrap(),
        gpu.download_indices(&idx).unwrap(),
    );
    for (o, (&v, &i)) in y.iter().zip(idx.iter()).enumerate() {
        let (oh, ow) = (o / (n / 2), o % (n / 2));
        let at = (2 * oh + 1) * n + 2 * ow + 1;
        if v != base(oh, ow) + 3.0 || i as usize != at {
            panic!("max-pool at [{oh}, {ow}]: {v} at {i}, want {at}");
        }
    }
    // Backward with dy = 1: a 1 at each window's argmax, 0 elsewhere.
    let ones = gpu
        .upload(&Array4::<f32>::ones((1, 1, n / 2, n / 2)))
        .unwrap();
    let gidx = gpu.upload_indices(&idx).unwrap();
    let dx = gpu.max_pool2d_backward(&ones, &gidx, [n, n], &p).unwrap();
    let dx = gpu.download(&dx).unwrap();
    for (i, &v) in dx.iter().enumerate() {
        let (h, w) = (i / n, i % n);
        let want = if h % 2 == 1 && w % 2 == 1 { 1.0 } else { 0.0 };
        if v != want {
            panic!("max-pool backward at [{h}, {w}]: {v}, want {want}");
        }
    }
    // Avg-pool of the same image: every window's mean, 4 * base + 1.5, exact.
    let a = gpu
        .download(&gpu.avg_pool2d_forward(&gx, &p, true).unwrap())
        .unwrap();
    assert_eq!(a.shape(), &[1, 1, n / 2, n / 2]);
    for (o, &v) in a.iter().enumerate() {
        let (oh, ow) = (o / (n / 2), o % (n / 2));
        if v != base(oh, ow) + 1.5 {
            panic!("avg-pool at [{oh}, {ow}]: {v}");
        }
    }
    // Backward with dy = 1: every element receives 1/4.
    let adx = gpu.avg_pool2d_backward(&ones, [n, n], &p, true).unwrap();
    assert!(gpu.download(&adx).unwrap().iter().all(|&v| v == 0.25));
}
