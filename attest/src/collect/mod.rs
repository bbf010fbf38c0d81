//! Evidence collectors: real hardware ([`nvml`] for NVIDIA GPUs, [`tsm`] for TDX and SEV-SNP
//! guests through Linux configfs-tsm) and, for machines without either,
//! [`crate::simulated`].
//!
//! Where the hardware or its interface is absent, detection and collection return
//! [`Error::NotAvailable`](crate::Error::NotAvailable) with the reason; failures on a machine
//! that has the hardware are [`Error::Collect`](crate::Error::Collect). Nothing here falls back
//! to simulated evidence on its own: that is the caller's (policy-gated) decision.

use crate::Result;
use crate::evidence::{CpuEvidence, EvidenceKind, GpuCcState, GpuEvidence};

pub mod nvml;
pub mod tsm;

/// Collects GPU evidence.
pub trait GpuCollector: Send + Sync + std::fmt::Debug {
    /// The GPUs this collector covers, in index order, with their confidential-computing state.
    fn gpus(&self) -> Result<Vec<GpuCcState>>;

    /// One piece of evidence per GPU, in the order of [`GpuCollector::gpus`], each report
    /// requested with `nonce` (so its SPDM request carries it).
    fn evidence(&self, nonce: &[u8; 32]) -> Result<Vec<GpuEvidence>>;
}

/// Collects CPU (TEE) evidence.
pub trait CpuCollector: Send + Sync + std::fmt::Debug {
    /// The kind of evidence [`CpuCollector::evidence`] returns.
    fn kind(&self) -> EvidenceKind;

    /// A quote or report whose REPORTDATA is `report_data`, with the certificates needed to
    /// verify it (see [`CpuEvidence::certs`]).
    fn evidence(&self, report_data: &[u8; 64]) -> Result<CpuEvidence>;
}

/// The NVIDIA GPUs of this machine through NVML ([`nvml::NvmlGpu::new`]), or
/// [`Error::NotAvailable`](crate::Error::NotAvailable) (no driver, no GPU).
pub fn detect_gpu() -> Result<Box<dyn GpuCollector>> {
    Ok(Box::new(nvml::NvmlGpu::new()?))
}

/// The TEE of this guest through configfs-tsm ([`tsm::TsmCollector::detect`]: TDX or SEV-SNP),
/// or [`Error::NotAvailable`](crate::Error::NotAvailable) (no configfs-tsm, no TEE provider).
pub fn detect_cpu() -> Result<Box<dyn CpuCollector>> {
    Ok(Box::new(tsm::TsmCollector::detect()?))
}
