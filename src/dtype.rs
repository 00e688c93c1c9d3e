//! Element types of GPU tensors: f32, and the 16-bit f16 and bf16 stored two to a 4-byte word,
//! with the host's conversions, which give the same bits as the GPU's
//! (`shaders/lib/dtype.wgsl`).
//!
//! Rounding to f16 or bf16, wherever it happens, is to nearest with ties to even; magnitudes at
//! or above the first value that rounds past the largest finite one (f16: 65520; bf16:
//! (2 - 2^-8) · 2^127) become ±inf; subnormals are kept; every NaN stays a NaN (its quiet bit
//! set, its upper payload kept). Widening to f32 is exact.

use std::fmt;

/// The element type of a GPU tensor.
///
/// ```
/// use wgconv::DType;
/// assert_eq!(DType::BF16.to_string(), "bf16");
/// assert_eq!(DType::F16.size_bytes(), 2);
/// // 65519 is the largest value that rounds to f16's largest finite value (65504).
/// assert_eq!(DType::F16.round(65519.0), 65504.0);
/// assert_eq!(DType::F16.round(65520.0), f32::INFINITY);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16 (1 sign, 5 exponent, 10 mantissa bits).
    F16,
    /// bfloat16: the upper 16 bits of a binary32 (1 sign, 8 exponent, 7 mantissa bits).
    BF16,
}

impl DType {
    /// Every dtype, in the order of their codes.
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// Bytes of one element: 4, 2, 2.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The shaders' code for the dtype (`DT_F32`, `DT_F16`, `DT_BF16` in
    /// `shaders/lib/dtype.wgsl`).
    pub fn code(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::BF16 => 2,
        }
    }

    /// Bytes that `len` elements take in a buffer: 16-bit elements two to a 4-byte word, so a
    /// tensor is a whole number of words (the half-word after an odd-length tensor is never
    /// written).
    pub fn storage_bytes(self, len: usize) -> Option<u64> {
        let len = u64::try_from(len).ok()?;
        match self {
            DType::F32 => len.checked_mul(4),
            DType::F16 | DType::BF16 => len.div_ceil(2).checked_mul(4),
        }
    }

    /// The 16-bit pattern of `v` rounded to this dtype (`None` for F32).
    pub fn to_bits16(self, v: f32) -> Option<u16> {
        match self {
            DType::F32 => None,
            DType::F16 => Some(half::f16::from_f32(v).to_bits()),
            DType::BF16 => Some(half::bf16::from_f32(v).to_bits()),
        }
    }

    /// The exact f32 value of a 16-bit pattern of this dtype (`bits` as f32 bits for F32 is not
    /// meaningful: F32 gives `f32::from_bits(bits as u32)`).
    pub fn from_bits16(self, bits: u16) -> f32 {
        match self {
            DType::F32 => f32::from_bits(u32::from(bits)),
            DType::F16 => half::f16::from_bits(bits).to_f32(),
            DType::BF16 => half::bf16::from_bits(bits).to_f32(),
        }
    }

    /// `v` rounded to this dtype and widened back to f32 (the identity for F32).
    pub fn round(self, v: f32) -> f32 {
        match self.to_bits16(v) {
            Some(bits) => self.from_bits16(bits),
            None => v,
        }
    }

    /// The elements `values` in this dtype's storage, little-endian, two 16-bit elements to a
    /// word, the last half-word of an odd count zero.
    pub(crate) fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            DType::F32 => bytemuck::cast_slice(values).to_vec(),
            DType::F16 | DType::BF16 => {
                let mut bytes = Vec::with_capacity(values.len().div_ceil(2) * 4);
                for &v in values {
                    let bits = self.to_bits16(v).expect("16-bit dtype");
                    bytes.extend_from_slice(&bits.to_le_bytes());
                }
                if values.len() % 2 == 1 {
                    bytes.extend_from_slice(&[0, 0]);
                }
                bytes
            }
        }
    }

    /// The first `len` elements of `bytes` in this dtype's storage, widened exactly to f32.
    pub(crate) fn decode(self, bytes: &[u8], len: usize) -> Vec<f32> {
        match self {
            DType::F32 => bytemuck::pod_collect_to_vec(&bytes[..len * 4]),
            DType::F16 | DType::BF16 => bytes[..len * 2]
                .chunks_exact(2)
                .map(|b| self.from_bits16(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
        }
    }
}

/// `"f32"`, `"f16"`, `"bf16"`.
impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::DType;

    #[test]
    fn every_16_bit_pattern_round_trips_through_f32() {
        for dt in [DType::F16, DType::BF16] {
            for bits in 0..=u16::MAX {
                let v = dt.from_bits16(bits);
                let back = dt.to_bits16(v).unwrap();
                if v.is_nan() {
                    // NaN stays NaN, its quiet bit set.
                    assert!(dt.from_bits16(back).is_nan(), "{dt} {bits:#06x}");
                } else {
                    assert_eq!(back, bits, "{dt} {bits:#06x} -> {v}");
                }
            }
        }
    }

    #[test]
    fn ties_overflow_subnormals_and_nan() {
        let f16 = DType::F16;
        // Ties to even: 1 + 2^-11 lies between 1 and 1 + 2^-10.
        assert_eq!(f16.round(1.0 + 2f32.powi(-11)), 1.0);
        assert_eq!(
            f16.round(1.0 + 3.0 * 2f32.powi(-11)),
            1.0 + 2.0 * 2f32.powi(-10)
        );
        // Overflow at 65520, not before.
        assert_eq!(f16.round(65519.996), 65504.0);
        assert_eq!(f16.round(-65520.0), f32::NEG_INFINITY);
        // Subnormals kept: 2^-24 is the least; 2^-25 ties to 0, just above it rounds up.
        assert_eq!(f16.round(2f32.powi(-24)), 2f32.powi(-24));
        assert_eq!(f16.round(2f32.powi(-25)), 0.0);
        assert_eq!(f16.round(2f32.powi(-25) * 1.0001), 2f32.powi(-24));
        let bf16 = DType::BF16;
        let max = (2.0 - 2f32.powi(-7)) * 2f32.powi(127);
        assert_eq!(bf16.round(max), max);
        assert_eq!(
            bf16.round((2.0 - 2f32.powi(-8)) * 2f32.powi(127)),
            f32::INFINITY
        );
        assert_eq!(bf16.round(f32::from_bits(1)), 0.0);
        assert_eq!(
            bf16.round(f32::from_bits(0x0001_8000)),
            f32::from_bits(0x0002_0000)
        );
        for dt in [f16, bf16] {
            assert!(dt.round(f32::NAN).is_nan());
            assert!(
                dt.round(f32::from_bits(0x7f80_0001)).is_nan(),
                "{dt}: a NaN payload"
            );
            assert_eq!(dt.round(f32::INFINITY), f32::INFINITY);
            assert_eq!(dt.round(-0.0).to_bits(), (-0.0f32).to_bits());
        }
    }

    #[test]
    fn storage_is_two_elements_a_word() {
        assert_eq!(DType::F16.storage_bytes(3), Some(8));
        assert_eq!(DType::BF16.storage_bytes(4), Some(8));
        assert_eq!(DType::F32.storage_bytes(3), Some(12));
        assert_eq!(DType::F16.storage_bytes(usize::MAX), None);
        let bytes = DType::F16.encode(&[1.0, -2.0, 0.5]);
        assert_eq!(bytes, [0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38, 0, 0]);
        assert_eq!(DType::F16.decode(&bytes, 3), [1.0, -2.0, 0.5]);
    }
}
