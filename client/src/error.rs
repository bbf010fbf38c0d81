//! The client's error type.

use veil_seal::SealError;

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server address is not a valid URI, or no connection could be made.
    #[error("cannot connect to the Veil server at {url}: {reason}")]
    Connect {
        /// The URL tried.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The server refused the call or the transport failed (a plain gRPC status: it carries
    /// nothing from the sealed request).
    #[error("server returned {}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// The call was opened and failed inside the engine; the error came sealed.
    #[error("server returned {code}: {message}")]
    Server {
        /// The gRPC status code the plaintext call would have ended with.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The server's attestation bundle does not verify against the policy.
    #[error("the server's attestation does not verify: {0}")]
    Attestation(#[from] veil_attest::Error),
    /// A sealed chunk or the receipt failed its checks (tampered, reordered, dropped, duplicated
    /// or truncated stream; bad signature).
    #[error("sealed stream rejected: {0}")]
    Sealed(#[from] SealError),
    /// The server sent something the protocol does not allow.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The gRPC code of a refused or failed call, if the error is one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Status(s) => Some(s.code()),
            Self::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ClientError>;
