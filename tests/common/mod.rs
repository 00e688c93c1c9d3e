//! Helpers shared by the integration tests: a seeded RNG, random specs and tolerance checks
//! here; in submodules the PyTorch fixtures (`fixtures`), the shared `Gpu` and its downloads and
//! comparisons (`device`), the four conv ops and the pools run on the GPU against the reference
//! (`check`), hostile values for the fuzzers (`fuzz`), the 128-bit model of the shape math
//! (`model`) and the small CNN of the training tests (`net`). `fixtures`, `device` and `check` are re-exported here; `fuzz` and `model` are
//! imported by the fuzzers that use them.
#![allow(dead_code)]

pub mod check;
pub mod device;
pub mod fixtures;
pub mod fuzz;
pub mod model;
pub mod net;

// Each test binary uses some of the helpers.
#[allow(unused_imports)]
pub use check::*;
#[allow(unused_imports)]
pub use device::*;
#[allow(unused_imports)]
pub use fixtures::*;

use ndarray::{Array, Array4, Dimension};
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

/// f32 array from f64 values.
pub fn f32s<D: Dimension>(a: &Array<f64, D>) -> Array<f32, D> {
    a.mapv(|v| v as f32)
}

/// f64 array from f32 values.
pub fn f64s<D: Dimension>(a: &Array<f32, D>) -> Array<f64, D> {
    a.mapv(f64::from)
}
