//! Comparing a result with the reference: the tolerance rule used by checked mode, the tests
//! and the benchmark.

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
}
