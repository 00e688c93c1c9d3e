//! Conv ops on samples larger than one storage binding: split into row bands (with the halo the
//! windows reach), for every option, eager and recorded, overwriting and accumulating, against
//! the reference; and a 164 MB single-channel image through forward, dx, dW and db.

mod common;

use common::{Rng, check_conv, close, dl, dl4, f64s, fresh};
use ndarray::{Array1, Array4};
use wgconv::{Conv2dSpec, Gpu, Padding2d, reference};

/// Every option at a 4 KiB binding (1,016 elements with alignment slack), against samples of
/// 2,000 to 4,000 elements: all four ops through `check_conv`.
#[test]
fn samples_past_a_binding_split_by_rows_for_every_option() {
    let gpu = fresh(Gpu::builder().max_binding_bytes(4096));
    let mut rng = Rng::new(77);
    let pad = |top, bottom, left, right| Padding2d {
        top,
        bottom,
        left,
        right,
    };
    let cases: [([usize; 4], [usize; 4], Conv2dSpec); 8] = [
        ([2, 3, 31, 23], [4, 3, 3, 3], Conv2dSpec::default()),
        (
            [1, 3, 40, 20],
            [5, 3, 3, 3],
            Conv2dSpec::default().with_padding(pad(1, 1, 1, 1)),
        ),
        (
            [2, 4, 37, 16],
            [6, 4, 3, 2],
            Conv2dSpec::default()
                .with_stride([2, 1])
                .with_padding(pad(2, 1, 0, 1)),
        ),
        (
            [1, 4, 45, 17],
            [3, 4, 1, 1],
            Conv2dSpec::default().with_stride([2, 2]),
        ),
        // Padding past the kernel's reach: bands of output rows that read only padding.
        (
            [1, 2, 60, 20],
            [3, 2, 1, 1],
            Conv2dSpec::default()
                .with_stride([3, 1])
                .with_padding(pad(4, 5, 1, 0)),
        ),
        (
            [1, 3, 50, 21],
            [2, 3, 3, 3],
            Conv2dSpec::default()
                .with_dilation([3, 2])
                .with_padding(pad(3, 2, 2, 2)),
        ),
        (
            [2, 4, 33, 15],
            [6, 2, 3, 3],
            Conv2dSpec::default()
                .with_groups(2)
                .with_stride([1, 2])
                .with_padding(pad(1, 1, 1, 1)),
        ),
        // Depthwise.
        (
            [1, 4, 41, 19],
            [4, 1, 5, 3],
            Conv2dSpec::default()
                .with_groups(4)
                .with_padding(pad(2, 2, 1, 1)),
        ),
    ];
    for (case, (xs, ws, spec)) in cases.iter().enumerate() {
        let x = rng.array4_f32(*xs);
        let w = rng.array4_f32(*ws);
        let b = Array1::from_shape_fn(ws[0], |i| i as f32 * 0.25 - 0.5);
        assert!(xs[1] * xs[2] * xs[3] > 1016, "case {case} splits a sample");
        check_conv(&gpu, &format!("case {case}"), &x, &w, Some(&b), spec);
    }
}

/// The accumulating forms and a recorded batch at a small binding, against the reference; and
/// every band op twice gives the same bits.
#[test]
fn banded_ops_accumulate_record_and_repeat_bit_for_bit() {
    let gpu = fresh(Gpu::builder().max_binding_bytes(4096));
    let mut rng = Rng::new(78);
    let spec = Conv2dSpec::default()
        .with_stride([2, 1])
        .with_padding(Padding2d {
            top: 1,
            bottom: 2,
            left: 1,
            right: 1,
        });
    let (x, w) = (rng.array4_f32([2, 3, 43, 19]), rng.array4_f32([4, 3, 3, 3]));
    let (xd, wd) = (f64s(&x), f64s(&w));
    let y_ref = reference::conv2d_forward(xd.view(), wd.view(), None, &spec).unwrap();
    let dy = rng.array4_f32(y_ref.dim().into());
    let dyd = f64s(&dy);
    let dx_ref = reference::conv2d_backward_input(dyd.view(), wd.view(), [43, 19], &spec).unwrap();
    let dw_ref = reference::conv2d_backward_weight(xd.view(), dyd.view(), [3, 3], &spec).unwrap();
    let db_ref = reference::conv2d_backward_bias(dyd.view());
    let (gx, gw, gdy) = (
        gpu.upload(&x).unwrap(),
        gpu.upload(&w).unwrap(),
        gpu.upload(&dy).unwrap(),
    );
    // Accumulating into a start value: start + the op.
    let start =
        |shape: [usize; 4]| Array4::from_shape_fn(shape, |(a, b, c, d)| (a + b + c + d) as f32);
    let mut gdx = gpu.upload(&start([2, 3, 43, 19])).unwrap();
    gpu.conv2d_backward_input_accumulate(&gdy, &gw, &spec, &mut gdx)
        .unwrap();
    close(
        &dl4(&gpu, &gdx),
        &(f64s(&start([2, 3, 43, 19])) + &dx_ref),
        "dx += ",
    );
    let mut gdw = gpu.upload(&start([4, 3, 3, 3])).unwrap();
    gpu.conv2d_backward_weight_accumulate(&gx, &gdy, &spec, &mut gdw)
        .unwrap();
    close(
        &dl4(&gpu, &gdw),
        &(f64s(&start([4, 3, 3, 3])) + &dw_ref),
        "dW += ",
    );
    let mut gdb = gpu.upload(&Array1::from_elem(4, 2.0f32)).unwrap();
    gpu.conv2d_backward_bias_accumulate(&gdy, &mut gdb).unwrap();
    close(&dl(&gpu, &gdb), &(db_ref.mapv(|v| v + 2.0)), "db += ");
    // Recorded: the inputs dropped before the submit; one submission.
    let before = gpu.counters().submissions;
    let mut rec = gpu.recorder();
    let (ry, rdx, rdw, rdb) = {
        let (gx, gw, gdy) = (
            gpu.upload(&x).unwrap(),
            gpu.upload(&w).unwrap(),
            gpu.upload(&dy).unwrap(),
        );
        let before = gpu.counters().submissions;
        let out = (
            rec.conv2d_forward(&gx, &gw, None, &spec).unwrap(),
            rec.conv2d_backward_input(&gdy, &gw, [43, 19], &spec)
                .unwrap(),
            rec.conv2d_backward_weight(&gx, &gdy, [3, 3], &spec)
                .unwrap(),
            rec.conv2d_backward_bias(&gdy).unwrap(),
        );
        assert_eq!(
            gpu.counters().submissions,
            before,
            "recording submits nothing"
        );
        out
    };
    rec.submit().unwrap();
    assert!(
        gpu.counters().submissions - before <= 4,
        "uploads and one submission"
    );
    close(&dl4(&gpu, &ry), &y_ref, "recorded forward");
    close(&dl4(&gpu, &rdx), &dx_ref, "recorded dx");
    close(&dl4(&gpu, &rdw), &dw_ref, "recorded dW");
    close(&dl(&gpu, &rdb), &db_ref, "recorded db");
    // An eager banded op is one submission too; and the same bits every time.
    let bits = |t: &wgconv::Tensor| common::bits(&gpu, t);
    let before = gpu.counters().submissions;
    let y1 = gpu.conv2d_forward(&gx, &gw, None, &spec).unwrap();
    assert_eq!(gpu.counters().submissions - before, 1, "one submission");
    let y2 = gpu.conv2d_forward(&gx, &gw, None, &spec).unwrap();
    assert_eq!(bits(&y1), bits(&y2));
    assert_eq!(bits(&y1), bits(&ry), "recorded == eager");
    let dw1 = gpu
        .conv2d_backward_weight(&gx, &gdy, [3, 3], &spec)
        .unwrap();
    let dw2 = gpu
        .conv2d_backward_weight(&gx, &gdy, [3, 3], &spec)
        .unwrap();
    assert_eq!(bits(&dw1), bits(&dw2));
    let dx1 = gpu
        .conv2d_backward_input(&gdy, &gw, [43, 19], &spec)
        .unwrap();
    assert_eq!(bits(&dx1), bits(&rdx));
}

/// A view of the caller's buffer without the copy usages cannot be split into bands: `Err`
/// naming the usage, and the view is untouched.
#[test]
fn a_view_without_copy_usage_is_refused_by_name() {
    let gpu = fresh(Gpu::builder().max_binding_bytes(4096));
    let device = gpu.device();
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("storage only"),
        size: 3 * 40 * 20 * 4,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let x = gpu.tensor_from_buffer(buffer, 0, &[1, 3, 40, 20]).unwrap();
    let w = gpu.upload(&Array4::<f32>::ones((2, 3, 3, 3))).unwrap();
    let e = gpu
        .conv2d_forward(&x, &w, None, &Conv2dSpec::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("COPY_SRC") && e.contains("row bands"), "{e}");
}

/// One 1 x 1 x 6400 x 6400 image (164 MB, past the 128 MiB binding of the software drivers)
/// through a 3x3 conv with padding 1 and two output channels: forward and dx on sampled rows
/// (the band edges among them), dW and db whole, against f64 sums on the host.
#[test]
fn a_164_mb_image_through_every_conv_op() {
    let gpu = common::gpu();
    let n = 6400;
    let spec = Conv2dSpec::default().with_padding(Padding2d::symmetric(1, 1));
    let xv = |h: usize, w: usize| ((h * 7 + w * 3) % 13) as f32 / 8.0 - 0.75;
    let dyv = |k: usize, h: usize, w: usize| ((h * 5 + w * 11 + k * 3) % 7) as f32 / 4.0 - 0.75;
    let x = Array4::from_shape_fn((1, 1, n, n), |(_, _, h, w)| xv(h, w));
    let wt = Array4::from_shape_fn((2, 1, 3, 3), |(k, _, i, j)| {
        (k * 9 + i * 3 + j) as f32 / 16.0 - 0.5
    });
    let dy = Array4::from_shape_fn((1, 2, n, n), |(_, k, h, w)| dyv(k, h, w));
    let (gx, gw, gdy) = (
        gpu.upload(&x).unwrap(),
        gpu.upload(&wt).unwrap(),
        gpu.upload(&dy).unwrap(),
    );
    assert!(gx.len() * 4 > 128 << 20, "the image exceeds a binding");
    let at = |h: isize, w: isize, f: &dyn Fn(usize, usize) -> f32| -> f64 {
        if h < 0 || w < 0 || h >= n as isize || w >= n as isize {
            0.0
        } else {
            f64::from(f(h as usize, w as usize))
        }
    };
    // Rows: the first, the last, and around every band edge (bands are whole rows).
    let mut rows: Vec<usize> = vec![0, 1, n - 2, n - 1];
    for edge in [n / 4, n / 3, n / 2, 2 * n / 3, 3 * n / 4] {
        rows.extend(edge - 2..edge + 2);
    }
    let cols = [0usize, 1, 2, 777, 3199, 3200, n - 2, n - 1];
    let y = gpu
        .download(&gpu.conv2d_forward(&gx, &gw, None, &spec).unwrap())
        .unwrap();
    let dx = gpu
        .download(&gpu.conv2d_backward_input(&gdy, &gw, [n, n], &spec).unwrap())
        .unwrap();
    for &h in &rows {
        for &c in &cols {
            for k in 0..2 {
                let mut want = 0.0;
                for i in 0..3 {
                    for j in 0..3 {
                        let v = at(
                            h as isize + i as isize - 1,
                            c as isize + j as isize - 1,
                            &xv,
                        );
                        want += f64::from(wt[[k, 0, i, j]]) * v;
                    }
                }
                let got = f64::from(y[[0, k, h, c]]);
                assert!(
                    (got - want).abs() < 1e-5,
                    "forward [{k}, {h}, {c}]: {got} vs {want}"
                );
            }
            let mut want = 0.0;
            for k in 0..2 {
                for i in 0..3 {
                    for j in 0..3 {
                        let dyk = |a: usize, b: usize| dyv(k, a, b);
                        let v = at(
                            h as isize + 1 - i as isize,
                            c as isize + 1 - j as isize,
                            &dyk,
                        );
                        want += f64::from(wt[[k, 0, i, j]]) * v;
                    }
                }
            }
            let got = f64::from(dx[[0, 0, h, c]]);
            assert!((got - want).abs() < 1e-5, "dx [{h}, {c}]: {got} vs {want}");
        }
    }
    drop((y, dx));
    // dW[k, 0, i, j] = sum over positions of dy[k, h, w] * x[h + i - 1, w + j - 1]; db = sum dy.
    let dw = gpu
        .download(
            &gpu.conv2d_backward_weight(&gx, &gdy, [3, 3], &spec)
                .unwrap(),
        )
        .unwrap();
    let db = gpu
        .download(&gpu.conv2d_backward_bias(&gdy).unwrap())
        .unwrap();
    let mut dw_want = [[0.0f64; 9]; 2];
    let mut db_want = [0.0f64; 2];
    for h in 0..n {
        for w in 0..n {
            for (k, acc) in dw_want.iter_mut().enumerate() {
                let d = f64::from(dyv(k, h, w));
                db_want[k] += d;
                for (t, a) in acc.iter_mut().enumerate() {
                    let v = at(
                        h as isize + (t / 3) as isize - 1,
                        w as isize + (t % 3) as isize - 1,
                        &xv,
                    );
                    *a += d * v;
                }
            }
        }
    }
    for k in 0..2 {
        for t in 0..9 {
            let (got, want) = (f64::from(dw[[k, 0, t / 3, t % 3]]), dw_want[k][t]);
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1e4),
                "dW [{k}, {t}]: {got} vs {want}"
            );
        }
        let got = f64::from(db[[k]]);
        assert!(
            (got - db_want[k]).abs() <= 1e-5 * db_want[k].abs().max(1e4),
            "db [{k}]: {got} vs {}",
            db_want[k]
        );
    }
}

/// The band tensors count as workspace: `conv2d_workspace_bytes` reports them, a workspace bound
/// makes the bands smaller (results unchanged), and a bound too small for one row is `Err`
/// naming it.
#[test]
fn bands_stay_within_the_workspace_bound() {
    use wgconv::gpu::ConvOp;
    let spec = Conv2dSpec::default().with_padding(Padding2d::symmetric(1, 1));
    let (xs, ws) = ([1, 3, 40, 20], [4, 3, 3, 3]);
    let mut rng = Rng::new(79);
    let (x, w) = (rng.array4_f32(xs), rng.array4_f32(ws));
    let ops = [
        ConvOp::Forward,
        ConvOp::BackwardInput,
        ConvOp::BackwardInputAccumulate,
        ConvOp::BackwardWeight,
        ConvOp::BackwardBias,
    ];
    let open = fresh(Gpu::builder().max_binding_bytes(4096));
    for op in ops {
        let bytes = open.conv2d_workspace_bytes(op, xs, ws, &spec).unwrap();
        assert!(
            bytes >= 2 * 4 * 20,
            "{op:?}: the band tensors ({bytes} bytes)"
        );
    }
    let bound = 6 * 1024;
    let tight = fresh(
        Gpu::builder()
            .max_binding_bytes(4096)
            .max_workspace_bytes(bound),
    );
    for op in ops {
        let bytes = tight.conv2d_workspace_bytes(op, xs, ws, &spec).unwrap();
        assert!(
            bytes <= bound,
            "{op:?}: {bytes} bytes past the bound {bound}"
        );
    }
    check_conv(&tight, "workspace bound", &x, &w, None, &spec);
    let tiny = fresh(
        Gpu::builder()
            .max_binding_bytes(4096)
            .max_workspace_bytes(1024),
    );
    let e = tiny
        .conv2d_workspace_bytes(ConvOp::Forward, xs, ws, &spec)
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_workspace_bytes 1024"), "{e}");
}
