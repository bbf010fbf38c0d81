//! Simulated evidence for machines without a confidential GPU or a TEE: **NOT confidential**.
//!
//! [`SimulatedGpu`] and [`SimulatedCpu`] make fresh P-384 keys at start-up and produce evidence
//! in exactly the real formats, so the real parsers and verifiers run on it:
//!
//! - GPU: an SPDM 1.1 `GET_MEASUREMENTS` request || `MEASUREMENTS` response as NVML returns it
//!   ([`nvidia::GpuReport::parse`]): 64 SHA-384 measurement blocks derived from fixed labels
//!   (stable across runs), a random responder nonce, opaque data (driver version `simulated`,
//!   VBIOS, chip SKU, project, FWID), signed by a leaf whose certificate carries the same FWID
//!   in the DICE extension; chain leaf → intermediate → root, all "Veil SIMULATED GPU ...".
//! - CPU: a 1184-byte SEV-SNP report, version 2 ([`snp::SnpReport::parse`]), debug not allowed,
//!   a MEASUREMENT derived from a fixed label, the caller's REPORT_DATA, zero TCBs, signed over
//!   `[0, 0x2A0)` by a VCEK-like leaf; chain VCEK-like leaf → root.
//!
//! The roots are made by this process, so this evidence proves nothing but the code path:
//! a verifier must reject it unless its policy explicitly allows simulated evidence, and then
//! say [`NOT_CONFIDENTIAL_NOTICE`] (or equally plain words) in every verdict.
//! [`verify_simulated_gpu`] and [`verify_simulated_snp`] verify such evidence against the
//! chain's own last certificate (self-asserted), for exactly that case.

use std::fmt;

use p384::ecdsa::signature::Verifier;
use p384::ecdsa::{Signature, SigningKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

use crate::certgen::{self, CertSpec};
use crate::collect::{CpuCollector, GpuCollector};
use crate::evidence::{CpuEvidence, EvidenceKind, GpuCcState, GpuEvidence};
use crate::nvidia::{self, VerifiedGpu, opaque_type};
use crate::snp::{self, SnpReport, hex_serde};
use crate::x509::{self, Certificate};
use crate::{Error, Result};

/// What every verdict on simulated evidence must say.
pub const NOT_CONFIDENTIAL_NOTICE: &str = "SIMULATED attestation: this session is NOT confidential. \
     The evidence was signed by keys the server made at start-up; no TEE and no confidential GPU \
     protect the data.";

/// The product name simulated GPUs report.
pub const SIMULATED_GPU_NAME: &str = "Simulated GPU (NOT confidential)";
/// DRIVER_VERSION in simulated GPU reports (and the driver version in their [`GpuCcState`]).
pub const SIMULATED_DRIVER_VERSION: &str = "simulated";
/// VBIOS_VERSION bytes in simulated GPU reports.
const SIMULATED_VBIOS: [u8; 8] = [0; 8];
/// The VBIOS version of simulated GPUs as [`nvidia::OpaqueData::vbios_version`] formats it.
pub const SIMULATED_VBIOS_VERSION: &str = "00.00.00.00.00";
/// Measurement blocks in a simulated GPU report (as on Hopper).
pub const SIMULATED_GPU_BLOCKS: u8 = 64;

const ORG: &str = "O=Veil SIMULATED (NOT confidential)";
const GPU_MEASUREMENT_LABEL: &[u8] = b"veil simulated gpu measurement v1";
const GPU_FWID_LABEL: &[u8] = b"veil simulated gpu fwid v1";
const SNP_MEASUREMENT_LABEL: &[u8] = b"veil simulated snp measurement v1";

/// Certificates made here are valid from an hour before start-up (clock skew) to 9999.
fn validity() -> (u64, u64) {
    (certgen::now().saturating_sub(3600), certgen::NO_EXPIRY)
}

fn sha384(parts: &[&[u8]]) -> [u8; 48] {
    let mut h = Sha384::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The stable value of simulated GPU measurement block `index` (1-based):
/// SHA-384(label || index).
pub fn simulated_gpu_measurement(index: u8) -> [u8; 48] {
    sha384(&[GPU_MEASUREMENT_LABEL, &[index]])
}

/// The stable FWID of simulated GPUs (in the report and in the leaf certificate).
pub fn simulated_gpu_fwid() -> [u8; 48] {
    sha384(&[GPU_FWID_LABEL])
}

/// The stable MEASUREMENT of simulated SNP reports.
pub fn simulated_snp_measurement() -> [u8; 48] {
    sha384(&[SNP_MEASUREMENT_LABEL])
}

fn cert(
    what: &str,
    subject: &str,
    issuer: &str,
    ca: bool,
    fwid: Option<&[u8]>,
    subject_key: &SigningKey,
    issuer_key: &SigningKey,
) -> Result<Certificate> {
    let serial = certgen::random_serial()?;
    let (not_before, not_after) = validity();
    certgen::p384_cert(
        &CertSpec {
            serial: &serial,
            subject,
            issuer,
            ca,
            fwid,
            not_before,
            not_after,
        },
        subject_key.verifying_key(),
        issuer_key,
    )
    .map_err(|e| Error::Collect(format!("simulated {what} certificate: {e}")))
}

// ---------------------------------------------------------------------------------------------
// GPU

struct SimGpuDevice {
    leaf_key: SigningKey,
    /// PEM: leaf, intermediate, root.
    chain_pem: Vec<u8>,
}

/// Simulated GPUs: one P-384 chain (root → intermediate → per-GPU leaf) made at start-up.
pub struct SimulatedGpu {
    devices: Vec<SimGpuDevice>,
    root: Certificate,
}

impl fmt::Debug for SimulatedGpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatedGpu")
            .field("count", &self.devices.len())
            .field("root", &x509::subject_string(&self.root))
            .finish_non_exhaustive()
    }
}

impl SimulatedGpu {
    /// Makes `count` simulated GPUs with fresh keys and certificates.
    pub fn new(count: u32) -> Result<Self> {
        let root_key = certgen::random_key()?;
        let ica_key = certgen::random_key()?;
        let root_name = format!("CN=Veil SIMULATED GPU Root CA,{ORG}");
        let ica_name = format!("CN=Veil SIMULATED GPU Intermediate CA,{ORG}");
        let root = cert(
            "GPU root", &root_name, &root_name, true, None, &root_key, &root_key,
        )?;
        let ica = cert(
            "GPU intermediate",
            &ica_name,
            &root_name,
            true,
            None,
            &ica_key,
            &root_key,
        )?;
        let fwid = simulated_gpu_fwid();
        let mut devices = Vec::new();
        for index in 0..count {
            let leaf_key = certgen::random_key()?;
            let leaf_name = format!("CN=Veil SIMULATED GPU {index} Leaf,{ORG}");
            let leaf = cert(
                "GPU leaf",
                &leaf_name,
                &ica_name,
                false,
                Some(&fwid),
                &leaf_key,
                &ica_key,
            )?;
            devices.push(SimGpuDevice {
                leaf_key,
                chain_pem: certgen::to_pem(&[leaf, ica.clone(), root.clone()])?,
            });
        }
        Ok(Self { devices, root })
    }

    /// The simulated root certificate (self-made; trust it for nothing).
    pub fn root(&self) -> &Certificate {
        &self.root
    }

    /// Number of simulated GPUs.
    pub fn count(&self) -> usize {
        self.devices.len()
    }
}

fn tlv(out: &mut Vec<u8>, field_type: u16, value: &[u8]) -> Result<()> {
    let len = u16::try_from(value.len()).map_err(|_| Error::Collect("opaque field too long".into()))?;
    out.extend_from_slice(&field_type.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(value);
    Ok(())
}

/// Builds a signed SPDM 1.1 GET_MEASUREMENTS request || MEASUREMENTS response in the NVIDIA
/// format (see [`nvidia`]) from scratch.
fn build_spdm_report(
    nonce: &[u8; 32],
    responder_nonce: &[u8; 32],
    fwid: &[u8; 48],
    key: &SigningKey,
) -> Result<Vec<u8>> {
    const BLOCK_VALUE_LEN: u16 = 48;
    let mut b = Vec::with_capacity(4200);
    // Request: version, code, param1 (signature requested), param2 (all blocks), nonce, slot 0.
    b.extend_from_slice(&[nvidia::SPDM_VERSION_1_1, nvidia::GET_MEASUREMENTS, 0x01, 0xFF]);
    b.extend_from_slice(nonce);
    b.push(0);
    // Response header: version, code, param1, param2 (slot 0), NumberOfBlocks.
    b.extend_from_slice(&[nvidia::SPDM_VERSION_1_1, nvidia::MEASUREMENTS, 0, 0]);
    b.push(SIMULATED_GPU_BLOCKS);
    let mut record = Vec::new();
    for index in 1..=SIMULATED_GPU_BLOCKS {
        // index | spec (DMTF) | MeasurementSize | value type | value size | value.
        record.extend_from_slice(&[index, 1]);
        record.extend_from_slice(&(3 + BLOCK_VALUE_LEN).to_le_bytes());
        record.push(1);
        record.extend_from_slice(&BLOCK_VALUE_LEN.to_le_bytes());
        record.extend_from_slice(&simulated_gpu_measurement(index));
    }
    let record_len = u32::try_from(record.len())
        .ok()
        .filter(|l| *l < 1 << 24)
        .ok_or_else(|| Error::Collect("measurement record too long".into()))?;
    b.extend_from_slice(&record_len.to_le_bytes()[..3]);
    b.extend_from_slice(&record);
    b.extend_from_slice(responder_nonce);
    let mut opaque = Vec::new();
    tlv(&mut opaque, opaque_type::DRIVER_VERSION, b"simulated\0")?;
    tlv(&mut opaque, opaque_type::VBIOS_VERSION, &SIMULATED_VBIOS)?;
    tlv(&mut opaque, opaque_type::CHIP_SKU, b"SIM\0")?;
    tlv(&mut opaque, opaque_type::PROJECT, b"SIMULATED\0")?;
    tlv(&mut opaque, opaque_type::PROJECT_SKU, b"0000\0")?;
    tlv(&mut opaque, opaque_type::FWID, fwid)?;
    let opaque_len =
        u16::try_from(opaque.len()).map_err(|_| Error::Collect("opaque data too long".into()))?;
    b.extend_from_slice(&opaque_len.to_le_bytes());
    b.extend_from_slice(&opaque);
    let sig = certgen::sign_raw(key, &b)?;
    b.extend_from_slice(&sig);
    Ok(b)
}

impl GpuCollector for SimulatedGpu {
    fn gpus(&self) -> Result<Vec<GpuCcState>> {
        (0..self.devices.len())
            .map(|i| {
                Ok(GpuCcState {
                    index: u32::try_from(i).map_err(|_| Error::Collect("GPU index".into()))?,
                    name: SIMULATED_GPU_NAME.into(),
                    cc_enabled: false,
                    dev_tools_mode: false,
                    driver_version: SIMULATED_DRIVER_VERSION.into(),
                    vbios_version: SIMULATED_VBIOS_VERSION.into(),
                })
            })
            .collect()
    }

    fn evidence(&self, nonce: &[u8; 32]) -> Result<Vec<GpuEvidence>> {
        let fwid = simulated_gpu_fwid();
        self.devices
            .iter()
            .map(|d| {
                let responder_nonce: [u8; 32] = certgen::random_bytes()?;
                Ok(GpuEvidence {
                    kind: EvidenceKind::SimulatedNvidiaSpdm,
                    report: build_spdm_report(nonce, &responder_nonce, &fwid, &d.leaf_key)?,
                    cert_chain: d.chain_pem.clone(),
                })
            })
            .collect()
    }
}

/// Verifies simulated GPU evidence: the real NVIDIA report verifier
/// ([`nvidia::verify_gpu_report_with_root`]) with the chain's own last certificate as the root
/// (simulated roots are self-asserted). Checks the format, the chain, the nonce
/// ([`Error::NonceMismatch`]), the signature ([`Error::BadSignature`]) and the FWID binding.
/// Call it only when the policy allows simulated evidence: success proves nothing about
/// confidentiality.
pub fn verify_simulated_gpu(
    report: &[u8],
    chain_pem: &[u8],
    expected_nonce: &[u8; 32],
    at: Option<u64>,
) -> Result<VerifiedGpu> {
    let chain = x509::parse_pem_bundle(chain_pem)?;
    let root = chain
        .last()
        .ok_or_else(|| Error::CertificateChain("empty simulated GPU chain".into()))?;
    nvidia::verify_gpu_report_with_root(report, chain_pem, root, Some(*expected_nonce), at)
}

// ---------------------------------------------------------------------------------------------
// CPU

/// A simulated SEV-SNP guest: a VCEK-like P-384 leaf under a root, made at start-up.
pub struct SimulatedCpu {
    vcek_key: SigningKey,
    /// PEM: VCEK-like leaf, root.
    certs_pem: Vec<u8>,
    report_id: [u8; 32],
}

impl fmt::Debug for SimulatedCpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatedCpu")
            .field("kind", &EvidenceKind::SimulatedSnpReport)
            .finish_non_exhaustive()
    }
}

impl SimulatedCpu {
    /// Makes a simulated guest with fresh keys and certificates.
    pub fn new() -> Result<Self> {
        let root_key = certgen::random_key()?;
        let vcek_key = certgen::random_key()?;
        let root_name = format!("CN=Veil SIMULATED SEV-SNP Root (ARK),{ORG}");
        let vcek_name = format!("CN=Veil SIMULATED SEV-SNP VCEK,{ORG}");
        let root = cert(
            "SNP root", &root_name, &root_name, true, None, &root_key, &root_key,
        )?;
        let vcek = cert(
            "SNP VCEK", &vcek_name, &root_name, false, None, &vcek_key, &root_key,
        )?;
        Ok(Self {
            vcek_key,
            certs_pem: certgen::to_pem(&[vcek, root])?,
            report_id: certgen::random_bytes()?,
        })
    }

    /// The certificates its reports verify with (PEM: VCEK-like leaf, root).
    pub fn certs_pem(&self) -> &[u8] {
        &self.certs_pem
    }

    /// A signed SNP report (version 2) carrying `report_data`.
    fn report(&self, report_data: &[u8; 64]) -> Result<Vec<u8>> {
        let mut r = vec![0u8; snp::SNP_REPORT_LEN];
        put(&mut r, 0x00, &2u32.to_le_bytes()); // VERSION
        // POLICY: SMT allowed, the must-be-one bit, DEBUG not allowed.
        put(
            &mut r,
            0x08,
            &(snp::POLICY_RESERVED_1 | snp::POLICY_SMT).to_le_bytes(),
        );
        put(&mut r, 0x34, &snp::SIG_ALGO_ECDSA_P384_SHA384.to_le_bytes()); // SIGNATURE_ALGO
        // VMPL 0, all TCBs zero, signer info 0 (VCEK, chip key not masked), CHIP_ID zero.
        put(&mut r, 0x50, report_data); // REPORT_DATA
        put(&mut r, 0x90, &simulated_snp_measurement()); // MEASUREMENT
        put(&mut r, 0x140, &self.report_id); // REPORT_ID
        let signed = r
            .get(..snp::SNP_SIGNED_LEN)
            .ok_or_else(|| Error::Collect("SNP report length".into()))?;
        let sig = certgen::sign_raw(&self.vcek_key, signed)?;
        // R and S (big-endian in `sig`) go into 72-byte little-endian fields.
        let (r_be, s_be) = sig.split_at(48);
        let r_le: Vec<u8> = r_be.iter().rev().copied().collect();
        let s_le: Vec<u8> = s_be.iter().rev().copied().collect();
        put(&mut r, 0x2A0, &r_le);
        put(&mut r, 0x2E8, &s_le);
        Ok(r)
    }
}

/// Copies `bytes` into `buf` at `off` (the offsets used are constants inside the report).
fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(off..off + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

impl CpuCollector for SimulatedCpu {
    fn kind(&self) -> EvidenceKind {
        EvidenceKind::SimulatedSnpReport
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<CpuEvidence> {
        Ok(CpuEvidence {
            kind: EvidenceKind::SimulatedSnpReport,
            quote: self.report(report_data)?,
            certs: self.certs_pem.clone(),
        })
    }
}

/// What a verified simulated SNP report says (byte strings as lowercase hex). Proves nothing
/// about confidentiality.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedSimulatedCpu {
    /// MEASUREMENT.
    #[serde(with = "hex_serde")]
    pub measurement: [u8; 48],
    /// REPORT_DATA (equal to the expected one).
    #[serde(with = "hex_serde")]
    pub report_data: [u8; 64],
    /// Guest POLICY.
    pub policy: u64,
    /// Policy bit 19 (debugging allowed).
    pub debug: bool,
    /// Subject of the VCEK-like leaf.
    pub leaf_subject: String,
}

/// Verifies a simulated SNP report (`report`, 1184 bytes) with its certificates (`certs_pem`:
/// VCEK-like leaf first, the simulated root last): the report parses ([`SnpReport::parse`]); the
/// chain verifies up to its own last certificate (self-asserted root,
/// [`Error::CertificateChain`]); the signature algorithm is ECDSA P-384 and the signing key the
/// VCEK ([`Error::Unsupported`]); the signature verifies under the leaf ([`Error::BadSignature`]);
/// REPORT_DATA equals `expected_report_data` ([`Error::ReportDataMismatch`]). Call it only when
/// the policy allows simulated evidence.
pub fn verify_simulated_snp(
    report: &[u8],
    certs_pem: &[u8],
    expected_report_data: &[u8; 64],
) -> Result<VerifiedSimulatedCpu> {
    let r = SnpReport::parse(report)?;
    let chain = x509::parse_pem_bundle(certs_pem)?;
    let (leaf, root) = match chain.as_slice() {
        [leaf, .., root] => (leaf, root),
        _ => {
            return Err(Error::CertificateChain(format!(
                "simulated SNP chain has {} certificate(s), want a leaf and a root",
                chain.len()
            )));
        }
    };
    x509::verify_chain(&chain, root, None)?;
    if r.signature_algo != snp::SIG_ALGO_ECDSA_P384_SHA384 {
        return Err(Error::Unsupported {
            what: "SNP signature algorithm",
            value: r.signature_algo.to_string(),
        });
    }
    if r.signing_key() != snp::SigningKey::Vcek || r.mask_chip_key() {
        return Err(Error::Unsupported {
            what: "SNP signing key",
            value: format!("{:?} (masked: {})", r.signing_key(), r.mask_chip_key()),
        });
    }
    let sig: Signature = r.signature()?;
    x509::p384_verifying_key(leaf)?
        .verify(&r.signed_bytes, &sig)
        .map_err(|_| Error::BadSignature("simulated SNP report signature does not verify".into()))?;
    if &r.report_data != expected_report_data {
        return Err(Error::ReportDataMismatch(format!(
            "simulated SNP REPORT_DATA {} differs from the expected {}",
            hex::encode(r.report_data),
            hex::encode(expected_report_data)
        )));
    }
    Ok(VerifiedSimulatedCpu {
        measurement: r.measurement,
        report_data: r.report_data,
        policy: r.policy,
        debug: r.debug_allowed(),
        leaf_subject: x509::subject_string(leaf),
    })
}

#[cfg(test)]
mod tests;
