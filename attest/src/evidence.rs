//! Evidence as collected from hardware (or simulated), before it is bound into a bundle.

use serde::{Deserialize, Serialize};

/// What produced a piece of evidence. Simulated kinds run the real parsers and verifiers but
/// are signed by keys made at start-up: they prove nothing about confidentiality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvidenceKind {
    /// NVIDIA GPU SPDM GET_MEASUREMENTS request||response from NVML, with the device chain.
    NvidiaSpdm,
    /// Intel TDX quote (v4/v5) from configfs-tsm.
    TdxQuote,
    /// AMD SEV-SNP attestation report from configfs-tsm, with the VCEK.
    SnpReport,
    /// An SPDM report in the NVIDIA format signed through a locally made P-384 chain.
    SimulatedNvidiaSpdm,
    /// An SNP-format report signed by a locally made VCEK-like key.
    SimulatedSnpReport,
}

impl EvidenceKind {
    /// The wire name (as in `AttestationBundle`).
    pub fn name(self) -> &'static str {
        match self {
            Self::NvidiaSpdm => "nvidia-spdm",
            Self::TdxQuote => "tdx-quote",
            Self::SnpReport => "snp-report",
            Self::SimulatedNvidiaSpdm => "simulated-nvidia-spdm",
            Self::SimulatedSnpReport => "simulated-snp-report",
        }
    }

    /// Parses a wire name.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::NvidiaSpdm,
            Self::TdxQuote,
            Self::SnpReport,
            Self::SimulatedNvidiaSpdm,
            Self::SimulatedSnpReport,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }

    /// Whether this evidence is simulated (never confidential).
    pub fn is_simulated(self) -> bool {
        matches!(self, Self::SimulatedNvidiaSpdm | Self::SimulatedSnpReport)
    }
}

/// One GPU's evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuEvidence {
    /// Real or simulated NVIDIA SPDM.
    pub kind: EvidenceKind,
    /// SPDM GET_MEASUREMENTS request || response (as NVML returns it).
    pub report: Vec<u8>,
    /// The device certificate chain, PEM, leaf first (for simulated evidence it ends with the
    /// simulated root).
    pub cert_chain: Vec<u8>,
}

/// The CPU's evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuEvidence {
    /// TDX, SNP or simulated SNP.
    pub kind: EvidenceKind,
    /// The quote or report bytes.
    pub quote: Vec<u8>,
    /// Certificates needed to verify it: for SNP the VCEK (DER) — or the configfs-tsm
    /// `auxblob` certificate table; for simulated SNP the PEM chain VCEK, root. Empty for TDX
    /// (the PCK chain is inside the quote).
    pub certs: Vec<u8>,
}

/// The confidential-computing state of one GPU as the driver reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuCcState {
    /// GPU index.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// CC mode on.
    pub cc_enabled: bool,
    /// CC developer-tools mode on (not confidential).
    pub dev_tools_mode: bool,
    /// Driver version.
    pub driver_version: String,
    /// VBIOS version.
    pub vbios_version: String,
}
