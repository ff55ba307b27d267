//! The backend is chosen once, at the CLI edge; everything below is generic over
//! `B: Backend`. CPU (`burn-ndarray`, f32) always exists; CUDA (`burn-cuda`) with the `cuda`
//! cargo feature, in f32 or bf16 compute.

use burn::tensor::backend::{AutodiffBackend, Backend};
use std::fmt;
use std::str::FromStr;

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU backend (burn-ndarray).
    Cpu,
    /// CUDA device with this index.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device \"{s}\": use cpu, cuda or cuda:N")),
        }
    }
}

impl<'de> serde::Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Floating-point type of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    /// 32-bit float (the parity reference).
    F32,
    /// bfloat16 (what QLoRA computes in on the GPU).
    Bf16,
}

/// Errors choosing a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("device {0} needs a CUDA build: rebuild with `cargo build --release --features cuda`")]
    NoCuda(DeviceSpec),
    #[error("--dtype bf16 is only supported on CUDA; the CPU backend computes in f32 (drop --dtype or use --device cuda)")]
    CpuBf16,
}

/// Work that runs on whichever backend the user picked.
pub trait BackendTask {
    /// What the work returns.
    type Output;
    /// Runs on backend `B` and `device`.
    fn run<B: Backend>(self, device: B::Device) -> Self::Output;
}

/// Work that needs gradients (training): runs on the chosen backend wrapped in `Autodiff`.
pub trait AutodiffTask {
    /// What the work returns.
    type Output;
    /// Runs on backend `B` (an `Autodiff<_>`) and `device`.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// Adapts an [`AutodiffTask`] to [`dispatch`]: the picked backend gets wrapped in `Autodiff`.
struct WithAutodiff<T>(T);

impl<T: AutodiffTask> BackendTask for WithAutodiff<T> {
    type Output = T::Output;
    fn run<B: Backend>(self, device: B::Device) -> T::Output {
        self.0.run::<burn::backend::Autodiff<B>>(device)
    }
}

/// [`dispatch`] for training: the same backends, with autodiff.
pub fn dispatch_autodiff<T: AutodiffTask>(device: DeviceSpec, dtype: ComputeDtype, task: T) -> Result<T::Output, BackendError> {
    dispatch(device, dtype, WithAutodiff(task))
}

/// The CPU backend type.
pub type CpuBackend = burn::backend::NdArray<f32>;

/// Runs `task` on the backend named by `device` and `dtype`.
pub fn dispatch<T: BackendTask>(device: DeviceSpec, dtype: ComputeDtype, task: T) -> Result<T::Output, BackendError> {
    match device {
        DeviceSpec::Cpu => match dtype {
            ComputeDtype::F32 => Ok(task.run::<CpuBackend>(Default::default())),
            ComputeDtype::Bf16 => Err(BackendError::CpuBf16),
        },
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(index) => {
            let dev = burn::backend::cuda::CudaDevice::new(index);
            Ok(match dtype {
                ComputeDtype::F32 => task.run::<burn::backend::Cuda<f32>>(dev),
                ComputeDtype::Bf16 => task.run::<burn::backend::Cuda<half::bf16>>(dev),
            })
        }
        #[cfg(not(feature = "cuda"))]
        cuda @ DeviceSpec::Cuda(_) => Err(BackendError::NoCuda(cuda)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(3)));
        assert!("gpu".parse::<DeviceSpec>().unwrap_err().contains("cpu, cuda or cuda:N"));
    }
}
