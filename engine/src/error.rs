//! The one error type of the engine crate.

use std::path::PathBuf;

/// Everything that can go wrong in the engine, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a file failed.
    #[error("{context}: {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file's bytes do not follow its format (GGUF, safetensors, JSON, zip...).
    #[error("malformed {format}: {reason}")]
    Format {
        /// Which format (e.g. "GGUF", "safetensors").
        format: &'static str,
        /// What is wrong, naming the offending field.
        reason: String,
    },
    /// The model uses something this engine does not implement.
    #[error("unsupported {what}: {name}")]
    Unsupported {
        /// The kind of thing (architecture, tensor dtype, rope scaling...).
        what: &'static str,
        /// Its name as found in the model.
        name: String,
    },
    /// A tensor the model needs is missing or has the wrong shape.
    #[error("tensor {name}: {reason}")]
    Tensor {
        /// Tensor name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed to render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// Obtaining a model failed (pip missing, network, checksum...).
    #[error("model pull: {0}")]
    Pull(String),
    /// A request is invalid (bad parameter, too long, unknown token id...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A model's files do not hash to the digest expected of them (recorded when it was pulled
    /// or imported, or pinned by the operator): a file was modified or corrupted on disk.
    #[error(
        "model digest mismatch in {dir}: its files hash to {actual}, but {expected_from} is \
         {expected}; {hint}"
    )]
    DigestMismatch {
        /// The model directory.
        dir: PathBuf,
        /// Where the expected digest comes from.
        expected_from: &'static str,
        /// What to do about it.
        hint: &'static str,
        /// The expected digest (hex).
        expected: String,
        /// The digest of the files on disk (hex).
        actual: String,
    },
    /// The KV cache cannot hold what was asked.
    #[error("KV cache exhausted: {0}")]
    KvCacheExhausted(String),
    /// The sealed CC transfer channel failed (a bad tag, a poisoned direction, a bad setting).
    #[error("CC channel: {0}")]
    Channel(#[from] crate::cc::ChannelError),
    /// A backend failed (or is not available in this build).
    #[error("backend {backend}: {reason}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// What failed.
        reason: String,
    },
}

/// Result alias for the engine crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for a format error.
    pub fn format(format: &'static str, reason: impl Into<String>) -> Self {
        Self::Format {
            format,
            reason: reason.into(),
        }
    }

    /// Shorthand for an I/O error with context.
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            context,
            path: path.into(),
            source,
        }
    }
}
