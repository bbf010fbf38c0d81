//! Tests of the NVIDIA report parser and verifier on the real evidence in `testdata/nvidia/`
//! (facts from `testdata/facts.json`), tampered copies, a golden SDK parse, and reports re-signed
//! by a locally made P-384 chain ([`crate::certgen`]).
#![allow(clippy::unwrap_used)]

use super::*;
use crate::certgen;
use der::Encode;
use p384::ecdsa::SigningKey;

fn data(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/testdata/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn facts() -> serde_json::Value {
    serde_json::from_slice(&data("facts.json")).unwrap()
}

const REPORTS: [&str; 3] = [
    "nvidia/nvtrust_hopper_report.bin",
    "nvidia/sdk_hopper_570_report.bin",
    "nvidia/sdk_hopper_590_report.bin",
];

/// 2025-07-01T00:00:00Z.
const AT: u64 = 1_751_328_000;

fn report_and_chain(name: &str) -> (Vec<u8>, Vec<u8>) {
    let f = &facts()[name];
    (data(name), data(f["cert_chain"].as_str().unwrap()))
}

fn nonce_of(name: &str) -> [u8; 32] {
    hex::decode(facts()[name]["request_nonce"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

#[test]
fn pinned_root_is_the_testdata_root() {
    let root = nvidia_device_identity_root().unwrap();
    let copy = x509::parse_pem(&data("nvidia/nvidia_device_identity_root.pem")).unwrap();
    assert_eq!(root, copy);
    assert_eq!(
        hex::encode(x509::fingerprint_sha256(&root).unwrap()),
        NVIDIA_DEVICE_IDENTITY_ROOT_SHA256
    );
}

/// Every fact in facts.json for each of the three real reports: file_len, signed_len,
/// trailing_bytes, request_nonce, measurement_blocks, driver_version, vbios_version, fwid,
/// leaf_subject, chain_len, signature_valid (full verification with the pinned root).
#[test]
fn real_reports_agree_with_every_fact() {
    let facts = facts();
    for name in REPORTS {
        let f = &facts[name];
        assert_eq!(f["kind"], "nvidia-spdm");
        let (report, chain) = report_and_chain(name);
        assert_eq!(
            report.len() as u64,
            f["file_len"].as_u64().unwrap(),
            "{name} file_len"
        );

        let r = GpuReport::parse(&report).unwrap();
        assert_eq!(
            r.signed_len as u64,
            f["signed_len"].as_u64().unwrap(),
            "{name} signed_len"
        );
        assert_eq!(
            r.trailing_len as u64,
            f["trailing_bytes"].as_u64().unwrap(),
            "{name} trailing"
        );
        assert_eq!(
            hex::encode(r.request_nonce()),
            f["request_nonce"].as_str().unwrap(),
            "{name} nonce"
        );
        assert_eq!(
            r.measurement_blocks.len() as u64,
            f["measurement_blocks"].as_u64().unwrap()
        );
        assert_eq!(
            r.opaque.driver_version().unwrap(),
            f["driver_version"].as_str().unwrap()
        );
        assert_eq!(
            r.opaque.vbios_version().unwrap(),
            f["vbios_version"].as_str().unwrap()
        );
        assert_eq!(hex::encode(r.opaque.fwid().unwrap()), f["fwid"].as_str().unwrap());
        // Structure shared by all Hopper reports (notes §1.2).
        assert_eq!(r.request.version, 0x11);
        assert_eq!(r.request.attributes, 0x01);
        assert_eq!(r.request.operation, 0xFF);
        assert_eq!(r.request.slot_id, 0);
        assert_eq!(r.measurement_record_len, 3520);
        for (i, b) in r.measurement_blocks.iter().enumerate() {
            assert_eq!(usize::from(b.index), i + 1);
            assert_eq!((b.spec, b.value_type, b.value.len()), (1, 1, 48));
        }
        assert_eq!(r.signed_bytes().len(), r.signed_len);
        assert_eq!(r.signed_len + SIGNATURE_LEN + r.trailing_len, report.len());
        assert_eq!(
            &report[r.signed_len..r.signed_len + SIGNATURE_LEN],
            &r.signature[..]
        );
        assert_eq!(r.opaque.msrscnt().unwrap().len(), 64);

        let v = verify_gpu_report(&report, &chain, Some(nonce_of(name)), Some(AT));
        assert_eq!(
            v.is_ok(),
            f["signature_valid"].as_bool().unwrap(),
            "{name}: {v:?}"
        );
        let v = v.unwrap();
        assert_eq!(v.leaf_subject, f["leaf_subject"].as_str().unwrap());
        assert_eq!(v.chain_len as u64, f["chain_len"].as_u64().unwrap());
        assert_eq!(v.request_nonce, f["request_nonce"].as_str().unwrap());
        assert_eq!(v.driver_version.as_deref(), f["driver_version"].as_str());
        assert_eq!(v.vbios_version.as_deref(), f["vbios_version"].as_str());
        assert_eq!(v.fwid, f["fwid"].as_str().unwrap());
        assert_eq!(
            v.measurements.len() as u64,
            f["measurement_blocks"].as_u64().unwrap()
        );
        assert_eq!((v.signed_len, v.trailing_len), (r.signed_len, r.trailing_len));
        // Without a nonce or a clock, too; and serializable.
        verify_gpu_report(&report, &chain, None, None).unwrap();
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["fwid"], f["fwid"]);
        assert_eq!(
            serde_json::to_value(&r).unwrap()["request"]["nonce"],
            f["request_nonce"]
        );
        // The leaf's DICE FWID is SHA-384.
        let leaf = &x509::parse_pem_bundle(&chain).unwrap()[0];
        let fwids = dice_fwids(leaf).unwrap().unwrap();
        assert_eq!(fwids.len(), 1);
        assert_eq!(fwids[0].hash_alg, x509::oids::SHA384);
        assert_eq!(hex::encode(&fwids[0].digest), f["fwid"].as_str().unwrap());
    }
}

#[test]
fn opaque_fields_of_the_real_reports() {
    let r = GpuReport::parse(&data(REPORTS[0])).unwrap();
    let o = &r.opaque;
    assert_eq!(o.chip_sku().as_deref(), Some("882"));
    assert_eq!(o.chip_sku_mod().as_deref(), Some("0"));
    assert_eq!(o.project().as_deref(), Some("1010"));
    assert_eq!(o.project_sku().as_deref(), Some("0200"));
    assert_eq!(o.project_sku_mod().as_deref(), Some(""));
    assert_eq!(o.nvdec0_status(), Some(0x55));
    assert_eq!(o.protected_pcie_status(), Some(0x55));
    assert_eq!(o.feature_flag(), None);
    assert_eq!(o.opaque_data_version(), None);
    assert_eq!(r.opaque_len, 422);
    let order: Vec<u16> = o.fields.iter().map(|f| f.field_type).collect();
    assert_eq!(order, [6, 14, 15, 16, 17, 18, 19, 3, 4, 12, 13, 11, 20, 21]);

    // The 590 driver: PPCIE mode, opaque data version 1, 18 switch PDIs.
    let r = GpuReport::parse(&data(REPORTS[2])).unwrap();
    let o = &r.opaque;
    assert_eq!(r.opaque_len, 579);
    assert_eq!(o.feature_flag(), Some(FEATURE_FLAG_PPCIE));
    assert_eq!(o.opaque_data_version(), Some(1));
    assert_eq!(o.protected_pcie_status(), Some(0xAA));
    assert_eq!(o.switch_pdis().unwrap().len(), 18);
    assert_eq!(o.project().as_deref(), Some("G520"));
    assert_eq!(o.chip_sku().as_deref(), Some("885"));
}

/// Rebuilds an SPDM response from NVIDIA's golden parse (sdk_spdm_parsed_output.json), parses
/// it, and checks that our SDK-shaped rendering reproduces the golden JSON exactly. The golden
/// fields add up to 423 opaque bytes against an OpaqueLength of 435: the other 12 bytes are a
/// field the SDK output leaves out, filled here with one unknown 8-byte field.
#[test]
fn golden_sdk_parse_round_trips() {
    let golden: serde_json::Value =
        serde_json::from_slice(&data("nvidia/sdk_spdm_parsed_output.json")).unwrap();
    let unhex = |v: &serde_json::Value| hex::decode(v.as_str().unwrap().trim_start_matches("0x")).unwrap();
    let byte = |v: &serde_json::Value| unhex(v)[0];

    let mut bytes = vec![0x11, 0xE0, 0x01, 0xFF];
    bytes.extend_from_slice(&[0x5A; 32]);
    bytes.push(0);
    bytes.extend_from_slice(&[byte(&golden["SPDMVersion"]), byte(&golden["RequestResponseCode"])]);
    bytes.extend_from_slice(&[byte(&golden["Param1"]), byte(&golden["Param2"])]);
    let n = golden["NumberOfBlocks"].as_u64().unwrap();
    bytes.push(n as u8);
    bytes.extend_from_slice(&(golden["MeasurementRecordLength"].as_u64().unwrap() as u32).to_le_bytes()[..3]);
    let blocks = &golden["MeasurementRecord"]["MeasurementBlocks"];
    for i in 1..=n {
        let b = &blocks[i.to_string()];
        let value = unhex(&b["DMTFSpecMeasurementValue"]);
        assert_eq!(
            value.len() as u64,
            b["DMTFSpecMeasurementValueSize"].as_u64().unwrap()
        );
        bytes.extend_from_slice(&[i as u8, 1]);
        bytes.extend_from_slice(&((value.len() + 3) as u16).to_le_bytes());
        bytes.push(b["DMTFSpecMeasurementValueType"].as_u64().unwrap() as u8);
        bytes.extend_from_slice(&(value.len() as u16).to_le_bytes());
        bytes.extend_from_slice(&value);
    }
    bytes.extend_from_slice(&unhex(&golden["Nonce"]));
    let mut opaque = Vec::new();
    for (name, value) in golden["OpaqueData"]["OpaqueDataField"].as_object().unwrap() {
        let t = (0..=255u16)
            .find(|t| opaque_type_name(*t) == Some(name.as_str()))
            .unwrap();
        let v = match value {
            serde_json::Value::Array(a) => a
                .iter()
                .flat_map(|x| (x.as_u64().unwrap() as u32).to_le_bytes())
                .collect(),
            v => unhex(v),
        };
        opaque.extend_from_slice(&t.to_le_bytes());
        opaque.extend_from_slice(&(v.len() as u16).to_le_bytes());
        opaque.extend_from_slice(&v);
    }
    let opaque_len = golden["OpaqueLength"].as_u64().unwrap() as usize;
    assert_eq!(opaque_len - opaque.len(), 12);
    opaque.extend_from_slice(&[0xFE, 0x00, 8, 0]);
    opaque.extend_from_slice(&[0; 8]);
    bytes.extend_from_slice(&(opaque.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&opaque);
    bytes.extend_from_slice(&unhex(&golden["Signature"]));

    let r = GpuReport::parse(&bytes).unwrap();
    let mut ours = r.to_sdk_json();
    let filler = ours["OpaqueData"]["OpaqueDataField"]
        .as_object_mut()
        .unwrap()
        .remove("UNKNOWN_OPAQUE_TYPE(0xfe)");
    assert!(filler.is_some());
    assert_eq!(ours, golden);
    assert_eq!(r.opaque.driver_version().as_deref(), Some("580.159.03"));
    assert_eq!(r.opaque.vbios_version().as_deref(), Some("96.00.74.00.20"));
    assert_eq!(r.opaque.msrscnt().unwrap().len(), 64);

    // A real report renders to the same shape (same keys at the top level).
    let real = GpuReport::parse(&data(REPORTS[0])).unwrap().to_sdk_json();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&real), keys(&golden));
    assert_eq!(
        real["OpaqueData"]["OpaqueDataField"]["OPAQUE_FIELD_ID_FWID"],
        format!("0x{}", facts()[REPORTS[0]]["fwid"].as_str().unwrap())
    );
}

fn flip(bytes: &[u8], pos: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[pos] ^= 0x01;
    b
}

#[test]
fn tampering_with_the_report_is_rejected() {
    for name in REPORTS {
        let (report, chain) = report_and_chain(name);
        let r = GpuReport::parse(&report).unwrap();
        let nonce = nonce_of(name);
        let verify = |b: &[u8], n: Option<[u8; 32]>| verify_gpu_report(b, &chain, n, Some(AT));

        // Signature (r and s halves).
        for pos in [
            r.signed_len,
            r.signed_len + 47,
            r.signed_len + 48,
            r.signed_len + 95,
        ] {
            assert!(
                matches!(
                    verify(&flip(&report, pos), Some(nonce)),
                    Err(Error::BadSignature(_))
                ),
                "{name} sig {pos}"
            );
        }
        // Request nonce: bad signature without an expected nonce, nonce mismatch with one.
        let t = flip(&report, 4 + 7);
        assert!(matches!(verify(&t, None), Err(Error::BadSignature(_))));
        assert!(matches!(verify(&t, Some(nonce)), Err(Error::NonceMismatch(_))));
        // The right report with another expected nonce.
        let mut other = nonce;
        other[31] ^= 0x80;
        assert!(matches!(
            verify(&report, Some(other)),
            Err(Error::NonceMismatch(_))
        ));
        // A measurement value (block 2's value starts at 37 + 8 + 55 + 7).
        assert!(matches!(
            verify(&flip(&report, 37 + 8 + 55 + 7 + 10), None),
            Err(Error::BadSignature(_))
        ));
        // Responder nonce.
        assert!(matches!(
            verify(&flip(&report, 3565), None),
            Err(Error::BadSignature(_))
        ));
        // The FWID inside the opaque data.
        let fwid_at = find(&report, r.opaque.fwid().unwrap());
        assert!(matches!(
            verify(&flip(&report, fwid_at + 5), None),
            Err(Error::BadSignature(_))
        ));
        // The driver version text.
        let drv_at = find(&report, r.opaque.driver_version().unwrap().as_bytes());
        assert!(matches!(
            verify(&flip(&report, drv_at), None),
            Err(Error::BadSignature(_))
        ));
        // Every byte of the signed range (sampled) breaks the signature or the format.
        for pos in (0..r.signed_len).step_by(97) {
            let e = verify(&flip(&report, pos), None).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::BadSignature(_) | Error::Malformed { .. } | Error::Unsupported { .. }
                ),
                "{name} byte {pos}: {e:?}"
            );
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

fn to_pem(certs: &[Certificate]) -> Vec<u8> {
    certgen::to_pem(certs).unwrap()
}

#[test]
fn tampering_with_the_chain_is_rejected() {
    let (report, chain_pem) = report_and_chain(REPORTS[0]);
    let chain = x509::parse_pem_bundle(&chain_pem).unwrap();
    // Round trip of the helper.
    verify_gpu_report(&report, &to_pem(&chain), None, Some(AT)).unwrap();
    for i in 0..4 {
        let mut der = x509::to_der(&chain[i]).unwrap();
        let n = der.len();
        der[n - 5] ^= 0x01; // inside the signature
        let mut t = chain.clone();
        t[i] = x509::parse_der(&der).unwrap();
        let e = verify_gpu_report(&report, &to_pem(&t), None, Some(AT)).unwrap_err();
        assert!(matches!(e, Error::CertificateChain(_)), "cert {i}: {e:?}");
    }
    // Another device's leaf: the chain breaks (its issuer is another BROM).
    let other = x509::parse_pem_bundle(&data("nvidia/sdk_hopper_570_certchain.pem")).unwrap();
    let mut t = chain.clone();
    t[0] = other[0].clone();
    assert!(matches!(
        verify_gpu_report(&report, &to_pem(&t), None, Some(AT)),
        Err(Error::CertificateChain(_))
    ));
    // Another device's whole chain: the chain is fine, the report signature is not.
    let e = verify_gpu_report(
        &report,
        &data("nvidia/sdk_hopper_570_certchain.pem"),
        None,
        Some(AT),
    )
    .unwrap_err();
    assert!(matches!(e, Error::BadSignature(_)), "{e:?}");
    // Wrong length: without the BROM.
    let short = [
        chain[0].clone(),
        chain[2].clone(),
        chain[3].clone(),
        chain[4].clone(),
    ];
    assert!(matches!(
        verify_gpu_report(&report, &to_pem(&short), None, Some(AT)),
        Err(Error::CertificateChain(_))
    ));
    // Without the device's root copy it still verifies (5 with the pinned root).
    verify_gpu_report(&report, &to_pem(&chain[..4]), None, Some(AT)).unwrap();
    // Before the intermediates' validity.
    assert!(matches!(
        verify_gpu_report(&report, &chain_pem, None, Some(1_600_000_000)),
        Err(Error::CertificateChain(_))
    ));
    // Garbage chain.
    assert!(matches!(
        verify_gpu_report(&report, b"nope", None, None),
        Err(Error::Malformed { .. })
    ));
}

#[test]
fn trailing_bytes_are_tolerated_and_counted() {
    let (mut report, chain) = report_and_chain(REPORTS[1]);
    report.push(0);
    let v = verify_gpu_report(&report, &chain, None, Some(AT)).unwrap();
    assert_eq!((v.signed_len, v.trailing_len), (4021, 1));
    report.extend_from_slice(&[0xAB; 100]);
    assert_eq!(GpuReport::parse(&report).unwrap().trailing_len, 101);
    verify_gpu_report(&report, &chain, None, Some(AT)).unwrap();
}

#[test]
fn every_truncation_is_an_error() {
    for name in REPORTS {
        let report = data(name);
        for cut in 0..report.len() {
            assert!(GpuReport::parse(&report[..cut]).is_err(), "{name} cut at {cut}");
        }
        assert!(GpuReport::parse(&report).is_ok());
    }
}

#[test]
fn structural_errors() {
    let report = data(REPORTS[0]);
    let with = |pos: usize, val: u8| {
        let mut b = report.clone();
        b[pos] = val;
        GpuReport::parse(&b)
    };
    assert!(matches!(with(0, 0x12), Err(Error::Unsupported { .. })));
    assert!(matches!(with(1, 0xE1), Err(Error::Malformed { .. })));
    assert!(matches!(with(2, 0x00), Err(Error::Unsupported { .. })));
    assert!(matches!(with(37, 0x10), Err(Error::Malformed { .. })));
    assert!(matches!(with(38, 0x61), Err(Error::Malformed { .. })));
    // One block fewer than the record holds.
    assert!(matches!(with(41, 63), Err(Error::Malformed { .. })));
    // A duplicate block index.
    assert!(matches!(with(45 + 55, 1), Err(Error::Malformed { .. })));
    // A non-DMTF block.
    assert!(matches!(with(46, 0), Err(Error::Unsupported { .. })));
    // A duplicate opaque type: rename the BOARD_ID field (type 14, second TLV) to VBIOS (6).
    assert!(matches!(with(3599 + 12, 6), Err(Error::Malformed { .. })));
}

// ---------------------------------------------------------------------------------------------
// A locally made P-384 chain (root → intermediate → leaf with a DICE FWID), same format.

fn key(seed: u8) -> SigningKey {
    SigningKey::from_slice(&[seed; 48]).unwrap()
}

/// A certificate from [`crate::certgen`], valid 2020-09-13..2096-10-02.
fn make_cert(
    serial: u8,
    subject: &str,
    issuer: &str,
    subject_key: &SigningKey,
    issuer_key: &SigningKey,
    ca: bool,
    fwid: Option<&[u8]>,
) -> Certificate {
    let spec = certgen::CertSpec {
        serial: &[serial],
        subject,
        issuer,
        ca,
        fwid,
        not_before: 1_600_000_000,
        not_after: 4_000_000_000,
    };
    certgen::p384_cert(&spec, subject_key.verifying_key(), issuer_key).unwrap()
}

struct LocalChain {
    root: Certificate,
    pem: Vec<u8>,
    leaf_key: SigningKey,
}

/// Root -> ICA -> leaf; the leaf carries `cert_fwid` in its DICE extension when given.
fn local_chain(cert_fwid: Option<&[u8]>) -> LocalChain {
    let (rk, ik, lk) = (key(0x11), key(0x22), key(0x33));
    let root = make_cert(
        1,
        "CN=Test GPU Root,O=Veil",
        "CN=Test GPU Root,O=Veil",
        &rk,
        &rk,
        true,
        None,
    );
    let ica = make_cert(
        2,
        "CN=Test GPU ICA,O=Veil",
        "CN=Test GPU Root,O=Veil",
        &ik,
        &rk,
        true,
        None,
    );
    let leaf = make_cert(
        3,
        "CN=Test GPU Leaf,O=Veil",
        "CN=Test GPU ICA,O=Veil",
        &lk,
        &ik,
        false,
        cert_fwid,
    );
    LocalChain {
        pem: to_pem(&[leaf, ica, root.clone()]),
        root,
        leaf_key: lk,
    }
}

/// The real report's signed bytes with a new nonce and FWID, signed by `key`.
fn resign(report: &[u8], nonce: &[u8; 32], fwid: &[u8], key: &SigningKey) -> Vec<u8> {
    let r = GpuReport::parse(report).unwrap();
    let mut signed = r.signed_bytes().to_vec();
    signed[4..36].copy_from_slice(nonce);
    let at = find(&signed, r.opaque.fwid().unwrap());
    signed[at..at + 48].copy_from_slice(fwid);
    let sig = certgen::sign_raw(key, &signed).unwrap();
    signed.extend_from_slice(&sig);
    signed
}

#[test]
fn locally_signed_reports_verify_against_their_root() {
    let fwid = [0xF1u8; 48];
    let nonce = [0x42u8; 32];
    let lc = local_chain(Some(&fwid));
    let report = resign(&data(REPORTS[0]), &nonce, &fwid, &lc.leaf_key);

    let v = verify_gpu_report_with_root(&report, &lc.pem, &lc.root, Some(nonce), Some(AT)).unwrap();
    assert_eq!(v.fwid, hex::encode(fwid));
    assert_eq!(v.request_nonce, hex::encode(nonce));
    assert_eq!(v.leaf_subject, "CN=Test GPU Leaf,O=Veil");
    assert_eq!(v.chain_len, 3);
    assert_eq!(v.driver_version.as_deref(), Some("550.90.07"));

    // Not against the NVIDIA root (and not 5 certificates).
    assert!(matches!(
        verify_gpu_report(&report, &lc.pem, None, None),
        Err(Error::CertificateChain(_))
    ));
    // Wrong nonce.
    assert!(matches!(
        verify_gpu_report_with_root(&report, &lc.pem, &lc.root, Some([0; 32]), None),
        Err(Error::NonceMismatch(_))
    ));
    // The report's FWID differs from the leaf certificate's (both validly signed).
    let other_fwid = [0xF2u8; 48];
    let mismatched = resign(&data(REPORTS[0]), &nonce, &other_fwid, &lc.leaf_key);
    let e = verify_gpu_report_with_root(&mismatched, &lc.pem, &lc.root, Some(nonce), Some(AT)).unwrap_err();
    assert!(matches!(e, Error::FwidMismatch(_)), "{e:?}");
    // Signed by another key than the leaf's.
    let forged = resign(&data(REPORTS[0]), &nonce, &fwid, &key(0x44));
    assert!(matches!(
        verify_gpu_report_with_root(&forged, &lc.pem, &lc.root, None, None),
        Err(Error::BadSignature(_))
    ));
    // A leaf without the DICE extension.
    let bare = local_chain(None);
    assert!(matches!(
        verify_gpu_report_with_root(&report, &bare.pem, &bare.root, None, None),
        Err(Error::FwidMismatch(_))
    ));
    // A leaf is not a CA: a chain that uses it as an issuer fails.
    let (rk, ik, lk) = (key(0x11), key(0x22), key(0x33));
    let root = bare.root;
    let leaf2 = make_cert(
        4,
        "CN=X,O=Veil",
        "CN=Test GPU Leaf,O=Veil",
        &key(0x55),
        &lk,
        false,
        Some(&fwid),
    );
    let leaf = make_cert(
        3,
        "CN=Test GPU Leaf,O=Veil",
        "CN=Test GPU ICA,O=Veil",
        &lk,
        &ik,
        false,
        Some(&fwid),
    );
    let ica = make_cert(
        2,
        "CN=Test GPU ICA,O=Veil",
        "CN=Test GPU Root,O=Veil",
        &ik,
        &rk,
        true,
        None,
    );
    let bad_pem = to_pem(&[leaf2, leaf, ica]);
    let report2 = resign(&data(REPORTS[0]), &nonce, &fwid, &key(0x55));
    assert!(matches!(
        verify_gpu_report_with_root(&report2, &bad_pem, &root, None, None),
        Err(Error::CertificateChain(_))
    ));
}

#[test]
fn dice_tcb_info_standard_form() {
    // DiceTcbInfo with vendor [0], fwids [6] (two entries), as in the TCG DICE spec.
    let fwid = |fill: u8| {
        let mut f = x509::oids::SHA384.to_der().unwrap();
        f.extend(
            der::asn1::OctetStringRef::new(&[fill; 48])
                .unwrap()
                .to_der()
                .unwrap(),
        );
        der::asn1::AnyRef::new(der::Tag::Sequence, &f)
            .unwrap()
            .to_der()
            .unwrap()
    };
    let mut list = fwid(1);
    list.extend(fwid(2));
    let mut body = vec![0x80, 3, b'N', b'V', b'D'];
    body.push(0xA6);
    body.push(list.len() as u8);
    body.extend(&list);
    let value = der::asn1::AnyRef::new(der::Tag::Sequence, &body)
        .unwrap()
        .to_der()
        .unwrap();
    let fwids = parse_dice_fwids(&value).unwrap();
    assert_eq!(fwids.len(), 2);
    assert_eq!(fwids[0].digest, [1; 48]);
    assert_eq!(fwids[1].digest, [2; 48]);
    assert!(parse_dice_fwids(&[0x30, 0x05, 0xA6, 0x03, 0x30, 0x01, 0x00]).is_err());
    assert!(parse_dice_fwids(&[0x04, 0x00]).is_err());
    assert!(parse_dice_fwids(&[]).is_err());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..5000)) {
        let _ = GpuReport::parse(&bytes);
        let _ = parse_dice_fwids(&bytes);
    }

    #[test]
    fn random_prefixes_never_panic(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4200)) {
        // A valid request header followed by random bytes reaches the deeper parsers.
        let mut b = vec![0x11, 0xE0, 0x01, 0xFF];
        b.extend_from_slice(&[0; 33]);
        b.extend_from_slice(&[0x11, 0x60, 0, 0]);
        b.extend_from_slice(&tail);
        let _ = GpuReport::parse(&b);
    }

    #[test]
    fn mutated_reports_never_panic(edits in proptest::collection::vec((0usize..4300, proptest::prelude::any::<u8>()), 1..8)) {
        let mut b = data(REPORTS[2]);
        for (pos, val) in edits {
            let n = b.len();
            b[pos % n] = val;
        }
        if let Ok(r) = GpuReport::parse(&b) {
            let _ = r.to_sdk_json();
            let _ = r.opaque.vbios_version();
            let _ = r.opaque.msrscnt();
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    #[test]
    fn mutated_reports_never_verify(pos in 0usize..4117, bit in 0u8..8) {
        let (report, chain) = report_and_chain(REPORTS[0]);
        let mut b = report.clone();
        b[pos] ^= 1 << bit;
        proptest::prop_assert!(verify_gpu_report(&b, &chain, None, Some(AT)).is_err());
    }
}
