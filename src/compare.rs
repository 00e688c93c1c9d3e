//! Comparing a result with the reference: the tolerance rule used by checked mode, the tests
//! and the benchmark, and its 16-bit form.

use crate::dtype::DType;

/// GPU results must satisfy `max|gpu - ref| <= GPU_TOLERANCE * max(1, max|ref|)`.
pub const GPU_TOLERANCE: f64 = 1e-4;

/// The outcome of comparing a result with its reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comparison {
    /// `max|got - want|`; NaN matches NaN and equal infinities match, any other disagreement
    /// involving a non-finite value is infinite.
    pub max_abs_err: f64,
    /// `max(1, max|want|)` over the finite reference values.
    pub scale: f64,
    /// Flat position of the largest error (0 when there is none).
    pub worst: usize,
}

impl Comparison {
    /// `max_abs_err / scale`.
    pub fn rel_err(&self) -> f64 {
        self.max_abs_err / self.scale
    }
    /// Whether the error is within `tol` of the scale.
    pub fn passes(&self, tol: f64) -> bool {
        self.max_abs_err <= tol * self.scale
    }
}

/// Compares two equally long sequences of values.
pub fn compare(
    got: impl IntoIterator<Item = f64>,
    want: impl IntoIterator<Item = f64>,
) -> Comparison {
    let mut c = Comparison {
        max_abs_err: 0.0,
        scale: 1.0,
        worst: 0,
    };
    for (i, (g, w)) in got.into_iter().zip(want).enumerate() {
        if w.is_finite() {
            c.scale = c.scale.max(w.abs());
        }
        let e = if (g.is_nan() && w.is_nan()) || g == w {
            0.0
        } else if g.is_finite() && w.is_finite() {
            (g - w).abs()
        } else {
            f64::INFINITY
        };
        if e > c.max_abs_err {
            c.max_abs_err = e;
            c.worst = i;
        }
    }
    c
}

/// One unit in the last place of `v` in `dtype` (the subnormal spacing near zero).
pub fn ulp(dtype: DType, v: f64) -> f64 {
    let (mantissa, min_exp) = match dtype {
        DType::F32 => (23, -126),
        DType::F16 => (10, -14),
        DType::BF16 => (7, -126),
    };
    let e = if v == 0.0 || !v.is_finite() {
        min_exp
    } else {
        (v.abs().log2().floor() as i32).max(min_exp)
    };
    2f64.powi(e - mantissa)
}

/// Compares a result in `dtype` with the f64 reference computed on the same (rounded) inputs:
/// f32 as [`compare`] at [`GPU_TOLERANCE`]; a 16-bit result element may differ from the
/// reference by one unit in the last place of the dtype at the reference plus the f32
/// accumulation's share (`GPU_TOLERANCE · scale`), or equal the reference rounded (past the
/// format's range: ±inf). Returns the comparison (raw errors) and whether it passes.
pub fn compare_in(dtype: DType, got: &[f64], want: &[f64]) -> (Comparison, bool) {
    let c = compare(got.iter().copied(), want.iter().copied());
    if dtype == DType::F32 {
        return (c, c.passes(GPU_TOLERANCE));
    }
    let ok = got.iter().zip(want).all(|(&g, &w)| {
        let rounded = f64::from(dtype.round(w as f32));
        (g.is_nan() && w.is_nan())
            || g == rounded
            || (g.is_finite()
                && w.is_finite()
                && (g - w).abs() <= ulp(dtype, w) + GPU_TOLERANCE * c.scale)
    });
    (c, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_and_inf_rules() {
        assert!(compare([f64::NAN, 1.0], [f64::NAN, 1.0]).passes(0.0));
        assert!(!compare([1.0], [f64::NAN]).passes(1e9));
        assert!(!compare([f64::NAN], [1.0]).passes(1e9));
        assert!(compare([f64::NEG_INFINITY], [f64::NEG_INFINITY]).passes(0.0));
        assert!(!compare([f64::INFINITY], [1e30]).passes(1.0));
        let c = compare([1.0, 101.0], [1.0, 100.0]);
        assert_eq!((c.max_abs_err, c.scale, c.worst), (1.0, 100.0, 1));
    }

    #[test]
    fn sixteen_bit_rule() {
        assert_eq!(ulp(DType::F16, 1.0), 2f64.powi(-10));
        assert_eq!(ulp(DType::F16, 1e-9), 2f64.powi(-24));
        assert_eq!(ulp(DType::BF16, 3.0), 2f64.powi(-6));
        // One ulp passes, two do not (at a scale of 1, the f32 share is 1e-4).
        let one = 1.0 + 2f64.powi(-10);
        assert!(compare_in(DType::F16, &[one], &[1.0]).1);
        assert!(!compare_in(DType::F16, &[1.0 + 3.0 * 2f64.powi(-10)], &[1.0]).1);
        // Past the range: inf where the reference rounds to inf.
        assert!(compare_in(DType::F16, &[f64::INFINITY], &[70000.0]).1);
        assert!(!compare_in(DType::F16, &[f64::INFINITY], &[60000.0]).1);
        assert!(!compare_in(DType::F32, &[one], &[1.0]).1);
    }
}
