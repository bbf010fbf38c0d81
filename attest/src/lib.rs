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
//! - [`collect`]: evidence collectors, NVML for GPUs and configfs-tsm for TDX/SNP guests, each
//!   saying [`Error::NotAvailable`] where the hardware is absent.
//! - [`simulated`]: evidence in the same formats signed by keys made at start-up, for machines
//!   without a GPU or TEE; verified only when policy allows it, and NOT confidential.
//!
//! Every parser takes hostile bytes: lengths and offsets are checked before use, and bad input
//! is an [`Error`], never a panic.

pub mod bundle;
mod certgen;
pub mod collect;
pub mod error;
pub mod evidence;
pub mod nvidia;
pub mod policy;
pub mod simulated;
pub mod snp;
pub mod tdx;
pub mod x509;

pub use error::{Error, Result};
