//! How a kernel reads its 16-bit-capable operands: the storage path, chosen when its pipeline
//! is built. A kernel declares such an operand `array<Elem>` and reads element `i` as
//! `elem_at(x[elem_word(i)], i)` (f32 in registers, f32 products and sums); its file includes
//! `lib/elem.wgsl`, which [`Storage::piece`] replaces:
//! - [`Storage::F32`]: `shaders/lib/elem.wgsl`, the f32 kernels as they were;
//! - [`Storage::Packed`]: two 16-bit elements a `u32` word, widened with `lib/dtype.wgsl`'s
//!   integer conversion (any device, every dtype; the only path for bf16, which WGSL lacks);
//! - [`Storage::Half`]: `array<f16>` under `enable f16;` (devices with `SHADER_F16`).
//!
//! Every path widens exactly, so a kernel gives the same bits on each (NaN payloads aside).
//! Results are written as f32 and rounded once by `cast.wgsl` in a pass of its own, so two
//! invocations never write halves of one word.

use crate::dtype::DType;

/// The storage path of a kernel's 16-bit-capable operands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Storage {
    /// f32 elements.
    #[default]
    F32,
    /// f16 or bf16 elements two to a `u32` word.
    Packed(DType),
    /// f16 elements as WGSL's `f16`.
    Half,
}

/// The include line a kernel names for its storage piece.
pub const ELEM: &str = "lib/elem.wgsl";

impl Storage {
    /// The path for operands of `dtype` on a device that has (and the context enabled)
    /// `SHADER_F16` or not: bf16 is always packed (WGSL has no bf16 type); f16 is native where
    /// it can be, packed elsewhere (GL, Adreno, DX12 below SM 6.2, or when forced by
    /// [`GpuBuilder::packed_16bit`](crate::GpuBuilder::packed_16bit)).
    pub fn for_dtype(dtype: DType, native_f16: bool) -> Storage {
        match dtype {
            DType::F32 => Storage::F32,
            DType::F16 if native_f16 => Storage::Half,
            d => Storage::Packed(d),
        }
    }

    /// Bytes an element takes.
    pub fn elem_bytes(self) -> usize {
        match self {
            Storage::F32 => 4,
            Storage::Packed(_) | Storage::Half => 2,
        }
    }

    /// The WGSL that replaces a kernel's `lib/elem.wgsl` include.
    pub fn piece(self) -> String {
        match self {
            Storage::F32 => include_str!("../../../shaders/lib/elem.wgsl").to_string(),
            Storage::Packed(dt) => format!(
                "{}\nconst ELEM_DT: u32 = {}u;\n{}",
                include_str!("../../../shaders/lib/dtype.wgsl"),
                dt.code(),
                include_str!("../../../shaders/lib/elem_packed.wgsl")
            ),
            Storage::Half => include_str!("../../../shaders/lib/elem_f16.wgsl").to_string(),
        }
    }

    /// A kernel's assembled f32 source (its `lib/elem.wgsl` piece the f32 one) for this
    /// storage: the piece swapped, and `enable f16;` first for [`Storage::Half`].
    pub fn specialise(self, f32_source: &str) -> String {
        if self == Storage::F32 {
            return f32_source.to_string();
        }
        let f32_piece = Storage::F32.piece();
        let body = f32_source.replacen(&f32_piece, &self.piece(), 1);
        match self {
            Storage::Half => format!("enable f16;\n{body}"),
            _ => body,
        }
    }
}

impl std::fmt::Display for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::F32 => write!(f, "f32"),
            Storage::Packed(dt) => write!(f, "packed {dt}"),
            Storage::Half => write!(f, "native f16"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::kernels::Kernel;

    #[test]
    fn bf16_is_always_packed_and_f16_native_only_with_the_feature() {
        assert_eq!(Storage::for_dtype(DType::F32, true), Storage::F32);
        assert_eq!(
            Storage::for_dtype(DType::BF16, true),
            Storage::Packed(DType::BF16)
        );
        assert_eq!(Storage::for_dtype(DType::F16, true), Storage::Half);
        assert_eq!(
            Storage::for_dtype(DType::F16, false),
            Storage::Packed(DType::F16)
        );
    }

    /// Every kernel that reads through `lib/elem.wgsl` validates on every path.
    #[test]
    fn every_storage_variant_validates() {
        let typed: Vec<Kernel> = Kernel::ALL
            .into_iter()
            .filter(|k| k.def().file.contains(ELEM))
            .collect();
        assert!(!typed.is_empty());
        for k in typed {
            for s in [
                Storage::F32,
                Storage::Packed(DType::F16),
                Storage::Packed(DType::BF16),
                Storage::Half,
            ] {
                let src = s.specialise(k.source());
                assert_eq!(src.contains("alias Elem = f32"), s == Storage::F32);
                let module = naga::front::wgsl::parse_str(&src)
                    .unwrap_or_else(|e| panic!("{} ({s}): {}", k.name(), e.emit_to_string(&src)));
                naga::valid::Validator::new(
                    naga::valid::ValidationFlags::all(),
                    naga::valid::Capabilities::all(),
                )
                .validate(&module)
                .unwrap_or_else(|e| panic!("{} ({s}): {e:?}", k.name()));
            }
        }
    }
}
