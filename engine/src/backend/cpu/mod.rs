//! The CPU backend: packed-weight matrix kernels on a persistent thread pool, f32 activations,
//! a paged f32 KV cache in host memory.
//!
//! One step processes every token of the batch together: the matrix multiplications see all
//! tokens as one matrix (so prefill is matrix-matrix work and batched decode reuses each weight
//! panel across sequences), while attention runs per sequence over its own KV blocks.

mod weights;

use veil_kernels::attention::{AttnSeq, KvLayerView, paged_attention};
use veil_kernels::matmul::matmul;
use veil_kernels::ops::{RopeTable, add_inplace, rms_norm, silu_mul};
use veil_kernels::pool::ThreadPool;

use self::weights::CpuWeights;
use crate::backend::{Backend, DType, SeqChunk};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::weights::Weights;

/// RMSNorm of each row of `x` (rows of `weight.len()` values) into `out`.
fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let h = weight.len();
    for (row, dst) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        rms_norm(row, weight, eps, dst);
    }
}

/// Activation buffers, grown to the largest step seen and reused (nothing allocated per token).
#[derive(Debug, Default)]
struct Scratch {
    tokens: usize,
    x: Vec<f32>,
    xn: Vec<f32>,
    qkv: Vec<f32>,
    q: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    last: Vec<f32>,
}

impl Scratch {
    fn ensure(&mut self, cfg: &ModelConfig, tokens: usize) {
        if tokens <= self.tokens {
            return;
        }
        let (h, q, i) = (
            cfg.hidden_size,
            cfg.num_heads * cfg.head_dim,
            cfg.intermediate_size,
        );
        self.tokens = tokens;
        self.x.resize(tokens * h, 0.0);
        self.xn.resize(tokens * h, 0.0);
        self.qkv.resize(tokens * cfg.qkv_width(), 0.0);
        self.q.resize(tokens * q, 0.0);
        self.attn.resize(tokens * q, 0.0);
        self.proj.resize(tokens * h, 0.0);
        self.gate_up.resize(tokens * 2 * i, 0.0);
        self.act.resize(tokens * i, 0.0);
        self.last.resize(tokens * h, 0.0);
    }
}

/// Paged KV storage: per layer, K and V each laid out `[block][kv_head][slot][head_dim]`.
#[derive(Debug, Default)]
struct KvStorage {
    block_size: usize,
    num_blocks: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

/// The transformer on the CPU.
#[derive(Debug)]
pub struct CpuBackend {
    cfg: ModelConfig,
    dtype: DType,
    weights: CpuWeights,
    rope: RopeTable,
    pool: ThreadPool,
    scratch: Scratch,
    kv: KvStorage,
}

impl CpuBackend {
    /// Loads the weights of a model directory, repacked for the CPU kernels.
    pub fn load(
        weights: &Weights,
        cfg: &ModelConfig,
        dtype: DType,
        threads: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        veil_kernels::pool::set_flush_denormals();
        let packed = CpuWeights::load(weights, cfg, dtype, progress)?;
        let rope = RopeTable::new(cfg.head_dim, cfg.max_position_embeddings, &cfg.rope_inv_freq());
        Ok(Self {
            cfg: cfg.clone(),
            dtype,
            weights: packed,
            rope,
            pool: ThreadPool::new(threads.max(1)),
            scratch: Scratch::default(),
            kv: KvStorage::default(),
        })
    }

    /// Bytes of weights streamed per decode step (for bandwidth reports).
    pub fn weight_bytes_per_token(&self) -> usize {
        self.weights.bytes_per_token()
    }

    /// Threads the kernels use.
    pub fn threads(&self) -> usize {
        self.pool.n_threads()
    }

    fn validate(&self, batch: &[SeqChunk<'_>]) -> Result<usize> {
        let mut total = 0usize;
        for (i, s) in batch.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(Error::InvalidRequest(format!("batch entry {i} has no tokens")));
            }
            let end = s.start_pos + s.tokens.len();
            if end > self.cfg.max_position_embeddings {
                return Err(Error::InvalidRequest(format!(
                    "sequence reaches position {end}, beyond the model's context of {}",
                    self.cfg.max_position_embeddings
                )));
            }
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
                return Err(Error::InvalidRequest(format!(
                    "token id {bad} outside the vocabulary"
                )));
            }
            if s.block_table.len() * self.kv.block_size < end || self.kv.block_size == 0 {
                return Err(Error::KvCacheExhausted(format!(
                    "batch entry {i}: block table too short"
                )));
            }
            if s.block_table.iter().any(|&b| b as usize >= self.kv.num_blocks) {
                return Err(Error::KvCacheExhausted(format!(
                    "batch entry {i}: block id out of range"
                )));
            }
            total += s.tokens.len();
        }
        Ok(total)
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn kv_block_bytes(&self, block_size: usize) -> usize {
        2 * self.cfg.num_layers
            * self.cfg.num_kv_heads
            * self.cfg.head_dim
            * block_size
            * std::mem::size_of::<f32>()
    }

    fn init_kv_cache(&mut self, num_blocks: usize, block_size: usize) -> Result<()> {
        if block_size == 0 || num_blocks == 0 {
            return Err(Error::InvalidRequest(
                "KV cache needs at least one block of one position".into(),
            ));
        }
        let per_layer = num_blocks
            .checked_mul(block_size * self.cfg.num_kv_heads * self.cfg.head_dim)
            .ok_or_else(|| Error::KvCacheExhausted("KV cache size overflows".into()))?;
        // Zeroed allocations are committed lazily by the OS, page by page as blocks are used.
        self.kv = KvStorage {
            block_size,
            num_blocks,
            k: (0..self.cfg.num_layers).map(|_| vec![0.0; per_layer]).collect(),
            v: (0..self.cfg.num_layers).map(|_| vec![0.0; per_layer]).collect(),
        };
        Ok(())
    }

    fn forward(&mut self, batch: &[SeqChunk<'_>], logits: &mut Vec<f32>) -> Result<()> {
        let total = self.validate(batch)?;
        let cfg = &self.cfg;
        let (h, hd, nh, nkv) = (cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads);
        let (qw, kvw, inter) = (nh * hd, nkv * hd, cfg.intermediate_size);
        let qkvw = cfg.qkv_width();
        self.scratch.ensure(cfg, total);
        let s = &mut self.scratch;
        let pool = &self.pool;
        let w = &self.weights;
        let bs = self.kv.block_size;

        // Token positions and embeddings.
        let mut t = 0;
        for chunk in batch {
            for &id in chunk.tokens {
                w.embedding.row_into(id as usize, &mut s.x[t * h..(t + 1) * h]);
                t += 1;
            }
        }
        let seqs: Vec<AttnSeq<'_>> = {
            let mut off = 0;
            batch
                .iter()
                .map(|c| {
                    let a = AttnSeq {
                        q_offset: off,
                        n_tokens: c.tokens.len(),
                        start_pos: c.start_pos,
                        block_table: c.block_table,
                    };
                    off += c.tokens.len();
                    a
                })
                .collect()
        };
        let scale = 1.0 / (hd as f32).sqrt();

        for (li, layer) in w.layers.iter().enumerate() {
            rms_norm_rows(
                &s.x[..total * h],
                &layer.attn_norm,
                cfg.rms_norm_eps,
                &mut s.xn[..total * h],
            );
            matmul(
                pool,
                &s.xn[..total * h],
                total,
                &layer.qkv,
                layer.qkv_bias.as_deref(),
                &mut s.qkv[..total * qkvw],
            );
            // RoPE on q and k, then k/v into the cache and q into its own buffer.
            let (kc, vc) = (&mut self.kv.k[li], &mut self.kv.v[li]);
            let mut t = 0;
            for chunk in batch {
                for j in 0..chunk.tokens.len() {
                    let pos = chunk.start_pos + j;
                    let row = &mut s.qkv[t * qkvw..(t + 1) * qkvw];
                    let (q, rest) = row.split_at_mut(qw);
                    let (k, v) = rest.split_at_mut(kvw);
                    self.rope.apply(q, nh, pos);
                    self.rope.apply(k, nkv, pos);
                    s.q[t * qw..(t + 1) * qw].copy_from_slice(q);
                    let block = chunk.block_table[pos / bs] as usize;
                    let slot = pos % bs;
                    for kh in 0..nkv {
                        let dst = ((block * nkv + kh) * bs + slot) * hd;
                        kc[dst..dst + hd].copy_from_slice(&k[kh * hd..(kh + 1) * hd]);
                        vc[dst..dst + hd].copy_from_slice(&v[kh * hd..(kh + 1) * hd]);
                    }
                    t += 1;
                }
            }
            let view = KvLayerView {
                k: kc,
                v: vc,
                block_size: bs,
                n_kv_heads: nkv,
                head_dim: hd,
            };
            paged_attention(
                pool,
                &s.q[..total * qw],
                nh,
                &seqs,
                &view,
                scale,
                &mut s.attn[..total * qw],
            );
            matmul(
                pool,
                &s.attn[..total * qw],
                total,
                &layer.o_proj,
                None,
                &mut s.proj[..total * h],
            );
            add_inplace(&mut s.x[..total * h], &s.proj[..total * h]);

            rms_norm_rows(
                &s.x[..total * h],
                &layer.mlp_norm,
                cfg.rms_norm_eps,
                &mut s.xn[..total * h],
            );
            matmul(
                pool,
                &s.xn[..total * h],
                total,
                &layer.gate_up,
                None,
                &mut s.gate_up[..total * 2 * inter],
            );
            for t in 0..total {
                let gu = &s.gate_up[t * 2 * inter..(t + 1) * 2 * inter];
                silu_mul(&gu[..inter], &gu[inter..], &mut s.act[t * inter..(t + 1) * inter]);
            }
            matmul(
                pool,
                &s.act[..total * inter],
                total,
                &layer.down,
                None,
                &mut s.proj[..total * h],
            );
            add_inplace(&mut s.x[..total * h], &s.proj[..total * h]);
        }

        // Final norm and LM head only for the rows that will be sampled.
        let mut n_out = 0;
        let mut t = 0;
        for chunk in batch {
            t += chunk.tokens.len();
            if chunk.want_logits {
                let src = &s.x[(t - 1) * h..t * h];
                rms_norm(
                    src,
                    &w.final_norm,
                    cfg.rms_norm_eps,
                    &mut s.last[n_out * h..(n_out + 1) * h],
                );
                n_out += 1;
            }
        }
        logits.resize(n_out * cfg.vocab_size, 0.0);
        if n_out > 0 {
            matmul(pool, &s.last[..n_out * h], n_out, &w.lm_head, None, logits);
        }
        Ok(())
    }
}
