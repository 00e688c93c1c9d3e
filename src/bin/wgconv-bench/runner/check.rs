//! Checking a result against the reference in f64: values at the GPU tolerance, indices exactly.

use ndarray::ArrayViewD;
use wgconv::DType;
use wgconv::compare::{GPU_TOLERANCE, compare_in};

use crate::report::Check;

/// A check's outcome.
#[derive(Clone, Debug)]
pub struct CheckOutcome {
    pub check: Check,
    pub max_rel_err: Option<f64>,
    /// What differed, for mismatches.
    pub detail: Option<String>,
}

impl CheckOutcome {
    pub fn skipped() -> Self {
        CheckOutcome {
            check: Check::Skipped,
            max_rel_err: None,
            detail: None,
        }
    }
}

/// Compares a result with the f64 reference: at [`GPU_TOLERANCE`] for f32, allowing one unit
/// in the last place of a 16-bit dtype more ([`compare_in`]).
pub fn check_values(got: ArrayViewD<f32>, want: ArrayViewD<f64>, dtype: DType) -> CheckOutcome {
    if got.shape() != want.shape() {
        return CheckOutcome {
            check: Check::Mismatch,
            max_rel_err: None,
            detail: Some(format!(
                "shape {:?}, expected {:?}",
                got.shape(),
                want.shape()
            )),
        };
    }
    let got64: Vec<f64> = got.iter().map(|&v| f64::from(v)).collect();
    let want64: Vec<f64> = want.iter().copied().collect();
    let (c, ok) = compare_in(dtype, &got64, &want64);
    let detail = (!ok).then(|| {
        let got_v = got.iter().nth(c.worst).copied().unwrap_or(f32::NAN);
        let want_v = want.iter().nth(c.worst).copied().unwrap_or(f64::NAN);
        format!(
            "max |got - ref| = {:.3e} at flat index {} (got {got_v}, ref {want_v}), scale {:.3e}, \
             relative {:.3e} > tolerance {GPU_TOLERANCE:e} ({dtype})",
            c.max_abs_err,
            c.worst,
            c.scale,
            c.rel_err()
        )
    });
    CheckOutcome {
        check: if ok { Check::Ok } else { Check::Mismatch },
        max_rel_err: Some(c.rel_err()),
        detail,
    }
}

/// Values checked as [`check_values`], indices exactly.
pub fn check_with_indices(
    got: ArrayViewD<f32>,
    want: ArrayViewD<f64>,
    got_idx: ArrayViewD<u32>,
    want_idx: ArrayViewD<u32>,
    dtype: DType,
) -> CheckOutcome {
    let mut out = check_values(got, want, dtype);
    if got_idx.shape() != want_idx.shape() {
        out.check = Check::Mismatch;
        out.detail = Some(format!(
            "index shape {:?}, expected {:?}",
            got_idx.shape(),
            want_idx.shape()
        ));
        return out;
    }
    let wrong = got_idx
        .iter()
        .zip(want_idx.iter())
        .filter(|(a, b)| a != b)
        .count();
    if wrong > 0 {
        let first = got_idx
            .iter()
            .zip(want_idx.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        out.check = Check::Mismatch;
        let prev = out
            .detail
            .take()
            .map(|d| format!("; {d}"))
            .unwrap_or_default();
        out.detail = Some(format!(
            "{wrong} of {} indices differ, first at flat index {first} (got {}, ref {}){prev}",
            want_idx.len(),
            got_idx.iter().nth(first).copied().unwrap_or(0),
            want_idx.iter().nth(first).copied().unwrap_or(0),
        ));
    }
    out
}
