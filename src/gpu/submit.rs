//! Submission: recording dispatches into a compute pass, error scopes, the serialised poll and
//! submit, waits, readback and GPU timing.

use std::time::Duration;

use super::buffers::BufferKind;
use super::kernels::Kernel;
use super::plan::{Role, Step};
use super::{Bind, Dispatch, Gpu};
use crate::error::{Error, Result};

/// Timestamp queries for the compute passes recorded while [`Gpu::time_gpu`] runs.
pub(super) struct Profiler {
    query: wgpu::QuerySet,
    capacity: u32,
    used: u32,
}

/// Compute passes one [`Gpu::time_gpu`] call can time.
const PROFILE_PASSES: u32 = 1024;

/// Error scopes around one op: validation and out-of-memory errors become `Err`.
pub(crate) struct Scope {
    // Fields drop in declaration order and wgpu panics unless scopes are popped in reverse
    // order of their push: `validation` (pushed last) must come first, so that an early return
    // between `scope()` and `finish()` drops them correctly.
    validation: wgpu::ErrorScopeGuard,
    oom: wgpu::ErrorScopeGuard,
}

impl Scope {
    pub fn finish(self, gpu: &Gpu, op: &str) -> Result<()> {
        let validation = pollster::block_on(self.validation.pop());
        let oom = pollster::block_on(self.oom.pop());
        if let Some(e) = validation.or(oom) {
            gpu.note_error();
            return Err(Error::Wgpu {
                op: op.to_string(),
                message: e.to_string(),
            });
        }
        gpu.check_alive()
    }
}

/// The buffers a plan's [`Role`]s stand for in one op call; a role without a buffer binds the
/// placeholder (a kernel's optional input that is absent).
#[derive(Default)]
pub(crate) struct Buffers<'a> {
    pub x: Option<&'a wgpu::Buffer>,
    pub w: Option<&'a wgpu::Buffer>,
    pub bias: Option<&'a wgpu::Buffer>,
    pub dy: Option<&'a wgpu::Buffer>,
    pub indices: Option<&'a wgpu::Buffer>,
    pub out: Option<&'a wgpu::Buffer>,
    pub partial: Option<&'a wgpu::Buffer>,
}

impl Gpu {
    /// Waits until all submitted work has finished (or the poll timeout passes).
    pub fn synchronize(&self) -> Result<()> {
        self.check_alive()?;
        self.wait_for(None)?;
        self.check_alive()
    }

    /// `Err(DeviceLost)` once the device is lost; also reports an error wgpu raised outside any
    /// of our error scopes.
    pub(crate) fn check_alive(&self) -> Result<()> {
        // wgpu reports a destroyed device only through the lost callback, which runs in a poll
        // once the queue is empty; until then its calls do nothing, silently.
        let _ = self.poll(wgpu::PollType::Poll);
        if let Some(reason) = self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(Error::DeviceLost(reason));
        }
        if let Some(msg) = self
            .uncaptured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            self.note_error();
            return Err(Error::Wgpu {
                op: "earlier call".into(),
                message: msg,
            });
        }
        Ok(())
    }

    /// `device.poll`, serialised with every other poll and submit of this `Gpu`: wgpu-core 30
    /// panics ("If the queue is empty, the current submission index ... should be at least the
    /// wait submission index") when a `Wait` poll races a poll or submit on another thread that
    /// retires the awaited submission.
    fn poll(&self, ty: wgpu::PollType) -> std::result::Result<wgpu::PollStatus, wgpu::PollError> {
        let _one = self.queue_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.device.poll(ty)
    }

    /// `queue.submit` (which polls the device internally), serialised like [`Gpu::poll`].
    pub(crate) fn submit<I: IntoIterator<Item = wgpu::CommandBuffer>>(
        &self,
        commands: I,
    ) -> wgpu::SubmissionIndex {
        let _one = self.queue_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.queue.submit(commands)
    }

    fn note_error(&self) {
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note_error();
    }

    pub(crate) fn scope(&self) -> Scope {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        Scope { oom, validation }
    }

    /// Workgroup grid for `items` work items: 1-D up to `max_compute_workgroups_per_dimension`,
    /// folded into 2-D beyond (kernels rebuild the linear id and skip the excess).
    fn grid(&self, kernel: Kernel, items: u64) -> Result<(u32, u32)> {
        let per = if kernel.workgroup_per_item() {
            1
        } else {
            u64::from(kernel.workgroup_size())
        };
        let groups = items.div_ceil(per).max(1);
        let max = u64::from(self.limits.max_compute_workgroups_per_dimension);
        if groups <= max {
            return Ok((groups as u32, 1));
        }
        let rows = groups.div_ceil(max);
        if rows > max {
            return Err(Error::DeviceLimit(format!(
                "{} needs {groups} workgroups, more than {max} x {max}",
                kernel.name()
            )));
        }
        Ok((max as u32, rows as u32))
    }

    /// Records `dispatches` into one compute pass, in order, and submits it.
    pub(crate) fn execute(&self, op: &str, dispatches: &[Dispatch<'_>]) -> Result<()> {
        self.check_alive()?;
        let scope = self.scope();
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(op) });
        let mut uniforms = Vec::with_capacity(dispatches.len());
        {
            let mut profiler = self.profiler.lock().unwrap_or_else(|e| e.into_inner());
            let timestamp_writes = profiler.as_mut().and_then(|p| {
                (p.used < p.capacity).then(|| {
                    p.used += 1;
                    wgpu::ComputePassTimestampWrites {
                        query_set: &p.query,
                        beginning_of_pass_write_index: Some(2 * p.used - 2),
                        end_of_pass_write_index: Some(2 * p.used - 1),
                    }
                })
            });
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(op),
                timestamp_writes,
            });
            for d in dispatches {
                let (gx, gy) = self.grid(d.kernel, d.items)?;
                let compiled = self
                    .pipelines
                    .get(&self.device, d.kernel, self.runtime_checks);
                let uniform = self.take_buffer(BufferKind::Uniform, d.params.len() as u64);
                self.queue.write_buffer(uniform.buffer(), 0, &d.params);
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: uniform.buffer(),
                        offset: 0,
                        size: wgpu::BufferSize::new(d.params.len() as u64),
                    }),
                }];
                for (i, b) in d.bindings.iter().enumerate() {
                    entries.push(wgpu::BindGroupEntry {
                        binding: i as u32 + 1,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: b.buffer,
                            offset: b.offset,
                            size: wgpu::BufferSize::new(b.size),
                        }),
                    });
                }
                let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(d.kernel.name()),
                    layout: &compiled.layout,
                    entries: &entries,
                });
                pass.set_pipeline(&compiled.pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(gx, gy, 1);
                uniforms.push(uniform);
            }
        }
        let index = self.submit([encoder.finish()]);
        scope.finish(self, op)?;
        self.check_submitted(index)
    }

    /// Records a plan's steps with its roles bound to `buffers` (see [`Gpu::execute`]).
    pub(crate) fn run(&self, op: &str, steps: &[Step], buffers: &Buffers<'_>) -> Result<()> {
        let buffer = |role: Role| -> &wgpu::Buffer {
            let b = match role {
                Role::X => buffers.x,
                Role::W => buffers.w,
                Role::Bias => buffers.bias,
                Role::Dy => buffers.dy,
                Role::Indices => buffers.indices,
                Role::Out => buffers.out,
                Role::Partial => buffers.partial,
                Role::Dummy => None,
            };
            b.unwrap_or(&self.dummy)
        };
        let dispatches: Vec<Dispatch<'_>> = steps
            .iter()
            .map(|s| Dispatch {
                kernel: s.kernel,
                params: s.params.clone(),
                bindings: s
                    .binds
                    .iter()
                    .map(|slot| {
                        let b = buffer(slot.role);
                        Bind {
                            buffer: b,
                            offset: slot.offset,
                            size: slot.size.min(b.size().saturating_sub(slot.offset)),
                        }
                    })
                    .collect(),
                items: s.items,
            })
            .collect();
        self.execute(op, &dispatches)
    }

    /// `Err` if the device silently rejected submission `index`: a destroyed device does
    /// nothing and reports nothing until its queue drains and the lost callback runs, but a zero
    /// wait on a rejected submission fails at once.
    pub(crate) fn check_submitted(&self, index: wgpu::SubmissionIndex) -> Result<()> {
        match self.poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: Some(Duration::ZERO),
        }) {
            Err(wgpu::PollError::WrongSubmissionIndex(..)) => Err(self.rejected()),
            _ => Ok(()),
        }
    }

    fn rejected(&self) -> Error {
        match self.check_alive() {
            Err(e) => e,
            Ok(()) => {
                Error::DeviceLost("the device rejected a submission (destroyed or lost)".into())
            }
        }
    }

    /// Waits until submission `index` (all work when `None`) is done, up to the poll timeout.
    /// One wait may end early (GL caps it near 2 s), so it is repeated until the deadline.
    fn wait_for(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        let start = std::time::Instant::now();
        let timeout = self.poll_timeout();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let asked = std::time::Instant::now();
            match self.poll(wgpu::PollType::Wait {
                submission_index: index.clone(),
                timeout: Some(left),
            }) {
                Ok(_) => return Ok(()),
                Err(wgpu::PollError::WrongSubmissionIndex(..)) => return Err(self.rejected()),
                Err(wgpu::PollError::Timeout) if start.elapsed() < timeout => {
                    // Not a busy loop where a backend returns early without waiting.
                    if asked.elapsed() < left / 2 {
                        std::thread::sleep(Duration::from_millis(1).min(left));
                    }
                }
                Err(e) => {
                    return Err(Error::Readback(format!(
                        "waiting {timeout:?} for the GPU to finish: {e}"
                    )));
                }
            }
        }
    }

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
        let query = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("wgconv timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * PROFILE_PASSES,
        });
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
        let stamps: Vec<u64> = bytemuck::pod_collect_to_vec(&self.read_bytes(&resolve, bytes)?);
        let period_ns = f64::from(self.queue.get_timestamp_period());
        let ticks: u64 = stamps
            .chunks_exact(2)
            .map(|pair| pair[1].saturating_sub(pair[0]))
            .sum();
        Ok((out, Some(ticks as f64 * period_ns / 1e6)))
    }

    /// A storage buffer holding `data` (small per-call tables).
    /// Copies the first `bytes` of `src` to a staging buffer and reads them on the host.
    pub(crate) fn read_bytes(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        self.check_alive()?;
        let scope = self.scope();
        let staging = self.take_buffer(BufferKind::Staging, bytes);
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        encoder.copy_buffer_to_buffer(src, 0, staging.buffer(), 0, bytes);
        let index = self.submit([encoder.finish()]);
        scope.finish(self, "download")?;

        let out = self.map_read(staging.buffer(), index, bytes);
        if out.is_err() {
            staging.discard();
        }
        let out = out?;
        // A device lost mid-flight must not hand back stale data.
        self.check_alive()?;
        Ok(out)
    }

    /// Maps the first `bytes` of `staging` once submission `index` (which fills it) is done,
    /// copies them out and unmaps it.
    fn map_read(
        &self,
        staging: &wgpu::Buffer,
        index: wgpu::SubmissionIndex,
        bytes: u64,
    ) -> Result<Vec<u8>> {
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, ..bytes, move |r| {
            let _ = tx.send(r);
        });
        self.wait_for(Some(index))?;
        let mapped = match rx.try_recv() {
            Ok(r) => r,
            // The callback runs on a later poll on some backends.
            Err(_) => {
                let _ = self.poll(wgpu::PollType::Poll);
                rx.recv_timeout(self.poll_timeout())
                    .map_err(|_| Error::Readback("buffer map did not complete".into()))?
            }
        };
        mapped.map_err(|e| Error::Readback(format!("mapping the staging buffer: {e}")))?;
        let out = {
            let view = staging
                .get_mapped_range(..bytes)
                .map_err(|e| Error::Readback(format!("reading the staging buffer: {e}")))?;
            view.to_vec()
        };
        staging.unmap();
        Ok(out)
    }
}
