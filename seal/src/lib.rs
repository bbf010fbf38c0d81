//! Sealed sessions for Veil: the protocol core (see `docs/protocol.md`).
//!
//! A client seals a request to the engine's attested X25519 session key with HPKE (RFC 9180,
//! base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM). The engine opens it, checks
//! freshness and replay, and streams the response back in padded AES-256-GCM chunks under keys
//! exported from the same HPKE context. At the end it signs a receipt (Ed25519) binding the
//! request, the response, the model and the attestation bundle.

use std::collections::{HashMap, VecDeque};

use aes_gcm::aead::{Aead as _, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use rand_core::{OsRng, RngCore, TryRngCore};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

type SuiteKem = X25519HkdfSha256;
type SuiteKdf = HkdfSha256;
type SuiteAead = AesGcm256;

/// Prefix of the HPKE AAD of a sealed request (followed by the 8-byte key id).
pub const REQUEST_AAD_LABEL: &[u8] = b"veil/v1 request";
/// Prefix hashed into the request digest.
pub const REQUEST_DIGEST_LABEL: &[u8] = b"veil/v1 request digest";
/// HPKE exporter context for the 32-byte response key.
pub const RESPONSE_KEY_LABEL: &[u8] = b"veil/v1 response key";
/// HPKE exporter context for the 12-byte response base nonce.
pub const RESPONSE_NONCE_LABEL: &[u8] = b"veil/v1 response nonce";
/// Prefix hashed into the response digest.
pub const RESPONSE_DIGEST_LABEL: &[u8] = b"veil/v1 response digest";
/// Prefix of the HPKE info of sealed gRPC calls (see [`SealedRpc::info`]).
pub const SEALED_INFO_LABEL: &[u8] = b"veil/v1 sealed request";
/// Prefix hashed into the receipt message.
pub const RECEIPT_LABEL: &[u8] = b"veil/receipt/v1";
/// Length of an X25519 public key and of the HPKE encapsulated key.
pub const ENC_LEN: usize = 32;
/// Length of a key id.
pub const KEY_ID_LEN: usize = 8;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Padding buckets for response chunk plaintexts (length prefix + payload + zeros); above the
/// last bucket, plaintexts are padded to the next multiple of it.
pub const PAD_BUCKETS: [usize; 5] = [256, 1024, 4096, 16384, 65536];

/// A key id: the first 8 bytes of SHA-256 over the 32-byte X25519 public key.
pub type KeyId = [u8; KEY_ID_LEN];

/// The sealed gRPC calls of `veil.v1.Inference`; each seals its own request type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedRpc {
    /// `SealedGenerate`: a sealed `GenerateRequest`.
    Generate,
    /// `SealedGenerateBatch`: a sealed `GenerateBatchRequest`.
    GenerateBatch,
}

impl SealedRpc {
    /// The RPC's method name, as in the proto file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Generate => "SealedGenerate",
            Self::GenerateBatch => "SealedGenerateBatch",
        }
    }

    /// The HPKE info of a request to this RPC: `"veil/v1 sealed request" || bundle_digest ||
    /// method name`. Binding the bundle digest ties the request (and its receipt) to the
    /// attestation the client verified; binding the method keeps a request sealed for one RPC
    /// from being replayed to the other.
    pub fn info(self, bundle_digest: &[u8; 32]) -> Vec<u8> {
        [SEALED_INFO_LABEL, &bundle_digest[..], self.name().as_bytes()].concat()
    }
}

/// Everything that can go wrong in a sealed session.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// The request names a key id other than this key pair's.
    #[error("sealed request is for another session key")]
    WrongKey,
    /// A field has the wrong length or shape.
    #[error("malformed sealed message: {0}")]
    Malformed(&'static str),
    /// Authenticated decryption failed (tampered, reordered, dropped, duplicated or spliced).
    #[error("authenticated decryption failed")]
    Open,
    /// The request's timestamp is outside the accepted window.
    #[error("sealed request timestamp is outside the accepted window")]
    Stale,
    /// The request's encapsulated key was already seen within the window.
    #[error("sealed request was replayed")]
    Replayed,
    /// The replay cache is full of live entries; the request is refused (fail closed).
    #[error("replay cache is full")]
    ReplayCacheFull,
    /// The stream ended without a final chunk.
    #[error("response stream ended without a final chunk")]
    Truncated,
    /// A chunk arrived, or was to be sealed, after the final one.
    #[error("data after the final chunk")]
    AfterFinal,
    /// Key encapsulation or the HPKE key schedule failed.
    #[error("HPKE failure")]
    Hpke,
    /// A receipt signature does not verify.
    #[error("receipt signature does not verify")]
    BadReceipt,
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, SealError>;

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The key id of an X25519 public key: SHA-256(public key)[..8].
pub fn key_id_of(public_key: &[u8; 32]) -> KeyId {
    let d = sha256(&[public_key]);
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&d[..KEY_ID_LEN]);
    id
}

/// The engine's X25519 session key pair. The private key is zeroized on drop.
pub struct SessionKeyPair {
    secret: Zeroizing<[u8; 32]>,
    sk: <SuiteKem as hpke::Kem>::PrivateKey,
    public: [u8; 32],
}

impl std::fmt::Debug for SessionKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeyPair")
            .field("key_id", &hex::encode(self.key_id()))
            .finish_non_exhaustive()
    }
}

impl SessionKeyPair {
    /// A fresh key pair from the operating system's RNG.
    pub fn generate() -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        OsRng.unwrap_err().fill_bytes(&mut secret[..]);
        Self::from_secret_bytes(&secret)
    }

    /// A key pair from raw X25519 secret bytes (for example `StaticSecret::to_bytes()`).
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        let secret = Zeroizing::new(*secret);
        let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*secret));
        let sk = <<SuiteKem as hpke::Kem>::PrivateKey as Deserializable>::from_bytes(&secret[..])
            .unwrap_or_else(|_| unreachable!("every 32-byte string is an X25519 secret"));
        Self {
            secret,
            sk,
            public: public.to_bytes(),
        }
    }

    /// The 32-byte X25519 public key.
    pub fn public_key_bytes(&self) -> [u8; 32] {
        self.public
    }

    /// The key id: SHA-256(public key)[..8].
    pub fn key_id(&self) -> KeyId {
        key_id_of(&self.public)
    }
}

impl Drop for SessionKeyPair {
    fn drop(&mut self) {
        // `secret` zeroizes itself; `sk` wraps an x25519-dalek StaticSecret built with `zeroize`.
        self.secret.zeroize();
    }
}

/// The three fields of a sealed request as they travel on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRequestParts {
    /// Key id of the session key the request is sealed to.
    pub key_id: KeyId,
    /// HPKE encapsulated key (the client's ephemeral X25519 public key), 32 bytes.
    pub encapsulated_key: Vec<u8>,
    /// HPKE ciphertext of the envelope `i64be(timestamp) || request`, with its 16-byte tag.
    pub ciphertext: Vec<u8>,
}

impl SealedRequestParts {
    /// SHA-256("veil/v1 request digest" || key_id || encapsulated_key || ciphertext).
    pub fn digest(&self) -> [u8; 32] {
        sha256(&[
            REQUEST_DIGEST_LABEL,
            &self.key_id,
            &self.encapsulated_key,
            &self.ciphertext,
        ])
    }
}

fn request_aad(key_id: &KeyId) -> Vec<u8> {
    [REQUEST_AAD_LABEL, &key_id[..]].concat()
}

/// Response keys and sequence state, shared by both ends.
struct StreamKeys {
    cipher: Aes256Gcm,
    base_nonce: Zeroizing<[u8; 12]>,
    request_digest: [u8; 32],
    seq: u64,
    finished: bool,
    digest: Sha256,
}

impl StreamKeys {
    fn new(export: impl Fn(&[u8], &mut [u8]) -> Result<()>, request_digest: [u8; 32]) -> Result<Self> {
        let mut key = Zeroizing::new([0u8; 32]);
        let mut base_nonce = Zeroizing::new([0u8; 12]);
        export(RESPONSE_KEY_LABEL, &mut key[..])?;
        export(RESPONSE_NONCE_LABEL, &mut base_nonce[..])?;
        let cipher = Aes256Gcm::new_from_slice(&key[..]).map_err(|_| SealError::Hpke)?;
        Ok(Self {
            cipher,
            base_nonce,
            request_digest,
            seq: 0,
            finished: false,
            digest: Sha256::new_with_prefix(RESPONSE_DIGEST_LABEL),
        })
    }

    fn nonce(&self) -> [u8; 12] {
        let mut n = *self.base_nonce;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    fn aad(&self, is_final: bool) -> [u8; 41] {
        let mut aad = [0u8; 41];
        aad[..32].copy_from_slice(&self.request_digest);
        aad[32..40].copy_from_slice(&self.seq.to_be_bytes());
        aad[40] = u8::from(is_final);
        aad
    }

    fn record(&mut self, payload: &[u8]) {
        self.digest.update((payload.len() as u64).to_be_bytes());
        self.digest.update(payload);
    }
}

/// The padded plaintext length for a payload of `len` bytes (4-byte prefix included).
pub fn padded_len(len: usize) -> usize {
    let need = len + 4;
    let last = PAD_BUCKETS[PAD_BUCKETS.len() - 1];
    PAD_BUCKETS
        .iter()
        .copied()
        .find(|&b| need <= b)
        .unwrap_or_else(|| need.div_ceil(last) * last)
}

/// The client's end of a sealed session: opens the response stream.
pub struct ClientSession {
    keys: StreamKeys,
    receipt_signature: Option<[u8; 64]>,
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("seq", &self.keys.seq)
            .field("finished", &self.keys.finished)
            .finish_non_exhaustive()
    }
}

/// The server's end of a sealed session: seals the response stream.
pub struct ServerSession {
    keys: StreamKeys,
}

impl std::fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSession")
            .field("seq", &self.keys.seq)
            .field("finished", &self.keys.finished)
            .finish_non_exhaustive()
    }
}

/// Seal `plaintext_request` to the session key `pk` (whose id is `key_id`), stamped with the
/// client's clock. `info` is the HPKE info string (see `docs/protocol.md`).
pub fn seal_request(
    pk: &[u8; 32],
    key_id: KeyId,
    plaintext_request: &[u8],
    client_timestamp_unix: i64,
    info: &[u8],
) -> Result<(SealedRequestParts, ClientSession)> {
    seal_request_with_rng(
        pk,
        key_id,
        plaintext_request,
        client_timestamp_unix,
        info,
        &mut OsRng.unwrap_err(),
    )
}

fn seal_request_with_rng<R: rand_core::CryptoRng + RngCore>(
    pk: &[u8; 32],
    key_id: KeyId,
    plaintext_request: &[u8],
    client_timestamp_unix: i64,
    info: &[u8],
    rng: &mut R,
) -> Result<(SealedRequestParts, ClientSession)> {
    let pk = <<SuiteKem as hpke::Kem>::PublicKey as Deserializable>::from_bytes(pk)
        .map_err(|_| SealError::Malformed("public key"))?;
    let (enc, mut ctx) =
        hpke::setup_sender::<SuiteAead, SuiteKdf, SuiteKem, _>(&OpModeS::Base, &pk, info, rng)
            .map_err(|_| SealError::Hpke)?;
    let envelope = Zeroizing::new([&client_timestamp_unix.to_be_bytes()[..], plaintext_request].concat());
    let ciphertext = ctx
        .seal(&envelope, &request_aad(&key_id))
        .map_err(|_| SealError::Hpke)?;
    let parts = SealedRequestParts {
        key_id,
        encapsulated_key: enc.to_bytes().to_vec(),
        ciphertext,
    };
    let keys = StreamKeys::new(
        |label, out| ctx.export(label, out).map_err(|_| SealError::Hpke),
        parts.digest(),
    )?;
    Ok((
        parts,
        ClientSession {
            keys,
            receipt_signature: None,
        },
    ))
}

/// Open a sealed request: checks the key id, decrypts with HPKE `info`, checks the timestamp
/// against the replay cache's clock `± window_secs` (see [`ReplayCache::observe`]), then the
/// replay cache. Returns the request and the server session.
pub fn open_request(
    keypair: &SessionKeyPair,
    parts: &SealedRequestParts,
    info: &[u8],
    now_unix: i64,
    replay: &mut ReplayCache,
    window_secs: i64,
) -> Result<(Zeroizing<Vec<u8>>, ServerSession)> {
    open_checked(keypair, parts, info, |enc, ts| {
        replay.admit(enc, ts, now_unix, window_secs)
    })
}

/// As [`open_request`], for a cache shared between threads: the lock is held only for the
/// replay check, not while decrypting.
pub fn open_request_shared(
    keypair: &SessionKeyPair,
    parts: &SealedRequestParts,
    info: &[u8],
    now_unix: i64,
    replay: &std::sync::Mutex<ReplayCache>,
    window_secs: i64,
) -> Result<(Zeroizing<Vec<u8>>, ServerSession)> {
    open_checked(keypair, parts, info, |enc, ts| {
        replay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(enc, ts, now_unix, window_secs)
    })
}

/// Decrypts and authenticates, then lets `admit` judge freshness and replay (given the
/// encapsulated key and the client's timestamp) before any response key is derived.
fn open_checked(
    keypair: &SessionKeyPair,
    parts: &SealedRequestParts,
    info: &[u8],
    admit: impl FnOnce([u8; ENC_LEN], i64) -> Result<()>,
) -> Result<(Zeroizing<Vec<u8>>, ServerSession)> {
    if parts.key_id != keypair.key_id() {
        return Err(SealError::WrongKey);
    }
    let enc_bytes: [u8; ENC_LEN] = parts
        .encapsulated_key
        .as_slice()
        .try_into()
        .map_err(|_| SealError::Malformed("encapsulated_key must be 32 bytes"))?;
    let enc = <<SuiteKem as hpke::Kem>::EncappedKey as Deserializable>::from_bytes(&enc_bytes)
        .map_err(|_| SealError::Malformed("encapsulated_key"))?;
    let mut ctx =
        hpke::setup_receiver::<SuiteAead, SuiteKdf, SuiteKem>(&OpModeR::Base, &keypair.sk, &enc, info)
            .map_err(|_| SealError::Open)?;
    let envelope = Zeroizing::new(
        ctx.open(&parts.ciphertext, &request_aad(&parts.key_id))
            .map_err(|_| SealError::Open)?,
    );
    let ts_bytes: [u8; 8] = envelope
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or(SealError::Malformed("envelope shorter than its timestamp"))?;
    admit(enc_bytes, i64::from_be_bytes(ts_bytes))?;
    let keys = StreamKeys::new(
        |label, out| ctx.export(label, out).map_err(|_| SealError::Hpke),
        parts.digest(),
    )?;
    Ok((Zeroizing::new(envelope[8..].to_vec()), ServerSession { keys }))
}

/// Size-capped cache of encapsulated keys seen within the freshness window.
///
/// An entry lives until its request's timestamp leaves the window (`timestamp + window`); after
/// that the request would be rejected as stale anyway. When the cache is full of live entries
/// new requests are refused with [`SealError::ReplayCacheFull`] (fail closed) rather than
/// forgetting a live entry.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    seen: HashMap<[u8; ENC_LEN], i64>,
    order: VecDeque<([u8; ENC_LEN], i64)>,
    /// The latest clock reading seen (the cache's clock never goes back).
    latest: i64,
}

impl ReplayCache {
    /// A cache holding at most `capacity` live entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            seen: HashMap::new(),
            order: VecDeque::new(),
            latest: i64::MIN,
        }
    }

    /// The time freshness and expiry are judged against: the latest `now` ever given. A clock
    /// set back (the host controls a guest's wall clock) therefore cannot make a forgotten,
    /// expired request fresh again, which would make the server answer it a second time under
    /// the same response key and nonces.
    pub fn observe(&mut self, now: i64) -> i64 {
        self.latest = self.latest.max(now);
        self.latest
    }

    /// Freshness, then replay: the request's timestamp must be within `window_secs` of the
    /// cache's clock, and its encapsulated key unseen.
    fn admit(&mut self, enc: [u8; ENC_LEN], ts: i64, now_unix: i64, window_secs: i64) -> Result<()> {
        let now = self.observe(now_unix);
        if now.abs_diff(ts) > window_secs.unsigned_abs() {
            return Err(SealError::Stale);
        }
        self.check_and_insert(enc, ts, now, window_secs)
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn evict_expired(&mut self, now: i64) {
        // Pop expired entries from the front (cheap, amortised). Expiry times are not monotone in
        // insertion order (client clocks differ), so when the cache looks full, sweep it whole.
        while let Some(&(k, exp)) = self.order.front() {
            if exp >= now {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&k) == Some(&exp) {
                self.seen.remove(&k);
            }
        }
        if self.seen.len() >= self.capacity {
            self.seen.retain(|_, exp| *exp >= now);
            self.order.retain(|(_, exp)| *exp >= now);
        }
    }

    fn check_and_insert(
        &mut self,
        enc: [u8; ENC_LEN],
        timestamp: i64,
        now: i64,
        window_secs: i64,
    ) -> Result<()> {
        self.evict_expired(now);
        if self.seen.contains_key(&enc) {
            return Err(SealError::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(SealError::ReplayCacheFull);
        }
        let expiry = timestamp.saturating_add(window_secs.saturating_abs());
        self.seen.insert(enc, expiry);
        self.order.push_back((enc, expiry));
        Ok(())
    }
}

impl ServerSession {
    /// Seal one data chunk: pads `payload` to its bucket and encrypts it under the next
    /// sequence number. Fails with [`SealError::AfterFinal`] once the receipt was sealed.
    pub fn seal_chunk(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        let ct = self.seal(payload, false)?;
        self.keys.record(payload);
        Ok(ct)
    }

    /// Ends the stream: signs the receipt over the request digest, the response digest (every
    /// data chunk sealed so far), `model_digest` and `bundle_digest`, and seals the signature as
    /// the final chunk. Returns the chunk and the receipt.
    pub fn seal_receipt(
        &mut self,
        signer: &ReceiptSigner,
        model_digest: [u8; 32],
        bundle_digest: [u8; 32],
    ) -> Result<(Vec<u8>, Receipt)> {
        let claims = ReceiptClaims {
            request_digest: self.keys.request_digest,
            response_digest: self.response_digest(),
            model_digest,
            bundle_digest,
        };
        let signature = signer.sign(&claims);
        let ct = self.seal(&signature, true)?;
        Ok((
            ct,
            Receipt {
                claims,
                signature,
                public_key: signer.public_key_bytes(),
            },
        ))
    }

    fn seal(&mut self, payload: &[u8], is_final: bool) -> Result<Vec<u8>> {
        let k = &mut self.keys;
        if k.finished {
            return Err(SealError::AfterFinal);
        }
        let len = u32::try_from(payload.len()).map_err(|_| SealError::Malformed("chunk too long"))?;
        let mut padded = Zeroizing::new(vec![0u8; padded_len(payload.len())]);
        padded[..4].copy_from_slice(&len.to_be_bytes());
        padded[4..4 + payload.len()].copy_from_slice(payload);
        let nonce = k.nonce();
        let aad = k.aad(is_final);
        let ct = k
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &padded,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Hpke)?;
        k.seq += 1;
        k.finished = is_final;
        Ok(ct)
    }

    /// The request digest this session is bound to.
    pub fn request_digest(&self) -> [u8; 32] {
        self.keys.request_digest
    }

    /// The response digest over the data chunks sealed so far (see `docs/protocol.md`).
    pub fn response_digest(&self) -> [u8; 32] {
        self.keys.digest.clone().finalize().into()
    }
}

/// One opened response chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// A data chunk's payload.
    Data(Vec<u8>),
    /// The final chunk: the stream is complete and its receipt signature was received (check
    /// it with [`ClientSession::verify_receipt`]).
    Final,
}

impl ClientSession {
    /// Opens the next response chunk.
    pub fn open_chunk(&mut self, ciphertext: &[u8]) -> Result<Opened> {
        let k = &mut self.keys;
        if k.finished {
            return Err(SealError::AfterFinal);
        }
        let nonce = k.nonce();
        let mut opened = None;
        for is_final in [false, true] {
            let aad = k.aad(is_final);
            if let Ok(pt) = k.cipher.decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            ) {
                opened = Some((Zeroizing::new(pt), is_final));
                break;
            }
        }
        let (padded, is_final) = opened.ok_or(SealError::Open)?;
        let len_bytes: [u8; 4] = padded
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(SealError::Malformed("chunk shorter than its length prefix"))?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        let payload = padded
            .get(4..)
            .and_then(|rest| rest.get(..len))
            .ok_or(SealError::Malformed("chunk length prefix exceeds the chunk"))?;
        let opened = if is_final {
            let signature: [u8; 64] = payload
                .try_into()
                .map_err(|_| SealError::Malformed("the final chunk is not a 64-byte receipt signature"))?;
            self.receipt_signature = Some(signature);
            Opened::Final
        } else {
            k.record(payload);
            Opened::Data(payload.to_vec())
        };
        k.seq += 1;
        k.finished = is_final;
        Ok(opened)
    }

    /// Call when the transport stream ends: fails with [`SealError::Truncated`] unless the final
    /// chunk was opened.
    pub fn finish(&self) -> Result<()> {
        if self.keys.finished {
            Ok(())
        } else {
            Err(SealError::Truncated)
        }
    }

    /// Checks the receipt of a finished stream against the receipt key, model digest and bundle
    /// digest the client verified in the attestation bundle. The request and response digests
    /// are the client's own.
    pub fn verify_receipt(
        &self,
        receipt_key: &[u8; 32],
        model_digest: [u8; 32],
        bundle_digest: [u8; 32],
    ) -> Result<Receipt> {
        self.finish()?;
        let signature = self.receipt_signature.ok_or(SealError::Truncated)?;
        let receipt = Receipt {
            claims: ReceiptClaims {
                request_digest: self.keys.request_digest,
                response_digest: self.response_digest(),
                model_digest,
                bundle_digest,
            },
            signature,
            public_key: *receipt_key,
        };
        receipt.verify()?;
        Ok(receipt)
    }

    /// The request digest this session is bound to.
    pub fn request_digest(&self) -> [u8; 32] {
        self.keys.request_digest
    }

    /// The response digest over the data chunks opened so far (see `docs/protocol.md`).
    pub fn response_digest(&self) -> [u8; 32] {
        self.keys.digest.clone().finalize().into()
    }
}

/// A signed receipt: what the engine signed, the signature and the key that made it. Keep it
/// with the attestation bundle whose claims carry `public_key` to prove later which attested
/// model produced a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The four digests signed.
    pub claims: ReceiptClaims,
    /// Ed25519 signature over [`ReceiptClaims::message`].
    pub signature: [u8; 64],
    /// The engine's Ed25519 receipt public key (a claim of the attestation bundle).
    pub public_key: [u8; 32],
}

impl Receipt {
    /// Checks the signature (strict Ed25519).
    pub fn verify(&self) -> Result<()> {
        verify_receipt(&self.public_key, &self.claims, &self.signature)
    }
}

/// The four digests a receipt binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiptClaims {
    /// [`SealedRequestParts::digest`].
    pub request_digest: [u8; 32],
    /// [`ServerSession::response_digest`] after the final chunk.
    pub response_digest: [u8; 32],
    /// Digest of the model weights served (as in the attestation bundle).
    pub model_digest: [u8; 32],
    /// Digest of the attestation bundle the client verified.
    pub bundle_digest: [u8; 32],
}

impl ReceiptClaims {
    /// SHA-256("veil/receipt/v1" || request || response || model || bundle): the signed message.
    pub fn message(&self) -> [u8; 32] {
        sha256(&[
            RECEIPT_LABEL,
            &self.request_digest,
            &self.response_digest,
            &self.model_digest,
            &self.bundle_digest,
        ])
    }
}

/// The engine's Ed25519 receipt key (zeroized on drop).
pub struct ReceiptSigner {
    key: SigningKey,
}

impl std::fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptSigner")
            .field("public_key", &hex::encode(self.public_key_bytes()))
            .finish_non_exhaustive()
    }
}

impl ReceiptSigner {
    /// A fresh signer from the operating system's RNG.
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        OsRng.unwrap_err().fill_bytes(&mut seed[..]);
        Self::from_seed(&seed)
    }

    /// A signer from a 32-byte Ed25519 seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The 32-byte Ed25519 public key.
    pub fn public_key_bytes(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Sign the receipt message of `claims`; returns the 64-byte signature.
    pub fn sign(&self, claims: &ReceiptClaims) -> [u8; 64] {
        self.key.sign(&claims.message()).to_bytes()
    }
}

/// Verify a receipt signature made by [`ReceiptSigner::sign`] (strict Ed25519 verification).
pub fn verify_receipt(public_key: &[u8; 32], claims: &ReceiptClaims, signature: &[u8; 64]) -> Result<()> {
    let vk = VerifyingKey::from_bytes(public_key).map_err(|_| SealError::BadReceipt)?;
    vk.verify_strict(&claims.message(), &Signature::from_bytes(signature))
        .map_err(|_| SealError::BadReceipt)
}

#[cfg(test)]
mod tests;
