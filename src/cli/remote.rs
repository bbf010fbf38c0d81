//! Talking to a running server from the CLI (`veil chat`, `veil generate --server`): sealed to
//! the attested engine by default, plaintext only when asked.
//!
//! Before the first request the user sees what was verified (GPUs and their CC mode, the CPU
//! TEE, the model digest) or, when the evidence is simulated or the calls are plaintext, a plain
//! warning that the session is not confidential.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use prost::Message;
use tonic::transport::{Channel, Endpoint};
use veil_attest::policy::Policy;
use veil_client::{Client, ClientError, Receipt};
use veil_proto::v1::generate_response::Event;
use veil_proto::v1::inference_client::InferenceClient;
use veil_proto::v1::{Delta, Finished, GenerateRequest};

/// The server address used when `--server` is not given.
pub(super) const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// How to reach the server.
#[derive(Debug, Args)]
pub(crate) struct RemoteArgs {
    /// The server: URL or HOST:PORT.
    #[arg(long, default_value = DEFAULT_SERVER, env = "VEIL_SERVER")]
    pub(super) server: String,
    /// The attestation policy (TOML, see docs/attestation.md) the server must satisfy before
    /// anything is sent [default: strict: hardware evidence only, GPUs in CC mode].
    #[arg(long, value_name = "FILE")]
    pub(super) policy: Option<PathBuf>,
    /// Send requests in plaintext (the server's `--plaintext on`), skipping attestation: NOT
    /// confidential, for development and benchmarks.
    #[arg(long, conflicts_with = "policy")]
    pub(super) plaintext: bool,
    /// The server is a gateway in front of several replicas: list them (ListReplicas), verify
    /// each one's attestation, and spread the sealed requests over those that verify.
    #[arg(long, conflicts_with = "plaintext")]
    pub(super) discover: bool,
}

/// `http://HOST:PORT` for a bare `HOST:PORT`; URLs are kept as they are.
pub(super) use veil_client::server_url;

/// Connects to a Veil server for plaintext calls.
pub(super) async fn connect(server: &str) -> anyhow::Result<InferenceClient<Channel>> {
    let url = server_url(server);
    let endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid server address {server:?}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to the Veil server at {url} (is `veil serve` running?)"))?;
    Ok(InferenceClient::new(channel))
}

/// A readable description of a failed call.
pub(super) fn status_error(s: &tonic::Status) -> String {
    let msg = s.message();
    match s.code() {
        tonic::Code::Unavailable => format!("server unavailable: {msg}"),
        code if msg.is_empty() => format!("server returned {code:?}"),
        code => format!("server returned {code:?}: {msg}"),
    }
}

/// Reads a policy file.
pub(super) fn load_policy(path: &PathBuf) -> anyhow::Result<Policy> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Policy::from_toml(&text).with_context(|| format!("policy {}", path.display()))
}

/// Explains a verification failure, with a hint where one helps.
pub(super) fn rejection(e: &veil_attest::Error) -> String {
    match e {
        veil_attest::Error::SimulatedNotAllowed(_) => format!(
            "{e} (the server attests with simulated evidence; to accept that anyway, knowing the \
             session is NOT confidential, pass --policy with allow_simulated = true)"
        ),
        _ => e.to_string(),
    }
}

/// A readable description of a client error.
pub(super) fn client_error(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Status(s) => anyhow::anyhow!(status_error(&s)),
        ClientError::Attestation(a) => {
            anyhow::anyhow!("the server's attestation does not verify: {}", rejection(&a))
        }
        other => anyhow::Error::new(other),
    }
}

/// A connection to a server.
#[derive(Debug)]
pub(super) enum Remote {
    /// Sealed calls to the attested engine.
    Sealed(Box<Client>),
    /// Plaintext calls (`--plaintext`).
    Plain(InferenceClient<Channel>),
}

/// How a remote generation ended.
#[derive(Debug)]
pub(super) struct Ended {
    /// The final message.
    pub(super) finished: Finished,
    /// The verified receipt of a sealed call.
    pub(super) receipt: Option<Receipt>,
    /// The encoded attestation bundle that carries the receipt key (sealed calls).
    pub(super) bundle: Option<Vec<u8>>,
}

impl Remote {
    /// Connects and, for sealed calls, attests the server; prints what was verified (or that
    /// the session is not confidential) on stderr.
    pub(super) async fn connect(a: &RemoteArgs) -> anyhow::Result<Self> {
        if a.plaintext {
            let client = connect(&a.server).await?;
            eprintln!(
                "NOT CONFIDENTIAL: --plaintext sends every request in the clear; the operator and \
                 anything between you and the server can read it."
            );
            return Ok(Self::Plain(client));
        }
        let policy = match &a.policy {
            Some(p) => load_policy(p)?,
            None => Policy::default(),
        };
        let mut client = Client::connect(&a.server, policy).await.map_err(client_error)?;
        let confidential = if a.discover {
            let replicas = client.discover().await.map_err(client_error)?;
            for r in replicas {
                for line in r.attested().describe() {
                    eprintln!("attested {}: {line}", r.name());
                }
            }
            let all = replicas.iter().all(|r| r.attested().confidential());
            for s in client.skipped_replicas() {
                eprintln!("replica {} left out: {}", s.name, s.reason);
            }
            all
        } else {
            let attested = client.attest().await.map_err(client_error)?;
            for line in attested.describe() {
                eprintln!("attested: {line}");
            }
            attested.confidential()
        };
        if !confidential {
            eprintln!(
                "NOT CONFIDENTIAL: the requests are sealed, but nothing proves the server runs in \
                 a TEE; its operator can read this session. Do not send anything private."
            );
        }
        Ok(Self::Sealed(Box::new(client)))
    }

    /// Runs one generation, calling `on_delta` for each piece of the reply in order.
    pub(super) async fn generate(
        &mut self,
        req: &GenerateRequest,
        mut on_delta: impl FnMut(&Delta) -> anyhow::Result<()>,
    ) -> anyhow::Result<Ended> {
        let mut finished = None;
        let mut handle = |event: Option<Event>| -> anyhow::Result<()> {
            match event {
                Some(Event::Delta(d)) => on_delta(&d),
                Some(Event::Finished(f)) => {
                    finished = Some(f);
                    Ok(())
                }
                None => Ok(()),
            }
        };
        let (receipt, bundle) = match self {
            Self::Sealed(client) => {
                let mut stream = client.generate(req).await.map_err(client_error)?;
                while let Some(msg) = stream.message().await.map_err(client_error)? {
                    handle(msg.event)?;
                }
                let bundle = client.attested().map(|a| a.bundle().encode_to_vec());
                (stream.receipt().copied(), bundle)
            }
            Self::Plain(client) => {
                let mut stream = client
                    .generate(req.clone())
                    .await
                    .map_err(|s| anyhow::anyhow!(status_error(&s)))?
                    .into_inner();
                while let Some(msg) = stream
                    .message()
                    .await
                    .map_err(|s| anyhow::anyhow!(status_error(&s)))?
                {
                    handle(msg.event)?;
                }
                (None, None)
            }
        };
        let finished = finished.context("the reply ended without its final message")?;
        Ok(Ended {
            finished,
            receipt,
            bundle,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages() {
        let s = tonic::Status::invalid_argument("params.top_p: must be in (0, 1]");
        assert_eq!(
            status_error(&s),
            "server returned InvalidArgument: params.top_p: must be in (0, 1]"
        );
        assert!(status_error(&tonic::Status::unavailable("down")).starts_with("server unavailable"));
    }
}
