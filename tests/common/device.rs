//! The `Gpu` the tests run on, downloads as f64, and the comparison of GPU results with the
//! reference.

use ndarray::{Array, Array4, ArrayD, Dimension, Ix4};
use wgconv::compare::{GPU_TOLERANCE, compare};
use wgconv::{Gpu, Tensor};

use super::f64s;

/// One `Gpu` shared by a test binary's tests, with outputs poisoned (NaN / u32::MAX) before every
/// op so that an element a kernel fails to write cannot pass. Without an adapter the tests fail,
/// loudly, saying which driver to install: they are never skipped.
pub fn gpu() -> &'static wgconv::Gpu {
    static GPU: std::sync::OnceLock<wgconv::Gpu> = std::sync::OnceLock::new();
    GPU.get_or_init(|| {
        let gpu = wgconv::Gpu::builder()
            .poison_outputs(true)
            .build()
            .unwrap_or_else(|e| {
                panic!(
                    "GPU tests need a wgpu adapter and none could be used: {e}\n\
                     On a machine without a GPU install Mesa's software drivers \
                     (`apt-get install mesa-vulkan-drivers` for Vulkan lavapipe; GL llvmpipe \
                     comes with libgl1-mesa-dri/libegl-mesa0) and run with WGPU_BACKEND=vulkan \
                     or WGPU_BACKEND=gl."
                )
            });
        let info = gpu.adapter_info();
        eprintln!("GPU tests on {} ({:?})", info.name, info.backend);
        gpu
    })
}

/// A fresh `Gpu` (not the shared one: for tests that destroy devices, count allocations or need
/// other options).
pub fn fresh(builder: wgconv::GpuBuilder) -> Gpu {
    builder
        .build()
        .expect("a wgpu adapter (see tests/common for the drivers)")
}

/// The bits of a downloaded tensor's values (f32, or 16-bit values widened), for bit-for-bit
/// comparisons.
pub fn bits(gpu: &Gpu, t: &Tensor) -> Vec<u32> {
    gpu.download(t)
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// A downloaded tensor as f64, any rank.
pub fn dl(gpu: &Gpu, t: &Tensor) -> ArrayD<f64> {
    f64s(&gpu.download(t).unwrap())
}

/// A downloaded 4-D tensor as f64.
pub fn dl4(gpu: &Gpu, t: &Tensor) -> Array4<f64> {
    f64s(
        &gpu.download(t)
            .unwrap()
            .into_dimensionality::<Ix4>()
            .unwrap(),
    )
}

/// Asserts that `got` has `want`'s shape and passes `GPU_TOLERANCE` against it; the arrays are
/// printed on failure (ndarray abbreviates large ones).
#[track_caller]
pub fn close<D: Dimension, E: Dimension>(got: &Array<f64, D>, want: &Array<f64, E>, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let c = compare(got.iter().copied(), want.iter().copied());
    assert!(
        c.passes(GPU_TOLERANCE),
        "{what}: max |gpu - ref| = {:e} (scale {}) at flat {}\n got {got:?}\nwant {want:?}",
        c.max_abs_err,
        c.scale,
        c.worst
    );
}

/// A device and queue made the way a framework makes its own: the adapter the environment names
/// (`WGPU_BACKEND`), `limits` requested, no features. Fails loudly without an adapter.
pub fn caller_device(limits: wgpu::Limits) -> (wgpu::Device, wgpu::Queue) {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if let Ok(v) = std::env::var("WGPU_BACKEND") {
        desc.backends = wgpu::Backends::from_comma_list(&v);
    }
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        force_fallback_adapter: false,
        ..Default::default()
    }))
    .expect("a wgpu adapter (see tests/common for the drivers)");
    pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("the caller's device"),
        required_features: wgpu::Features::empty(),
        required_limits: limits,
        ..Default::default()
    }))
    .expect("a device with the requested limits")
}

/// A buffer of the caller's, `bytes` long, with `usage`.
pub fn caller_buffer(device: &wgpu::Device, bytes: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("the caller's buffer"),
        size: bytes,
        usage,
        mapped_at_creation: false,
    })
}
