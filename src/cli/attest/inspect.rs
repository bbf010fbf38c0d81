//! `veil attest inspect FILE`: what a piece of evidence says, and which of its signatures and
//! certificate chains verify.
//!
//! The kind is detected from the bytes: an NVIDIA SPDM report starts with `0x11 0xE0` (SPDM 1.1
//! GET_MEASUREMENTS); a TDX quote with version 4 or 5 and TEE type 0x81; an SEV-SNP report is
//! 1184 bytes with version 2, 3 or 5; anything else that decodes as an `AttestationBundle` is one.
//! The parsed fields go to stdout as JSON (with the checks under `"checks"`); each check is also
//! one line on stderr, e.g. `signature: valid (...)` or `chain (...): INVALID: ...`.
//! Certificate chains are checked to the pinned roots (NVIDIA Device Identity CA, AMD ASK/ARK,
//! Intel SGX Root CA) at `--at`; a chain ending at its own self-signed root (simulated evidence)
//! is reported as such — it proves nothing.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use prost::Message;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use veil_attest::bundle::{FORMAT_VERSION, claims_digest, cpu_report_data, decode_bundle, gpu_nonce};
use veil_attest::evidence::EvidenceKind;
use veil_attest::nvidia::{self, GpuReport};
use veil_attest::snp::{AmdProduct, SNP_REPORT_LEN, SnpReport, Tcb, VcekExtensions};
use veil_attest::tdx::{self, TdxCollateral, TdxQuote};
use veil_attest::x509::{self, Certificate};
use veil_proto::v1::{AttestationBundle, AttestationClaims};

use super::{now, parse_time, rfc3339};

/// Arguments of `veil attest inspect`.
#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The file: an AttestationBundle, an NVIDIA SPDM report, an SEV-SNP report or a TDX quote.
    file: PathBuf,
    /// Certificates for a report that carries none: the GPU's chain (PEM, leaf first) for an
    /// SPDM report, the VCEK (DER or PEM) for an SNP report; for a TDX quote, a PCK chain to
    /// check besides the embedded one.
    #[arg(long, value_name = "CHAIN")]
    certs: Option<PathBuf>,
    /// TDX collateral (PCCS JSON) to evaluate the TCB status with.
    #[arg(long, value_name = "FILE")]
    collateral: Option<PathBuf>,
    /// Check certificate validity as of TIME: Unix seconds or RFC 3339 [default: now].
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
}

/// The outcome of one check.
#[derive(Debug, Serialize)]
struct Check {
    check: String,
    /// "valid", "invalid" or "not checked".
    status: &'static str,
    detail: String,
}

impl Check {
    fn valid(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            status: "valid",
            detail: detail.into(),
        }
    }

    fn invalid(check: impl Into<String>, why: impl std::fmt::Display) -> Self {
        Self {
            check: check.into(),
            status: "invalid",
            detail: why.to_string(),
        }
    }

    fn skipped(check: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            status: "not checked",
            detail: why.into(),
        }
    }

    fn of<T, E: std::fmt::Display>(check: impl Into<String>, r: Result<T, E>, ok: impl Into<String>) -> Self {
        match r {
            Ok(_) => Self::valid(check, ok),
            Err(e) => Self::invalid(check, e),
        }
    }

    /// The line printed for people.
    fn line(&self) -> String {
        match self.status {
            "valid" if self.detail.is_empty() => format!("{}: valid", self.check),
            "valid" => format!("{}: valid ({})", self.check, self.detail),
            "invalid" => format!("{}: INVALID: {}", self.check, self.detail),
            other => format!("{}: {other} ({})", self.check, self.detail),
        }
    }
}

/// The result of inspecting one piece of evidence.
struct Inspected {
    report: Value,
    checks: Vec<Check>,
}

pub(super) fn run(a: InspectArgs) -> anyhow::Result<()> {
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let bytes = read(&a.file)?;
    let certs = a.certs.as_ref().map(read).transpose()?;
    let collateral = a.collateral.as_ref().map(read).transpose()?;
    let at = a.at.as_deref().map(parse_time).transpose()?.unwrap_or_else(now);
    let mut notes = Vec::new();
    let given = certs.as_deref().map(|c| ("given", c));
    let (kind, out) = match detect(&bytes) {
        Detected::Spdm => ("nvidia-spdm", spdm(&bytes, given, at, "")?),
        Detected::Tdx => (
            "tdx-quote",
            tdx(&bytes, certs.as_deref(), collateral.as_deref(), at, "")?,
        ),
        Detected::Snp => ("snp-report", snp(&bytes, given, at, "")?),
        Detected::Bundle(b) => {
            if certs.is_some() || collateral.is_some() {
                notes.push("--certs and --collateral are ignored for a bundle: it carries its own".into());
            }
            ("bundle", bundle(&b, at, &mut notes)?)
        }
        Detected::Unknown => bail!(
            "{}: not an AttestationBundle, NVIDIA SPDM report, SEV-SNP report or TDX quote ({} bytes)",
            a.file.display(),
            bytes.len()
        ),
    };
    let mut doc = json!({
        "file": a.file.display().to_string(),
        "kind": kind,
        "at": rfc3339(at),
    });
    if let (Value::Object(d), Value::Object(r)) = (&mut doc, out.report) {
        d.extend(r);
    }
    doc["checks"] = serde_json::to_value(&out.checks)?;
    println!("{}", serde_json::to_string_pretty(&doc)?);
    for c in &out.checks {
        eprintln!("{}", c.line());
    }
    for n in notes {
        eprintln!("{n}");
    }
    Ok(())
}

enum Detected {
    Spdm,
    Tdx,
    Snp,
    Bundle(Box<AttestationBundle>),
    Unknown,
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// What the bytes look like (the parsers then say whether they really are).
fn detect(b: &[u8]) -> Detected {
    if b.starts_with(&[nvidia::SPDM_VERSION_1_1, nvidia::GET_MEASUREMENTS]) {
        return Detected::Spdm;
    }
    if matches!(le_u16(b, 0), Some(4 | 5)) && le_u32(b, 4) == Some(tdx::TEE_TYPE_TDX) {
        return Detected::Tdx;
    }
    if b.len() == SNP_REPORT_LEN && matches!(le_u32(b, 0), Some(2 | 3 | 5)) {
        return Detected::Snp;
    }
    match decode_bundle(b) {
        Ok(bundle) if bundle.format_version != 0 || bundle.cpu.is_some() => {
            Detected::Bundle(Box::new(bundle))
        }
        _ => Detected::Unknown,
    }
}

fn cert_json(c: &Certificate) -> Value {
    let v = &c.tbs_certificate.validity;
    json!({
        "subject": x509::subject_string(c),
        "issuer": x509::issuer_string(c),
        "not_before": rfc3339(v.not_before.to_unix_duration().as_secs()),
        "not_after": rfc3339(v.not_after.to_unix_duration().as_secs()),
        "sha256": x509::fingerprint_sha256(c).map(hex::encode).unwrap_or_default(),
    })
}

/// A pinned trust anchor: its name, the pinned intermediates to append to a chain, the root.
struct Anchor {
    name: String,
    intermediates: Vec<Certificate>,
    root: Certificate,
}

fn chain_name(prefix: &str, label: &str, chain: &[Certificate]) -> String {
    let n = chain.len();
    format!(
        "{prefix}chain ({label}, {n} certificate{})",
        if n == 1 { "" } else { "s" }
    )
}

/// Whether `chain` leads to one of `anchors` at `at`, and to which.
fn pinned_chain(
    prefix: &str,
    label: &str,
    chain: &[Certificate],
    anchors: &[Anchor],
    at: u64,
) -> (Check, Option<usize>) {
    let name = chain_name(prefix, label, chain);
    let mut errors = Vec::new();
    for (i, a) in anchors.iter().enumerate() {
        let path: Vec<Certificate> = chain.iter().chain(&a.intermediates).cloned().collect();
        match x509::verify_chain(&path, &a.root, Some(at)) {
            Ok(()) => {
                let detail = format!("to the pinned {} at {}", a.name, rfc3339(at));
                return (Check::valid(name, detail), Some(i));
            }
            Err(e) => errors.push(format!("{}: {e}", a.name)),
        }
    }
    let why = format!("not to a pinned root at {}: {}", rfc3339(at), errors.join("; "));
    (Check::invalid(name, why), None)
}

/// For a chain that ends at its own self-signed root (simulated evidence): whether it holds up
/// to that root, which proves nothing.
fn own_root_chain(prefix: &str, label: &str, chain: &[Certificate], at: u64) -> Option<Check> {
    let last = chain.last()?;
    if chain.len() < 2 || x509::subject_string(last) != x509::issuer_string(last) {
        return None;
    }
    Some(Check::of(
        format!("{} to its own root", chain_name(prefix, label, chain)),
        x509::verify_chain(chain, last, Some(at)),
        format!(
            "'{}' is self-signed and not pinned: anyone can make such a chain, it proves nothing",
            x509::subject_string(last)
        ),
    ))
}

/// The pinned-root check of `chain`, and when that fails, the check to its own root.
fn chain_checks(prefix: &str, label: &str, chain: &[Certificate], anchors: &[Anchor], at: u64) -> Vec<Check> {
    let (pinned, matched) = pinned_chain(prefix, label, chain, anchors, at);
    let mut out = vec![pinned];
    if matched.is_none() {
        out.extend(own_root_chain(prefix, label, chain, at));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// NVIDIA SPDM

fn spdm(bytes: &[u8], certs: Option<(&str, &[u8])>, at: u64, prefix: &str) -> anyhow::Result<Inspected> {
    let r = GpuReport::parse(bytes).context("parsing the SPDM report")?;
    let o = &r.opaque;
    let mut report = json!({
        "file_len": bytes.len(),
        "signed_len": r.signed_len,
        "trailing_bytes": r.trailing_len,
        "spdm_version": format!("{:#04x}", r.request.version),
        "request_nonce": hex::encode(r.request.nonce),
        "responder_nonce": hex::encode(r.responder_nonce),
        "slot_id": r.request.slot_id,
        "measurement_blocks": r.measurement_blocks.len(),
        "driver_version": o.driver_version(),
        "vbios_version": o.vbios_version(),
        "fwid": o.fwid().map(hex::encode),
        "chip_sku": o.chip_sku(),
        "project": o.project(),
        "project_sku": o.project_sku(),
        "feature_flag": o.feature_flag(),
        "opaque_data_version": o.opaque_data_version(),
        "measurements": r.measurement_blocks.iter().map(|b| json!({
            "index": b.index,
            "value_type": b.value_type,
            "value": hex::encode(&b.value),
        })).collect::<Vec<_>>(),
        "opaque": o.fields.iter().map(|f| json!({
            "type": f.field_type,
            "name": nvidia::opaque_type_name(f.field_type),
            "value": hex::encode(&f.value),
        })).collect::<Vec<_>>(),
        "signature": hex::encode(r.signature),
    });
    let mut checks = Vec::new();
    let Some((label, pem)) = certs else {
        checks.push(Check::skipped(
            format!("{prefix}signature"),
            "an SPDM report carries no certificates: pass --certs with the GPU's chain (PEM, leaf first)",
        ));
        return Ok(Inspected { report, checks });
    };
    let chain = match x509::parse_certs(pem) {
        Ok(c) => c,
        Err(e) => {
            checks.push(Check::invalid(format!("{prefix}certificates ({label})"), e));
            return Ok(Inspected { report, checks });
        }
    };
    let Some(leaf) = chain.first() else {
        bail!("no certificate");
    };
    report["leaf_subject"] = json!(x509::subject_string(leaf));
    report["chain_len"] = json!(chain.len());
    report["certificates"] = chain.iter().map(cert_json).collect();
    checks.push(Check::of(
        format!("{prefix}signature"),
        x509::p384_verifying_key(leaf).and_then(|k| r.verify_signature(&k)),
        format!("ECDSA P-384 by the leaf '{}'", x509::subject_string(leaf)),
    ));
    let fwid = match (nvidia::dice_fwids(leaf), o.fwid()) {
        (Ok(Some(f)), Some(report_fwid)) if f.first().is_some_and(|f| f.digest == report_fwid) => Ok(()),
        (Ok(Some(_)), Some(_)) => Err("the report's FWID differs from the leaf certificate's".to_string()),
        (Ok(None), _) => Err("the leaf certificate has no DICE TcbInfo FWID".to_string()),
        (Err(e), _) => Err(e.to_string()),
        (_, None) => Err("the report has no FWID".to_string()),
    };
    checks.push(Check::of(
        format!("{prefix}fwid"),
        fwid,
        "the report's FWID is the leaf certificate's",
    ));
    let anchors = [Anchor {
        name: "NVIDIA Device Identity CA".into(),
        intermediates: Vec::new(),
        root: nvidia::nvidia_device_identity_root()?,
    }];
    checks.extend(chain_checks(prefix, label, &chain, &anchors, at));
    Ok(Inspected { report, checks })
}

// ---------------------------------------------------------------------------------------------
// AMD SEV-SNP

fn snp(bytes: &[u8], certs: Option<(&str, &[u8])>, at: u64, prefix: &str) -> anyhow::Result<Inspected> {
    let r = SnpReport::parse(bytes).context("parsing the SEV-SNP report")?;
    let layout = r.product_hint().unwrap_or(AmdProduct::Milan);
    let tcb = |raw: u64| serde_json::to_value(Tcb::decode(raw, layout)).unwrap_or(Value::Null);
    let fw = |v: &veil_attest::snp::FirmwareVersion| format!("{}.{}.{}", v.major, v.minor, v.build);
    let mut report = json!({
        "file_len": bytes.len(),
        "version": r.version,
        "guest_svn": r.guest_svn,
        "policy": format!("{:#x}", r.policy),
        "debug_allowed": r.debug_allowed(),
        "migrate_ma_allowed": r.migrate_ma_allowed(),
        "smt_allowed": r.smt_allowed(),
        "single_socket": r.single_socket(),
        "policy_abi": format!("{}.{}", r.policy_abi().0, r.policy_abi().1),
        "family_id": hex::encode(r.family_id),
        "image_id": hex::encode(r.image_id),
        "vmpl": r.vmpl,
        "signature_algo": r.signature_algo,
        "platform_info": format!("{:#x}", r.platform_info),
        "author_key_en": r.author_key_en(),
        "mask_chip_key": r.mask_chip_key(),
        "signing_key": format!("{:?}", r.signing_key()),
        "report_data": hex::encode(r.report_data),
        "measurement": hex::encode(r.measurement),
        "host_data": hex::encode(r.host_data),
        "id_key_digest": hex::encode(r.id_key_digest),
        "author_key_digest": hex::encode(r.author_key_digest),
        "report_id": hex::encode(r.report_id),
        "report_id_ma": hex::encode(r.report_id_ma),
        "cpuid_fam_mod_step": r.cpuid_fam_mod_step.map(|(f, m, s)| format!("{f:#x}/{m:#x}/{s:#x}")),
        "product_hint": r.product_hint(),
        "tcb_layout": layout,
        "current_tcb": tcb(r.current_tcb),
        "reported_tcb": tcb(r.reported_tcb),
        "committed_tcb": tcb(r.committed_tcb),
        "launch_tcb": tcb(r.launch_tcb),
        "current_version": fw(&r.current_version),
        "committed_version": fw(&r.committed_version),
        "launch_mit_vector": r.launch_mit_vector.map(|v| format!("{v:#x}")),
        "current_mit_vector": r.current_mit_vector.map(|v| format!("{v:#x}")),
        "chip_id": hex::encode(r.chip_id),
        "chip_id_masked": r.chip_id_masked(),
    });
    let mut checks = Vec::new();
    let Some((label, cert_bytes)) = certs else {
        checks.push(Check::skipped(
            format!("{prefix}signature"),
            "an SNP report carries no certificates: pass --certs with the VCEK (DER or PEM)",
        ));
        return Ok(Inspected { report, checks });
    };
    let chain = match x509::parse_certs(cert_bytes) {
        Ok(c) => c,
        Err(e) => {
            checks.push(Check::invalid(format!("{prefix}certificates ({label})"), e));
            return Ok(Inspected { report, checks });
        }
    };
    let Some(leaf) = chain.first() else {
        bail!("no certificate");
    };
    report["certificates"] = chain.iter().map(cert_json).collect();
    let signature = if r.mask_chip_key() {
        Err("MASK_CHIP_KEY is set: the report is not signed".to_string())
    } else {
        use p384::ecdsa::signature::Verifier as _;
        x509::p384_verifying_key(leaf)
            .and_then(|k| {
                let sig = r.signature()?;
                k.verify(&r.signed_bytes, &sig).map_err(|_| {
                    veil_attest::Error::BadSignature("does not verify with the leaf's key".into())
                })
            })
            .map_err(|e| e.to_string())
    };
    checks.push(Check::of(
        format!("{prefix}signature"),
        signature,
        format!(
            "ECDSA P-384 over bytes 0..0x2A0 by '{}'",
            x509::subject_string(leaf)
        ),
    ));
    // The VCEK to the pinned ASK and ARK of the report's product (or each product in turn).
    let mut products = r.product_hint().into_iter().collect::<Vec<_>>();
    for p in [AmdProduct::Milan, AmdProduct::Genoa, AmdProduct::Turin] {
        if !products.contains(&p) {
            products.push(p);
        }
    }
    let mut anchors = Vec::new();
    for p in &products {
        let (ask, ark) = p.ask_ark()?;
        anchors.push(Anchor {
            name: format!("AMD {} ARK (through the pinned ASK)", p.name()),
            intermediates: vec![ask],
            root: ark,
        });
    }
    // Only the VCEK counts: the pinned ASK and ARK complete it.
    let (pinned, matched) = pinned_chain(prefix, label, &chain[..1], &anchors, at);
    checks.push(pinned);
    if matched.is_none() {
        checks.extend(own_root_chain(prefix, label, &chain, at));
    }
    if let Some(p) = matched.and_then(|i| products.get(i)).copied() {
        checks.push(Check::of(
            format!("{prefix}vcek tcb and chip id"),
            VcekExtensions::from_cert(leaf).and_then(|x| x.check_report(&r, p)),
            "the VCEK's TCB extensions and hwID match the report",
        ));
    }
    Ok(Inspected { report, checks })
}

// ---------------------------------------------------------------------------------------------
// Intel TDX

fn tdx(
    bytes: &[u8],
    given: Option<&[u8]>,
    collateral: Option<&[u8]>,
    at: u64,
    prefix: &str,
) -> anyhow::Result<Inspected> {
    use p256::ecdsa::signature::Verifier as _;
    use p256::ecdsa::{Signature, VerifyingKey};

    let q = TdxQuote::parse(bytes).context("parsing the TDX quote")?;
    let h = &q.header;
    let t = &q.report;
    let e = &q.qe_report;
    let mut report = json!({
        "file_len": bytes.len(),
        "version": h.version,
        "body_type": q.body_type,
        "att_key_type": h.att_key_type,
        "tee_type": format!("{:#x}", h.tee_type),
        "qe_svn": h.qe_svn,
        "pce_svn": h.pce_svn,
        "qe_vendor_id": hex::encode(h.qe_vendor_id),
        "user_data": hex::encode(h.user_data),
        "signed_data_len": q.signed_data_len,
        "quote_len_without_padding": q.quote_len,
        "tee_tcb_svn": hex::encode(t.tee_tcb_svn),
        "mr_seam": hex::encode(t.mr_seam),
        "mr_signer_seam": hex::encode(t.mr_signer_seam),
        "seam_attributes": hex::encode(t.seam_attributes),
        "td_attributes": format!("{:#x}", t.td_attributes_u64()),
        "debug": t.debug(),
        "xfam": format!("{:#x}", t.xfam_u64()),
        "mrtd": hex::encode(t.mr_td),
        "mr_config_id": hex::encode(t.mr_config_id),
        "mr_owner": hex::encode(t.mr_owner),
        "mr_owner_config": hex::encode(t.mr_owner_config),
        "rtmr0": hex::encode(t.rtmr[0]),
        "rtmr1": hex::encode(t.rtmr[1]),
        "rtmr2": hex::encode(t.rtmr[2]),
        "rtmr3": hex::encode(t.rtmr[3]),
        "report_data": hex::encode(t.report_data),
        "tee_tcb_svn2": t.tee_tcb_svn2.map(hex::encode),
        "mr_service_td": t.mr_service_td.map(hex::encode),
        "attestation_key": hex::encode(q.attestation_key),
        "qe_report": {
            "cpu_svn": hex::encode(e.cpu_svn),
            "misc_select": e.misc_select,
            "attributes": hex::encode(e.attributes),
            "mr_enclave": hex::encode(e.mr_enclave),
            "mr_signer": hex::encode(e.mr_signer),
            "isv_prod_id": e.isv_prod_id,
            "isv_svn": e.isv_svn,
            "report_data": hex::encode(e.report_data),
        },
        "qe_auth_data_len": q.qe_auth_data.len(),
    });
    let mut checks = Vec::new();
    let header_ok = if h.att_key_type != tdx::ATT_KEY_TYPE_ECDSA_P256 {
        Err(format!(
            "attestation key type {}, not 2 (ECDSA P-256)",
            h.att_key_type
        ))
    } else if h.qe_vendor_id != tdx::INTEL_QE_VENDOR_ID {
        Err("the QE vendor is not Intel".into())
    } else {
        Ok(())
    };
    checks.push(Check::of(
        format!("{prefix}header"),
        header_ok,
        "ECDSA P-256 attestation key, TDX, Intel QE",
    ));

    // The quote signature by the attestation key.
    let mut sec1 = [0x04u8; 65];
    sec1[1..].copy_from_slice(&q.attestation_key);
    let quote_sig = VerifyingKey::from_sec1_bytes(&sec1)
        .map_err(|_| "the attestation key is not a P-256 point".to_string())
        .and_then(|k| {
            let sig = Signature::from_slice(&q.signature).map_err(|_| "not a P-256 signature".to_string())?;
            k.verify(&q.signed_bytes, &sig)
                .map_err(|_| "does not verify with the attestation key".to_string())
        });
    checks.push(Check::of(
        format!("{prefix}signature"),
        quote_sig,
        "ECDSA P-256 over header and TD report by the quote's attestation key",
    ));
    // The QE report binds the attestation key.
    let mut hash = Sha256::new();
    hash.update(q.attestation_key);
    hash.update(&q.qe_auth_data);
    let digest = hash.finalize();
    let bound = e.report_data[..32] == digest[..] && e.report_data[32..].iter().all(|b| *b == 0);
    checks.push(Check::of(
        format!("{prefix}qe report binding"),
        if bound {
            Ok(())
        } else {
            Err("QE REPORTDATA is not SHA-256(attestation key || QE auth data) || 0^32")
        },
        "QE REPORTDATA = SHA-256(attestation key || QE auth data)",
    ));

    let anchors = [Anchor {
        name: "Intel SGX Root CA".into(),
        intermediates: Vec::new(),
        root: tdx::intel_sgx_root_ca()?,
    }];
    match q.pck_chain() {
        Ok(chain) => {
            if let Some(leaf) = chain.first() {
                // The QE report signed by the PCK key.
                let qe_sig = x509::p256_verifying_key(leaf)
                    .map_err(|e| e.to_string())
                    .and_then(|k| {
                        let sig = Signature::from_slice(&q.qe_report_signature)
                            .map_err(|_| "not a P-256 signature".to_string())?;
                        k.verify(&q.qe_report_raw, &sig)
                            .map_err(|_| "does not verify with the PCK key".to_string())
                    });
                checks.push(Check::of(
                    format!("{prefix}qe report signature"),
                    qe_sig,
                    format!("ECDSA P-256 by the PCK leaf '{}'", x509::subject_string(leaf)),
                ));
                if let Ok(pck) = tdx::PckExtensions::from_cert(leaf) {
                    report["pck"] = serde_json::to_value(pck)?;
                }
            }
            report["certificates"] = chain.iter().map(cert_json).collect();
            checks.extend(chain_checks(prefix, "embedded PCK chain", &chain, &anchors, at));
        }
        Err(e) => checks.push(Check::invalid(format!("{prefix}chain (embedded PCK chain)"), e)),
    }
    if let Some(given) = given {
        match x509::parse_certs(given) {
            Ok(chain) => checks.extend(chain_checks(prefix, "given", &chain, &anchors, at)),
            Err(e) => checks.push(Check::invalid(format!("{prefix}certificates (given)"), e)),
        }
    }
    if let Some(c) = collateral {
        match TdxCollateral::from_json(c)
            .and_then(|c| tdx::verify_tdx_quote_with_collateral(bytes, &c, None, at))
        {
            Ok(v) => {
                let status = v
                    .tcb
                    .as_ref()
                    .map(|t| format!("{:?}", t.status))
                    .unwrap_or_default();
                report["tcb"] = serde_json::to_value(&v.tcb)?;
                checks.push(Check::valid(
                    format!("{prefix}tcb"),
                    format!(
                        "{status}: collateral signatures, CRLs and TCB levels checked at {}",
                        rfc3339(at)
                    ),
                ));
            }
            Err(e) => checks.push(Check::invalid(format!("{prefix}tcb"), e)),
        }
    }
    Ok(Inspected { report, checks })
}

// ---------------------------------------------------------------------------------------------
// Bundles

fn claims_json(c: &AttestationClaims) -> Value {
    json!({
        "session_keys": c.session_keys.iter().map(|k| json!({
            "algorithm": k.algorithm,
            "public_key": hex::encode(&k.public_key),
        })).collect::<Vec<_>>(),
        "model_digest": hex::encode(&c.model_digest),
        "model_name": c.model_name,
        "engine_build_digest": hex::encode(&c.engine_build_digest),
        "engine_version": c.engine_version,
        "backend": c.backend,
        "cc_mode": c.cc_mode,
        "server_time_unix": c.server_time_unix,
        "server_time": u64::try_from(c.server_time_unix).ok().map(rfc3339),
        "confidential": c.confidential,
        "gpus": c.gpus.iter().map(|g| json!({
            "index": g.index,
            "name": g.name,
            "cc_enabled": g.cc_enabled,
            "dev_tools_mode": g.dev_tools_mode,
            "driver_version": g.driver_version,
            "vbios_version": g.vbios_version,
        })).collect::<Vec<_>>(),
    })
}

fn bundle(b: &AttestationBundle, at: u64, notes: &mut Vec<String>) -> anyhow::Result<Inspected> {
    let claims = AttestationClaims::decode(b.claims.as_slice()).context("decoding the bundle's claims")?;
    let mut checks = vec![Check::of(
        "format version",
        if b.format_version == FORMAT_VERSION {
            Ok(())
        } else {
            Err(format!(
                "{}, this verifier knows {FORMAT_VERSION}",
                b.format_version
            ))
        },
        format!("{FORMAT_VERSION}"),
    )];
    let nonce: [u8; 32] = match b.nonce.as_slice().try_into() {
        Ok(n) => n,
        Err(_) => bail!("the bundle's nonce is {} bytes, not 32", b.nonce.len()),
    };
    let digest = claims_digest(&b.claims);
    let expected_gpu_nonce = gpu_nonce(&nonce, &digest);
    let expected_report_data = cpu_report_data(
        &nonce,
        &digest,
        b.gpus.iter().map(|g| (g.data.as_slice(), g.certs.as_slice())),
    );
    let mut simulated = false;
    let mut gpus = Vec::new();
    for (i, g) in b.gpus.iter().enumerate() {
        let prefix = format!("gpu[{i}] ");
        let kind = EvidenceKind::from_name(&g.kind);
        simulated |= kind.is_some_and(EvidenceKind::is_simulated);
        match kind {
            Some(EvidenceKind::NvidiaSpdm | EvidenceKind::SimulatedNvidiaSpdm) => {
                let certs = (!g.certs.is_empty()).then_some(("embedded", g.certs.as_slice()));
                match spdm(&g.data, certs, at, &prefix) {
                    Ok(out) => {
                        let nonce_ok = out.report["request_nonce"] == json!(hex::encode(expected_gpu_nonce));
                        checks.push(Check::of(
                            format!("{prefix}binding"),
                            if nonce_ok { Ok(()) } else { Err("the report was made for other claims or another request (its nonce is not gpu_nonce)") },
                            "the report's nonce is SHA-256(\"veil/gpu/v1\" || nonce || claims digest)",
                        ));
                        checks.extend(out.checks);
                        gpus.push(json!({"kind": g.kind, "report": out.report}));
                    }
                    Err(e) => {
                        checks.push(Check::invalid(format!("{prefix}report"), format!("{e:#}")));
                        gpus.push(json!({"kind": g.kind}));
                    }
                }
            }
            _ => {
                checks.push(Check::invalid(
                    format!("{prefix}kind"),
                    format!("{:?} is not GPU evidence", g.kind),
                ));
                gpus.push(json!({"kind": g.kind}));
            }
        }
    }
    let cpu = match &b.cpu {
        None => {
            checks.push(Check::invalid("cpu", "the bundle has no CPU evidence"));
            Value::Null
        }
        Some(c) => {
            let prefix = "cpu ";
            let kind = EvidenceKind::from_name(&c.kind);
            simulated |= kind.is_some_and(EvidenceKind::is_simulated);
            let certs = (!c.certs.is_empty()).then_some(("embedded", c.certs.as_slice()));
            let collateral = (!c.collateral.is_empty()).then_some(c.collateral.as_slice());
            let out = match kind {
                Some(EvidenceKind::SnpReport | EvidenceKind::SimulatedSnpReport) => {
                    snp(&c.data, certs, at, prefix)
                }
                Some(EvidenceKind::TdxQuote) => tdx(&c.data, None, collateral, at, prefix),
                _ => Err(anyhow::anyhow!("{:?} is not CPU evidence", c.kind)),
            };
            match out {
                Ok(out) => {
                    let rd_ok = out.report["report_data"] == json!(hex::encode(expected_report_data));
                    checks.push(Check::of(
                        format!("{prefix}binding"),
                        if rd_ok { Ok(()) } else { Err("REPORTDATA does not commit to this nonce, these claims and this GPU evidence") },
                        "REPORTDATA = SHA-512(\"veil/cpu/v1\" || nonce || claims digest || each GPU's SHA-384(report || certs))",
                    ));
                    checks.extend(out.checks);
                    json!({"kind": c.kind, "report": out.report})
                }
                Err(e) => {
                    checks.push(Check::invalid(format!("{prefix}report"), format!("{e:#}")));
                    json!({"kind": c.kind})
                }
            }
        }
    };
    if simulated {
        notes.push(
            "NOT CONFIDENTIAL: the bundle carries SIMULATED evidence, signed by keys the server made \
             at start-up; it proves nothing about the hardware."
                .into(),
        );
    } else if !claims.confidential {
        notes.push("NOT CONFIDENTIAL: the server says it runs without confidentiality.".into());
    }
    notes
        .push("inspect judges no policy: use `veil attest verify BUNDLE --policy FILE` for a verdict".into());
    let report = json!({
        "format_version": b.format_version,
        "nonce": hex::encode(nonce),
        "claims": claims_json(&claims),
        "claims_digest": hex::encode(digest),
        "gpu_nonce": hex::encode(expected_gpu_nonce),
        "expected_report_data": hex::encode(expected_report_data),
        "simulated": simulated,
        "gpus": gpus,
        "cpu": cpu,
    });
    Ok(Inspected { report, checks })
}
