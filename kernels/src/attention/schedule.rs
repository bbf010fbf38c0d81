//! Cutting an attention call into work items, spreading them over threads, and merging the
//! split-K partial results.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::{AttnSeq, Ctx, Partial, RowJob, TILE, max_group, run_job};
use crate::math::exp_approx;
use crate::pool::{ThreadPool, split_range};

/// Cost of one work item beyond its context rows (setup, output), in context-row units.
const QUERY_OVERHEAD: u64 = 16;
/// Floats of stack scratch for split-K partial results (64 KiB).
const SPLIT_SCRATCH: usize = 16 * 1024;
/// Longest context must reach this many positions per thread before split-K pays off.
const MIN_PART: usize = 128;

/// How the units are cut: `parts` context parts per unit, partial results in `scratch`.
#[derive(Clone, Copy)]
struct Plan {
    parts: usize,
    /// Floats per (unit, part) slot: `group × head_dim` accumulators, `group` maxima and
    /// `group` denominators.
    slot: usize,
    /// `units × parts` slots (null when `parts == 1`).
    scratch: *mut f32,
}

// SAFETY: each scratch slot is written by the one thread that processes its item, and read
// only after `ThreadPool::run` has returned.
unsafe impl Sync for Plan {}

/// Runs the whole call: plans split-K when there are too few units for the threads, spreads the
/// items over the pool, then merges partial results if any.
pub(super) fn run(ctx: &Ctx<'_>, pool: &ThreadPool, seqs: &[AttnSeq<'_>]) {
    let nt = pool.n_threads();
    let n_units = seqs.iter().map(|s| s.n_tokens).sum::<usize>() * ctx.kv.n_kv_heads;
    if n_units == 0 {
        return;
    }
    let max_ctx = seqs
        .iter()
        .filter(|s| s.n_tokens > 0)
        .map(|s| s.start_pos + s.n_tokens)
        .max()
        .unwrap_or(0);
    let slot = ctx.group * (ctx.kv.head_dim + 2);
    let split =
        nt > 1 && n_units < 2 * nt && max_ctx >= nt * MIN_PART && n_units * nt * slot <= SPLIT_SCRATCH;
    if !split {
        run_items(
            ctx,
            pool,
            seqs,
            Plan {
                parts: 1,
                slot,
                scratch: std::ptr::null_mut(),
            },
        );
        return;
    }
    let mut scratch = [MaybeUninit::<f32>::uninit(); SPLIT_SCRATCH];
    let plan = Plan {
        parts: nt,
        slot,
        scratch: scratch.as_mut_ptr().cast(),
    };
    run_items(ctx, pool, seqs, plan);
    // SAFETY: `run_items` processed every item, so every slot of every unit was written.
    unsafe { merge(ctx, seqs, plan) };
}

/// Cost of one KV head of a sequence: `Σ_t (context of t + parts · overhead)`.
fn seq_cost(s: &AttnSeq<'_>, parts: usize) -> u64 {
    let (n, p) = (s.n_tokens as u64, s.start_pos as u64);
    n * (p + 1 + parts as u64 * QUERY_OVERHEAD) + n * n.saturating_sub(1) / 2
}

/// Spreads the items over the pool: thread `i` takes the items whose cumulative cost start lies
/// in the `i`-th equal share of the total.
fn run_items(ctx: &Ctx<'_>, pool: &ThreadPool, seqs: &[AttnSeq<'_>], plan: Plan) {
    let total: u64 = seqs.iter().map(|s| seq_cost(s, plan.parts)).sum::<u64>() * ctx.kv.n_kv_heads as u64;
    pool.run(|ti, nt| {
        let lo = (u128::from(total) * ti as u128 / nt as u128) as u64;
        let hi = (u128::from(total) * (ti as u128 + 1) / nt as u128) as u64;
        run_range(ctx, seqs, plan, lo, hi);
    });
}

/// Processes the items (unit = sequence × KV head × token, then context part) whose
/// cumulative cost start lies in `[lo, hi)`.
fn run_range(ctx: &Ctx<'_>, seqs: &[AttnSeq<'_>], plan: Plan, lo: u64, hi: u64) {
    let mut c = 0u64;
    let mut unit = 0usize;
    for s in seqs {
        let gc = seq_cost(s, plan.parts);
        for kvh in 0..ctx.kv.n_kv_heads {
            if c >= hi {
                return;
            }
            if c + gc <= lo {
                c += gc;
                unit += s.n_tokens;
                continue;
            }
            for t in 0..s.n_tokens {
                let n_ctx = s.start_pos + t + 1;
                for part in 0..plan.parts {
                    if c >= hi {
                        return;
                    }
                    let range = split_range(n_ctx, plan.parts, part, TILE);
                    let cost = range.len() as u64 + QUERY_OVERHEAD;
                    if c >= lo {
                        let slot = (!plan.scratch.is_null()).then(|| {
                            // SAFETY: `unit < n_units` and `part < parts`, and the scratch holds
                            // `n_units × parts` slots (checked when planning).
                            unsafe { plan.scratch.add((unit * plan.parts + part) * plan.slot) }
                        });
                        attend_item(ctx, s, kvh, t, range, slot);
                    }
                    c += cost;
                }
                unit += 1;
            }
        }
    }
}

/// Attention of query token `t` of `s` for all query heads of KV head `kvh` over the context
/// positions `range`, into the output rows or, for split-K, into `slot`.
fn attend_item(
    ctx: &Ctx<'_>,
    s: &AttnSeq<'_>,
    kvh: usize,
    t: usize,
    range: Range<usize>,
    slot: Option<*mut f32>,
) {
    let (hd, group) = (ctx.kv.head_dim, ctx.group);
    let row = (s.q_offset + t) * ctx.n_heads * hd;
    let mut h = 0;
    while h < group {
        let n_g = (group - h).min(max_group(ctx.isa, hd));
        let off = row + (kvh * group + h) * hd;
        // SAFETY: the slot holds `group × hd + 2 × group` floats and `h + n_g <= group`.
        let partial = slot.map(|b| unsafe {
            Partial {
                acc: b.add(h * hd),
                m: b.add(group * hd + h),
                l: b.add(group * hd + group + h),
            }
        });
        let job = RowJob {
            q: &ctx.q[off..off + n_g * hd],
            // SAFETY: `off + n_g * hd <= out.len()` (validated like `q`); only this item uses
            // these rows.
            out: unsafe { ctx.out.add(off) },
            n_g,
            block_table: s.block_table,
            head_off: kvh * ctx.kv.block_size * hd,
            pos: range.clone(),
            partial,
        };
        // SAFETY: shapes validated in `validate`; `n_g <= max_group`; the output rows or slot
        // belong to this item alone.
        unsafe { run_job(ctx, &job) };
        h += n_g;
    }
}

/// Combines the `parts` partial softmax states of every unit into the output rows:
/// `out = Σ_p e^(m_p − M) acc_p / Σ_p e^(m_p − M) l_p` with `M = max_p m_p`.
///
/// # Safety
/// Every slot of `plan` must have been written, and no other thread may touch `out`.
unsafe fn merge(ctx: &Ctx<'_>, seqs: &[AttnSeq<'_>], plan: Plan) {
    let (hd, group) = (ctx.kv.head_dim, ctx.group);
    let mut unit = 0;
    for s in seqs {
        for kvh in 0..ctx.kv.n_kv_heads {
            for t in 0..s.n_tokens {
                // SAFETY: the slots of this unit were written (caller contract) and lie in the
                // scratch buffer.
                let slots = unsafe {
                    std::slice::from_raw_parts(
                        plan.scratch.add(unit * plan.parts * plan.slot),
                        plan.parts * plan.slot,
                    )
                };
                let off = ((s.q_offset + t) * ctx.n_heads + kvh * group) * hd;
                // SAFETY: these `group × hd` output floats were validated to exist, and no
                // thread is running.
                let out = unsafe { std::slice::from_raw_parts_mut(ctx.out.add(off), group * hd) };
                for g in 0..group {
                    let ml = |p: usize| {
                        let base = &slots[p * plan.slot + group * hd..];
                        (base[g], base[group + g])
                    };
                    let mx = (0..plan.parts).map(|p| ml(p).0).fold(f32::NEG_INFINITY, f32::max);
                    let o = &mut out[g * hd..(g + 1) * hd];
                    o.fill(0.0);
                    let mut denom = 0.0;
                    for p in 0..plan.parts {
                        let (m, l) = ml(p);
                        let w = exp_approx(m - mx);
                        denom += w * l;
                        let acc = &slots[p * plan.slot + g * hd..][..hd];
                        for (od, &a) in o.iter_mut().zip(acc) {
                            *od += w * a;
                        }
                    }
                    let inv = 1.0 / denom;
                    for od in o.iter_mut() {
                        *od *= inv;
                    }
                }
                unit += 1;
            }
        }
    }
}
