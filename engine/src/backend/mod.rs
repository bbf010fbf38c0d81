//! The compute backend abstraction and its implementations (one module per backend).
//!
//! A backend runs the transformer forward pass for a *batch* of sequences at once: each entry
//! is a chunk of new tokens (a prefill chunk or a single decode token) at some position,
//! with the block table that maps its positions to KV-cache blocks. The backend writes the new
//! K/V into those blocks, attends over everything before, and returns logits only for the
//! entries that need sampling. This is the shape a continuous-batching scheduler drives.

pub mod cpu;
pub mod cuda;
mod device;

pub use device::{Device, DeviceArg};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::sampling::SamplingParams;

/// Weight precision kept in memory by a backend (activations are always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DType {
    /// bfloat16 weights (half the memory traffic).
    #[default]
    Bf16,
    /// float32 weights (exact).
    F32,
}

impl DType {
    /// Lower-case name ("bf16", "f32").
    pub fn name(self) -> &'static str {
        match self {
            Self::Bf16 => "bf16",
            Self::F32 => "f32",
        }
    }
}

impl std::str::FromStr for DType {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bf16" => Ok(Self::Bf16),
            "f32" => Ok(Self::F32),
            other => Err(crate::error::Error::InvalidRequest(format!(
                "unknown dtype {other:?} (bf16 or f32)"
            ))),
        }
    }
}

/// One sequence's share of a forward step.
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'a> {
    /// New tokens to process (a prefill chunk, or one decode token).
    pub tokens: &'a [u32],
    /// Absolute position of `tokens[0]`; positions before it are already in the KV cache.
    pub start_pos: usize,
    /// KV blocks of the sequence, covering at least `start_pos + tokens.len()` positions.
    pub block_table: &'a [u32],
    /// Whether to return logits for the last token of this chunk.
    pub want_logits: bool,
}

/// A transformer runtime on some device.
pub trait Backend: Send {
    /// Short name ("cpu", "cuda").
    fn name(&self) -> &'static str;

    /// The model's configuration.
    fn config(&self) -> &ModelConfig;

    /// Weight precision in memory.
    fn dtype(&self) -> DType;

    /// Bytes of KV memory one block of `block_size` positions takes.
    fn kv_block_bytes(&self, block_size: usize) -> usize;

    /// (Re)allocates the KV cache: `num_blocks` blocks of `block_size` positions.
    fn init_kv_cache(&mut self, num_blocks: usize, block_size: usize) -> Result<()>;

    /// Runs one step. `logits` is resized to hold one row of `vocab_size` values for each
    /// chunk with `want_logits`, in batch order.
    fn forward(&mut self, batch: &[SeqChunk<'_>], logits: &mut Vec<f32>) -> Result<()>;

    /// KV memory to allocate on a device with its own memory, like vLLM's
    /// `gpu_memory_utilization`: reserve a step of `max_tokens` tokens and `max_rows` sampled
    /// rows, then give `fraction` of the device's memory minus what is in use. `None` for
    /// backends that take an explicit budget (the CPU).
    fn kv_memory_budget(
        &mut self,
        _fraction: f64,
        _max_tokens: usize,
        _max_rows: usize,
    ) -> Result<Option<usize>> {
        Ok(None)
    }

    /// Whether [`Backend::forward_sample`] picks tokens on the device (then only the picked
    /// ids and the requested log-probabilities come back, not the logits).
    fn samples_on_device(&self) -> bool {
        false
    }

    /// Runs one step and picks the next token of every chunk with `want_logits`: `rows[i]`
    /// describes the i-th such chunk in batch order, `out` receives one result per row.
    fn forward_sample(
        &mut self,
        _batch: &[SeqChunk<'_>],
        _rows: &[SampleRow<'_>],
        _out: &mut Vec<DeviceSample>,
    ) -> Result<()> {
        Err(Error::Backend {
            backend: self.name(),
            reason: "this backend does not sample on the device".into(),
        })
    }
}

/// How to pick one row's next token on the device.
#[derive(Debug, Clone, Copy)]
pub struct SampleRow<'a> {
    /// Filters, temperature and penalties.
    pub params: &'a SamplingParams,
    /// Key of the counter-based draw.
    pub seed: u64,
    /// Tokens picked before for this request (the draw's counter).
    pub counter: u32,
    /// `Some(n)`: return the picked token's log-probability and the `n` most likely ones.
    pub logprobs: Option<usize>,
    /// Penalised tokens as (id, times generated), see `Sampler::penalty_pairs`.
    pub penalties: &'a [(u32, u32)],
}

/// One token picked on the device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSample {
    /// The picked token.
    pub id: u32,
    /// Its log-probability (when asked for).
    pub logprob: Option<f32>,
    /// The most likely tokens and their log-probabilities, highest first (when asked for).
    pub top_logprobs: Vec<(u32, f32)>,
}
