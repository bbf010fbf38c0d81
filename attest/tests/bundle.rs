//! The composite quote end to end with simulated evidence through the real verification path:
//! a correct bundle verifies (as NOT confidential); a wrong nonce, a relayed GPU report, a
//! changed claim, an unaccepted model, an expired bundle and a strict policy each fail with
//! their own error.

use prost::Message;
use veil_attest::Error;
use veil_attest::bundle::{build_bundle, decode_bundle, verify_bundle};
use veil_attest::collect::{CpuCollector, GpuCollector};
use veil_attest::policy::Policy;
use veil_attest::simulated::{SimulatedCpu, SimulatedGpu};
use veil_proto::v1::{AttestationBundle, AttestationClaims, SessionKey};

const NOW: u64 = 1_900_000_000;

fn claims(model_digest: [u8; 32]) -> AttestationClaims {
    AttestationClaims {
        session_keys: vec![SessionKey {
            algorithm: "x25519".into(),
            public_key: vec![7; 32],
        }],
        model_digest: model_digest.to_vec(),
        model_name: "smollm2-135m-instruct".into(),
        engine_build_digest: vec![1; 32],
        engine_version: "test".into(),
        backend: "cpu".into(),
        cc_mode: "none".into(),
        server_time_unix: NOW as i64,
        confidential: false,
        gpus: Vec::new(),
        receipt_public_key: vec![9; 32],
    }
}

struct Machine {
    gpu: SimulatedGpu,
    cpu: SimulatedCpu,
}

impl Machine {
    fn new() -> Self {
        Self {
            gpu: SimulatedGpu::new(2).expect("gpu"),
            cpu: SimulatedCpu::new().expect("cpu"),
        }
    }

    fn bundle(&self, nonce: &[u8; 32], claims: &AttestationClaims) -> AttestationBundle {
        build_bundle(nonce, claims, &mut |n| self.gpu.evidence(n), &mut |rd| {
            self.cpu.evidence(rd)
        })
        .expect("bundle")
    }
}

fn lenient() -> Policy {
    Policy {
        allow_simulated: true,
        accepted_model_digests: vec![hex::encode([9u8; 32])],
        ..Policy::default()
    }
}

#[test]
fn correct_bundle_verifies_as_not_confidential() {
    let m = Machine::new();
    let nonce = [3u8; 32];
    let b = m.bundle(&nonce, &claims([9; 32]));
    // Round trip through bytes, as a client receives it.
    let b = decode_bundle(&b.encode_to_vec()).expect("decode");
    let v = verify_bundle(&b, Some(&nonce), &lenient(), NOW + 5).expect("verifies");
    assert!(!v.confidential);
    assert!(v.summary.contains("NOT CONFIDENTIAL"), "{}", v.summary);
    assert_eq!(v.gpus.len(), 2);
    assert_eq!(v.session_keys, vec![("x25519".to_string(), vec![7u8; 32])]);
    assert_eq!(v.claims.model_digest, hex::encode([9u8; 32]));
    assert_eq!(v.receipt_public_key, Some([9u8; 32]));
    assert_eq!(
        v.claims_digest,
        hex::encode(veil_attest::bundle::claims_digest(&b.claims))
    );
    serde_json::to_string(&v).expect("verdict serializes to JSON");
}

#[test]
fn strict_policy_rejects_simulated_evidence() {
    let m = Machine::new();
    let nonce = [3u8; 32];
    let b = m.bundle(&nonce, &claims([9; 32]));
    let err = verify_bundle(&b, Some(&nonce), &Policy::default(), NOW).expect_err("strict");
    assert!(matches!(err, Error::SimulatedNotAllowed(_)), "{err}");
}

#[test]
fn each_attack_fails_with_its_own_error() {
    let m = Machine::new();
    let nonce = [3u8; 32];
    let good = m.bundle(&nonce, &claims([9; 32]));
    let p = lenient();

    // A bundle for another nonce (replayed).
    let err = verify_bundle(&good, Some(&[4u8; 32]), &p, NOW).expect_err("wrong nonce");
    assert!(matches!(err, Error::NonceMismatch(_)), "{err}");

    // A changed claim: GPU reports no longer match the claims digest.
    let mut changed = good.clone();
    let mut c = AttestationClaims::decode(changed.claims.as_slice()).expect("claims");
    c.backend = "cuda".into();
    changed.claims = c.encode_to_vec();
    let err = verify_bundle(&changed, Some(&nonce), &p, NOW).expect_err("changed claim");
    assert!(matches!(err, Error::ClaimsMismatch(_)), "{err}");

    // An engine build the policy does not pin.
    let pinned = Policy {
        accepted_engine_build_digests: vec![hex::encode([2u8; 32])],
        ..lenient()
    };
    let err = verify_bundle(&good, Some(&nonce), &pinned, NOW).expect_err("engine digest");
    assert!(matches!(err, Error::Policy(_)), "{err}");
    let ok = Policy {
        accepted_engine_build_digests: vec![hex::encode([1u8; 32])],
        ..lenient()
    };
    verify_bundle(&good, Some(&nonce), &ok, NOW).expect("the pinned engine build verifies");

    // A receipt key of the wrong length is malformed, not silently dropped (re-sign the claims
    // so that only this check can fail).
    let mut c = claims([9; 32]);
    c.receipt_public_key = vec![1; 31];
    let short_key = m.bundle(&nonce, &c);
    let err = verify_bundle(&short_key, Some(&nonce), &p, NOW).expect_err("short receipt key");
    assert!(matches!(err, Error::Malformed { .. }), "{err}");

    // A relayed GPU report: another machine's GPU asked for the very same GPU nonce. Its report
    // verifies on its own, but the CPU quote commits to the original evidence.
    let other = Machine::new();
    let relay_source = other.bundle(&nonce, &claims([9; 32]));
    let mut relayed = good.clone();
    relayed.gpus[1] = relay_source.gpus[1].clone();
    let err = verify_bundle(&relayed, Some(&nonce), &p, NOW).expect_err("relayed GPU report");
    assert!(matches!(err, Error::ReportDataMismatch(_)), "{err}");

    // Swapping the order of the GPUs also breaks the CPU commitment.
    let mut swapped = good.clone();
    swapped.gpus.swap(0, 1);
    let err = verify_bundle(&swapped, Some(&nonce), &p, NOW).expect_err("swapped GPUs");
    assert!(matches!(err, Error::ReportDataMismatch(_)), "{err}");

    // An honest bundle for a model the client does not accept.
    let other_model = m.bundle(&nonce, &claims([8; 32]));
    let err = verify_bundle(&other_model, Some(&nonce), &p, NOW).expect_err("model");
    assert!(matches!(err, Error::ModelNotAccepted(_)), "{err}");

    // Too old, and from the future.
    let err = verify_bundle(&good, Some(&nonce), &p, NOW + p.max_age_secs + 1).expect_err("expired");
    assert!(matches!(err, Error::Expired(_)), "{err}");
    let err = verify_bundle(&good, Some(&nonce), &p, NOW - 3600).expect_err("future");
    assert!(matches!(err, Error::Expired(_)), "{err}");

    // A flipped bit in the CPU report's signed part.
    let mut tampered = good.clone();
    if let Some(cpu) = tampered.cpu.as_mut() {
        cpu.data[0x90] ^= 1;
    }
    let err = verify_bundle(&tampered, Some(&nonce), &p, NOW).expect_err("tampered CPU report");
    assert!(
        matches!(err, Error::BadSignature(_) | Error::ReportDataMismatch(_)),
        "{err}"
    );

    // Garbage never panics.
    assert!(decode_bundle(b"\xff\xff\xff").is_err());
}
