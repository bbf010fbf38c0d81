//! Paged causal attention over an f32 KV cache (prefill chunks and decode tokens together).
//!
//! For every query token the kernel makes one pass over its context in tiles of 16 positions:
//! scores for the tile (all query heads of the GQA group reuse each K row from L1), an online
//! (streaming) softmax update of the running max / denominator, then the V rows weighted into
//! the accumulators. On AVX-512 the tile's 16 dot products are reduced together with a shuffle
//! tree (no per-position horizontal sum) and the accumulators stay in `zmm` registers.
//!
//! Work is split across threads in units of (sequence, KV head, query token), ordered so that
//! each thread gets a contiguous run of units of about equal cost (a unit costs its context
//! length plus a fixed overhead, so long prefill rows and short decode rows balance).

use crate::isa::{self, Isa};
use crate::math::exp_approx;
use crate::pool::ThreadPool;

/// Largest supported head dimension (stack scratch is sized for it).
pub const MAX_HEAD_DIM: usize = 256;
/// Positions per softmax tile.
const TILE: usize = 16;
/// Query heads handled together by the portable kernel.
const GENERIC_GROUP: usize = 8;
/// Cost of one query beyond its context rows (setup, output), in context-row units.
const QUERY_OVERHEAD: u64 = 16;

/// One layer of a paged KV cache. `k` and `v` each hold blocks laid out
/// `[block][kv_head][slot in block][head_dim]`.
#[derive(Clone, Copy, Debug)]
pub struct KvLayerView<'a> {
    /// Keys.
    pub k: &'a [f32],
    /// Values (same layout as `k`).
    pub v: &'a [f32],
    /// Positions per block.
    pub block_size: usize,
    /// KV heads.
    pub n_kv_heads: usize,
    /// Dimension of each head (at most [`MAX_HEAD_DIM`]).
    pub head_dim: usize,
}

/// One sequence's chunk of query tokens in a batched attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnSeq<'a> {
    /// First row of this sequence in `q` / `out`.
    pub q_offset: usize,
    /// Query tokens (rows) of this sequence.
    pub n_tokens: usize,
    /// Absolute position of the first query token.
    pub start_pos: usize,
    /// Physical block of each logical block: position `p` lives in block
    /// `block_table[p / block_size]`, slot `p % block_size`.
    pub block_table: &'a [u32],
}

/// Per-call constants shared by all threads.
struct Ctx<'a> {
    q: &'a [f32],
    out: *mut f32,
    kv: &'a KvLayerView<'a>,
    n_heads: usize,
    /// Query heads per KV head.
    group: usize,
    scale: f32,
    /// Elements per physical block (all KV heads).
    block_elems: usize,
    isa: Isa,
}

// SAFETY: `out` is written only at (token, head) rows that belong to exactly one work unit, and
// each unit is processed by exactly one thread; everything else is shared read-only.
unsafe impl Sync for Ctx<'_> {}

/// Everything one query row of one head group needs.
struct RowJob<'a> {
    /// `n_g × head_dim` query values (first head of the group chunk).
    q: &'a [f32],
    /// Output for the same heads.
    out: *mut f32,
    /// Heads in this chunk.
    n_g: usize,
    block_table: &'a [u32],
    /// Offset of this KV head inside a block.
    head_off: usize,
    /// Context positions to attend to (`0..n_ctx`).
    n_ctx: usize,
}

/// Causal paged attention for a batch of sequence chunks.
///
/// `q` and `out` are `total_tokens × n_heads × head_dim`; query token `t` of `seqs[s]` (row
/// `q_offset + t`, absolute position `start_pos + t`) attends to positions `0..=start_pos + t`
/// of its sequence, whose K/V must already be in the cache. Query head `h` uses KV head
/// `h / (n_heads / n_kv_heads)`. Scores are `scale · q·k`. Rows of `out` not covered by any
/// sequence are left untouched. Allocates nothing.
///
/// # Panics
/// If the shapes are inconsistent: `head_dim` is 0 or above [`MAX_HEAD_DIM`], `n_heads` is not
/// a multiple of `n_kv_heads`, a sequence's rows or context exceed `q` / `out` / its block
/// table, a block id is outside the cache, or sequences are not in increasing, disjoint row
/// order.
pub fn paged_attention(
    pool: &ThreadPool,
    q: &[f32],
    n_heads: usize,
    seqs: &[AttnSeq<'_>],
    kv: &KvLayerView<'_>,
    scale: f32,
    out: &mut [f32],
) {
    paged_attention_with_isa(isa::selected(), pool, q, n_heads, seqs, kv, scale, out);
}

/// [`paged_attention`] with an explicit ISA (must be available on this CPU).
#[allow(clippy::too_many_arguments)]
pub(crate) fn paged_attention_with_isa(
    isa: Isa,
    pool: &ThreadPool,
    q: &[f32],
    n_heads: usize,
    seqs: &[AttnSeq<'_>],
    kv: &KvLayerView<'_>,
    scale: f32,
    out: &mut [f32],
) {
    assert!(
        isa.is_available(),
        "paged_attention: ISA {} not available",
        isa.name()
    );
    let ctx = validate(isa, q, n_heads, seqs, kv, scale, out);
    let total: u64 = seqs.iter().map(seq_cost).sum::<u64>() * kv.n_kv_heads as u64;
    if total == 0 {
        return;
    }
    pool.run(|ti, nt| {
        let lo = (u128::from(total) * ti as u128 / nt as u128) as u64;
        let hi = (u128::from(total) * (ti as u128 + 1) / nt as u128) as u64;
        run_range(&ctx, seqs, lo, hi);
    });
}

/// Checks every shape and index the kernels rely on; returns the call context.
fn validate<'a>(
    isa: Isa,
    q: &'a [f32],
    n_heads: usize,
    seqs: &[AttnSeq<'_>],
    kv: &'a KvLayerView<'a>,
    scale: f32,
    out: &mut [f32],
) -> Ctx<'a> {
    let hd = kv.head_dim;
    assert!(
        hd > 0 && hd <= MAX_HEAD_DIM,
        "paged_attention: head_dim {hd} not in 1..={MAX_HEAD_DIM}"
    );
    assert!(kv.block_size > 0, "paged_attention: block_size is 0");
    assert!(
        kv.n_kv_heads > 0 && n_heads > 0 && n_heads.is_multiple_of(kv.n_kv_heads),
        "paged_attention: {n_heads} heads not a multiple of {} KV heads",
        kv.n_kv_heads
    );
    let block_elems = kv.n_kv_heads * kv.block_size * hd;
    let n_blocks = kv.k.len().min(kv.v.len()) / block_elems;
    let row = n_heads * hd;
    let mut next_row = 0;
    for s in seqs.iter().filter(|s| s.n_tokens > 0) {
        assert!(
            s.q_offset >= next_row,
            "paged_attention: sequences overlap or are out of order"
        );
        next_row = s.q_offset + s.n_tokens;
        assert!(
            next_row * row <= q.len().min(out.len()),
            "paged_attention: sequence rows exceed q/out"
        );
        let used = (s.start_pos + s.n_tokens).div_ceil(kv.block_size);
        assert!(
            used <= s.block_table.len(),
            "paged_attention: block table too short"
        );
        for &b in &s.block_table[..used] {
            assert!(
                (b as usize) < n_blocks,
                "paged_attention: block {b} outside the cache ({n_blocks} blocks)"
            );
        }
    }
    Ctx {
        q,
        out: out.as_mut_ptr(),
        kv,
        n_heads,
        group: n_heads / kv.n_kv_heads,
        scale,
        block_elems,
        isa,
    }
}

/// Cost of one KV head of a sequence: `Σ_t (context of t + overhead)`.
fn seq_cost(s: &AttnSeq<'_>) -> u64 {
    let (n, p) = (s.n_tokens as u64, s.start_pos as u64);
    n * (p + 1 + QUERY_OVERHEAD) + n * n.saturating_sub(1) / 2
}

/// Processes the units whose cumulative cost start lies in `[lo, hi)`.
fn run_range(ctx: &Ctx<'_>, seqs: &[AttnSeq<'_>], lo: u64, hi: u64) {
    let mut c = 0u64;
    for s in seqs {
        let gc = seq_cost(s);
        for kvh in 0..ctx.kv.n_kv_heads {
            if c >= hi {
                return;
            }
            if c + gc <= lo {
                c += gc;
                continue;
            }
            for t in 0..s.n_tokens {
                if c >= hi {
                    return;
                }
                if c >= lo {
                    attend_row(ctx, s, kvh, t);
                }
                c += (s.start_pos + t + 1) as u64 + QUERY_OVERHEAD;
            }
        }
    }
}

/// Attention for query token `t` of `s`, all query heads of KV head `kvh`.
fn attend_row(ctx: &Ctx<'_>, s: &AttnSeq<'_>, kvh: usize, t: usize) {
    let hd = ctx.kv.head_dim;
    let row = (s.q_offset + t) * ctx.n_heads * hd;
    let mut h = kvh * ctx.group;
    let h_end = h + ctx.group;
    while h < h_end {
        let n_g = (h_end - h).min(max_group(ctx.isa, hd));
        let off = row + h * hd;
        let job = RowJob {
            q: &ctx.q[off..off + n_g * hd],
            // SAFETY: `off + n_g * hd <= out.len()` (validated like `q`); the pointer is only
            // used for these rows, which belong to this unit alone.
            out: unsafe { ctx.out.add(off) },
            n_g,
            block_table: s.block_table,
            head_off: kvh * ctx.kv.block_size * hd,
            n_ctx: s.start_pos + t + 1,
        };
        // SAFETY: shapes validated in `validate`; `out` rows exclusive to this call.
        unsafe { run_job(ctx, &job) };
        h += n_g;
    }
}

/// Query heads one kernel call can take for this ISA and head size.
fn max_group(isa: Isa, hd: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        match hd {
            32 | 64 => return 4,
            128 => return 2,
            _ => {}
        }
    }
    let _ = (isa, hd);
    GENERIC_GROUP
}

/// Dispatches one row job to the best kernel.
///
/// # Safety
/// `job` must satisfy the invariants checked by `validate` and own its output rows.
unsafe fn run_job(ctx: &Ctx<'_>, job: &RowJob<'_>) {
    #[cfg(target_arch = "x86_64")]
    {
        use avx512::attend;
        let f: Option<avx512::AttendFn> = match (ctx.isa, ctx.kv.head_dim, job.n_g) {
            (Isa::Avx512, 32, 1) => Some(attend::<1, 2>),
            (Isa::Avx512, 32, 2) => Some(attend::<2, 2>),
            (Isa::Avx512, 32, 3) => Some(attend::<3, 2>),
            (Isa::Avx512, 32, 4) => Some(attend::<4, 2>),
            (Isa::Avx512, 64, 1) => Some(attend::<1, 4>),
            (Isa::Avx512, 64, 2) => Some(attend::<2, 4>),
            (Isa::Avx512, 64, 3) => Some(attend::<3, 4>),
            (Isa::Avx512, 64, 4) => Some(attend::<4, 4>),
            (Isa::Avx512, 128, 1) => Some(attend::<1, 8>),
            (Isa::Avx512, 128, 2) => Some(attend::<2, 8>),
            _ => None,
        };
        if let Some(f) = f {
            // SAFETY: AVX-512F + FMA are available (selected ISA); the rest is the caller's
            // contract, and the kernel matches the head size and group.
            unsafe { f(ctx, job) };
            return;
        }
        match ctx.isa {
            // SAFETY: the selected ISA is available; caller contract forwarded.
            Isa::Avx512 => return unsafe { generic_avx512(ctx, job) },
            // SAFETY: the selected ISA is available; caller contract forwarded.
            Isa::Avx2 => return unsafe { generic_avx2(ctx, job) },
            Isa::Scalar => {}
        }
    }
    // SAFETY: caller contract forwarded.
    unsafe { attend_generic(ctx, job) }
}

/// [`attend_generic`] compiled for AVX-512.
///
/// # Safety
/// As [`attend_generic`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn generic_avx512(ctx: &Ctx<'_>, job: &RowJob<'_>) {
    // SAFETY: forwarded.
    unsafe { attend_generic(ctx, job) }
}

/// [`attend_generic`] compiled for AVX2.
///
/// # Safety
/// As [`attend_generic`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn generic_avx2(ctx: &Ctx<'_>, job: &RowJob<'_>) {
    // SAFETY: forwarded.
    unsafe { attend_generic(ctx, job) }
}

/// Physical element offsets of the K/V rows for positions `pos..pos + n` of a sequence.
#[inline(always)]
fn tile_offsets(ctx: &Ctx<'_>, job: &RowJob<'_>, pos: usize, n: usize, offs: &mut [usize; TILE]) {
    let (bs, hd) = (ctx.kv.block_size, ctx.kv.head_dim);
    let (mut blk, mut slot) = (pos / bs, pos % bs);
    for o in offs.iter_mut().take(n) {
        *o = job.block_table[blk] as usize * ctx.block_elems + job.head_off + slot * hd;
        slot += 1;
        if slot == bs {
            slot = 0;
            blk += 1;
        }
    }
    let first = offs[0];
    for o in offs.iter_mut().skip(n) {
        *o = first;
    }
}

/// Portable kernel: any head size, up to [`GENERIC_GROUP`] heads.
///
/// # Safety
/// `job.out` must be valid for `n_g × head_dim` writes owned by this call; the block table must
/// have been validated.
#[inline(always)]
unsafe fn attend_generic(ctx: &Ctx<'_>, job: &RowJob<'_>) {
    let hd = ctx.kv.head_dim;
    let n_g = job.n_g;
    let mut q = [0.0f32; GENERIC_GROUP * MAX_HEAD_DIM];
    let mut acc = [0.0f32; GENERIC_GROUP * MAX_HEAD_DIM];
    for (d, &s) in q.iter_mut().zip(job.q) {
        *d = s * ctx.scale;
    }
    let mut m = [f32::NEG_INFINITY; GENERIC_GROUP];
    let mut l = [0.0f32; GENERIC_GROUP];
    let mut offs = [0usize; TILE];
    let mut p = [[0.0f32; TILE]; GENERIC_GROUP];
    let mut pos = 0;
    while pos < job.n_ctx {
        let tn = (job.n_ctx - pos).min(TILE);
        tile_offsets(ctx, job, pos, tn, &mut offs);
        for g in 0..n_g {
            let qg = &q[g * hd..(g + 1) * hd];
            let pg = &mut p[g];
            for (s, &o) in pg.iter_mut().zip(&offs).take(tn) {
                *s = dot(qg, &ctx.kv.k[o..o + hd]);
            }
            let tmax = pg[..tn].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let m_new = m[g].max(tmax);
            let corr = exp_approx(m[g] - m_new);
            let mut sum = 0.0;
            for s in pg[..tn].iter_mut() {
                *s = exp_approx(*s - m_new);
                sum += *s;
            }
            l[g] = l[g] * corr + sum;
            m[g] = m_new;
            if corr != 1.0 {
                for a in &mut acc[g * hd..(g + 1) * hd] {
                    *a *= corr;
                }
            }
        }
        for (i, &o) in offs.iter().enumerate().take(tn) {
            let vr = &ctx.kv.v[o..o + hd];
            for (g, pg) in p.iter().enumerate().take(n_g) {
                let w = pg[i];
                for (a, &v) in acc[g * hd..(g + 1) * hd].iter_mut().zip(vr) {
                    *a += w * v;
                }
            }
        }
        pos += tn;
    }
    // SAFETY: `out` is valid for `n_g × hd` exclusive writes (caller contract).
    let out = unsafe { std::slice::from_raw_parts_mut(job.out, n_g * hd) };
    for g in 0..n_g {
        let inv = 1.0 / l[g];
        for (o, &a) in out[g * hd..(g + 1) * hd].iter_mut().zip(&acc[g * hd..]) {
            *o = a * inv;
        }
    }
}

/// Dot product with 8 partial sums (vectorisable).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ta.iter().zip(tb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests;
