//! Where a model runs: `--device auto|cpu|cuda[:N]`.

use crate::error::{Error, Result};

/// A device chosen on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceArg {
    /// CUDA device 0 when a usable NVIDIA GPU is present, else the CPU.
    #[default]
    Auto,
    /// The CPU backend.
    Cpu,
    /// The CUDA backend on this device ordinal.
    Cuda(usize),
}

impl std::str::FromStr for DeviceArg {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidRequest(format!("unknown device {s:?} (auto, cpu, cuda or cuda:N)"));
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
                n.parse().map(Self::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl std::fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A resolved device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU backend.
    Cpu,
    /// The CUDA backend on this device ordinal.
    Cuda(usize),
}

impl DeviceArg {
    /// Resolves `auto` by probing for a usable CUDA device (never panics on machines without
    /// CUDA); an explicit `cuda:N` that is not usable is an error saying why.
    pub fn resolve(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => super::cuda::probe(n).map(|_| Device::Cuda(n)),
            Self::Auto => match super::cuda::probe(0) {
                Ok(info) => {
                    tracing::info!(device = %info, "using the CUDA backend");
                    Ok(Device::Cuda(0))
                }
                Err(e) => {
                    tracing::info!(reason = %e, "no usable CUDA device; using the CPU backend");
                    Ok(Device::Cpu)
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("auto".parse::<DeviceArg>().ok(), Some(DeviceArg::Auto));
        assert_eq!("cpu".parse::<DeviceArg>().ok(), Some(DeviceArg::Cpu));
        assert_eq!("cuda".parse::<DeviceArg>().ok(), Some(DeviceArg::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceArg>().ok(), Some(DeviceArg::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            assert!(bad.parse::<DeviceArg>().is_err(), "{bad}");
        }
        assert_eq!(DeviceArg::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cpu_always_resolves() {
        assert_eq!(DeviceArg::Cpu.resolve().ok(), Some(Device::Cpu));
        // Auto never fails: without a usable GPU it falls back to the CPU.
        assert!(DeviceArg::Auto.resolve().is_ok());
    }
}
