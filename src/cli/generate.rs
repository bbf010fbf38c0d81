//! `veil generate`: one prompt, streamed to stdout, throughput to stderr.
//!
//! Runs the model in this process, or, with `--server`, on a running server through a sealed
//! call to the attested engine (see [`super::remote`]); `--receipt FILE` then keeps the signed
//! receipt with the attestation bundle that proves its key.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use veil_engine::backend::DType;
use veil_engine::generate::{GenerateRequest, generate};
use veil_engine::output::StopConditions;
use veil_engine::sampling::SamplingParams;
use veil_engine::tokenizer::ChatMessage;
use veil_proto::v1;
use veil_proto::v1::generate_request::Input;

use super::model::{ModelArg, load_model};
use super::remote::{Remote, RemoteArgs};

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
    /// Generate on this running server instead of loading the model here: URL or HOST:PORT.
    /// The request is sealed to the attested engine.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// With --server: the attestation policy the server must satisfy (TOML) [default: strict].
    #[arg(long, value_name = "FILE", requires = "server")]
    policy: Option<PathBuf>,
    /// With --server: send the request in plaintext (NOT confidential).
    #[arg(long, requires = "server", conflicts_with_all = ["policy", "receipt"])]
    plaintext: bool,
    /// With --server: the server is a gateway in front of several replicas; list them, verify
    /// each, and seal the request to one that verified.
    #[arg(long, requires = "server", conflicts_with = "plaintext")]
    discover: bool,
    /// With --server: save the verified receipt, with the attestation bundle, as JSON.
    #[arg(long, value_name = "FILE", requires = "server")]
    receipt: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArg,
}

pub(crate) fn run(a: GenerateArgs) -> anyhow::Result<()> {
    if let Some(server) = &a.server {
        let remote = RemoteArgs {
            server: server.clone(),
            policy: a.policy.clone(),
            plaintext: a.plaintext,
            discover: a.discover,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        return rt.block_on(run_remote(&a, &remote));
    }
    let mut model = load_model(&a.model, a.dtype, a.threads, None)?;
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

/// The request `veil generate --server` sends.
fn remote_request(a: &GenerateArgs) -> anyhow::Result<v1::GenerateRequest> {
    let input = if a.chat || a.system.is_some() {
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(v1::ChatMessage {
                role: "system".into(),
                content: s.clone(),
            });
        }
        messages.push(v1::ChatMessage {
            role: "user".into(),
            content: a.prompt.clone(),
        });
        Input::Chat(v1::ChatInput { messages })
    } else {
        Input::Prompt(a.prompt.clone())
    };
    let top_logprobs = u32::try_from(a.logprobs).context("--logprobs is too large")?;
    Ok(v1::GenerateRequest {
        input: Some(input),
        params: Some(v1::GenerationParams {
            temperature: Some(a.temperature),
            top_k: Some(u32::try_from(a.top_k).context("--top-k is too large")?),
            top_p: Some(a.top_p),
            min_p: Some(a.min_p),
            repetition_penalty: Some(a.repetition_penalty),
            presence_penalty: Some(a.presence_penalty),
            frequency_penalty: Some(a.frequency_penalty),
            seed: a.seed,
            max_tokens: Some(u32::try_from(a.max_tokens).context("--max-tokens is too large")?),
            stop: a.stop.clone(),
            stop_token_ids: a.stop_tokens.clone(),
            logprobs: Some(a.json && a.logprobs > 0),
            top_logprobs: Some(if a.json { top_logprobs } else { 0 }),
        }),
    })
}

/// `veil generate --server`: one sealed (or, when asked, plaintext) call.
async fn run_remote(a: &GenerateArgs, remote: &RemoteArgs) -> anyhow::Result<()> {
    let req = remote_request(a)?;
    let mut conn = Remote::connect(remote).await?;
    let stdout = std::io::stdout();
    let ended = conn
        .generate(&req, |d| {
            let mut out = stdout.lock();
            if a.json {
                // One object per delta: its text and the tokens that produced it.
                let tokens: Vec<_> = d
                    .tokens
                    .iter()
                    .map(|t| {
                        let mut obj = serde_json::json!({ "id": t.id });
                        if let Some(lp) = t.logprob {
                            obj["logprob"] = serde_json::json!(lp);
                            obj["top_logprobs"] = t
                                .top_logprobs
                                .iter()
                                .map(|c| serde_json::json!({ "id": c.id, "logprob": c.logprob }))
                                .collect();
                        }
                        obj
                    })
                    .collect();
                writeln!(out, "{}", serde_json::json!({ "text": d.text, "tokens": tokens }))
            } else {
                write!(out, "{}", d.text).and_then(|()| out.flush())
            }
            .context("writing to stdout")
        })
        .await?;
    if !a.json {
        writeln!(stdout.lock()).context("writing to stdout")?;
    }
    let f = &ended.finished;
    let reason = v1::FinishReason::try_from(f.reason).map_or("unknown", |r| r.as_str_name());
    if let Some(u) = &f.usage {
        let ms = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{:.1} ms", s * 1e3));
        eprintln!(
            "prompt: {} tokens; generation: {} tokens, first token after {}, {} per token; finish: {reason}",
            u.prompt_tokens,
            u.completion_tokens,
            ms(u.time_to_first_token_seconds),
            ms(u.time_per_output_token_seconds),
        );
    }
    if !f.error.is_empty() {
        anyhow::bail!("generation failed: {}", f.error);
    }
    if let Some(r) = &ended.receipt {
        eprintln!(
            "receipt verified: request {} response {} model {} bundle {}, signed by {}",
            hex::encode(r.claims.request_digest),
            hex::encode(r.claims.response_digest),
            hex::encode(r.claims.model_digest),
            hex::encode(r.claims.bundle_digest),
            hex::encode(r.public_key)
        );
        if let (Some(path), Some(bundle)) = (&a.receipt, &ended.bundle) {
            let doc = serde_json::json!({
                "request_digest": hex::encode(r.claims.request_digest),
                "response_digest": hex::encode(r.claims.response_digest),
                "model_digest": hex::encode(r.claims.model_digest),
                "bundle_digest": hex::encode(r.claims.bundle_digest),
                "signature": hex::encode(r.signature),
                "receipt_public_key": hex::encode(r.public_key),
                "bundle": hex::encode(bundle),
            });
            std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("receipt saved to {}", path.display());
        }
    }
    Ok(())
}
