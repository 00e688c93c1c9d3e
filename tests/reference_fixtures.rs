//! The reference against PyTorch: every fixture case, in f32 (tolerance 1e-4 of the scale) and
//! in f64 (1e-10); max-pool indices exactly.

mod common;

use common::*;
use ndarray::{Array4, ArrayView4};
use wgconv::reference::{self, Element};

const F32_TOL: f64 = 1e-4;
const F64_TOL: f64 = 1e-10;

fn cast<A: Element>(a: &Array4<f64>) -> Array4<A> {
    a.mapv(|v| A::from(v).unwrap())
}

fn back<A: Element>(a: &Array4<A>) -> Array4<f64> {
    a.mapv(|v| v.to_f64().unwrap())
}

fn conv_cases<A: Element>(tol: f64) {
    let cases = fixture_cases("conv2d");
    assert!(
        cases.len() >= 40,
        "conv2d fixture has {} cases",
        cases.len()
    );
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let spec = conv_spec(case);
        let x = cast::<A>(&tensor4(&case["x"]));
        let w = cast::<A>(&tensor4(&case["w"]));
        let dy = cast::<A>(&tensor4(&case["dy"]));
        let bias = (!case["bias"].is_null()).then(|| {
            tensor(&case["bias"])
                .mapv(|v| A::from(v).unwrap())
                .into_dimensionality()
                .unwrap()
        });
        let hw = [x.shape()[2], x.shape()[3]];
        let khw = [w.shape()[2], w.shape()[3]];

        let y =
            reference::conv2d_forward(x.view(), w.view(), bias.as_ref().map(|b| b.view()), &spec)
                .unwrap();
        assert_close(&back(&y), &tensor4(&case["y"]), tol, &format!("{name} y"));
        let dx = reference::conv2d_backward_input(dy.view(), w.view(), hw, &spec).unwrap();
        assert_close(
            &back(&dx),
            &tensor4(&case["dx"]),
            tol,
            &format!("{name} dx"),
        );
        let dw = reference::conv2d_backward_weight(x.view(), dy.view(), khw, &spec).unwrap();
        assert_close(
            &back(&dw),
            &tensor4(&case["dw"]),
            tol,
            &format!("{name} dw"),
        );
        if !case["db"].is_null() {
            let db = reference::conv2d_backward_bias(dy.view()).mapv(|v| v.to_f64().unwrap());
            assert_close(
                &db.into_dyn(),
                &tensor(&case["db"]),
                tol,
                &format!("{name} db"),
            );
        }
        // The oracle and the transposed construction agree with PyTorch too.
        let yd = reference::direct::conv2d_forward(
            x.view(),
            w.view(),
            bias.as_ref().map(|b| b.view()),
            &spec,
        )
        .unwrap();
        assert_close(
            &back(&yd),
            &tensor4(&case["y"]),
            tol,
            &format!("{name} direct y"),
        );
        let dxt =
            reference::transposed::conv2d_backward_input(dy.view(), w.view(), hw, &spec).unwrap();
        assert_close(
            &back(&dxt),
            &tensor4(&case["dx"]),
            tol,
            &format!("{name} transposed dx"),
        );
    }
}

fn max_pool_cases<A: Element>(tol: f64) {
    let cases = fixture_cases("max_pool2d");
    assert!(cases.len() >= 30);
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let spec = pool_spec(case);
        let x = cast::<A>(&tensor4(&case["x"]));
        let dy = cast::<A>(&tensor4(&case["dy"]));
        let (y, idx) = reference::max_pool2d_forward(x.view(), &spec).unwrap();
        assert_close(&back(&y), &tensor4(&case["y"]), tol, &format!("{name} y"));
        assert_eq!(idx, indices4(&case["indices"]), "{name} indices");
        let hw = [x.shape()[2], x.shape()[3]];
        let dx = reference::max_pool2d_backward(dy.view(), idx.view(), hw, &spec).unwrap();
        assert_close(
            &back(&dx),
            &tensor4(&case["dx"]),
            tol,
            &format!("{name} dx"),
        );
    }
}

fn avg_pool_cases<A: Element>(tol: f64) {
    let cases = fixture_cases("avg_pool2d");
    assert!(cases.len() >= 30);
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let spec = pool_spec(case);
        let cip = case["count_include_pad"].as_bool().unwrap();
        let x = cast::<A>(&tensor4(&case["x"]));
        let dy = cast::<A>(&tensor4(&case["dy"]));
        let y = reference::avg_pool2d_forward(x.view(), &spec, cip).unwrap();
        assert_close(&back(&y), &tensor4(&case["y"]), tol, &format!("{name} y"));
        let hw = [x.shape()[2], x.shape()[3]];
        let dx = reference::avg_pool2d_backward(dy.view(), hw, &spec, cip).unwrap();
        assert_close(
            &back(&dx),
            &tensor4(&case["dx"]),
            tol,
            &format!("{name} dx"),
        );
    }
}

#[test]
fn conv2d_f32() {
    conv_cases::<f32>(F32_TOL);
}
#[test]
fn conv2d_f64() {
    conv_cases::<f64>(F64_TOL);
}
#[test]
fn max_pool2d_f32() {
    max_pool_cases::<f32>(F32_TOL);
}
#[test]
fn max_pool2d_f64() {
    max_pool_cases::<f64>(F64_TOL);
}
#[test]
fn avg_pool2d_f32() {
    avg_pool_cases::<f32>(F32_TOL);
}
#[test]
fn avg_pool2d_f64() {
    avg_pool_cases::<f64>(F64_TOL);
}

/// ArrayView4 must be accepted in any layout, not only standard.
#[test]
fn transposed_views_are_accepted() {
    let mut rng = Rng::new(7);
    let x = rng.array4([2, 3, 5, 4]);
    let xt = x.clone().reversed_axes(); // [4, 5, 3, 2] in Fortran layout
    let xv: ArrayView4<f64> = xt.view().reversed_axes();
    let w = rng.array4([2, 3, 2, 2]);
    let spec = wgconv::Conv2dSpec::default();
    let a = reference::conv2d_forward(x.view(), w.view(), None, &spec).unwrap();
    let b = reference::conv2d_forward(xv, w.view(), None, &spec).unwrap();
    assert_eq!(a, b);
}
