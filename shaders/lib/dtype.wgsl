// Element dtypes (Rust: DType::code) and their conversions, with integer arithmetic only, so
// that every device gives the same bits whether or not it has SHADER_F16 (WGSL leaves the
// rounding of f16(x) and pack2x16float to the implementation). Values travel as f32 bit
// patterns (u32), never through float registers, so NaN payloads are not canonicalised.
// 16-bit elements are stored two to a u32 word, element 2i in the low half.
//   f32 -> f16 / bf16: to nearest, ties to even; past the largest finite value to +-inf (f16
//   from 65520 on); subnormals kept; NaN stays NaN (quiet bit set, upper payload kept).
//   f16 / bf16 -> f32: exact; a NaN gets its quiet bit set, as every conversion here gives a
//   quiet NaN.
// The host's conversions (the `half` crate, src/dtype.rs) give the same bits.

const DT_F32: u32 = 0u;
const DT_F16: u32 = 1u;
const DT_BF16: u32 = 2u;

// The 16-bit element i of a word holding elements i & ~1 and i | 1.
fn half_of(word: u32, i: u32) -> u32 {
    return (word >> ((i & 1u) * 16u)) & 0xffffu;
}

// An f16 bit pattern as f32 bits, exactly.
fn f16_to_f32_bits(h: u32) -> u32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0x1fu) {
        return sign | 0x7f800000u | select(0u, 0x400000u | (m << 13u), m != 0u);
    }
    if (e != 0u) {
        return sign | ((e + 112u) << 23u) | (m << 13u);
    }
    if (m == 0u) {
        return sign;
    }
    // A subnormal m * 2^-24 with its leading bit at position b: 1.f * 2^(b - 24).
    let b = 31u - countLeadingZeros(m);
    return sign | ((b + 103u) << 23u) | ((m << (23u - b)) & 0x7fffffu);
}

// f32 bits rounded to f16 bits.
fn f32_bits_to_f16(x: u32) -> u32 {
    let sign = (x >> 16u) & 0x8000u;
    let e = (x >> 23u) & 0xffu;
    let m = x & 0x7fffffu;
    if (e == 0xffu) {
        return sign | 0x7c00u | select(0u, 0x200u | (m >> 13u), m != 0u);
    }
    if (e >= 143u) {
        // 2^16 and above.
        return sign | 0x7c00u;
    }
    if (e >= 113u) {
        // Normal in f16 (2^-14 and above); a carry out of the mantissa steps the exponent, and
        // from 65520 on reaches the infinity pattern.
        var v = ((e - 112u) << 10u) | (m >> 13u);
        let rest = m & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (v & 1u) == 1u)) {
            v += 1u;
        }
        return sign | v;
    }
    if (e < 102u) {
        // Below 2^-25, half the least subnormal: zero.
        return sign;
    }
    // Subnormal in f16: the full significand shifted to units of 2^-24, rounded.
    let mm = m | 0x800000u;
    let shift = 126u - e;
    var v = mm >> shift;
    let rest = mm & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    if (rest > half || (rest == half && (v & 1u) == 1u)) {
        v += 1u;
    }
    return sign | v;
}

// f32 bits rounded to bf16 bits.
fn f32_bits_to_bf16(x: u32) -> u32 {
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (x >> 16u) | 0x40u;
    }
    // Ties to even: round up past the half, or at it when the kept part is odd.
    if ((x & 0x8000u) != 0u && (x & 0x17fffu) != 0u) {
        return (x >> 16u) + 1u;
    }
    return x >> 16u;
}

// A 16-bit pattern of dtype dt as f32 bits.
fn widen_bits(h: u32, dt: u32) -> u32 {
    if (dt == DT_BF16) {
        return select(h, h | 0x40u, (h & 0x7fffu) > 0x7f80u) << 16u;
    }
    return f16_to_f32_bits(h);
}

// f32 bits rounded to dtype dt (16-bit).
fn narrow_bits(x: u32, dt: u32) -> u32 {
    if (dt == DT_BF16) {
        return f32_bits_to_bf16(x);
    }
    return f32_bits_to_f16(x);
}
