//! Host-side planning of one step: everything the kernels need, packed into one buffer of
//! 32-bit words so that a step makes exactly one host-to-device copy.
//!
//! Token order inside the step: the chunks of one token (decode) first, then the longer
//! chunks (prefill), so the decode attention kernel covers queries `0..n_decode` and the
//! prefill kernel works on tiles of the rest. Logits rows keep the batch's order.

use veil_kernels::cuda::SampleParams;

use super::super::{SampleRow, SeqChunk};
use crate::error::{Error, Result};

/// Queries per prefill attention tile.
pub(crate) const PREFILL_TILE: usize = veil_kernels::cuda::PREFILL_TILE_QUERIES;
/// Positions per decode attention split.
pub(crate) const SPLIT_LEN: usize = 512;
/// The most top log-probabilities a row can ask for (the API's limit).
pub(crate) const MAX_TOP: usize = 20;

/// `VeilSampleParams` as 32-bit words, in the ABI's field order.
pub(crate) trait ParamWords {
    /// Words per row.
    const WORDS: usize;
    /// The row's words (floats as their bits).
    fn to_words(&self) -> [i32; 13];
}

impl ParamWords for SampleParams {
    const WORDS: usize = 13;
    fn to_words(&self) -> [i32; 13] {
        let f = |x: f32| x.to_bits() as i32;
        [
            f(self.temperature),
            self.top_k,
            f(self.top_p),
            f(self.min_p),
            f(self.repetition_penalty),
            f(self.presence_penalty),
            f(self.frequency_penalty),
            self.seed_lo as i32,
            self.seed_hi as i32,
            self.counter as i32,
            self.n_top_logprobs,
            self.penalty_offset,
            self.n_penalty,
        ]
    }
}

/// Word offsets of each array in the packed buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Offsets {
    pub(crate) tokens: usize,
    pub(crate) positions: usize,
    pub(crate) slots: usize,
    pub(crate) query_seq: usize,
    pub(crate) query_pos: usize,
    pub(crate) block_tables: usize,
    pub(crate) logits_rows: usize,
    pub(crate) tile_seq: usize,
    pub(crate) tile_first_query: usize,
    pub(crate) tile_n_queries: usize,
    pub(crate) tile_first_pos: usize,
    pub(crate) params: usize,
    pub(crate) penalty_ids: usize,
    pub(crate) penalty_counts: usize,
    pub(crate) total: usize,
}

/// One planned step.
#[derive(Debug, Clone, Default)]
pub(crate) struct StepPlan {
    /// The packed words (ints as is, floats as their bits).
    pub(crate) words: Vec<i32>,
    pub(crate) off: Offsets,
    /// Tokens in the step (rows of every activation buffer).
    pub(crate) n_tokens: usize,
    /// Single-token chunks (queries `0..n_decode`).
    pub(crate) n_decode: usize,
    /// Chunks (block-table rows).
    pub(crate) n_seqs: usize,
    /// Rows of logits (chunks that want them).
    pub(crate) n_rows: usize,
    /// Prefill attention tiles.
    pub(crate) n_tiles: usize,
    /// Block-table width.
    pub(crate) max_blocks: usize,
    /// Decode attention splits.
    pub(crate) n_splits: usize,
    /// For each token in step order, its chunk's index in the batch and offset in the chunk.
    pub(crate) order: Vec<(usize, usize)>,
    /// Room for penalised tokens.
    pub(crate) penalty_capacity: usize,
}

fn to_i32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Backend {
        backend: "cuda",
        reason: format!("{what} {v} does not fit the kernels' 32-bit indices"),
    })
}

/// The kernel's parameters for one sampled row.
pub(crate) fn sample_params(row: &SampleRow<'_>, penalty_offset: usize) -> Result<SampleParams> {
    let p = row.params;
    Ok(SampleParams {
        temperature: p.temperature,
        top_k: to_i32(p.top_k, "top_k")?,
        top_p: p.top_p,
        min_p: p.min_p,
        repetition_penalty: p.repetition_penalty,
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        seed_lo: row.seed as u32,
        seed_hi: (row.seed >> 32) as u32,
        counter: row.counter,
        n_top_logprobs: match row.logprobs {
            None => -1,
            Some(n) => to_i32(n.min(MAX_TOP), "top_logprobs")?,
        },
        penalty_offset: to_i32(penalty_offset, "penalty offset")?,
        n_penalty: to_i32(row.penalties.len(), "penalised tokens")?,
    })
}

impl StepPlan {
    /// Plans `batch` for a cache of `block_size`-position blocks. `rows` describe the sampled
    /// rows (empty when the logits go back to the host instead). `pad_to` pads a decode-only
    /// step to that many tokens (CUDA graph buckets): padded tokens write no KV (slot -1) and
    /// attend to position 0 of block 0.
    pub(crate) fn build(
        batch: &[SeqChunk<'_>],
        rows: &[SampleRow<'_>],
        block_size: usize,
        pad_to: Option<usize>,
    ) -> Result<Self> {
        let mut plan = Self::default();
        let mut order: Vec<(usize, usize)> = Vec::new();
        for (i, c) in batch.iter().enumerate() {
            if c.tokens.len() == 1 {
                order.push((i, 0));
            }
        }
        plan.n_decode = order.len();
        for (i, c) in batch.iter().enumerate() {
            if c.tokens.len() > 1 {
                order.extend((0..c.tokens.len()).map(|j| (i, j)));
            }
        }
        let real_tokens = order.len();
        let n_tokens = pad_to.map_or(real_tokens, |p| p.max(real_tokens));
        let padded = n_tokens - real_tokens;
        if padded > 0 && plan.n_decode != real_tokens {
            return Err(Error::Backend {
                backend: "cuda",
                reason: "only decode-only steps are padded".into(),
            });
        }
        plan.n_tokens = n_tokens;
        plan.n_decode += padded;
        // A padded step has a fixed layout for its bucket (a CUDA graph replays it): one
        // block-table row per bucket slot plus an all-zero row for the padding.
        plan.n_seqs = match pad_to {
            Some(bucket) => bucket.max(batch.len()) + 1,
            None => batch.len(),
        };
        plan.max_blocks = batch
            .iter()
            .map(|c| c.block_table.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let max_ctx = batch
            .iter()
            .map(|c| c.start_pos + c.tokens.len())
            .max()
            .unwrap_or(1);
        plan.n_splits = max_ctx.div_ceil(SPLIT_LEN).max(1);
        if pad_to.is_some() {
            // Powers of two, so that a growing context rarely needs a new graph.
            plan.max_blocks = plan.max_blocks.next_power_of_two();
            plan.n_splits = plan.n_splits.next_power_of_two();
        }

        let mut o = Offsets::default();
        let mut at = 0;
        let mut take = |n: usize| {
            let start = at;
            at += n;
            start
        };
        o.tokens = take(n_tokens);
        o.positions = take(n_tokens);
        o.slots = take(n_tokens);
        o.query_seq = take(n_tokens);
        o.query_pos = take(n_tokens);
        o.block_tables = take(plan.n_seqs * plan.max_blocks);
        let want: Vec<usize> = (0..batch.len()).filter(|&i| batch[i].want_logits).collect();
        plan.n_rows = if pad_to.is_some() { n_tokens } else { want.len() };
        if !rows.is_empty() && rows.len() != want.len() {
            return Err(Error::Backend {
                backend: "cuda",
                reason: format!(
                    "{} sample rows for {} chunks that want logits",
                    rows.len(),
                    want.len()
                ),
            });
        }
        o.logits_rows = take(plan.n_rows);
        let tiles: Vec<(usize, usize, usize, usize)> = {
            // (chunk, first query in step order, queries, first position)
            let mut t = Vec::new();
            let mut q = plan.n_decode;
            for (i, c) in batch.iter().enumerate() {
                if c.tokens.len() > 1 {
                    let mut j = 0;
                    while j < c.tokens.len() {
                        let n = PREFILL_TILE.min(c.tokens.len() - j);
                        t.push((i, q + j, n, c.start_pos + j));
                        j += n;
                    }
                    q += c.tokens.len();
                }
            }
            t
        };
        plan.n_tiles = tiles.len();
        o.tile_seq = take(tiles.len());
        o.tile_first_query = take(tiles.len());
        o.tile_n_queries = take(tiles.len());
        o.tile_first_pos = take(tiles.len());
        let n_params = if rows.is_empty() { 0 } else { plan.n_rows };
        o.params = take(n_params * SampleParams::WORDS);
        let n_pen: usize = rows.iter().map(|r| r.penalties.len()).sum();
        // Rounded up so that steps of one bucket share a layout.
        plan.penalty_capacity = if pad_to.is_some() {
            n_pen.max(64).next_power_of_two()
        } else {
            n_pen
        };
        o.penalty_ids = take(plan.penalty_capacity);
        o.penalty_counts = take(plan.penalty_capacity);
        o.total = at;

        let mut w = vec![0i32; o.total];
        for (k, &(i, j)) in order.iter().enumerate() {
            let c = &batch[i];
            let pos = c.start_pos + j;
            let block = *c
                .block_table
                .get(pos / block_size)
                .ok_or_else(|| Error::Backend {
                    backend: "cuda",
                    reason: format!("chunk {i}: position {pos} is beyond its block table"),
                })? as usize;
            w[o.tokens + k] = to_i32(c.tokens[j] as usize, "token id")?;
            w[o.positions + k] = to_i32(pos, "position")?;
            w[o.slots + k] = to_i32(block * block_size + pos % block_size, "KV slot")?;
            w[o.query_seq + k] = to_i32(i, "sequence")?;
            w[o.query_pos + k] = to_i32(pos, "position")?;
        }
        for k in real_tokens..n_tokens {
            // Padding: token 0 at position 0 of the all-zero block-table row, no KV write.
            w[o.slots + k] = -1;
            w[o.query_seq + k] = to_i32(batch.len(), "sequence")?;
        }
        for (i, c) in batch.iter().enumerate() {
            for (j, &b) in c.block_table.iter().enumerate() {
                w[o.block_tables + i * plan.max_blocks + j] = to_i32(b as usize, "block")?;
            }
        }
        // The logits row of each chunk that wants one: its last token in step order.
        let last_token_of = |chunk: usize| order.iter().rposition(|&(i, _)| i == chunk).unwrap_or_default();
        for (r, &i) in want.iter().enumerate() {
            w[o.logits_rows + r] = to_i32(last_token_of(i), "row")?;
        }
        for r in want.len()..plan.n_rows {
            w[o.logits_rows + r] = to_i32(r.min(n_tokens.saturating_sub(1)), "row")?;
        }
        for (t, &(i, first, n, pos)) in tiles.iter().enumerate() {
            w[o.tile_seq + t] = to_i32(i, "sequence")?;
            w[o.tile_first_query + t] = to_i32(first, "query")?;
            w[o.tile_n_queries + t] = to_i32(n, "queries")?;
            w[o.tile_first_pos + t] = to_i32(pos, "position")?;
        }
        let mut pen_at = 0;
        for (r, row) in rows.iter().enumerate() {
            let p = sample_params(row, pen_at)?;
            w[o.params + r * SampleParams::WORDS..o.params + (r + 1) * SampleParams::WORDS]
                .copy_from_slice(&p.to_words());
            for &(id, count) in row.penalties {
                w[o.penalty_ids + pen_at] = to_i32(id as usize, "token id")?;
                w[o.penalty_counts + pen_at] = to_i32(count as usize, "count")?;
                pen_at += 1;
            }
        }
        // Padded rows sample greedily with no logprobs and no penalties.
        for r in rows.len()..n_params {
            let p = SampleParams {
                n_top_logprobs: -1,
                repetition_penalty: 1.0,
                top_p: 1.0,
                ..SampleParams::default()
            };
            w[o.params + r * SampleParams::WORDS..o.params + (r + 1) * SampleParams::WORDS]
                .copy_from_slice(&p.to_words());
        }
        plan.words = w;
        plan.off = o;
        plan.order = order;
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SamplingParams;

    #[test]
    fn decode_tokens_come_first_and_rows_keep_batch_order() {
        let a = [5u32, 6, 7]; // prefill of 3 at 0
        let b = [9u32]; // decode at position 20
        let batch = [
            SeqChunk {
                tokens: &a,
                start_pos: 0,
                block_table: &[4],
                want_logits: true,
            },
            SeqChunk {
                tokens: &b,
                start_pos: 20,
                block_table: &[1, 2],
                want_logits: true,
            },
        ];
        let p = StepPlan::build(&batch, &[], 16, None).unwrap_or_default();
        assert_eq!((p.n_tokens, p.n_decode, p.n_seqs, p.n_rows), (4, 1, 2, 2));
        assert_eq!(p.order, vec![(1, 0), (0, 0), (0, 1), (0, 2)]);
        let w = |off: usize, n: usize| p.words[off..off + n].to_vec();
        assert_eq!(w(p.off.tokens, 4), vec![9, 5, 6, 7]);
        assert_eq!(w(p.off.positions, 4), vec![20, 0, 1, 2]);
        // Position 20 is in block_table[1] = 2 at offset 4: slot 36; the prefill in block 4.
        assert_eq!(w(p.off.slots, 4), vec![36, 64, 65, 66]);
        assert_eq!(w(p.off.query_seq, 4), vec![1, 0, 0, 0]);
        assert_eq!(w(p.off.block_tables, 4), vec![4, 0, 1, 2]);
        // Batch order: chunk 0's last token (step index 3), then chunk 1's (index 0).
        assert_eq!(w(p.off.logits_rows, 2), vec![3, 0]);
        assert_eq!(p.n_tiles, 1);
        assert_eq!(w(p.off.tile_seq, 1), vec![0]);
        assert_eq!(w(p.off.tile_first_query, 1), vec![1]);
        assert_eq!(w(p.off.tile_n_queries, 1), vec![3]);
        assert_eq!(w(p.off.tile_first_pos, 1), vec![0]);
        assert_eq!(p.n_splits, 1);
    }

    #[test]
    fn long_prefills_split_into_tiles_and_padding_is_inert() {
        let long: Vec<u32> = (0..150).collect();
        let table: Vec<u32> = (0..10).collect();
        let batch = [SeqChunk {
            tokens: &long,
            start_pos: 10,
            block_table: &table,
            want_logits: false,
        }];
        let p = StepPlan::build(&batch, &[], 16, None).unwrap_or_default();
        assert_eq!((p.n_tiles, p.n_rows), (3, 0));
        let n: Vec<i32> = p.words[p.off.tile_n_queries..p.off.tile_n_queries + 3].to_vec();
        assert_eq!(n, vec![64, 64, 22]);
        let pos: Vec<i32> = p.words[p.off.tile_first_pos..p.off.tile_first_pos + 3].to_vec();
        assert_eq!(pos, vec![10, 74, 138]);
        // Padding is only for decode-only steps.
        assert!(StepPlan::build(&batch, &[], 16, Some(256)).is_err());

        let one = [3u32];
        let dec = [SeqChunk {
            tokens: &one,
            start_pos: 5,
            block_table: &[7],
            want_logits: true,
        }];
        let params = SamplingParams::default();
        let pen = [(3u32, 1u32), (8, 0)];
        let rows = [SampleRow {
            params: &params,
            seed: 0x1_0000_0002,
            counter: 4,
            logprobs: Some(2),
            penalties: &pen,
        }];
        let p = StepPlan::build(&dec, &rows, 16, Some(4)).unwrap_or_default();
        assert_eq!((p.n_tokens, p.n_decode, p.n_rows, p.n_seqs), (4, 4, 4, 5));
        assert_eq!(p.penalty_capacity, 64);
        assert_eq!(
            p.words[p.off.slots..p.off.slots + 4].to_vec(),
            vec![117, -1, -1, -1]
        );
        assert_eq!(
            p.words[p.off.query_seq..p.off.query_seq + 4].to_vec(),
            vec![0, 1, 1, 1]
        );
        let sp = &p.words[p.off.params..p.off.params + SampleParams::WORDS];
        let want = sample_params(&rows[0], 0)
            .map(|p| p.to_words())
            .unwrap_or_default();
        assert_eq!(sp, want.as_slice());
        assert_eq!((sp[7], sp[8], sp[9], sp[10], sp[12]), (2, 1, 4, 2, 2));
        assert_eq!(
            p.words[p.off.penalty_ids..p.off.penalty_ids + 2].to_vec(),
            vec![3, 8]
        );
        assert_eq!(
            p.words[p.off.penalty_counts..p.off.penalty_counts + 2].to_vec(),
            vec![1, 0]
        );
    }
}
