//! `--cc auto|off|hardware|sealed`: resolving the transfer mode, and checking that the GPU
//! really is in CC mode before the engine relies on the driver's encryption.

use veil_attest::collect::GpuCollector;
use veil_engine::backend::Device;
use veil_engine::cc::CcMode;

/// `--cc` as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CcArg {
    /// `hardware` when the GPU reports CC mode on (developer tools off), else `off`.
    Auto,
    /// This mode.
    Mode(CcMode),
}

impl std::str::FromStr for CcArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        s.parse::<CcMode>()
            .map(Self::Mode)
            .map_err(|_| format!("unknown CC mode {s:?} (auto, off, hardware or sealed)"))
    }
}

/// What NVML says about the GPUs' confidential-computing mode.
#[derive(Debug, Clone, PartialEq, Eq)]
enum GpuCc {
    /// Every GPU is in CC mode with developer tools off.
    On,
    /// Why not (a GPU's mode, or why NVML could not tell).
    Not(String),
}

fn gpu_cc_state() -> GpuCc {
    let gpus = match veil_attest::collect::nvml::NvmlGpu::new().and_then(|n| n.gpus()) {
        Ok(g) => g,
        Err(e) => return GpuCc::Not(format!("NVML cannot tell: {e}")),
    };
    classify(&gpus)
}

fn classify(gpus: &[veil_attest::evidence::GpuCcState]) -> GpuCc {
    if gpus.is_empty() {
        return GpuCc::Not("NVML lists no GPU".into());
    }
    for g in gpus {
        if !g.cc_enabled {
            return GpuCc::Not(format!("GPU {} ({}) has CC mode off", g.index, g.name));
        }
        if g.dev_tools_mode {
            return GpuCc::Not(format!(
                "GPU {} ({}) is in CC developer-tools mode, which is not confidential",
                g.index, g.name
            ));
        }
    }
    GpuCc::On
}

impl CcArg {
    /// The mode to load with on `device`. `hardware` on a GPU that NVML does not report in CC
    /// mode (developer tools off) is refused: the engine would otherwise claim an encryption
    /// that is not there.
    pub(crate) fn resolve(self, device: Device) -> anyhow::Result<CcMode> {
        let on_gpu = matches!(device, Device::Cuda(_));
        let mode = match self {
            Self::Auto if !on_gpu => CcMode::Off,
            Self::Auto => match gpu_cc_state() {
                GpuCc::On => CcMode::Hardware,
                GpuCc::Not(why) => {
                    tracing::info!(reason = %why, "GPU not in CC mode: transfers are plain (--cc off)");
                    CcMode::Off
                }
            },
            Self::Mode(CcMode::Hardware) if on_gpu => match gpu_cc_state() {
                GpuCc::On => CcMode::Hardware,
                GpuCc::Not(why) => anyhow::bail!("--cc hardware: {why}"),
            },
            Self::Mode(m) => m,
        };
        if mode == CcMode::Sealed {
            tracing::warn!(
                "--cc sealed: transfers are authenticated and encrypted by Veil, but without \
                 hardware CC the channel keys cross PCIe in the clear: integrity and the cost \
                 of CC, not confidentiality"
            );
        }
        Ok(mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_attest::evidence::GpuCcState;

    fn gpu(cc: bool, dev: bool) -> GpuCcState {
        GpuCcState {
            index: 0,
            name: "NVIDIA H200".into(),
            cc_enabled: cc,
            dev_tools_mode: dev,
            driver_version: "580".into(),
            vbios_version: "96".into(),
        }
    }

    #[test]
    fn parses_and_classifies() {
        assert_eq!("auto".parse::<CcArg>(), Ok(CcArg::Auto));
        assert_eq!("sealed".parse::<CcArg>(), Ok(CcArg::Mode(CcMode::Sealed)));
        assert!("on".parse::<CcArg>().is_err());
        assert_eq!(classify(&[gpu(true, false)]), GpuCc::On);
        assert!(
            matches!(classify(&[gpu(true, false), gpu(false, false)]), GpuCc::Not(w) if w.contains("CC mode off"))
        );
        assert!(matches!(classify(&[gpu(true, true)]), GpuCc::Not(w) if w.contains("developer-tools")));
        assert!(matches!(classify(&[]), GpuCc::Not(_)));
    }

    #[test]
    fn cpu_resolution() {
        assert_eq!(CcArg::Auto.resolve(Device::Cpu).ok(), Some(CcMode::Off));
        assert_eq!(
            CcArg::Mode(CcMode::Sealed).resolve(Device::Cpu).ok(),
            Some(CcMode::Sealed)
        );
        // `hardware` on the CPU passes through here and the engine refuses it with its reason.
        assert_eq!(
            CcArg::Mode(CcMode::Hardware).resolve(Device::Cpu).ok(),
            Some(CcMode::Hardware)
        );
    }
}
