//! The channel secret and the key of each direction and epoch.

use std::fmt;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::error::ChannelError;

/// HKDF salt of version 1 of the channel.
const SALT: &[u8] = b"veil-cc-v1";

/// The 32 random bytes every key of a channel is derived from. Wiped on drop; its `Debug` does
/// not show the bytes.
#[derive(Clone)]
pub struct ChannelSecret(Zeroizing<[u8; 32]>);

impl ChannelSecret {
    /// A fresh secret from the OS random number generator.
    pub fn generate() -> Result<Self, ChannelError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut bytes[..]).map_err(|e| ChannelError::Random(e.to_string()))?;
        Ok(Self(bytes))
    }

    /// A secret with known bytes, for known-answer tests and for a device end that received
    /// the secret by other means. The caller wipes its own copy.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The key of `direction` in `epoch`: `HKDF-SHA256(salt = "veil-cc-v1", ikm = secret,
    /// info = direction (1 byte) || epoch (u32 BE))`, 32 bytes.
    pub fn key(&self, direction: Direction, epoch: u32) -> Result<Zeroizing<[u8; 32]>, ChannelError> {
        let mut info = [0u8; 5];
        info[0] = direction.as_byte();
        info[1..].copy_from_slice(&epoch.to_be_bytes());
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(SALT), &self.0[..])
            .expand(&info, &mut key[..])
            .map_err(|_| ChannelError::KeyDerivation)?;
        Ok(key)
    }
}

impl fmt::Debug for ChannelSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChannelSecret(..)")
    }
}

/// One direction of a channel; the byte is part of every key and every chunk's AAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Direction {
    /// Host to device (`h2d`), byte 0.
    HostToDevice = 0,
    /// Device to host (`d2h`), byte 1.
    DeviceToHost = 1,
}

impl Direction {
    /// The byte that names the direction in keys and AAD.
    pub fn as_byte(self) -> u8 {
        self as u8
    }

    /// The short name, `h2d` or `d2h`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HostToDevice => "h2d",
            Self::DeviceToHost => "d2h",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_per_direction_and_epoch() {
        let secret = ChannelSecret::from_bytes([7; 32]);
        let mut seen = std::collections::HashSet::new();
        for dir in [Direction::HostToDevice, Direction::DeviceToHost] {
            for epoch in [0, 1, 2, 255, 256, u32::MAX] {
                let key = secret.key(dir, epoch).expect("32-byte key");
                assert!(seen.insert(*key), "{dir} epoch {epoch} repeats a key");
                assert_eq!(*key, *secret.key(dir, epoch).expect("again"), "deterministic");
            }
        }
        let other = ChannelSecret::from_bytes([8; 32]);
        assert!(!seen.contains(&*other.key(Direction::HostToDevice, 0).expect("key")));
    }

    #[test]
    fn key_is_hkdf_sha256_of_the_spec() {
        // An independent HKDF (RFC 5869) from HMAC-SHA256 built on sha2: PRK = HMAC(salt, ikm),
        // OKM = HMAC(PRK, info || 0x01) for one 32-byte block.
        fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
            use sha2::Digest;
            let mut k = [0u8; 64];
            k[..key.len()].copy_from_slice(key);
            let inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).chain(msg.iter().copied()).collect();
            let ih = Sha256::digest(&inner);
            let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).chain(ih.iter().copied()).collect();
            Sha256::digest(&outer).into()
        }
        let ikm = [0x42u8; 32];
        let prk = hmac(b"veil-cc-v1", &ikm);
        let okm = hmac(&prk, &[1, 0, 0, 0, 5, 1]);
        let key = ChannelSecret::from_bytes(ikm)
            .key(Direction::DeviceToHost, 5)
            .expect("key");
        assert_eq!(*key, okm);
    }

    #[test]
    fn secrets_are_random_and_debug_hides_them() {
        let a = ChannelSecret::generate().expect("OS RNG");
        let b = ChannelSecret::generate().expect("OS RNG");
        assert_ne!(*a.0, *b.0);
        assert_eq!(format!("{a:?}"), "ChannelSecret(..)");
    }
}
