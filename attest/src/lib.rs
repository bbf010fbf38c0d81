//! # veil-attest: evidence, the composite quote, verification and policy
//!
//! Design overview:
//! - [`nvidia`]: NVIDIA Hopper GPU attestation reports (SPDM 1.1 GET_MEASUREMENTS
//!   request||response as returned by NVML), their certificate chain to the pinned NVIDIA Device
//!   Identity root, and the FWID binding between report and leaf certificate.
//! - [`tdx`]: Intel TDX quotes v4/v5, the PCK chain to the pinned Intel SGX Root CA, and the TCB
//!   status from collateral.
//! - [`snp`]: AMD SEV-SNP reports (v2, v3, v5), VCEK <- ASK <- ARK to the pinned AMD roots.
//! - [`x509`]: certificate-chain checking shared by the three.
//!
//! Every parser takes hostile bytes: lengths and offsets are checked before use, and bad input
//! is an [`Error`], never a panic.

pub mod error;
pub mod nvidia;
pub mod snp;
pub mod tdx;
pub mod x509;

pub use error::{Error, Result};
