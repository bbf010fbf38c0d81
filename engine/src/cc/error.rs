//! What can go wrong on a sealed channel.

/// An error of the sealed CC channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// `chunk_size` is not a multiple of 16 between 16 bytes and 16 MiB.
    #[error("chunk size {chunk_size} is not a multiple of 16 between 16 bytes and 16 MiB")]
    ChunkSize {
        /// The rejected size.
        chunk_size: usize,
    },
    /// `rotate_after` is 0.
    #[error("rotate_after must be at least 1 message")]
    RotateAfter,
    /// `threads` is 0.
    #[error("a channel needs at least 1 host thread")]
    Threads,
    /// A frame buffer does not have the length of the message's frame (`len + 16 n`).
    #[error("frame is {actual} bytes, the message needs {expected}")]
    FrameLength {
        /// `len + 16 n` for the message.
        expected: usize,
        /// The buffer's length.
        actual: usize,
    },
    /// A destination (or output) buffer does not have the message's length.
    #[error("destination is {actual} bytes, the message has {expected}")]
    DestinationLength {
        /// The message's length.
        expected: usize,
        /// The buffer's length.
        actual: usize,
    },
    /// A message would need more than `u32::MAX` chunks (the chunk index is 32 bits).
    #[error("a message of {len} bytes is too long for chunks of {chunk_size} bytes")]
    MessageTooLong {
        /// The message's length.
        len: usize,
        /// The channel's chunk size.
        chunk_size: usize,
    },
    /// A tag did not match: the frame was corrupted, tampered with, replayed, reordered or sent
    /// under another key. The direction is now poisoned.
    #[error("authentication failed at chunk {chunk}: the transfer was corrupted or tampered with")]
    Authentication {
        /// The first chunk whose tag failed.
        chunk: u32,
    },
    /// An earlier message on this direction failed; the direction is not trusted again.
    #[error("the channel direction failed earlier and accepts nothing more")]
    Poisoned,
    /// All 2^32 epochs of the direction are used up.
    #[error("the channel ran out of key epochs")]
    EpochsExhausted,
    /// The OS random number generator failed.
    #[error("OS random number generator: {0}")]
    Random(String),
    /// HKDF refused to derive a key (cannot happen for 32-byte keys).
    #[error("key derivation failed")]
    KeyDerivation,
    /// A staging buffer of the pipeline is smaller than a message's frame.
    #[error("staging buffer of {available} bytes is too small for a frame of {needed}")]
    StagingTooSmall {
        /// The frame's length.
        needed: usize,
        /// The staging buffer's length.
        available: usize,
    },
    /// The pipeline was given no staging buffer.
    #[error("the pipeline needs at least one staging buffer")]
    NoStaging,
    /// A host thread sealing or opening chunks panicked.
    #[error("a channel worker thread panicked")]
    WorkerPanicked,
}
