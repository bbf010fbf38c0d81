//! The settings of a sealed channel, fixed when it is made.

use super::error::ChannelError;

/// Smallest chunk: one AES block.
pub(crate) const MIN_CHUNK: usize = 16;
/// Largest chunk. The GCM counter of a chunk is 32 bits wide from `IV || 2`, far above this; the
/// bound keeps one GPU block's work (one chunk) reasonable.
pub(crate) const MAX_CHUNK: usize = 16 << 20;

/// Settings of a sealed channel. Both ends of a direction must use the same `chunk_size` and
/// `rotate_after`; `threads` and `min_bytes_per_thread` only change how fast the host works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Bytes per chunk (one tag each): a multiple of 16 from 16 bytes to 16 MiB. Default 64 KiB.
    pub chunk_size: usize,
    /// Messages per epoch before the keys rotate (at least 1). Default 2^20.
    pub rotate_after: u64,
    /// Host threads that seal or open the chunks of one message in parallel (at least 1).
    /// Default: the available parallelism, at most 8.
    pub threads: usize,
    /// A message gets one thread per this many bytes (at most `threads`), so small transfers
    /// do not pay for starting threads. Default 256 KiB; 0 always uses `threads`.
    pub min_bytes_per_thread: usize,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            chunk_size: 64 << 10,
            rotate_after: 1 << 20,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()).min(8),
            min_bytes_per_thread: 256 << 10,
        }
    }
}

impl ChannelConfig {
    /// Checks every field against its bounds.
    pub fn validate(&self) -> Result<(), ChannelError> {
        let cs = self.chunk_size;
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&cs) || !cs.is_multiple_of(16) {
            return Err(ChannelError::ChunkSize { chunk_size: cs });
        }
        if self.rotate_after == 0 {
            return Err(ChannelError::RotateAfter);
        }
        if self.threads == 0 {
            return Err(ChannelError::Threads);
        }
        Ok(())
    }

    /// The threads to use for a message of `len` bytes in `chunks` chunks.
    pub(crate) fn threads_for(&self, len: usize, chunks: usize) -> usize {
        let by_size = len.checked_div(self.min_bytes_per_thread).unwrap_or(usize::MAX);
        self.threads.min(chunks).min(by_size).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        let ok = ChannelConfig::default();
        assert!(ok.validate().is_ok());
        assert_eq!(ok.chunk_size, 65536);
        assert_eq!(ok.rotate_after, 1 << 20);
        assert!((1..=8).contains(&ok.threads));
        for cs in [16, 32, 4096, 16 << 20] {
            assert!(
                ChannelConfig {
                    chunk_size: cs,
                    ..ok.clone()
                }
                .validate()
                .is_ok(),
                "{cs}"
            );
        }
        for cs in [0, 8, 17, 24, 1000, (16 << 20) + 16, 32 << 20] {
            let err = ChannelConfig {
                chunk_size: cs,
                ..ok.clone()
            }
            .validate();
            assert!(matches!(err, Err(ChannelError::ChunkSize { chunk_size }) if chunk_size == cs));
        }
        let err = ChannelConfig {
            rotate_after: 0,
            ..ok.clone()
        }
        .validate();
        assert!(matches!(err, Err(ChannelError::RotateAfter)));
        let err = ChannelConfig {
            threads: 0,
            ..ok.clone()
        }
        .validate();
        assert!(matches!(err, Err(ChannelError::Threads)));
    }

    #[test]
    fn threads_per_message() {
        let c = ChannelConfig {
            threads: 4,
            min_bytes_per_thread: 1000,
            ..ChannelConfig::default()
        };
        assert_eq!(c.threads_for(0, 1), 1);
        assert_eq!(c.threads_for(2500, 3), 2);
        assert_eq!(c.threads_for(100_000, 3), 3);
        assert_eq!(c.threads_for(100_000, 100), 4);
        let always = ChannelConfig {
            min_bytes_per_thread: 0,
            ..c
        };
        assert_eq!(always.threads_for(10, 100), 4);
    }
}
