//! Helpers shared by the integration tests: a seeded RNG, random specs, PyTorch fixture loading,
//! and tolerance checks.
#![allow(dead_code)]

use ndarray::{Array, Array4, ArrayD, Dimension, IxDyn};
use serde_json::Value;
use wgconv::{Conv2dSpec, Padding2d, Pool2dSpec};

/// xorshift64*: small, seeded, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
    /// Uniform in `[-1, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    pub fn bool(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
    pub fn array4(&mut self, shape: [usize; 4]) -> Array4<f64> {
        Array4::from_shape_simple_fn(shape, || self.unit())
    }
    pub fn array4_f32(&mut self, shape: [usize; 4]) -> Array4<f32> {
        Array4::from_shape_simple_fn(shape, || self.unit() as f32)
    }
}

/// A random convolution `(x shape, w shape, spec)` with every option drawn, small enough for
/// the direct loops.
pub fn random_conv(rng: &mut Rng, max_hw: usize) -> ([usize; 4], [usize; 4], Conv2dSpec) {
    loop {
        let groups = rng.range(1, 3);
        let c = groups * rng.range(1, 3);
        let k = groups * rng.range(1, 3);
        let kernel = [rng.range(1, 4), rng.range(1, 4)];
        let spec = Conv2dSpec {
            stride: [rng.range(1, 3), rng.range(1, 3)],
            padding: Padding2d {
                top: rng.range(0, 3),
                bottom: rng.range(0, 3),
                left: rng.range(0, 3),
                right: rng.range(0, 3),
            },
            dilation: [rng.range(1, 3), rng.range(1, 3)],
            groups,
        };
        let hw = [rng.range(1, max_hw), rng.range(1, max_hw)];
        if spec.output_hw(hw, kernel).is_ok() {
            let n = rng.range(1, 3);
            return (
                [n, c, hw[0], hw[1]],
                [k, c / groups, kernel[0], kernel[1]],
                spec,
            );
        }
    }
}

/// A random pool spec and input shape that `geometry` accepts (`avg`: dilation 1).
pub fn random_pool(rng: &mut Rng, max_hw: usize, avg: bool) -> ([usize; 4], Pool2dSpec) {
    loop {
        let kernel = [rng.range(1, 4), rng.range(1, 4)];
        let spec = Pool2dSpec {
            kernel,
            stride: [rng.range(1, 3), rng.range(1, 3)],
            padding: [rng.range(0, kernel[0] / 2), rng.range(0, kernel[1] / 2)],
            dilation: if avg {
                [1, 1]
            } else {
                [rng.range(1, 2), rng.range(1, 2)]
            },
            ceil_mode: rng.bool(),
        };
        let x = [
            rng.range(1, 2),
            rng.range(1, 3),
            rng.range(1, max_hw),
            rng.range(1, max_hw),
        ];
        if spec.geometry(x).is_ok() {
            return (x, spec);
        }
    }
}

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

/// `max|got - want|` (NaN matches NaN; NaN or Inf against anything else is an infinite error)
/// and the scale `max(1, max|want|)` over finite elements.
pub fn error_and_scale<D: Dimension>(got: &Array<f64, D>, want: &Array<f64, D>) -> (f64, f64) {
    assert_eq!(got.shape(), want.shape(), "shapes differ");
    let mut err: f64 = 0.0;
    let mut scale: f64 = 1.0;
    for (&g, &w) in got.iter().zip(want.iter()) {
        if w.is_finite() {
            scale = scale.max(w.abs());
        }
        let e = if (g.is_nan() && w.is_nan()) || g == w {
            0.0
        } else if g.is_finite() && w.is_finite() {
            (g - w).abs()
        } else {
            f64::INFINITY
        };
        err = err.max(e);
    }
    (err, scale)
}

/// Asserts `max|got - want| <= rel * max(1, max|want|)`.
#[track_caller]
pub fn assert_close<D: Dimension>(got: &Array<f64, D>, want: &Array<f64, D>, rel: f64, what: &str) {
    let (err, scale) = error_and_scale(got, want);
    assert!(
        err <= rel * scale,
        "{what}: max error {err:e} > {rel:e} * {scale}\n got {got:?}\nwant {want:?}"
    );
}

/// One `Gpu` shared by a test binary's tests, with outputs poisoned (NaN / u32::MAX) before every
/// op so that an element a kernel fails to write cannot pass. Without an adapter the tests fail,
/// loudly, saying which driver to install: they are never skipped.
pub fn gpu() -> &'static wgconv::Gpu {
    static GPU: std::sync::OnceLock<wgconv::Gpu> = std::sync::OnceLock::new();
    GPU.get_or_init(|| {
        let gpu = wgconv::Gpu::builder()
            .poison_outputs(true)
            .build()
            .unwrap_or_else(|e| {
                panic!(
                    "GPU tests need a wgpu adapter and none could be used: {e}\n\
                     On a machine without a GPU install Mesa's software drivers \
                     (`apt-get install mesa-vulkan-drivers` for Vulkan lavapipe; GL llvmpipe \
                     comes with libgl1-mesa-dri/libegl-mesa0) and run with WGPU_BACKEND=vulkan \
                     or WGPU_BACKEND=gl."
                )
            });
        let info = gpu.adapter_info();
        eprintln!("GPU tests on {} ({:?})", info.name, info.backend);
        gpu
    })
}

/// f32 array from f64 values.
pub fn f32s<D: Dimension>(a: &Array<f64, D>) -> Array<f32, D> {
    a.mapv(|v| v as f32)
}

/// f64 array from f32 values.
pub fn f64s<D: Dimension>(a: &Array<f32, D>) -> Array<f64, D> {
    a.mapv(f64::from)
}
