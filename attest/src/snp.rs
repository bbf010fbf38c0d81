//! AMD SEV-SNP attestation reports (versions 2, 3 and 5) and their verification.
//!
//! A report is 1184 (0x4A0) bytes, little-endian. The signature is ECDSA P-384 / SHA-384 over
//! bytes `[0, 0x2A0)`, by the chip's VCEK; R and S are stored little-endian, 72 bytes each, at
//! 0x2A0 and 0x2E8. The VCEK is certified by the product's ASK, itself certified by the ARK
//! (both RSA-4096, RSASSA-PSS SHA-384); the ASK/ARK pairs of Milan, Genoa and Turin are pinned in
//! `attest/roots/` (see its README for provenance).
//!
//! [`SnpReport::parse`] is a pure function of the bytes; [`verify_snp_report`] checks the
//! expected REPORTDATA, the VCEK chain to the pinned ARK, the VCEK's TCB and hardware-id
//! extensions against the report, and the signature. Policy (debug, measurements, minimum TCB)
//! is a separate step: [`VerifiedSnp::check_policy`].

use der::{Decode, asn1::Ia5StringRef};
use p384::ecdsa::{Signature, signature::Verifier};
use serde::{Deserialize, Serialize};
use x509_cert::Certificate;

use crate::error::{Error, Result};
use crate::x509;

/// Length of an SNP attestation report.
pub const SNP_REPORT_LEN: usize = 0x4A0;
/// End of the signed part of the report (the signature starts here).
pub const SNP_SIGNED_LEN: usize = 0x2A0;
/// `SIGNATURE_ALGO` value for ECDSA P-384 with SHA-384, the only one defined.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

const FORMAT: &str = "SNP report";

/// Guest policy bit: SMT allowed.
pub const POLICY_SMT: u64 = 1 << 16;
/// Guest policy bit: reserved, must be one.
pub const POLICY_RESERVED_1: u64 = 1 << 17;
/// Guest policy bit: association with a migration agent allowed.
pub const POLICY_MIGRATE_MA: u64 = 1 << 18;
/// Guest policy bit: debugging allowed (the hypervisor can read and write guest memory).
pub const POLICY_DEBUG: u64 = 1 << 19;
/// Guest policy bit: guest may run on one socket only.
pub const POLICY_SINGLE_SOCKET: u64 = 1 << 20;
/// Guest policy bit: CXL may be populated with guest memory.
pub const POLICY_CXL_ALLOW: u64 = 1 << 21;
/// Guest policy bit: AES-256-XTS required for memory encryption.
pub const POLICY_MEM_AES_256_XTS: u64 = 1 << 22;
/// Guest policy bit: running average power limit must be disabled.
pub const POLICY_RAPL_DIS: u64 = 1 << 23;
/// Guest policy bit: ciphertext hiding must be enabled.
pub const POLICY_CIPHERTEXT_HIDING: u64 = 1 << 24;
/// Guest policy bit: page swap disabled.
pub const POLICY_PAGE_SWAP_DISABLE: u64 = 1 << 25;

/// AMD EPYC product line: selects the pinned ASK/ARK and the TCB layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AmdProduct {
    /// EPYC 7003 (Zen 3).
    Milan,
    /// EPYC 9004/8004 (Zen 4).
    Genoa,
    /// EPYC 9005 (Zen 5).
    Turin,
}

impl AmdProduct {
    /// Every product this crate pins roots for.
    pub const ALL: [AmdProduct; 3] = [AmdProduct::Milan, AmdProduct::Genoa, AmdProduct::Turin];

    /// The name AMD uses in certificates and KDS URLs ("Milan", ...).
    pub fn name(self) -> &'static str {
        match self {
            AmdProduct::Milan => "Milan",
            AmdProduct::Genoa => "Genoa",
            AmdProduct::Turin => "Turin",
        }
    }

    /// The pinned ASK then ARK, PEM (from `attest/roots/`).
    pub fn ask_ark_pem(self) -> &'static str {
        match self {
            AmdProduct::Milan => include_str!("../roots/amd_milan_ask_ark.pem"),
            AmdProduct::Genoa => include_str!("../roots/amd_genoa_ask_ark.pem"),
            AmdProduct::Turin => include_str!("../roots/amd_turin_ask_ark.pem"),
        }
    }

    /// The pinned (ASK, ARK) certificates.
    pub fn ask_ark(self) -> Result<(Certificate, Certificate)> {
        let certs = x509::parse_pem_bundle(self.ask_ark_pem().as_bytes())?;
        match <[Certificate; 2]>::try_from(certs) {
            Ok([ask, ark]) => Ok((ask, ark)),
            Err(v) => Err(Error::CertificateChain(format!(
                "pinned {} roots hold {} certificates, expected ASK and ARK",
                self.name(),
                v.len()
            ))),
        }
    }

    /// The product a v3+ report's CPUID family/model names, if known.
    pub fn from_cpuid(family: u8, model: u8) -> Option<AmdProduct> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(AmdProduct::Milan),
            (0x19, 0x10..=0x1F) | (0x19, 0xA0..=0xAF) => Some(AmdProduct::Genoa),
            (0x1A, 0x00..=0x11) => Some(AmdProduct::Turin),
            _ => None,
        }
    }
}

/// A TCB version (SPL of each firmware component), decoded for a product.
///
/// Milan and Genoa: byte 0 boot loader, 1 TEE, 6 SNP, 7 microcode. Turin: byte 0 FMC,
/// 1 boot loader, 2 TEE, 3 SNP, 7 microcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tcb {
    /// The raw 64-bit value as in the report.
    pub raw: u64,
    /// FMC SPL (Turin only).
    pub fmc: Option<u8>,
    /// Boot loader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// CPU microcode SPL.
    pub microcode: u8,
}

impl Tcb {
    /// Decode `raw` with the layout of `product`.
    pub fn decode(raw: u64, product: AmdProduct) -> Tcb {
        let b = raw.to_le_bytes();
        match product {
            AmdProduct::Milan | AmdProduct::Genoa => Tcb {
                raw,
                fmc: None,
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
            },
            AmdProduct::Turin => Tcb {
                raw,
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            },
        }
    }

    /// Whether every component is at least the one of `min`.
    pub fn at_least(&self, min: &Tcb) -> bool {
        self.fmc.unwrap_or(0) >= min.fmc.unwrap_or(0)
            && self.bootloader >= min.bootloader
            && self.tee >= min.tee
            && self.snp >= min.snp
            && self.microcode >= min.microcode
    }
}

/// Firmware version triple (build, minor, major) as stored in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FirmwareVersion {
    /// Build number.
    pub build: u8,
    /// Minor version.
    pub minor: u8,
    /// Major version.
    pub major: u8,
}

/// Which key signed the report (SIGNER_INFO bits 4:2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SigningKey {
    /// Versioned Chip Endorsement Key.
    Vcek,
    /// Versioned Loaded Endorsement Key.
    Vlek,
    /// No key (report unsigned).
    None,
    /// A reserved value.
    Reserved(u8),
}

/// A parsed SEV-SNP attestation report. Every field of the format, nothing checked but layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpReport {
    /// VERSION (2, 3 or 5).
    pub version: u32,
    /// GUEST_SVN.
    pub guest_svn: u32,
    /// POLICY (see the `POLICY_*` constants).
    pub policy: u64,
    /// FAMILY_ID.
    pub family_id: [u8; 16],
    /// IMAGE_ID.
    pub image_id: [u8; 16],
    /// VMPL the report was requested at.
    pub vmpl: u32,
    /// SIGNATURE_ALGO (1 = ECDSA P-384 / SHA-384).
    pub signature_algo: u32,
    /// CURRENT_TCB (raw).
    pub current_tcb: u64,
    /// PLATFORM_INFO (bit 0 SMT enabled, 1 TSME, 2 ECC, 3 RAPL disabled, 4 ciphertext hiding,
    /// 5 alias check complete, 7 TIO).
    pub platform_info: u64,
    /// Signer info word at 0x48: bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY.
    pub signer_info: u32,
    /// REPORT_DATA supplied by the guest.
    pub report_data: [u8; 64],
    /// MEASUREMENT (launch digest).
    pub measurement: [u8; 48],
    /// HOST_DATA.
    pub host_data: [u8; 32],
    /// ID_KEY_DIGEST.
    pub id_key_digest: [u8; 48],
    /// AUTHOR_KEY_DIGEST.
    pub author_key_digest: [u8; 48],
    /// REPORT_ID.
    pub report_id: [u8; 32],
    /// REPORT_ID_MA.
    pub report_id_ma: [u8; 32],
    /// REPORTED_TCB (raw): the TCB the VCEK is derived from.
    pub reported_tcb: u64,
    /// CPUID family, model, stepping (version 3 and later).
    pub cpuid_fam_mod_step: Option<(u8, u8, u8)>,
    /// CHIP_ID (all zero when masked by the platform).
    pub chip_id: [u8; 64],
    /// COMMITTED_TCB (raw).
    pub committed_tcb: u64,
    /// Current firmware version.
    pub current_version: FirmwareVersion,
    /// Committed firmware version.
    pub committed_version: FirmwareVersion,
    /// LAUNCH_TCB (raw).
    pub launch_tcb: u64,
    /// LAUNCH_MIT_VECTOR (version 5 and later).
    pub launch_mit_vector: Option<u64>,
    /// CURRENT_MIT_VECTOR (version 5 and later).
    pub current_mit_vector: Option<u64>,
    /// Signature R, little-endian as stored.
    pub signature_r: [u8; 72],
    /// Signature S, little-endian as stored.
    pub signature_s: [u8; 72],
    /// Bytes `[0, 0x2A0)`: what the signature covers.
    pub signed_bytes: Vec<u8>,
}

fn field<const N: usize>(b: &[u8], off: usize) -> Result<[u8; N]> {
    b.get(off..off + N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or_else(|| Error::malformed(FORMAT, format!("field at {off:#x} out of range")))
}

fn le_u32(b: &[u8], off: usize) -> Result<u32> {
    field::<4>(b, off).map(u32::from_le_bytes)
}

fn le_u64(b: &[u8], off: usize) -> Result<u64> {
    field::<8>(b, off).map(u64::from_le_bytes)
}

impl SnpReport {
    /// Parse a report. Exactly [`SNP_REPORT_LEN`] bytes; versions 2, 3 and 5.
    pub fn parse(bytes: &[u8]) -> Result<SnpReport> {
        if bytes.len() != SNP_REPORT_LEN {
            return Err(Error::malformed(
                FORMAT,
                format!("{} bytes, expected {SNP_REPORT_LEN}", bytes.len()),
            ));
        }
        let b = bytes;
        let version = le_u32(b, 0x00)?;
        if !matches!(version, 2 | 3 | 5) {
            return Err(Error::Unsupported {
                what: "SNP report version",
                value: version.to_string(),
            });
        }
        let fw = |off: usize| -> Result<FirmwareVersion> {
            let v = field::<3>(b, off)?;
            Ok(FirmwareVersion {
                build: v[0],
                minor: v[1],
                major: v[2],
            })
        };
        let cpuid_fam_mod_step = if version >= 3 {
            let c = field::<3>(b, 0x188)?;
            Some((c[0], c[1], c[2]))
        } else {
            None
        };
        let (launch_mit_vector, current_mit_vector) = if version >= 5 {
            (Some(le_u64(b, 0x1F8)?), Some(le_u64(b, 0x200)?))
        } else {
            (None, None)
        };
        Ok(SnpReport {
            version,
            guest_svn: le_u32(b, 0x04)?,
            policy: le_u64(b, 0x08)?,
            family_id: field(b, 0x10)?,
            image_id: field(b, 0x20)?,
            vmpl: le_u32(b, 0x30)?,
            signature_algo: le_u32(b, 0x34)?,
            current_tcb: le_u64(b, 0x38)?,
            platform_info: le_u64(b, 0x40)?,
            signer_info: le_u32(b, 0x48)?,
            report_data: field(b, 0x50)?,
            measurement: field(b, 0x90)?,
            host_data: field(b, 0xC0)?,
            id_key_digest: field(b, 0xE0)?,
            author_key_digest: field(b, 0x110)?,
            report_id: field(b, 0x140)?,
            report_id_ma: field(b, 0x160)?,
            reported_tcb: le_u64(b, 0x180)?,
            cpuid_fam_mod_step,
            chip_id: field(b, 0x1A0)?,
            committed_tcb: le_u64(b, 0x1E0)?,
            current_version: fw(0x1E8)?,
            committed_version: fw(0x1EC)?,
            launch_tcb: le_u64(b, 0x1F0)?,
            launch_mit_vector,
            current_mit_vector,
            signature_r: field(b, 0x2A0)?,
            signature_s: field(b, 0x2E8)?,
            signed_bytes: b.get(..SNP_SIGNED_LEN).map(<[u8]>::to_vec).unwrap_or_default(),
        })
    }

    /// Whether the guest policy allows debugging (bit 19): such a guest is not confidential.
    pub fn debug_allowed(&self) -> bool {
        self.policy & POLICY_DEBUG != 0
    }

    /// Whether the guest policy allows a migration agent (bit 18).
    pub fn migrate_ma_allowed(&self) -> bool {
        self.policy & POLICY_MIGRATE_MA != 0
    }

    /// Whether the guest policy allows SMT (bit 16).
    pub fn smt_allowed(&self) -> bool {
        self.policy & POLICY_SMT != 0
    }

    /// Whether the guest policy restricts the guest to one socket (bit 20).
    pub fn single_socket(&self) -> bool {
        self.policy & POLICY_SINGLE_SOCKET != 0
    }

    /// Guest policy ABI (major, minor) minimum.
    pub fn policy_abi(&self) -> (u8, u8) {
        (((self.policy >> 8) & 0xFF) as u8, (self.policy & 0xFF) as u8)
    }

    /// AUTHOR_KEY_EN (signer info bit 0).
    pub fn author_key_en(&self) -> bool {
        self.signer_info & 1 != 0
    }

    /// MASK_CHIP_KEY (signer info bit 1): the signature is zeroed.
    pub fn mask_chip_key(&self) -> bool {
        self.signer_info & 2 != 0
    }

    /// SIGNING_KEY (signer info bits 4:2).
    pub fn signing_key(&self) -> SigningKey {
        match ((self.signer_info >> 2) & 7) as u8 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            r => SigningKey::Reserved(r),
        }
    }

    /// Whether CHIP_ID is all zero (MASK_CHIP_ID set on the platform).
    pub fn chip_id_masked(&self) -> bool {
        self.chip_id.iter().all(|&x| x == 0)
    }

    /// The product named by the report's CPUID (version 3 and later), if known.
    pub fn product_hint(&self) -> Option<AmdProduct> {
        self.cpuid_fam_mod_step
            .and_then(|(f, m, _)| AmdProduct::from_cpuid(f, m))
    }

    /// The signature as a P-384 signature (R and S converted to big-endian).
    pub fn signature(&self) -> Result<Signature> {
        let r = le72_to_be48(&self.signature_r)?;
        let s = le72_to_be48(&self.signature_s)?;
        Signature::from_scalars(r, s)
            .map_err(|e| Error::BadSignature(format!("SNP report signature is not a P-384 signature: {e}")))
    }
}

fn le72_to_be48(le: &[u8; 72]) -> Result<[u8; 48]> {
    if le[48..].iter().any(|&x| x != 0) {
        return Err(Error::BadSignature(
            "SNP signature component exceeds 384 bits".into(),
        ));
    }
    let mut be = [0u8; 48];
    for (d, s) in be.iter_mut().zip(le[..48].iter().rev()) {
        *d = *s;
    }
    Ok(be)
}

/// The verified content of an SNP report, serializable (byte strings as lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedSnp {
    /// Product whose roots the chain ended at.
    pub product: AmdProduct,
    /// Report VERSION.
    pub version: u32,
    /// GUEST_SVN.
    pub guest_svn: u32,
    /// Guest POLICY.
    pub policy: u64,
    /// Policy bit 19: the guest can be debugged by the host (not confidential).
    pub debug_allowed: bool,
    /// Policy bit 18.
    pub migrate_ma_allowed: bool,
    /// Policy bit 16.
    pub smt_allowed: bool,
    /// VMPL.
    pub vmpl: u32,
    /// PLATFORM_INFO.
    pub platform_info: u64,
    /// MEASUREMENT.
    #[serde(with = "hex_serde")]
    pub measurement: [u8; 48],
    /// REPORT_DATA.
    #[serde(with = "hex_serde")]
    pub report_data: [u8; 64],
    /// HOST_DATA.
    #[serde(with = "hex_serde")]
    pub host_data: [u8; 32],
    /// FAMILY_ID.
    #[serde(with = "hex_serde")]
    pub family_id: [u8; 16],
    /// IMAGE_ID.
    #[serde(with = "hex_serde")]
    pub image_id: [u8; 16],
    /// ID_KEY_DIGEST.
    #[serde(with = "hex_serde")]
    pub id_key_digest: [u8; 48],
    /// AUTHOR_KEY_DIGEST.
    #[serde(with = "hex_serde")]
    pub author_key_digest: [u8; 48],
    /// REPORT_ID.
    #[serde(with = "hex_serde")]
    pub report_id: [u8; 32],
    /// CHIP_ID.
    #[serde(with = "hex_serde")]
    pub chip_id: [u8; 64],
    /// REPORTED_TCB (matches the VCEK).
    pub reported_tcb: Tcb,
    /// CURRENT_TCB.
    pub current_tcb: Tcb,
    /// COMMITTED_TCB.
    pub committed_tcb: Tcb,
    /// LAUNCH_TCB.
    pub launch_tcb: Tcb,
}

impl VerifiedSnp {
    fn from_report(r: &SnpReport, product: AmdProduct) -> VerifiedSnp {
        VerifiedSnp {
            product,
            version: r.version,
            guest_svn: r.guest_svn,
            policy: r.policy,
            debug_allowed: r.debug_allowed(),
            migrate_ma_allowed: r.migrate_ma_allowed(),
            smt_allowed: r.smt_allowed(),
            vmpl: r.vmpl,
            platform_info: r.platform_info,
            measurement: r.measurement,
            report_data: r.report_data,
            host_data: r.host_data,
            family_id: r.family_id,
            image_id: r.image_id,
            id_key_digest: r.id_key_digest,
            author_key_digest: r.author_key_digest,
            report_id: r.report_id,
            chip_id: r.chip_id,
            reported_tcb: Tcb::decode(r.reported_tcb, product),
            current_tcb: Tcb::decode(r.current_tcb, product),
            committed_tcb: Tcb::decode(r.committed_tcb, product),
            launch_tcb: Tcb::decode(r.launch_tcb, product),
        }
    }

    /// Apply a policy; [`Error::Policy`] says which rule failed.
    pub fn check_policy(&self, policy: &SnpPolicy) -> Result<()> {
        if self.debug_allowed && !policy.allow_debug {
            return Err(Error::Policy(
                "SNP guest policy allows debugging (bit 19): the host can read guest memory".into(),
            ));
        }
        if self.migrate_ma_allowed && !policy.allow_migration_agent {
            return Err(Error::Policy(
                "SNP guest policy allows a migration agent (bit 18)".into(),
            ));
        }
        if let Some(vmpl) = policy.required_vmpl
            && self.vmpl != vmpl
        {
            return Err(Error::Policy(format!(
                "report from VMPL {}, required {vmpl}",
                self.vmpl
            )));
        }
        if !policy.allowed_measurements.is_empty() && !policy.allowed_measurements.contains(&self.measurement)
        {
            return Err(Error::Policy(format!(
                "measurement {} is not allowed",
                hex::encode(self.measurement)
            )));
        }
        if let Some(min) = &policy.min_reported_tcb
            && !self.reported_tcb.at_least(min)
        {
            return Err(Error::Policy(format!(
                "reported TCB {:?} below minimum {:?}",
                self.reported_tcb, min
            )));
        }
        Ok(())
    }
}

/// What a verifier accepts beyond a valid signature. [`Default`] is strict: no debug, no
/// migration agent, any measurement, any VMPL, any TCB.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnpPolicy {
    /// Accept guests whose policy allows debugging.
    pub allow_debug: bool,
    /// Accept guests whose policy allows a migration agent.
    pub allow_migration_agent: bool,
    /// Require this VMPL.
    pub required_vmpl: Option<u32>,
    /// Accepted launch measurements (empty: any).
    pub allowed_measurements: Vec<[u8; 48]>,
    /// Minimum REPORTED_TCB, component by component.
    pub min_reported_tcb: Option<Tcb>,
}

/// VCEK TCB extensions (OIDs under 1.3.6.1.4.1.3704.1).
mod oid {
    use const_oid::ObjectIdentifier as Oid;
    pub(super) const PRODUCT_NAME: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.2");
    pub(super) const BL_SPL: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
    pub(super) const TEE_SPL: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
    pub(super) const SNP_SPL: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
    pub(super) const UCODE_SPL: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
    pub(super) const FMC_SPL: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
    pub(super) const HW_ID: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.4");
}

/// The AMD extensions of a VCEK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VcekExtensions {
    /// Product name (e.g. "Milan-B0").
    pub product_name: Option<String>,
    /// blSPL.
    pub bl_spl: Option<u8>,
    /// teeSPL.
    pub tee_spl: Option<u8>,
    /// snpSPL.
    pub snp_spl: Option<u8>,
    /// ucodeSPL.
    pub ucode_spl: Option<u8>,
    /// fmcSPL (Turin).
    pub fmc_spl: Option<u8>,
    /// hwID (the chip id; 64 bytes, 8 on Turin).
    pub hw_id: Option<Vec<u8>>,
}

impl VcekExtensions {
    /// Read the AMD extensions of a VCEK (DER).
    pub fn from_der(vcek_der: &[u8]) -> Result<VcekExtensions> {
        Self::from_cert(&x509::parse_der(vcek_der)?)
    }

    /// Read the AMD extensions of a parsed VCEK.
    pub fn from_cert(cert: &Certificate) -> Result<VcekExtensions> {
        let bad = |what: &str| Error::CertificateChain(format!("VCEK extension {what} malformed"));
        let mut out = VcekExtensions::default();
        for ext in cert.tbs_certificate.extensions.iter().flatten() {
            let v = ext.extn_value.as_bytes();
            let spl = || u8::from_der(v).map_err(|_| bad(&ext.extn_id.to_string()));
            match ext.extn_id {
                oid::PRODUCT_NAME => {
                    let name = Ia5StringRef::from_der(v)
                        .map(|s| s.as_str().to_owned())
                        .or_else(|_| std::str::from_utf8(v).map(str::to_owned))
                        .map_err(|_| bad("productName"))?;
                    out.product_name = Some(name);
                }
                oid::BL_SPL => out.bl_spl = Some(spl()?),
                oid::TEE_SPL => out.tee_spl = Some(spl()?),
                oid::SNP_SPL => out.snp_spl = Some(spl()?),
                oid::UCODE_SPL => out.ucode_spl = Some(spl()?),
                oid::FMC_SPL => out.fmc_spl = Some(spl()?),
                oid::HW_ID => {
                    // AMD stores the raw chip id; accept a DER OCTET STRING wrapper too.
                    let raw = if v.len() == 64 || v.len() == 8 {
                        v.to_vec()
                    } else {
                        der::asn1::OctetString::from_der(v)
                            .map(|o| o.as_bytes().to_vec())
                            .map_err(|_| bad("hwID"))?
                    };
                    out.hw_id = Some(raw);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Check these extensions against a report's REPORTED_TCB and CHIP_ID for `product`.
    pub fn check_report(&self, report: &SnpReport, product: AmdProduct) -> Result<()> {
        let mismatch = |what: &str, cert: Option<u8>, rep: u8| {
            Error::CertificateChain(format!(
                "VCEK {what} {cert:?} does not match the report's reported TCB {rep}"
            ))
        };
        if let Some(name) = &self.product_name
            && !name.starts_with(product.name())
        {
            return Err(Error::CertificateChain(format!(
                "VCEK is for product {name:?}, expected {}",
                product.name()
            )));
        }
        let tcb = Tcb::decode(report.reported_tcb, product);
        let pairs = [
            ("blSPL", self.bl_spl, tcb.bootloader),
            ("teeSPL", self.tee_spl, tcb.tee),
            ("snpSPL", self.snp_spl, tcb.snp),
            ("ucodeSPL", self.ucode_spl, tcb.microcode),
        ];
        for (what, cert, rep) in pairs {
            if cert != Some(rep) {
                return Err(mismatch(what, cert, rep));
            }
        }
        if let Some(fmc) = tcb.fmc
            && self.fmc_spl != Some(fmc)
        {
            return Err(mismatch("fmcSPL", self.fmc_spl, fmc));
        }
        if !report.chip_id_masked() {
            let hw = self
                .hw_id
                .as_deref()
                .ok_or_else(|| Error::CertificateChain("VCEK has no hwID extension".into()))?;
            // Turin VCEKs carry the first 8 bytes of the chip id.
            let want = match product {
                AmdProduct::Turin => report.chip_id.get(..hw.len().min(64)),
                _ => Some(&report.chip_id[..]),
            };
            if hw.is_empty() || want != Some(hw) {
                return Err(Error::CertificateChain(
                    "VCEK hwID does not match the report's CHIP_ID".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Verify a report against its VCEK (DER) and the pinned roots of `product`, at time `at`
/// (Unix seconds; the VCEK, ASK and ARK must be valid then).
///
/// In order: the expected REPORT_DATA (if given, else [`Error::ReportDataMismatch`]); the
/// signature algorithm and signing key (VCEK only, else [`Error::Unsupported`]); the chain VCEK
/// <- pinned ASK <- pinned ARK and the VCEK's validity at `at` ([`Error::CertificateChain`]);
/// the VCEK's TCB/hwID extensions against REPORTED_TCB/CHIP_ID ([`Error::CertificateChain`]);
/// the ECDSA P-384 signature ([`Error::BadSignature`]). Guest policy (debug etc.) is not judged
/// here: see [`VerifiedSnp::check_policy`].
pub fn verify_snp_report(
    report: &SnpReport,
    vcek_der: &[u8],
    product: AmdProduct,
    expected_report_data: Option<&[u8; 64]>,
    at: u64,
) -> Result<VerifiedSnp> {
    if let Some(expected) = expected_report_data
        && &report.report_data != expected
    {
        return Err(Error::ReportDataMismatch(format!(
            "SNP REPORT_DATA {} differs from the expected {}",
            hex::encode(report.report_data),
            hex::encode(expected)
        )));
    }
    if report.signature_algo != SIG_ALGO_ECDSA_P384_SHA384 {
        return Err(Error::Unsupported {
            what: "SNP signature algorithm",
            value: report.signature_algo.to_string(),
        });
    }
    match report.signing_key() {
        SigningKey::Vcek => {}
        other => {
            return Err(Error::Unsupported {
                what: "SNP signing key",
                value: format!("{other:?}"),
            });
        }
    }
    if report.mask_chip_key() {
        return Err(Error::BadSignature(
            "SNP report signature masked (MASK_CHIP_KEY)".into(),
        ));
    }
    let vcek = verify_vcek_chain(vcek_der, product, at)?;
    VcekExtensions::from_cert(&vcek)?.check_report(report, product)?;
    let key = x509::p384_verifying_key(&vcek)?;
    let sig = report.signature()?;
    key.verify(&report.signed_bytes, &sig)
        .map_err(|_| Error::BadSignature("SNP report signature does not verify with the VCEK".into()))?;
    Ok(VerifiedSnp::from_report(report, product))
}

/// Parse and verify in one step.
pub fn verify_snp_report_bytes(
    report: &[u8],
    vcek_der: &[u8],
    product: AmdProduct,
    expected_report_data: Option<&[u8; 64]>,
    at: u64,
) -> Result<VerifiedSnp> {
    verify_snp_report(
        &SnpReport::parse(report)?,
        vcek_der,
        product,
        expected_report_data,
        at,
    )
}

/// Check VCEK <- ASK <- ARK (pinned for `product`), each valid at `at` (Unix seconds); returns
/// the parsed VCEK.
pub fn verify_vcek_chain(vcek_der: &[u8], product: AmdProduct, at: u64) -> Result<Certificate> {
    let vcek = x509::parse_der(vcek_der)?;
    let (ask, ark) = product.ask_ark()?;
    x509::verify_chain(&[vcek.clone(), ask], &ark, Some(at))?;
    Ok(vcek)
}

/// Serde helper: fixed-size byte arrays as lowercase hex strings.
pub(crate) mod hex_serde {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(crate) fn serialize<S: Serializer, T: AsRef<[u8]>>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v.as_ref()))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(&s).map_err(D::Error::custom)?;
        <[u8; N]>::try_from(v).map_err(|v| D::Error::custom(format!("{} bytes, expected {N}", v.len())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// 2025-07-01T00:00:00Z: every VCEK, ASK and ARK here is valid then.
    const AT: u64 = 1_751_328_000;

    fn data(path: &str) -> Vec<u8> {
        std::fs::read(format!("{}/testdata/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn facts() -> Vec<(String, serde_json::Map<String, Value>)> {
        let v: Value = serde_json::from_slice(&data("facts.json")).unwrap();
        v.as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with("sev-snp/"))
            .map(|(k, v)| (k.clone(), v.as_object().unwrap().clone()))
            .collect()
    }

    const GOSEV: &str = "sev-snp/gosev_milan_debug_report.bin";
    const GOSEV_VCEK: &str = "sev-snp/gosev_milan_debug_vcek.der";
    const VIRTEE: &str = "sev-snp/virtee_milan_report.bin";
    const VIRTEE_VCEK: &str = "sev-snp/virtee_milan_vcek.der";

    fn verify(report: &[u8], vcek: &[u8], expected: Option<&[u8; 64]>) -> Result<VerifiedSnp> {
        verify_snp_report_bytes(report, vcek, AmdProduct::Milan, expected, AT)
    }

    #[test]
    fn every_fact_about_every_report_holds() {
        let facts = facts();
        assert_eq!(facts.len(), 2, "facts.json lists two SNP reports");
        for (file, f) in facts {
            let bytes = data(&file);
            let r = SnpReport::parse(&bytes).unwrap();
            let vcek = data(f["vcek"].as_str().unwrap());
            let v = verify(&bytes, &vcek, Some(&r.report_data)).unwrap();
            for (key, want) in &f {
                let s = want.as_str();
                match key.as_str() {
                    "kind" => assert_eq!(s, Some("sev-snp-report")),
                    "version" => assert_eq!(Some(u64::from(r.version)), want.as_u64(), "{file}"),
                    "file_len" => assert_eq!(Some(bytes.len() as u64), want.as_u64(), "{file}"),
                    "policy" => assert_eq!(Some(format!("{:#x}", r.policy).as_str()), s, "{file}"),
                    "debug_allowed" => {
                        assert_eq!(Some(r.debug_allowed()), want.as_bool(), "{file}");
                        assert_eq!(Some(v.debug_allowed), want.as_bool(), "{file}");
                    }
                    "vmpl" => assert_eq!(Some(u64::from(r.vmpl)), want.as_u64(), "{file}"),
                    "report_data" => assert_eq!(Some(hex::encode(v.report_data).as_str()), s),
                    "measurement" => assert_eq!(Some(hex::encode(v.measurement).as_str()), s),
                    "host_data" => assert_eq!(Some(hex::encode(v.host_data).as_str()), s),
                    "chip_id" => assert_eq!(Some(hex::encode(v.chip_id).as_str()), s),
                    "vcek" => {} // used above: the report verifies with it
                    other => panic!("{file}: fact {other:?} not checked by this test"),
                }
            }
            // Fields the facts do not list, read off the files with openssl/python.
            assert_eq!(r.signature_algo, SIG_ALGO_ECDSA_P384_SHA384);
            assert_eq!(r.signing_key(), SigningKey::Vcek);
            assert_eq!(r.cpuid_fam_mod_step, None);
            assert_eq!(r.reported_tcb, r.current_tcb);
            assert_eq!(r.reported_tcb, r.launch_tcb);
            assert_eq!(r.platform_info, 1);
        }
    }

    #[test]
    fn tcb_decoding_matches_vcek_extensions() {
        let r = SnpReport::parse(&data(VIRTEE)).unwrap();
        let t = Tcb::decode(r.reported_tcb, AmdProduct::Milan);
        assert_eq!(
            (t.bootloader, t.tee, t.snp, t.microcode, t.fmc),
            (3, 0, 8, 0x73, None)
        );
        let ext = VcekExtensions::from_der(&data(VIRTEE_VCEK)).unwrap();
        assert_eq!(ext.product_name.as_deref(), Some("Milan-B0"));
        assert_eq!(
            (ext.bl_spl, ext.tee_spl, ext.snp_spl, ext.ucode_spl),
            (Some(3), Some(0), Some(8), Some(0x73))
        );
        assert_eq!(ext.hw_id.as_deref(), Some(&r.chip_id[..]));
        let g = SnpReport::parse(&data(GOSEV)).unwrap();
        let t = Tcb::decode(g.reported_tcb, AmdProduct::Milan);
        assert_eq!((t.bootloader, t.tee, t.snp, t.microcode), (2, 0, 5, 0x44));
        assert_eq!(
            g.current_version,
            FirmwareVersion {
                build: 3,
                minor: 49,
                major: 1
            }
        );
        let turin = Tcb::decode(0x4800_0000_0403_0201, AmdProduct::Turin);
        assert_eq!(
            (turin.fmc, turin.bootloader, turin.tee, turin.snp, turin.microcode),
            (Some(1), 2, 3, 4, 0x48)
        );
    }

    #[test]
    fn debug_report_is_valid_but_rejected_by_a_strict_policy() {
        let v = verify(&data(GOSEV), &data(GOSEV_VCEK), None).unwrap();
        assert!(v.debug_allowed);
        assert!(matches!(
            v.check_policy(&SnpPolicy::default()),
            Err(Error::Policy(_))
        ));
        v.check_policy(&SnpPolicy {
            allow_debug: true,
            ..SnpPolicy::default()
        })
        .unwrap();
        let ok = verify(&data(VIRTEE), &data(VIRTEE_VCEK), None).unwrap();
        assert!(!ok.debug_allowed);
        ok.check_policy(&SnpPolicy::default()).unwrap();
        let strict = SnpPolicy {
            allowed_measurements: vec![ok.measurement],
            required_vmpl: Some(0),
            min_reported_tcb: Some(ok.reported_tcb),
            ..SnpPolicy::default()
        };
        ok.check_policy(&strict).unwrap();
        let other = SnpPolicy {
            allowed_measurements: vec![[0; 48]],
            ..SnpPolicy::default()
        };
        assert!(matches!(ok.check_policy(&other), Err(Error::Policy(_))));
        let newer = Tcb {
            snp: ok.reported_tcb.snp + 1,
            ..ok.reported_tcb
        };
        let min = SnpPolicy {
            min_reported_tcb: Some(newer),
            ..SnpPolicy::default()
        };
        assert!(matches!(ok.check_policy(&min), Err(Error::Policy(_))));
    }

    #[test]
    fn verified_fields_serialize_round_trip() {
        let v = verify(&data(VIRTEE), &data(VIRTEE_VCEK), None).unwrap();
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(
            json["measurement"],
            "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
        );
        assert_eq!(json["debug_allowed"], false);
        assert_eq!(json["product"], "Milan");
        let back: VerifiedSnp = serde_json::from_value(json).unwrap();
        assert_eq!(back, v);
    }

    fn flipped(bytes: &[u8], off: usize) -> Vec<u8> {
        let mut b = bytes.to_vec();
        b[off] ^= 0x01;
        b
    }

    #[test]
    fn tampering_is_rejected_with_specific_errors() {
        for (rep, vcek) in [(GOSEV, GOSEV_VCEK), (VIRTEE, VIRTEE_VCEK)] {
            let (bytes, vcek) = (data(rep), data(vcek));
            let orig = SnpReport::parse(&bytes).unwrap();
            // Signature R, S (low and high bytes), REPORT_DATA, MEASUREMENT, HOST_DATA,
            // POLICY (debug bit), guest SVN, family id, signed reserved area.
            for off in [
                0x2A0,
                0x2A0 + 47,
                0x2E8,
                0x2E8 + 20,
                0x50,
                0x8F,
                0x90,
                0xBF,
                0xC0,
                0x0A,
                0x04,
                0x10,
                0x250,
            ] {
                let b = flipped(&bytes, off);
                assert!(
                    matches!(verify(&b, &vcek, None), Err(Error::BadSignature(_))),
                    "{rep}: flip at {off:#x}"
                );
            }
            // With the expected REPORT_DATA given, a changed REPORT_DATA is a mismatch.
            for off in [0x50, 0x8F] {
                let b = flipped(&bytes, off);
                assert!(matches!(
                    verify(&b, &vcek, Some(&orig.report_data)),
                    Err(Error::ReportDataMismatch(_))
                ));
            }
            assert!(matches!(
                verify(&bytes, &vcek, Some(&[0; 64])),
                Err(Error::ReportDataMismatch(_))
            ));
            // R or S above 384 bits.
            assert!(matches!(
                verify(&flipped(&bytes, 0x2A0 + 60), &vcek, None),
                Err(Error::BadSignature(_))
            ));
            // REPORTED_TCB and CHIP_ID must match the VCEK.
            for off in [0x180, 0x186, 0x187, 0x1A0, 0x1DF] {
                assert!(
                    matches!(
                        verify(&flipped(&bytes, off), &vcek, None),
                        Err(Error::CertificateChain(_))
                    ),
                    "{rep}: flip at {off:#x}"
                );
            }
            // Signature algorithm, signing key.
            assert!(matches!(
                verify(&flipped(&bytes, 0x34), &vcek, None),
                Err(Error::Unsupported { .. })
            ));
            let mut vlek = bytes.clone();
            vlek[0x48] |= 1 << 2;
            assert!(matches!(
                verify(&vlek, &vcek, None),
                Err(Error::Unsupported { .. })
            ));
            // The VCEK: a flipped signature bit, the wrong product, a time outside its validity.
            let n = vcek.len();
            let bad_vcek = flipped(&vcek, n - 5);
            assert!(matches!(
                verify(&bytes, &bad_vcek, None),
                Err(Error::CertificateChain(_))
            ));
            assert!(matches!(
                verify_snp_report(&orig, &vcek, AmdProduct::Genoa, None, AT),
                Err(Error::CertificateChain(_))
            ));
            assert!(matches!(
                verify_snp_report(&orig, &vcek, AmdProduct::Turin, None, AT),
                Err(Error::CertificateChain(_))
            ));
            assert!(matches!(
                verify_snp_report(&orig, &vcek, AmdProduct::Milan, None, 4_000_000_000),
                Err(Error::CertificateChain(_))
            ));
        }
        // Each report with the other's VCEK.
        assert!(matches!(
            verify(&data(GOSEV), &data(VIRTEE_VCEK), None),
            Err(Error::CertificateChain(_))
        ));
        assert!(matches!(
            verify(&data(VIRTEE), &data(GOSEV_VCEK), None),
            Err(Error::CertificateChain(_))
        ));
    }

    #[test]
    fn layout_errors() {
        let bytes = data(VIRTEE);
        for v in [0u32, 1, 4, 6, 0xFFFF_FFFF] {
            let mut b = bytes.clone();
            b[..4].copy_from_slice(&v.to_le_bytes());
            assert!(
                matches!(SnpReport::parse(&b), Err(Error::Unsupported { .. })),
                "version {v}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(SnpReport::parse(&longer), Err(Error::Malformed { .. })));
        // Version 3 and 5 fields appear with the version (the layout is otherwise the same).
        let mut v5 = bytes.clone();
        v5[0] = 5;
        v5[0x188..0x18B].copy_from_slice(&[0x19, 0x11, 0x01]);
        v5[0x1F8] = 7;
        let r = SnpReport::parse(&v5).unwrap();
        assert_eq!(r.cpuid_fam_mod_step, Some((0x19, 0x11, 0x01)));
        assert_eq!(r.product_hint(), Some(AmdProduct::Genoa));
        assert_eq!(r.launch_mit_vector, Some(7));
        assert_eq!(r.current_mit_vector, Some(0));
    }

    #[test]
    fn truncation_at_every_offset_is_an_error() {
        let bytes = data(GOSEV);
        for n in 0..bytes.len() {
            assert!(matches!(
                SnpReport::parse(&bytes[..n]),
                Err(Error::Malformed { .. })
            ));
        }
    }

    #[test]
    fn pinned_roots_chain_and_match_their_fingerprints() {
        let fps = [
            (
                AmdProduct::Milan,
                "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
                "ARK-Milan",
                "SEV-Milan",
            ),
            (
                AmdProduct::Genoa,
                "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
                "ARK-Genoa",
                "SEV-Genoa",
            ),
            (
                AmdProduct::Turin,
                "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
                "ARK-Turin",
                "SEV-Turin",
            ),
        ];
        for (p, fp, ark_cn, ask_cn) in fps {
            let (ask, ark) = p.ask_ark().unwrap();
            assert_eq!(hex::encode(x509::fingerprint_sha256(&ark).unwrap()), fp);
            assert!(x509::subject_string(&ark).contains(&format!("CN={ark_cn}")));
            assert!(x509::subject_string(&ask).contains(&format!("CN={ask_cn}")));
            x509::verify_chain(&[ask], &ark, Some(AT)).unwrap();
        }
        // The testdata copies are the same bytes as the pinned ones.
        assert_eq!(
            data("sev-snp/amd_milan_ask_ark.pem"),
            AmdProduct::Milan.ask_ark_pem().as_bytes()
        );
        assert_eq!(
            data("sev-snp/amd_genoa_ask_ark.pem"),
            AmdProduct::Genoa.ask_ark_pem().as_bytes()
        );
        // ASKs do not cross products.
        let (milan_ask, _) = AmdProduct::Milan.ask_ark().unwrap();
        let (_, genoa_ark) = AmdProduct::Genoa.ask_ark().unwrap();
        assert!(x509::verify_chain(&[milan_ask], &genoa_ark, Some(AT)).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_reports_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), SNP_REPORT_LEN), version in prop_oneof![Just(2u32), Just(3), Just(5), any::<u32>()]) {
            bytes[..4].copy_from_slice(&version.to_le_bytes());
            if let Ok(r) = SnpReport::parse(&bytes) {
                let vcek = data(VIRTEE_VCEK);
                prop_assert!(verify_snp_report(&r, &vcek, AmdProduct::Milan, None, AT).is_err());
            }
        }

        #[test]
        fn random_lengths_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = SnpReport::parse(&bytes);
        }

        #[test]
        fn random_flips_of_a_real_report_fail_or_keep_the_fields(off in 0usize..SNP_REPORT_LEN, bit in 0u8..8) {
            let bytes = data(VIRTEE);
            let mut b = bytes.clone();
            b[off] ^= 1 << bit;
            let res = verify(&b, &data(VIRTEE_VCEK), None);
            if off < SNP_SIGNED_LEN || (0x2A0..0x2A0 + 48).contains(&off) || (0x2E8..0x2E8 + 48).contains(&off) {
                prop_assert!(res.is_err(), "flip at {off:#x} accepted");
            }
        }

        #[test]
        fn random_vceks_never_panic(vcek in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let r = SnpReport::parse(&data(VIRTEE)).unwrap();
            prop_assert!(verify_snp_report(&r, &vcek, AmdProduct::Milan, None, AT).is_err());
        }
    }
}
