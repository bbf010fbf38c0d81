//! The layout of one message: its chunks, its frame, and the IV and AAD of each chunk.

use super::chunk::TAG_LEN;
use super::keys::Direction;

/// Chunks of a message of `len` bytes: `max(1, ceil(len / chunk_size))` (an empty message is
/// one empty chunk, so it still carries a tag). A `chunk_size` of 0, which no channel accepts,
/// counts as 1 so that this never panics.
pub fn chunk_count(len: usize, chunk_size: usize) -> usize {
    len.div_ceil(chunk_size.max(1)).max(1)
}

/// Bytes of the frame of a message of `len` bytes: the ciphertext, then one 16-byte tag per
/// chunk (`len + 16 n`). Saturates instead of overflowing for lengths no buffer can have.
pub fn frame_len(len: usize, chunk_size: usize) -> usize {
    len.saturating_add(chunk_count(len, chunk_size).saturating_mul(TAG_LEN))
}

/// Everything both ends need to seal or open one message, derived from their own copies of the
/// direction's state (nothing of it travels with the frame). These are also the arguments the
/// GPU kernels are launched with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageParams {
    /// The channel (one per engine and device); the first 4 bytes of every IV.
    pub channel_id: u32,
    /// The direction the message travels.
    pub direction: Direction,
    /// The key epoch: the message is sealed under `key(direction, epoch)`.
    pub epoch: u32,
    /// Messages sent before this one in this epoch.
    pub seq: u64,
    /// Chunks sent before this one in this epoch: the counter of chunk 0's IV.
    pub first_counter: u64,
    /// Bytes of plaintext (and of ciphertext).
    pub len: u64,
    /// Bytes per chunk (the last chunk is shorter or empty).
    pub chunk_size: u32,
}

impl MessageParams {
    /// Chunks of the message (`max(1, ceil(len / chunk_size))`; channels keep it within u32).
    pub fn chunks(&self) -> u32 {
        let n = self.len.div_ceil(u64::from(self.chunk_size.max(1))).max(1);
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Bytes of the frame: `len + 16 * chunks`.
    pub fn frame_len(&self) -> u64 {
        self.len + u64::from(self.chunks()) * TAG_LEN as u64
    }

    /// Whether this message is the first of its epoch (`seq == 0`): the device end must hold
    /// `key(direction, epoch)` before it handles this message, so the host uploads it first.
    pub fn starts_epoch(&self) -> bool {
        self.seq == 0
    }

    /// The IV of chunk `i`: `channel_id (u32 BE) || first_counter + i (u64 BE)`.
    pub fn iv(&self, i: u32) -> [u8; 12] {
        let mut iv = [0u8; 12];
        iv[..4].copy_from_slice(&self.channel_id.to_be_bytes());
        iv[4..].copy_from_slice(&(self.first_counter + u64::from(i)).to_be_bytes());
        iv
    }

    /// The associated data of chunk `i` (32 bytes): `"VCC1" || dir || last || 0x0000 ||
    /// epoch (u32 BE) || seq (u64 BE) || i (u32 BE) || len (u64 BE)`, where `last` is 1 for the
    /// last chunk (binding the message's end) and 0 otherwise.
    pub fn aad(&self, i: u32) -> [u8; 32] {
        let mut aad = [0u8; 32];
        aad[..4].copy_from_slice(b"VCC1");
        aad[4] = self.direction.as_byte();
        aad[5] = u8::from(u64::from(i) + 1 == u64::from(self.chunks()));
        // aad[6..8] stays 0 (reserved).
        aad[8..12].copy_from_slice(&self.epoch.to_be_bytes());
        aad[12..20].copy_from_slice(&self.seq.to_be_bytes());
        aad[20..24].copy_from_slice(&i.to_be_bytes());
        aad[24..32].copy_from_slice(&self.len.to_be_bytes());
        aad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_lengths() {
        let cs = 64;
        for (len, n) in [(0, 1), (1, 1), (63, 1), (64, 1), (65, 2), (128, 2), (129, 3)] {
            assert_eq!(chunk_count(len, cs), n, "len {len}");
            assert_eq!(frame_len(len, cs), len + 16 * n, "len {len}");
        }
        assert_eq!(chunk_count(5, 0), 5);
        assert_eq!(frame_len(usize::MAX, 16), usize::MAX);
    }

    #[test]
    fn iv_and_aad_bytes() {
        let p = MessageParams {
            channel_id: 0x0102_0304,
            direction: Direction::DeviceToHost,
            epoch: 0x0506_0708,
            seq: 0x1112_1314_1516_1718,
            first_counter: 0xFFFF_FFF0,
            len: 40,
            chunk_size: 16,
        };
        assert_eq!(p.chunks(), 3);
        assert_eq!(p.frame_len(), 40 + 48);
        assert_eq!(p.iv(2), [1, 2, 3, 4, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xF2]);
        let mut expected = Vec::new();
        expected.extend_from_slice(b"VCC1");
        expected.extend_from_slice(&[1, 0, 0, 0]);
        expected.extend_from_slice(&[5, 6, 7, 8]);
        expected.extend_from_slice(&[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]);
        expected.extend_from_slice(&[0, 0, 0, 1]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 40]);
        assert_eq!(p.aad(1).to_vec(), expected);
        assert_eq!(p.aad(2)[5], 1, "last chunk");
        let empty = MessageParams { len: 0, ..p };
        assert_eq!(empty.chunks(), 1);
        assert_eq!(empty.aad(0)[5], 1, "the only chunk is the last");
        assert!(!p.starts_epoch());
        assert!(MessageParams { seq: 0, ..p }.starts_epoch());
    }
}
