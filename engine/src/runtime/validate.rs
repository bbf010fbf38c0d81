//! Request validation and tokenization, on the caller's thread.

use super::{ModelInfo, Prompt, Request, SubmitError};
use crate::tokenizer::Tokenizer;

/// Longest text accepted in one request (prompt or all messages together).
pub(crate) const MAX_INPUT_BYTES: usize = 1 << 20;
/// Most stop strings per request.
pub(crate) const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string.
pub(crate) const MAX_STOP_BYTES: usize = 256;
/// Most alternatives per token.
pub(crate) const MAX_TOP_LOGPROBS: usize = 20;
/// Roles a chat message may have.
pub(crate) const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// A request that passed validation.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) prompt: Vec<u32>,
    /// Prompt plus output may not exceed this many positions.
    pub(crate) max_total: usize,
    /// The request's stop ids plus the model's end-of-sequence ids.
    pub(crate) stop_token_ids: Vec<u32>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> SubmitError {
    SubmitError::Invalid {
        field,
        message: message.into(),
    }
}

/// Checks every field, tokenizes the input and checks it fits the context and the KV cache.
pub(crate) fn prepare(req: &Request, tok: &Tokenizer, info: &ModelInfo) -> Result<Prepared, SubmitError> {
    req.sampling.check().map_err(|e| invalid(e.field, e.message))?;
    let ctx = info.context_length;
    if req.stop.max_tokens == 0 {
        return Err(invalid("max_tokens", "must be at least 1"));
    }
    if req.stop.max_tokens > ctx {
        return Err(invalid(
            "max_tokens",
            format!("{} exceeds the model's context of {ctx}", req.stop.max_tokens),
        ));
    }
    if req.stop.stop_strings.len() > MAX_STOP_STRINGS {
        return Err(invalid(
            "stop",
            format!("at most {MAX_STOP_STRINGS} stop strings"),
        ));
    }
    if req
        .stop
        .stop_strings
        .iter()
        .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(invalid(
            "stop",
            format!("stop strings must be 1 to {MAX_STOP_BYTES} bytes"),
        ));
    }
    if let Some(bad) = req
        .stop
        .stop_token_ids
        .iter()
        .find(|&&t| t as usize >= info.vocab_size)
    {
        return Err(invalid(
            "stop_token_ids",
            format!("{bad} is outside the vocabulary of {}", info.vocab_size),
        ));
    }
    if req.top_logprobs > MAX_TOP_LOGPROBS {
        return Err(invalid("top_logprobs", format!("at most {MAX_TOP_LOGPROBS}")));
    }
    let prompt = match &req.prompt {
        Prompt::Text(text) => {
            if text.is_empty() {
                return Err(invalid("prompt", "is empty"));
            }
            if text.len() > MAX_INPUT_BYTES {
                return Err(SubmitError::TooLarge {
                    field: "prompt",
                    message: format!("more than {MAX_INPUT_BYTES} bytes"),
                });
            }
            tok.encode(text).map_err(|e| invalid("prompt", e.to_string()))?
        }
        Prompt::Chat(messages) => {
            if messages.is_empty() {
                return Err(invalid("messages", "is empty"));
            }
            if let Some(m) = messages.iter().find(|m| !ROLES.contains(&m.role.as_str())) {
                return Err(invalid(
                    "messages.role",
                    format!("unknown role {:?} (expected one of {ROLES:?})", m.role),
                ));
            }
            let bytes: usize = messages.iter().map(|m| m.content.len()).sum();
            if bytes > MAX_INPUT_BYTES {
                return Err(SubmitError::TooLarge {
                    field: "messages",
                    message: format!("more than {MAX_INPUT_BYTES} bytes"),
                });
            }
            // The rendered conversation is wiped once tokenized.
            let text = zeroize::Zeroizing::new(
                tok.apply_chat_template(messages)
                    .map_err(|e| invalid("messages", e.to_string()))?,
            );
            tok.encode(&text)
                .map_err(|e| invalid("messages", e.to_string()))?
        }
        Prompt::Tokens(ids) => {
            if ids.is_empty() {
                return Err(invalid("token_ids", "is empty"));
            }
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= info.vocab_size) {
                return Err(invalid(
                    "token_ids",
                    format!("{bad} is outside the vocabulary of {}", info.vocab_size),
                ));
            }
            ids.clone()
        }
    };
    if prompt.is_empty() {
        return Err(invalid("prompt", "tokenizes to nothing"));
    }
    if prompt.len() >= ctx {
        return Err(SubmitError::TooLarge {
            field: "prompt",
            message: format!("{} tokens; the model's context is {ctx}", prompt.len()),
        });
    }
    // A generation stops at the context or when it would need more KV blocks than the whole
    // cache holds ("length"); only a prompt that cannot fit at all is refused.
    let kv_positions = info.kv_cache_blocks * info.block_size;
    if prompt.len() >= kv_positions {
        return Err(SubmitError::TooLarge {
            field: "prompt",
            message: format!(
                "{} tokens; the KV cache holds {kv_positions} positions",
                prompt.len()
            ),
        });
    }
    let max_total = (prompt.len() + req.stop.max_tokens).min(ctx).min(kv_positions);
    let mut stop_token_ids = req.stop.stop_token_ids.clone();
    stop_token_ids.extend(
        info.eos_token_ids
            .iter()
            .filter(|id| !req.stop.stop_token_ids.contains(id)),
    );
    Ok(Prepared {
        prompt,
        max_total,
        stop_token_ids,
    })
}
