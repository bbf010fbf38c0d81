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
//! length plus a fixed overhead, so long prefill rows and short decode rows balance). When there
//! are too few units to keep every thread busy (batch-1 decode: one unit per KV head), each
//! unit's context is also cut into parts whose partial softmax states are merged afterwards
//! ("split-K" / flash-decoding), using a fixed stack buffer.

#[cfg(target_arch = "x86_64")]
mod avx512;
mod generic;
mod schedule;

use crate::isa::{self, Isa};
use crate::pool::ThreadPool;

/// Largest supported head dimension (stack scratch is sized for it).
pub const MAX_HEAD_DIM: usize = 256;
/// Positions per softmax tile.
const TILE: usize = 16;

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

// SAFETY: `out` (and the split-K scratch) is written only at rows that belong to exactly one
// work item, and each item is processed by exactly one thread; the rest is shared read-only.
unsafe impl Sync for Ctx<'_> {}

/// Where a kernel leaves an unnormalised partial result (split-K) instead of the final output.
#[derive(Clone, Copy)]
struct Partial {
    /// `n_g × head_dim` accumulators (weighted V sums, not divided by the denominator).
    acc: *mut f32,
    /// `n_g` running maxima.
    m: *mut f32,
    /// `n_g` denominators (relative to `m`).
    l: *mut f32,
}

/// Everything one query row of one head-group chunk needs.
struct RowJob<'a> {
    /// `n_g × head_dim` query values (first head of the chunk).
    q: &'a [f32],
    /// Final output for the same heads (used when `partial` is `None`).
    out: *mut f32,
    /// Heads in this chunk.
    n_g: usize,
    block_table: &'a [u32],
    /// Offset of this KV head inside a block.
    head_off: usize,
    /// Context positions attended to (may be empty for a split-K part).
    pos: std::ops::Range<usize>,
    /// Split-K destination, if any.
    partial: Option<Partial>,
}

/// Causal paged attention for a batch of sequence chunks.
///
/// `q` and `out` are `total_tokens × n_heads × head_dim`; query token `t` of `seqs[s]` (row
/// `q_offset + t`, absolute position `start_pos + t`) attends to positions `0..=start_pos + t`
/// of its sequence, whose K/V must already be in the cache. Query head `h` uses KV head
/// `h / (n_heads / n_kv_heads)`. Scores are `scale · q·k`. Rows of `out` not covered by any
/// sequence are left untouched. Allocates nothing (split-K partials use a 64 KiB stack buffer).
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
    schedule::run(&ctx, pool, seqs);
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

/// Physical element offsets of the K/V rows for positions `pos..pos + n` of a sequence
/// (`1 <= n <= offs.len()`); the entries past `n` repeat the first one (a valid row), so
/// kernels may read a full tile.
#[inline(always)]
fn tile_offsets(ctx: &Ctx<'_>, job: &RowJob<'_>, pos: usize, n: usize, offs: &mut [usize]) {
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

/// Query heads one kernel call can take for this ISA and head size.
fn max_group(isa: Isa, hd: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512
        && let Some(g) = avx512::max_group(hd)
    {
        return g;
    }
    let _ = (isa, hd);
    generic::MAX_GROUP
}

/// Dispatches one row job to the best kernel.
///
/// # Safety
/// `job` must satisfy the invariants checked by `validate`, have `n_g <= max_group(..)`, and
/// own its output (final rows or partial slot).
unsafe fn run_job(ctx: &Ctx<'_>, job: &RowJob<'_>) {
    #[cfg(target_arch = "x86_64")]
    {
        if ctx.isa == Isa::Avx512
            && let Some(f) = avx512::kernel(ctx.kv.head_dim, job.n_g)
        {
            // SAFETY: AVX-512F + FMA are available (selected ISA); the kernel matches the head
            // size and group; the rest is the caller's contract.
            return unsafe { f(ctx, job) };
        }
        match ctx.isa {
            // SAFETY: the selected ISA is available; caller contract forwarded.
            Isa::Avx512 => return unsafe { generic::attend_avx512(ctx, job) },
            // SAFETY: the selected ISA is available; caller contract forwarded.
            Isa::Avx2 => return unsafe { generic::attend_avx2(ctx, job) },
            Isa::Scalar => {}
        }
    }
    // SAFETY: caller contract forwarded.
    unsafe { generic::attend(ctx, job) }
}

#[cfg(test)]
mod tests;
