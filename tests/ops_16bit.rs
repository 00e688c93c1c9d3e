//! The eight conv and pool ops on F16 and BF16 operands (f32 products and sums, each output
//! element rounded once): against the f64 reference on the rounded inputs, rounded once (most
//! elements equal to it, none further than one unit in the last place plus the f32
//! accumulation's share); bit-equal to the f32 op on the widened inputs, rounded; max-pool
//! indices as in f32; `_into` and `_accumulate` targets of the operands' dtype or f32 (an f32
//! master gradient with no rounding in between); recorded equal to eager; three runs
//! bit-identical; samples past a binding; dtype errors naming both dtypes.

mod common;

use common::{Rng, bits, f64s, fresh, gpu, random_conv, random_pool};
use ndarray::{Array1, Array4, ArrayD, Ix4};
use wgconv::compare::GPU_TOLERANCE;
use wgconv::{Conv2dSpec, DType, Error, Gpu, Padding2d, Pool2dSpec, Tensor, reference};

const SIXTEEN: [DType; 2] = [DType::F16, DType::BF16];

/// One unit in the last place of `v` in `dt` (the subnormal spacing near zero).
fn ulp(dt: DType, v: f64) -> f64 {
    let (mant, min_exp) = match dt {
        DType::F16 => (10, -14),
        _ => (7, -126),
    };
    let e = if v == 0.0 {
        min_exp
    } else {
        (v.abs().log2().floor() as i32).max(min_exp)
    };
    2f64.powi(e - mant)
}

/// `got` (a 16-bit result, downloaded) against the f64 reference `want` on the rounded inputs:
/// within one ulp of the rounded reference plus the f32 check's share; returns the fraction
/// that equals the rounded reference exactly.
#[track_caller]
fn check_16(dt: DType, got: &ArrayD<f32>, want: &ArrayD<f64>, what: &str) -> f64 {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
    let mut exact = 0;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let rounded = f64::from(dt.round(w as f32));
        let err = (f64::from(g) - rounded).abs();
        let bound = ulp(dt, w) + GPU_TOLERANCE * scale;
        assert!(
            err <= bound,
            "{what} ({dt}): element {i} is {g}, the reference {w} rounds to {rounded} (error \
             {err:e} > {bound:e})"
        );
        exact += usize::from(g as f64 == rounded);
    }
    exact as f64 / got.len().max(1) as f64
}

/// Inputs rounded to `dt`: the 16-bit tensor and its values as f64.
fn rounded(gpu: &Gpu, a: &Array4<f32>, dt: DType) -> (Tensor, Array4<f64>) {
    let t = gpu.upload_as(a, dt).unwrap();
    let v = gpu
        .download(&t)
        .unwrap()
        .into_dimensionality::<Ix4>()
        .unwrap();
    (t, f64s(&v))
}

/// All four conv ops in `dt` on one layer against the reference; returns the exact fraction.
fn conv_case(
    gpu: &Gpu,
    dt: DType,
    x: [usize; 4],
    w: [usize; 4],
    spec: &Conv2dSpec,
    seed: u64,
) -> f64 {
    let mut rng = Rng::new(seed);
    let (xt, xd) = rounded(gpu, &rng.array4_f32(x), dt);
    let (wt, wd) = rounded(gpu, &rng.array4_f32(w), dt);
    let b = Array1::from_vec(rng.array4_f32([1, 1, 1, w[0]]).into_raw_vec_and_offset().0);
    let bt = gpu.upload_as(&b, dt).unwrap();
    let bd = gpu
        .download(&bt)
        .unwrap()
        .mapv(f64::from)
        .into_dimensionality()
        .unwrap();
    let what = format!("x {x:?} w {w:?} {spec:?}");
    let y = gpu.conv2d_forward(&xt, &wt, Some(&bt), spec).unwrap();
    assert_eq!(y.dtype(), dt);
    let y_ref = reference::conv2d_forward(xd.view(), wd.view(), Some(bd.view()), spec).unwrap();
    let mut fr = check_16(
        dt,
        &gpu.download(&y).unwrap(),
        &y_ref.into_dyn(),
        &format!("{what}: forward"),
    );
    let dy_shape: [usize; 4] = y.shape().try_into().unwrap();
    let (dyt, dyd) = rounded(gpu, &rng.array4_f32(dy_shape), dt);
    let hw = [x[2], x[3]];
    let dx = gpu.conv2d_backward_input(&dyt, &wt, hw, spec).unwrap();
    let dx_ref = reference::conv2d_backward_input(dyd.view(), wd.view(), hw, spec).unwrap();
    fr += check_16(
        dt,
        &gpu.download(&dx).unwrap(),
        &dx_ref.into_dyn(),
        &format!("{what}: dx"),
    );
    let khw = [w[2], w[3]];
    let dw = gpu.conv2d_backward_weight(&xt, &dyt, khw, spec).unwrap();
    let dw_ref = reference::conv2d_backward_weight(xd.view(), dyd.view(), khw, spec).unwrap();
    fr += check_16(
        dt,
        &gpu.download(&dw).unwrap(),
        &dw_ref.into_dyn(),
        &format!("{what}: dw"),
    );
    let db = gpu.conv2d_backward_bias(&dyt).unwrap();
    let db_ref = reference::conv2d_backward_bias(dyd.view());
    fr += check_16(
        dt,
        &gpu.download(&db).unwrap(),
        &db_ref.into_dyn(),
        &format!("{what}: db"),
    );
    // Bit-equal to the f32 op on the widened inputs, rounded once.
    let wide = |t: &Tensor| gpu.cast(t, DType::F32).unwrap();
    let y32 = gpu
        .conv2d_forward(&wide(&xt), &wide(&wt), Some(&wide(&bt)), spec)
        .unwrap();
    assert_eq!(
        bits(gpu, &y),
        bits(gpu, &gpu.cast(&y32, dt).unwrap()),
        "{what}: forward bits"
    );
    let dw32 = gpu
        .conv2d_backward_weight(&wide(&xt), &wide(&dyt), khw, spec)
        .unwrap();
    assert_eq!(
        bits(gpu, &dw),
        bits(gpu, &gpu.cast(&dw32, dt).unwrap()),
        "{what}: dw bits"
    );
    fr / 4.0
}

#[test]
fn conv_ops_in_16_bits_against_the_f64_reference() {
    let gpu = gpu();
    let named: Vec<([usize; 4], [usize; 4], Conv2dSpec)> = vec![
        (
            [2, 8, 9, 9],
            [16, 8, 3, 3],
            Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1)),
        ),
        ([2, 16, 8, 8], [8, 16, 1, 1], Conv2dSpec::new()),
        (
            [1, 6, 11, 10],
            [12, 6, 3, 3],
            Conv2dSpec {
                stride: [2, 2],
                padding: Padding2d {
                    top: 1,
                    bottom: 0,
                    left: 2,
                    right: 1,
                },
                ..Default::default()
            },
        ),
        (
            [2, 8, 10, 10],
            [8, 4, 3, 3],
            Conv2dSpec {
                dilation: [2, 2],
                groups: 2,
                padding: Padding2d::symmetric(2, 2),
                ..Default::default()
            },
        ),
        (
            [2, 8, 9, 9],
            [16, 1, 3, 3],
            Conv2dSpec {
                groups: 8,
                padding: Padding2d::symmetric(1, 1),
                ..Default::default()
            },
        ),
        (
            [1, 3, 12, 12],
            [8, 3, 7, 7],
            Conv2dSpec {
                stride: [2, 2],
                padding: Padding2d::symmetric(3, 3),
                ..Default::default()
            },
        ),
    ];
    let mut rng = Rng::new(77);
    for dt in SIXTEEN {
        let mut fractions = Vec::new();
        for (i, (x, w, spec)) in named.iter().enumerate() {
            fractions.push(conv_case(gpu, dt, *x, *w, spec, i as u64));
        }
        for i in 0..6 {
            let (x, w, spec) = random_conv(&mut rng, 9);
            fractions.push(conv_case(gpu, dt, x, w, &spec, 100 + i));
        }
        let mean = fractions.iter().sum::<f64>() / fractions.len() as f64;
        eprintln!(
            "{dt}: {:.4} of the conv results equal the rounded f64 reference",
            mean
        );
        assert!(mean > 0.9, "{dt}: only {mean} exact");
    }
}

/// Checked mode on 16-bit ops: each f32 op on the widened inputs is checked against the
/// reference (eager and recorded), and nothing is flagged.
#[test]
fn checked_mode_checks_16_bit_ops() {
    let gpu = fresh(Gpu::builder().checked(true));
    let spec = Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1));
    for dt in SIXTEEN {
        conv_case(&gpu, dt, [2, 4, 7, 6], [6, 4, 3, 3], &spec, 3);
        let x = gpu
            .upload_as(&Rng::new(1).array4_f32([2, 4, 7, 6]), dt)
            .unwrap();
        let w = gpu
            .upload_as(&Rng::new(2).array4_f32([6, 4, 3, 3]), dt)
            .unwrap();
        let mut rec = gpu.recorder();
        let y = rec.conv2d_forward(&x, &w, None, &spec).unwrap();
        let mut dw = gpu.upload(&Array4::<f32>::zeros((6, 4, 3, 3))).unwrap();
        rec.conv2d_backward_weight_accumulate(&x, &y, &spec, &mut dw)
            .unwrap();
        rec.submit().unwrap();
        assert_eq!(dw.dtype(), DType::F32);
    }
}

#[test]
fn pool_ops_in_16_bits_against_the_f64_reference() {
    let gpu = gpu();
    let mut rng = Rng::new(5);
    for dt in SIXTEEN {
        for i in 0..8 {
            let avg = i % 2 == 1;
            let (xs, spec) = random_pool(&mut rng, 12, avg);
            let (xt, xd) = rounded(gpu, &rng.array4_f32(xs), dt);
            let what = format!("{dt} x {xs:?} {spec:?}");
            let hw = [xs[2], xs[3]];
            if avg {
                let cip = rng.bool();
                let y = gpu.avg_pool2d_forward(&xt, &spec, cip).unwrap();
                let y_ref = reference::avg_pool2d_forward(xd.view(), &spec, cip).unwrap();
                check_16(dt, &gpu.download(&y).unwrap(), &y_ref.into_dyn(), &what);
                let (dyt, dyd) = rounded(gpu, &rng.array4_f32(y.shape().try_into().unwrap()), dt);
                let dx = gpu.avg_pool2d_backward(&dyt, hw, &spec, cip).unwrap();
                let dx_ref = reference::avg_pool2d_backward(dyd.view(), hw, &spec, cip).unwrap();
                check_16(dt, &gpu.download(&dx).unwrap(), &dx_ref.into_dyn(), &what);
            } else {
                let (y, idx) = gpu.max_pool2d_forward(&xt, &spec).unwrap();
                let (y_ref, idx_ref) = reference::max_pool2d_forward(xd.view(), &spec).unwrap();
                // A max is one of the inputs: exact, and the indices are the f32 scan's.
                assert_eq!(
                    gpu.download(&y).unwrap().mapv(f64::from),
                    y_ref.into_dyn(),
                    "{what}: values"
                );
                assert_eq!(
                    gpu.download_indices(&idx).unwrap(),
                    idx_ref.into_dyn(),
                    "{what}: indices"
                );
                let (dyt, dyd) = rounded(gpu, &rng.array4_f32(y.shape().try_into().unwrap()), dt);
                let dx = gpu.max_pool2d_backward(&dyt, &idx, hw, &spec).unwrap();
                let idx_host = gpu
                    .download_indices(&idx)
                    .unwrap()
                    .into_dimensionality()
                    .unwrap();
                let dx_ref =
                    reference::max_pool2d_backward(dyd.view(), idx_host.view(), hw, &spec).unwrap();
                check_16(dt, &gpu.download(&dx).unwrap(), &dx_ref.into_dyn(), &what);
            }
        }
    }
}

/// `_into` and `_accumulate` targets: an f32 master gradient from 16-bit operands receives the
/// f32 sum with no rounding; a 16-bit gradient receives `round(old + sum)`; a 16-bit output view
/// of an odd length keeps the half-word after it; other dtypes are `Err` naming both.
#[test]
fn into_and_accumulate_targets() {
    let gpu = gpu();
    let mut rng = Rng::new(9);
    let spec = Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1));
    let (x, w, dy) = (
        rng.array4_f32([2, 3, 6, 5]),
        rng.array4_f32([5, 3, 3, 3]),
        rng.array4_f32([2, 5, 6, 5]),
    );
    let old = rng.array4_f32([5, 3, 3, 3]);
    for dt in SIXTEEN {
        let (xt, dyt) = (
            gpu.upload_as(&x, dt).unwrap(),
            gpu.upload_as(&dy, dt).unwrap(),
        );
        let wide = |t: &Tensor| gpu.cast(t, DType::F32).unwrap();
        let sum32 = gpu
            .conv2d_backward_weight(&wide(&xt), &wide(&dyt), [3, 3], &spec)
            .unwrap();
        let sum: Vec<f32> = gpu.download(&sum32).unwrap().iter().copied().collect();
        // An f32 master gradient: old + sum in f32, nothing rounded to 16 bits.
        let mut master = gpu.upload(&old).unwrap();
        gpu.conv2d_backward_weight_accumulate(&xt, &dyt, &spec, &mut master)
            .unwrap();
        let want: Vec<u32> = old
            .iter()
            .zip(&sum)
            .map(|(o, s)| (o + s).to_bits())
            .collect();
        assert_eq!(bits(gpu, &master), want, "{dt}: f32 master gradient");
        // A 16-bit gradient: round(old + sum), once.
        let mut g16 = gpu.upload_as(&old, dt).unwrap();
        let old16: Vec<f32> = gpu.download(&g16).unwrap().iter().copied().collect();
        gpu.conv2d_backward_weight_accumulate(&xt, &dyt, &spec, &mut g16)
            .unwrap();
        let want: Vec<u32> = old16
            .iter()
            .zip(&sum)
            .map(|(o, s)| dt.round(o + s).to_bits())
            .collect();
        assert_eq!(bits(gpu, &g16), want, "{dt}: 16-bit gradient");
        // An f32 output of 16-bit operands: the f32 op's bits.
        let mut y32 = gpu.upload(&Array4::<f32>::zeros((5, 3, 3, 3))).unwrap();
        gpu.conv2d_backward_weight_into(&xt, &dyt, [3, 3], &spec, &mut y32)
            .unwrap();
        assert_eq!(bits(gpu, &y32), bits(gpu, &sum32), "{dt}: f32 output");
        // A 16-bit view of odd length: the half-word after it is not touched.
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let n = 5; // db of 5 channels
        let buffer = common::caller_buffer(gpu.device(), 256 + 12, usage);
        gpu.queue().write_buffer(
            &buffer,
            256,
            &[
                0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xcd, 0xab,
            ],
        );
        let mut db = gpu
            .tensor_from_buffer_as(buffer.clone(), 256, &[n], dt)
            .unwrap();
        gpu.conv2d_backward_bias_into(&dyt, &mut db).unwrap();
        let db_ref = gpu.conv2d_backward_bias(&dyt).unwrap();
        assert_eq!(bits(gpu, &db), bits(gpu, &db_ref), "{dt}: db into a view");
        let whole = gpu.tensor_from_buffer(buffer, 256, &[3]).unwrap();
        let last = gpu.download(&whole).unwrap()[2].to_bits();
        assert_eq!(last >> 16, 0xabcd, "{dt}: the half-word after the view");
        // Dtype errors name both dtypes.
        let other = if dt == DType::F16 {
            DType::BF16
        } else {
            DType::F16
        };
        let e = gpu
            .conv2d_forward(&xt, &gpu.upload_as(&w, other).unwrap(), None, &spec)
            .unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument(_))
                && e.to_string().contains(&dt.to_string())
                && e.to_string().contains(&other.to_string()),
            "{e}"
        );
        let mut wrong = gpu.upload_as(&old, other).unwrap();
        let e = gpu
            .conv2d_backward_weight_accumulate(&xt, &dyt, &spec, &mut wrong)
            .unwrap_err();
        assert!(e.to_string().contains(&other.to_string()), "{e}");
        let mut f16_target = gpu.upload_as(&old, dt).unwrap();
        let e = gpu
            .conv2d_backward_weight_accumulate(&wide(&xt), &wide(&dyt), &spec, &mut f16_target)
            .unwrap_err();
        assert!(e.to_string().contains("f32 operands"), "{e}");
    }
}

/// A recorded chain of all eight ops in 16 bits equals the eager ops bit for bit, three runs
/// give the same bits, and a fresh `Gpu` whose samples are split into row bands (a 4 KiB
/// binding) stays within the 16-bit tolerance of the reference.
#[test]
fn recorded_equals_eager_and_runs_repeat() {
    let gpu = gpu();
    let mut rng = Rng::new(12);
    let spec = Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1));
    let p = Pool2dSpec::new([2, 2]);
    let (x, w) = (rng.array4_f32([2, 3, 8, 6]), rng.array4_f32([4, 3, 3, 3]));
    for dt in SIXTEEN {
        let (xt, wt) = (
            gpu.upload_as(&x, dt).unwrap(),
            gpu.upload_as(&w, dt).unwrap(),
        );
        let run = |recorded: bool| -> Vec<Vec<u32>> {
            let mut out = Vec::new();
            if recorded {
                let mut r = gpu.recorder();
                let y = r.conv2d_forward(&xt, &wt, None, &spec).unwrap();
                let (m, idx) = r.max_pool2d_forward(&y, &p).unwrap();
                let mdx = r.max_pool2d_backward(&m, &idx, [8, 6], &p).unwrap();
                let a = r.avg_pool2d_forward(&mdx, &p, true).unwrap();
                let adx = r.avg_pool2d_backward(&a, [8, 6], &p, true).unwrap();
                let dx = r.conv2d_backward_input(&adx, &wt, [8, 6], &spec).unwrap();
                let dw = r.conv2d_backward_weight(&xt, &adx, [3, 3], &spec).unwrap();
                let db = r.conv2d_backward_bias(&adx).unwrap();
                r.submit().unwrap();
                for t in [&y, &m, &mdx, &a, &adx, &dx, &dw, &db] {
                    out.push(bits(gpu, t));
                }
            } else {
                let y = gpu.conv2d_forward(&xt, &wt, None, &spec).unwrap();
                let (m, idx) = gpu.max_pool2d_forward(&y, &p).unwrap();
                let mdx = gpu.max_pool2d_backward(&m, &idx, [8, 6], &p).unwrap();
                let a = gpu.avg_pool2d_forward(&mdx, &p, true).unwrap();
                let adx = gpu.avg_pool2d_backward(&a, [8, 6], &p, true).unwrap();
                let dx = gpu.conv2d_backward_input(&adx, &wt, [8, 6], &spec).unwrap();
                let dw = gpu
                    .conv2d_backward_weight(&xt, &adx, [3, 3], &spec)
                    .unwrap();
                let db = gpu.conv2d_backward_bias(&adx).unwrap();
                for t in [&y, &m, &mdx, &a, &adx, &dx, &dw, &db] {
                    out.push(bits(gpu, t));
                }
            }
            out
        };
        let eager = run(false);
        assert_eq!(run(true), eager, "{dt}: recorded");
        assert_eq!(run(false), eager, "{dt}: second run");
        assert_eq!(run(false), eager, "{dt}: third run");
    }
    // Row bands past a 4 KiB binding, in 16 bits.
    let banded = fresh(Gpu::builder().max_binding_bytes(4096));
    let f = |a: &Array4<f32>, dt: DType| {
        let t = banded.upload_as(a, dt).unwrap();
        let v = f64s(
            &banded
                .download(&t)
                .unwrap()
                .into_dimensionality::<Ix4>()
                .unwrap(),
        );
        (t, v)
    };
    let x = rng.array4_f32([1, 2, 40, 30]);
    let w = rng.array4_f32([3, 2, 3, 3]);
    for dt in SIXTEEN {
        let ((xt, xd), (wt, wd)) = (f(&x, dt), f(&w, dt));
        let y = banded.conv2d_forward(&xt, &wt, None, &spec).unwrap();
        let y_ref = reference::conv2d_forward(xd.view(), wd.view(), None, &spec).unwrap();
        check_16(
            dt,
            &banded.download(&y).unwrap(),
            &y_ref.into_dyn(),
            "banded forward",
        );
    }
    // Pools reading 16-bit planes of 6,000 bytes, split by rows past the 4 KiB binding, and
    // chunks of whole planes at half the f32 bytes.
    let pool = Pool2dSpec {
        padding: [1, 1],
        stride: [2, 2],
        ..Pool2dSpec::new([3, 3])
    };
    for (shape, dt) in [([2, 2, 60, 50], DType::F16), ([3, 2, 20, 21], DType::BF16)] {
        let (xt, xd) = f(&rng.array4_f32(shape), dt);
        let what = format!("{dt} pools of {shape:?} at a 4 KiB binding");
        let (y, idx) = banded.max_pool2d_forward(&xt, &pool).unwrap();
        let (y_ref, idx_ref) = reference::max_pool2d_forward(xd.view(), &pool).unwrap();
        let got = banded.download(&y).unwrap().mapv(f64::from);
        assert_eq!(got, y_ref.into_dyn(), "{what}: max values");
        let idx_host = banded.download_indices(&idx).unwrap();
        assert_eq!(idx_host, idx_ref.clone().into_dyn(), "{what}: indices");
        let (dyt, dyd) = f(&rng.array4_f32(y.shape().try_into().unwrap()), dt);
        let hw = [shape[2], shape[3]];
        let dx = banded.max_pool2d_backward(&dyt, &idx, hw, &pool).unwrap();
        let dx_ref = reference::max_pool2d_backward(dyd.view(), idx_ref.view(), hw, &pool);
        let dx_ref = dx_ref.unwrap().into_dyn();
        check_16(dt, &banded.download(&dx).unwrap(), &dx_ref, &what);
        let a = banded.avg_pool2d_forward(&xt, &pool, false).unwrap();
        let a_ref = reference::avg_pool2d_forward(xd.view(), &pool, false).unwrap();
        check_16(dt, &banded.download(&a).unwrap(), &a_ref.into_dyn(), &what);
        let adx = banded.avg_pool2d_backward(&dyt, hw, &pool, false).unwrap();
        let adx_ref = reference::avg_pool2d_backward(dyd.view(), hw, &pool, false).unwrap();
        check_16(
            dt,
            &banded.download(&adx).unwrap(),
            &adx_ref.into_dyn(),
            &what,
        );
    }
}

/// The workspace query counts the f32 copies a 16-bit op stages through, and they are what the
/// op takes from the pool (back in it afterwards).
#[test]
fn workspace_counts_the_staged_copies() {
    use wgconv::gpu::ConvOp;
    let gpu = fresh(Gpu::builder());
    let spec = Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1));
    let (xs, ws) = ([2, 8, 16, 16], [16, 8, 3, 3]);
    for op in [
        ConvOp::Forward,
        ConvOp::BackwardInput,
        ConvOp::BackwardWeight,
        ConvOp::BackwardBias,
    ] {
        let f32_bytes = gpu.conv2d_workspace_bytes(op, xs, ws, &spec).unwrap();
        assert_eq!(
            gpu.conv2d_workspace_bytes_as(op, xs, ws, &spec, DType::F32)
                .unwrap(),
            f32_bytes
        );
        let staged = gpu
            .conv2d_workspace_bytes_as(op, xs, ws, &spec, DType::BF16)
            .unwrap()
            - f32_bytes;
        let (x, w, y) = (2 * 8 * 16 * 16, 16 * 8 * 9, 2 * 16 * 16 * 16);
        let want = match op {
            ConvOp::Forward => x + w + 16 + y,
            ConvOp::BackwardBias => y + 16,
            _ => x + w + y,
        };
        assert_eq!(staged, 4 * want as u64, "{op:?}");
    }
    let x = gpu
        .upload_as(&Rng::new(1).array4_f32(xs), DType::F16)
        .unwrap();
    let w = gpu
        .upload_as(&Rng::new(2).array4_f32(ws), DType::F16)
        .unwrap();
    gpu.synchronize().unwrap();
    let before = gpu.pool_stats().held_bytes;
    let y = gpu.conv2d_forward(&x, &w, None, &spec).unwrap();
    gpu.synchronize().unwrap();
    let returned = gpu.pool_stats().held_bytes - before;
    let staged = 4 * (2 * 8 * 16 * 16 + 16 * 8 * 9 + 2 * 16 * 16 * 16) as u64;
    assert!(
        returned >= staged,
        "{returned} bytes back in the pool, {staged} staged"
    );
    drop(y);
}

/// NaN and ±inf in 16-bit inputs reach the outputs as in f32, a sum past f16's range becomes
/// ±inf (bf16's range holds it), and `download_async` widens 16-bit results as `download`.
#[test]
fn nan_inf_and_overflow_in_16_bits() {
    let gpu = gpu();
    let spec = Conv2dSpec::new().with_padding(Padding2d::symmetric(1, 1));
    let mut x = Array4::<f32>::from_elem((1, 8, 5, 5), 200.0);
    x[[0, 0, 1, 1]] = f32::NAN;
    x[[0, 1, 3, 3]] = f32::INFINITY;
    let w = Array4::<f32>::from_elem((2, 8, 3, 3), 200.0);
    for dt in SIXTEEN {
        let (xt, wt) = (
            gpu.upload_as(&x, dt).unwrap(),
            gpu.upload_as(&w, dt).unwrap(),
        );
        let y = gpu
            .download(&gpu.conv2d_forward(&xt, &wt, None, &spec).unwrap())
            .unwrap();
        let y32 = gpu
            .download(
                &gpu.conv2d_forward(
                    &gpu.upload(&x).unwrap(),
                    &gpu.upload(&w).unwrap(),
                    None,
                    &spec,
                )
                .unwrap(),
            )
            .unwrap();
        for (i, (&g, &f)) in y.iter().zip(y32.iter()).enumerate() {
            if f.is_nan() {
                assert!(g.is_nan(), "{dt}: element {i}: NaN in f32, {g} in 16 bits");
            } else if f.is_infinite() {
                assert_eq!(g, f, "{dt}: element {i}");
            } else if dt == DType::F16 {
                // 200 * 200 * up to 72 taps: past 65504.
                assert_eq!(g, f32::INFINITY, "{dt}: element {i}: {f} overflows f16");
            } else {
                assert_eq!(g, DType::BF16.round(f), "{dt}: element {i}");
            }
        }
        assert!(y.iter().any(|v| v.is_nan()) && y.iter().any(|v| v.is_infinite()));
        let t = gpu
            .upload_as(&Array1::from(vec![1.5f32, -0.1, 3e4]), dt)
            .unwrap();
        let got = pollster::block_on(gpu.download_async(&t)).unwrap();
        assert_eq!(got, gpu.download(&t).unwrap(), "{dt}: download_async");
    }
}

/// The pools read 16-bit operands directly (kernels/storage.rs): natively as `f16` where the
/// device has `SHADER_F16` (lavapipe), packed in `u32` words where it has not (llvmpipe) or
/// where `GpuBuilder::packed_16bit` forces it, and always packed for bf16. Every path gives the
/// bits of the f32 op on the widened operand, rounded once.
#[test]
fn pool_storage_paths_give_the_bits_of_the_f32_op() {
    let native = gpu();
    let packed = fresh(Gpu::builder().packed_16bit(true));
    assert!(!packed.profile().native_f16);
    println!(
        "{}: native f16 {}",
        native.adapter_info().name,
        native.profile().native_f16
    );
    let mut rng = Rng::new(21);
    for dt in SIXTEEN {
        for i in 0..6 {
            let (xs, spec) = random_pool(&mut rng, 12, i % 2 == 1);
            let x = rng.array4_f32(xs);
            let hw = [xs[2], xs[3]];
            let what = format!("{dt} x {xs:?} {spec:?}");
            // The pool ops of one context: y and dx of max-pool (with its indices) or avg-pool.
            let run = |gpu: &Gpu, x: &Tensor, dy: &Tensor| -> Vec<Vec<u32>> {
                if i % 2 == 1 {
                    let y = gpu.avg_pool2d_forward(x, &spec, i % 4 == 1).unwrap();
                    let dx = gpu.avg_pool2d_backward(dy, hw, &spec, i % 4 == 1).unwrap();
                    vec![bits(gpu, &y), bits(gpu, &dx)]
                } else {
                    let (y, idx) = gpu.max_pool2d_forward(x, &spec).unwrap();
                    let dx = gpu.max_pool2d_backward(dy, &idx, hw, &spec).unwrap();
                    let idx = gpu
                        .download_indices(&idx)
                        .unwrap()
                        .into_raw_vec_and_offset();
                    vec![bits(gpu, &y), idx.0, bits(gpu, &dx)]
                }
            };
            let y_shape = if i % 2 == 1 {
                spec.avg_geometry(xs).unwrap().y_shape()
            } else {
                spec.max_geometry(xs).unwrap().y_shape()
            };
            let dy = rng.array4_f32(y_shape);
            let on = |gpu: &Gpu| {
                let (xt, dyt) = (
                    gpu.upload_as(&x, dt).unwrap(),
                    gpu.upload_as(&dy, dt).unwrap(),
                );
                run(gpu, &xt, &dyt)
            };
            let (a, b) = (on(native), on(&packed));
            assert_eq!(a, b, "{what}: native and packed paths");
            // The f32 op on the widened operands, each result rounded once.
            let (xt, dyt) = (
                native.upload_as(&x, dt).unwrap(),
                native.upload_as(&dy, dt).unwrap(),
            );
            let wide = |t: &Tensor| native.cast(t, DType::F32).unwrap();
            let f32_run = run(native, &wide(&xt), &wide(&dyt));
            let round = |v: &[u32]| -> Vec<u32> {
                v.iter()
                    .map(|&b| dt.round(f32::from_bits(b)).to_bits())
                    .collect()
            };
            let last = f32_run.len() - 1;
            assert_eq!(a[0], round(&f32_run[0]), "{what}: y bits");
            assert_eq!(a[last], round(&f32_run[last]), "{what}: dx bits");
        }
    }
}
