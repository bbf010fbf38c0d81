//! The composite quote: building an `AttestationBundle` and verifying one.
//!
//! Binding, in this order (the exact definition is in `docs/attestation.md`):
//! 1. `claims_digest = SHA-256(claims bytes as sent)`;
//! 2. `gpu_nonce = SHA-256("veil/gpu/v1" || client_nonce || claims_digest)`: the nonce of
//!    every GPU report;
//! 3. `REPORTDATA = SHA-512("veil/cpu/v1" || client_nonce || claims_digest ||
//!    SHA-384(report_i || cert_chain_i) for each GPU i in order)`: the CPU quote's report data.
//!
//! The CPU quote therefore commits to the exact GPU evidence and the claims; a GPU report
//! made for another request, or relayed from another machine, does not verify.

use prost::Message;
use serde::Serialize;
use sha2::{Digest, Sha256, Sha384, Sha512};
use veil_proto::v1::{AttestationBundle, AttestationClaims, Evidence};

use crate::error::{Error, Result};
use crate::evidence::{CpuEvidence, EvidenceKind, GpuEvidence};
use crate::nvidia::VerifiedGpu;
use crate::policy::{Policy, hex_array};
use crate::snp::{AmdProduct, SnpPolicy, SnpReport, VerifiedSnp};
use crate::tdx::{TcbStatus, TdxCollateral, TdxPolicy, VerifiedTdx};

/// The bundle format (and binding) version this crate makes and accepts.
pub const FORMAT_VERSION: u32 = 1;
/// Domain separator of the GPU nonce.
pub const GPU_DOMAIN: &[u8] = b"veil/gpu/v1";
/// Domain separator of the CPU report data.
pub const CPU_DOMAIN: &[u8] = b"veil/cpu/v1";
/// Allowed clock skew for bundles that claim a time in the future.
pub const MAX_FUTURE_SKEW_SECS: i64 = 60;

/// SHA-256 of the claims bytes exactly as they appear in the bundle.
pub fn claims_digest(claims: &[u8]) -> [u8; 32] {
    Sha256::digest(claims).into()
}

/// The nonce every GPU report must carry.
pub fn gpu_nonce(client_nonce: &[u8; 32], claims_digest: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(GPU_DOMAIN);
    h.update(client_nonce);
    h.update(claims_digest);
    h.finalize().into()
}

/// The report data the CPU quote must carry, committing to every GPU's report and chain.
pub fn cpu_report_data<'a>(
    client_nonce: &[u8; 32],
    claims_digest: &[u8; 32],
    gpus: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(CPU_DOMAIN);
    h.update(client_nonce);
    h.update(claims_digest);
    for (report, chain) in gpus {
        let mut g = Sha384::new();
        g.update(report);
        g.update(chain);
        h.update(g.finalize());
    }
    h.finalize().into()
}

/// Makes a bundle: encodes the claims, collects GPU evidence for the derived GPU nonce, then
/// the CPU quote over the derived report data.
pub fn build_bundle(
    client_nonce: &[u8; 32],
    claims: &AttestationClaims,
    gpu: &mut dyn FnMut(&[u8; 32]) -> Result<Vec<GpuEvidence>>,
    cpu: &mut dyn FnMut(&[u8; 64]) -> Result<CpuEvidence>,
) -> Result<AttestationBundle> {
    let claims_bytes = claims.encode_to_vec();
    let digest = claims_digest(&claims_bytes);
    let gpus = gpu(&gpu_nonce(client_nonce, &digest))?;
    let report_data = cpu_report_data(
        client_nonce,
        &digest,
        gpus.iter()
            .map(|g| (g.report.as_slice(), g.cert_chain.as_slice())),
    );
    let cpu = cpu(&report_data)?;
    Ok(AttestationBundle {
        format_version: FORMAT_VERSION,
        nonce: client_nonce.to_vec(),
        claims: claims_bytes,
        gpus: gpus
            .into_iter()
            .map(|g| Evidence {
                kind: g.kind.name().into(),
                data: g.report,
                certs: g.cert_chain,
                collateral: Vec::new(),
            })
            .collect(),
        cpu: Some(Evidence {
            kind: cpu.kind.name().into(),
            data: cpu.quote,
            certs: cpu.certs,
            collateral: Vec::new(),
        }),
    })
}

/// What a verified CPU quote says.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum VerifiedCpu {
    /// Intel TDX.
    Tdx(Box<VerifiedTdx>),
    /// AMD SEV-SNP.
    Snp(Box<VerifiedSnp>),
    /// Simulated (NOT confidential).
    Simulated(Box<crate::simulated::VerifiedSimulatedCpu>),
}

/// The claims, as verified, for display and JSON.
#[derive(Debug, Clone, Serialize)]
pub struct VerifiedClaims {
    /// Session keys: (algorithm, hex public key).
    pub session_keys: Vec<(String, String)>,
    /// Model digest, hex.
    pub model_digest: String,
    /// Model name.
    pub model_name: String,
    /// Engine executable digest, hex.
    pub engine_build_digest: String,
    /// Engine version.
    pub engine_version: String,
    /// Backend.
    pub backend: String,
    /// GPU CC mode.
    pub cc_mode: String,
    /// Server time, Unix seconds.
    pub server_time_unix: i64,
    /// What the engine claims about confidentiality.
    pub confidential: bool,
    /// The Ed25519 public key that signs sealed-call receipts, hex (empty when absent).
    pub receipt_public_key: String,
}

/// The result of a successful verification.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// True only when real hardware evidence verified and the engine claims confidentiality.
    pub confidential: bool,
    /// Plain-words summary for people.
    pub summary: String,
    /// The verified claims.
    pub claims: VerifiedClaims,
    /// Per-GPU verified fields.
    pub gpus: Vec<VerifiedGpu>,
    /// The verified CPU quote.
    pub cpu: VerifiedCpu,
    /// SHA-256 of the bundle's claims bytes, hex: the digest sealed requests and receipts name.
    pub claims_digest: String,
    /// The session keys, raw, for sealing requests: (algorithm, key bytes).
    #[serde(skip)]
    pub session_keys: Vec<(String, Vec<u8>)>,
    /// The receipt public key, raw, when the claims carry one.
    #[serde(skip)]
    pub receipt_public_key: Option<[u8; 32]>,
}

/// Decodes a bundle from its protobuf bytes.
pub fn decode_bundle(bytes: &[u8]) -> Result<AttestationBundle> {
    AttestationBundle::decode(bytes).map_err(|e| Error::malformed("AttestationBundle", e.to_string()))
}

fn kind_of(e: &Evidence) -> Result<EvidenceKind> {
    EvidenceKind::from_name(&e.kind).ok_or_else(|| Error::Unsupported {
        what: "evidence kind",
        value: e.kind.clone(),
    })
}

/// Verifies a bundle against the client's nonce (when it has one), a policy and the current
/// time (Unix seconds). Each failure has its own error: a bundle for another nonce
/// ([`Error::NonceMismatch`]), GPU evidence made for other claims or another request
/// ([`Error::ClaimsMismatch`]), CPU report data that does not commit to these claims and this
/// GPU evidence ([`Error::ReportDataMismatch`]), a model the policy does not accept
/// ([`Error::ModelNotAccepted`]), a stale bundle ([`Error::Expired`]), simulated evidence under
/// a strict policy ([`Error::SimulatedNotAllowed`]), and the evidence verifiers' own errors.
pub fn verify_bundle(
    bundle: &AttestationBundle,
    expected_nonce: Option<&[u8; 32]>,
    policy: &Policy,
    now: u64,
) -> Result<Verdict> {
    if bundle.format_version != FORMAT_VERSION {
        return Err(Error::Unsupported {
            what: "bundle format version",
            value: bundle.format_version.to_string(),
        });
    }
    let nonce: [u8; 32] = bundle.nonce.as_slice().try_into().map_err(|_| {
        Error::malformed(
            "AttestationBundle",
            format!("nonce is {} bytes, not 32", bundle.nonce.len()),
        )
    })?;
    if let Some(expected) = expected_nonce
        && expected != &nonce
    {
        return Err(Error::NonceMismatch(
            "the bundle answers another nonce than the one sent".into(),
        ));
    }
    let digest = claims_digest(&bundle.claims);
    let claims = AttestationClaims::decode(bundle.claims.as_slice())
        .map_err(|e| Error::malformed("AttestationClaims", e.to_string()))?;
    let cpu = bundle
        .cpu
        .as_ref()
        .ok_or_else(|| Error::malformed("AttestationBundle", "no CPU evidence"))?;

    // Simulated evidence only under an explicit policy.
    let kinds = bundle
        .gpus
        .iter()
        .map(kind_of)
        .chain([kind_of(cpu)])
        .collect::<Result<Vec<_>>>()?;
    let simulated = kinds.iter().any(|k| k.is_simulated());
    if simulated && !policy.allow_simulated {
        return Err(Error::SimulatedNotAllowed(
            "the bundle carries simulated evidence: this server is NOT confidential".into(),
        ));
    }

    // GPUs: each report must be made for gpu_nonce.
    let expected_gpu_nonce = gpu_nonce(&nonce, &digest);
    let at = Some(now);
    let mut gpus = Vec::with_capacity(bundle.gpus.len());
    for (i, g) in bundle.gpus.iter().enumerate() {
        let verified = match kinds[i] {
            EvidenceKind::NvidiaSpdm => crate::nvidia::verify_gpu_report(&g.data, &g.certs, None, at)?,
            EvidenceKind::SimulatedNvidiaSpdm => {
                crate::simulated::verify_simulated_gpu(&g.data, &g.certs, &expected_gpu_nonce, at).map_err(
                    |e| match e {
                        Error::NonceMismatch(_) => Error::ClaimsMismatch(format!(
                            "GPU {i}'s report was made for other claims or another request"
                        )),
                        other => other,
                    },
                )?
            }
            other => {
                return Err(Error::Unsupported {
                    what: "GPU evidence kind",
                    value: other.name().into(),
                });
            }
        };
        if verified.report.request_nonce() != &expected_gpu_nonce {
            return Err(Error::ClaimsMismatch(format!(
                "GPU {i}'s report was made for other claims or another request"
            )));
        }
        check_gpu_policy(i, &verified, policy)?;
        gpus.push(verified);
    }

    // CPU: its report data must commit to the claims and the exact GPU evidence.
    let report_data = cpu_report_data(
        &nonce,
        &digest,
        bundle
            .gpus
            .iter()
            .map(|g| (g.data.as_slice(), g.certs.as_slice())),
    );
    let verified_cpu = verify_cpu(kinds[bundle.gpus.len()], cpu, &report_data, policy, now)?;

    // Claims against policy.
    let model_digest = hex::encode(&claims.model_digest);
    if !policy.accepted_model_digests.is_empty()
        && !policy
            .accepted_model_digests
            .iter()
            .any(|d| d.eq_ignore_ascii_case(&model_digest))
    {
        return Err(Error::ModelNotAccepted(format!(
            "model digest {model_digest} is not in the policy"
        )));
    }
    let engine_digest = hex::encode(&claims.engine_build_digest);
    if !policy.accepted_engine_build_digests.is_empty()
        && !policy
            .accepted_engine_build_digests
            .iter()
            .any(|d| d.eq_ignore_ascii_case(&engine_digest))
    {
        return Err(Error::Policy(format!(
            "engine build digest {engine_digest} is not in the policy"
        )));
    }
    // An engine computing on a GPU must prove that GPU: otherwise prompts would cross PCIe to a
    // device nothing attested.
    if !simulated && claims.backend == "cuda" && bundle.gpus.is_empty() {
        return Err(Error::Policy(
            "the engine runs on CUDA but the bundle carries no GPU evidence".into(),
        ));
    }
    let age = now as i64 - claims.server_time_unix;
    if age > policy.max_age_secs as i64 {
        return Err(Error::Expired(format!(
            "the bundle is {age} s old; the policy allows {} s",
            policy.max_age_secs
        )));
    }
    if age < -MAX_FUTURE_SKEW_SECS {
        return Err(Error::Expired(format!(
            "the bundle claims a time {} s in the future",
            -age
        )));
    }
    if policy.gpu.require_cc && !simulated {
        if !bundle.gpus.is_empty() && claims.cc_mode != "on" {
            return Err(Error::Policy(format!(
                "GPU CC mode is {:?}, not \"on\"",
                claims.cc_mode
            )));
        }
        if let Some(g) = claims.gpus.iter().find(|g| !g.cc_enabled || g.dev_tools_mode) {
            return Err(Error::Policy(format!(
                "GPU {} is not in production CC mode",
                g.index
            )));
        }
    }

    let confidential = !simulated && claims.confidential;
    let summary = if confidential {
        format!(
            "CONFIDENTIAL: {} GPU(s) and the CPU quote verified; model {model_digest}",
            gpus.len()
        )
    } else if simulated {
        "NOT CONFIDENTIAL: simulated evidence (no GPU/TEE hardware proof); the operator can read this session"
            .into()
    } else {
        "NOT CONFIDENTIAL: the engine says it runs without confidentiality".into()
    };
    let receipt_public_key = match claims.receipt_public_key.len() {
        0 => None,
        _ => Some(claims.receipt_public_key.as_slice().try_into().map_err(|_| {
            Error::malformed(
                "AttestationClaims",
                format!(
                    "receipt_public_key is {} bytes, not 32",
                    claims.receipt_public_key.len()
                ),
            )
        })?),
    };
    let session_keys = claims
        .session_keys
        .iter()
        .map(|k| (k.algorithm.clone(), k.public_key.clone()))
        .collect();
    Ok(Verdict {
        confidential,
        summary,
        claims: VerifiedClaims {
            session_keys: claims
                .session_keys
                .iter()
                .map(|k| (k.algorithm.clone(), hex::encode(&k.public_key)))
                .collect(),
            model_digest,
            model_name: claims.model_name.clone(),
            engine_build_digest: hex::encode(&claims.engine_build_digest),
            engine_version: claims.engine_version.clone(),
            backend: claims.backend.clone(),
            cc_mode: claims.cc_mode.clone(),
            server_time_unix: claims.server_time_unix,
            confidential: claims.confidential,
            receipt_public_key: hex::encode(&claims.receipt_public_key),
        },
        claims_digest: hex::encode(digest),
        gpus,
        cpu: verified_cpu,
        session_keys,
        receipt_public_key,
    })
}

fn check_gpu_policy(i: usize, g: &VerifiedGpu, policy: &Policy) -> Result<()> {
    let p = &policy.gpu;
    let allowed =
        |list: &[String], v: &Option<String>| list.is_empty() || v.as_ref().is_some_and(|v| list.contains(v));
    if !allowed(&p.allowed_driver_versions, &g.driver_version) {
        return Err(Error::Policy(format!(
            "GPU {i}: driver version {:?} is not allowed",
            g.driver_version
        )));
    }
    if !allowed(&p.allowed_vbios_versions, &g.vbios_version) {
        return Err(Error::Policy(format!(
            "GPU {i}: VBIOS version {:?} is not allowed",
            g.vbios_version
        )));
    }
    for (index, want) in &p.measurements {
        let got = g
            .measurements
            .iter()
            .find(|m| m.index == *index)
            .map(|m| m.value.as_str());
        if got.map(|v| v.eq_ignore_ascii_case(want)) != Some(true) {
            return Err(Error::Policy(format!(
                "GPU {i}: measurement {index} is {got:?}, expected {want}"
            )));
        }
    }
    Ok(())
}

fn verify_cpu(
    kind: EvidenceKind,
    cpu: &Evidence,
    report_data: &[u8; 64],
    policy: &Policy,
    now: u64,
) -> Result<VerifiedCpu> {
    match kind {
        EvidenceKind::TdxQuote => {
            let v = if cpu.collateral.is_empty() {
                let quote = crate::tdx::TdxQuote::parse(&cpu.data)?;
                crate::tdx::verify_tdx_quote(&quote, Some(report_data), now)?
            } else {
                let collateral = TdxCollateral::from_json(&cpu.collateral)?;
                crate::tdx::verify_tdx_quote_with_collateral(&cpu.data, &collateral, Some(report_data), now)?
            };
            let rules = &policy.tdx;
            let mut rtmr = [None; 4];
            for (slot, value) in rtmr.iter_mut().zip(&rules.rtmr) {
                *slot = hex::decode(value)
                    .ok()
                    .and_then(|b| <[u8; 48]>::try_from(b.as_slice()).ok());
            }
            let statuses = rules
                .allowed_tcb_statuses
                .iter()
                .map(|s| {
                    TcbStatus::from_intel(s)
                        .ok_or_else(|| Error::malformed("policy TOML", format!("unknown TCB status {s:?}")))
                })
                .collect::<Result<Vec<_>>>()?;
            v.check_policy(&TdxPolicy {
                allow_debug: rules.allow_debug,
                allowed_mr_td: hex_array::<48>(&rules.allowed_mrtd),
                rtmr,
                allowed_tcb_statuses: statuses,
            })?;
            Ok(VerifiedCpu::Tdx(Box::new(v)))
        }
        EvidenceKind::SnpReport => {
            let report = SnpReport::parse(&cpu.data)?;
            let products = report.product_hint().into_iter().chain([
                AmdProduct::Milan,
                AmdProduct::Genoa,
                AmdProduct::Turin,
            ]);
            let mut last = Error::CertificateChain("no AMD product".into());
            let mut verified = None;
            for product in products {
                match crate::snp::verify_snp_report(&report, &cpu.certs, product, Some(report_data), now) {
                    Ok(v) => {
                        verified = Some(v);
                        break;
                    }
                    // Only a chain to the wrong product's roots justifies trying the next one.
                    Err(e @ Error::CertificateChain(_)) => last = e,
                    Err(e) => return Err(e),
                }
            }
            let v = verified.ok_or(last)?;
            v.check_policy(&SnpPolicy {
                allow_debug: policy.snp.allow_debug,
                allowed_measurements: hex_array::<48>(&policy.snp.allowed_measurements),
                ..SnpPolicy::default()
            })?;
            Ok(VerifiedCpu::Snp(Box::new(v)))
        }
        EvidenceKind::SimulatedSnpReport => Ok(VerifiedCpu::Simulated(Box::new(
            crate::simulated::verify_simulated_snp(&cpu.data, &cpu.certs, report_data)?,
        ))),
        other => Err(Error::Unsupported {
            what: "CPU evidence kind",
            value: other.name().into(),
        }),
    }
}
