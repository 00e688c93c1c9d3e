//! Submission: recording dispatches into a compute pass (of the op's own encoder, or of a
//! [`Recorder`](super::Recorder)'s), error scopes, the serialised poll and submit with their
//! counters, device-loss detection, and waits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::buffers::{BufferKind, PooledBuffer};
use super::kernels::Kernel;
use super::plan::{Role, Step};
use super::recorder::Record;
use super::tensor::Raw;
use super::{Bind, Dispatch, Gpu};
use crate::error::{Error, Result};

/// Error scopes around one op: validation and out-of-memory errors become `Err`.
///
/// In a browser (wasm32) a scope's result arrives later, through the page's event loop, which
/// an op cannot wait for; there no scope is pushed, and wgpu reports an error to the device's
/// uncaptured-error handler: on a device wgconv created, the next op returns it (as
/// `Error::Wgpu` "earlier call"); on the caller's device, the caller's handler gets it.
pub(crate) struct Scope {
    // Fields drop in declaration order and wgpu panics unless scopes are popped in reverse
    // order of their push: `validation` (pushed last) must come first, so that an early return
    // between `scope()` and `finish()` drops them correctly.
    #[cfg(not(target_arch = "wasm32"))]
    validation: wgpu::ErrorScopeGuard,
    #[cfg(not(target_arch = "wasm32"))]
    oom: wgpu::ErrorScopeGuard,
}

impl Scope {
    /// Pops the scopes (their futures are ready on native: no wait) and reports what they
    /// caught; then a loss seen earlier.
    pub fn finish(self, gpu: &Gpu, op: &str) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        let caught = {
            let validation = pollster::block_on(self.validation.pop());
            let oom = pollster::block_on(self.oom.pop());
            validation.or(oom)
        };
        #[cfg(target_arch = "wasm32")]
        let caught: Option<wgpu::Error> = None;
        if let Some(e) = caught {
            gpu.note_error();
            return Err(Error::Wgpu {
                op: op.to_string(),
                message: e.to_string(),
            });
        }
        gpu.check_lost()
    }
}

/// Queue submissions and device polls a [`Gpu`] has made, for tests and diagnostics: an eager
/// op makes one submission and no poll.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuCounters {
    /// `queue.submit` calls.
    pub submissions: u64,
    /// `device.poll` calls (waits included).
    pub polls: u64,
}

/// The counters behind [`GpuCounters`], shared with the futures of `download_async`.
#[derive(Default)]
pub(crate) struct Counters {
    pub submissions: AtomicU64,
    pub polls: AtomicU64,
}

/// The buffers a plan's [`Role`]s stand for in one op call; a role without a tensor binds the
/// placeholder (a kernel's optional input that is absent).
#[derive(Default, Clone, Copy)]
pub(crate) struct Buffers<'a> {
    pub x: Option<&'a Raw>,
    pub w: Option<&'a Raw>,
    pub bias: Option<&'a Raw>,
    pub dy: Option<&'a Raw>,
    pub indices: Option<&'a Raw>,
    pub out: Option<&'a Raw>,
    pub partial: Option<&'a Raw>,
    pub transform: Option<&'a Raw>,
}

impl<'a> Buffers<'a> {
    fn raw(&self, role: Role) -> Option<&'a Raw> {
        match role {
            Role::X => self.x,
            Role::W => self.w,
            Role::Bias => self.bias,
            Role::Dy => self.dy,
            Role::Indices => self.indices,
            Role::Out => self.out,
            Role::Partial => self.partial,
            Role::Transform => self.transform,
            Role::Dummy => None,
        }
        .filter(|r| r.buf.is_some())
    }

    /// Every tensor bound, for a recorded batch to keep alive.
    pub fn all(&self) -> impl Iterator<Item = &'a Raw> {
        [
            self.x,
            self.w,
            self.bias,
            self.dy,
            self.indices,
            self.out,
            self.partial,
            self.transform,
        ]
        .into_iter()
        .flatten()
    }
}

/// Whether a dispatch binds one buffer both as an input and as an output (then it runs the
/// kernel's all-`read_write` variant: wgpu refuses the mix in one dispatch).
fn aliased(d: &Dispatch<'_>) -> bool {
    let access = d.kernel.def().bindings;
    d.bindings.iter().zip(access).any(|(b, &a)| {
        a == super::kernels::Access::ReadWrite
            && d.bindings
                .iter()
                .zip(access)
                .any(|(o, &oa)| oa == super::kernels::Access::Read && o.buffer == b.buffer)
    })
}

/// Where an op's dispatches go: its own encoder, submitted at once, or a recorded batch.
pub(crate) enum Sink<'r> {
    Eager,
    Record(&'r mut Record),
}

impl Gpu {
    /// Waits until all submitted work has finished (or the poll timeout passes). In checked
    /// mode, also runs the checks of recorded batches the caller encoded (see
    /// [`Recorder::encode`](super::Recorder::encode)).
    pub fn synchronize(&self) -> Result<()> {
        self.check_alive()?;
        self.wait_for(None)?;
        // A lost device rejects even an empty submission; on the caller's device (no lost
        // callback of ours) that is how a loss is found.
        self.check_submitted(self.submit([]))?;
        self.check_alive()?;
        self.run_encoded_checks()
    }

    /// The submissions and polls made so far.
    pub fn counters(&self) -> GpuCounters {
        GpuCounters {
            submissions: self.counters.submissions.load(Ordering::Relaxed),
            polls: self.counters.polls.load(Ordering::Relaxed),
        }
    }

    /// `Err(DeviceLost)` once the device is known lost; also reports an error wgpu raised
    /// outside any of our error scopes (on a device this `Gpu` created). No poll.
    pub(crate) fn check_lost(&self) -> Result<()> {
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

    /// [`Gpu::check_lost`] after a non-blocking poll: wgpu reports a destroyed device through
    /// the lost callback (on a device this `Gpu` created), which runs in a poll once the queue is
    /// empty; until then its calls do nothing, silently.
    pub(crate) fn check_alive(&self) -> Result<()> {
        let _ = self.poll(wgpu::PollType::Poll);
        self.check_lost()
    }

    /// `device.poll`, serialised with every other poll and submit of this `Gpu`: wgpu-core 30
    /// panics ("If the queue is empty, the current submission index ... should be at least the
    /// wait submission index") when a `Wait` poll races a poll or submit on another thread that
    /// retires the awaited submission. The lock is held only around the wgpu call, and wgconv
    /// calls nothing of the caller's while it holds it.
    pub(crate) fn poll(
        &self,
        ty: wgpu::PollType,
    ) -> std::result::Result<wgpu::PollStatus, wgpu::PollError> {
        let _one = self.queue_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.counters.polls.fetch_add(1, Ordering::Relaxed);
        self.device.poll(ty)
    }

    /// `queue.submit` (which polls the device internally), serialised like [`Gpu::poll`].
    pub(crate) fn submit<I: IntoIterator<Item = wgpu::CommandBuffer>>(
        &self,
        commands: I,
    ) -> wgpu::SubmissionIndex {
        let _one = self.queue_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.counters.submissions.fetch_add(1, Ordering::Relaxed);
        self.queue.submit(commands)
    }

    pub(crate) fn note_error(&self) {
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note_error();
    }

    /// Runs `f` inside error scopes of its own: a wgpu error it raises is `Err`. On the
    /// caller's device, where wgconv installs no handler, such an error would otherwise reach
    /// wgpu's default handler, which panics.
    pub(crate) fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        let scope = self.scope();
        let out = f();
        scope.finish(self, what)?;
        Ok(out)
    }

    pub(crate) fn scope(&self) -> Scope {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
            Scope { oom, validation }
        }
        #[cfg(target_arch = "wasm32")]
        Scope {}
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

    /// Records `dispatches` into one compute pass of `encoder`, in order; the uniform buffers
    /// of their params go to `uniforms` (to live until the pass has run).
    pub(crate) fn encode_pass(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        op: &str,
        dispatches: &[Dispatch<'_>],
        uniforms: &mut Vec<PooledBuffer>,
        timestamps: bool,
    ) -> Result<()> {
        let grids = dispatches
            .iter()
            .map(|d| self.grid(d.kernel, d.items))
            .collect::<Result<Vec<_>>>()?;
        let mut profiler = self.profiler.lock().unwrap_or_else(|e| e.into_inner());
        let timestamp_writes = profiler.as_mut().filter(|_| timestamps).and_then(|p| {
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
        for (d, &(gx, gy)) in dispatches.iter().zip(&grids) {
            let compiled = self.pipelines.get(
                &self.device,
                d.kernel,
                d.storage,
                self.runtime_checks,
                aliased(d),
            );
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
        Ok(())
    }

    /// Records `dispatches` into one compute pass of a fresh encoder and submits it: one
    /// submission, no poll, no wait. A submission a lost device drops is found by the next
    /// wait on it (a download).
    pub(crate) fn execute(&self, op: &str, dispatches: &[Dispatch<'_>]) -> Result<()> {
        self.check_lost()?;
        let scope = self.scope();
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(op) });
        let mut uniforms = Vec::with_capacity(dispatches.len());
        self.encode_pass(&mut encoder, op, dispatches, &mut uniforms, true)?;
        self.submit([encoder.finish()]);
        scope.finish(self, op)
    }

    /// Resolves a plan's steps with their roles bound to `buffers`: each binding at its
    /// tensor's offset, clipped to the tensor.
    fn dispatches<'a>(&'a self, steps: &[Step], buffers: &Buffers<'a>) -> Vec<Dispatch<'a>> {
        steps
            .iter()
            .map(|s| Dispatch {
                kernel: s.kernel,
                storage: s.storage,
                params: s.params.clone(),
                bindings: s
                    .binds
                    .iter()
                    .map(|slot| match buffers.raw(slot.role) {
                        Some(raw) => Bind {
                            buffer: raw.buffer(),
                            offset: raw.offset + slot.offset,
                            size: slot.size.min(raw.bytes().saturating_sub(slot.offset)),
                        },
                        None => Bind::whole(&self.dummy, 0),
                    })
                    .collect(),
                items: s.items,
            })
            .collect()
    }

    /// Runs a plan's steps with its roles bound to `buffers`: submitted now, or recorded.
    pub(crate) fn run(
        &self,
        sink: &mut Sink<'_>,
        op: &'static str,
        steps: &[Step],
        buffers: &Buffers<'_>,
    ) -> Result<()> {
        if steps.is_empty() {
            return Ok(());
        }
        let dispatches = self.dispatches(steps, buffers);
        match sink {
            Sink::Eager => self.execute(op, &dispatches),
            Sink::Record(rec) => {
                rec.keep_raws(buffers.all());
                rec.push_pass(op, &dispatches);
                Ok(())
            }
        }
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

    /// A rejected submission: the device is lost for good, and every later call says so.
    pub(crate) fn rejected(&self) -> Error {
        if let Err(e) = self.check_alive() {
            return e;
        }
        let reason = "the device rejected a submission (destroyed or lost)".to_string();
        self.lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(reason.clone());
        Error::DeviceLost(reason)
    }

    /// Waits until submission `index` (all work when `None`) is done, up to the poll timeout.
    /// One wait may end early (GL caps it near 2 s), so it is repeated until the deadline.
    pub(crate) fn wait_for(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        if cfg!(target_arch = "wasm32") {
            // The page's event loop finishes GPU work; a blocking wait would never see it.
            return Err(Error::Readback(
                "a blocking wait for the GPU is not available in a browser (wasm32): use \
                 Gpu::download_async"
                    .into(),
            ));
        }
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
}
