//! `Gpu::cast`: a tensor converted to another dtype on the GPU (`shaders/cast.wgsl`).

use super::kernels::{EltParams, Kernel, Storage, to_u32};
use super::submit::Sink;
use super::tensor::Raw;
use super::{Dispatch, Gpu, Tensor};
use crate::dtype::DType;
use crate::error::{Error, Result};

impl Gpu {
    /// A new tensor of `t`'s values in `dtype`, converted on the GPU (any dtype to any; to its
    /// own dtype, a copy): each element rounded once, to nearest with ties to even, with the
    /// same bits as the host's conversion ([`Gpu::upload_as`] of the downloaded values) on every
    /// device, with or without `SHADER_F16`. Widening is exact. In checked mode the result is
    /// compared bit for bit with the host's conversion.
    ///
    /// ```no_run
    /// # fn main() -> wgconv::Result<()> {
    /// use wgconv::DType;
    /// let gpu = wgconv::Gpu::new()?;
    /// let x = gpu.upload(&ndarray::arr1(&[0.1f32, 3.0e38, -0.0]))?;
    /// let h = gpu.cast(&x, DType::BF16)?;
    /// assert_eq!(h.dtype(), DType::BF16);
    /// let back = gpu.download(&gpu.cast(&h, DType::F32)?)?;
    /// assert_eq!(back[0], DType::BF16.round(0.1));
    /// # Ok(()) }
    /// ```
    pub fn cast(&self, t: &Tensor, dtype: DType) -> Result<Tensor> {
        const OP: &str = "cast";
        self.check_owner(&t.raw, OP)?;
        let out = self.cast_raw(&mut Sink::Eager, &t.raw, dtype)?;
        if self.checked {
            let want = self.download(t)?.mapv(|v| dtype.round(v));
            let got = self.download(&out)?;
            if let Some((i, (g, w))) = got
                .iter()
                .zip(want.iter())
                .enumerate()
                .find(|(_, (g, w))| g.to_bits() != w.to_bits() && !(g.is_nan() && w.is_nan()))
            {
                return Err(Error::CheckFailed {
                    op: format!("{OP} to {dtype}"),
                    detail: format!(
                        "element {i} is {g:e} ({:#010x}), the host's conversion {w:e} ({:#010x})",
                        g.to_bits(),
                        w.to_bits()
                    ),
                });
            }
        }
        Ok(out)
    }

    /// `src` converted to `dtype` in a new tensor, now or in the batch being recorded (the
    /// result is then pending with it).
    pub(crate) fn cast_raw(&self, sink: &mut Sink<'_>, src: &Raw, dtype: DType) -> Result<Tensor> {
        let mut out = self.alloc_as(&src.shape, dtype, "cast output")?;
        self.cast_raw_into(sink, src, &out)?;
        if let Sink::Record(rec) = sink {
            out.batch = Some(rec.batch.clone());
        }
        Ok(Tensor { raw: out })
    }

    /// `src` converted into `dst` (same length, any dtypes), now or recorded.
    pub(crate) fn cast_raw_into(&self, sink: &mut Sink<'_>, src: &Raw, dst: &Raw) -> Result<()> {
        const OP: &str = "cast";
        let len = src.len;
        if len == 0 {
            return Ok(());
        }
        // Windows start at even elements, so a 16-bit window starts at a word.
        let per = self.items_per_chunk(&[(1, "element"), (1, "element")], len)?;
        let per = (per & !1).max(2);
        let mut ds = Vec::new();
        for e0 in (0..len).step_by(per) {
            let e1 = (e0 + per).min(len);
            let (from, a_off) = self.typed_window(src, e0, e1);
            let (to, out_off) = self.typed_window(dst, e0, e1);
            let params = EltParams {
                total: to_u32(e1 - e0, "cast window")?,
                a_off,
                out_off,
                ..Default::default()
            };
            let words = match dst.dtype {
                DType::F32 => e1 - e0,
                DType::F16 | DType::BF16 => (e1 - e0).div_ceil(2),
            };
            ds.push(Dispatch {
                kernel: Kernel::Cast(src.dtype, dst.dtype),
                storage: Storage::F32,
                params: bytemuck::bytes_of(&params).to_vec(),
                bindings: vec![from, to],
                items: words as u64,
            });
        }
        match sink {
            Sink::Eager => self.execute(OP, &ds),
            Sink::Record(rec) => {
                rec.keep_raws([src, dst].into_iter());
                rec.push_pass(OP, &ds);
                Ok(())
            }
        }
    }
}
