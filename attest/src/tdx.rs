//! Intel TDX quotes (versions 4 and 5; TD report bodies of TDX 1.0 and 1.5) and their
//! verification.
//!
//! Layout (little-endian): a 48-byte header; in v5 a body type (2 = TDX 1.0, 3 = TDX 1.5) and
//! size; the TD report body (584 or 648 bytes); `u32` signature-data length; then the ECDSA
//! P-256 quote signature (r||s) over header||body, the raw attestation key (X||Y), and
//! certification data of type 6 (QE report certification data: the 384-byte QE report, its
//! signature by the PCK key, QE authentication data, and nested certification data of type 5,
//! the PEM PCK chain). Bytes after the signed data (padding) are ignored.
//!
//! [`TdxQuote::parse`] is a pure function of the bytes. [`verify_tdx_quote`] checks the quote
//! cryptographically against the pinned Intel SGX Root CA (`attest/roots/`), offline:
//! PCK chain, QE report signature, QE report binding, quote signature. With collateral
//! (TCB info, QE identity, CRLs in the PCCS JSON form), [`evaluate_tcb`] also computes the TCB
//! status; that part is delegated to the `dcap-qvl` crate (pure Rust, pinned version).

use der::{Decode, Reader, SliceReader, Tagged, asn1::Any, asn1::ObjectIdentifier};
use p256::ecdsa::{Signature, VerifyingKey, signature::Verifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::snp::hex_serde;
use crate::x509::{self, Certificate};

const FORMAT: &str = "TDX quote";

/// Header length.
pub const HEADER_LEN: usize = 48;
/// TD report body length, TDX 1.0 (v4, and v5 body type 2).
pub const TD10_BODY_LEN: usize = 584;
/// TD report body length, TDX 1.5 (v5 body type 3).
pub const TD15_BODY_LEN: usize = 648;
/// SGX enclave report (the QE report) length.
pub const ENCLAVE_REPORT_LEN: usize = 384;
/// Attestation key type: ECDSA-256 with P-256.
pub const ATT_KEY_TYPE_ECDSA_P256: u16 = 2;
/// TEE type of TDX.
pub const TEE_TYPE_TDX: u32 = 0x81;
/// Intel's QE vendor id.
pub const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];
/// Certification data type: QE report certification data.
pub const CERT_TYPE_QE_REPORT: u16 = 6;
/// Certification data type: PCK certificate chain (PEM).
pub const CERT_TYPE_PCK_CHAIN: u16 = 5;
/// TDATTRIBUTES bit 0: the TD is debuggable (not confidential).
pub const TD_ATTRIBUTES_DEBUG: u64 = 1;

/// The pinned Intel SGX Root CA (PEM, `attest/roots/intel_sgx_root_ca.pem`).
pub const INTEL_SGX_ROOT_CA_PEM: &str = include_str!("../roots/intel_sgx_root_ca.pem");

/// The pinned Intel SGX Root CA.
pub fn intel_sgx_root_ca() -> Result<Certificate> {
    x509::parse_pem(INTEL_SGX_ROOT_CA_PEM.as_bytes())
}

/// Quote header (48 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteHeader {
    /// Quote version (4 or 5).
    pub version: u16,
    /// Attestation key type (2 = ECDSA P-256).
    pub att_key_type: u16,
    /// TEE type (0x81 = TDX).
    pub tee_type: u32,
    /// QE SVN (bytes 8..10; "reserved" in some documents).
    pub qe_svn: u16,
    /// PCE SVN.
    pub pce_svn: u16,
    /// QE vendor id.
    pub qe_vendor_id: [u8; 16],
    /// User data (Intel's QE puts the PCK platform id material here).
    pub user_data: [u8; 20],
}

/// The TD report body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdReport {
    /// TEE_TCB_SVN.
    pub tee_tcb_svn: [u8; 16],
    /// MRSEAM.
    pub mr_seam: [u8; 48],
    /// MRSIGNERSEAM.
    pub mr_signer_seam: [u8; 48],
    /// SEAMATTRIBUTES.
    pub seam_attributes: [u8; 8],
    /// TDATTRIBUTES (bit 0 = DEBUG).
    pub td_attributes: [u8; 8],
    /// XFAM.
    pub xfam: [u8; 8],
    /// MRTD.
    pub mr_td: [u8; 48],
    /// MRCONFIGID.
    pub mr_config_id: [u8; 48],
    /// MROWNER.
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    pub mr_owner_config: [u8; 48],
    /// RTMR0..RTMR3.
    pub rtmr: [[u8; 48]; 4],
    /// REPORTDATA.
    pub report_data: [u8; 64],
    /// TEE_TCB_SVN2 (TDX 1.5 body only).
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// MRSERVICETD (TDX 1.5 body only).
    pub mr_service_td: Option<[u8; 48]>,
}

impl TdReport {
    /// TDATTRIBUTES as a little-endian integer.
    pub fn td_attributes_u64(&self) -> u64 {
        u64::from_le_bytes(self.td_attributes)
    }

    /// Whether the TD is debuggable (TDATTRIBUTES bit 0).
    pub fn debug(&self) -> bool {
        self.td_attributes_u64() & TD_ATTRIBUTES_DEBUG != 0
    }

    /// XFAM as a little-endian integer.
    pub fn xfam_u64(&self) -> u64 {
        u64::from_le_bytes(self.xfam)
    }
}

/// An SGX enclave report: here the Quoting Enclave's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnclaveReport {
    /// CPUSVN.
    pub cpu_svn: [u8; 16],
    /// MISCSELECT.
    pub misc_select: u32,
    /// ATTRIBUTES.
    pub attributes: [u8; 16],
    /// MRENCLAVE.
    pub mr_enclave: [u8; 32],
    /// MRSIGNER.
    pub mr_signer: [u8; 32],
    /// ISVPRODID.
    pub isv_prod_id: u16,
    /// ISVSVN.
    pub isv_svn: u16,
    /// REPORTDATA.
    pub report_data: [u8; 64],
}

impl EnclaveReport {
    /// Parse the 384-byte SGX report body.
    pub fn parse(bytes: &[u8]) -> Result<EnclaveReport> {
        if bytes.len() != ENCLAVE_REPORT_LEN {
            return Err(Error::malformed(
                FORMAT,
                format!("QE report of {} bytes", bytes.len()),
            ));
        }
        Ok(EnclaveReport {
            cpu_svn: arr(bytes, 0)?,
            misc_select: u32::from_le_bytes(arr(bytes, 16)?),
            attributes: arr(bytes, 48)?,
            mr_enclave: arr(bytes, 64)?,
            mr_signer: arr(bytes, 128)?,
            isv_prod_id: u16::from_le_bytes(arr(bytes, 256)?),
            isv_svn: u16::from_le_bytes(arr(bytes, 258)?),
            report_data: arr(bytes, 320)?,
        })
    }
}

/// A parsed TDX quote. Every field of the format; nothing verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxQuote {
    /// Header.
    pub header: QuoteHeader,
    /// v5 body type (2 = TDX 1.0, 3 = TDX 1.5); `None` for v4.
    pub body_type: Option<u16>,
    /// TD report body.
    pub report: TdReport,
    /// The declared length of the signature data.
    pub signed_data_len: u32,
    /// Quote signature, r||s big-endian.
    pub signature: [u8; 64],
    /// Attestation public key, X||Y.
    pub attestation_key: [u8; 64],
    /// The raw 384-byte QE report.
    pub qe_report_raw: Vec<u8>,
    /// The QE report, parsed.
    pub qe_report: EnclaveReport,
    /// The QE report signature by the PCK key, r||s.
    pub qe_report_signature: [u8; 64],
    /// QE authentication data.
    pub qe_auth_data: Vec<u8>,
    /// The PCK certificate chain, PEM (leaf, intermediate CA, root), as carried.
    pub pck_chain_pem: Vec<u8>,
    /// Header||(v5 type||size)||body: what the quote signature covers.
    pub signed_bytes: Vec<u8>,
    /// Length of the quote without trailing padding.
    pub quote_len: usize,
}

fn arr<const N: usize>(b: &[u8], off: usize) -> Result<[u8; N]> {
    off.checked_add(N)
        .and_then(|end| b.get(off..end))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or_else(|| Error::malformed(FORMAT, format!("{N}-byte field at {off:#x} out of range")))
}

/// A bounds-checked little-endian cursor.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                Error::malformed(
                    FORMAT,
                    format!(
                        "{what}: {n} bytes at {:#x} past the end ({:#x})",
                        self.pos,
                        self.b.len()
                    ),
                )
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn fixed<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        <[u8; N]>::try_from(s).map_err(|_| Error::malformed(FORMAT, what.to_string()))
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        self.fixed::<2>(what).map(u16::from_le_bytes)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        self.fixed::<4>(what).map(u32::from_le_bytes)
    }
}

impl TdxQuote {
    /// Parse a quote (v4, or v5 with body type 2 or 3). Trailing bytes after the signed data
    /// are ignored; every length inside must fit exactly.
    pub fn parse(bytes: &[u8]) -> Result<TdxQuote> {
        let mut c = Cursor { b: bytes, pos: 0 };
        let header = QuoteHeader {
            version: c.u16("version")?,
            att_key_type: c.u16("attestation key type")?,
            tee_type: c.u32("TEE type")?,
            qe_svn: c.u16("QE SVN")?,
            pce_svn: c.u16("PCE SVN")?,
            qe_vendor_id: c.fixed("QE vendor id")?,
            user_data: c.fixed("user data")?,
        };
        let (body_type, body_len) = match header.version {
            4 => (None, TD10_BODY_LEN),
            5 => {
                let t = c.u16("body type")?;
                let size = c.u32("body size")?;
                let want = match t {
                    2 => TD10_BODY_LEN,
                    3 => TD15_BODY_LEN,
                    other => {
                        return Err(Error::Unsupported {
                            what: "TDX quote v5 body type",
                            value: other.to_string(),
                        });
                    }
                };
                if size as usize != want {
                    return Err(Error::malformed(
                        FORMAT,
                        format!("body type {t} with size {size}, expected {want}"),
                    ));
                }
                (Some(t), want)
            }
            v => {
                return Err(Error::Unsupported {
                    what: "TDX quote version",
                    value: v.to_string(),
                });
            }
        };
        let body = c.take(body_len, "TD report body")?;
        let signed_bytes = bytes.get(..c.pos).map(<[u8]>::to_vec).unwrap_or_default();
        let mut rtmr = [[0u8; 48]; 4];
        for (i, r) in rtmr.iter_mut().enumerate() {
            *r = arr(body, 0x148 + 48 * i)?;
        }
        let td15 = body_len == TD15_BODY_LEN;
        let report = TdReport {
            tee_tcb_svn: arr(body, 0x00)?,
            mr_seam: arr(body, 0x10)?,
            mr_signer_seam: arr(body, 0x40)?,
            seam_attributes: arr(body, 0x70)?,
            td_attributes: arr(body, 0x78)?,
            xfam: arr(body, 0x80)?,
            mr_td: arr(body, 0x88)?,
            mr_config_id: arr(body, 0xB8)?,
            mr_owner: arr(body, 0xE8)?,
            mr_owner_config: arr(body, 0x118)?,
            rtmr,
            report_data: arr(body, 0x208)?,
            tee_tcb_svn2: if td15 {
                Some(arr(body, TD10_BODY_LEN)?)
            } else {
                None
            },
            mr_service_td: if td15 {
                Some(arr(body, TD10_BODY_LEN + 16)?)
            } else {
                None
            },
        };

        let signed_data_len = c.u32("signature data length")?;
        let sig_data = c.take(signed_data_len as usize, "signature data")?;
        let quote_len = c.pos;
        let mut s = Cursor { b: sig_data, pos: 0 };
        let signature = s.fixed("quote signature")?;
        let attestation_key = s.fixed("attestation key")?;
        let cert_type = s.u16("certification data type")?;
        if cert_type != CERT_TYPE_QE_REPORT {
            return Err(Error::Unsupported {
                what: "TDX certification data type",
                value: cert_type.to_string(),
            });
        }
        let cert_len = s.u32("certification data size")?;
        let cert = s.take(cert_len as usize, "certification data")?;
        if s.pos != sig_data.len() {
            return Err(Error::malformed(
                FORMAT,
                format!("{} bytes after the certification data", sig_data.len() - s.pos),
            ));
        }
        let mut q = Cursor { b: cert, pos: 0 };
        let qe_report_raw = q.take(ENCLAVE_REPORT_LEN, "QE report")?.to_vec();
        let qe_report = EnclaveReport::parse(&qe_report_raw)?;
        let qe_report_signature = q.fixed("QE report signature")?;
        let auth_len = q.u16("QE auth data size")?;
        let qe_auth_data = q.take(usize::from(auth_len), "QE auth data")?.to_vec();
        let inner_type = q.u16("PCK certification data type")?;
        if inner_type != CERT_TYPE_PCK_CHAIN {
            return Err(Error::Unsupported {
                what: "TDX QE certification data type",
                value: inner_type.to_string(),
            });
        }
        let inner_len = q.u32("PCK certification data size")?;
        let pck_chain_pem = q.take(inner_len as usize, "PCK certificate chain")?.to_vec();
        if q.pos != cert.len() {
            return Err(Error::malformed(
                FORMAT,
                format!("{} bytes after the PCK certificate chain", cert.len() - q.pos),
            ));
        }
        Ok(TdxQuote {
            header,
            body_type,
            report,
            signed_data_len,
            signature,
            attestation_key,
            qe_report_raw,
            qe_report,
            qe_report_signature,
            qe_auth_data,
            pck_chain_pem,
            signed_bytes,
            quote_len,
        })
    }

    /// The PCK chain, parsed (leaf first).
    pub fn pck_chain(&self) -> Result<Vec<Certificate>> {
        x509::parse_pem_bundle(&self.pck_chain_pem)
    }
}

/// SGX extensions of a PCK certificate (OID 1.2.840.113741.1.13.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PckExtensions {
    /// PPID (.1).
    #[serde(with = "hex_serde")]
    pub ppid: [u8; 16],
    /// SGX TCB components 1..16 (.2.1 - .2.16).
    #[serde(with = "hex_serde")]
    pub sgx_tcb_components: [u8; 16],
    /// PCESVN (.2.17).
    pub pce_svn: u16,
    /// CPUSVN (.2.18).
    #[serde(with = "hex_serde")]
    pub cpu_svn: [u8; 16],
    /// PCE-ID (.3).
    #[serde(with = "hex_serde")]
    pub pce_id: [u8; 2],
    /// FMSPC (.4).
    #[serde(with = "hex_serde")]
    pub fmspc: [u8; 6],
    /// SGX type (.5): 0 standard, 1 scalable, 2 scalable with integrity.
    pub sgx_type: u8,
}

const SGX_EXTENSIONS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113741.1.13.1");

impl PckExtensions {
    /// Read the SGX extensions of a PCK certificate.
    pub fn from_cert(cert: &Certificate) -> Result<PckExtensions> {
        let v = x509::extension_value(cert, &SGX_EXTENSIONS)
            .ok_or_else(|| Error::CertificateChain("PCK certificate has no SGX extensions".into()))?;
        let bad = |what: &str| Error::malformed("PCK SGX extensions", what.to_string());
        let mut ppid = None;
        let mut comps = [None::<u8>; 16];
        let mut pce_svn = None;
        let mut cpu_svn = None;
        let mut pce_id = None;
        let mut fmspc = None;
        let mut sgx_type = None;
        for (oid, val) in oid_value_pairs(v).map_err(|_| bad("not a SEQUENCE OF (OID, value)"))? {
            let arcs: Vec<u32> = oid.arcs().collect();
            let Some(rest) = arcs.strip_prefix(&[1, 2, 840, 113741, 1, 13, 1][..]) else {
                continue;
            };
            match rest {
                [1] => ppid = Some(octets::<16>(&val).ok_or_else(|| bad("PPID"))?),
                [2] => {
                    for (oid2, val2) in oid_value_pairs_any(&val).map_err(|_| bad("TCB"))? {
                        let arcs2: Vec<u32> = oid2.arcs().collect();
                        match arcs2.strip_prefix(&[1, 2, 840, 113741, 1, 13, 1, 2][..]) {
                            Some([n @ 1..=16]) => {
                                let i = (*n - 1) as usize;
                                comps[i] = Some(val2.decode_as::<u8>().map_err(|_| bad("TCB component"))?);
                            }
                            Some([17]) => {
                                pce_svn = Some(val2.decode_as::<u16>().map_err(|_| bad("PCESVN"))?);
                            }
                            Some([18]) => cpu_svn = Some(octets::<16>(&val2).ok_or_else(|| bad("CPUSVN"))?),
                            _ => {}
                        }
                    }
                }
                [3] => pce_id = Some(octets::<2>(&val).ok_or_else(|| bad("PCE-ID"))?),
                [4] => fmspc = Some(octets::<6>(&val).ok_or_else(|| bad("FMSPC"))?),
                [5] => {
                    let e = der::asn1::AnyRef::from(&val);
                    let t = e.value().first().copied().filter(|_| e.value().len() == 1);
                    sgx_type = Some(t.ok_or_else(|| bad("SGX type"))?);
                }
                _ => {}
            }
        }
        let mut sgx_tcb_components = [0u8; 16];
        for (d, s) in sgx_tcb_components.iter_mut().zip(comps) {
            *d = s.ok_or_else(|| bad("missing TCB component"))?;
        }
        Ok(PckExtensions {
            ppid: ppid.ok_or_else(|| bad("missing PPID"))?,
            sgx_tcb_components,
            pce_svn: pce_svn.ok_or_else(|| bad("missing PCESVN"))?,
            cpu_svn: cpu_svn.ok_or_else(|| bad("missing CPUSVN"))?,
            pce_id: pce_id.ok_or_else(|| bad("missing PCE-ID"))?,
            fmspc: fmspc.ok_or_else(|| bad("missing FMSPC"))?,
            sgx_type: sgx_type.ok_or_else(|| bad("missing SGX type"))?,
        })
    }
}

fn octets<const N: usize>(v: &Any) -> Option<[u8; N]> {
    let o = v.decode_as::<der::asn1::OctetString>().ok()?;
    <[u8; N]>::try_from(o.as_bytes()).ok()
}

/// Decode `SEQUENCE OF SEQUENCE { OID, ANY }` from DER.
fn oid_value_pairs(der_bytes: &[u8]) -> der::Result<Vec<(ObjectIdentifier, Any)>> {
    let outer = Any::from_der(der_bytes)?;
    oid_value_pairs_any(&outer)
}

fn oid_value_pairs_any(outer: &Any) -> der::Result<Vec<(ObjectIdentifier, Any)>> {
    outer.tag().assert_eq(der::Tag::Sequence)?;
    let mut r = SliceReader::new(outer.value())?;
    let mut out = Vec::new();
    while !r.is_finished() {
        let item: Any = r.decode()?;
        item.tag().assert_eq(der::Tag::Sequence)?;
        let mut ir = SliceReader::new(item.value())?;
        let oid: ObjectIdentifier = ir.decode()?;
        let val: Any = ir.decode()?;
        ir.finish(())?;
        out.push((oid, val));
    }
    Ok(out)
}

/// TCB status from Intel collateral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TcbStatus {
    /// The platform is patched.
    UpToDate,
    /// Patched, but software hardening is needed (see the advisories).
    SWHardeningNeeded,
    /// Patched, but the platform configuration needs a change.
    ConfigurationNeeded,
    /// Both of the above.
    ConfigurationAndSWHardeningNeeded,
    /// A newer TCB exists.
    OutOfDate,
    /// Out of date and configuration needed.
    OutOfDateConfigurationNeeded,
    /// Keys revoked.
    Revoked,
    /// TDX 1.5: launched on an out-of-date TCB, but the current TCB (after a TD-preserving
    /// module update) is not out of date: relaunch the TD.
    TDRelaunchAdvised,
    /// [`TcbStatus::TDRelaunchAdvised`] where configuration is needed too.
    TDRelaunchAdvisedConfigurationNeeded,
}

impl TcbStatus {
    /// Parse Intel's spelling ("UpToDate", ...).
    pub fn from_intel(s: &str) -> Option<TcbStatus> {
        Some(match s {
            "UpToDate" => TcbStatus::UpToDate,
            "SWHardeningNeeded" => TcbStatus::SWHardeningNeeded,
            "ConfigurationNeeded" => TcbStatus::ConfigurationNeeded,
            "ConfigurationAndSWHardeningNeeded" => TcbStatus::ConfigurationAndSWHardeningNeeded,
            "OutOfDate" => TcbStatus::OutOfDate,
            "OutOfDateConfigurationNeeded" => TcbStatus::OutOfDateConfigurationNeeded,
            "Revoked" => TcbStatus::Revoked,
            "TDRelaunchAdvised" => TcbStatus::TDRelaunchAdvised,
            "TDRelaunchAdvisedConfigurationNeeded" => TcbStatus::TDRelaunchAdvisedConfigurationNeeded,
            _ => return None,
        })
    }
}

/// The outcome of TCB evaluation against collateral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcbEvaluation {
    /// Final status (platform and QE converged, as Intel's QVL does).
    pub status: TcbStatus,
    /// Intel security advisories (INTEL-SA-xxxxx) that apply.
    pub advisory_ids: Vec<String>,
    /// Platform (TCB info) status alone.
    pub platform_status: TcbStatus,
    /// QE identity status alone.
    pub qe_status: TcbStatus,
}

/// Collateral for one quote: the PCCS JSON form (`pck_crl_issuer_chain`, `root_ca_crl` and
/// `pck_crl` as hex DER, `tcb_info` and `qe_identity` as the signed JSON text with hex
/// signatures, and the issuer chains as PEM), as `dcap-qvl` and PCCS clients write it.
#[derive(Debug, Clone)]
pub struct TdxCollateral {
    inner: dcap_qvl::QuoteCollateralV3,
    tcb_info: CollateralBody,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CollateralBody {
    id: String,
    fmspc: String,
    pce_id: String,
    issue_date: String,
    next_update: String,
}

impl TdxCollateral {
    /// Parse the JSON form.
    pub fn from_json(bytes: &[u8]) -> Result<TdxCollateral> {
        let inner: dcap_qvl::QuoteCollateralV3 =
            serde_json::from_slice(bytes).map_err(|e| Error::malformed("TDX collateral", e.to_string()))?;
        let tcb_info: CollateralBody = serde_json::from_str(&inner.tcb_info)
            .map_err(|e| Error::malformed("TDX TCB info", e.to_string()))?;
        Ok(TdxCollateral { inner, tcb_info })
    }

    /// The TCB info's FMSPC (hex, upper case as Intel writes it).
    pub fn fmspc(&self) -> &str {
        &self.tcb_info.fmspc
    }

    /// The TCB info's validity window (issueDate, nextUpdate), RFC 3339.
    pub fn tcb_info_window(&self) -> (&str, &str) {
        (&self.tcb_info.issue_date, &self.tcb_info.next_update)
    }
}

/// The verified content of a TDX quote, serializable (byte strings as lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedTdx {
    /// Quote version.
    pub version: u16,
    /// v5 body type.
    pub body_type: Option<u16>,
    /// TDATTRIBUTES (little-endian integer).
    pub td_attributes: u64,
    /// TDATTRIBUTES bit 0.
    pub debug: bool,
    /// XFAM (little-endian integer).
    pub xfam: u64,
    /// TEE_TCB_SVN.
    #[serde(with = "hex_serde")]
    pub tee_tcb_svn: [u8; 16],
    /// MRSEAM.
    #[serde(with = "hex_serde")]
    pub mr_seam: [u8; 48],
    /// MRSIGNERSEAM.
    #[serde(with = "hex_serde")]
    pub mr_signer_seam: [u8; 48],
    /// MRTD.
    #[serde(with = "hex_serde")]
    pub mr_td: [u8; 48],
    /// MRCONFIGID.
    #[serde(with = "hex_serde")]
    pub mr_config_id: [u8; 48],
    /// MROWNER.
    #[serde(with = "hex_serde")]
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    #[serde(with = "hex_serde")]
    pub mr_owner_config: [u8; 48],
    /// RTMR0.
    #[serde(with = "hex_serde")]
    pub rtmr0: [u8; 48],
    /// RTMR1.
    #[serde(with = "hex_serde")]
    pub rtmr1: [u8; 48],
    /// RTMR2.
    #[serde(with = "hex_serde")]
    pub rtmr2: [u8; 48],
    /// RTMR3.
    #[serde(with = "hex_serde")]
    pub rtmr3: [u8; 48],
    /// REPORTDATA.
    #[serde(with = "hex_serde")]
    pub report_data: [u8; 64],
    /// MRSERVICETD (TDX 1.5 body), hex.
    pub mr_service_td: Option<String>,
    /// The PCK certificate's SGX extensions (FMSPC, PCE-ID, TCB components).
    pub pck: PckExtensions,
    /// TCB status, when collateral was given.
    pub tcb: Option<TcbEvaluation>,
}

impl VerifiedTdx {
    fn from_quote(q: &TdxQuote, pck: PckExtensions) -> VerifiedTdx {
        let r = &q.report;
        VerifiedTdx {
            version: q.header.version,
            body_type: q.body_type,
            td_attributes: r.td_attributes_u64(),
            debug: r.debug(),
            xfam: r.xfam_u64(),
            tee_tcb_svn: r.tee_tcb_svn,
            mr_seam: r.mr_seam,
            mr_signer_seam: r.mr_signer_seam,
            mr_td: r.mr_td,
            mr_config_id: r.mr_config_id,
            mr_owner: r.mr_owner,
            mr_owner_config: r.mr_owner_config,
            rtmr0: r.rtmr[0],
            rtmr1: r.rtmr[1],
            rtmr2: r.rtmr[2],
            rtmr3: r.rtmr[3],
            report_data: r.report_data,
            mr_service_td: r.mr_service_td.map(hex::encode),
            pck,
            tcb: None,
        }
    }

    /// Apply a policy; [`Error::Policy`] says which rule failed.
    pub fn check_policy(&self, policy: &TdxPolicy) -> Result<()> {
        if self.debug && !policy.allow_debug {
            return Err(Error::Policy("TD is debuggable (TDATTRIBUTES bit 0)".into()));
        }
        if !policy.allowed_mr_td.is_empty() && !policy.allowed_mr_td.contains(&self.mr_td) {
            return Err(Error::Policy(format!(
                "MRTD {} is not allowed",
                hex::encode(self.mr_td)
            )));
        }
        for (i, (want, got)) in policy
            .rtmr
            .iter()
            .zip([self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3])
            .enumerate()
        {
            if let Some(want) = want
                && *want != got
            {
                return Err(Error::Policy(format!(
                    "RTMR{i} {} is not the expected value",
                    hex::encode(got)
                )));
            }
        }
        if !policy.allowed_tcb_statuses.is_empty() {
            let status =
                self.tcb.as_ref().map(|t| t.status).ok_or_else(|| {
                    Error::Policy("TCB status required but no collateral was evaluated".into())
                })?;
            if !policy.allowed_tcb_statuses.contains(&status) {
                return Err(Error::Policy(format!("TCB status {status:?} is not allowed")));
            }
        }
        Ok(())
    }
}

/// What a verifier accepts beyond valid signatures. [`Default`] is strict on debug and
/// otherwise open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TdxPolicy {
    /// Accept debuggable TDs.
    pub allow_debug: bool,
    /// Accepted MRTDs (empty: any).
    pub allowed_mr_td: Vec<[u8; 48]>,
    /// Expected RTMR0..3 (`None`: any).
    pub rtmr: [Option<[u8; 48]>; 4],
    /// Accepted TCB statuses (empty: any, and collateral not required).
    pub allowed_tcb_statuses: Vec<TcbStatus>,
}

/// Verify a parsed quote offline against the pinned Intel SGX Root CA at `at` (Unix seconds).
///
/// In order: header (attestation key type, TEE type, QE vendor: [`Error::Unsupported`]); the
/// expected REPORTDATA ([`Error::ReportDataMismatch`]); the PCK chain to the pinned root with
/// validity at `at` ([`Error::CertificateChain`]); the QE report signature by the PCK leaf
/// ([`Error::BadSignature`]); the QE report binding ([`Error::QeReportBinding`]); the quote
/// signature by the attestation key ([`Error::BadSignature`]). No CRL or TCB check: that needs
/// collateral ([`verify_tdx_quote_with_collateral`]). TD attributes are not judged here: see
/// [`VerifiedTdx::check_policy`].
pub fn verify_tdx_quote(
    quote: &TdxQuote,
    expected_report_data: Option<&[u8; 64]>,
    at: u64,
) -> Result<VerifiedTdx> {
    let h = &quote.header;
    if h.att_key_type != ATT_KEY_TYPE_ECDSA_P256 {
        return Err(Error::Unsupported {
            what: "TDX attestation key type",
            value: h.att_key_type.to_string(),
        });
    }
    if h.tee_type != TEE_TYPE_TDX {
        return Err(Error::Unsupported {
            what: "TEE type",
            value: format!("{:#x}", h.tee_type),
        });
    }
    if h.qe_vendor_id != INTEL_QE_VENDOR_ID {
        return Err(Error::Unsupported {
            what: "QE vendor",
            value: hex::encode(h.qe_vendor_id),
        });
    }
    if let Some(expected) = expected_report_data
        && &quote.report.report_data != expected
    {
        return Err(Error::ReportDataMismatch(format!(
            "TDX REPORTDATA {} differs from the expected {}",
            hex::encode(quote.report.report_data),
            hex::encode(expected)
        )));
    }
    // PCK chain to the pinned root.
    let chain = quote.pck_chain()?;
    let root = intel_sgx_root_ca()?;
    x509::verify_chain(&chain, &root, Some(at))?;
    let leaf = chain
        .first()
        .ok_or_else(|| Error::CertificateChain("empty PCK chain".into()))?;
    let pck = PckExtensions::from_cert(leaf)?;
    // QE report signed by the PCK key.
    let pck_key = x509::p256_verifying_key(leaf)?;
    let qe_sig = Signature::from_slice(&quote.qe_report_signature)
        .map_err(|_| Error::BadSignature("QE report signature is not a P-256 signature".into()))?;
    pck_key
        .verify(&quote.qe_report_raw, &qe_sig)
        .map_err(|_| Error::BadSignature("QE report signature does not verify with the PCK key".into()))?;
    // QE report binds the attestation key and the QE authentication data.
    let mut h = Sha256::new();
    h.update(quote.attestation_key);
    h.update(&quote.qe_auth_data);
    let digest = h.finalize();
    let rd = &quote.qe_report.report_data;
    if rd[..32] != digest[..] || rd[32..].iter().any(|&b| b != 0) {
        return Err(Error::QeReportBinding(
            "QE REPORTDATA is not SHA-256(attestation key || QE auth data) || 0^32".into(),
        ));
    }
    // Quote signed by the attestation key.
    let mut sec1 = [0x04u8; 65];
    sec1[1..].copy_from_slice(&quote.attestation_key);
    let ak = VerifyingKey::from_sec1_bytes(&sec1)
        .map_err(|_| Error::BadSignature("attestation key is not a P-256 point".into()))?;
    let sig = Signature::from_slice(&quote.signature)
        .map_err(|_| Error::BadSignature("quote signature is not a P-256 signature".into()))?;
    ak.verify(&quote.signed_bytes, &sig).map_err(|_| {
        Error::BadSignature("TDX quote signature does not verify with the attestation key".into())
    })?;
    Ok(VerifiedTdx::from_quote(quote, pck))
}

/// Parse and verify offline in one step (see [`verify_tdx_quote`]).
pub fn verify_tdx_quote_bytes(
    quote: &[u8],
    expected_report_data: Option<&[u8; 64]>,
    at: u64,
) -> Result<VerifiedTdx> {
    verify_tdx_quote(&TdxQuote::parse(quote)?, expected_report_data, at)
}

/// [`verify_tdx_quote`], then the TCB status from `collateral` at `at` ([`evaluate_tcb`]).
pub fn verify_tdx_quote_with_collateral(
    quote: &[u8],
    collateral: &TdxCollateral,
    expected_report_data: Option<&[u8; 64]>,
    at: u64,
) -> Result<VerifiedTdx> {
    let parsed = TdxQuote::parse(quote)?;
    let mut v = verify_tdx_quote(&parsed, expected_report_data, at)?;
    if collateral.tcb_info.id != "TDX" {
        return Err(Error::Collateral(format!(
            "TCB info id {:?}, expected \"TDX\"",
            collateral.tcb_info.id
        )));
    }
    let fmspc = hex::encode_upper(v.pck.fmspc);
    if !collateral.tcb_info.fmspc.eq_ignore_ascii_case(&fmspc) {
        return Err(Error::Collateral(format!(
            "TCB info is for FMSPC {}, the PCK certificate says {fmspc}",
            collateral.tcb_info.fmspc
        )));
    }
    let pce_id = hex::encode_upper(v.pck.pce_id);
    if !collateral.tcb_info.pce_id.eq_ignore_ascii_case(&pce_id) {
        return Err(Error::Collateral(format!(
            "TCB info is for PCE-ID {}, the PCK certificate says {pce_id}",
            collateral.tcb_info.pce_id
        )));
    }
    v.tcb = Some(evaluate_tcb(quote, collateral, at)?);
    Ok(v)
}

/// The TCB status of a quote from collateral at `at` (Unix seconds), by `dcap-qvl`: TCB info
/// and QE identity signatures (TCB signing certificate chained to the pinned root), their
/// validity windows (issueDate..nextUpdate), certificate validity, the root and PCK CRLs (PCK
/// leaf and intermediate not revoked), FMSPC match, the QE identity (MRSIGNER, ISVPRODID,
/// masked MISCSELECT/ATTRIBUTES, ISVSVN level), the TDX module identity (MRSIGNERSEAM,
/// SEAMATTRIBUTES), and the TCB level (SGX components + PCESVN from the PCK certificate, TDX
/// components from TEE_TCB_SVN, TEE_TCB_SVN2 for TDX 1.5), converged with the QE status.
/// Every failure, expiry included, is [`Error::Collateral`]; a revoked TCB too.
pub fn evaluate_tcb(quote: &[u8], collateral: &TdxCollateral, at: u64) -> Result<TcbEvaluation> {
    let root_der = x509::to_der(&intel_sgx_root_ca()?)?;
    // Debug TDs and service TDs are policy questions answered by `VerifiedTdx::check_policy`,
    // not collateral ones.
    let report = dcap_qvl::verify::QuoteVerifier::new(root_der)
        .allow_debug(true)
        .allow_service_td(true)
        .verify(quote, &collateral.inner, at)
        .map_err(|e| Error::Collateral(format!("{e:#}")))?;
    let status = |s: &str| {
        TcbStatus::from_intel(s).ok_or_else(|| Error::Collateral(format!("unknown TCB status {s:?}")))
    };
    let eval = TcbEvaluation {
        status: status(&report.status)?,
        advisory_ids: report.advisory_ids,
        platform_status: status(&report.platform_status.status.to_string())?,
        qe_status: status(&report.qe_status.status.to_string())?,
    };
    if eval.status == TcbStatus::Revoked {
        return Err(Error::Collateral("TCB status Revoked".into()));
    }
    Ok(eval)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// 2025-07-01T00:00:00Z: inside the dcap-qvl collateral window (2025-06-19..07-19).
    const AT: u64 = 1_751_328_000;
    /// 2026-03-01T00:00:00Z: every PCK chain here is valid then (the v5 sample's PCK
    /// certificate only from 2026-01-27).
    const OFFLINE_AT: u64 = 1_772_323_200;
    /// 2025-06-19T10:16:03Z, the TCB info issueDate, and 2025-07-19T10:16:03Z, its nextUpdate.
    const TCB_ISSUE: u64 = 1_750_328_163;
    const TCB_NEXT: u64 = 1_752_920_163;

    const DCAP: &str = "tdx/dcapqvl_v4.dat";
    const SPR: &str = "tdx/gotdx_v4_spr_e4.dat";
    const V5: &str = "tdx/gotdx_v5_sample.dat";
    const ALL: [&str; 3] = [DCAP, SPR, V5];

    fn data(path: &str) -> Vec<u8> {
        std::fs::read(format!("{}/testdata/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn collateral() -> TdxCollateral {
        TdxCollateral::from_json(&data("tdx/dcapqvl_v4_collateral.json")).unwrap()
    }

    #[test]
    fn every_fact_about_every_quote_holds() {
        let v: Value = serde_json::from_slice(&data("facts.json")).unwrap();
        let facts: Vec<_> = v
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with("tdx/"))
            .collect();
        assert_eq!(facts.len(), 3);
        for (file, f) in facts {
            let bytes = data(file);
            let q = TdxQuote::parse(&bytes).unwrap();
            let v = verify_tdx_quote(&q, Some(&q.report.report_data), OFFLINE_AT).unwrap();
            for (key, want) in f.as_object().unwrap() {
                let s = want.as_str();
                let hexed = |b: &[u8]| Some(hex::encode(b));
                match key.as_str() {
                    "kind" => assert_eq!(s, Some("tdx-quote")),
                    "version" => assert_eq!(Some(u64::from(q.header.version)), want.as_u64(), "{file}"),
                    "body_type" => assert_eq!(q.body_type.map(u64::from), want.as_u64(), "{file}"),
                    "file_len" => assert_eq!(Some(bytes.len() as u64), want.as_u64(), "{file}"),
                    "tee_type" => assert_eq!(Some(format!("{:#x}", q.header.tee_type).as_str()), s),
                    "signed_data_len" => assert_eq!(Some(u64::from(q.signed_data_len)), want.as_u64()),
                    "quote_len_without_padding" => assert_eq!(Some(q.quote_len as u64), want.as_u64()),
                    "td_attributes" => {
                        assert_eq!(Some(format!("{:#x}", v.td_attributes).as_str()), s, "{file}")
                    }
                    "debug" => {
                        assert_eq!(Some(v.debug), want.as_bool(), "{file}");
                        assert_eq!(Some(q.report.debug()), want.as_bool(), "{file}");
                    }
                    "mrtd" => assert_eq!(hexed(&v.mr_td).as_deref(), s, "{file}"),
                    "rtmr0" => assert_eq!(hexed(&v.rtmr0).as_deref(), s, "{file}"),
                    "rtmr1" => assert_eq!(hexed(&v.rtmr1).as_deref(), s, "{file}"),
                    "rtmr2" => assert_eq!(hexed(&v.rtmr2).as_deref(), s, "{file}"),
                    "rtmr3" => assert_eq!(hexed(&v.rtmr3).as_deref(), s, "{file}"),
                    "report_data" => assert_eq!(hexed(&v.report_data).as_deref(), s, "{file}"),
                    other => panic!("{file}: fact {other:?} not checked by this test"),
                }
            }
            // Beyond facts.json: what the notes and the files say.
            assert_eq!(q.header.att_key_type, ATT_KEY_TYPE_ECDSA_P256);
            assert_eq!(q.header.qe_vendor_id, INTEL_QE_VENDOR_ID);
            assert_eq!(q.qe_auth_data.len(), 32);
            assert_eq!(q.pck_chain().unwrap().len(), 3);
            assert_eq!(q.report.tee_tcb_svn2.is_some(), q.body_type == Some(3));
            assert_eq!(q.report.mr_service_td.is_some(), q.body_type == Some(3));
            let fmspc = match file.as_str() {
                DCAP => "b0c06f000000",
                SPR => "50806f000000",
                _ => "90c06f000000",
            };
            assert_eq!(hex::encode(v.pck.fmspc), fmspc, "{file}");
            assert_eq!(v.pck.pce_id, [0, 0]);
            assert!(v.check_policy(&TdxPolicy::default()).is_ok());
        }
    }

    #[test]
    fn pinned_intel_root_is_the_one_in_the_notes() {
        let root = intel_sgx_root_ca().unwrap();
        assert_eq!(
            hex::encode(x509::fingerprint_sha256(&root).unwrap()),
            "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
        );
        assert_eq!(
            data("tdx/intel_sgx_root_ca.pem"),
            INTEL_SGX_ROOT_CA_PEM.as_bytes()
        );
    }

    #[test]
    fn collateral_gives_up_to_date_inside_its_window_only() {
        let c = collateral();
        assert_eq!(c.fmspc(), "B0C06F000000");
        assert_eq!(
            c.tcb_info_window(),
            ("2025-06-19T10:16:03Z", "2025-07-19T10:16:03Z")
        );
        let q = data(DCAP);
        // The PCK CRL's nextUpdate (2025-07-19T09:20:35Z) comes an hour before the TCB info's.
        for at in [TCB_ISSUE + 3600, AT, TCB_NEXT - 7200] {
            let v = verify_tdx_quote_with_collateral(&q, &c, None, at).unwrap();
            let tcb = v.tcb.clone().unwrap();
            assert_eq!(tcb.status, TcbStatus::UpToDate, "at {at}");
            assert_eq!(tcb.platform_status, TcbStatus::UpToDate);
            assert_eq!(tcb.qe_status, TcbStatus::UpToDate);
            assert!(tcb.advisory_ids.is_empty());
            let strict = TdxPolicy {
                allowed_tcb_statuses: vec![TcbStatus::UpToDate],
                ..TdxPolicy::default()
            };
            v.check_policy(&strict).unwrap();
            assert_eq!(evaluate_tcb(&q, &c, at).unwrap(), tcb);
        }
        for at in [TCB_NEXT + 60, TCB_ISSUE - 3600, 1_800_000_000] {
            match verify_tdx_quote_with_collateral(&q, &c, None, at) {
                Err(Error::Collateral(why)) => {
                    let why = why.to_lowercase();
                    assert!(why.contains("expired") || why.contains("future"), "{why}")
                }
                other => panic!("at {at}: {other:?}"),
            }
        }
        // The other quotes are for other platforms (FMSPC).
        for (f, at) in [(SPR, AT), (V5, OFFLINE_AT)] {
            match verify_tdx_quote_with_collateral(&data(f), &c, None, at) {
                Err(Error::Collateral(why)) => assert!(why.contains("FMSPC"), "{why}"),
                other => panic!("{f}: {other:?}"),
            }
            assert!(matches!(
                evaluate_tcb(&data(f), &c, at),
                Err(Error::Collateral(_))
            ));
        }
        // Without collateral evaluated, a policy that needs a TCB status fails.
        let v = verify_tdx_quote_bytes(&q, None, AT).unwrap();
        let strict = TdxPolicy {
            allowed_tcb_statuses: vec![TcbStatus::UpToDate],
            ..TdxPolicy::default()
        };
        assert!(matches!(v.check_policy(&strict), Err(Error::Policy(_))));
    }

    #[test]
    fn tampered_collateral_is_rejected() {
        let q = data(DCAP);
        let json: Value = serde_json::from_slice(&data("tdx/dcapqvl_v4_collateral.json")).unwrap();
        let edit = |key: &str, f: &dyn Fn(&str) -> String| {
            let mut j = json.clone();
            let s = f(j[key].as_str().unwrap());
            j[key] = Value::String(s);
            TdxCollateral::from_json(&serde_json::to_vec(&j).unwrap()).unwrap()
        };
        let flip_hex = |s: &str| {
            let mut b = hex::decode(s).unwrap();
            let n = b.len();
            b[n - 3] ^= 1;
            hex::encode(b)
        };
        let cases = [
            edit("tcb_info_signature", &flip_hex),
            edit("qe_identity_signature", &flip_hex),
            edit("tcb_info", &|s: &str| {
                s.replace("\"UpToDate\"", "\"UpToDatf\"").replacen(
                    "\"tcbEvaluationDataNumber\":17",
                    "\"tcbEvaluationDataNumber\":18",
                    1,
                )
            }),
            edit("qe_identity", &|s: &str| {
                s.replacen(
                    "\"tcbEvaluationDataNumber\":17",
                    "\"tcbEvaluationDataNumber\":18",
                    1,
                )
            }),
            edit("pck_crl", &flip_hex),
            edit("root_ca_crl", &flip_hex),
        ];
        for (i, c) in cases.iter().enumerate() {
            assert!(
                matches!(
                    verify_tdx_quote_with_collateral(&q, c, None, AT),
                    Err(Error::Collateral(_))
                ),
                "case {i}"
            );
        }
        assert!(matches!(
            TdxCollateral::from_json(b"{}"),
            Err(Error::Malformed { .. })
        ));
    }

    fn flipped(bytes: &[u8], off: usize) -> Vec<u8> {
        let mut b = bytes.to_vec();
        b[off] ^= 0x01;
        b
    }

    /// Offsets of fields, for v4 (`shift` 0) and v5 (`shift` 6).
    fn body(shift: usize, v4_off: usize) -> usize {
        v4_off + shift
    }

    #[test]
    fn tampering_is_rejected_with_specific_errors() {
        for f in ALL {
            let bytes = data(f);
            let q = TdxQuote::parse(&bytes).unwrap();
            let shift = if q.header.version == 5 { 6 } else { 0 };
            let end = q.signed_bytes.len();
            let sig = end + 4; // quote signature
            let ak = sig + 64;
            let qe = ak + 64 + 6; // QE report
            let qe_sig = qe + 384;
            let auth = qe_sig + 64 + 2;
            let verify = |b: &[u8], exp: Option<&[u8; 64]>| verify_tdx_quote_bytes(b, exp, OFFLINE_AT);
            // Header (user data), TEE_TCB_SVN, MRSEAM, TDATTRIBUTES (the debug bit!), XFAM, MRTD,
            // MRCONFIGID, MROWNER, RTMR0..3, REPORTDATA, quote signature r and s: the quote
            // signature fails.
            let mut offs = vec![
                30,
                body(shift, 0x30),
                body(shift, 0x40),
                body(shift, 0xA8),
                body(shift, 0xB0),
            ];
            offs.extend(
                [
                    0xB8, 0xE7, 0xE8, 0x118, 0x178, 0x1A8, 0x1D8, 0x208, 0x237, 0x238, 0x277,
                ]
                .map(|o| body(shift, o)),
            );
            offs.extend([sig, sig + 31, sig + 32, sig + 63]);
            if shift == 6 {
                offs.extend([0x278 + 6, 0x278 + 6 + 16]); // TEE_TCB_SVN2, MRSERVICETD
            }
            for off in offs {
                assert!(
                    matches!(verify(&flipped(&bytes, off), None), Err(Error::BadSignature(_))),
                    "{f}: flip at {off:#x}"
                );
            }
            // With the expected REPORTDATA given, a changed REPORTDATA is a mismatch.
            for off in [0x238, 0x277].map(|o| body(shift, o)) {
                assert!(matches!(
                    verify(&flipped(&bytes, off), Some(&q.report.report_data)),
                    Err(Error::ReportDataMismatch(_))
                ));
            }
            assert!(matches!(
                verify(&bytes, Some(&[0; 64])),
                Err(Error::ReportDataMismatch(_))
            ));
            // QE report fields and its signature: the PCK signature over the QE report fails.
            for off in [
                qe,
                qe + 64,
                qe + 128,
                qe + 256,
                qe + 320,
                qe + 383,
                qe_sig,
                qe_sig + 63,
            ] {
                assert!(
                    matches!(verify(&flipped(&bytes, off), None), Err(Error::BadSignature(_))),
                    "{f}: QE flip at {off:#x}"
                );
            }
            // QE auth data and attestation key are bound by the QE report.
            for off in [auth, auth + 31, ak, ak + 63] {
                assert!(
                    matches!(
                        verify(&flipped(&bytes, off), None),
                        Err(Error::QeReportBinding(_))
                    ),
                    "{f}: binding flip at {off:#x}"
                );
            }
            // Certificates: flip a bit of each certificate's signature.
            let chain = q.pck_chain().unwrap();
            for i in 0..chain.len() {
                let mut certs: Vec<Vec<u8>> = chain.iter().map(|c| x509::to_der(c).unwrap()).collect();
                let n = certs[i].len();
                certs[i][n - 2] ^= 1;
                let pem: String = certs
                    .iter()
                    .map(|d| der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, d).unwrap())
                    .collect();
                let mut bad = q.clone();
                bad.pck_chain_pem = pem.into_bytes();
                assert!(
                    matches!(
                        verify_tdx_quote(&bad, None, OFFLINE_AT),
                        Err(Error::CertificateChain(_))
                    ),
                    "{f}: certificate {i}"
                );
            }
            // A chain without the leaf, or with only the root.
            let mut short = q.clone();
            let pem = String::from_utf8(q.pck_chain_pem.clone()).unwrap();
            let second = pem.match_indices("-----BEGIN").nth(1).unwrap().0;
            short.pck_chain_pem = pem.as_bytes()[second..].to_vec();
            assert!(verify_tdx_quote(&short, None, OFFLINE_AT).is_err());
            // Outside the certificates' validity.
            verify(&bytes, None).unwrap();
            assert!(matches!(
                verify_tdx_quote(&q, None, 3_000_000_000),
                Err(Error::CertificateChain(_))
            ));
            assert!(matches!(
                verify_tdx_quote(&q, None, 1_000_000_000),
                Err(Error::CertificateChain(_))
            ));
            // Header fields this verifier does not accept.
            for (off, what) in [(2usize, "att key type"), (4, "tee type"), (12, "vendor")] {
                let e = verify(&flipped(&bytes, off), None);
                assert!(matches!(e, Err(Error::Unsupported { .. })), "{f}: {what}: {e:?}");
            }
            // Padding after the signed data is ignored; a cut into the signed data is not.
            let mut padded = bytes[..q.quote_len].to_vec();
            padded.extend([0u8; 100]);
            verify(&padded, None).unwrap();
            verify(&bytes[..q.quote_len], None).unwrap();
        }
    }

    #[test]
    fn layout_errors() {
        let bytes = data(DCAP);
        for v in [0u16, 3, 6, 0xFFFF] {
            let mut b = bytes.clone();
            b[..2].copy_from_slice(&v.to_le_bytes());
            assert!(
                matches!(TdxQuote::parse(&b), Err(Error::Unsupported { .. })),
                "version {v}"
            );
        }
        let v5 = data(V5);
        let mut b = v5.clone();
        b[48] = 4;
        assert!(matches!(TdxQuote::parse(&b), Err(Error::Unsupported { .. })));
        let mut b = v5.clone();
        b[50] = 0;
        assert!(matches!(TdxQuote::parse(&b), Err(Error::Malformed { .. })));
        // Certification data types.
        let q = TdxQuote::parse(&bytes).unwrap();
        let ct = q.signed_bytes.len() + 4 + 128;
        let mut b = bytes.clone();
        b[ct] = 5;
        assert!(matches!(TdxQuote::parse(&b), Err(Error::Unsupported { .. })));
        // Inconsistent lengths.
        let mut b = bytes.clone();
        b[q.signed_bytes.len()] ^= 1; // signature data length
        assert!(matches!(TdxQuote::parse(&b), Err(Error::Malformed { .. })));
        let mut b = bytes.clone();
        b[ct + 2] ^= 1; // certification data size
        assert!(matches!(TdxQuote::parse(&b), Err(Error::Malformed { .. })));
    }

    #[test]
    fn truncation_at_every_offset_is_an_error() {
        for f in ALL {
            let bytes = data(f);
            let len = TdxQuote::parse(&bytes).unwrap().quote_len;
            for n in 0..len {
                assert!(
                    matches!(TdxQuote::parse(&bytes[..n]), Err(Error::Malformed { .. })),
                    "{f}: {n}"
                );
            }
        }
    }

    #[test]
    fn verified_fields_serialize_round_trip() {
        let v = verify_tdx_quote_with_collateral(&data(DCAP), &collateral(), None, AT).unwrap();
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(
            json["mr_td"],
            "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
        );
        assert_eq!(json["tcb"]["status"], "UpToDate");
        assert_eq!(json["pck"]["fmspc"], "b0c06f000000");
        let back: VerifiedTdx = serde_json::from_value(json).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn policy_rules() {
        let mut v = verify_tdx_quote_bytes(&data(SPR), None, OFFLINE_AT).unwrap();
        let p = TdxPolicy {
            allowed_mr_td: vec![v.mr_td],
            rtmr: [Some(v.rtmr0), None, None, Some([0; 48])],
            ..TdxPolicy::default()
        };
        v.check_policy(&p).unwrap();
        let p = TdxPolicy {
            rtmr: [None, Some([0; 48]), None, None],
            ..TdxPolicy::default()
        };
        assert!(matches!(v.check_policy(&p), Err(Error::Policy(_))));
        let p = TdxPolicy {
            allowed_mr_td: vec![[0; 48]],
            ..TdxPolicy::default()
        };
        assert!(matches!(v.check_policy(&p), Err(Error::Policy(_))));
        v.debug = true;
        assert!(matches!(
            v.check_policy(&TdxPolicy::default()),
            Err(Error::Policy(_))
        ));
        v.check_policy(&TdxPolicy {
            allow_debug: true,
            ..TdxPolicy::default()
        })
        .unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..6000)) {
            let _ = TdxQuote::parse(&bytes);
        }

        #[test]
        fn random_bodies_with_a_valid_header_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..6000),
            v5 in any::<bool>(),
            body_type in 0u16..5,
        ) {
            let real = data(if v5 { V5 } else { DCAP });
            let mut b = real[..48].to_vec();
            if v5 {
                b.extend(body_type.to_le_bytes());
                b.extend(if body_type == 3 { 648u32 } else { 584u32 }.to_le_bytes());
            }
            b.extend(tail);
            if let Ok(q) = TdxQuote::parse(&b) {
                prop_assert!(verify_tdx_quote(&q, None, OFFLINE_AT).is_err());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_flips_in_the_signed_part_are_rejected(which in 0usize..3, pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let bytes = data(ALL[which]);
            let q = TdxQuote::parse(&bytes).unwrap();
            // Everything up to the PCK chain is covered by a signature or the binding; inside
            // the PEM text a flip may be harmless (whitespace, base64 padding).
            let pem_start = q.quote_len - q.pck_chain_pem.len();
            let off = pos.index(pem_start);
            let mut b = bytes.clone();
            b[off] ^= 1 << bit;
            prop_assert!(verify_tdx_quote_bytes(&b, None, OFFLINE_AT).is_err(), "flip at {off:#x} accepted");
        }
    }
}
