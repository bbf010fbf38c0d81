//! Sealed calls (`SealedGenerate`, `SealedGenerateBatch`; docs/protocol.md): opening HPKE-sealed
//! requests and sealing their response streams.
//!
//! A sealed call runs exactly like its plaintext twin: the opened request goes through the same
//! conversion, validation and engine submission, and produces the same stream of messages. This
//! module sits at both ends of that pipeline. [`SealedCalls::open`] checks the key id (and that
//! the routing header `veil-key-id`, when present, names the same key), decrypts, checks the
//! timestamp window and the replay cache; its failures are the only plain gRPC statuses of a
//! sealed call, and none of them depends on the request's content. A key id this server does
//! not hold gets FAILED_PRECONDITION marked `veil-error: unknown-key-id`, the signal for the
//! client to fetch attestation again and re-seal.
//! [`seal_stream`] then turns every message of the plaintext pipeline, and any error status
//! (whose message may quote the request), into sealed chunks, and ends with the receipt.

use std::sync::Mutex;

use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::metadata::MetadataMap;
use veil_proto::routing::{KEY_ID_HEADER, unknown_key_id_status};
use veil_proto::v1::{self, sealed_payload::Body};
use veil_seal::{
    KEY_ID_LEN, ReplayCache, SealError, SealedRequestParts, SealedRpc, ServerSession, open_request_shared,
};
use zeroize::Zeroizing;

use super::attestation::{Attestor, unix_now};
use super::convert::invalid;
use super::scrub::Wiped;

/// Sealed-call settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SealedConfig {
    /// A request's timestamp may differ from the server's clock by at most this many seconds.
    pub(crate) window_secs: u32,
    /// The most requests the replay cache remembers (within the window); when it is full of
    /// live entries new sealed requests get RESOURCE_EXHAUSTED.
    pub(crate) replay_capacity: usize,
}

/// The server's state for sealed calls: the replay cache and its window.
#[derive(Debug)]
pub(crate) struct SealedCalls {
    replay: Mutex<ReplayCache>,
    window_secs: i64,
}

/// An opened sealed request.
pub(crate) struct OpenedRequest {
    /// The encoded plaintext request; zeroized on drop.
    pub(crate) plaintext: Zeroizing<Vec<u8>>,
    /// The response direction of the session.
    pub(crate) session: ServerSession,
    /// The bundle digest the client named (signed in the receipt).
    pub(crate) bundle_digest: [u8; 32],
}

impl std::fmt::Debug for OpenedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedRequest")
            .field("bundle_digest", &hex::encode(self.bundle_digest))
            .finish_non_exhaustive()
    }
}

impl SealedCalls {
    /// Empty state for `cfg`.
    pub(crate) fn new(cfg: SealedConfig) -> Self {
        Self {
            replay: Mutex::new(ReplayCache::new(cfg.replay_capacity)),
            window_secs: i64::from(cfg.window_secs),
        }
    }

    /// Opens `req` for `rpc` with the attested session key; `metadata` is the call's (for the
    /// `veil-key-id` routing header). Errors are the call's status: none of them depends on the
    /// request's content.
    pub(crate) fn open(
        &self,
        attestor: &Attestor,
        metadata: &MetadataMap,
        req: &v1::SealedRequest,
        rpc: SealedRpc,
    ) -> Result<OpenedRequest, Status> {
        let key_id: [u8; KEY_ID_LEN] = req.key_id.as_slice().try_into().map_err(|_| {
            invalid(
                "key_id",
                format!("must be {KEY_ID_LEN} bytes, got {}", req.key_id.len()),
            )
        })?;
        check_key_id_header(metadata, &key_id)?;
        let bundle_digest: [u8; 32] = req.bundle_digest.as_slice().try_into().map_err(|_| {
            invalid(
                "bundle_digest",
                format!("must be 32 bytes, got {}", req.bundle_digest.len()),
            )
        })?;
        let parts = SealedRequestParts {
            key_id,
            encapsulated_key: req.encapsulated_key.clone(),
            ciphertext: req.ciphertext.clone(),
        };
        let key = attestor.session_key();
        let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        // The replay cache is locked only for its check, not while decrypting.
        let opened = open_request_shared(
            key,
            &parts,
            &rpc.info(&bundle_digest),
            now,
            &self.replay,
            self.window_secs,
        );
        let (plaintext, session) = opened.map_err(|e| self.open_error(&e, key.key_id(), now))?;
        Ok(OpenedRequest {
            plaintext,
            session,
            bundle_digest,
        })
    }

    /// The status of a request that did not open.
    fn open_error(&self, e: &SealError, ours: [u8; KEY_ID_LEN], now: i64) -> Status {
        match e {
            SealError::WrongKey => unknown_key_id_status(format!(
                "key_id: not this server's session key (it holds {}); fetch a fresh attestation \
                 bundle and seal the request again",
                hex::encode(ours)
            )),
            SealError::Malformed(what) => invalid("encapsulated_key", what),
            SealError::Open | SealError::Hpke => invalid(
                "ciphertext",
                "authenticated decryption failed (tampered, or sealed for another RPC, bundle \
                 digest or key)",
            ),
            SealError::Stale => invalid(
                "ciphertext",
                format!(
                    "the request's timestamp is more than {} s from the server's clock ({now}); \
                     check the client's clock",
                    self.window_secs
                ),
            ),
            SealError::Replayed => Status::already_exists("the sealed request was already received (replay)"),
            SealError::ReplayCacheFull => Status::resource_exhausted(
                "too many sealed requests within the replay window; retry later with back-off",
            ),
            SealError::Truncated | SealError::AfterFinal | SealError::BadReceipt => {
                Status::internal("unexpected sealing state")
            }
        }
    }
}

/// Checks that every `veil-key-id` header (the gateway routes on it) is the hex of the request's
/// `key_id`: a header naming another key would let a call be routed by one key and opened by
/// another. No header is fine (a direct connection needs none).
fn check_key_id_header(metadata: &MetadataMap, key_id: &[u8; KEY_ID_LEN]) -> Result<(), Status> {
    for value in metadata.get_all(KEY_ID_HEADER) {
        let named = value
            .to_str()
            .ok()
            .and_then(|text| hex::decode(text).ok())
            .filter(|bytes| bytes.len() == KEY_ID_LEN)
            .ok_or_else(|| {
                invalid(
                    KEY_ID_HEADER,
                    format!("must be {} hex digits (the request's key_id)", 2 * KEY_ID_LEN),
                )
            })?;
        if named != key_id {
            return Err(invalid(
                KEY_ID_HEADER,
                format!(
                    "names key {} but the request's key_id is {}",
                    hex::encode(named),
                    hex::encode(key_id)
                ),
            ));
        }
    }
    Ok(())
}

/// Seals one payload into a chunk; the payload's content is wiped afterwards.
fn seal_body(session: &mut ServerSession, body: Body) -> Result<v1::SealedResponse, SealError> {
    let payload = Wiped(v1::SealedPayload { body: Some(body) });
    let bytes = Zeroizing::new(payload.encode_to_vec());
    Ok(v1::SealedResponse {
        chunk: session.seal_chunk(&bytes)?,
    })
}

/// Seals the plaintext pipeline's messages (`inner`; or the status that refused the call) into
/// `tx`, then the receipt. When the client goes away, `inner` is dropped, which cancels the
/// generation as for a plaintext call.
pub(crate) async fn seal_stream<M>(
    inner: Result<mpsc::Receiver<Result<M, Status>>, Status>,
    wrap: fn(M) -> Body,
    mut opened: OpenedRequest,
    attestor: std::sync::Arc<Attestor>,
    tx: mpsc::Sender<Result<v1::SealedResponse, Status>>,
) {
    let session = &mut opened.session;
    let mut ended_by: Option<Status> = None;
    match inner {
        Err(s) => ended_by = Some(s),
        Ok(mut rx) => loop {
            let msg = tokio::select! {
                biased;
                () = tx.closed() => return,
                m = rx.recv() => m,
            };
            match msg {
                Some(Ok(m)) => {
                    let chunk = match seal_body(session, wrap(m)) {
                        Ok(c) => c,
                        Err(_) => {
                            let _ = tx
                                .send(Err(Status::internal("sealing a response chunk failed")))
                                .await;
                            return;
                        }
                    };
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                Some(Err(s)) => {
                    ended_by = Some(s);
                    break;
                }
                None => break,
            }
        },
    }
    if let Some(s) = ended_by {
        let error = Body::Error(v1::CallError {
            code: s.code() as i32,
            message: s.message().to_owned(),
        });
        match seal_body(session, error) {
            Ok(chunk) => {
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
            Err(_) => {
                let _ = tx
                    .send(Err(Status::internal("sealing a response chunk failed")))
                    .await;
                return;
            }
        }
    }
    let last = session.seal_receipt(
        attestor.receipt_signer(),
        attestor.model_digest(),
        opened.bundle_digest,
    );
    let _ = match last {
        Ok((chunk, _)) => tx.send(Ok(v1::SealedResponse { chunk })).await,
        Err(_) => tx.send(Err(Status::internal("sealing the receipt failed"))).await,
    };
}
