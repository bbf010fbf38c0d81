//! NVIDIA Hopper (and same-format Blackwell) GPU attestation reports.
//!
//! A report is what `nvmlDeviceGetConfComputeGpuAttestationReport` returns: an SPDM 1.1
//! `GET_MEASUREMENTS` request (37 bytes) followed by the `MEASUREMENTS` response, all integers
//! little-endian:
//!
//! ```text
//! request:  0 version=0x11 | 1 code=0xE0 | 2 param1 (bit0: signature requested) | 3 param2
//!           (0xFF = all blocks) | 4..36 nonce[32] (the caller's nonce) | 36 slot id
//! response: 0 version=0x11 | 1 code=0x60 | 2 param1 | 3 param2 | 4 NumberOfBlocks u8 |
//!           5..8 MeasurementRecordLength u24 | record | nonce[32] (the GPU's) | OpaqueLength u16 |
//!           OpaqueData | signature[96]
//! block:    index u8 | spec u8 (bit0 = DMTF) | size u16 | DMTF: value type u8 | value size u16 | value
//! opaque:   TLVs `type u16 | len u16 | value` (driver version, VBIOS version, FWID, SKUs, ...)
//! ```
//!
//! The signature is ECDSA P-384 / SHA-384, raw `r || s` (big-endian), by the leaf of the
//! device certificate chain, over `request || response` without the signature. The signed range
//! is computed from the parsed lengths; bytes after the signature are tolerated and reported as
//! [`GpuReport::trailing_len`] (a real report carries one such pad byte).
//!
//! [`verify_gpu_report`] checks, in order: the report parses; the chain (leaf first, PEM) leads
//! to the pinned NVIDIA Device Identity CA ([`NVIDIA_DEVICE_IDENTITY_ROOT_PEM`]) with 5
//! certificates; the request nonce equals the expected one ([`Error::NonceMismatch`]); the
//! signature verifies under the leaf key ([`Error::BadSignature`]); the report's FWID (opaque
//! type 20) equals the FWID in the leaf's TCG DICE TcbInfo extension ([`Error::FwidMismatch`]).
//! Not done here: OCSP, RIM (reference measurement) comparison and version policy.

use std::collections::BTreeSet;

use const_oid::ObjectIdentifier;
use der::{Decode, Reader};
use p384::ecdsa::signature::Verifier;
use serde::Serialize;

use crate::x509::{self, Certificate};
use crate::{Error, Result};

const FMT: &str = "SPDM";

/// The pinned NVIDIA Device Identity CA (P-384, serial 2D3670B1CA100411C1FEC0E82A065B54,
/// valid 2021-11-05..9999-12-31, SHA-256 fingerprint 102BF659...167B48), as shipped by
/// NVIDIA's nvtrust local GPU verifier (`verifier_device_root.pem`).
pub const NVIDIA_DEVICE_IDENTITY_ROOT_PEM: &str = include_str!("../roots/nvidia_device_identity_root.pem");

/// SHA-256 of the DER of [`NVIDIA_DEVICE_IDENTITY_ROOT_PEM`].
pub const NVIDIA_DEVICE_IDENTITY_ROOT_SHA256: &str =
    "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48";

/// Length of the SPDM 1.1 GET_MEASUREMENTS request with a signature requested.
pub const REQUEST_LEN: usize = 37;
/// Length of the raw P-384 `r || s` signature.
pub const SIGNATURE_LEN: usize = 96;
/// SPDM version byte this parser accepts (1.1).
pub const SPDM_VERSION_1_1: u8 = 0x11;
/// SPDM GET_MEASUREMENTS request code.
pub const GET_MEASUREMENTS: u8 = 0xE0;
/// SPDM MEASUREMENTS response code.
pub const MEASUREMENTS: u8 = 0x60;
/// Certificates in an NVIDIA device chain, the root included (nvtrust requires exactly this).
pub const NVIDIA_CHAIN_LEN: usize = 5;

/// Opaque data field types (NVIDIA `OPAQUE_FIELD_ID_*`).
pub mod opaque_type {
    /// Certificate issuer name.
    pub const CERT_ISSUER_NAME: u16 = 1;
    /// Certificate authority key identifier.
    pub const CERT_AUTHORITY_KEY_IDENTIFIER: u16 = 2;
    /// Driver version, ASCII, NUL-terminated.
    pub const DRIVER_VERSION: u16 = 3;
    /// GPU info.
    pub const GPU_INFO: u16 = 4;
    /// SKU.
    pub const SKU: u16 = 5;
    /// VBIOS version, 8 bytes.
    pub const VBIOS_VERSION: u16 = 6;
    /// Manufacturer id.
    pub const MANUFACTURER_ID: u16 = 7;
    /// Tamper detection.
    pub const TAMPER_DETECTION: u16 = 8;
    /// SMC.
    pub const SMC: u16 = 9;
    /// VPR.
    pub const VPR: u16 = 10;
    /// NVDEC0 status (0xAA enabled, 0x55 disabled).
    pub const NVDEC0_STATUS: u16 = 11;
    /// Measurement counts, u32 per block.
    pub const MSRSCNT: u16 = 12;
    /// CPR info.
    pub const CPRINFO: u16 = 13;
    /// Board id.
    pub const BOARD_ID: u16 = 14;
    /// Chip SKU, ASCII.
    pub const CHIP_SKU: u16 = 15;
    /// Chip SKU modifier, ASCII.
    pub const CHIP_SKU_MOD: u16 = 16;
    /// Project, ASCII.
    pub const PROJECT: u16 = 17;
    /// Project SKU, ASCII.
    pub const PROJECT_SKU: u16 = 18;
    /// Project SKU modifier, ASCII.
    pub const PROJECT_SKU_MOD: u16 = 19;
    /// FWID, 48 bytes; must equal the leaf certificate's DICE TcbInfo FWID.
    pub const FWID: u16 = 20;
    /// Protected PCIe status.
    pub const PROTECTED_PCIE_STATUS: u16 = 21;
    /// NVSwitch PDIs, 8 bytes each.
    pub const SWITCH_PDI: u16 = 22;
    /// Floorswept ports.
    pub const FLOORSWEPT_PORTS: u16 = 23;
    /// Position id.
    pub const POSITION_ID: u16 = 24;
    /// Lock switch status.
    pub const LOCK_SWITCH_STATUS: u16 = 25;
    /// GPU link connections.
    pub const GPU_LINK_CONN: u16 = 32;
    /// System enable status.
    pub const SYS_ENABLE_STATUS: u16 = 33;
    /// Opaque data version, u16.
    pub const OPAQUE_DATA_VERSION: u16 = 34;
    /// Chip info.
    pub const CHIP_INFO: u16 = 35;
    /// Feature flag: 0 SPT, 1 MPT, 2 PPCIE.
    pub const FEATURE_FLAG: u16 = 36;
    /// Invalid.
    pub const INVALID: u16 = 255;
}

/// FEATURE_FLAG value: single-GPU passthrough.
pub const FEATURE_FLAG_SPT: u32 = 0;
/// FEATURE_FLAG value: multi-GPU passthrough.
pub const FEATURE_FLAG_MPT: u32 = 1;
/// FEATURE_FLAG value: protected PCIe.
pub const FEATURE_FLAG_PPCIE: u32 = 2;

/// NVIDIA's name of an opaque field type (`OPAQUE_FIELD_ID_...`), if known.
pub fn opaque_type_name(t: u16) -> Option<&'static str> {
    use opaque_type as o;
    Some(match t {
        o::CERT_ISSUER_NAME => "OPAQUE_FIELD_ID_CERT_ISSUER_NAME",
        o::CERT_AUTHORITY_KEY_IDENTIFIER => "OPAQUE_FIELD_ID_CERT_AUTHORITY_KEY_IDENTIFIER",
        o::DRIVER_VERSION => "OPAQUE_FIELD_ID_DRIVER_VERSION",
        o::GPU_INFO => "OPAQUE_FIELD_ID_GPU_INFO",
        o::SKU => "OPAQUE_FIELD_ID_SKU",
        o::VBIOS_VERSION => "OPAQUE_FIELD_ID_VBIOS_VERSION",
        o::MANUFACTURER_ID => "OPAQUE_FIELD_ID_MANUFACTURER_ID",
        o::TAMPER_DETECTION => "OPAQUE_FIELD_ID_TAMPER_DETECTION",
        o::SMC => "OPAQUE_FIELD_ID_SMC",
        o::VPR => "OPAQUE_FIELD_ID_VPR",
        o::NVDEC0_STATUS => "OPAQUE_FIELD_ID_NVDEC0_STATUS",
        o::MSRSCNT => "OPAQUE_FIELD_ID_MSRSCNT",
        o::CPRINFO => "OPAQUE_FIELD_ID_CPRINFO",
        o::BOARD_ID => "OPAQUE_FIELD_ID_BOARD_ID",
        o::CHIP_SKU => "OPAQUE_FIELD_ID_CHIP_SKU",
        o::CHIP_SKU_MOD => "OPAQUE_FIELD_ID_CHIP_SKU_MOD",
        o::PROJECT => "OPAQUE_FIELD_ID_PROJECT",
        o::PROJECT_SKU => "OPAQUE_FIELD_ID_PROJECT_SKU",
        o::PROJECT_SKU_MOD => "OPAQUE_FIELD_ID_PROJECT_SKU_MOD",
        o::FWID => "OPAQUE_FIELD_ID_FWID",
        o::PROTECTED_PCIE_STATUS => "OPAQUE_FIELD_ID_PROTECTED_PCIE_STATUS",
        o::SWITCH_PDI => "OPAQUE_FIELD_ID_SWITCH_PDI",
        o::FLOORSWEPT_PORTS => "OPAQUE_FIELD_ID_FLOORSWEPT_PORTS",
        o::POSITION_ID => "OPAQUE_FIELD_ID_POSITION_ID",
        o::LOCK_SWITCH_STATUS => "OPAQUE_FIELD_ID_LOCK_SWITCH_STATUS",
        o::GPU_LINK_CONN => "OPAQUE_FIELD_ID_GPU_LINK_CONN",
        o::SYS_ENABLE_STATUS => "OPAQUE_FIELD_ID_SYS_ENABLE_STATUS",
        o::OPAQUE_DATA_VERSION => "OPAQUE_FIELD_ID_OPAQUE_DATA_VERSION",
        o::CHIP_INFO => "OPAQUE_FIELD_ID_CHIP_INFO",
        o::FEATURE_FLAG => "OPAQUE_FIELD_ID_FEATURE_FLAG",
        o::INVALID => "OPAQUE_FIELD_ID_INVALID",
        _ => return None,
    })
}

mod hex_serde {
    pub(super) fn serialize<S: serde::Serializer, T: AsRef<[u8]>>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v.as_ref()))
    }
}

/// The SPDM GET_MEASUREMENTS request at the start of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpdmRequest {
    /// SPDM version (0x11).
    pub version: u8,
    /// Request code (0xE0).
    pub code: u8,
    /// Param1: request attributes (bit0 = signature requested).
    pub attributes: u8,
    /// Param2: measurement operation (0xFF = all blocks).
    pub operation: u8,
    /// The caller's nonce (the NVML input nonce).
    #[serde(with = "hex_serde")]
    pub nonce: [u8; 32],
    /// Certificate slot.
    pub slot_id: u8,
}

/// One measurement block (DMTF measurement specification).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeasurementBlock {
    /// Block index (1-based; RIM index = index - 1).
    pub index: u8,
    /// MeasurementSpecification (1 = DMTF).
    pub spec: u8,
    /// DMTFSpecMeasurementValueType (bit7 raw bit stream, else digest; bits 6..0 the kind).
    pub value_type: u8,
    /// DMTFSpecMeasurementValue (48-byte SHA-384 digests on Hopper).
    #[serde(with = "hex_serde")]
    pub value: Vec<u8>,
}

/// One opaque data TLV.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpaqueField {
    /// Field type ([`opaque_type`]).
    pub field_type: u16,
    /// Raw value.
    #[serde(with = "hex_serde")]
    pub value: Vec<u8>,
}

/// The opaque data TLVs in report order (types are unique), with typed accessors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct OpaqueData {
    /// The fields in the order they appear.
    pub fields: Vec<OpaqueField>,
}

impl OpaqueData {
    /// The raw value of a field type.
    pub fn get(&self, field_type: u16) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|f| f.field_type == field_type)
            .map(|f| f.value.as_slice())
    }

    /// A NUL-terminated ASCII field as a string (non-printable bytes escaped as `\xNN`).
    pub fn ascii(&self, field_type: u16) -> Option<String> {
        self.get(field_type).map(ascii_string)
    }

    /// DRIVER_VERSION, e.g. "550.90.07".
    pub fn driver_version(&self) -> Option<String> {
        self.ascii(opaque_type::DRIVER_VERSION)
    }

    /// VBIOS_VERSION formatted as nvtrust does, e.g. bytes `009f009601000000` → "96.00.9F.00.01".
    pub fn vbios_version(&self) -> Option<String> {
        let v = self.get(opaque_type::VBIOS_VERSION)?;
        let v: &[u8; 8] = v.try_into().ok()?;
        // Little-endian: bytes 3,2,1,0 then the low byte of the second u32.
        Some(format!(
            "{:02X}.{:02X}.{:02X}.{:02X}.{:02X}",
            v[3], v[2], v[1], v[0], v[4]
        ))
    }

    /// FWID (48 bytes on Hopper).
    pub fn fwid(&self) -> Option<&[u8]> {
        self.get(opaque_type::FWID)
    }

    /// CHIP_SKU, e.g. "882".
    pub fn chip_sku(&self) -> Option<String> {
        self.ascii(opaque_type::CHIP_SKU)
    }

    /// CHIP_SKU_MOD.
    pub fn chip_sku_mod(&self) -> Option<String> {
        self.ascii(opaque_type::CHIP_SKU_MOD)
    }

    /// PROJECT, e.g. "1010".
    pub fn project(&self) -> Option<String> {
        self.ascii(opaque_type::PROJECT)
    }

    /// PROJECT_SKU, e.g. "0200".
    pub fn project_sku(&self) -> Option<String> {
        self.ascii(opaque_type::PROJECT_SKU)
    }

    /// PROJECT_SKU_MOD.
    pub fn project_sku_mod(&self) -> Option<String> {
        self.ascii(opaque_type::PROJECT_SKU_MOD)
    }

    /// MSRSCNT: one little-endian u32 per measurement block (None if absent or not a multiple
    /// of 4 bytes).
    pub fn msrscnt(&self) -> Option<Vec<u32>> {
        let v = self.get(opaque_type::MSRSCNT)?;
        if v.len() % 4 != 0 {
            return None;
        }
        Some(
            v.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }

    /// FEATURE_FLAG as a little-endian integer ([`FEATURE_FLAG_SPT`], [`FEATURE_FLAG_MPT`],
    /// [`FEATURE_FLAG_PPCIE`]); absent on older drivers.
    pub fn feature_flag(&self) -> Option<u32> {
        self.get(opaque_type::FEATURE_FLAG).and_then(le_u32)
    }

    /// OPAQUE_DATA_VERSION as a little-endian integer.
    pub fn opaque_data_version(&self) -> Option<u32> {
        self.get(opaque_type::OPAQUE_DATA_VERSION).and_then(le_u32)
    }

    /// PROTECTED_PCIE_STATUS byte.
    pub fn protected_pcie_status(&self) -> Option<u8> {
        self.get(opaque_type::PROTECTED_PCIE_STATUS)
            .and_then(|v| v.first().copied())
    }

    /// NVDEC0_STATUS byte (0xAA enabled, 0x55 disabled).
    pub fn nvdec0_status(&self) -> Option<u8> {
        self.get(opaque_type::NVDEC0_STATUS)
            .and_then(|v| v.first().copied())
    }

    /// SWITCH_PDI entries (8 bytes each; None if absent or not a multiple of 8 bytes).
    pub fn switch_pdis(&self) -> Option<Vec<[u8; 8]>> {
        let v = self.get(opaque_type::SWITCH_PDI)?;
        if v.len() % 8 != 0 {
            return None;
        }
        Some(v.chunks_exact(8).filter_map(|c| c.try_into().ok()).collect())
    }
}

fn le_u32(v: &[u8]) -> Option<u32> {
    if v.is_empty() || v.len() > 4 {
        return None;
    }
    Some(v.iter().rev().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

fn ascii_string(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    v[..end].escape_ascii().to_string()
}

/// A parsed GPU attestation report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuReport {
    /// The GET_MEASUREMENTS request.
    pub request: SpdmRequest,
    /// Response SPDM version.
    pub response_version: u8,
    /// Response code (0x60).
    pub response_code: u8,
    /// Response param1.
    pub response_param1: u8,
    /// Response param2.
    pub response_param2: u8,
    /// MeasurementRecordLength.
    pub measurement_record_len: usize,
    /// The measurement blocks in report order (indices unique).
    pub measurement_blocks: Vec<MeasurementBlock>,
    /// The responder's (GPU's) nonce.
    #[serde(with = "hex_serde")]
    pub responder_nonce: [u8; 32],
    /// OpaqueLength.
    pub opaque_len: usize,
    /// The opaque data.
    pub opaque: OpaqueData,
    /// The signature, raw `r || s`.
    #[serde(with = "hex_serde")]
    pub signature: [u8; SIGNATURE_LEN],
    /// Bytes covered by the signature (request and response up to the signature).
    pub signed_len: usize,
    /// Bytes after the signature (ignored).
    pub trailing_len: usize,
    #[serde(skip)]
    signed: Vec<u8>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| {
                Error::malformed(
                    FMT,
                    format!(
                        "{what}: {n} bytes at offset {} past the end ({} bytes)",
                        self.pos,
                        self.bytes.len()
                    ),
                )
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u24(&mut self, what: &str) -> Result<u32> {
        let b = self.take(3, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], 0]))
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let b = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.bytes.len()
    }
}

impl GpuReport {
    /// Parses `request || response || signature [|| trailing bytes]`. Pure: no I/O, no
    /// allocation beyond the result; hostile input gives [`Error::Malformed`] or
    /// [`Error::Unsupported`], never a panic.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut c = Cursor { bytes, pos: 0 };
        let version = c.u8("request version")?;
        if version != SPDM_VERSION_1_1 {
            return Err(Error::Unsupported {
                what: "SPDM version",
                value: format!("0x{version:02x}"),
            });
        }
        let code = c.u8("request code")?;
        if code != GET_MEASUREMENTS {
            return Err(Error::malformed(
                FMT,
                format!("request code 0x{code:02x}, want 0xE0"),
            ));
        }
        let attributes = c.u8("request param1")?;
        if attributes & 1 == 0 {
            return Err(Error::Unsupported {
                what: "SPDM measurements",
                value: "unsigned (param1 bit0 clear)".into(),
            });
        }
        let operation = c.u8("request param2")?;
        let nonce = c.array::<32>("request nonce")?;
        let slot_id = c.u8("request slot id")?;
        let request = SpdmRequest {
            version,
            code,
            attributes,
            operation,
            nonce,
            slot_id,
        };

        let response_version = c.u8("response version")?;
        if response_version != version {
            return Err(Error::malformed(
                FMT,
                format!("response version 0x{response_version:02x} differs from request 0x{version:02x}"),
            ));
        }
        let response_code = c.u8("response code")?;
        if response_code != MEASUREMENTS {
            return Err(Error::malformed(
                FMT,
                format!("response code 0x{response_code:02x}, want 0x60"),
            ));
        }
        let response_param1 = c.u8("response param1")?;
        let response_param2 = c.u8("response param2")?;
        let number_of_blocks = c.u8("NumberOfBlocks")?;
        let measurement_record_len = c.u24("MeasurementRecordLength")? as usize;
        let record = c.take(measurement_record_len, "measurement record")?;
        let measurement_blocks = parse_blocks(record, number_of_blocks)?;
        let responder_nonce = c.array::<32>("responder nonce")?;
        let opaque_len = usize::from(c.u16("OpaqueLength")?);
        let opaque = parse_opaque(c.take(opaque_len, "opaque data")?)?;
        let signed_len = c.pos;
        let signature = c.array::<SIGNATURE_LEN>("signature")?;
        let trailing_len = bytes.len() - c.pos;
        Ok(Self {
            request,
            response_version,
            response_code,
            response_param1,
            response_param2,
            measurement_record_len,
            measurement_blocks,
            responder_nonce,
            opaque_len,
            opaque,
            signature,
            signed_len,
            trailing_len,
            signed: bytes[..signed_len].to_vec(),
        })
    }

    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.signed
    }

    /// The caller's nonce from the request.
    pub fn request_nonce(&self) -> &[u8; 32] {
        &self.request.nonce
    }

    /// The measurement block with this (1-based) index.
    pub fn measurement(&self, index: u8) -> Option<&MeasurementBlock> {
        self.measurement_blocks.iter().find(|b| b.index == index)
    }

    /// Verifies the signature with a P-384 key (normally the leaf certificate's).
    pub fn verify_signature(&self, key: &p384::ecdsa::VerifyingKey) -> Result<()> {
        let sig = p384::ecdsa::Signature::from_slice(&self.signature)
            .map_err(|_| Error::BadSignature("GPU report signature: r or s out of range".into()))?;
        key.verify(&self.signed, &sig).map_err(|_| {
            Error::BadSignature("GPU report signature does not verify under the leaf key".into())
        })
    }

    /// The report in the JSON shape of NVIDIA's attestation SDK parsed-SPDM output
    /// (`SPDMVersion`, `MeasurementRecord.MeasurementBlocks`, `OpaqueData.OpaqueDataField`...):
    /// response fields only, bytes as `0x`-prefixed lowercase hex, MSRSCNT as a list of numbers,
    /// SWITCH_PDI as a list of 8-byte hex strings, unknown types as `UNKNOWN_OPAQUE_TYPE(0x..)`.
    pub fn to_sdk_json(&self) -> serde_json::Value {
        use serde_json::{Map, Value, json};
        let hx = |b: &[u8]| Value::String(format!("0x{}", hex::encode(b)));
        let mut blocks = Map::new();
        for b in &self.measurement_blocks {
            blocks.insert(
                b.index.to_string(),
                json!({
                    "DMTFSpecMeasurementValueType": b.value_type,
                    "DMTFSpecMeasurementValueSize": b.value.len(),
                    "DMTFSpecMeasurementValue": hx(&b.value),
                }),
            );
        }
        let mut fields = Map::new();
        for f in &self.opaque.fields {
            let name = opaque_type_name(f.field_type)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("UNKNOWN_OPAQUE_TYPE(0x{:x})", f.field_type));
            let value = match f.field_type {
                opaque_type::MSRSCNT if f.value.len() % 4 == 0 => Value::Array(
                    self.opaque
                        .msrscnt()
                        .unwrap_or_default()
                        .into_iter()
                        .map(Value::from)
                        .collect(),
                ),
                opaque_type::SWITCH_PDI if f.value.len() % 8 == 0 => {
                    Value::Array(f.value.chunks_exact(8).map(hx).collect())
                }
                _ => hx(&f.value),
            };
            fields.insert(name, value);
        }
        json!({
            "SPDMVersion": format!("0x{:02x}", self.response_version),
            "RequestResponseCode": format!("0x{:02x}", self.response_code),
            "Param1": format!("0x{:02x}", self.response_param1),
            "Param2": format!("0x{:02x}", self.response_param2),
            "NumberOfBlocks": self.measurement_blocks.len(),
            "MeasurementRecordLength": self.measurement_record_len,
            "Nonce": hx(&self.responder_nonce),
            "OpaqueLength": self.opaque_len,
            "Signature": hx(&self.signature),
            "MeasurementRecord": {
                "NumberOfBlocks": self.measurement_blocks.len(),
                "MeasurementBlocks": blocks,
            },
            "OpaqueData": { "OpaqueDataField": fields },
        })
    }
}

fn parse_blocks(record: &[u8], number_of_blocks: u8) -> Result<Vec<MeasurementBlock>> {
    let mut c = Cursor {
        bytes: record,
        pos: 0,
    };
    let mut seen = BTreeSet::new();
    let mut blocks = Vec::with_capacity(usize::from(number_of_blocks));
    for _ in 0..number_of_blocks {
        let index = c.u8("block index")?;
        let spec = c.u8("block MeasurementSpecification")?;
        let size = usize::from(c.u16("block MeasurementSize")?);
        let body = c.take(size, "block measurement")?;
        if spec & 1 == 0 {
            return Err(Error::Unsupported {
                what: "measurement specification",
                value: format!("0x{spec:02x}"),
            });
        }
        let mut m = Cursor { bytes: body, pos: 0 };
        let value_type = m.u8("DMTF value type")?;
        let value_size = usize::from(m.u16("DMTF value size")?);
        let value = m.take(value_size, "DMTF value")?.to_vec();
        if !m.is_empty() {
            return Err(Error::malformed(
                FMT,
                format!("block {index}: MeasurementSize {size} != 3 + {value_size}"),
            ));
        }
        if !seen.insert(index) {
            return Err(Error::malformed(
                FMT,
                format!("duplicate measurement block index {index}"),
            ));
        }
        blocks.push(MeasurementBlock {
            index,
            spec,
            value_type,
            value,
        });
    }
    if !c.is_empty() {
        return Err(Error::malformed(
            FMT,
            format!(
                "measurement record has {} bytes after {number_of_blocks} blocks",
                record.len() - c.pos
            ),
        ));
    }
    Ok(blocks)
}

fn parse_opaque(data: &[u8]) -> Result<OpaqueData> {
    let mut c = Cursor { bytes: data, pos: 0 };
    let mut fields: Vec<OpaqueField> = Vec::new();
    while !c.is_empty() {
        let field_type = c.u16("opaque field type")?;
        let len = usize::from(c.u16("opaque field length")?);
        let value = c.take(len, "opaque field value")?.to_vec();
        if fields.iter().any(|f| f.field_type == field_type) {
            return Err(Error::malformed(
                FMT,
                format!("duplicate opaque field type {field_type}"),
            ));
        }
        fields.push(OpaqueField { field_type, value });
    }
    Ok(OpaqueData { fields })
}

// ---------------------------------------------------------------------------------------------
// DICE TcbInfo

/// One FWID from a DICE extension: hash algorithm and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fwid {
    /// Hash algorithm OID (SHA-384 on NVIDIA devices).
    pub hash_alg: ObjectIdentifier,
    /// Digest.
    pub digest: Vec<u8>,
}

/// The FWIDs of a certificate's TCG DICE extension (OID 2.23.133.5.4.1), in order. Two encodings
/// are read:
/// - TCG DICE `DiceTcbInfo ::= SEQUENCE { ..., fwids [6] IMPLICIT SEQUENCE OF FWID, ... }`;
/// - the earlier composite-device-identifier form NVIDIA devices use,
///   `SEQUENCE { version INTEGER, SubjectPublicKeyInfo, FWID }`,
///
/// with `FWID ::= SEQUENCE { hashAlg OBJECT IDENTIFIER, digest OCTET STRING }`.
/// `Ok(None)` when the certificate has no such extension.
pub fn dice_fwids(cert: &Certificate) -> Result<Option<Vec<Fwid>>> {
    let Some(value) = x509::extension_value(cert, &x509::oids::TCG_DICE_TCB_INFO) else {
        return Ok(None);
    };
    parse_dice_fwids(value).map(Some)
}

fn parse_dice_fwids(value: &[u8]) -> Result<Vec<Fwid>> {
    use der::asn1::{AnyRef, OctetStringRef};
    use der::{Class, SliceReader, Tag, TagNumber, Tagged};
    let bad = |e: der::Error| Error::malformed("DICE TcbInfo", e.to_string());
    let outer = AnyRef::from_der(value).map_err(bad)?;
    if outer.tag() != Tag::Sequence {
        return Err(Error::malformed("DICE TcbInfo", "not a SEQUENCE"));
    }
    let read_fwid = |any: AnyRef<'_>| -> Option<Fwid> {
        if any.tag() != Tag::Sequence {
            return None;
        }
        let mut r = SliceReader::new(any.value()).ok()?;
        let hash_alg = ObjectIdentifier::decode(&mut r).ok()?;
        let digest = OctetStringRef::decode(&mut r).ok()?;
        r.is_finished().then(|| Fwid {
            hash_alg,
            digest: digest.as_bytes().to_vec(),
        })
    };
    let mut fwids = Vec::new();
    let mut r = SliceReader::new(outer.value()).map_err(bad)?;
    while !r.is_finished() {
        let item = AnyRef::decode(&mut r).map_err(bad)?;
        let tag = item.tag();
        if tag.class() == Class::ContextSpecific && tag.number() == TagNumber::N6 && tag.is_constructed() {
            // DiceTcbInfo fwids [6] IMPLICIT SEQUENCE OF FWID.
            let mut list = SliceReader::new(item.value()).map_err(bad)?;
            while !list.is_finished() {
                let f = AnyRef::decode(&mut list).map_err(bad)?;
                fwids
                    .push(read_fwid(f).ok_or_else(|| Error::malformed("DICE TcbInfo", "bad FWID in fwids"))?);
            }
        } else if let Some(f) = read_fwid(item) {
            // Composite device identifier: a bare FWID (the SPKI does not decode as one).
            fwids.push(f);
        }
    }
    Ok(fwids)
}

// ---------------------------------------------------------------------------------------------
// Verification

/// One measurement of a verified report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Measurement {
    /// Block index (1-based).
    pub index: u8,
    /// DMTF value type.
    pub value_type: u8,
    /// Value, lowercase hex.
    pub value: String,
}

/// What a verified GPU report says (serializable; bytes as lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifiedGpu {
    /// The caller's nonce from the request.
    pub request_nonce: String,
    /// The GPU's nonce from the response.
    pub responder_nonce: String,
    /// Driver version (opaque DRIVER_VERSION), e.g. "550.90.07".
    pub driver_version: Option<String>,
    /// VBIOS version (opaque VBIOS_VERSION), e.g. "96.00.9F.00.01".
    pub vbios_version: Option<String>,
    /// FWID (equal in the report and the leaf certificate).
    pub fwid: String,
    /// CHIP_SKU.
    pub chip_sku: Option<String>,
    /// PROJECT.
    pub project: Option<String>,
    /// PROJECT_SKU.
    pub project_sku: Option<String>,
    /// FEATURE_FLAG (0 SPT, 1 MPT, 2 PPCIE), when present.
    pub feature_flag: Option<u32>,
    /// OPAQUE_DATA_VERSION, when present.
    pub opaque_data_version: Option<u32>,
    /// The measurement blocks.
    pub measurements: Vec<Measurement>,
    /// Leaf certificate subject (RFC 4514, see [`x509::subject_string`]).
    pub leaf_subject: String,
    /// SHA-256 of the leaf certificate DER (distinguishes devices).
    pub leaf_sha256: String,
    /// Certificates in the supplied chain.
    pub chain_len: usize,
    /// Signed bytes.
    pub signed_len: usize,
    /// Ignored bytes after the signature.
    pub trailing_len: usize,
    /// The full parsed report.
    #[serde(skip)]
    pub report: GpuReport,
}

/// The pinned NVIDIA Device Identity CA.
pub fn nvidia_device_identity_root() -> Result<Certificate> {
    x509::parse_pem(NVIDIA_DEVICE_IDENTITY_ROOT_PEM.as_bytes())
}

/// Verifies an NVIDIA GPU report (`report`, as returned by NVML) with its certificate chain
/// (`chain_pem`, NVML's attestationCertChain: PEM, leaf first, normally ending with a copy of
/// the root) against the pinned NVIDIA Device Identity CA. The chain plus root must be
/// [`NVIDIA_CHAIN_LEN`] certificates. `expected_nonce`: the nonce the caller gave NVML; `at`:
/// Unix seconds for certificate validity (None skips validity windows).
///
/// Errors: [`Error::Malformed`]/[`Error::Unsupported`] (format), [`Error::CertificateChain`],
/// [`Error::NonceMismatch`], [`Error::BadSignature`], [`Error::FwidMismatch`].
pub fn verify_gpu_report(
    report: &[u8],
    chain_pem: &[u8],
    expected_nonce: Option<[u8; 32]>,
    at: Option<u64>,
) -> Result<VerifiedGpu> {
    let root = nvidia_device_identity_root()?;
    verify_impl(
        report,
        chain_pem,
        &root,
        expected_nonce,
        at,
        Some(NVIDIA_CHAIN_LEN),
    )
}

/// As [`verify_gpu_report`] but against a given root and without the chain-length rule (for
/// evidence signed by a locally made P-384 chain in the same format).
pub fn verify_gpu_report_with_root(
    report: &[u8],
    chain_pem: &[u8],
    root: &Certificate,
    expected_nonce: Option<[u8; 32]>,
    at: Option<u64>,
) -> Result<VerifiedGpu> {
    verify_impl(report, chain_pem, root, expected_nonce, at, None)
}

fn verify_impl(
    report_bytes: &[u8],
    chain_pem: &[u8],
    root: &Certificate,
    expected_nonce: Option<[u8; 32]>,
    at: Option<u64>,
    path_len: Option<usize>,
) -> Result<VerifiedGpu> {
    let report = GpuReport::parse(report_bytes)?;
    let chain = x509::parse_pem_bundle(chain_pem)?;
    if let Some(want) = path_len {
        let root_der = x509::to_der(root)?;
        let ends_with_root = match chain.last() {
            Some(c) => x509::to_der(c)? == root_der,
            None => false,
        };
        let len = chain.len() + usize::from(!ends_with_root);
        if len != want {
            return Err(Error::CertificateChain(format!(
                "GPU chain has {len} certificates with the root, want {want}"
            )));
        }
    }
    x509::verify_chain(&chain, root, at)?;
    let leaf = chain
        .first()
        .ok_or_else(|| Error::CertificateChain("empty chain".into()))?;

    if let Some(want) = expected_nonce
        && want != report.request.nonce
    {
        return Err(Error::NonceMismatch(format!(
            "GPU report nonce {} != expected {}",
            hex::encode(report.request.nonce),
            hex::encode(want)
        )));
    }

    report.verify_signature(&x509::p384_verifying_key(leaf)?)?;

    let report_fwid = report
        .opaque
        .fwid()
        .ok_or_else(|| Error::FwidMismatch("the report has no FWID opaque field".into()))?;
    let cert_fwids =
        dice_fwids(leaf)?.ok_or_else(|| Error::FwidMismatch("the leaf certificate has no TcbInfo".into()))?;
    let cert_fwid = cert_fwids
        .first()
        .ok_or_else(|| Error::FwidMismatch("the leaf certificate's TcbInfo has no FWID".into()))?;
    if cert_fwid.digest != report_fwid {
        return Err(Error::FwidMismatch(format!(
            "report FWID {} != leaf certificate FWID {}",
            hex::encode(report_fwid),
            hex::encode(&cert_fwid.digest)
        )));
    }

    let o = &report.opaque;
    Ok(VerifiedGpu {
        request_nonce: hex::encode(report.request.nonce),
        responder_nonce: hex::encode(report.responder_nonce),
        driver_version: o.driver_version(),
        vbios_version: o.vbios_version(),
        fwid: hex::encode(report_fwid),
        chip_sku: o.chip_sku(),
        project: o.project(),
        project_sku: o.project_sku(),
        feature_flag: o.feature_flag(),
        opaque_data_version: o.opaque_data_version(),
        measurements: report
            .measurement_blocks
            .iter()
            .map(|b| Measurement {
                index: b.index,
                value_type: b.value_type,
                value: hex::encode(&b.value),
            })
            .collect(),
        leaf_subject: x509::subject_string(leaf),
        leaf_sha256: hex::encode(x509::fingerprint_sha256(leaf)?),
        chain_len: chain.len(),
        signed_len: report.signed_len,
        trailing_len: report.trailing_len,
        report,
    })
}

#[cfg(test)]
mod tests;
