//! Generation for one request at a time (the `veil generate` path): prefill in chunks, then
//! decode token by token, streaming each token to a callback.

use std::time::{Duration, Instant};

use crate::backend::SeqChunk;
use crate::error::{Error, Result};
use crate::kv_cache::{BlockAllocator, BlockTable};
use crate::model::LoadedModel;
use crate::output::{FinishReason, OutputStream, StopConditions};
use crate::sampling::{Sampler, SamplingParams, TokenLogprob};

/// Positions per KV block.
pub const BLOCK_SIZE: usize = 16;
/// Longest prefill chunk per forward step (bounds activation memory).
pub const PREFILL_CHUNK: usize = 512;

/// One request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Stop conditions (the model's EOS ids are added automatically).
    pub stop: StopConditions,
    /// Report each token's log-probability plus this many most likely alternatives.
    pub logprobs: Option<usize>,
}

/// One generated token, as streamed.
#[derive(Debug, Clone)]
pub struct TokenEvent {
    /// Token id.
    pub id: u32,
    /// Text made final by this token.
    pub text: String,
    /// Log-probability of the token (when asked for).
    pub logprob: Option<f32>,
    /// Most likely alternatives, highest first (when asked for).
    pub top_logprobs: Vec<TokenLogprob>,
}

/// Timing and counts of a finished generation.
#[derive(Debug, Clone)]
pub struct GenerateStats {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Time to process the prompt and produce the first token.
    pub prefill_time: Duration,
    /// Time for the remaining tokens.
    pub decode_time: Duration,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

/// Runs one request to completion. `on_token` returns `false` to cancel.
pub fn generate(
    model: &mut LoadedModel,
    req: &GenerateRequest,
    on_token: &mut dyn FnMut(&TokenEvent) -> bool,
) -> Result<GenerateStats> {
    req.sampling.validate()?;
    if req.prompt.is_empty() {
        return Err(Error::InvalidRequest("the prompt is empty".into()));
    }
    if req.stop.max_tokens == 0 {
        return Err(Error::InvalidRequest("max_tokens must be at least 1".into()));
    }
    let ctx = model.config.max_position_embeddings;
    if req.prompt.len() >= ctx {
        return Err(Error::InvalidRequest(format!(
            "the prompt has {} tokens; the model's context is {ctx}",
            req.prompt.len()
        )));
    }
    let total = (req.prompt.len() + req.stop.max_tokens).min(ctx);
    let mut alloc = BlockAllocator::new(total.div_ceil(BLOCK_SIZE), BLOCK_SIZE);
    model.backend.init_kv_cache(alloc.num_blocks(), BLOCK_SIZE)?;
    let mut table = BlockTable::new();
    table.reserve(&mut alloc, total)?;

    let mut stop = req.stop.clone();
    for &id in model
        .tokenizer
        .eos_token_ids()
        .iter()
        .chain(&model.config.eos_token_ids)
    {
        if !stop.stop_token_ids.contains(&id) {
            stop.stop_token_ids.push(id);
        }
    }
    let mut out = OutputStream::new(stop);
    let mut sampler = Sampler::new(req.sampling.clone(), &req.prompt);
    let mut logits = Vec::new();
    let start = Instant::now();

    // Prefill.
    let mut pos = 0;
    while pos < req.prompt.len() {
        let end = (pos + PREFILL_CHUNK).min(req.prompt.len());
        let chunk = SeqChunk {
            tokens: &req.prompt[pos..end],
            start_pos: pos,
            block_table: table.blocks(),
            want_logits: end == req.prompt.len(),
        };
        model.backend.forward(&[chunk], &mut logits)?;
        pos = end;
    }
    let mut prefill_time = None;
    let mut token = [0u32; 1];
    let finish_reason = loop {
        let s = sampler.sample(&mut logits, req.logprobs);
        let delta = out.push(&model.tokenizer, s.id)?;
        prefill_time.get_or_insert_with(|| start.elapsed());
        let event = TokenEvent {
            id: s.id,
            text: delta.text,
            logprob: s.logprob,
            top_logprobs: s.top_logprobs,
        };
        if !on_token(&event) {
            break FinishReason::Cancelled;
        }
        if let Some(reason) = delta.finished {
            break reason;
        }
        if pos >= total {
            let rest = out.finish(&model.tokenizer)?;
            if !rest.is_empty() {
                on_token(&TokenEvent {
                    id: s.id,
                    text: rest,
                    logprob: None,
                    top_logprobs: Vec::new(),
                });
            }
            break FinishReason::Length;
        }
        token[0] = s.id;
        let chunk = SeqChunk {
            tokens: &token,
            start_pos: pos,
            block_table: table.blocks(),
            want_logits: true,
        };
        model.backend.forward(&[chunk], &mut logits)?;
        pos += 1;
    };
    let prefill_time = prefill_time.unwrap_or_default();
    Ok(GenerateStats {
        prompt_tokens: req.prompt.len(),
        completion_tokens: out.generated(),
        prefill_time,
        decode_time: start.elapsed().saturating_sub(prefill_time),
        finish_reason,
    })
}
