//! Veil's CUDA kernels as PTX, for the CUDA backend to load through the driver.
//!
//! The sources are CUDA C in `kernels/cuda/` (contracts and launch configurations in
//! `kernels/cuda/ABI.md`); `scripts/gen_ptx.py` compiles them with NVRTC into the committed
//! `kernels/ptx/veil.sm_80.ptx` and `kernels/ptx/veil.sm_90a.ptx`, embedded here. A machine
//! with only the NVIDIA driver runs them: the driver JIT-compiles the PTX for its GPU (the
//! sm_80 module runs on every GPU of compute capability 8.0 or newer; the sm_90a one only on
//! 9.0). `tests/ptx.rs` fails when the PTX is stale or a kernel no longer compiles.
//!
//! Nothing here needs a GPU: the module is plain data plus CPU mirrors of the parts of the
//! kernels' contracts a host needs to reproduce ([`sample_uniform`], [`prefill_shared_bytes`],
//! the sealed transfer channel's [`GcmMsg`] with its IVs and associated data).

/// PTX of every kernel for compute capability 8.0 and newer (`.target sm_80`).
pub const PTX_SM80: &str = include_str!("../ptx/veil.sm_80.ptx");

/// PTX of every kernel for Hopper, compute capability 9.0 exactly (`.target sm_90a`).
pub const PTX_SM90A: &str = include_str!("../ptx/veil.sm_90a.ptx");

/// The entry points of both modules (the ABI's kernels, in `ABI.md` order).
pub const KERNELS: &[&str] = &[
    "veil_embed",
    "veil_add_rmsnorm",
    "veil_rmsnorm_rows",
    "veil_rope_kv",
    "veil_attention_decode",
    "veil_attention_reduce",
    "veil_attention_prefill",
    "veil_silu_mul",
    "veil_sample",
    "veil_gcm_verify",
    "veil_gcm_decrypt",
    "veil_gcm_seal",
];

/// Size in bytes of `VeilSampleParams` (13 fields of 4 bytes), the layout of [`SampleParams`].
pub const SAMPLE_PARAMS_SIZE: usize = 52;

/// Largest head dimension the attention kernels support (it must also be a multiple of 8).
pub const MAX_HEAD_DIM: usize = 256;

/// The most query tokens one `veil_attention_prefill` tile may hold.
pub const PREFILL_TILE_QUERIES: usize = 64;

/// Dynamic shared memory, in bytes, that `veil_attention_prefill` must be launched with:
/// `256 * head_dim + 8704` (41 472 for head_dim 128; above 48 KiB, i.e. head_dim > 158, the host
/// must first raise `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`). The kernel traps when
/// launched with less.
pub const fn prefill_shared_bytes(head_dim: usize) -> usize {
    256 * head_dim + 8704
}

/// Per-row parameters of `veil_sample`, laid out exactly as the kernel's `VeilSampleParams`.
///
/// [`Default`] is the neutral setting: greedy, every filter and penalty off, no log-probabilities.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SampleParams {
    /// Softmax temperature; 0 picks the argmax (first index on ties).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (ties: lower ids first); 0 or less = off.
    pub top_k: i32,
    /// Keep the shortest most-likely-first prefix of the top-k set whose probability (renormalised
    /// over that set) reaches `top_p`; 1 = off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 = off.
    pub min_p: f32,
    /// Hugging Face repetition penalty on every listed token: `l > 0 ? l / rp : l * rp`; 1 = off.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of each listed token with a count above 0.
    pub presence_penalty: f32,
    /// Subtracted per occurrence (times the count) from each listed token's logit.
    pub frequency_penalty: f32,
    /// Low word of the Philox key (the request's seed).
    pub seed_lo: u32,
    /// High word of the Philox key.
    pub seed_hi: u32,
    /// First word of the Philox counter: tokens drawn before by this request.
    pub counter: u32,
    /// Log-probabilities wanted: the chosen token's plus this many most likely tokens (clamped
    /// to the kernel's `max_top`); negative = none.
    pub n_top_logprobs: i32,
    /// Index of this row's first entry in `penalty_ids` / `penalty_counts`.
    pub penalty_offset: i32,
    /// Entries of this row in `penalty_ids` / `penalty_counts` (each token id at most once).
    pub n_penalty: i32,
}

impl Default for SampleParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed_lo: 0,
            seed_hi: 0,
            counter: 0,
            n_top_logprobs: -1,
            penalty_offset: 0,
            n_penalty: 0,
        }
    }
}

/// Size in bytes of `VeilGcmMsg` (4 × u32 then 3 × u64, 8-byte aligned), the layout of [`GcmMsg`].
pub const GCM_MSG_SIZE: usize = 40;

/// Threads per block of the `veil_gcm_*` kernels (they accept any multiple of 32 up to this).
pub const GCM_THREADS: u32 = 256;

/// Largest chunk size of the sealed channel (docs/cc-transfer.md): 16 MiB.
pub const GCM_MAX_CHUNK: u32 = 16 << 20;

/// One message of the sealed CC transfer channel (`docs/cc-transfer.md`), the by-value argument
/// `VeilGcmMsg` of `veil_gcm_verify`, `veil_gcm_decrypt` and `veil_gcm_seal`, laid out exactly
/// as the kernels read it. [`GcmMsg::iv`] and [`GcmMsg::aad`] are the host's mirror of what the
/// kernels derive from it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GcmMsg {
    /// Names the channel: IV bytes 0..4 (big-endian).
    pub channel_id: u32,
    /// Direction byte of the AAD: 0 host-to-device, 1 device-to-host (only the low byte is used).
    pub dir: u32,
    /// Key epoch of the direction (AAD, big-endian).
    pub epoch: u32,
    /// Bytes per chunk: a multiple of 16 from 16 to [`GCM_MAX_CHUNK`] (the kernels trap otherwise).
    pub chunk_size: u32,
    /// Messages sent before this one in the epoch (AAD, big-endian).
    pub seq: u64,
    /// IV counter of the message's first chunk (chunk `i` uses `first_counter + i`).
    pub first_counter: u64,
    /// Plaintext bytes of the message; the frame holds `len + 16 * n_chunks()` bytes.
    pub len: u64,
}

impl GcmMsg {
    /// Chunks of the message: `max(1, ceil(len / chunk_size))` (0 if `chunk_size` is 0).
    pub fn n_chunks(&self) -> u64 {
        if self.chunk_size == 0 {
            return 0;
        }
        self.len.div_ceil(u64::from(self.chunk_size)).max(1)
    }

    /// Bytes of the frame: the ciphertext, then one 16-byte tag per chunk.
    pub fn frame_len(&self) -> u64 {
        self.len + 16 * self.n_chunks()
    }

    /// IV of chunk `i`: `channel_id (BE32) || first_counter + i (BE64)`.
    pub fn iv(&self, i: u64) -> [u8; 12] {
        let mut iv = [0u8; 12];
        iv[..4].copy_from_slice(&self.channel_id.to_be_bytes());
        iv[4..].copy_from_slice(&self.first_counter.wrapping_add(i).to_be_bytes());
        iv
    }

    /// Associated data of chunk `i`: `"VCC1" || dir || last || 0x0000 || epoch (BE32) ||
    /// seq (BE64) || i (BE32) || len (BE64)`, `last` = 1 for the message's final chunk.
    pub fn aad(&self, i: u64) -> [u8; 32] {
        let mut a = [0u8; 32];
        a[..4].copy_from_slice(b"VCC1");
        a[4] = self.dir as u8;
        a[5] = u8::from(i + 1 == self.n_chunks());
        a[8..12].copy_from_slice(&self.epoch.to_be_bytes());
        a[12..20].copy_from_slice(&self.seq.to_be_bytes());
        // The chunk index is 32 bits on the wire; a message never has 2^32 chunks (the channel
        // rotates its key first).
        a[20..24].copy_from_slice(&(i as u32).to_be_bytes());
        a[24..32].copy_from_slice(&self.len.to_be_bytes());
        a
    }
}

/// Philox4x32-10 (Salmon et al. 2011, Random123's `philox4x32`): the block of 4 random words for
/// `counter` under `key`. The CPU mirror of the kernels' `philox4x32_10`.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    const M0: u32 = 0xD251_1F53;
    const M1: u32 = 0xCD9E_8D57;
    const W0: u32 = 0x9E37_79B9;
    const W1: u32 = 0xBB67_AE85;
    let [mut c0, mut c1, mut c2, mut c3] = counter;
    let [mut k0, mut k1] = key;
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        let p0 = u64::from(M0) * u64::from(c0);
        let p1 = u64::from(M1) * u64::from(c2);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);
    }
    [c0, c1, c2, c3]
}

/// The uniform in `[0, 1)` that `veil_sample` draws for a row: `x = philox4x32_10([counter, 0, 0,
/// 0], [seed_lo, seed_hi])`, `u = ((x[0] << 32 | x[1]) >> 11) · 2^-53`. The row index does not
/// enter, so a request's draws do not depend on its place in the batch.
pub fn sample_uniform(seed_lo: u32, seed_hi: u32, counter: u32) -> f64 {
    let x = philox4x32_10([counter, 0, 0, 0], [seed_lo, seed_hi]);
    let bits = ((u64::from(x[0]) << 32) | u64::from(x[1])) >> 11;
    bits as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Names of the `.entry` directives of a PTX module.
    fn entries(ptx: &str) -> BTreeSet<&str> {
        ptx.lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .filter_map(|l| l.split(".entry").nth(1))
            .filter_map(|rest| rest.split('(').next())
            .map(str::trim)
            .collect()
    }

    #[test]
    fn every_kernel_is_an_entry_of_both_modules() {
        let want: BTreeSet<&str> = KERNELS.iter().copied().collect();
        assert_eq!(want.len(), KERNELS.len(), "duplicate kernel names");
        for (name, ptx) in [("sm_80", PTX_SM80), ("sm_90a", PTX_SM90A)] {
            assert_eq!(entries(ptx), want, "{name}: .entry set differs from KERNELS");
            assert!(
                ptx.lines().any(|l| l.trim() == format!(".target {name}")),
                "{name}: wrong .target"
            );
        }
    }

    #[test]
    fn sample_params_match_the_abi_layout() {
        use std::mem::{align_of, offset_of, size_of};
        assert_eq!(size_of::<SampleParams>(), SAMPLE_PARAMS_SIZE);
        assert_eq!(align_of::<SampleParams>(), 4);
        let offsets = [
            offset_of!(SampleParams, temperature),
            offset_of!(SampleParams, top_k),
            offset_of!(SampleParams, top_p),
            offset_of!(SampleParams, min_p),
            offset_of!(SampleParams, repetition_penalty),
            offset_of!(SampleParams, presence_penalty),
            offset_of!(SampleParams, frequency_penalty),
            offset_of!(SampleParams, seed_lo),
            offset_of!(SampleParams, seed_hi),
            offset_of!(SampleParams, counter),
            offset_of!(SampleParams, n_top_logprobs),
            offset_of!(SampleParams, penalty_offset),
            offset_of!(SampleParams, n_penalty),
        ];
        assert_eq!(offsets.to_vec(), (0..13).map(|i| 4 * i).collect::<Vec<_>>());
        let d = SampleParams::default();
        assert_eq!((d.temperature, d.top_p, d.repetition_penalty), (0.0, 1.0, 1.0));
        assert_eq!(d.n_top_logprobs, -1);
        assert_eq!(bytemuck::bytes_of(&d).len(), SAMPLE_PARAMS_SIZE);
    }

    #[test]
    fn gcm_msg_matches_the_abi_layout() {
        use std::mem::{align_of, offset_of, size_of};
        assert_eq!(size_of::<GcmMsg>(), GCM_MSG_SIZE);
        assert_eq!(align_of::<GcmMsg>(), 8);
        let offsets = [
            offset_of!(GcmMsg, channel_id),
            offset_of!(GcmMsg, dir),
            offset_of!(GcmMsg, epoch),
            offset_of!(GcmMsg, chunk_size),
            offset_of!(GcmMsg, seq),
            offset_of!(GcmMsg, first_counter),
            offset_of!(GcmMsg, len),
        ];
        assert_eq!(offsets, [0, 4, 8, 12, 16, 24, 32]);
    }

    #[test]
    fn gcm_msg_iv_and_aad_follow_the_spec() {
        let m = GcmMsg {
            channel_id: 0x0102_0304,
            dir: 1,
            epoch: 0xa0b0_c0d0,
            chunk_size: 64,
            seq: 0x1122_3344_5566_7788,
            first_counter: 0xffff_fffe,
            len: 130,
        };
        assert_eq!(m.n_chunks(), 3);
        assert_eq!(m.frame_len(), 130 + 48);
        assert_eq!(hex(&m.iv(2)), "010203040000000100000000");
        assert_eq!(
            hex(&m.aad(2)),
            "5643433101010000a0b0c0d0112233445566778800000002\
             0000000000000082"
        );
        assert_eq!(m.aad(1)[5], 0, "only the final chunk is marked last");
        let empty = GcmMsg { len: 0, ..m };
        assert_eq!((empty.n_chunks(), empty.frame_len()), (1, 16));
        assert_eq!(empty.aad(0)[5], 1);
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn philox_known_answers() {
        // Random123 kat_vectors for philox4x32_10.
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
        // Same value as the CUDA source's veil_uniform(1, 2, 3) (kernels/cuda/emu test).
        assert_eq!(sample_uniform(1, 2, 3), 0.475_415_628_449_299_97);
        let mean = (0..10_000).map(|c| sample_uniform(1, 0, c)).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }

    #[test]
    fn prefill_shared_memory_fits_48k_for_head_dim_128() {
        assert_eq!(prefill_shared_bytes(128), 41_472);
        assert!(prefill_shared_bytes(128) <= 48 * 1024);
        assert_eq!(prefill_shared_bytes(256), 74_240);
    }
}
