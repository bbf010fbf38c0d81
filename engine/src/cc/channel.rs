//! The two ends of one direction of a sealed channel.
//!
//! Each end keeps its own copy of the direction's state (`epoch`, `seq`, `counter`) and moves
//! it the same way for every message, so IVs and AAD never travel: a replayed, reordered,
//! dropped or spliced frame is opened under other IVs or AAD and fails.
//!
//! How the engine uses them:
//! - **host to device**: a [`Sealer`] on the host seals each transfer; the returned
//!   [`MessageParams`] are the arguments of the GPU's verify and decrypt kernels, and when
//!   [`MessageParams::starts_epoch`] is true the host uploads [`Sealer::key_for_device`] first.
//!   On the CPU backend (and in tests) an [`Opener`] on the host plays the device end.
//! - **device to host**: the GPU seals, so the host keeps a [`Sealer`] only as a mirror of the
//!   GPU sealer's state: [`Sealer::next_params`] gives the parameters to launch the seal kernel
//!   with (and says when to upload a new key) without encrypting anything; an [`Opener`] then
//!   opens the frame copied back.
//!
//! Rotation (spec "Rotation"): before a message, if `seq` has reached `rotate_after` or the
//! message's chunks would take `counter` past 2^32 (`counter + n > 2^32`), the end moves to
//! `epoch + 1` with `seq = counter = 0` and the epoch's key. A message never starts an epoch in
//! vain, so the first message of every epoch (including epoch 0) has `seq == 0`.

use std::fmt;

use zeroize::Zeroizing;

use super::chunk::ChunkCipher;
use super::config::ChannelConfig;
use super::error::ChannelError;
use super::frame::{MessageParams, chunk_count, frame_len};
use super::keys::{ChannelSecret, Direction};
use super::parallel::{open_frame, seal_frame};

/// Chunks one epoch may use: counters (the last 8 bytes of the IV) stay below 2^32.
const CHUNKS_PER_EPOCH: u64 = 1 << 32;

/// The state of one direction, as one end sees it, with the key of its epoch.
pub(crate) struct DirectionState {
    secret: ChannelSecret,
    config: ChannelConfig,
    channel_id: u32,
    direction: Direction,
    pub(crate) epoch: u32,
    pub(crate) seq: u64,
    pub(crate) counter: u64,
    key: Zeroizing<[u8; 32]>,
    cipher: ChunkCipher,
}

impl DirectionState {
    /// A frame of `frame_len` bytes must be exactly the frame of a `len`-byte message.
    fn check_frame(&self, frame_len_given: usize, len: usize) -> Result<(), ChannelError> {
        let expected = frame_len(len, self.config.chunk_size);
        if frame_len_given == expected {
            Ok(())
        } else {
            Err(ChannelError::FrameLength {
                expected,
                actual: frame_len_given,
            })
        }
    }

    fn new(
        secret: &ChannelSecret,
        channel_id: u32,
        direction: Direction,
        config: ChannelConfig,
    ) -> Result<Self, ChannelError> {
        config.validate()?;
        let key = secret.key(direction, 0)?;
        Ok(Self {
            secret: secret.clone(),
            config,
            channel_id,
            direction,
            epoch: 0,
            seq: 0,
            counter: 0,
            cipher: ChunkCipher::new(&key),
            key,
        })
    }

    /// Moves the state past the next message, of `len` bytes (rotating first when the spec
    /// says so), and returns that message's parameters. On error the state is unchanged.
    fn advance(&mut self, len: usize) -> Result<MessageParams, ChannelError> {
        let cs = self.config.chunk_size;
        let n = chunk_count(len, cs);
        let chunks = u32::try_from(n).map_err(|_| ChannelError::MessageTooLong { len, chunk_size: cs })?;
        if self.seq >= self.config.rotate_after || self.counter + u64::from(chunks) > CHUNKS_PER_EPOCH {
            let epoch = self.epoch.checked_add(1).ok_or(ChannelError::EpochsExhausted)?;
            let key = self.secret.key(self.direction, epoch)?;
            self.cipher = ChunkCipher::new(&key);
            self.key = key;
            (self.epoch, self.seq, self.counter) = (epoch, 0, 0);
        }
        let params = MessageParams {
            channel_id: self.channel_id,
            direction: self.direction,
            epoch: self.epoch,
            seq: self.seq,
            first_counter: self.counter,
            len: len as u64,
            // At most 16 MiB: checked by `ChannelConfig::validate`.
            chunk_size: cs as u32,
        };
        self.seq += 1;
        self.counter += u64::from(chunks);
        Ok(params)
    }

    fn threads_for(&self, len: usize) -> usize {
        self.config
            .threads_for(len, chunk_count(len, self.config.chunk_size))
    }
}

impl fmt::Debug for DirectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectionState")
            .field("channel_id", &self.channel_id)
            .field("direction", &self.direction)
            .field("epoch", &self.epoch)
            .field("seq", &self.seq)
            .field("counter", &self.counter)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The sending end of one direction: seals messages into frames, or (as the host's mirror of
/// a GPU sealer) only computes their parameters.
#[derive(Debug)]
pub struct Sealer {
    pub(crate) state: DirectionState,
}

impl Sealer {
    /// The sending end of `direction` on channel `channel_id`, at epoch 0.
    pub fn new(
        secret: &ChannelSecret,
        channel_id: u32,
        direction: Direction,
        config: ChannelConfig,
    ) -> Result<Self, ChannelError> {
        DirectionState::new(secret, channel_id, direction, config).map(|state| Self { state })
    }

    /// Seals `plaintext` as the next message into `frame`, which must be exactly
    /// [`frame_len`]`(plaintext.len(), chunk_size)` bytes: the ciphertext of every chunk, then
    /// their tags. Returns the message's parameters (for the device end's kernels). On a
    /// length error the state does not move.
    pub fn seal(&mut self, plaintext: &[u8], frame: &mut [u8]) -> Result<MessageParams, ChannelError> {
        self.state.check_frame(frame.len(), plaintext.len())?;
        let params = self.state.advance(plaintext.len())?;
        let threads = self.state.threads_for(plaintext.len());
        seal_frame(&self.state.cipher, &params, plaintext, frame, threads)?;
        Ok(params)
    }

    /// Moves the state past the next message, of `len` bytes, without sealing anything, and
    /// returns its parameters. This is how the host mirrors a sealer that runs on the GPU
    /// (device to host): the parameters are the seal kernel's arguments. The state moves
    /// exactly as in [`Self::seal`] (rotation included); the receiving end must then be given
    /// every message, in this order, with these lengths.
    pub fn next_params(&mut self, len: usize) -> Result<MessageParams, ChannelError> {
        self.state.advance(len)
    }

    /// The key of the current epoch (that of the last message sealed or mirrored), for the
    /// device end. Upload it before the device handles a message whose
    /// [`MessageParams::starts_epoch`] is true.
    pub fn key_for_device(&self) -> Zeroizing<[u8; 32]> {
        self.state.key.clone()
    }

    /// The configuration the sealer was made with.
    pub fn config(&self) -> &ChannelConfig {
        &self.state.config
    }
}

/// The receiving end of one direction: opens frames, checking every tag before it writes a
/// byte. After one failure it refuses every later message ([`ChannelError::Poisoned`]).
#[derive(Debug)]
pub struct Opener {
    pub(crate) state: DirectionState,
    poisoned: bool,
}

impl Opener {
    /// The receiving end of `direction` on channel `channel_id`, at epoch 0.
    pub fn new(
        secret: &ChannelSecret,
        channel_id: u32,
        direction: Direction,
        config: ChannelConfig,
    ) -> Result<Self, ChannelError> {
        DirectionState::new(secret, channel_id, direction, config).map(|state| Self {
            state,
            poisoned: false,
        })
    }

    /// Opens the next message into `dst`, whose length is the message's length; `frame` must be
    /// exactly [`frame_len`]`(dst.len(), chunk_size)` bytes. Every tag is checked (on all
    /// threads) before any byte of `dst` is written; on any error `dst` is untouched and the
    /// opener is poisoned, since the sender's state and this one's no longer agree.
    pub fn open(&mut self, frame: &[u8], dst: &mut [u8]) -> Result<MessageParams, ChannelError> {
        if self.poisoned {
            return Err(ChannelError::Poisoned);
        }
        let result = self.open_unpoisoned(frame, dst);
        self.poisoned = result.is_err();
        result
    }

    fn open_unpoisoned(&mut self, frame: &[u8], dst: &mut [u8]) -> Result<MessageParams, ChannelError> {
        self.state.check_frame(frame.len(), dst.len())?;
        let params = self.state.advance(dst.len())?;
        let threads = self.state.threads_for(dst.len());
        open_frame(&self.state.cipher, &params, frame, dst, threads)?;
        Ok(params)
    }

    /// Whether a message failed on this direction (every later one is refused).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The configuration the opener was made with.
    pub fn config(&self) -> &ChannelConfig {
        &self.state.config
    }
}
