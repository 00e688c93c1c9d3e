//! The inputs of a layer's ops: seeded random tensors, and their f64 copies for the reference.

use ndarray::{Array, Dimension, ShapeBuilder};

/// Deterministic uniform values in `[-1, 1)` (SplitMix64), never all zero.
pub fn random<Sh: ShapeBuilder>(shape: Sh, seed: u64) -> Array<f32, Sh::Dim> {
    let mut state = seed;
    Array::from_shape_simple_fn(shape, || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
    })
}

/// A seed from the run's seed, the layer's name and the tensor's role.
pub fn seed_for(base: u64, layer: &str, role: &str) -> u64 {
    // FNV-1a.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ base;
    for b in layer.bytes().chain([0]).chain(role.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The f64 copy the reference runs on.
pub fn f64s<D: Dimension>(a: &Array<f32, D>) -> Array<f64, D> {
    a.mapv(f64::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_is_in_range_and_seeded() {
        let a = random(ndarray::Ix1(1000), 7);
        assert!(a.iter().all(|&v| (-1.0..1.0).contains(&v)));
        assert!(a.iter().any(|&v| v != 0.0));
        assert_eq!(a, random(ndarray::Ix1(1000), 7));
        assert_ne!(a, random(ndarray::Ix1(1000), 8));
    }
}
