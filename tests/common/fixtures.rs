//! The PyTorch fixtures in `tests/fixtures/` (written by `scripts/make_fixtures.py`): cases,
//! tensors and specs.

use ndarray::{Array4, ArrayD, IxDyn};
use serde_json::Value;
use wgconv::{Conv2dSpec, Padding2d, Pool2dSpec};

/// The cases of `tests/fixtures/<name>.json` (written by `scripts/make_fixtures.py`).
pub fn fixture_cases(name: &str) -> Vec<Value> {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    v["cases"].as_array().expect("cases").clone()
}

fn number(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().expect("finite number"),
        Value::String(s) => match s.as_str() {
            "nan" => f64::NAN,
            "inf" => f64::INFINITY,
            "-inf" => f64::NEG_INFINITY,
            other => panic!("unknown value {other:?}"),
        },
        other => panic!("not a number: {other}"),
    }
}

pub fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|d| d.as_u64().expect("integer") as usize)
        .collect()
}

pub fn pair(v: &Value) -> [usize; 2] {
    let u = usizes(v);
    [u[0], u[1]]
}

/// A fixture tensor `{"shape", "data"}` as f64.
pub fn tensor(v: &Value) -> ArrayD<f64> {
    let shape = usizes(&v["shape"]);
    let data: Vec<f64> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(number)
        .collect();
    ArrayD::from_shape_vec(IxDyn(&shape), data).expect("shape matches data")
}

pub fn tensor4(v: &Value) -> Array4<f64> {
    tensor(v).into_dimensionality().expect("4-D")
}

pub fn indices4(v: &Value) -> Array4<u32> {
    tensor4(v).mapv(|i| i as u32)
}

pub fn conv_spec(case: &Value) -> Conv2dSpec {
    let p = usizes(&case["padding"]);
    Conv2dSpec {
        stride: pair(&case["stride"]),
        padding: Padding2d {
            top: p[0],
            bottom: p[1],
            left: p[2],
            right: p[3],
        },
        dilation: pair(&case["dilation"]),
        groups: case["groups"].as_u64().unwrap() as usize,
    }
}

pub fn pool_spec(case: &Value) -> Pool2dSpec {
    Pool2dSpec {
        kernel: pair(&case["kernel"]),
        stride: pair(&case["stride"]),
        padding: pair(&case["padding"]),
        dilation: case.get("dilation").map_or([1, 1], pair),
        ceil_mode: case["ceil_mode"].as_bool().unwrap(),
    }
}
