//! Which libtorch device a run computes on, and its name in messages and `config.json`.

use crate::config::TrainDevice;
use crate::error::{Error, Result};
use tch::Device;

/// Resolves the requested device.
///
/// # Errors
/// [`Error::Usage`] for `cuda` when libtorch sees no CUDA device.
pub fn resolve_device(d: TrainDevice) -> Result<Device> {
    match d {
        TrainDevice::Cpu => Ok(Device::Cpu),
        TrainDevice::Auto => Ok(Device::cuda_if_available()),
        TrainDevice::Cuda => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                Err(Error::Usage(format!(
                    "--device cuda: libtorch sees no CUDA device (devices: {}, libtorch built with CUDA: {}); \
                     use --device cpu or --device auto",
                    tch::Cuda::device_count(),
                    tch::utils::has_cuda()
                )))
            }
        }
    }
}

/// Human name of a tch device (`cpu`, `cuda:0`).
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}
