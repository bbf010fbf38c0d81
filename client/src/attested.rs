//! A verified attestation bundle and what the client pins from it.

use prost::Message;
use veil_attest::bundle::{Verdict, VerifiedCpu, claims_digest, verify_bundle};
use veil_attest::policy::Policy;
use veil_proto::v1::{AttestationBundle, AttestationClaims, SealedRequest};
use veil_seal::{KeyId, SealedRpc, key_id_of, seal_request};

use crate::error::{ClientError, Result};
use crate::stream::ResponseOpener;

/// The session key algorithm sealed requests use.
const X25519: &str = "x25519";

/// A bundle that verified against the client's policy, and the keys and digests pinned from
/// it: the X25519 session key requests are sealed to, the Ed25519 receipt key, the model digest
/// and the bundle's claims digest.
#[derive(Debug, Clone)]
pub struct Attested {
    bundle: AttestationBundle,
    verdict: Verdict,
    claims: AttestationClaims,
    session_key: [u8; 32],
    key_id: KeyId,
    receipt_key: [u8; 32],
    model_digest: [u8; 32],
    bundle_digest: [u8; 32],
    verified_at: u64,
    max_age_secs: u64,
}

impl Attested {
    /// Verifies `bundle` for the client's `nonce` against `policy` as of `now` (Unix seconds)
    /// and pins its keys. A bundle without an X25519 session key or a receipt key cannot carry
    /// sealed calls and is refused.
    pub fn verify(bundle: AttestationBundle, nonce: &[u8; 32], policy: &Policy, now: u64) -> Result<Self> {
        let verdict = verify_bundle(&bundle, Some(nonce), policy, now)?;
        let claims = AttestationClaims::decode(bundle.claims.as_slice())
            .map_err(|e| ClientError::Protocol(format!("the verified claims do not decode: {e}")))?;
        let session_key: [u8; 32] = verdict
            .session_keys
            .iter()
            .find(|(alg, key)| alg == X25519 && key.len() == 32)
            .and_then(|(_, key)| key.as_slice().try_into().ok())
            .ok_or_else(|| {
                ClientError::Protocol("the bundle's claims carry no 32-byte x25519 session key".into())
            })?;
        let receipt_key = verdict
            .receipt_public_key
            .ok_or_else(|| ClientError::Protocol("the bundle's claims carry no receipt public key".into()))?;
        let model_digest: [u8; 32] = claims.model_digest.as_slice().try_into().map_err(|_| {
            ClientError::Protocol(format!(
                "the claimed model digest is {} bytes, not 32",
                claims.model_digest.len()
            ))
        })?;
        Ok(Self {
            key_id: key_id_of(&session_key),
            bundle_digest: claims_digest(&bundle.claims),
            bundle,
            verdict,
            claims,
            session_key,
            receipt_key,
            model_digest,
            verified_at: now,
            max_age_secs: policy.max_age_secs,
        })
    }

    /// The verification verdict (what was proven, in plain words in `summary`).
    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    /// True only when real hardware evidence verified and the engine claims confidentiality.
    pub fn confidential(&self) -> bool {
        self.verdict.confidential
    }

    /// The bundle as received (keep it with receipts: it proves which key signed them).
    pub fn bundle(&self) -> &AttestationBundle {
        &self.bundle
    }

    /// The verified claims.
    pub fn claims(&self) -> &AttestationClaims {
        &self.claims
    }

    /// The pinned session key's id.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The pinned X25519 session public key.
    pub fn session_key(&self) -> [u8; 32] {
        self.session_key
    }

    /// The pinned Ed25519 receipt public key.
    pub fn receipt_key(&self) -> [u8; 32] {
        self.receipt_key
    }

    /// The attested model digest.
    pub fn model_digest(&self) -> [u8; 32] {
        self.model_digest
    }

    /// SHA-256 of the bundle's claims: the bundle digest sealed requests and receipts name.
    pub fn bundle_digest(&self) -> [u8; 32] {
        self.bundle_digest
    }

    /// Whether the pin may still be used at `now` (Unix seconds): for the policy's
    /// `max_age_secs` after verification.
    pub fn is_fresh(&self, now: u64) -> bool {
        now.saturating_sub(self.verified_at) <= self.max_age_secs
    }

    /// Seals `request` (an encoded `GenerateRequest` or `GenerateBatchRequest`, per `rpc`) to
    /// the pinned session key, stamped with `timestamp_unix`; returns the wire message and the
    /// opener of its response stream.
    pub fn seal(
        &self,
        rpc: SealedRpc,
        request: &[u8],
        timestamp_unix: i64,
    ) -> Result<(SealedRequest, ResponseOpener)> {
        let (parts, session) = seal_request(
            &self.session_key,
            self.key_id,
            request,
            timestamp_unix,
            &rpc.info(&self.bundle_digest),
        )?;
        let wire = SealedRequest {
            key_id: parts.key_id.to_vec(),
            encapsulated_key: parts.encapsulated_key,
            ciphertext: parts.ciphertext,
            bundle_digest: self.bundle_digest.to_vec(),
        };
        let opener = ResponseOpener::new(session, self.receipt_key, self.model_digest, self.bundle_digest);
        Ok((wire, opener))
    }

    /// What was verified, one line per fact, for people: confidentiality, GPUs and their CC
    /// mode, the CPU TEE, the model and the pinned keys.
    pub fn describe(&self) -> Vec<String> {
        let c = &self.claims;
        let mut lines = vec![self.verdict.summary.clone()];
        if c.gpus.is_empty() {
            lines.push("GPUs: none attested".into());
        }
        for g in &c.gpus {
            lines.push(format!(
                "GPU {}: {}, CC {}, developer tools {}, driver {}, VBIOS {}",
                g.index,
                g.name,
                if g.cc_enabled { "on" } else { "OFF" },
                if g.dev_tools_mode { "ON" } else { "off" },
                g.driver_version,
                g.vbios_version
            ));
        }
        lines.push(format!(
            "GPU evidence: {} report(s) verified",
            self.verdict.gpus.len()
        ));
        lines.push(match &self.verdict.cpu {
            VerifiedCpu::Tdx(t) => format!(
                "CPU TEE: Intel TDX, quote v{}, debug {}",
                t.version,
                if t.debug { "ON" } else { "off" }
            ),
            VerifiedCpu::Snp(s) => format!(
                "CPU TEE: AMD SEV-SNP ({:?}), report v{}, debug {}",
                s.product,
                s.version,
                if s.debug_allowed { "ALLOWED" } else { "off" }
            ),
            VerifiedCpu::Simulated(_) => "CPU TEE: none (simulated SEV-SNP evidence)".into(),
        });
        lines.push(format!(
            "model: {} digest {}",
            c.model_name,
            hex::encode(self.model_digest)
        ));
        lines.push(format!(
            "engine: {} {} on {}, build {}",
            "veil",
            c.engine_version,
            c.backend,
            hex::encode(&c.engine_build_digest)
        ));
        lines.push(format!(
            "session key id {}, receipt key {}",
            hex::encode(self.key_id),
            hex::encode(self.receipt_key)
        ));
        lines
    }
}
