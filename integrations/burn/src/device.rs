//! One wgconv [`Gpu`] per burn device: made on burn's own `wgpu::Device` and `wgpu::Queue`, and
//! found again from any tensor of that device.

use std::sync::{Arc, Mutex};

use burn::backend::DispatchDevice;
use burn::tensor::Device;
use burn::tensor::wgpu::WgpuSetup;
use burn_cubecl::CubeDevice;
use wgconv::Gpu;

use crate::Error;

/// The registered devices. A process has a few at most, so a list.
static DEVICES: Mutex<Vec<(CubeDevice, Arc<Gpu>)>> = Mutex::new(Vec::new());

/// Starts burn's wgpu runtime on the default adapter and a wgconv [`Gpu`] on the same
/// `wgpu::Device` and `wgpu::Queue`, and registers the pair.
///
/// The returned device is burn's, without autodiff; call `.autodiff()` on it to train. Every
/// tensor of it (and of its autodiff form) can be passed to this crate's ops.
///
/// ```no_run
/// # fn main() -> Result<(), wgconv_burn::Error> {
/// let device = wgconv_burn::init()?.autodiff();
/// # let _ = device;
/// # Ok(()) }
/// ```
pub fn init() -> Result<Device, Error> {
    let (device, setup) = Device::wgpu_options()
        .init_with_setup()
        .map_err(|e| Error::Init(format!("burn's wgpu runtime did not start: {e}")))?;
    register(&device, &setup)?;
    Ok(device)
}

/// Registers a burn device started from `setup` (by
/// `Device::wgpu_options().init_with_setup()`, or `.setup(setup).init()` for the caller's own
/// wgpu device): wgconv works on `setup.device` and `setup.queue`, which must be the ones burn
/// uses for `device`. Registering a device twice replaces its [`Gpu`].
pub fn register(device: &Device, setup: &WgpuSetup) -> Result<Arc<Gpu>, Error> {
    let key = cube_device(device)?;
    let gpu =
        Arc::new(Gpu::from_wgpu(setup.device.clone(), setup.queue.clone()).map_err(Error::Wgconv)?);
    let mut devices = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    devices.retain(|(d, _)| *d != key);
    devices.push((key, gpu.clone()));
    Ok(gpu)
}

/// The wgconv [`Gpu`] registered for `device` (autodiff or not), for direct use of wgconv's API
/// on burn's device: its counters, its tuning, its own ops.
pub fn gpu(device: &Device) -> Result<Arc<Gpu>, Error> {
    gpu_of(&cube_device(device)?)
}

/// The [`Gpu`] of a cubecl device.
pub(crate) fn gpu_of(device: &CubeDevice) -> Result<Arc<Gpu>, Error> {
    DEVICES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(d, _)| d == device)
        .map(|(_, gpu)| gpu.clone())
        .ok_or_else(|| Error::NotRegistered(format!("{device:?}")))
}

/// The cubecl device under a burn device, through its autodiff layer if it has one.
fn cube_device(device: &Device) -> Result<CubeDevice, Error> {
    let mut dispatch = device.as_dispatch();
    loop {
        match dispatch {
            DispatchDevice::Cube(d) => return Ok(d.clone()),
            DispatchDevice::Autodiff(inner) => dispatch = &**inner,
            #[allow(unreachable_patterns)]
            other => return Err(Error::NotWgpu(format!("{other:?}"))),
        }
    }
}
