//! `Gpu::all_finite`: mixed-precision training's overflow check on the GPU
//! (`shaders/all_finite.wgsl`).

use super::kernels::{EltParams, Kernel, Storage, to_u32};
use super::{Dispatch, Gpu, Tensor};
use crate::dtype::DType;
use crate::error::Result;

impl Gpu {
    /// Whether every element of `tensors` is finite (no ±inf, no NaN): checked on the GPU, one
    /// flag read back for all of them. 16-bit tensors are widened first (exactly).
    ///
    /// ```no_run
    /// # fn main() -> wgconv::Result<()> {
    /// let gpu = wgconv::Gpu::new()?;
    /// let g = gpu.upload(&ndarray::arr1(&[1.0f32, f32::INFINITY]))?;
    /// assert!(!gpu.all_finite(&[&g])?);
    /// # Ok(()) }
    /// ```
    pub fn all_finite(&self, tensors: &[&Tensor]) -> Result<bool> {
        const OP: &str = "all_finite";
        let flag = self.upload_indices(&ndarray::arr1(&[0u32]))?;
        let mut wide = Vec::new();
        for t in tensors {
            self.check_owner(&t.raw, OP)?;
            if t.dtype() != DType::F32 {
                wide.push(self.cast(t, DType::F32)?);
            }
        }
        let f32s = tensors
            .iter()
            .copied()
            .filter(|t| t.dtype() == DType::F32)
            .chain(wide.iter());
        let mut ds = Vec::new();
        for t in f32s {
            let len = t.len();
            if len == 0 {
                continue;
            }
            let per = self.items_per_chunk(&[(1, "element")], len)?;
            for e0 in (0..len).step_by(per) {
                let e1 = (e0 + per).min(len);
                let (bind, a_off) = self.window(&t.raw, e0, e1);
                let params = EltParams {
                    total: to_u32(e1 - e0, "all_finite window")?,
                    a_off,
                    ..Default::default()
                };
                ds.push(Dispatch {
                    kernel: Kernel::AllFinite,
                    storage: Storage::F32,
                    params: bytemuck::bytes_of(&params).to_vec(),
                    bindings: vec![bind, self.whole(&flag.raw, 1)],
                    items: (e1 - e0) as u64,
                });
            }
        }
        if !ds.is_empty() {
            self.execute(OP, &ds)?;
        }
        Ok(self.download_indices(&flag)?.iter().all(|&f| f == 0))
    }
}
