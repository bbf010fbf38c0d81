//! `veil generate`: one prompt, streamed to stdout, throughput to stderr.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use veil_engine::backend::DType;
use veil_engine::generate::{GenerateRequest, generate};
use veil_engine::output::StopConditions;
use veil_engine::sampling::SamplingParams;
use veil_engine::tokenizer::ChatMessage;

use super::model::{ModelArg, load_model};

/// Arguments of `veil generate`.
#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// The prompt text.
    #[arg(long, short)]
    prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message (implies --chat).
    #[arg(long)]
    system: Option<String>,
    /// Maximum tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Top-k filter (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Top-p (nucleus) filter (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Min-p filter (0 = off).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Presence penalty (0 = off).
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    /// Frequency penalty (0 = off).
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// RNG seed for reproducible sampling.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop string (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Stop token id (repeatable; the model's end-of-sequence ids always stop).
    #[arg(long = "stop-token")]
    stop_tokens: Vec<u32>,
    /// Weight precision in memory.
    #[arg(long, default_value = "bf16")]
    dtype: DType,
    /// Compute threads (default: all cores, or VEIL_THREADS).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object per generated token instead of plain text.
    #[arg(long)]
    json: bool,
    /// With --json, include this many top log-probabilities per token.
    #[arg(long, default_value_t = 0)]
    logprobs: usize,
    #[command(flatten)]
    model: ModelArg,
}

pub(crate) fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let mut model = load_model(&a.model.model, a.dtype, a.threads)?;
    let text = if a.chat || a.system.is_some() {
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(ChatMessage::new("system", s));
        }
        messages.push(ChatMessage::new("user", &a.prompt));
        model.tokenizer.apply_chat_template(&messages)?
    } else {
        a.prompt.clone()
    };
    let prompt = model.tokenizer.encode(&text)?;
    let req = GenerateRequest {
        prompt,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repetition_penalty: a.repetition_penalty,
            presence_penalty: a.presence_penalty,
            frequency_penalty: a.frequency_penalty,
            seed: a.seed,
        },
        stop: StopConditions {
            max_tokens: a.max_tokens,
            stop_token_ids: a.stop_tokens.clone(),
            stop_strings: a.stop.clone(),
        },
        logprobs: (a.json && a.logprobs > 0).then_some(a.logprobs),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_err = None;
    let stats = generate(&mut model, &req, &mut |ev| {
        let r = if a.json {
            let mut obj = serde_json::json!({ "id": ev.id, "text": ev.text });
            if a.logprobs > 0 {
                obj["logprob"] = serde_json::json!(ev.logprob);
                obj["top_logprobs"] = ev
                    .top_logprobs
                    .iter()
                    .map(|t| serde_json::json!({ "id": t.id, "logprob": t.logprob }))
                    .collect();
            }
            writeln!(out, "{obj}")
        } else {
            write!(out, "{}", ev.text).and_then(|()| out.flush())
        };
        match r {
            Ok(()) => true,
            Err(e) => {
                write_err = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = write_err {
        return Err(e).context("writing to stdout");
    }
    if !a.json {
        writeln!(out)?;
    }
    let prefill = stats.prefill_time.as_secs_f64();
    let decode = stats.decode_time.as_secs_f64();
    let decoded = stats.completion_tokens.saturating_sub(1);
    eprintln!(
        "prompt: {} tokens in {:.3}s ({:.1} tok/s); generation: {} tokens, {:.1} tok/s; finish: {}",
        stats.prompt_tokens,
        prefill,
        stats.prompt_tokens as f64 / prefill.max(1e-9),
        stats.completion_tokens,
        if decode > 0.0 {
            decoded as f64 / decode
        } else {
            0.0
        },
        stats.finish_reason.name()
    );
    Ok(())
}
