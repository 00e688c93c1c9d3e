//! The conv and pool ops on a GPU against the reference, run in f64 on the same f32 inputs.

use ndarray::{Array1, Array4, Ix1, Ix4};
use wgconv::compare::{GPU_TOLERANCE, compare};
use wgconv::reference;
use wgconv::{Conv2dSpec, Gpu, Pool2dSpec};

use super::{Rng, close, dl, f64s};

/// All four conv ops on the GPU against the reference, run in f64 on the same f32 inputs.
pub fn check_conv(
    gpu: &Gpu,
    what: &str,
    x: &Array4<f32>,
    w: &Array4<f32>,
    b: Option<&Array1<f32>>,
    spec: &Conv2dSpec,
) {
    let (xd, wd) = (f64s(x), f64s(w));
    let bd = b.map(f64s);
    let y_ref =
        reference::conv2d_forward(xd.view(), wd.view(), bd.as_ref().map(|b| b.view()), spec)
            .unwrap();
    let mut rng = Rng::new(y_ref.len() as u64);
    let dy = rng.array4_f32(y_ref.dim().into());
    let dyd = f64s(&dy);
    let hw = [x.shape()[2], x.shape()[3]];
    let khw = [w.shape()[2], w.shape()[3]];

    let (xt, wt, dyt) = (
        gpu.upload(x).unwrap(),
        gpu.upload(w).unwrap(),
        gpu.upload(&dy).unwrap(),
    );
    let bt = b.map(|b| gpu.upload(b).unwrap());
    let y = gpu.conv2d_forward(&xt, &wt, bt.as_ref(), spec).unwrap();
    close(&dl(gpu, &y), &y_ref, &format!("{what}: forward"));
    let dx = gpu.conv2d_backward_input(&dyt, &wt, hw, spec).unwrap();
    let dx_ref = reference::conv2d_backward_input(dyd.view(), wd.view(), hw, spec).unwrap();
    close(&dl(gpu, &dx), &dx_ref, &format!("{what}: dx"));
    let dw = gpu.conv2d_backward_weight(&xt, &dyt, khw, spec).unwrap();
    let dw_ref = reference::conv2d_backward_weight(xd.view(), dyd.view(), khw, spec).unwrap();
    close(&dl(gpu, &dw), &dw_ref, &format!("{what}: dw"));
    let db = gpu.conv2d_backward_bias(&dyt).unwrap();
    let db_ref = reference::conv2d_backward_bias(dyd.view());
    let got = f64s(
        &gpu.download(&db)
            .unwrap()
            .into_dimensionality::<Ix1>()
            .unwrap(),
    );
    let c = compare(got.iter().copied(), db_ref.iter().copied());
    assert!(
        c.passes(GPU_TOLERANCE),
        "{what}: db error {:e}",
        c.max_abs_err
    );
}

/// Max-pool forward (values and indices) and backward on the GPU against the reference.
pub fn check_max_pool(gpu: &Gpu, what: &str, x: &Array4<f32>, spec: &Pool2dSpec) {
    let xd = f64s(x);
    let (y_ref, i_ref) = reference::max_pool2d_forward(xd.view(), spec).unwrap();
    let xt = gpu.upload(x).unwrap();
    let (y, i) = gpu.max_pool2d_forward(&xt, spec).unwrap();
    close(&dl(gpu, &y), &y_ref, &format!("{what}: max-pool y"));
    let i_got = gpu
        .download_indices(&i)
        .unwrap()
        .into_dimensionality::<Ix4>()
        .unwrap();
    assert_eq!(i_got, i_ref, "{what}: max-pool indices");
    let mut rng = Rng::new(7);
    let dy = rng.array4_f32(y_ref.dim().into());
    let hw = [x.shape()[2], x.shape()[3]];
    let dx = gpu
        .max_pool2d_backward(&gpu.upload(&dy).unwrap(), &i, hw, spec)
        .unwrap();
    let dx_ref = reference::max_pool2d_backward(f64s(&dy).view(), i_ref.view(), hw, spec).unwrap();
    close(&dl(gpu, &dx), &dx_ref, &format!("{what}: max-pool dx"));
}

/// Avg-pool forward and backward on the GPU against the reference.
pub fn check_avg_pool(gpu: &Gpu, what: &str, x: &Array4<f32>, spec: &Pool2dSpec, cip: bool) {
    let y_ref = reference::avg_pool2d_forward(f64s(x).view(), spec, cip).unwrap();
    let y = gpu
        .avg_pool2d_forward(&gpu.upload(x).unwrap(), spec, cip)
        .unwrap();
    close(&dl(gpu, &y), &y_ref, &format!("{what}: avg-pool y"));
    let mut rng = Rng::new(8);
    let dy = rng.array4_f32(y_ref.dim().into());
    let hw = [x.shape()[2], x.shape()[3]];
    let dx = gpu
        .avg_pool2d_backward(&gpu.upload(&dy).unwrap(), hw, spec, cip)
        .unwrap();
    let dx_ref = reference::avg_pool2d_backward(f64s(&dy).view(), hw, spec, cip).unwrap();
    close(&dl(gpu, &dx), &dx_ref, &format!("{what}: avg-pool dx"));
}
