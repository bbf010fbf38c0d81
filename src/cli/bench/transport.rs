//! How `veil bench` sends a request: a plaintext `Generate` or a sealed one (`SealedGenerate`
//! through `veil-client`), behind one interface so both are measured by the same code.

use std::time::Duration;

use tonic::transport::Channel;
use veil_client::{Client, ClientError, SealedStream};
use veil_proto::v1::inference_client::InferenceClient;
use veil_proto::v1::{GenerateRequest, GenerateResponse};

/// A connection that sends `Generate` calls, plaintext or sealed. Clones share the channel
/// (and, sealed, the attestation pin).
#[derive(Debug, Clone)]
pub(crate) enum Transport {
    /// Plaintext `Generate`.
    Plain(InferenceClient<Channel>),
    /// `SealedGenerate` to the attested engine; sealing the request is part of each call.
    Sealed(Box<Client>),
}

impl Transport {
    /// "plaintext" or "sealed".
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Plain(_) => "plaintext",
            Self::Sealed(_) => "sealed",
        }
    }

    /// Starts one generation with a deadline of `timeout`; returns its reply stream.
    pub(crate) async fn generate(
        &mut self,
        req: GenerateRequest,
        timeout: Duration,
    ) -> Result<Replies, CallError> {
        match self {
            Self::Plain(client) => {
                let mut req = tonic::Request::new(req);
                req.set_timeout(timeout);
                Ok(Replies::Plain(Box::new(client.generate(req).await?.into_inner())))
            }
            Self::Sealed(client) => {
                client.set_timeout(Some(timeout));
                Ok(Replies::Sealed(Box::new(client.generate(&req).await?)))
            }
        }
    }
}

/// The reply stream of one generation (both kinds boxed alike: one allocation per call).
#[derive(Debug)]
pub(crate) enum Replies {
    /// A plaintext stream.
    Plain(Box<tonic::Streaming<GenerateResponse>>),
    /// A sealed stream: each message opened, the receipt checked at the end.
    Sealed(Box<SealedStream<GenerateResponse>>),
}

impl Replies {
    /// The next message; `Ok(None)` at the end (sealed: after the receipt verified).
    pub(crate) async fn message(&mut self) -> Result<Option<GenerateResponse>, CallError> {
        Ok(match self {
            Self::Plain(s) => s.message().await?,
            Self::Sealed(s) => s.message().await?,
        })
    }
}

/// Why a call failed, as a request record names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallError {
    /// The gRPC code name (e.g. "Unavailable"), or for a sealed call that failed on the client
    /// "Sealed" (a chunk or the receipt did not verify), "Protocol", "Attestation" or "Connect".
    pub(crate) code: String,
    /// What went wrong.
    pub(crate) message: String,
}

impl From<tonic::Status> for CallError {
    fn from(s: tonic::Status) -> Self {
        Self {
            code: format!("{:?}", s.code()),
            message: s.message().to_string(),
        }
    }
}

impl From<ClientError> for CallError {
    fn from(e: ClientError) -> Self {
        let code = match e {
            ClientError::Status(s) => return s.into(),
            ClientError::Server { code, message } => {
                return Self {
                    code: format!("{code:?}"),
                    message,
                };
            }
            ClientError::Sealed(_) => "Sealed",
            ClientError::Protocol(_) => "Protocol",
            ClientError::Attestation(_) => "Attestation",
            ClientError::Connect { .. } => "Connect",
        };
        Self {
            code: code.into(),
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_named_by_code() {
        let e = CallError::from(tonic::Status::unavailable("down"));
        assert_eq!((e.code.as_str(), e.message.as_str()), ("Unavailable", "down"));
        let e = CallError::from(ClientError::Server {
            code: tonic::Code::ResourceExhausted,
            message: "queue full".into(),
        });
        assert_eq!(e.code, "ResourceExhausted");
        assert_eq!(e.message, "queue full");
        let e = CallError::from(ClientError::Status(tonic::Status::deadline_exceeded("late")));
        assert_eq!(e.code, "DeadlineExceeded");
        let e = CallError::from(ClientError::Protocol("two errors".into()));
        assert_eq!(e.code, "Protocol");
        assert!(e.message.contains("two errors"), "{}", e.message);
    }
}
