//! The buffer pool: storage, uniform and staging buffers are recycled by size class, so that a
//! training loop calling the same ops over and over stops allocating after its first step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// What a pooled buffer is for; each kind has its own usage flags and free lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum BufferKind {
    /// Tensors and scratch: `STORAGE | COPY_SRC | COPY_DST`.
    Storage,
    /// Kernel parameters: `UNIFORM | COPY_DST`.
    Uniform,
    /// Readback: `MAP_READ | COPY_DST`.
    Staging,
}

impl BufferKind {
    fn usage(self) -> wgpu::BufferUsages {
        use wgpu::BufferUsages as U;
        match self {
            BufferKind::Storage => U::STORAGE | U::COPY_SRC | U::COPY_DST,
            BufferKind::Uniform => U::UNIFORM | U::COPY_DST,
            BufferKind::Staging => U::MAP_READ | U::COPY_DST,
        }
    }
}

/// Counters of the pool, for soak tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes in free buffers the pool holds for reuse.
    pub held_bytes: u64,
    /// Free buffers the pool holds.
    pub held_buffers: usize,
    /// Buffers created since the `Gpu` was made.
    pub allocations: u64,
    /// Requests served by a recycled buffer.
    pub reuses: u64,
}

pub(crate) struct Pool {
    free: HashMap<(BufferKind, u64), Vec<wgpu::Buffer>>,
    stats: PoolStats,
    limit_bytes: u64,
    max_buffer_size: u64,
    /// Counts wgpu errors. A buffer on loan while one happened may be invalid (creation failed
    /// out of memory, or destroyed through `Tensor::buffer`): it is not recycled, or every later
    /// request of its size would fail.
    error_epoch: u64,
}

/// Size class of a request: 256-byte granules up to 4 KiB, then eighths of a power of two,
/// so that a reused buffer wastes at most an eighth.
fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(4);
    if bytes <= 4096 {
        return bytes.div_ceil(256) * 256;
    }
    let step = bytes.next_power_of_two() / 8;
    bytes.div_ceil(step) * step
}

impl Pool {
    pub fn new(limit_bytes: u64, max_buffer_size: u64) -> Self {
        Pool {
            free: HashMap::new(),
            stats: PoolStats::default(),
            limit_bytes,
            max_buffer_size,
            error_epoch: 0,
        }
    }

    /// Records a wgpu error: buffers on loan now are destroyed, not recycled, when returned.
    pub fn note_error(&mut self) {
        self.error_epoch += 1;
    }

    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    pub fn clear(&mut self) {
        self.free.clear();
        self.stats.held_bytes = 0;
        self.stats.held_buffers = 0;
    }
}

/// A buffer on loan from the pool; dropping it gives it back.
pub(crate) struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    kind: BufferKind,
    pool: Weak<Mutex<Pool>>,
    /// The pool's error epoch when it was taken.
    epoch: u64,
    /// Handed out to the caller ([`Tensor::buffer`](crate::Tensor::buffer)): never recycled.
    escaped: AtomicBool,
}

impl PooledBuffer {
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("present until drop")
    }

    /// Marks the buffer handed out: on drop it is released (freed once the caller's handles go),
    /// never recycled, so a caller holding a clone never sees another tensor's data.
    pub fn keep_out_of_pool(&self) {
        self.escaped.store(true, Ordering::Relaxed);
    }

    /// Destroys the buffer instead of returning it to the pool: after a failed or timed-out
    /// readback its map may still be pending, and a later user would find it mapped.
    pub fn discard(mut self) {
        if let Some(buffer) = self.buffer.take() {
            buffer.destroy();
        }
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let (Some(buffer), Some(pool)) = (self.buffer.take(), self.pool.upgrade()) else {
            return;
        };
        if self.escaped.load(Ordering::Relaxed) {
            return;
        }
        let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
        let size = buffer.size();
        if pool.stats.held_bytes + size > pool.limit_bytes || self.epoch != pool.error_epoch {
            buffer.destroy();
            return;
        }
        pool.stats.held_bytes += size;
        pool.stats.held_buffers += 1;
        pool.free.entry((self.kind, size)).or_default().push(buffer);
    }
}

/// Takes a buffer of at least `bytes` from the pool or creates one. Creation errors (out of
/// memory, over the device's limits) surface through the caller's error scope.
pub(crate) fn take(
    pool: &Arc<Mutex<Pool>>,
    device: &wgpu::Device,
    kind: BufferKind,
    bytes: u64,
) -> PooledBuffer {
    let mut guard = pool.lock().unwrap_or_else(|e| e.into_inner());
    let mut size = size_class(bytes);
    if size > guard.max_buffer_size {
        size = bytes.max(4).div_ceil(4) * 4;
    }
    let epoch = guard.error_epoch;
    let recycled = guard.free.get_mut(&(kind, size)).and_then(Vec::pop);
    let buffer = match recycled {
        Some(b) => {
            guard.stats.held_bytes -= size;
            guard.stats.held_buffers -= 1;
            guard.stats.reuses += 1;
            b
        }
        None => {
            guard.stats.allocations += 1;
            drop(guard);
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgconv"),
                size,
                usage: kind.usage(),
                mapped_at_creation: false,
            })
        }
    };
    PooledBuffer {
        buffer: Some(buffer),
        kind,
        pool: Arc::downgrade(pool),
        epoch,
        escaped: AtomicBool::new(false),
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_requests_with_little_waste() {
        for bytes in [
            1u64,
            4,
            255,
            256,
            257,
            4096,
            4097,
            10_000,
            1 << 20,
            (1 << 20) + 1,
            3 << 30,
        ] {
            let c = size_class(bytes);
            assert!(c >= bytes && c.is_multiple_of(4), "{bytes} -> {c}");
            if bytes > 4096 {
                assert!(c - bytes <= bytes / 4, "{bytes} -> {c}");
            }
        }
    }
}
