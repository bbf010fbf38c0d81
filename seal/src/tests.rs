//! Tests: RFC 9180 suite vector, round trips and every rejection.

#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::{ProptestConfig, any, prop_assert, proptest};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn h32(s: &str) -> [u8; 32] {
    h(s).try_into().unwrap()
}

/// Hands out fixed bytes as "randomness" so encapsulation is deterministic (test only).
struct FixedRng(Vec<u8>);

impl rand_core::RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        let n = dst.len();
        dst.copy_from_slice(&self.0[..n]);
        self.0.drain(..n);
    }
}
impl rand_core::CryptoRng for FixedRng {}

// RFC 9180 test vectors (CFRG test-vectors.json, as shipped with the `hpke` crate): mode 0,
// kem_id 0x0020 DHKEM(X25519, HKDF-SHA256), kdf_id 0x0001 HKDF-SHA256, aead_id 0x0002 AES-256-GCM.
const INFO: &str = "4f6465206f6e2061204772656369616e2055726e";
const IKM_E: &str = "2cd7c601cefb3d42a62b04b7a9041494c06c7843818e0ce28a8f704ae7ab20f9";
const SK_RM: &str = "497b4502664cfea5d5af0b39934dac72242a74f8480451e1aee7d6a53320333d";
const PK_RM: &str = "430f4b9859665145a6b1ba274024487bd66f03a2dd577d7753c68d7d7d00c00c";
const ENC: &str = "6c93e09869df3402d7bf231bf540fadd35cd56be14f97178f0954db94b7fc256";
const PT: &str = "4265617574792069732074727574682c20747275746820626561757479";
const ENCRYPTIONS: [(&str, &str); 2] = [
    (
        "436f756e742d30",
        "e5d84cd531cfb583096e7cfa9641bd3079cf3a91cda813c52deb5f512be9931980a41de125a925cdad859d5b7a",
    ),
    (
        "436f756e742d31",
        "2c43aff25343fdbff864506f0818b9d87df84ea01b1a2144d23b4d40c26bf655fdf197fe40297a8aebeed5cc2d",
    ),
];
const EXPORTS: [(&str, &str); 3] = [
    (
        "",
        "ded6cffafaea6b812cbf3e241e88332adbc077aca81512914213810ee291770a",
    ),
    (
        "00",
        "04d3cb6cc116b28ffd22ad5bc276c60d31fec71ceb87ae24db811c64b7507339",
    ),
    (
        "54657374436f6e74657874",
        "7c5ded445732c14fe09727d29b4251c0fd38455fe8440571e687f0886aac94d2",
    ),
];

#[test]
fn rfc9180_vector_base_x25519_sha256_aes256gcm() {
    let kp = SessionKeyPair::from_secret_bytes(&h32(SK_RM));
    assert_eq!(kp.public_key_bytes(), h32(PK_RM));
    let pk = <<SuiteKem as hpke::Kem>::PublicKey as Deserializable>::from_bytes(&h(PK_RM)).unwrap();

    // Sender, with the published ephemeral ikmE.
    let (enc, mut sctx) = hpke::setup_sender::<SuiteAead, SuiteKdf, SuiteKem, _>(
        &OpModeS::Base,
        &pk,
        &h(INFO),
        &mut FixedRng(h(IKM_E)),
    )
    .unwrap();
    assert_eq!(enc.to_bytes().to_vec(), h(ENC));
    for (aad, ct) in ENCRYPTIONS {
        assert_eq!(sctx.seal(&h(PT), &h(aad)).unwrap(), h(ct));
    }

    // Receiver, with the published skRm and enc.
    let enc = <<SuiteKem as hpke::Kem>::EncappedKey as Deserializable>::from_bytes(&h(ENC)).unwrap();
    let mut rctx =
        hpke::setup_receiver::<SuiteAead, SuiteKdf, SuiteKem>(&OpModeR::Base, &kp.sk, &enc, &h(INFO))
            .unwrap();
    for (aad, ct) in ENCRYPTIONS {
        assert_eq!(rctx.open(&h(ct), &h(aad)).unwrap(), h(PT));
    }
    for (ctx, value) in EXPORTS {
        let mut out = [0u8; 32];
        rctx.export(&h(ctx), &mut out).unwrap();
        assert_eq!(out.to_vec(), h(value));
        sctx.export(&h(ctx), &mut out).unwrap();
        assert_eq!(out.to_vec(), h(value));
    }
}

const NOW: i64 = 1_790_000_000;
const WINDOW: i64 = 60;
const APP_INFO: &[u8] = b"veil/v1 test bundle";

fn setup(req: &[u8]) -> (SessionKeyPair, SealedRequestParts, ClientSession) {
    let kp = SessionKeyPair::generate();
    let (parts, client) = seal_request(&kp.public_key_bytes(), kp.key_id(), req, NOW, APP_INFO).unwrap();
    (kp, parts, client)
}

fn open(kp: &SessionKeyPair, parts: &SealedRequestParts) -> Result<(Zeroizing<Vec<u8>>, ServerSession)> {
    open_request(kp, parts, APP_INFO, NOW + 5, &mut ReplayCache::new(16), WINDOW)
}

#[test]
fn key_id_is_sha256_prefix() {
    let kp = SessionKeyPair::from_secret_bytes(&[7u8; 32]);
    let d = Sha256::digest(kp.public_key_bytes());
    assert_eq!(kp.key_id()[..], d[..8]);
    // Agrees with x25519-dalek (the server's StaticSecret).
    let ss = x25519_dalek::StaticSecret::from([7u8; 32]);
    assert_eq!(
        x25519_dalek::PublicKey::from(&ss).to_bytes(),
        kp.public_key_bytes()
    );
}

#[test]
fn round_trip_with_receipt() {
    let (kp, parts, mut client) = setup(b"hello model");
    let (req, mut server) = open(&kp, &parts).unwrap();
    assert_eq!(&req[..], b"hello model");
    assert_eq!(server.request_digest(), parts.digest());
    let signer = ReceiptSigner::generate();
    let mut wire = Vec::new();
    for c in [&b"The"[..], b" capital", b" is Paris."] {
        wire.push(server.seal_chunk(c).unwrap());
    }
    let (last, receipt) = server.seal_receipt(&signer, [1; 32], [2; 32]).unwrap();
    wire.push(last);
    let mut text = Vec::new();
    for w in &wire[..3] {
        match client.open_chunk(w).unwrap() {
            Opened::Data(p) => text.extend(p),
            Opened::Final => panic!("early final"),
        }
    }
    assert_eq!(text, b"The capital is Paris.");
    assert_eq!(
        client.verify_receipt(&signer.public_key_bytes(), [1; 32], [2; 32]),
        Err(SealError::Truncated)
    );
    assert_eq!(client.open_chunk(&wire[3]).unwrap(), Opened::Final);
    client.finish().unwrap();
    assert_eq!(client.response_digest(), server.response_digest());
    let got = client
        .verify_receipt(&signer.public_key_bytes(), [1; 32], [2; 32])
        .unwrap();
    assert_eq!(got, receipt);
    got.verify().unwrap();
    // Another model or bundle digest than the one signed: the receipt does not verify.
    assert_eq!(
        client.verify_receipt(&signer.public_key_bytes(), [9; 32], [2; 32]),
        Err(SealError::BadReceipt)
    );
    assert_eq!(
        client.verify_receipt(&signer.public_key_bytes(), [1; 32], [9; 32]),
        Err(SealError::BadReceipt)
    );

    let claims = receipt.claims;
    let sig = receipt.signature;
    let mut bad = claims;
    bad.response_digest[0] ^= 1;
    assert_eq!(
        verify_receipt(&signer.public_key_bytes(), &bad, &sig),
        Err(SealError::BadReceipt)
    );
    let mut bad_sig = sig;
    bad_sig[3] ^= 1;
    assert_eq!(
        verify_receipt(&signer.public_key_bytes(), &claims, &bad_sig),
        Err(SealError::BadReceipt)
    );
    let other = ReceiptSigner::from_seed(&[9; 32]);
    assert_eq!(
        client.verify_receipt(&other.public_key_bytes(), [1; 32], [2; 32]),
        Err(SealError::BadReceipt)
    );
}

#[test]
fn wrong_key_is_rejected() {
    let (_kp, parts, _) = setup(b"x");
    let other = SessionKeyPair::generate();
    assert_eq!(open(&other, &parts).unwrap_err(), SealError::WrongKey);
    // Right id but another key (id forged): decryption fails.
    let mut forged = parts.clone();
    forged.key_id = other.key_id();
    assert_eq!(open(&other, &forged).unwrap_err(), SealError::Open);
}

#[test]
fn wrong_info_fails_to_open() {
    let (kp, parts, _) = setup(b"x");
    let r = open_request(
        &kp,
        &parts,
        b"other bundle",
        NOW,
        &mut ReplayCache::new(4),
        WINDOW,
    );
    assert_eq!(r.unwrap_err(), SealError::Open);
}

#[test]
fn every_tampered_byte_fails() {
    let (kp, parts, _) = setup(b"tamper me");
    for i in 0..parts.ciphertext.len() {
        let mut t = parts.clone();
        t.ciphertext[i] ^= 0x40;
        assert_eq!(open(&kp, &t).unwrap_err(), SealError::Open, "ciphertext byte {i}");
    }
    for i in 0..ENC_LEN {
        let mut t = parts.clone();
        t.encapsulated_key[i] ^= 0x40;
        assert!(open(&kp, &t).is_err(), "enc byte {i}");
    }
    let mut t = parts.clone();
    t.encapsulated_key.pop();
    assert!(matches!(open(&kp, &t), Err(SealError::Malformed(_))));
    let mut t = parts;
    t.ciphertext.truncate(10);
    assert_eq!(open(&kp, &t).unwrap_err(), SealError::Open);
}

#[test]
fn stale_requests_are_rejected() {
    let (kp, parts, _) = setup(b"x");
    for now in [NOW + WINDOW + 1, NOW - WINDOW - 1] {
        let r = open_request(&kp, &parts, APP_INFO, now, &mut ReplayCache::new(4), WINDOW);
        assert_eq!(r.unwrap_err(), SealError::Stale);
    }
    for now in [NOW + WINDOW, NOW - WINDOW] {
        open_request(&kp, &parts, APP_INFO, now, &mut ReplayCache::new(4), WINDOW).unwrap();
    }
}

#[test]
fn replays_are_rejected_and_cache_is_bounded() {
    let kp = SessionKeyPair::generate();
    let mut cache = ReplayCache::new(2);
    let seal = || {
        seal_request(&kp.public_key_bytes(), kp.key_id(), b"r", NOW, APP_INFO)
            .unwrap()
            .0
    };
    let a = seal();
    open_request(&kp, &a, APP_INFO, NOW, &mut cache, WINDOW).unwrap();
    assert_eq!(
        open_request(&kp, &a, APP_INFO, NOW + 1, &mut cache, WINDOW).unwrap_err(),
        SealError::Replayed
    );
    let b = seal();
    open_request(&kp, &b, APP_INFO, NOW, &mut cache, WINDOW).unwrap();
    // Full of live entries: fail closed.
    let c = seal();
    assert_eq!(
        open_request(&kp, &c, APP_INFO, NOW, &mut cache, WINDOW).unwrap_err(),
        SealError::ReplayCacheFull
    );
    assert_eq!(cache.len(), 2);
    // Once the window passes, entries expire (and the old request is stale anyway).
    let later = NOW + WINDOW + 1;
    let d = seal_request(&kp.public_key_bytes(), kp.key_id(), b"r", later, APP_INFO)
        .unwrap()
        .0;
    open_request(&kp, &d, APP_INFO, later, &mut cache, WINDOW).unwrap();
    assert_eq!(cache.len(), 1);
    assert_eq!(
        open_request(&kp, &a, APP_INFO, later, &mut cache, WINDOW).unwrap_err(),
        SealError::Stale
    );
}

/// A stream of `n` data chunks and the final receipt chunk (`n + 1` chunks on the wire).
#[test]
fn a_clock_set_back_cannot_replay_an_expired_request() {
    let kp = SessionKeyPair::generate();
    let mut cache = ReplayCache::new(4);
    let (a, _) = seal_request(&kp.public_key_bytes(), kp.key_id(), b"r", NOW, APP_INFO).unwrap();
    open_request(&kp, &a, APP_INFO, NOW, &mut cache, WINDOW).unwrap();
    // Time passes: `a` expires from the cache once a later request is admitted.
    let later = NOW + 3 * WINDOW;
    let (b, _) = seal_request(&kp.public_key_bytes(), kp.key_id(), b"r", later, APP_INFO).unwrap();
    open_request(&kp, &b, APP_INFO, later, &mut cache, WINDOW).unwrap();
    assert_eq!(cache.len(), 1);
    // The host sets the clock back to when `a` was fresh: still stale by the cache's clock.
    assert_eq!(
        open_request(&kp, &a, APP_INFO, NOW, &mut cache, WINDOW).unwrap_err(),
        SealError::Stale
    );
    // The shared form behaves the same.
    let shared = std::sync::Mutex::new(cache);
    assert_eq!(
        open_request_shared(&kp, &a, APP_INFO, NOW, &shared, WINDOW).unwrap_err(),
        SealError::Stale
    );
    assert_eq!(
        open_request_shared(&kp, &b, APP_INFO, later, &shared, WINDOW).unwrap_err(),
        SealError::Replayed
    );
}

fn stream(n: usize) -> (ClientSession, ServerSession, Vec<Vec<u8>>) {
    let (kp, parts, client) = setup(b"req");
    let (_, mut server) = open(&kp, &parts).unwrap();
    let mut wire: Vec<_> = (0..n)
        .map(|i| server.seal_chunk(format!("chunk {i}").as_bytes()).unwrap())
        .collect();
    let signer = ReceiptSigner::from_seed(&[5; 32]);
    wire.push(server.seal_receipt(&signer, [0; 32], [0; 32]).unwrap().0);
    (client, server, wire)
}

#[test]
fn reordered_chunks_fail() {
    let (mut c, _, w) = stream(3);
    assert_eq!(c.open_chunk(&w[1]).unwrap_err(), SealError::Open);
}

#[test]
fn dropped_chunk_fails() {
    let (mut c, _, w) = stream(3);
    c.open_chunk(&w[0]).unwrap();
    assert_eq!(c.open_chunk(&w[2]).unwrap_err(), SealError::Open);
}

#[test]
fn duplicated_chunk_fails() {
    let (mut c, _, w) = stream(3);
    c.open_chunk(&w[0]).unwrap();
    assert_eq!(c.open_chunk(&w[0]).unwrap_err(), SealError::Open);
}

#[test]
fn truncated_stream_fails() {
    let (mut c, _, w) = stream(2);
    c.open_chunk(&w[0]).unwrap();
    c.open_chunk(&w[1]).unwrap();
    assert_eq!(c.finish().unwrap_err(), SealError::Truncated);
    assert_eq!(c.open_chunk(&w[2]).unwrap(), Opened::Final);
    c.finish().unwrap();
}

#[test]
fn spliced_chunk_fails() {
    let (mut c1, _, _) = stream(2);
    let (_, _, w2) = stream(2);
    assert_eq!(c1.open_chunk(&w2[0]).unwrap_err(), SealError::Open);
}

#[test]
fn data_after_final_fails() {
    let (mut c, mut s, w) = stream(0);
    assert_eq!(s.seal_chunk(b"more").unwrap_err(), SealError::AfterFinal);
    let signer = ReceiptSigner::from_seed(&[5; 32]);
    assert_eq!(
        s.seal_receipt(&signer, [0; 32], [0; 32]).unwrap_err(),
        SealError::AfterFinal
    );
    assert_eq!(c.open_chunk(&w[0]).unwrap(), Opened::Final);
    assert_eq!(c.open_chunk(&w[0]).unwrap_err(), SealError::AfterFinal);
}

#[test]
fn final_flag_is_authenticated() {
    // The flag is in the AAD: a data chunk never finishes the stream, and the final chunk
    // cannot stand in at another position.
    let (mut c, _, w) = stream(1);
    assert_eq!(c.open_chunk(&w[1]).unwrap_err(), SealError::Open);
    assert!(matches!(c.open_chunk(&w[0]).unwrap(), Opened::Data(_)));
    assert_eq!(c.finish().unwrap_err(), SealError::Truncated);
    assert_eq!(c.open_chunk(&w[1]).unwrap(), Opened::Final);
    c.finish().unwrap();
}

#[test]
fn final_chunk_must_hold_a_signature() {
    // A final chunk whose payload is not exactly 64 bytes is refused (only a server with the
    // response keys could make one, but the client still checks the shape).
    let (kp, parts, mut client) = setup(b"req");
    let (_, mut server) = open(&kp, &parts).unwrap();
    let bogus = server.seal(b"not a signature", true).unwrap();
    assert!(matches!(client.open_chunk(&bogus), Err(SealError::Malformed(_))));
}

#[test]
fn padding_hides_lengths() {
    let (kp, parts, _) = setup(b"req");
    let (_, mut server) = open(&kp, &parts).unwrap();
    let a = server.seal_chunk(b"a").unwrap();
    let b = server.seal_chunk(&[b'x'; 200]).unwrap();
    assert_eq!(a.len(), b.len());
    assert_eq!(a.len(), 256 + TAG_LEN);
    let c = server.seal_chunk(&[0u8; 253]).unwrap();
    assert_eq!(c.len(), 1024 + TAG_LEN);
    let (fin, _) = server
        .seal_receipt(&ReceiptSigner::from_seed(&[1; 32]), [0; 32], [0; 32])
        .unwrap();
    assert_eq!(fin.len(), 256 + TAG_LEN);
    assert_eq!(padded_len(0), 256);
    assert_eq!(padded_len(252), 256);
    assert_eq!(padded_len(65532), 65536);
    assert_eq!(padded_len(65533), 131072);
}

#[test]
fn empty_request_and_empty_chunks() {
    let (kp, parts, mut client) = setup(b"");
    let (req, mut server) = open(&kp, &parts).unwrap();
    assert!(req.is_empty());
    let w = server.seal_chunk(b"").unwrap();
    assert_eq!(client.open_chunk(&w).unwrap(), Opened::Data(Vec::new()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_ciphertext_never_panics(ct in proptest::collection::vec(any::<u8>(), 0..600),
                                      enc in proptest::collection::vec(any::<u8>(), 0..40)) {
        let kp = SessionKeyPair::from_secret_bytes(&[3; 32]);
        let parts = SealedRequestParts { key_id: kp.key_id(), encapsulated_key: enc, ciphertext: ct.clone() };
        prop_assert!(open(&kp, &parts).is_err());
        let (_, _, mut client) = setup(b"q");
        prop_assert!(client.open_chunk(&ct).is_err());
    }
}

/// A protocol-level known-answer vector (published in `docs/protocol.md` §8) for independent
/// clients: fixed session secret, ephemeral ikm, timestamp, info and request.
#[test]
fn veil_protocol_vector() {
    let kp = SessionKeyPair::from_secret_bytes(&h32(SK_RM));
    let info = [&b"veil/v1 sealed request"[..], &[0x11; 32]].concat();
    let (parts, mut client) = seal_request_with_rng(
        &kp.public_key_bytes(),
        kp.key_id(),
        b"hello",
        1_790_000_000,
        &info,
        &mut FixedRng(h(IKM_E)),
    )
    .unwrap();
    let (req, mut server) =
        open_request(&kp, &parts, &info, 1_790_000_000, &mut ReplayCache::new(1), 60).unwrap();
    assert_eq!(&req[..], b"hello");
    let signer = ReceiptSigner::from_seed(&[0x33; 32]);
    let c0 = server.seal_chunk(b"Hi").unwrap();
    let c1 = server.seal_chunk(b"!").unwrap();
    let (c2, receipt) = server.seal_receipt(&signer, [0x22; 32], [0x11; 32]).unwrap();
    assert_eq!(client.open_chunk(&c0).unwrap(), Opened::Data(b"Hi".to_vec()));
    assert_eq!(client.open_chunk(&c1).unwrap(), Opened::Data(b"!".to_vec()));
    assert_eq!(client.open_chunk(&c2).unwrap(), Opened::Final);
    let checked = client
        .verify_receipt(&signer.public_key_bytes(), [0x22; 32], [0x11; 32])
        .unwrap();
    assert_eq!(checked, receipt);
    let claims = receipt.claims;
    let sig = receipt.signature;
    let got = [
        ("key_id", hex::encode(parts.key_id)),
        ("encapsulated_key", hex::encode(&parts.encapsulated_key)),
        ("ciphertext", hex::encode(&parts.ciphertext)),
        ("request_digest", hex::encode(parts.digest())),
        ("chunk0_sha256", hex::encode(Sha256::digest(&c0))),
        ("chunk1_sha256", hex::encode(Sha256::digest(&c1))),
        ("chunk2_sha256", hex::encode(Sha256::digest(&c2))),
        ("response_digest", hex::encode(claims.response_digest)),
        ("receipt_message", hex::encode(claims.message())),
        ("receipt_signature", hex::encode(sig)),
    ];
    assert_eq!(c0.len(), 256 + TAG_LEN);
    assert_eq!(parts.encapsulated_key, h(ENC));
    let want = [
        ("key_id", "69df8d73e7407153"),
        (
            "encapsulated_key",
            "6c93e09869df3402d7bf231bf540fadd35cd56be14f97178f0954db94b7fc256",
        ),
        (
            "ciphertext",
            "702c9e33f6e38dbbcf5870266a2227544660a2c899d1ffe3970806d409",
        ),
        (
            "request_digest",
            "e5690d4540b0d648ab5ca8398b7a55d68852186b116b4257d06d628eede6b106",
        ),
        (
            "chunk0_sha256",
            "8c85f96c118c36d95a473c9b5fb03db11ed059b320a73c0c1b81862f5425f8b6",
        ),
        (
            "chunk1_sha256",
            "c55ded898f638af6c2804facd0214d7aed2fa64b13fca4b124241f4a3ee96ae2",
        ),
        (
            "chunk2_sha256",
            "92fb07548ecafd9f132916e7001a013406b4a6697849d8227af0cd2b610c13fd",
        ),
        (
            "response_digest",
            "14645e865c9f99c396cb4bdbc3e9e949cd1d5c06d223b8cb16c8320e68d04d79",
        ),
        (
            "receipt_message",
            "ad5dd872e9c94f5062dd92ab5a4b2365adc43feb8dc5ee7a7a3a5d9a025ba6be",
        ),
        (
            "receipt_signature",
            "83a0e1527f93a4b95401b215c17b5274f52a282622322b287b5b671ac2515d7ab9793a9274df8d2a8e822db795b8c0325a3b8783c4223d47825979ea83e2590f",
        ),
    ];
    assert_eq!(got.len(), want.len());
    for ((k, v), (wk, wv)) in got.iter().zip(want) {
        assert_eq!((*k, v.as_str()), (wk, wv));
    }
}
