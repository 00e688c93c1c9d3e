//! GPU timing with timestamp queries around the compute passes of eager ops.

use super::Gpu;
use crate::error::Result;

/// Timestamp queries for the compute passes recorded while [`Gpu::time_gpu`] runs.
pub(crate) struct Profiler {
    pub query: wgpu::QuerySet,
    pub capacity: u32,
    pub used: u32,
}

/// Compute passes one [`Gpu::time_gpu`] call can time.
const PROFILE_PASSES: u32 = 1024;

impl Gpu {
    /// Whether the device has timestamp queries, so [`Gpu::time_gpu`] can measure on the GPU.
    pub fn has_timestamps(&self) -> bool {
        self.device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Runs `f` and measures, with timestamp queries, the GPU time of the compute passes the ops
    /// inside it record (the sum of their durations, in milliseconds; one pass per op call).
    /// Waits for the GPU. Returns `None` for the time when the adapter has no timestamp queries.
    /// Passes recorded by other threads meanwhile are counted too.
    ///
    /// ```no_run
    /// # fn main() -> wgconv::Result<()> {
    /// # let gpu = wgconv::Gpu::new()?;
    /// # let x = gpu.upload(&ndarray::Array4::<f32>::ones((1, 1, 8, 8)))?;
    /// let spec = wgconv::Pool2dSpec::new([2, 2]);
    /// let (y, ms) = gpu.time_gpu(|| gpu.avg_pool2d_forward(&x, &spec, true))?;
    /// println!("{:?} in {ms:?} ms", y.shape());
    /// # Ok(()) }
    /// ```
    pub fn time_gpu<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, Option<f64>)> {
        if !self.has_timestamps() {
            return Ok((f()?, None));
        }
        let query = self.scoped("time_gpu", || {
            self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("wgconv timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * PROFILE_PASSES,
            })
        })?;
        *self.profiler.lock().unwrap_or_else(|e| e.into_inner()) = Some(Profiler {
            query,
            capacity: PROFILE_PASSES,
            used: 0,
        });
        let out = f();
        let profiler = self
            .profiler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let out = out?;
        let Some(p) = profiler.filter(|p| p.used > 0) else {
            return Ok((out, Some(0.0)));
        };
        let bytes = u64::from(p.used) * 16;
        let scope = self.scope();
        let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgconv timestamp resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("timestamps"),
            });
        encoder.resolve_query_set(&p.query, 0..2 * p.used, &resolve, 0);
        self.submit([encoder.finish()]);
        scope.finish(self, "time_gpu")?;
        let stamps: Vec<u64> = bytemuck::pod_collect_to_vec(&self.read_bytes(&resolve, 0, bytes)?);
        let period_ns = f64::from(self.queue.get_timestamp_period());
        let ticks: u64 = stamps
            .chunks_exact(2)
            .map(|pair| pair[1].saturating_sub(pair[0]))
            .sum();
        Ok((out, Some(ticks as f64 * period_ns / 1e6)))
    }
}
