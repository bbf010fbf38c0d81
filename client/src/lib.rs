//! # veil-client: talk to a Veil server so that only the attested engine reads the request
//!
//! 1. [`Client::connect`] opens a gRPC channel to the server.
//! 2. [`Client::attest`] asks for an attestation bundle with a fresh random nonce, verifies it
//!    against the client's [`Policy`] (veil-attest's reference verifier) and pins what it proves
//!    ([`Attested`]): the engine's X25519 session key, its Ed25519 receipt key, the model digest
//!    and the bundle's claims digest.
//! 3. [`Client::generate`] and [`Client::generate_batch`] seal the request to the pinned key
//!    with HPKE and return a [`SealedStream`], which opens each response chunk in order and, at
//!    the end, checks the receipt the engine signed over request, response, model and bundle.
//!
//! The operator's infrastructure between client and engine (proxies, TLS terminators, load
//! balancers, logs) sees only ciphertext. The protocol is specified byte by byte in
//! `docs/protocol.md`; the cryptography lives in `veil-seal`.
//!
//! A pin is used for the policy's `max_age_secs`, then the client attests again. A server that
//! no longer holds the pinned key (restarted, another replica) answers FAILED_PRECONDITION
//! marked `veil-error: unknown-key-id`; the client then attests again and re-seals once by
//! itself (on that marker only, never on another FAILED_PRECONDITION).
//!
//! Behind a gateway in front of several replicas, [`Client::discover`] pins every replica that
//! verifies and spreads sealed calls over them. Every sealed call carries the metadata
//! `veil-key-id` (the hex key id it is sealed to), on which the gateway routes it to the replica
//! that owns the key (docs/scale-out.md §2).

mod attested;
mod discover;
mod error;
mod receipt;
mod stream;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use rand_core::{OsRng, TryRngCore};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use veil_proto::routing::{KEY_ID_HEADER, REPLICA_HEADER, is_unknown_key_id};
use veil_proto::v1::inference_client::InferenceClient;
use veil_proto::v1::{
    GenerateBatchRequest, GenerateBatchResponse, GenerateRequest, GenerateResponse, GetAttestationRequest,
    ModelInfoRequest, ModelInfoResponse, SealedRequest,
};
use zeroize::Zeroizing;

use discover::Pool;

pub use attested::Attested;
pub use discover::{SkippedReplica, VerifiedReplica};
pub use error::{ClientError, Result};
pub use receipt::check_receipt;
pub use stream::{OpenedChunk, ResponseOpener, SealedMessage, SealedStream};
pub use veil_attest::policy::Policy;
pub use veil_proto::routing;
pub use veil_seal::{Receipt, ReceiptClaims, SealedRpc};

/// Unix seconds now (0 if the clock is before 1970).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `http://HOST:PORT` for a bare `HOST:PORT`; URLs are kept as they are.
pub fn server_url(server: &str) -> String {
    if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    }
}

/// A client of one Veil server.
#[derive(Debug, Clone)]
pub struct Client {
    rpc: InferenceClient<Channel>,
    policy: Policy,
    attested: Option<Attested>,
    timeout: Option<Duration>,
    /// The replicas pinned by [`Client::discover`]; `None`: one pin (`attested`).
    pool: Option<Pool>,
}

impl Client {
    /// Connects to `server` (a URL or `HOST:PORT`); sealed calls will require `policy`.
    pub async fn connect(server: &str, policy: Policy) -> Result<Self> {
        let url = server_url(server);
        let fail = |reason: String| ClientError::Connect {
            url: url.clone(),
            reason,
        };
        let channel = Endpoint::from_shared(url.clone())
            .map_err(|e| fail(format!("invalid address: {e}")))?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| fail(format!("{e} (is `veil serve` running?)")))?;
        Ok(Self::with_channel(channel, policy))
    }

    /// A client over an existing channel.
    pub fn with_channel(channel: Channel, policy: Policy) -> Self {
        Self {
            rpc: InferenceClient::new(channel),
            policy,
            attested: None,
            timeout: None,
            pool: None,
        }
    }

    /// Sets a deadline for each later call (`None`: no deadline).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The raw gRPC client, for plaintext calls and tools.
    pub fn rpc(&mut self) -> &mut InferenceClient<Channel> {
        &mut self.rpc
    }

    /// The policy sealed calls require.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The current pin, if the client attested the server; after [`Client::discover`], the pin
    /// of the replica the latest sealed call was sealed to.
    pub fn attested(&self) -> Option<&Attested> {
        self.attested.as_ref()
    }

    /// The server's model description (plaintext, unauthenticated: only a verified bundle
    /// proves anything).
    pub async fn model_info(&mut self) -> Result<ModelInfoResponse> {
        let req = self.request(ModelInfoRequest {});
        Ok(self
            .rpc
            .model_info(req)
            .await
            .map_err(ClientError::Status)?
            .into_inner())
    }

    /// Fetches a bundle for a fresh random nonce, verifies it against the policy and pins its
    /// keys (replacing any earlier pin, and the replicas of [`Client::discover`]).
    pub async fn attest(&mut self) -> Result<&Attested> {
        let attested = self.fetch_attested(None).await?;
        self.pool = None;
        Ok(self.attested.insert(attested))
    }

    /// Fetches a bundle for a fresh random nonce (from the replica named `replica`, through a
    /// gateway that routes on `veil-replica`) and verifies it against the policy.
    async fn fetch_attested(&mut self, replica: Option<&str>) -> Result<Attested> {
        let mut nonce = [0u8; 32];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|e| ClientError::Protocol(format!("no randomness for the nonce: {e}")))?;
        let mut req = self.request(GetAttestationRequest {
            nonce: nonce.to_vec(),
        });
        if let Some(name) = replica {
            req.metadata_mut().insert(REPLICA_HEADER, replica_value(name)?);
        }
        let bundle = self
            .rpc
            .get_attestation(req)
            .await
            .map_err(ClientError::Status)?
            .into_inner()
            .bundle
            .ok_or_else(|| ClientError::Protocol("GetAttestation returned no bundle".into()))?;
        Attested::verify(bundle, &nonce, &self.policy, unix_now())
    }

    /// The pin, attesting first when there is none or it is older than the policy allows.
    pub async fn ensure_attested(&mut self) -> Result<&Attested> {
        let fresh = self.attested.as_ref().is_some_and(|a| a.is_fresh(unix_now()));
        if !fresh {
            self.attest().await?;
        }
        self.attested
            .as_ref()
            .ok_or_else(|| ClientError::Protocol("attestation left no pin".into()))
    }

    /// A sealed `Generate`: seals `req` to the attested engine and returns its response stream.
    pub async fn generate(&mut self, req: &GenerateRequest) -> Result<SealedStream<GenerateResponse>> {
        let bytes = Zeroizing::new(req.encode_to_vec());
        self.sealed_call(SealedRpc::Generate, &bytes).await
    }

    /// A sealed `GenerateBatch`: seals `req` and returns the stream of finished items.
    pub async fn generate_batch(
        &mut self,
        req: &GenerateBatchRequest,
    ) -> Result<SealedStream<GenerateBatchResponse>> {
        let bytes = Zeroizing::new(req.encode_to_vec());
        self.sealed_call(SealedRpc::GenerateBatch, &bytes).await
    }

    async fn sealed_call<T: SealedMessage>(
        &mut self,
        rpc: SealedRpc,
        bytes: &[u8],
    ) -> Result<SealedStream<T>> {
        let mut retried = false;
        loop {
            let timestamp = i64::try_from(unix_now()).unwrap_or(i64::MAX);
            let (wire, opener, replica) = if self.pool.is_some() {
                let (attested, name) = self.next_replica().await?;
                let (wire, opener) = attested.seal(rpc, bytes, timestamp)?;
                self.attested = Some(attested);
                (wire, opener, Some(name))
            } else {
                let (wire, opener) = self.ensure_attested().await?.seal(rpc, bytes, timestamp)?;
                (wire, opener, None)
            };
            let routed = replica.as_deref().filter(|n| !n.is_empty());
            match self.send_sealed_to(rpc, wire, routed).await {
                Ok(inner) => return Ok(SealedStream::new(inner, opener)),
                // The server does not hold the key (it restarted, or the call reached another
                // replica) or, behind a gateway, the replica is gone: attest again and re-seal,
                // once.
                Err(s) if !retried && is_unknown_key_id(&s) => {
                    retried = true;
                    self.attested = None;
                    if self.pool.is_some() {
                        self.discover().await?;
                    }
                }
                Err(s) if !retried && self.pool.is_some() && s.code() == tonic::Code::Unavailable => {
                    retried = true;
                    self.discover().await?;
                }
                Err(s) => return Err(ClientError::Status(s)),
            }
        }
    }

    /// Sends an already sealed request (made with [`Attested::seal`]) and returns the raw chunk
    /// stream: for tools and tests that open chunks themselves with a [`ResponseOpener`]. The
    /// call carries `veil-key-id` (the hex of `wire.key_id`, when it is 8 bytes), on which a
    /// gateway routes it.
    pub async fn send_sealed(
        &mut self,
        rpc: SealedRpc,
        wire: SealedRequest,
    ) -> std::result::Result<tonic::Streaming<veil_proto::v1::SealedResponse>, tonic::Status> {
        self.send_sealed_to(rpc, wire, None).await
    }

    /// As [`Client::send_sealed`], also naming the replica (`veil-replica`), which a gateway
    /// whose key map is stale falls back on.
    async fn send_sealed_to(
        &mut self,
        rpc: SealedRpc,
        wire: SealedRequest,
        replica: Option<&str>,
    ) -> std::result::Result<tonic::Streaming<veil_proto::v1::SealedResponse>, tonic::Status> {
        let key_id = (wire.key_id.len() == veil_seal::KEY_ID_LEN).then(|| hex::encode(&wire.key_id));
        let mut req = self.request(wire);
        if let Some(id) = key_id {
            let value = MetadataValue::try_from(id)
                .map_err(|_| tonic::Status::internal("a hex key id is not a metadata value"))?;
            req.metadata_mut().insert(KEY_ID_HEADER, value);
        }
        if let Some(name) = replica {
            let value = replica_value(name).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            req.metadata_mut().insert(REPLICA_HEADER, value);
        }
        let resp = match rpc {
            SealedRpc::Generate => self.rpc.sealed_generate(req).await?,
            SealedRpc::GenerateBatch => self.rpc.sealed_generate_batch(req).await?,
        };
        Ok(resp.into_inner())
    }

    fn request<M>(&self, msg: M) -> tonic::Request<M> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = self.timeout {
            req.set_timeout(t);
        }
        req
    }
}

/// The `veil-replica` metadata value for a replica name (validated: it came from the server).
fn replica_value(name: &str) -> Result<MetadataValue<tonic::metadata::Ascii>> {
    if !veil_proto::routing::valid_replica_name(name) {
        return Err(ClientError::Protocol(format!("invalid replica name {name:?}")));
    }
    MetadataValue::try_from(name).map_err(|_| ClientError::Protocol(format!("invalid replica name {name:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(server_url("127.0.0.1:50051"), "http://127.0.0.1:50051");
        assert_eq!(server_url("http://h:1"), "http://h:1");
        assert_eq!(server_url("https://h:1"), "https://h:1");
    }

    #[test]
    fn replica_header_values() {
        assert_eq!(
            replica_value("veil-0").expect("valid").to_str().ok(),
            Some("veil-0")
        );
        for bad in ["", "a b", "a\r\nx-injected: 1", "é"] {
            assert!(replica_value(bad).is_err(), "{bad:?}");
        }
    }
}
