//! AES-256-GCM (NIST SP 800-38D, 96-bit IV, 128-bit tag) on one chunk.
//!
//! Built from its two halves, AES-CTR (`ctr`) and GHASH (`ghash`), rather than from an AEAD
//! crate: a receiver has to check the tags of every chunk of a message before it writes any
//! byte to the destination, and an AEAD's decrypt either writes as it goes or needs a copy of
//! the whole message. Split, the check reads the ciphertext in the frame and the keystream
//! writes straight into the destination. The tests compare against the `aes-gcm` crate.
//! Both halves pick AES-NI and PCLMULQDQ (or the ARMv8 instructions) at run time.

use std::fmt;

use aes::Aes256Enc;
use aes::cipher::inout::InOutBuf;
use aes::cipher::{BlockEncrypt, InnerIvInit, KeyInit, StreamCipherCore};
use ctr::CtrCore;
use ctr::flavors::Ctr32BE;
use ghash::GHash;
use ghash::universal_hash::UniversalHash;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use super::config::MAX_CHUNK;
use super::error::ChannelError;

/// Bytes of one tag.
pub const TAG_LEN: usize = 16;

/// One AES-256-GCM key, expanded: the AES round keys and the GHASH key `H = AES(0)`. Both are
/// wiped on drop (the crates' `zeroize` features).
pub(crate) struct ChunkCipher {
    aes: Aes256Enc,
    ghash: GHash,
}

impl fmt::Debug for ChunkCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkCipher(..)")
    }
}

impl ChunkCipher {
    /// Expands `key`.
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        let aes = Aes256Enc::new(key.into());
        let mut h = ghash::Block::default();
        aes.encrypt_block(&mut h);
        let ghash = GHash::new(&h);
        h.as_mut_slice().zeroize();
        Self { aes, ghash }
    }

    /// The counter-mode keystream of `iv` (`J0 = IV || 1`) and the mask `AES(J0)` that covers
    /// the tag; the keystream then starts at `J0 + 1`.
    fn keystream(&self, iv: &[u8; 12]) -> (CtrCore<&Aes256Enc, Ctr32BE>, [u8; TAG_LEN]) {
        let mut j0 = ghash::Block::default();
        j0[..12].copy_from_slice(iv);
        j0[15] = 1;
        let mut ctr = CtrCore::<&Aes256Enc, Ctr32BE>::inner_iv_init(&self.aes, &j0);
        let mut mask = ghash::Block::default();
        ctr.write_keystream_block(&mut mask);
        (ctr, mask.into())
    }

    /// `GHASH(H, aad, ciphertext) XOR mask`.
    fn tag(&self, mask: &[u8; TAG_LEN], aad: &[u8], ciphertext: &[u8]) -> [u8; TAG_LEN] {
        let mut ghash = self.ghash.clone();
        ghash.update_padded(aad);
        ghash.update_padded(ciphertext);
        let mut lengths = ghash::Block::default();
        lengths[..8].copy_from_slice(&(aad.len() as u64 * 8).to_be_bytes());
        lengths[8..].copy_from_slice(&(ciphertext.len() as u64 * 8).to_be_bytes());
        ghash.update(&[lengths]);
        let mut tag: [u8; TAG_LEN] = ghash.finalize().into();
        for (t, m) in tag.iter_mut().zip(mask) {
            *t ^= m;
        }
        tag
    }

    /// Encrypts `plaintext` into `ciphertext` (same length) and returns the tag.
    pub(crate) fn seal(
        &self,
        iv: &[u8; 12],
        aad: &[u8],
        plaintext: &[u8],
        ciphertext: &mut [u8],
    ) -> Result<[u8; TAG_LEN], ChannelError> {
        let (ctr, mask) = self.keystream(iv);
        apply(ctr, plaintext, ciphertext)?;
        Ok(self.tag(&mask, aad, ciphertext))
    }

    /// Whether `tag` is the tag of `ciphertext` (compared in constant time).
    pub(crate) fn verify(&self, iv: &[u8; 12], aad: &[u8], ciphertext: &[u8], tag: &[u8]) -> bool {
        let (_, mask) = self.keystream(iv);
        self.tag(&mask, aad, ciphertext).ct_eq(tag).into()
    }

    /// Decrypts `ciphertext` into `plaintext` (same length) without looking at the tag: only
    /// after [`Self::verify`] accepted it.
    pub(crate) fn decrypt(
        &self,
        iv: &[u8; 12],
        ciphertext: &[u8],
        plaintext: &mut [u8],
    ) -> Result<(), ChannelError> {
        let (ctr, _) = self.keystream(iv);
        apply(ctr, ciphertext, plaintext)
    }
}

/// XORs the keystream onto `input`, into `output`.
fn apply(ctr: CtrCore<&Aes256Enc, Ctr32BE>, input: &[u8], output: &mut [u8]) -> Result<(), ChannelError> {
    let (expected, actual) = (input.len(), output.len());
    let buf =
        InOutBuf::new(input, output).map_err(|_| ChannelError::DestinationLength { expected, actual })?;
    // Fails only past 2^32 blocks from J0, far above the 16 MiB a chunk may hold.
    ctr.try_apply_keystream_partial(buf)
        .map_err(|_| ChannelError::MessageTooLong {
            len: expected,
            chunk_size: MAX_CHUNK,
        })
}

/// Seals one chunk with a raw key: `ciphertext = AES-256-GCM(key, iv, aad, plaintext)`, the tag
/// returned. For known-answer tests and for checking the device end.
pub fn seal_chunk(
    key: &[u8; 32],
    iv: &[u8; 12],
    aad: &[u8],
    plaintext: &[u8],
    ciphertext: &mut [u8],
) -> Result<[u8; TAG_LEN], ChannelError> {
    ChunkCipher::new(key).seal(iv, aad, plaintext, ciphertext)
}

/// Opens one chunk with a raw key: checks `tag` first and writes `plaintext` (the length of
/// `ciphertext`) only if it matches. For known-answer tests and for checking the device end.
pub fn open_chunk(
    key: &[u8; 32],
    iv: &[u8; 12],
    aad: &[u8],
    ciphertext: &[u8],
    tag: &[u8; TAG_LEN],
    plaintext: &mut [u8],
) -> Result<(), ChannelError> {
    if plaintext.len() != ciphertext.len() {
        return Err(ChannelError::DestinationLength {
            expected: ciphertext.len(),
            actual: plaintext.len(),
        });
    }
    let cipher = ChunkCipher::new(key);
    if !cipher.verify(iv, aad, ciphertext, tag) {
        return Err(ChannelError::Authentication { chunk: 0 });
    }
    cipher.decrypt(iv, ciphertext, plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).expect("test vector hex")
    }

    /// Test Case 16 of McGrew and Viega, "The Galois/Counter Mode of Operation (GCM)"
    /// (revised 2005, appendix B; also in NIST's GCM validation vectors): AES-256, 96-bit IV,
    /// 60 bytes of plaintext and 20 bytes of AAD.
    #[test]
    fn mcgrew_viega_test_case_16() {
        let key: [u8; 32] = unhex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
            .try_into()
            .expect("32 bytes");
        let iv: [u8; 12] = unhex("cafebabefacedbaddecaf888").try_into().expect("12 bytes");
        let pt = unhex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let aad = unhex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let ct = unhex(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        );
        let tag: [u8; 16] = unhex("76fc6ece0f4e1768cddf8853bb2d551b")
            .try_into()
            .expect("16 bytes");

        let mut out = vec![0u8; pt.len()];
        assert_eq!(seal_chunk(&key, &iv, &aad, &pt, &mut out).expect("seal"), tag);
        assert_eq!(out, ct);

        let mut back = vec![0u8; ct.len()];
        open_chunk(&key, &iv, &aad, &ct, &tag, &mut back).expect("open");
        assert_eq!(back, pt);

        let mut bad_tag = tag;
        bad_tag[15] ^= 1;
        let mut untouched = vec![0xAAu8; ct.len()];
        let err = open_chunk(&key, &iv, &aad, &ct, &bad_tag, &mut untouched);
        assert!(matches!(err, Err(ChannelError::Authentication { .. })));
        assert!(untouched.iter().all(|&b| b == 0xAA), "nothing written on failure");
    }

    /// Test Case 13 (AES-256, empty plaintext and AAD): the tag alone.
    #[test]
    fn mcgrew_viega_test_case_13() {
        let tag = seal_chunk(&[0; 32], &[0; 12], &[], &[], &mut []).expect("seal");
        assert_eq!(tag.to_vec(), unhex("530f8afbc74536b9a963b4f1c4cb738b"));
    }

    #[test]
    fn lengths_must_match() {
        let err = seal_chunk(&[0; 32], &[0; 12], &[], &[1, 2, 3], &mut [0; 2]);
        assert!(matches!(
            err,
            Err(ChannelError::DestinationLength {
                expected: 3,
                actual: 2
            })
        ));
        let err = open_chunk(&[0; 32], &[0; 12], &[], &[1, 2, 3], &[0; 16], &mut [0; 4]);
        assert!(matches!(
            err,
            Err(ChannelError::DestinationLength {
                expected: 3,
                actual: 4
            })
        ));
    }
}
