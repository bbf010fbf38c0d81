//! The sealed channel in loopback, for the CPU backend: a host-to-device [`Sealer`] and the
//! host-side device end ([`Opener`]) in one process. The CPU backend has no device link, so
//! `--cc sealed` there passes every weight tensor through seal and open before the backend
//! converts it: what a CC-on/off comparison on the CPU measures is the cost of the
//! cryptography alone, not of a bus. It protects nothing.

use std::time::{Duration, Instant};

use super::channel::{Opener, Sealer};
use super::config::ChannelConfig;
use super::error::ChannelError;
use super::frame::frame_len;
use super::keys::{ChannelSecret, Direction};

/// Both ends of one direction, and what crossed.
#[derive(Debug)]
pub struct Loopback {
    sealer: Sealer,
    opener: Opener,
    frame: Vec<u8>,
    bytes: u64,
    busy: Duration,
}

impl Loopback {
    /// A fresh channel (new secret) with `config`.
    pub fn new(config: &ChannelConfig) -> Result<Self, ChannelError> {
        config.validate()?;
        let secret = ChannelSecret::generate()?;
        Ok(Self {
            sealer: Sealer::new(&secret, 0, Direction::HostToDevice, config.clone())?,
            opener: Opener::new(&secret, 0, Direction::HostToDevice, config.clone())?,
            frame: Vec::new(),
            bytes: 0,
            busy: Duration::ZERO,
        })
    }

    /// Seals `plaintext` and opens the frame again into a new buffer, which is returned.
    pub fn transfer(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, ChannelError> {
        let t0 = Instant::now();
        let n = frame_len(plaintext.len(), self.sealer.config().chunk_size);
        self.frame.resize(n, 0);
        self.sealer.seal(plaintext, &mut self.frame)?;
        let mut out = vec![0u8; plaintext.len()];
        self.opener.open(&self.frame, &mut out)?;
        self.bytes += plaintext.len() as u64;
        self.busy += t0.elapsed();
        Ok(out)
    }

    /// Plaintext bytes transferred so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Time spent sealing and opening so far.
    pub fn busy(&self) -> Duration {
        self.busy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_returns_the_bytes_and_counts_them() {
        let cfg = ChannelConfig {
            chunk_size: 64,
            rotate_after: 2,
            ..ChannelConfig::default()
        };
        let mut l = Loopback::new(&cfg).expect("loopback");
        for len in [0usize, 1, 63, 64, 65, 1000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            assert_eq!(l.transfer(&data).expect("transfer"), data);
        }
        assert_eq!(l.bytes(), 1 + 63 + 64 + 65 + 1000);
    }
}
