#![no_main]
//! The client's side of a sealed response stream: `ResponseOpener` (open each chunk, decode its
//! `SealedPayload`, verify the receipt) and `check_receipt` (a receipt against a bundle).
//!
//! A fixed simulated bundle is verified once, as a client does; each input then seals a real
//! request to it and plays the server with the session key: the input's payloads are sealed as
//! data chunks (so arbitrary bytes reach the `SealedPayload` decoder inside the AEAD), optionally
//! with a chunk tampered, followed or not by a receipt whose digests the input may change, and
//! the receipt is checked against the real bundle and against one whose claims are input bytes.
//! Input: a flags byte, then payloads, each a length byte and that many bytes; what follows the
//! payloads is the foreign claims.

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use veil_attest::bundle::build_bundle;
use veil_attest::collect::{CpuCollector, GpuCollector};
use veil_attest::policy::Policy;
use veil_attest::simulated::{SimulatedCpu, SimulatedGpu};
use veil_client::{Attested, OpenedChunk, check_receipt};
use veil_proto::v1::{AttestationBundle, AttestationClaims, SessionKey};
use veil_seal::{ReceiptSigner, ReplayCache, SealedRequestParts, SealedRpc, SessionKeyPair, open_request};

const NOW: u64 = 1_900_000_000;
const MODEL: [u8; 32] = [5; 32];

struct Fixture {
    attested: Attested,
    bundle: AttestationBundle,
    session: SessionKeyPair,
    signer: ReceiptSigner,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let session = SessionKeyPair::from_secret_bytes(&[7; 32]);
        let signer = ReceiptSigner::from_seed(&[9; 32]);
        let claims = AttestationClaims {
            session_keys: vec![SessionKey {
                algorithm: "x25519".into(),
                public_key: session.public_key_bytes().to_vec(),
            }],
            model_digest: MODEL.to_vec(),
            model_name: "fuzz".into(),
            engine_build_digest: vec![1; 32],
            engine_version: "fuzz".into(),
            backend: "cpu".into(),
            cc_mode: "none".into(),
            server_time_unix: NOW as i64,
            confidential: false,
            gpus: Vec::new(),
            receipt_public_key: signer.public_key_bytes().to_vec(),
        };
        let gpu = SimulatedGpu::new(1).expect("simulated GPU");
        let cpu = SimulatedCpu::new().expect("simulated CPU");
        let nonce = [3; 32];
        let bundle = build_bundle(&nonce, &claims, &mut |n| gpu.evidence(n), &mut |rd| {
            cpu.evidence(rd)
        })
        .expect("bundle");
        let policy = Policy {
            allow_simulated: true,
            ..Policy::default()
        };
        let attested = Attested::verify(bundle.clone(), &nonce, &policy, NOW).expect("the bundle verifies");
        Fixture {
            attested,
            bundle,
            session,
            signer,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let (wire, mut opener) = f
        .attested
        .seal(SealedRpc::Generate, b"request", NOW as i64)
        .expect("seal");
    let parts = SealedRequestParts {
        key_id: wire.key_id.as_slice().try_into().expect("8 bytes"),
        encapsulated_key: wire.encapsulated_key,
        ciphertext: wire.ciphertext,
    };
    let info = SealedRpc::Generate.info(&f.attested.bundle_digest());
    let (request, mut server) = open_request(
        &f.session,
        &parts,
        &info,
        NOW as i64,
        &mut ReplayCache::new(4),
        60,
    )
    .expect("open");
    assert_eq!(request.as_slice(), b"request");

    // Data chunks, one tampered when flags bit 2 is set (at the position the flags pick).
    let tamper = flags & 4 != 0;
    let mut chunks = Vec::new();
    while let Some((&n, tail)) = rest.split_first() {
        if chunks.len() == 16 {
            break;
        }
        let n = usize::from(n).min(tail.len());
        let (payload, next) = tail.split_at(n);
        chunks.push(server.seal_chunk(payload).expect("seal a chunk"));
        rest = next;
    }
    let mut tampered = false;
    if tamper && let Some(c) = chunks.first_mut() {
        let i = usize::from(flags >> 3) % c.len();
        c[i] ^= 1;
        tampered = true;
    }
    // The receipt (bit 0), over another model digest (bit 1).
    let model = if flags & 2 != 0 { [6; 32] } else { MODEL };
    if flags & 1 != 0 {
        let (last, _) = server
            .seal_receipt(&f.signer, model, f.attested.bundle_digest())
            .expect("seal the receipt");
        chunks.push(last);
    }
    let mut ended = None;
    let mut failed = false;
    for c in &chunks {
        match opener.open(c) {
            Ok(OpenedChunk::Payload(_)) => {}
            Ok(OpenedChunk::End(receipt)) => ended = Some(receipt),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    let finished = opener.finish().is_ok();
    if !tamper && flags & 1 != 0 && flags & 2 == 0 {
        // Honest stream: every chunk opens (payloads that are not SealedPayloads excepted) and
        // the receipt is the attested engine's.
        if let Some(receipt) = ended {
            assert!(finished);
            check_receipt(&receipt, &f.bundle).expect("an honest receipt checks");
        }
    }
    if flags & 2 != 0 {
        assert!(ended.is_none(), "a receipt over another model verified");
    }
    if tampered {
        assert!(failed, "a tampered chunk opened");
    }
    if let Some(receipt) = ended {
        let mut foreign = f.bundle.clone();
        foreign.claims = rest.to_vec();
        let _ = check_receipt(&receipt, &foreign);
        let mut forged = receipt;
        forged.claims.response_digest[0] ^= 1;
        assert!(
            check_receipt(&forged, &f.bundle).is_err(),
            "a forged receipt checks"
        );
    }
});
