//! Tests of the channel as a whole: round trips, the frame layout against an independent
//! AES-GCM, IV uniqueness, rotation, and every way a frame can be tampered with.

use std::collections::HashSet;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};

use super::*;

const SECRET: [u8; 32] = [0x5A; 32];
const H2D: Direction = Direction::HostToDevice;
const D2H: Direction = Direction::DeviceToHost;

fn secret() -> ChannelSecret {
    ChannelSecret::from_bytes(SECRET)
}

/// Small chunks, and threads on every message however small, so that the parallel paths run.
fn config(chunk_size: usize, threads: usize) -> ChannelConfig {
    ChannelConfig {
        chunk_size,
        rotate_after: 1 << 20,
        threads,
        min_bytes_per_thread: 0,
    }
}

fn ends(cfg: &ChannelConfig) -> (Sealer, Opener) {
    let sealer = Sealer::new(&secret(), 7, H2D, cfg.clone()).expect("sealer");
    let opener = Opener::new(&secret(), 7, H2D, cfg.clone()).expect("opener");
    (sealer, opener)
}

/// Deterministic pseudo-random bytes (xorshift64).
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

fn seal(sealer: &mut Sealer, plaintext: &[u8]) -> (Vec<u8>, MessageParams) {
    let mut frame = vec![0u8; frame_len(plaintext.len(), sealer.config().chunk_size)];
    let params = sealer.seal(plaintext, &mut frame).expect("seal");
    (frame, params)
}

/// Opens into a destination filled with a pattern; on failure checks the pattern is intact.
fn open(opener: &mut Opener, frame: &[u8], len: usize) -> Result<Vec<u8>, ChannelError> {
    let mut dst = vec![0xC3u8; len];
    let result = opener.open(frame, &mut dst);
    if result.is_err() {
        assert!(dst.iter().all(|&b| b == 0xC3), "destination written on failure");
    }
    result.map(|_| dst)
}

fn sizes(cs: usize) -> Vec<usize> {
    vec![
        0,
        1,
        15,
        16,
        17,
        cs - 1,
        cs,
        cs + 1,
        2 * cs,
        5 * cs + 7,
        13 * cs + 1,
    ]
}

#[test]
fn round_trip_all_sizes_threads_agree() {
    for cs in [16, 64, 65536] {
        let (mut one, mut opener) = ends(&config(cs, 1));
        let (mut three, _) = ends(&config(cs, 3));
        let mut sizes = sizes(cs);
        if cs == 65536 {
            sizes.truncate(9);
        }
        for (k, &len) in sizes.iter().enumerate() {
            let pt = bytes(len, k as u64);
            let (frame1, p1) = seal(&mut one, &pt);
            let (frame3, p3) = seal(&mut three, &pt);
            assert_eq!(p1, p3);
            assert_eq!(frame1, frame3, "threads change the frame (cs {cs}, len {len})");
            assert_eq!(frame1.len(), len + 16 * chunk_count(len, cs));
            assert_eq!(p1.frame_len(), frame1.len() as u64);
            assert_eq!(
                open(&mut opener, &frame1, len).expect("open"),
                pt,
                "cs {cs}, len {len}"
            );
        }
    }
}

#[test]
fn opener_threads_agree() {
    let pt = bytes(1000, 1);
    for threads in [1, 2, 3, 8] {
        let (mut sealer, _) = ends(&config(64, 1));
        let (_, mut opener) = ends(&config(64, threads));
        let (frame, _) = seal(&mut sealer, &pt);
        assert_eq!(open(&mut opener, &frame, pt.len()).expect("open"), pt);
    }
}

/// The spec's formulas, written out again here, and AES-256-GCM from the `aes-gcm` crate.
fn reference_frame(
    channel_id: u32,
    dir: u8,
    epoch: u32,
    seq: u64,
    counter: u64,
    cs: usize,
    pt: &[u8],
) -> Vec<u8> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"veil-cc-v1"), &SECRET);
    let mut key = [0u8; 32];
    let mut info = vec![dir];
    info.extend_from_slice(&epoch.to_be_bytes());
    hk.expand(&info, &mut key).expect("hkdf");
    let aead = Aes256Gcm::new(&key.into());
    let n = if pt.is_empty() { 1 } else { pt.len().div_ceil(cs) };
    let mut ct = Vec::new();
    let mut tags = Vec::new();
    for i in 0..n {
        let mut iv = channel_id.to_be_bytes().to_vec();
        iv.extend_from_slice(&(counter + i as u64).to_be_bytes());
        let mut aad = b"VCC1".to_vec();
        aad.extend_from_slice(&[dir, u8::from(i == n - 1), 0, 0]);
        aad.extend_from_slice(&epoch.to_be_bytes());
        aad.extend_from_slice(&seq.to_be_bytes());
        aad.extend_from_slice(&(i as u32).to_be_bytes());
        aad.extend_from_slice(&(pt.len() as u64).to_be_bytes());
        let mut chunk = pt[(i * cs).min(pt.len())..((i + 1) * cs).min(pt.len())].to_vec();
        let tag = aead
            .encrypt_in_place_detached(Nonce::from_slice(&iv), &aad, &mut chunk)
            .expect("aes-gcm");
        ct.extend_from_slice(&chunk);
        tags.extend_from_slice(&tag);
    }
    ct.extend_from_slice(&tags);
    ct
}

#[test]
fn frames_match_reference() {
    let cfg = ChannelConfig {
        rotate_after: 2,
        ..config(32, 3)
    };
    let mut sealer = Sealer::new(&secret(), 0xABCD_0123, D2H, cfg).expect("sealer");
    let (mut epoch, mut seq, mut counter) = (0u32, 0u64, 0u64);
    for (k, len) in [0, 5, 32, 33, 100, 64, 1, 31].into_iter().enumerate() {
        let pt = bytes(len, 100 + k as u64);
        if seq == 2 {
            (epoch, seq, counter) = (epoch + 1, 0, 0);
        }
        let (frame, params) = seal(&mut sealer, &pt);
        assert_eq!(
            (params.epoch, params.seq, params.first_counter),
            (epoch, seq, counter)
        );
        assert_eq!(
            frame,
            reference_frame(0xABCD_0123, 1, epoch, seq, counter, 32, &pt),
            "message {k}"
        );
        seq += 1;
        counter += chunk_count(len, 32) as u64;
    }
}

#[test]
fn reference_frames_open() {
    // And the other way round: the reference's frames open (and aes-gcm opens single chunks).
    let (_, mut opener) = ends(&config(16, 2));
    let pt = bytes(50, 9);
    let frame = reference_frame(7, 0, 0, 0, 0, 16, &pt);
    assert_eq!(open(&mut opener, &frame, 50).expect("open"), pt);
    let key = secret().key(H2D, 0).expect("key");
    let aead = Aes256Gcm::new(&(*key).into());
    let params = MessageParams {
        channel_id: 7,
        direction: H2D,
        epoch: 0,
        seq: 0,
        first_counter: 0,
        len: 50,
        chunk_size: 16,
    };
    let mut chunk = frame[48..50].to_vec();
    let tag = Tag::from_slice(&frame[50 + 48..50 + 64]);
    aead.decrypt_in_place_detached(Nonce::from_slice(&params.iv(3)), &params.aad(3), &mut chunk, tag)
        .expect("aes-gcm opens the last chunk");
    assert_eq!(chunk, pt[48..]);
}

#[test]
fn ivs_never_repeat_under_one_key() {
    let cfg = ChannelConfig {
        rotate_after: 5,
        ..config(16, 1)
    };
    let mut sealer = Sealer::new(&secret(), 3, H2D, cfg).expect("sealer");
    let mut seen = HashSet::new();
    let mut keys = HashSet::new();
    for k in 0..200 {
        let params = sealer.next_params(k % 70).expect("params");
        keys.insert((params.epoch, *sealer.key_for_device()));
        for i in 0..params.chunks() {
            assert!(
                seen.insert((*sealer.key_for_device(), params.iv(i))),
                "IV repeated under one key"
            );
        }
    }
    assert_eq!(keys.len(), 40, "one key per epoch");
    let distinct: HashSet<_> = keys.iter().map(|(_, k)| *k).collect();
    assert_eq!(distinct.len(), 40, "epochs have distinct keys");
}

#[test]
fn rotation_keeps_both_ends_in_step() {
    let cfg = ChannelConfig {
        rotate_after: 3,
        ..config(16, 2)
    };
    let (mut sealer, mut opener) = ends(&cfg);
    for k in 0..20u64 {
        let pt = bytes(10 * k as usize, k);
        let (frame, params) = seal(&mut sealer, &pt);
        assert_eq!(params.epoch, (k / 3) as u32);
        assert_eq!(params.seq, k % 3);
        assert_eq!(params.starts_epoch(), k % 3 == 0);
        assert_eq!(
            *sealer.key_for_device(),
            *secret().key(H2D, params.epoch).expect("key")
        );
        let opened = opener.open(&frame, &mut vec![0; pt.len()]).expect("open");
        assert_eq!(opened, params);
    }
}

#[test]
fn rotation_before_counter_passes_2_pow_32() {
    let cfg = config(16, 1);
    let (mut sealer, mut opener) = ends(&cfg);
    sealer.state.counter = (1 << 32) - 3;
    opener.state.counter = (1 << 32) - 3;
    // Three chunks fit exactly (counters 2^32-3 ..= 2^32-1).
    let (frame, params) = seal(&mut sealer, &[1; 48]);
    assert_eq!((params.epoch, params.first_counter), (0, (1 << 32) - 3));
    open(&mut opener, &frame, 48).expect("open");
    // One more chunk would pass 2^32: the next message starts epoch 1.
    let (frame, params) = seal(&mut sealer, &[2; 1]);
    assert_eq!((params.epoch, params.seq, params.first_counter), (1, 0, 0));
    assert!(params.starts_epoch());
    assert_eq!(open(&mut opener, &frame, 1).expect("open"), [2]);
}

#[test]
fn device_to_host_mirror() {
    // The GPU seals device-to-host; the host mirrors its state to launch the kernel and opens.
    // Here the "GPU" is the one-shot chunk primitive driven by the mirrored parameters.
    let cfg = ChannelConfig {
        rotate_after: 2,
        ..config(16, 2)
    };
    let mut mirror = Sealer::new(&secret(), 9, D2H, cfg.clone()).expect("mirror");
    let mut opener = Opener::new(&secret(), 9, D2H, cfg).expect("opener");
    let mut device_key = [0u8; 32];
    for k in 0..7 {
        let pt = bytes(k * 11, k as u64);
        let params = mirror.next_params(pt.len()).expect("params");
        if params.starts_epoch() {
            device_key = *mirror.key_for_device();
        }
        let n = params.chunks() as usize;
        let mut frame = vec![0u8; pt.len() + 16 * n];
        for i in 0..n {
            let r = (i * 16).min(pt.len())..((i + 1) * 16).min(pt.len());
            let iv = params.iv(i as u32);
            let aad = params.aad(i as u32);
            let tag = chunk::seal_chunk(&device_key, &iv, &aad, &pt[r.clone()], &mut frame[r]).expect("seal");
            frame[pt.len() + 16 * i..pt.len() + 16 * (i + 1)].copy_from_slice(&tag);
        }
        assert_eq!(
            open(&mut opener, &frame, pt.len()).expect("open"),
            pt,
            "message {k}"
        );
    }
}

#[test]
fn every_flipped_byte_and_bit_fails() {
    let cfg = config(16, 3);
    let pt = bytes(40, 5); // three chunks, the last one short
    let (frame, _) = seal(&mut ends(&cfg).0, &pt);
    assert_eq!(frame.len(), 40 + 48);
    for pos in 0..frame.len() {
        for flip in [0xFFu8, 1 << (pos % 8)] {
            let mut bad = frame.clone();
            bad[pos] ^= flip;
            let (_, mut opener) = ends(&cfg);
            let err = open(&mut opener, &bad, pt.len());
            assert!(
                matches!(err, Err(ChannelError::Authentication { .. })),
                "byte {pos}: {err:?}"
            );
            assert!(opener.is_poisoned());
            // The genuine frame is refused too: the direction is not trusted again.
            assert!(matches!(
                open(&mut opener, &frame, pt.len()),
                Err(ChannelError::Poisoned)
            ));
        }
    }
}

#[test]
fn failing_chunk_is_reported() {
    let cfg = config(16, 3);
    let (frame, _) = seal(&mut ends(&cfg).0, &bytes(100, 1)); // 7 chunks
    for chunk in 0..7u32 {
        let mut bad = frame.clone();
        bad[100 + 16 * chunk as usize] ^= 1;
        let err = open(&mut ends(&cfg).1, &bad, 100);
        assert!(
            matches!(err, Err(ChannelError::Authentication { chunk: c }) if c == chunk),
            "{err:?}"
        );
    }
}

#[test]
fn replay_reorder_drop_fail() {
    let cfg = config(16, 2);
    let a = bytes(30, 1);
    let b = bytes(30, 2);

    let (mut sealer, mut opener) = ends(&cfg);
    let (fa, _) = seal(&mut sealer, &a);
    assert_eq!(open(&mut opener, &fa, 30).expect("first"), a);
    let replay = open(&mut opener, &fa, 30);
    assert!(
        matches!(replay, Err(ChannelError::Authentication { .. })),
        "replay: {replay:?}"
    );

    let (mut sealer, mut opener) = ends(&cfg);
    let (_, _) = seal(&mut sealer, &a);
    let (fb, _) = seal(&mut sealer, &b);
    let reorder = open(&mut opener, &fb, 30);
    assert!(
        matches!(reorder, Err(ChannelError::Authentication { .. })),
        "reorder: {reorder:?}"
    );

    let (mut sealer, mut opener) = ends(&cfg);
    let (fa, _) = seal(&mut sealer, &a);
    let (_dropped, _) = seal(&mut sealer, &b);
    let (fc, _) = seal(&mut sealer, &a);
    open(&mut opener, &fa, 30).expect("first");
    let after_drop = open(&mut opener, &fc, 30);
    assert!(
        matches!(after_drop, Err(ChannelError::Authentication { .. })),
        "drop: {after_drop:?}"
    );
}

#[test]
fn spliced_chunk_fails() {
    let cfg = config(16, 1);
    let (mut sealer, mut opener) = ends(&cfg);
    let (fa, _) = seal(&mut sealer, &bytes(48, 1));
    let (fb, _) = seal(&mut sealer, &bytes(48, 2));
    open(&mut opener, &fa, 48).expect("first");
    // Chunk 1 of message b (ciphertext and tag) replaced by chunk 1 of message a.
    let mut spliced = fb.clone();
    spliced[16..32].copy_from_slice(&fa[16..32]);
    spliced[48 + 16..48 + 32].copy_from_slice(&fa[48 + 16..48 + 32]);
    let err = open(&mut opener, &spliced, 48);
    assert!(
        matches!(err, Err(ChannelError::Authentication { chunk: 1 })),
        "{err:?}"
    );

    // Chunks swapped within one message.
    let (mut sealer, mut opener) = ends(&cfg);
    let (f, _) = seal(&mut sealer, &bytes(48, 3));
    let mut swapped = f.clone();
    swapped[..16].copy_from_slice(&f[16..32]);
    swapped[16..32].copy_from_slice(&f[..16]);
    swapped[48..64].copy_from_slice(&f[64..80]);
    swapped[64..80].copy_from_slice(&f[48..64]);
    assert!(matches!(
        open(&mut opener, &swapped, 48),
        Err(ChannelError::Authentication { chunk: 0 })
    ));
}

#[test]
fn wrong_length_frames_fail() {
    let cfg = config(16, 2);
    let (mut sealer, _) = ends(&cfg);
    let (frame, _) = seal(&mut sealer, &bytes(40, 1));
    for bad in [
        &frame[..frame.len() - 1],
        &frame[..frame.len() - 16],
        &[frame.as_slice(), &[0]].concat(),
    ] {
        let (_, mut opener) = ends(&cfg);
        let err = open(&mut opener, bad, 40);
        assert!(
            matches!(err, Err(ChannelError::FrameLength { expected: 88, actual }) if actual == bad.len()),
            "{err:?}"
        );
        assert!(opener.is_poisoned());
    }
    // Cutting off the last chunk and its tag is a different message length: the AAD binds it.
    let (_, mut opener) = ends(&cfg);
    let cut = [&frame[..32], &frame[40..72]].concat();
    assert!(matches!(
        open(&mut opener, &cut, 32),
        Err(ChannelError::Authentication { .. })
    ));
}

#[test]
fn sealer_length_error_keeps_state() {
    let (mut sealer, mut opener) = ends(&config(16, 1));
    let err = sealer.seal(&[1; 20], &mut [0; 20 + 16]);
    assert!(matches!(
        err,
        Err(ChannelError::FrameLength {
            expected: 52,
            actual: 36
        })
    ));
    let (frame, params) = seal(&mut sealer, &[1; 20]);
    assert_eq!(params.seq, 0);
    open(&mut opener, &frame, 20).expect("the failed seal did not move the state");
}

#[test]
fn wrong_direction_or_channel_fails() {
    let cfg = config(16, 1);
    let pt = bytes(20, 1);
    let (frame, _) = seal(&mut ends(&cfg).0, &pt);
    let mut d2h = Opener::new(&secret(), 7, D2H, cfg.clone()).expect("opener");
    assert!(matches!(
        open(&mut d2h, &frame, 20),
        Err(ChannelError::Authentication { .. })
    ));
    let mut other_channel = Opener::new(&secret(), 8, H2D, cfg.clone()).expect("opener");
    assert!(matches!(
        open(&mut other_channel, &frame, 20),
        Err(ChannelError::Authentication { .. })
    ));
    let other_secret = ChannelSecret::from_bytes([1; 32]);
    let mut other = Opener::new(&other_secret, 7, H2D, cfg).expect("opener");
    assert!(matches!(
        open(&mut other, &frame, 20),
        Err(ChannelError::Authentication { .. })
    ));
}

#[test]
fn directions_seal_differently() {
    let cfg = config(16, 1);
    let pt = bytes(20, 1);
    let (a, _) = seal(
        &mut Sealer::new(&secret(), 7, H2D, cfg.clone()).expect("sealer"),
        &pt,
    );
    let (b, _) = seal(&mut Sealer::new(&secret(), 7, D2H, cfg).expect("sealer"), &pt);
    assert_ne!(a[..20], b[..20]);
}

#[test]
fn bad_config_is_refused() {
    let cfg = ChannelConfig {
        chunk_size: 100,
        ..ChannelConfig::default()
    };
    assert!(matches!(
        Sealer::new(&secret(), 0, H2D, cfg.clone()),
        Err(ChannelError::ChunkSize { chunk_size: 100 })
    ));
    assert!(matches!(
        Opener::new(&secret(), 0, H2D, cfg),
        Err(ChannelError::ChunkSize { chunk_size: 100 })
    ));
}

#[test]
fn cc_mode_parses_and_prints() {
    for mode in [CcMode::Off, CcMode::Hardware, CcMode::Sealed] {
        assert_eq!(mode.as_str().parse::<CcMode>().expect("parse"), mode);
        assert_eq!(mode.to_string(), mode.as_str());
    }
    let err = "seal".parse::<CcMode>().expect_err("unknown mode");
    assert!(err.to_string().contains("off, hardware or sealed"), "{err}");
    assert_eq!(CcMode::default(), CcMode::Off);
}
