//! # The CC transfer path, host side
//!
//! Every byte Veil moves between host and GPU memory crosses in one of three modes ([`CcMode`]),
//! described in `docs/cc-transfer.md`. This module holds the host side of the `sealed` mode: a
//! channel whose two directions carry AES-256-GCM frames (version 1 of the layout in the
//! document's section "The sealed channel, byte by byte").
//!
//! - [`keys`]: the channel secret (32 random bytes, wiped on drop), the [`Direction`]s and the
//!   HKDF-SHA256 key of each direction and epoch.
//! - [`frame`]: the layout of one message: chunk count, frame length, and [`MessageParams`],
//!   the numbers both ends derive each chunk's IV and associated data from (and what the GPU
//!   kernels are launched with).
//! - [`channel`]: the two ends of one direction. A [`Sealer`] seals messages (or, used as a
//!   mirror, only computes the parameters of the messages the GPU seals); an [`Opener`] checks
//!   every tag of a message before it writes a byte, and refuses everything after one failure.
//!   An `Opener` on the host is also the host-side implementation of the device end, used by
//!   the CPU backend and the tests.
//! - [`pipeline`]: streams many buffers (weights at load time) through a sealer, overlapping
//!   reading, sealing and transfer.
//! - [`loopback`]: both ends of a direction in one process, for the CPU backend.
//! - [`chunk`]: AES-256-GCM on one chunk, in the two halves a receiver needs (tag check, then
//!   keystream), and a one-shot seal/open for known-answer tests.
//!
//! Chunks of one message are sealed and opened on up to [`ChannelConfig::threads`] host
//! threads (each takes a contiguous run of chunks).
//!
//! `sealed` is not a confidentiality boundary without hardware CC: the keys reach the GPU in
//! the clear. It checks the integrity of every transfer and reproduces the cost of the CC path
//! on any GPU.

pub mod channel;
pub mod chunk;
mod config;
mod error;
pub mod frame;
pub mod keys;
pub mod loopback;
mod parallel;
pub mod pipeline;

#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

pub use channel::{Opener, Sealer};
pub use config::ChannelConfig;
pub use error::ChannelError;
pub use frame::{MessageParams, chunk_count, frame_len};
pub use keys::{ChannelSecret, Direction};

use crate::error::Error;

/// How bytes cross between host and GPU memory (`--cc off|hardware|sealed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CcMode {
    /// Plaintext through pinned staging buffers.
    #[default]
    Off,
    /// The driver's encrypted bounce buffers (GPU CC mode, checked through NVML at start-up).
    Hardware,
    /// Veil's own AES-256-GCM channel: the host seals, a GPU kernel opens (and the reverse).
    Sealed,
}

impl CcMode {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Hardware => "hardware",
            Self::Sealed => "sealed",
        }
    }
}

impl FromStr for CcMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "off" => Ok(Self::Off),
            "hardware" => Ok(Self::Hardware),
            "sealed" => Ok(Self::Sealed),
            _ => Err(Error::InvalidRequest(format!(
                "unknown CC mode {s:?} (off, hardware or sealed)"
            ))),
        }
    }
}

impl fmt::Display for CcMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
