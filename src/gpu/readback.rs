//! Host transfers: uploads, blocking downloads, and `download_async`, whose future polls the
//! device itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use ndarray::{ArrayBase, ArrayD, Data, Dimension, IxDyn};

use super::buffers::BufferKind;
use super::submit::Counters;
use super::tensor::{Raw, Storage};
use super::{Gpu, IndexTensor, Tensor};
use crate::dtype::DType;
use crate::error::{Error, Result, mismatch};

impl Gpu {
    fn upload_raw(&self, shape: &[usize], dtype: DType, bytes: &[u8], what: &str) -> Result<Raw> {
        self.check_alive()?;
        // Refused before wgpu is called.
        self.device_bytes_as(shape, dtype, what)?;
        let scope = self.scope();
        let raw = self.alloc_as(shape, dtype, what)?;
        if raw.len > 0 {
            self.queue.write_buffer(raw.buffer(), 0, bytes);
        }
        // Flushes the write; a destroyed device rejects it.
        let index = self.submit([]);
        scope.finish(self, "upload")?;
        self.check_submitted(index)?;
        Ok(raw)
    }

    /// Copies an f32 array of any dimension and layout to the GPU (an F32 tensor; see
    /// [`Gpu::upload_as`] for 16-bit ones).
    ///
    /// ```no_run
    /// # fn main() -> wgconv::Result<()> {
    /// let gpu = wgconv::Gpu::new()?;
    /// let t = gpu.upload(&ndarray::Array4::<f32>::ones((1, 3, 8, 8)))?;
    /// assert_eq!(t.shape(), &[1, 3, 8, 8]);
    /// # Ok(()) }
    /// ```
    pub fn upload<S: Data<Elem = f32>, D: Dimension>(&self, a: &ArrayBase<S, D>) -> Result<Tensor> {
        // Before a (possibly broadcast, hence huge) view is copied into standard layout.
        self.device_bytes(a.shape(), "upload")?;
        let std = a.as_standard_layout();
        let data = std.as_slice().expect("standard layout is contiguous");
        Ok(Tensor {
            raw: self.upload_raw(a.shape(), DType::F32, bytemuck::cast_slice(data), "upload")?,
        })
    }

    /// The host's f32 values rounded to `dtype` (to nearest, ties to even, the same bits as
    /// [`Gpu::cast`] on the GPU) in a new tensor of that dtype; `upload_as(a, DType::F32)` is
    /// [`Gpu::upload`]. A 16-bit tensor takes 2 bytes an element.
    ///
    /// ```no_run
    /// # fn main() -> wgconv::Result<()> {
    /// use wgconv::DType;
    /// let gpu = wgconv::Gpu::new()?;
    /// let t = gpu.upload_as(&ndarray::arr1(&[1.0f32, 1.0 + 1e-4, 70000.0]), DType::F16)?;
    /// assert_eq!(t.dtype(), DType::F16);
    /// // Downloads widen exactly to f32: the values are the f16 ones.
    /// assert_eq!(gpu.download(&t)?.as_slice().unwrap(), &[1.0, 1.0, f32::INFINITY]);
    /// # Ok(()) }
    /// ```
    pub fn upload_as<S: Data<Elem = f32>, D: Dimension>(
        &self,
        a: &ArrayBase<S, D>,
        dtype: DType,
    ) -> Result<Tensor> {
        self.device_bytes_as(a.shape(), dtype, "upload_as")?;
        let std = a.as_standard_layout();
        let data = std.as_slice().expect("standard layout is contiguous");
        let bytes = dtype.encode(data);
        Ok(Tensor {
            raw: self.upload_raw(a.shape(), dtype, &bytes, "upload_as")?,
        })
    }

    /// Copies a u32 array (max-pool indices) to the GPU.
    pub fn upload_indices<S: Data<Elem = u32>, D: Dimension>(
        &self,
        a: &ArrayBase<S, D>,
    ) -> Result<IndexTensor> {
        self.device_bytes(a.shape(), "upload_indices")?;
        let std = a.as_standard_layout();
        let data = std.as_slice().expect("standard layout is contiguous");
        Ok(IndexTensor {
            raw: self.upload_raw(
                a.shape(),
                DType::F32,
                bytemuck::cast_slice(data),
                "upload_indices",
            )?,
        })
    }

    /// `Err` unless `raw` can be read back: owned by this `Gpu`, not pending, and a view's
    /// buffer has `COPY_SRC`.
    pub(crate) fn check_readable(&self, raw: &Raw, what: &str) -> Result<()> {
        self.check_owner(raw, what)?;
        if let Some(Storage::View(b)) = raw.buf.as_deref()
            && !b.usage().contains(wgpu::BufferUsages::COPY_SRC)
        {
            return Err(Error::InvalidArgument(format!(
                "{what}: the view's buffer has usage {:?}, without COPY_SRC",
                b.usage()
            )));
        }
        Ok(())
    }

    pub(crate) fn download_raw(&self, raw: &Raw) -> Result<Vec<u8>> {
        self.check_readable(raw, "download")?;
        if raw.len == 0 {
            // Nothing to copy, but a lost or destroyed device must still fail the call (it
            // rejects even an empty submission).
            self.check_alive()?;
            self.check_submitted(self.submit([]))?;
            return Ok(Vec::new());
        }
        self.read_bytes(raw.buffer(), raw.offset, raw.bytes())
    }

    /// Copies a tensor back to the host (waits for the GPU to finish the work that writes it);
    /// 16-bit elements are widened exactly to f32.
    pub fn download(&self, t: &Tensor) -> Result<ArrayD<f32>> {
        to_f32_array(&t.raw.shape, t.raw.dtype, &self.download_raw(&t.raw)?)
    }

    /// Copies an index tensor back to the host.
    pub fn download_indices(&self, t: &IndexTensor) -> Result<ArrayD<u32>> {
        to_array(&t.raw.shape, &self.download_raw(&t.raw)?)
    }

    /// Copies `bytes` of `src` from `offset` to a staging buffer and reads them on the host.
    pub(crate) fn read_bytes(
        &self,
        src: &wgpu::Buffer,
        offset: u64,
        bytes: u64,
    ) -> Result<Vec<u8>> {
        self.check_alive()?;
        let scope = self.scope();
        let staging = self.take_buffer(BufferKind::Staging, bytes);
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        encoder.copy_buffer_to_buffer(src, offset, staging.buffer(), 0, bytes);
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
        self.scoped("download", || {
            staging.map_async(wgpu::MapMode::Read, ..bytes, move |r| {
                let _ = tx.send(r);
            })
        })?;
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
        self.scoped("download", || staging.unmap())?;
        Ok(out)
    }

    /// Submits the copy of `raw` to a staging buffer now and returns what the future needs.
    fn start_read(&self, raw: &Raw, what: &str) -> Result<Readback> {
        self.check_readable(raw, what)?;
        self.check_lost()?;
        let bytes = raw.bytes();
        if bytes == 0 {
            return Ok(Readback::empty(self));
        }
        let scope = self.scope();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgconv async readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(what) });
        encoder.copy_buffer_to_buffer(raw.buffer(), raw.offset, &staging, 0, bytes);
        let state = Arc::new(Mutex::new(MapState::default()));
        let cb = state.clone();
        encoder.map_buffer_on_submit(&staging, wgpu::MapMode::Read, .., move |r| {
            let mut s = cb.lock().unwrap_or_else(|e| e.into_inner());
            s.result = Some(r.map_err(|e| e.to_string()));
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        });
        let index = self.submit([encoder.finish()]);
        scope.finish(self, what)?;
        Ok(Readback {
            device: self.device.clone(),
            queue_lock: self.queue_lock.clone(),
            counters: self.counters.clone(),
            lost: self.lost.clone(),
            staging: Some(staging),
            state,
            index: Some(index),
            deadline: deadline(self.poll_timeout()),
        })
    }

    /// Downloads `t` without blocking (16-bit elements widened exactly to f32, as
    /// [`Gpu::download`]): the copy is submitted at the call; the future polls the
    /// device itself (the caller need not), is `Send + 'static`, outlives `t`, and may be dropped
    /// (its staging buffer is then discarded). Errors (a pending tensor, a lost device, the
    /// poll timeout) come out of the future.
    ///
    /// ```no_run
    /// # fn main() -> wgconv::Result<()> {
    /// let gpu = wgconv::Gpu::new()?;
    /// let t = gpu.upload(&ndarray::Array1::<f32>::ones(4))?;
    /// let pending = gpu.download_async(&t);
    /// drop(t);
    /// let host = pollster::block_on(pending)?;
    /// assert_eq!(host.len(), 4);
    /// # Ok(()) }
    /// ```
    pub fn download_async(
        &self,
        t: &Tensor,
    ) -> impl Future<Output = Result<ArrayD<f32>>> + Send + 'static {
        let read = self.start_read(&t.raw, "download_async");
        let (shape, dtype) = (t.raw.shape.clone(), t.raw.dtype);
        async move { to_f32_array(&shape, dtype, &read?.await?) }
    }

    /// [`Gpu::download_async`] for an index tensor.
    pub fn download_indices_async(
        &self,
        t: &IndexTensor,
    ) -> impl Future<Output = Result<ArrayD<u32>>> + Send + 'static {
        let read = self.start_read(&t.raw, "download_indices_async");
        let shape = t.raw.shape.clone();
        async move { to_array(&shape, &read?.await?) }
    }
}

/// A downloaded tensor of `dtype` as f32 values.
fn to_f32_array(shape: &[usize], dtype: DType, bytes: &[u8]) -> Result<ArrayD<f32>> {
    let len = shape.iter().product();
    if bytes.len() < dtype.storage_bytes(len).unwrap_or(u64::MAX) as usize {
        return Err(mismatch(format!(
            "download of {shape:?} ({dtype}): {} bytes read",
            bytes.len()
        )));
    }
    ArrayD::from_shape_vec(IxDyn(shape), dtype.decode(bytes, len))
        .map_err(|e| mismatch(format!("download of {shape:?}: {e}")))
}

fn to_array<T: bytemuck::Pod>(shape: &[usize], bytes: &[u8]) -> Result<ArrayD<T>> {
    let data: Vec<T> = bytemuck::pod_collect_to_vec(bytes);
    ArrayD::from_shape_vec(IxDyn(shape), data)
        .map_err(|e| mismatch(format!("download of {shape:?}: {e}")))
}

#[derive(Default)]
struct MapState {
    result: Option<std::result::Result<(), String>>,
    waker: Option<Waker>,
}

/// The future of an async download: the staging buffer, mapped on submission of its copy.
struct Readback {
    device: wgpu::Device,
    queue_lock: Arc<Mutex<()>>,
    counters: Arc<Counters>,
    lost: Arc<Mutex<Option<String>>>,
    /// `None` for an empty tensor, or once read.
    staging: Option<wgpu::Buffer>,
    state: Arc<Mutex<MapState>>,
    index: Option<wgpu::SubmissionIndex>,
    /// `None` in a browser, which has no clock here (`Instant::now` panics on wasm32) and
    /// reports a hung device through device loss.
    deadline: Option<Instant>,
}

/// The deadline of a download started now, where the target has a clock.
fn deadline(timeout: Duration) -> Option<Instant> {
    (!cfg!(target_arch = "wasm32")).then(|| Instant::now() + timeout)
}

impl Readback {
    fn empty(gpu: &Gpu) -> Readback {
        Readback {
            device: gpu.device.clone(),
            queue_lock: gpu.queue_lock.clone(),
            counters: gpu.counters.clone(),
            lost: gpu.lost.clone(),
            staging: None,
            state: Arc::new(Mutex::new(MapState::default())),
            index: None,
            deadline: None,
        }
    }

    /// One non-blocking poll of the device, serialised with the `Gpu`'s; `Err` when the copy's
    /// submission was rejected (the device is lost).
    fn poll_device(&self) -> Result<()> {
        let _one = self.queue_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.counters.polls.fetch_add(1, Ordering::Relaxed);
        let r = self.device.poll(wgpu::PollType::Wait {
            submission_index: self.index.clone(),
            timeout: Some(Duration::ZERO),
        });
        if let Err(wgpu::PollError::WrongSubmissionIndex(..)) = r {
            let reason = "the device rejected a submission (destroyed or lost)".to_string();
            let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
            return Err(Error::DeviceLost(lost.get_or_insert(reason).clone()));
        }
        Ok(())
    }
}

impl Future for Readback {
    type Output = Result<Vec<u8>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(staging) = this.staging.clone() else {
            return Poll::Ready(Ok(Vec::new()));
        };
        let done = |this: &Self| {
            this.state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .result
                .clone()
        };
        let mut result = done(this);
        if result.is_none() {
            if let Err(e) = this.poll_device() {
                return Poll::Ready(Err(e));
            }
            result = done(this);
        }
        match result {
            None if this.deadline.is_some_and(|d| Instant::now() > d) => {
                Poll::Ready(Err(Error::Readback(
                    "download_async: the GPU did not finish within the poll timeout".into(),
                )))
            }
            None => {
                // On native the map callback runs only inside a device poll: ask to be polled
                // again. In a browser the page's event loop runs it, and it wakes the task;
                // polling again at once would keep that loop from ever running.
                this.state.lock().unwrap_or_else(|e| e.into_inner()).waker =
                    Some(cx.waker().clone());
                if !cfg!(target_arch = "wasm32") {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
            Some(Err(e)) => Poll::Ready(Err(Error::Readback(format!(
                "mapping the staging buffer: {e}"
            )))),
            Some(Ok(())) => {
                if let Some(reason) = this.lost.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                    return Poll::Ready(Err(Error::DeviceLost(reason)));
                }
                let out = staging
                    .get_mapped_range(..)
                    .map(|v| v.to_vec())
                    .map_err(|e| Error::Readback(format!("reading the staging buffer: {e}")));
                staging.unmap();
                this.staging = None;
                Poll::Ready(out)
            }
        }
    }
}
