//! The one error type of the attestation crate.

/// Everything that can make evidence unacceptable, each with its own variant so callers and
/// tests can tell a bad signature from a wrong nonce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The bytes do not follow the format.
    #[error("malformed {format}: {reason}")]
    Malformed {
        /// Which format ("SPDM", "TDX quote", "SNP report", "X.509", ...).
        format: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A version or feature this verifier does not handle.
    #[error("unsupported {what}: {value}")]
    Unsupported {
        /// What (e.g. "TDX quote version").
        what: &'static str,
        /// The value found.
        value: String,
    },
    /// A signature does not verify.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// A certificate chain does not lead to the pinned root, or a certificate is not valid.
    #[error("certificate chain: {0}")]
    CertificateChain(String),
    /// Evidence is bound to another nonce.
    #[error("nonce mismatch: {0}")]
    NonceMismatch(String),
    /// REPORTDATA does not match what it must commit to.
    #[error("report data mismatch: {0}")]
    ReportDataMismatch(String),
    /// The report's FWID differs from the leaf certificate's TCB info FWID.
    #[error("FWID mismatch: {0}")]
    FwidMismatch(String),
    /// A measurement or version is not allowed by policy.
    #[error("policy violation: {0}")]
    Policy(String),
    /// GPU evidence was made for other claims or another request (its nonce is not the
    /// bundle's `gpu_nonce`).
    #[error("claims mismatch: {0}")]
    ClaimsMismatch(String),
    /// The bundle's model digest is not one the policy accepts.
    #[error("model not accepted: {0}")]
    ModelNotAccepted(String),
    /// The bundle is older than the policy allows (or from the future).
    #[error("expired: {0}")]
    Expired(String),
    /// The bundle carries simulated evidence and the policy does not allow it.
    #[error("simulated evidence not allowed: {0}")]
    SimulatedNotAllowed(String),
    /// Collateral is missing, expired, or does not cover the evidence.
    #[error("collateral: {0}")]
    Collateral(String),
    /// A TDX quote's QE report does not commit to its attestation key and QE authentication
    /// data (QE REPORTDATA != SHA-256(attestation key || QE auth data) || 0^32).
    #[error("QE report binding: {0}")]
    QeReportBinding(String),
    /// The hardware or interface needed to collect evidence is absent on this machine (no NVIDIA
    /// driver or GPU, no configfs-tsm, no TEE provider, a GPU without confidential computing).
    #[error("not available on this machine: {0}")]
    NotAvailable(String),
    /// Collecting evidence failed on a machine that has the hardware (a driver or kernel error,
    /// an I/O error, a concurrent writer to the same configfs-tsm entry).
    #[error("evidence collection failed: {0}")]
    Collect(String),
}

/// Result alias for the attestation crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for a malformed-input error.
    pub fn malformed(format: &'static str, reason: impl Into<String>) -> Self {
        Self::Malformed {
            format,
            reason: reason.into(),
        }
    }
}
