//! The device end of the sealed CC transfer channel (`docs/cc-transfer.md`): launching
//! `veil_gcm_verify`, `veil_gcm_decrypt` and `veil_gcm_seal` (`kernels/cuda/aes_gcm.cuh`, ABI in
//! `kernels/cuda/ABI.md`) on raw device pointers.
//!
//! Host-to-device, the host seals a message into a frame, copies it to a device scratch buffer
//! and calls [`GcmKernels::open`]: verify sets the direction's sticky failure word on any bad tag,
//! and decrypt then writes the destination only if the word is clear. Device-to-host,
//! [`GcmKernels::seal`] writes the frame the host opens. The kernels derive IVs and associated
//! data from [`GcmMsg`], the host's mirror of the device end's state.

use cudarc::driver::CudaStream;
use veil_kernels::cuda::{GCM_MAX_CHUNK, GCM_THREADS, GcmMsg};

use super::launch::{Arg, GcmMsgArg, Kernels};
use crate::error::{Error, Result};

/// Plaintext bytes one `veil_gcm_decrypt` block covers per pass (256 threads x 16 bytes).
const DECRYPT_BYTES_PER_BLOCK: u64 = GCM_THREADS as u64 * 16;

/// Grid sizes of the channel's kernels on this GPU: as many blocks as are resident at once (the
/// kernels loop over the work, so each block builds its AES tables and GHASH powers once).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GcmKernels {
    verify_blocks: u32,
    decrypt_blocks: u32,
    seal_blocks: u32,
}

fn invalid(reason: String) -> Error {
    Error::Backend {
        backend: "cuda",
        reason: format!("sealed transfer: {reason}"),
    }
}

/// The kernels trap on these (a trap kills the CUDA context): refuse them here instead.
fn check(msg: &GcmMsg) -> Result<()> {
    let cs = msg.chunk_size;
    if cs == 0 || !cs.is_multiple_of(16) || cs > GCM_MAX_CHUNK {
        return Err(invalid(format!(
            "chunk size {cs} is not a multiple of 16 in [16, {GCM_MAX_CHUNK}]"
        )));
    }
    if msg.n_chunks() > 1 << 32 {
        return Err(invalid(format!(
            "{} bytes is more than 2^32 chunks of {cs}",
            msg.len
        )));
    }
    Ok(())
}

impl GcmKernels {
    /// Sizes the grids from the kernels' occupancy on the stream's GPU.
    pub(crate) fn new(k: &Kernels, stream: &CudaStream) -> Result<Self> {
        Ok(Self {
            verify_blocks: k.resident_blocks(stream, "veil_gcm_verify", GCM_THREADS)?,
            decrypt_blocks: k.resident_blocks(stream, "veil_gcm_decrypt", GCM_THREADS)?,
            seal_blocks: k.resident_blocks(stream, "veil_gcm_seal", GCM_THREADS)?,
        })
    }

    /// Enqueues `veil_gcm_verify`: every chunk's tag of the frame at `frame` is checked; a bad
    /// one sets `*status` (a `u32` in device memory) to nonzero, for good. `key` holds the
    /// direction's 32-byte key, `frame` at least `msg.frame_len()` bytes.
    pub(crate) fn verify(
        &self,
        k: &Kernels,
        stream: &CudaStream,
        key: u64,
        frame: u64,
        msg: &GcmMsg,
        status: u64,
    ) -> Result<()> {
        check(msg)?;
        let grid = grid(msg.n_chunks(), self.verify_blocks);
        let args = [
            Arg::Ptr(key),
            Arg::Ptr(frame),
            Arg::GcmMsg(GcmMsgArg(*msg)),
            Arg::Ptr(status),
        ];
        k.launch(stream, "veil_gcm_verify", (grid, 1, 1), GCM_THREADS, 0, &args)
    }

    /// Enqueues `veil_gcm_decrypt`: if `*status` is still 0 when it runs, `dst[..msg.len]` =
    /// the frame's plaintext; otherwise nothing is written. `dst` holds at least `msg.len` bytes
    /// and does not overlap the frame. Only meaningful after [`GcmKernels::verify`] of the same
    /// message on the same stream.
    #[allow(clippy::too_many_arguments)] // the kernel's own parameter list, plus the stream
    pub(crate) fn decrypt(
        &self,
        k: &Kernels,
        stream: &CudaStream,
        key: u64,
        frame: u64,
        dst: u64,
        msg: &GcmMsg,
        status: u64,
    ) -> Result<()> {
        check(msg)?;
        let grid = grid(msg.len.div_ceil(DECRYPT_BYTES_PER_BLOCK), self.decrypt_blocks);
        let args = [
            Arg::Ptr(key),
            Arg::Ptr(frame),
            Arg::Ptr(dst),
            Arg::GcmMsg(GcmMsgArg(*msg)),
            Arg::Ptr(status),
        ];
        k.launch(stream, "veil_gcm_decrypt", (grid, 1, 1), GCM_THREADS, 0, &args)
    }

    /// Verify, then decrypt: the host-to-device end of one message. Asynchronous: read the
    /// failure word (or let a later step fail on it) after the stream has run.
    #[allow(clippy::too_many_arguments)] // see `decrypt`
    pub(crate) fn open(
        &self,
        k: &Kernels,
        stream: &CudaStream,
        key: u64,
        frame: u64,
        dst: u64,
        msg: &GcmMsg,
        status: u64,
    ) -> Result<()> {
        self.verify(k, stream, key, frame, msg, status)?;
        self.decrypt(k, stream, key, frame, dst, msg, status)
    }

    /// Enqueues `veil_gcm_seal`: `frame` (at least `msg.frame_len()` bytes, not overlapping
    /// `src`) = the ciphertext of `src[..msg.len]` followed by the chunks' tags.
    pub(crate) fn seal(
        &self,
        k: &Kernels,
        stream: &CudaStream,
        key: u64,
        src: u64,
        frame: u64,
        msg: &GcmMsg,
    ) -> Result<()> {
        check(msg)?;
        let grid = grid(msg.n_chunks(), self.seal_blocks);
        let args = [
            Arg::Ptr(key),
            Arg::Ptr(src),
            Arg::Ptr(frame),
            Arg::GcmMsg(GcmMsgArg(*msg)),
        ];
        k.launch(stream, "veil_gcm_seal", (grid, 1, 1), GCM_THREADS, 0, &args)
    }
}

/// `min(work, cap)` blocks (0 when there is no work: the launch is skipped).
fn grid(work: u64, cap: u32) -> u32 {
    u32::try_from(work.min(u64::from(cap))).unwrap_or(cap)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Instant;

    use aes_gcm::aead::{AeadInPlace, KeyInit};
    use aes_gcm::{Aes256Gcm, Nonce, Tag};
    use cudarc::driver::CudaSlice;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::backend::cuda::ptr;
    use crate::backend::cuda::tests::{Gpu, gpu};
    use crate::sampling::Rng;

    const POISON: u8 = 0xA5;
    /// Bytes after the destination that must stay untouched.
    const GUARD: usize = 64;

    /// The frame of `docs/cc-transfer.md`, built with RustCrypto's AES-256-GCM from the spec's
    /// IV and AAD formulas ([`GcmMsg::iv`], [`GcmMsg::aad`]).
    fn host_seal(key: &[u8; 32], msg: &GcmMsg, pt: &[u8]) -> Vec<u8> {
        let cipher = Aes256Gcm::new(key.into());
        let cs = msg.chunk_size as usize;
        let mut frame = pt.to_vec();
        let mut tags = Vec::new();
        for i in 0..msg.n_chunks() {
            let lo = i as usize * cs;
            let hi = (lo + cs).min(pt.len());
            let tag = cipher
                .encrypt_in_place_detached(Nonce::from_slice(&msg.iv(i)), &msg.aad(i), &mut frame[lo..hi])
                .unwrap();
            tags.extend_from_slice(&tag);
        }
        frame.extend_from_slice(&tags);
        frame
    }

    /// Opens a frame on the host; `None` if any tag is wrong.
    fn host_open(key: &[u8; 32], msg: &GcmMsg, frame: &[u8]) -> Option<Vec<u8>> {
        let cipher = Aes256Gcm::new(key.into());
        let (len, cs) = (msg.len as usize, msg.chunk_size as usize);
        let mut pt = frame[..len].to_vec();
        for i in 0..msg.n_chunks() {
            let lo = i as usize * cs;
            let hi = (lo + cs).min(len);
            let t = len + 16 * i as usize;
            cipher
                .decrypt_in_place_detached(
                    Nonce::from_slice(&msg.iv(i)),
                    &msg.aad(i),
                    &mut pt[lo..hi],
                    Tag::from_slice(&frame[t..t + 16]),
                )
                .ok()?;
        }
        Some(pt)
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn rand_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
        (0..n).map(|_| rng.next_u64() as u8).collect()
    }

    fn rand_msg(rng: &mut Rng, chunk_size: u32, len: u64) -> GcmMsg {
        GcmMsg {
            channel_id: rng.next_u64() as u32,
            dir: 0,
            epoch: rng.next_u64() as u32,
            chunk_size,
            seq: rng.next_u64(),
            // Half the time just below 2^32, so that the IV counter carries into its high word.
            first_counter: if rng.next_u64().is_multiple_of(2) {
                rng.next_u64()
            } else {
                0xffff_fffe
            },
            len,
        }
    }

    /// McGrew-Viega GCM test cases 13-16 (AES-256): key, IV, plaintext, AAD, ciphertext, tag.
    const NIST: [[&str; 6]; 4] = [
        [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "000000000000000000000000",
            "",
            "",
            "",
            "530f8afbc74536b9a963b4f1c4cb738b",
        ],
        [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "000000000000000000000000",
            "00000000000000000000000000000000",
            "",
            "cea7403d4d606b6e074ec5d3baf39d18",
            "d0d1c8a799996bf0265b98b5d48ab919",
        ],
        [
            "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            "cafebabefacedbaddecaf888",
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
            "",
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
            "b094dac5d93471bdec1a502270e3cc6c",
        ],
        [
            "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            "cafebabefacedbaddecaf888",
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
            "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            "76fc6ece0f4e1768cddf8853bb2d551b",
        ],
    ];

    /// The host reference needs no GPU: it must reproduce the NIST vectors, and the frame format
    /// must equal the one Python's `cryptography` (AESGCM) produced for the same parameters from
    /// the spec's text (that frame, 380 bytes, is also what the kernels give under
    /// `scripts/cuda_emu_test.sh`).
    #[test]
    fn host_reference_matches_nist_and_an_independent_frame() {
        for [key, iv, pt, aad, ct, tag] in NIST {
            let cipher = Aes256Gcm::new_from_slice(&hex(key)).unwrap();
            let mut buf = hex(pt);
            let t = cipher
                .encrypt_in_place_detached(Nonce::from_slice(&hex(iv)), &hex(aad), &mut buf)
                .unwrap();
            assert_eq!((buf, t.to_vec()), (hex(ct), hex(tag)));
        }
        let key: [u8; 32] = std::array::from_fn(|i| (i * 7 + 1) as u8);
        let pt: Vec<u8> = (0..300).map(|i| (i * 13) as u8).collect();
        let msg = GcmMsg {
            channel_id: 0x0102_0304,
            dir: 1,
            epoch: 0xa0b0_c0d0,
            chunk_size: 64,
            seq: 0x1122_3344_5566_7788,
            first_counter: 0xffff_fffe,
            len: 300,
        };
        let frame = host_seal(&key, &msg, &pt);
        assert_eq!(frame.len(), 380);
        assert_eq!(frame[364..], hex("575548e0b6c534d43e780c2a93187835"));
        let digest: String = Sha256::digest(&frame)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            digest,
            "508ac1896343d53e993c3005dec6fd06fa322e7be2adfab93653c07eaae1aa29"
        );
        assert_eq!(host_open(&key, &msg, &frame), Some(pt));
    }

    #[test]
    fn invalid_messages_are_refused_before_launch() {
        let mut m = GcmMsg {
            chunk_size: 24,
            len: 100,
            ..GcmMsg::default()
        };
        assert!(check(&m).is_err());
        m.chunk_size = 0;
        assert!(check(&m).is_err());
        m.chunk_size = GCM_MAX_CHUNK + 16;
        assert!(check(&m).is_err());
        m.chunk_size = 16;
        assert!(check(&m).is_ok());
        m.len = 16 << 32 | 1;
        assert!(check(&m).is_err(), "2^32 + 1 chunks");
        assert_eq!((grid(0, 8), grid(3, 8), grid(1 << 40, 8)), (0, 3, 8));
    }

    /// Device buffers of one message.
    struct Bufs {
        key: CudaSlice<u8>,
        frame: CudaSlice<u8>,
        dst: CudaSlice<u8>,
        status: CudaSlice<u32>,
    }

    impl Bufs {
        fn new(g: &Gpu, key: &[u8; 32], frame: &[u8], len: usize) -> Self {
            Self {
                key: g.stream.clone_htod(key).unwrap(),
                // A zero-length allocation is not a buffer; a 1-byte one stands in.
                frame: g.stream.clone_htod(&pad1(frame.to_vec())).unwrap(),
                dst: g.stream.clone_htod(&vec![POISON; len + GUARD]).unwrap(),
                status: g.stream.clone_htod(&[0u32]).unwrap(),
            }
        }
        fn open(&self, g: &Gpu, gk: &GcmKernels, msg: &GcmMsg) {
            let s = &g.stream;
            gk.open(
                &g.k,
                s,
                ptr(&self.key, s),
                ptr(&self.frame, s),
                ptr(&self.dst, s),
                msg,
                ptr(&self.status, s),
            )
            .unwrap();
        }
        fn status(&self, g: &Gpu) -> u32 {
            g.stream.clone_dtoh(&self.status).unwrap()[0]
        }
        fn dst(&self, g: &Gpu) -> Vec<u8> {
            g.stream.clone_dtoh(&self.dst).unwrap()
        }
        fn reset(&mut self, g: &Gpu, frame: &[u8]) {
            g.stream
                .memcpy_htod(&pad1(frame.to_vec()), &mut self.frame)
                .unwrap();
            let len = self.dst.len();
            g.stream.memcpy_htod(&vec![POISON; len], &mut self.dst).unwrap();
            g.stream.memcpy_htod(&[0u32], &mut self.status).unwrap();
        }
    }

    fn pad1(mut v: Vec<u8>) -> Vec<u8> {
        if v.is_empty() {
            v.push(0);
        }
        v
    }

    /// Seals `pt` on the device; returns the frame.
    fn device_seal(g: &Gpu, gk: &GcmKernels, key: &[u8; 32], msg: &GcmMsg, pt: &[u8]) -> Vec<u8> {
        let s = &g.stream;
        let d_key = s.clone_htod(key).unwrap();
        let d_src = s.clone_htod(&pad1(pt.to_vec())).unwrap();
        let flen = msg.frame_len() as usize;
        let d_frame = s.clone_htod(&vec![POISON; flen + GUARD]).unwrap();
        gk.seal(&g.k, s, ptr(&d_key, s), ptr(&d_src, s), ptr(&d_frame, s), msg)
            .unwrap();
        let mut out = s.clone_dtoh(&d_frame).unwrap();
        assert!(
            out[flen..].iter().all(|&b| b == POISON),
            "seal wrote past the frame"
        );
        out.truncate(flen);
        out
    }

    #[test]
    fn gcm_nist_ciphertexts_on_the_device() {
        let Some(g) = gpu("gcm_nist_ciphertexts_on_the_device") else {
            return;
        };
        let gk = GcmKernels::new(&g.k, &g.stream).unwrap();
        // Test cases 14-16 have no AAD; their IVs are channel_id || counter, so the kernels'
        // ciphertext must be the NIST one (the tags cover the channel's AAD: checked against
        // the host reference).
        for [key, iv, pt, _, ct, _] in &NIST[1..] {
            let (key, iv, pt) = (hex(key), hex(iv), hex(pt));
            let key: [u8; 32] = key.try_into().unwrap();
            let msg = GcmMsg {
                channel_id: u32::from_be_bytes(iv[..4].try_into().unwrap()),
                dir: 0,
                epoch: 7,
                chunk_size: 64,
                seq: 3,
                first_counter: u64::from_be_bytes(iv[4..].try_into().unwrap()),
                len: pt.len() as u64,
            };
            let frame = device_seal(&g, &gk, &key, &msg, &pt);
            assert_eq!(frame[..pt.len()], hex(ct)[..]);
            assert_eq!(frame, host_seal(&key, &msg, &pt));
            let b = Bufs::new(&g, &key, &frame, pt.len());
            b.open(&g, &gk, &msg);
            assert_eq!(b.status(&g), 0);
            assert_eq!(b.dst(&g)[..pt.len()], pt[..]);
        }
    }

    #[test]
    fn gcm_device_matches_host_aes_gcm() {
        let Some(g) = gpu("gcm_device_matches_host_aes_gcm") else {
            return;
        };
        let gk = GcmKernels::new(&g.k, &g.stream).unwrap();
        let mut rng = Rng::new(20);
        for cs in [256u32, 4096, 65536] {
            let c = cs as u64;
            let mut lens = vec![0, 1, 15, 16, 17, c - 1, c, c + 1, 3 * c + 17, 5 * c - 5];
            lens.extend((0..3).map(|_| rng.next_u64() % (6 * c)));
            for len in lens {
                let what = format!("chunk {cs}, len {len}");
                let key: [u8; 32] = rand_bytes(&mut rng, 32).try_into().unwrap();
                let mut msg = rand_msg(&mut rng, cs, len);
                msg.dir = (len % 2) as u32;
                let pt = rand_bytes(&mut rng, len as usize);
                // Host-to-device: the host's frame opens on the device, nothing past dst.
                let frame = host_seal(&key, &msg, &pt);
                let b = Bufs::new(&g, &key, &frame, pt.len());
                b.open(&g, &gk, &msg);
                assert_eq!(b.status(&g), 0, "{what}: good frame rejected");
                let dst = b.dst(&g);
                assert!(dst[..pt.len()] == pt[..], "{what}: wrong plaintext");
                assert!(
                    dst[pt.len()..].iter().all(|&x| x == POISON),
                    "{what}: wrote past dst"
                );
                // Device-to-host: the device's frame is the host's, bit for bit, and opens.
                let sealed = device_seal(&g, &gk, &key, &msg, &pt);
                assert!(sealed == frame, "{what}: device frame differs");
                assert_eq!(host_open(&key, &msg, &sealed), Some(pt), "{what}");
            }
        }
    }

    #[test]
    fn gcm_tampering_is_rejected_and_dst_left_untouched() {
        let Some(g) = gpu("gcm_tampering_is_rejected_and_dst_left_untouched") else {
            return;
        };
        let gk = GcmKernels::new(&g.k, &g.stream).unwrap();
        let mut rng = Rng::new(21);
        let (cs, len) = (4096u32, 3 * 4096 + 100);
        let key: [u8; 32] = rand_bytes(&mut rng, 32).try_into().unwrap();
        let msg = rand_msg(&mut rng, cs, len as u64);
        let pt = rand_bytes(&mut rng, len);
        let frame = host_seal(&key, &msg, &pt);
        let mut b = Bufs::new(&g, &key, &frame, len);
        let untouched = vec![POISON; len + GUARD];
        // ~200 positions: every tag's first and last byte, each chunk's edges, random bytes
        // of ciphertext and tags.
        let mut positions = vec![0, len - 1, frame.len() - 1];
        for i in 0..msg.n_chunks() as usize {
            positions.extend([len + 16 * i, len + 16 * i + 15]);
            positions.extend([i * cs as usize, ((i + 1) * cs as usize).min(len) - 1]);
        }
        while positions.len() < 200 {
            let p = if positions.len() % 4 == 0 {
                len + (rng.next_u64() as usize % (frame.len() - len))
            } else {
                rng.next_u64() as usize % len
            };
            positions.push(p);
        }
        for &p in &positions {
            let mut bad = frame.clone();
            bad[p] ^= 1 << (rng.next_u64() % 8);
            b.reset(&g, &bad);
            b.open(&g, &gk, &msg);
            assert_eq!(b.status(&g), 1, "flipped bit in byte {p} accepted");
            assert!(b.dst(&g) == untouched, "byte {p}: dst written");
        }
        // The right frame under other parameters: replayed, reordered, from another channel.
        let others = [
            GcmMsg {
                seq: msg.seq ^ 1,
                ..msg
            },
            GcmMsg {
                first_counter: msg.first_counter + 1,
                ..msg
            },
            GcmMsg { dir: 1, ..msg },
            GcmMsg {
                epoch: msg.epoch + 1,
                ..msg
            },
            GcmMsg {
                channel_id: msg.channel_id ^ 1,
                ..msg
            },
        ];
        for other in &others {
            b.reset(&g, &frame);
            b.open(&g, &gk, other);
            assert_eq!(b.status(&g), 1, "{other:?} accepted");
            assert!(b.dst(&g) == untouched);
        }
        // Sticky: once set, a good frame leaves the word set and dst untouched.
        b.reset(&g, &frame);
        b.open(&g, &gk, &msg);
        assert_eq!(b.status(&g), 0);
        let mut bad = frame.clone();
        bad[5] ^= 4;
        b.reset(&g, &bad);
        b.open(&g, &gk, &msg);
        g.stream.memcpy_htod(&frame, &mut b.frame).unwrap();
        g.stream
            .memcpy_htod(&vec![POISON; len + GUARD], &mut b.dst)
            .unwrap();
        b.open(&g, &gk, &msg);
        assert_eq!(b.status(&g), 1, "the failure word is sticky");
        assert!(b.dst(&g) == untouched);
    }

    /// Prints (does not assert) the kernels' throughput on 1 GiB in 64 KiB chunks.
    #[test]
    fn gcm_throughput_1gib() {
        let Some(g) = gpu("gcm_throughput_1gib") else {
            return;
        };
        let gk = GcmKernels::new(&g.k, &g.stream).unwrap();
        let s = &g.stream;
        let len = 1usize << 30;
        let msg = GcmMsg {
            channel_id: 1,
            dir: 0,
            epoch: 0,
            chunk_size: 64 << 10,
            seq: 0,
            first_counter: 0,
            len: len as u64,
        };
        let key = s.clone_htod(&[7u8; 32]).unwrap();
        let pattern: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 31 + 7) as u8).collect();
        let mut src = s.alloc_zeros::<u8>(len).unwrap();
        for i in 0..len >> 20 {
            let mut view = src.slice_mut(i << 20..(i + 1) << 20);
            s.memcpy_htod(&pattern, &mut view).unwrap();
        }
        let frame = s.alloc_zeros::<u8>(msg.frame_len() as usize).unwrap();
        let dst = s.alloc_zeros::<u8>(len).unwrap();
        let status = s.clone_htod(&[0u32]).unwrap();
        let (pk, ps, pf, pd, pst) = (
            ptr(&key, s),
            ptr(&src, s),
            ptr(&frame, s),
            ptr(&dst, s),
            ptr(&status, s),
        );
        let time = |f: &dyn Fn()| {
            f(); // warm-up (module JIT, caches)
            s.synchronize().unwrap();
            let reps = 5;
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            s.synchronize().unwrap();
            len as f64 * f64::from(reps) / t.elapsed().as_secs_f64() / 1e9
        };
        let seal = time(&|| gk.seal(&g.k, s, pk, ps, pf, &msg).unwrap());
        let verify = time(&|| gk.verify(&g.k, s, pk, pf, &msg, pst).unwrap());
        let decrypt = time(&|| gk.decrypt(&g.k, s, pk, pf, pd, &msg, pst).unwrap());
        let open = time(&|| gk.open(&g.k, s, pk, pf, pd, &msg, pst).unwrap());
        assert_eq!(s.clone_dtoh(&status).unwrap()[0], 0);
        let tail = s.clone_dtoh(&dst.slice(len - (1 << 20)..)).unwrap();
        assert!(tail == pattern, "round trip of the last MiB");
        println!(
            "gcm throughput (1 GiB, 64 KiB chunks): verify+decrypt {open:.1} GB/s \
             (verify {verify:.1}, decrypt {decrypt:.1}), seal {seal:.1} GB/s; grids {gk:?}"
        );
    }
}
