//! Streams many buffers through a [`Sealer`] (weights at load time), overlapping the three
//! stages of each: reading it (the source iterator, on its own thread), sealing it (a sealing
//! thread, itself using the channel's host threads) and transferring the frame (the caller's
//! [`FrameSink`], on the calling thread, which may hold a GPU context).
//!
//! Frames are sealed into staging buffers the caller provides (pinned host memory on a GPU)
//! and recycled: with two, one is sealed while the other is transferred; a third lets sealing
//! run ahead of an uneven transfer. Up to as many source buffers as staging buffers are read
//! ahead.
//!
//! ```
//! use veil_engine::cc::pipeline::{SealedFrame, seal_stream};
//! use veil_engine::cc::{ChannelConfig, ChannelError, ChannelSecret, Direction, Opener, Sealer};
//!
//! # fn main() -> Result<(), ChannelError> {
//! let secret = ChannelSecret::generate()?;
//! let config = ChannelConfig::default();
//! let mut sealer = Sealer::new(&secret, 0, Direction::HostToDevice, config.clone())?;
//! // The CPU backend's device end: an Opener on the host.
//! let mut opener = Opener::new(&secret, 0, Direction::HostToDevice, config)?;
//! let tensors = vec![vec![1u8; 1000], vec![2u8; 3000]];
//! let mut staging = vec![vec![0u8; 4096]; 2];
//! let mut loaded = Vec::new();
//! let stats = seal_stream(
//!     &mut sealer,
//!     tensors.iter().map(|t| Ok::<_, ChannelError>(t.as_slice())),
//!     &mut staging,
//!     &mut |sealed: &SealedFrame<'_>| {
//!         let mut dst = vec![0u8; sealed.params.len as usize];
//!         opener.open(sealed.frame, &mut dst)?;
//!         loaded.push(dst);
//!         Ok::<_, ChannelError>(())
//!     },
//! )?;
//! assert_eq!(loaded, tensors);
//! assert_eq!(stats.bytes, 4000);
//! # Ok(())
//! # }
//! ```

use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::channel::Sealer;
use super::error::ChannelError;
use super::frame::{MessageParams, frame_len};

/// One sealed message, as handed to the sink.
#[derive(Debug)]
pub struct SealedFrame<'a> {
    /// The frame: ciphertext then tags, `params.frame_len()` bytes in a staging buffer.
    pub frame: &'a [u8],
    /// The message's parameters (the device end's kernel arguments).
    pub params: MessageParams,
    /// On the first message of each epoch ([`MessageParams::starts_epoch`]), the key of
    /// `params.epoch`: the device end must hold it before it handles this frame.
    pub new_key: Option<&'a [u8; 32]>,
}

/// Where the pipeline sends each sealed frame: a GPU backend copies it to the device and
/// launches the kernels; a host-side device end opens it with an [`super::Opener`].
///
/// When `transfer` returns, the pipeline may seal another message into the same staging
/// buffer: a sink that copies asynchronously must wait for its copy (not for the kernels
/// after it) before it returns. Any `FnMut(&SealedFrame<'_>) -> Result<(), E>` is a sink.
pub trait FrameSink {
    /// The sink's error; channel errors of the pipeline convert into it.
    type Error: From<ChannelError>;

    /// Transfers one frame. Frames come in the order they were sealed.
    fn transfer(&mut self, sealed: &SealedFrame<'_>) -> Result<(), Self::Error>;
}

impl<F, E> FrameSink for F
where
    F: FnMut(&SealedFrame<'_>) -> Result<(), E>,
    E: From<ChannelError>,
{
    type Error = E;
    fn transfer(&mut self, sealed: &SealedFrame<'_>) -> Result<(), E> {
        self(sealed)
    }
}

/// What a run of the pipeline moved, and how fast.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PipelineStats {
    /// Messages sealed and transferred.
    pub messages: u64,
    /// Bytes of plaintext.
    pub bytes: u64,
    /// Bytes of frames (plaintext plus tags).
    pub frame_bytes: u64,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Time the sealing thread spent sealing.
    pub seal_time: Duration,
    /// Time the sink spent transferring.
    pub transfer_time: Duration,
}

impl PipelineStats {
    /// Plaintext throughput of the whole run, in GB/s (10^9 bytes per second).
    pub fn gb_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.bytes as f64 / secs / 1e9
        } else {
            0.0
        }
    }
}

/// A frame sealed into a staging buffer, on its way to the sink.
struct Sealed<'s, T> {
    staging: &'s mut T,
    frame_len: usize,
    params: MessageParams,
    new_key: Option<Zeroizing<[u8; 32]>>,
    seal_time: Duration,
}

/// Seals every buffer of `source` with `sealer` and hands each frame to `sink`, overlapping
/// reading, sealing and transfer (see the module documentation). Each staging buffer must hold
/// the frame of the longest buffer ([`frame_len`]). Stops at the first error of the source,
/// the channel or the sink; after an error the direction is out of step with its device end
/// (messages may have been sealed but not transferred), so the caller must not use it again.
pub fn seal_stream<I, B, T, S>(
    sealer: &mut Sealer,
    source: I,
    staging: &mut [T],
    sink: &mut S,
) -> Result<PipelineStats, S::Error>
where
    I: IntoIterator<Item = Result<B, S::Error>>,
    I::IntoIter: Send,
    B: AsRef<[u8]> + Send,
    T: AsMut<[u8]> + Send,
    S: FrameSink,
    S::Error: Send,
{
    if staging.is_empty() {
        return Err(ChannelError::NoStaging.into());
    }
    let depth = staging.len();
    let start = Instant::now();
    let source = source.into_iter();
    std::thread::scope(|s| {
        let (read_tx, read_rx) = sync_channel(depth);
        let (free_tx, free_rx) = channel();
        let (sealed_tx, sealed_rx) = sync_channel(depth);
        for buf in staging.iter_mut() {
            // The receiver is alive in this scope: sending cannot fail.
            let _ = free_tx.send(buf);
        }
        s.spawn(move || {
            for item in source {
                if read_tx.send(item).is_err() {
                    break;
                }
            }
        });
        s.spawn(move || seal_loop(sealer, read_rx, free_rx, sealed_tx));
        // Takes the receiving and recycling ends: when it returns (done or failed) they drop,
        // which stops the other threads before the scope joins them.
        let mut stats = transfer_loop(sealed_rx, free_tx, sink)?;
        stats.elapsed = start.elapsed();
        Ok(stats)
    })
}

/// The sealing thread: takes each read buffer and a free staging buffer, seals, passes on.
fn seal_loop<'s, B, T, E>(
    sealer: &mut Sealer,
    read: Receiver<Result<B, E>>,
    free: Receiver<&'s mut T>,
    sealed: SyncSender<Result<Sealed<'s, T>, E>>,
) where
    B: AsRef<[u8]>,
    T: AsMut<[u8]>,
    E: From<ChannelError>,
{
    for item in read {
        let plaintext = match item {
            Ok(p) => p,
            Err(e) => {
                let _ = sealed.send(Err(e));
                return;
            }
        };
        let Ok(staging) = free.recv() else { return };
        let plaintext = plaintext.as_ref();
        let needed = frame_len(plaintext.len(), sealer.config().chunk_size);
        let t0 = Instant::now();
        let available = staging.as_mut().len();
        let result = match staging.as_mut().get_mut(..needed) {
            Some(frame) => sealer.seal(plaintext, frame),
            None => Err(ChannelError::StagingTooSmall { needed, available }),
        };
        let seal_time = t0.elapsed();
        let message = result.map(|params| Sealed {
            staging,
            frame_len: needed,
            params,
            new_key: params.starts_epoch().then(|| sealer.key_for_device()),
            seal_time,
        });
        let failed = message.is_err();
        if sealed.send(message.map_err(E::from)).is_err() || failed {
            return;
        }
    }
}

/// The calling thread: hands each sealed frame to the sink and recycles its staging buffer.
fn transfer_loop<'s, T, S>(
    sealed: Receiver<Result<Sealed<'s, T>, S::Error>>,
    free: std::sync::mpsc::Sender<&'s mut T>,
    sink: &mut S,
) -> Result<PipelineStats, S::Error>
where
    T: AsMut<[u8]>,
    S: FrameSink,
{
    let mut stats = PipelineStats::default();
    for message in sealed {
        let message = message?;
        let t0 = Instant::now();
        let frame: &[u8] = &message.staging.as_mut()[..message.frame_len];
        sink.transfer(&SealedFrame {
            frame,
            params: message.params,
            new_key: message.new_key.as_deref(),
        })?;
        stats.transfer_time += t0.elapsed();
        stats.seal_time += message.seal_time;
        stats.messages += 1;
        stats.bytes += message.params.len;
        stats.frame_bytes += message.frame_len as u64;
        // The sealing thread may have stopped (after the last message): nothing to recycle for.
        let _ = free.send(message.staging);
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cc::{ChannelConfig, ChannelSecret, Direction, Opener};

    #[derive(Debug)]
    enum TestError {
        Channel(ChannelError),
        Source(usize),
        Sink(u64),
    }

    impl From<ChannelError> for TestError {
        fn from(e: ChannelError) -> Self {
            Self::Channel(e)
        }
    }

    fn config() -> ChannelConfig {
        ChannelConfig {
            chunk_size: 64,
            rotate_after: 2,
            threads: 2,
            min_bytes_per_thread: 0,
        }
    }

    fn ends() -> (ChannelSecret, Sealer, Opener) {
        let secret = ChannelSecret::from_bytes([3; 32]);
        let sealer = Sealer::new(&secret, 1, Direction::HostToDevice, config()).expect("sealer");
        let opener = Opener::new(&secret, 1, Direction::HostToDevice, config()).expect("opener");
        (secret, sealer, opener)
    }

    fn buffers() -> Vec<Vec<u8>> {
        (0..9).map(|k| vec![k as u8; k * 37]).collect()
    }

    #[test]
    fn streams_through_a_host_device_end() {
        for depth in [1, 2, 3] {
            let (secret, mut sealer, mut opener) = ends();
            let source = buffers();
            let mut staging = vec![vec![0u8; 512]; depth];
            let mut opened = Vec::new();
            let stats = seal_stream(
                &mut sealer,
                source.iter().map(|b| Ok::<_, TestError>(b.as_slice())),
                &mut staging,
                &mut |sealed: &SealedFrame<'_>| {
                    let p = sealed.params;
                    assert_eq!(sealed.frame.len() as u64, p.frame_len());
                    match sealed.new_key {
                        Some(key) => {
                            assert!(p.starts_epoch());
                            assert_eq!(*key, *secret.key(p.direction, p.epoch).expect("key"));
                        }
                        None => assert!(!p.starts_epoch()),
                    }
                    let mut dst = vec![0u8; p.len as usize];
                    opener.open(sealed.frame, &mut dst)?;
                    opened.push(dst);
                    Ok::<_, TestError>(())
                },
            )
            .expect("pipeline");
            assert_eq!(opened, source, "depth {depth}");
            assert_eq!(stats.messages, 9);
            assert_eq!(stats.bytes, source.iter().map(|b| b.len() as u64).sum::<u64>());
            assert_eq!(
                stats.frame_bytes,
                source.iter().map(|b| frame_len(b.len(), 64) as u64).sum::<u64>()
            );
            assert!(stats.gb_per_s() >= 0.0);
        }
    }

    #[test]
    fn errors_stop_the_pipeline() {
        let ok_sink = |_: &SealedFrame<'_>| Ok::<_, TestError>(());
        let source = buffers();
        let items = || source.iter().map(|b| Ok::<_, TestError>(b.as_slice()));

        let (_, mut sealer, _) = ends();
        let err = seal_stream(&mut sealer, items(), &mut Vec::<Vec<u8>>::new(), &mut { ok_sink });
        assert!(
            matches!(err, Err(TestError::Channel(ChannelError::NoStaging))),
            "{err:?}"
        );

        let (_, mut sealer, _) = ends();
        let err = seal_stream(&mut sealer, items(), &mut [vec![0u8; 100]], &mut { ok_sink });
        assert!(
            matches!(
                err,
                Err(TestError::Channel(ChannelError::StagingTooSmall {
                    available: 100,
                    ..
                }))
            ),
            "{err:?}"
        );

        let (_, mut sealer, _) = ends();
        let failing = items()
            .enumerate()
            .map(|(k, b)| if k == 4 { Err(TestError::Source(k)) } else { b });
        let mut seen = 0;
        let mut counting = |_: &SealedFrame<'_>| {
            seen += 1;
            Ok::<_, TestError>(())
        };
        let err = seal_stream(
            &mut sealer,
            failing,
            &mut [vec![0u8; 512], vec![0u8; 512]],
            &mut counting,
        );
        assert!(matches!(err, Err(TestError::Source(4))), "{err:?}");
        assert_eq!(seen, 4, "the messages before the failed read were transferred");

        let (_, mut sealer, _) = ends();
        let mut sink_fails = |s: &SealedFrame<'_>| {
            if s.params.seq == 1 {
                Err(TestError::Sink(s.params.seq))
            } else {
                Ok(())
            }
        };
        let err = seal_stream(
            &mut sealer,
            items(),
            &mut [vec![0u8; 512], vec![0u8; 512]],
            &mut sink_fails,
        );
        assert!(matches!(err, Err(TestError::Sink(1))), "{err:?}");
    }
}
