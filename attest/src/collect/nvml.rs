//! NVIDIA GPU evidence through NVML (`nvml-wrapper`, which loads `libnvidia-ml.so.1` at run
//! time: this builds and runs on machines without a GPU, where [`NvmlGpu::new`] returns
//! [`Error::NotAvailable`]).
//!
//! Per GPU: the product name, the system's confidential-computing settings (CC feature and
//! developer-tools mode), the driver and VBIOS versions
//! ([`GpuCollector::gpus`]); the attestation report for a 32-byte nonce
//! (`nvmlDeviceGetConfComputeGpuAttestationReport`, exactly `attestationReportSize` bytes) and
//! the attestation certificate chain (`nvmlDeviceGetConfComputeGpuCertificate`,
//! `attestationCertChain`, exactly `attestationCertChainSize` bytes of PEM, leaf first)
//! ([`GpuCollector::evidence`]).

use std::panic::{AssertUnwindSafe, catch_unwind};

use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;

use crate::collect::GpuCollector;
use crate::evidence::{EvidenceKind, GpuCcState, GpuEvidence};
use crate::{Error, Result};

/// The NVIDIA GPUs of this machine, through NVML.
#[derive(Debug)]
pub struct NvmlGpu {
    nvml: Nvml,
    indices: Vec<u32>,
}

fn unavailable(e: &NvmlError) -> bool {
    matches!(
        e,
        NvmlError::NotSupported
            | NvmlError::FunctionNotFound
            | NvmlError::FailedToLoadSymbol(_)
            | NvmlError::LibloadingError(_)
            | NvmlError::LibraryNotFound
            | NvmlError::DriverNotLoaded
    )
}

/// NVML failures: "not supported" (no CC on this GPU, an old driver) is
/// [`Error::NotAvailable`], anything else [`Error::Collect`].
fn nvml_error(what: &str, e: NvmlError) -> Error {
    if unavailable(&e) {
        Error::NotAvailable(format!("NVML: {what}: {e}"))
    } else {
        Error::Collect(format!("NVML: {what}: {e}"))
    }
}

/// Runs an NVML call, turning a panic into an error. nvml-wrapper slices its fixed-size report
/// and certificate buffers with the sizes the driver returns, and would panic on a size larger
/// than the buffer; a GPU or driver must not be able to crash the engine that way.
fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T, NvmlError>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| nvml_error(what, e)),
        Err(_) => Err(Error::Collect(format!(
            "NVML: {what}: the driver returned an out-of-range size"
        ))),
    }
}

/// A boolean CC query where "not supported" (a GPU or driver without confidential computing)
/// means off.
fn cc_flag(what: &str, r: Result<bool, NvmlError>) -> Result<bool> {
    match r {
        Ok(v) => Ok(v),
        Err(e) if unavailable(&e) => Ok(false),
        Err(e) => Err(nvml_error(what, e)),
    }
}

impl NvmlGpu {
    /// Initialises NVML and covers every GPU it lists. [`Error::NotAvailable`] when the NVIDIA
    /// library or driver is absent or there is no GPU.
    pub fn new() -> Result<Self> {
        let nvml = Self::init()?;
        let count = no_panic("device count", || nvml.device_count())?;
        if count == 0 {
            return Err(Error::NotAvailable("NVML lists no NVIDIA GPU".into()));
        }
        Ok(Self {
            nvml,
            indices: (0..count).collect(),
        })
    }

    /// As [`NvmlGpu::new`] but covering only the GPUs with these NVML indices, in this order
    /// (an index NVML does not list is [`Error::NotAvailable`]).
    pub fn with_indices(indices: &[u32]) -> Result<Self> {
        let nvml = Self::init()?;
        let count = no_panic("device count", || nvml.device_count())?;
        if let Some(bad) = indices.iter().find(|i| **i >= count) {
            return Err(Error::NotAvailable(format!(
                "NVML lists {count} GPU(s), no GPU {bad}"
            )));
        }
        Ok(Self {
            nvml,
            indices: indices.to_vec(),
        })
    }

    fn init() -> Result<Nvml> {
        match catch_unwind(Nvml::init) {
            Ok(Ok(nvml)) => Ok(nvml),
            Ok(Err(e)) => Err(Error::NotAvailable(format!(
                "NVIDIA NVML (libnvidia-ml.so.1) could not be initialised: {e}"
            ))),
            Err(_) => Err(Error::NotAvailable(
                "NVIDIA NVML (libnvidia-ml.so.1) could not be initialised".into(),
            )),
        }
    }

    /// The NVML indices covered.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }
}

impl GpuCollector for NvmlGpu {
    fn gpus(&self) -> Result<Vec<GpuCcState>> {
        let driver_version = no_panic("driver version", || self.nvml.sys_driver_version())?;
        let mut out = Vec::with_capacity(self.indices.len());
        for &index in &self.indices {
            let what = |w: &str| format!("GPU {index}: {w}");
            let dev = no_panic(&what("device handle"), || self.nvml.device_by_index(index))?;
            let name = no_panic(&what("name"), || dev.name())?;
            let cc_enabled = cc_flag(&what("CC settings"), no_panic_raw(|| dev.is_cc_enabled()))?;
            let dev_tools_mode = cc_flag(
                &what("CC settings"),
                no_panic_raw(|| dev.is_cc_dev_mode_enabled()),
            )?;
            let vbios_version = no_panic(&what("VBIOS version"), || dev.vbios_version())?;
            out.push(GpuCcState {
                index,
                name,
                cc_enabled,
                dev_tools_mode,
                driver_version: driver_version.clone(),
                vbios_version,
            });
        }
        Ok(out)
    }

    fn evidence(&self, nonce: &[u8; 32]) -> Result<Vec<GpuEvidence>> {
        let mut out = Vec::with_capacity(self.indices.len());
        for &index in &self.indices {
            let what = |w: &str| format!("GPU {index}: {w}");
            let dev = no_panic(&what("device handle"), || self.nvml.device_by_index(index))?;
            let report = no_panic(&what("CC attestation report"), || {
                dev.confidential_compute_gpu_attestation_report(*nonce)
            })?;
            let certs = no_panic(&what("CC attestation certificate chain"), || {
                dev.confidential_compute_gpu_certificate()
            })?;
            let report = valid_prefix(
                &report.attestation_report,
                report.attestation_report_size,
                &what("attestation report"),
            )?;
            let cert_chain = valid_prefix(
                &certs.attestation_cert_chain,
                certs.attestation_cert_chain_size,
                &what("attestation certificate chain"),
            )?;
            out.push(GpuEvidence {
                kind: EvidenceKind::NvidiaSpdm,
                report,
                cert_chain,
            });
        }
        Ok(out)
    }
}

/// As [`no_panic`] but keeping the NVML error (for [`cc_flag`]).
fn no_panic_raw<T>(f: impl FnOnce() -> Result<T, NvmlError>) -> Result<T, NvmlError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(Err(NvmlError::Unknown))
}

/// The first `size` bytes of `buf` (what the driver says is valid); an empty or out-of-range
/// size is an error.
fn valid_prefix(buf: &[u8], size: u32, what: &str) -> Result<Vec<u8>> {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    match buf.get(..size) {
        Some(v) if !v.is_empty() => Ok(v.to_vec()),
        Some(_) => Err(Error::Collect(format!("NVML: {what}: empty"))),
        None => Err(Error::Collect(format!(
            "NVML: {what}: size {size} beyond the {} bytes returned",
            buf.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No GPU (or no NVIDIA library) here: detection says so, without panicking. On a machine
    /// with GPUs it must list them instead.
    #[test]
    fn detection_without_a_gpu_is_not_available() {
        match NvmlGpu::new() {
            Err(Error::NotAvailable(why)) => assert!(why.contains("NVML"), "{why}"),
            Err(e) => panic!("expected NotAvailable, got {e:?}"),
            Ok(g) => {
                // A GPU machine: the states are listed in index order.
                let gpus = g.gpus();
                if let Ok(gpus) = gpus {
                    assert_eq!(gpus.len(), g.indices().len());
                }
            }
        }
        match crate::collect::detect_gpu() {
            Err(Error::NotAvailable(_)) | Ok(_) => {}
            Err(e) => panic!("expected NotAvailable, got {e:?}"),
        }
        assert!(matches!(
            NvmlGpu::with_indices(&[u32::MAX]),
            Err(Error::NotAvailable(_))
        ));
    }

    #[test]
    fn valid_prefix_takes_exactly_the_valid_length() {
        assert_eq!(
            valid_prefix(&[1, 2, 3, 0, 0], 3, "x").unwrap_or_default(),
            [1, 2, 3]
        );
        assert!(matches!(valid_prefix(&[1, 2], 0, "x"), Err(Error::Collect(_))));
        assert!(matches!(valid_prefix(&[1, 2], 3, "x"), Err(Error::Collect(_))));
        assert!(matches!(valid_prefix(&[], u32::MAX, "x"), Err(Error::Collect(_))));
    }

    #[test]
    fn error_mapping() {
        assert!(matches!(
            nvml_error("x", NvmlError::NotSupported),
            Error::NotAvailable(_)
        ));
        assert!(matches!(nvml_error("x", NvmlError::GpuLost), Error::Collect(_)));
        assert_eq!(cc_flag("x", Err(NvmlError::NotSupported)), Ok(false));
        assert!(cc_flag("x", Err(NvmlError::GpuLost)).is_err());
        assert!(matches!(
            no_panic::<()>("x", || panic!("boom")),
            Err(Error::Collect(_))
        ));
    }
}
