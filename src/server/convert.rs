//! Protocol messages ⇄ engine types, and request validation errors ⇄ gRPC statuses.
//!
//! The engine validates every field of a request ([`RuntimeHandle::submit`]) and names the
//! offending field with its own short name (`temperature`, `messages.role`, ...); this module
//! turns that name into the field's path in `veil/v1/inference.proto` (`params.temperature`,
//! `items[3].chat.messages.role`, ...) so that INVALID_ARGUMENT messages point at the field the
//! client set.
//!
//! [`RuntimeHandle::submit`]: veil_engine::runtime::RuntimeHandle::submit

use std::time::Duration;

use tonic::Status;
use tonic::metadata::MetadataMap;
use veil_engine::output::StopConditions;
use veil_engine::runtime::{self, FinishReason, Prompt, SubmitError, TokenEvent, Usage};
use veil_engine::sampling::SamplingParams;
use veil_engine::tokenizer::ChatMessage;
use veil_proto::v1;

/// Sampling temperature when `params.temperature` is absent (sample from the model's
/// distribution, as most LLM APIs do; 0 asks for greedy decoding).
pub(crate) const DEFAULT_TEMPERATURE: f32 = 1.0;

/// Which of the input's variants a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InputKind {
    /// `prompt`: plain text.
    Prompt,
    /// `chat`: messages with the chat template.
    Chat,
    /// `tokens`: raw token ids.
    Tokens,
}

impl InputKind {
    /// A short name for logs and metrics.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Prompt => "prompt",
            Self::Chat => "chat",
            Self::Tokens => "tokens",
        }
    }

    /// The proto path of the input field.
    fn path(self) -> &'static str {
        match self {
            Self::Prompt => "prompt",
            Self::Chat => "chat.messages",
            Self::Tokens => "tokens.token_ids",
        }
    }
}

/// Where a request sits in the call, to name its fields in error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Site<'a> {
    /// A `Generate` call: the request is the call's message.
    Single,
    /// Item `index` of a `GenerateBatch` call, whose own parameters are `item_params`.
    BatchItem {
        /// The item's index in `items`.
        index: usize,
        /// The item's own `params` (fields set here override the shared ones).
        item_params: Option<&'a v1::GenerationParams>,
    },
}

impl Site<'_> {
    /// The path prefix of the request's fields: "" or "items[3].".
    fn prefix(&self) -> String {
        match self {
            Site::Single => String::new(),
            Site::BatchItem { index, .. } => format!("items[{index}]."),
        }
    }

    /// The proto path of parameter `field`: the item's own when the item set it, else the
    /// call's (shared) `params`.
    fn param_path(&self, field: &str) -> String {
        match self {
            Site::Single => format!("params.{field}"),
            Site::BatchItem { index, item_params } => {
                if item_params.is_some_and(|p| param_is_set(p, field)) {
                    format!("items[{index}].params.{field}")
                } else {
                    format!("params.{field}")
                }
            }
        }
    }
}

/// Whether `field` (a `GenerationParams` field name) is set in `p`.
fn param_is_set(p: &v1::GenerationParams, field: &str) -> bool {
    match field {
        "temperature" => p.temperature.is_some(),
        "top_k" => p.top_k.is_some(),
        "top_p" => p.top_p.is_some(),
        "min_p" => p.min_p.is_some(),
        "repetition_penalty" => p.repetition_penalty.is_some(),
        "presence_penalty" => p.presence_penalty.is_some(),
        "frequency_penalty" => p.frequency_penalty.is_some(),
        "seed" => p.seed.is_some(),
        "max_tokens" => p.max_tokens.is_some(),
        "stop" => !p.stop.is_empty(),
        "stop_token_ids" => !p.stop_token_ids.is_empty(),
        "logprobs" => p.logprobs.is_some(),
        "top_logprobs" => p.top_logprobs.is_some(),
        _ => false,
    }
}

/// A request converted for the engine, with what is needed to report on it.
#[derive(Debug)]
pub(crate) struct Converted {
    /// The engine request.
    pub(crate) request: runtime::Request,
    /// Which input variant it came from.
    pub(crate) kind: InputKind,
}

/// The `INVALID_ARGUMENT` status for the field at `path`.
pub(crate) fn invalid(path: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{path}: {message}"))
}

/// `item`'s parameters laid over `shared`, field by field (lists: a non-empty item list wins).
pub(crate) fn merge_params(
    shared: Option<&v1::GenerationParams>,
    item: Option<&v1::GenerationParams>,
) -> v1::GenerationParams {
    let base = shared.cloned().unwrap_or_default();
    let Some(it) = item else { return base };
    v1::GenerationParams {
        temperature: it.temperature.or(base.temperature),
        top_k: it.top_k.or(base.top_k),
        top_p: it.top_p.or(base.top_p),
        min_p: it.min_p.or(base.min_p),
        repetition_penalty: it.repetition_penalty.or(base.repetition_penalty),
        presence_penalty: it.presence_penalty.or(base.presence_penalty),
        frequency_penalty: it.frequency_penalty.or(base.frequency_penalty),
        seed: it.seed.or(base.seed),
        max_tokens: it.max_tokens.or(base.max_tokens),
        stop: if it.stop.is_empty() {
            base.stop
        } else {
            it.stop.clone()
        },
        stop_token_ids: if it.stop_token_ids.is_empty() {
            base.stop_token_ids
        } else {
            it.stop_token_ids.clone()
        },
        logprobs: it.logprobs.or(base.logprobs),
        top_logprobs: it.top_logprobs.or(base.top_logprobs),
    }
}

/// Converts one request (its input and its effective parameters `params`) into an engine
/// request. Only the structure is checked here (an input must be set); the engine checks every
/// value when the request is submitted, and [`submit_error`] names the field.
pub(crate) fn to_engine(
    input: Option<&v1::generate_request::Input>,
    params: &v1::GenerationParams,
    site: Site<'_>,
    context_length: usize,
    deadline: Option<std::time::Instant>,
) -> Result<Converted, Status> {
    use v1::generate_request::Input;
    let (prompt, kind) = match input {
        None => {
            return Err(invalid(
                &format!("{}input", site.prefix()),
                "is not set (set one of prompt, chat or tokens)",
            ));
        }
        Some(Input::Prompt(text)) => (Prompt::Text(text.clone()), InputKind::Prompt),
        Some(Input::Chat(chat)) => (
            Prompt::Chat(
                chat.messages
                    .iter()
                    .map(|m| ChatMessage::new(&m.role, &m.content))
                    .collect(),
            ),
            InputKind::Chat,
        ),
        Some(Input::Tokens(t)) => (Prompt::Tokens(t.token_ids.clone()), InputKind::Tokens),
    };
    let top_logprobs = params.top_logprobs.unwrap_or(0) as usize;
    let sampling = SamplingParams {
        temperature: params.temperature.unwrap_or(DEFAULT_TEMPERATURE),
        top_k: params.top_k.unwrap_or(0) as usize,
        top_p: params.top_p.unwrap_or(1.0),
        min_p: params.min_p.unwrap_or(0.0),
        repetition_penalty: params.repetition_penalty.unwrap_or(1.0),
        presence_penalty: params.presence_penalty.unwrap_or(0.0),
        frequency_penalty: params.frequency_penalty.unwrap_or(0.0),
        seed: params.seed,
    };
    let stop = StopConditions {
        // Absent: until the context is full (the engine stops at the context's end).
        max_tokens: params.max_tokens.map_or(context_length, |n| n as usize),
        stop_token_ids: params.stop_token_ids.clone(),
        stop_strings: params.stop.clone(),
    };
    Ok(Converted {
        request: runtime::Request {
            prompt,
            sampling,
            stop,
            logprobs: params.logprobs.unwrap_or(false) || top_logprobs > 0,
            top_logprobs,
            deadline,
        },
        kind,
    })
}

/// The proto path of an engine field name, for a request of `kind` at `site`.
pub(crate) fn field_path(engine_field: &str, kind: InputKind, site: Site<'_>) -> String {
    let prefix = site.prefix();
    match engine_field {
        "prompt" => format!("{prefix}{}", kind.path()),
        "messages" => format!("{prefix}chat.messages"),
        "messages.role" => format!("{prefix}chat.messages.role"),
        "messages.content" => format!("{prefix}chat.messages.content"),
        "token_ids" => format!("{prefix}tokens.token_ids"),
        "input" => format!("{prefix}input"),
        param => site.param_path(param),
    }
}

/// The gRPC status for a refused submission.
pub(crate) fn submit_error(e: &SubmitError, kind: InputKind, site: Site<'_>) -> Status {
    match e {
        SubmitError::Invalid { field, message } | SubmitError::TooLarge { field, message } => {
            invalid(&field_path(field, kind, site), message)
        }
        SubmitError::QueueFull(message) => {
            Status::resource_exhausted(format!("the server's request queue is full: {message}"))
        }
        SubmitError::ShuttingDown => Status::unavailable("the server is shutting down"),
        SubmitError::EngineFailed => Status::unavailable(
            "the inference engine failed and this server no longer serves (health: NOT_SERVING); \
             retry on another server",
        ),
    }
}

/// The short name of a refused submission's status, for metrics.
pub(crate) fn submit_error_code(e: &SubmitError) -> &'static str {
    match e {
        SubmitError::Invalid { .. } | SubmitError::TooLarge { .. } => "invalid_argument",
        SubmitError::QueueFull(_) => "resource_exhausted",
        SubmitError::ShuttingDown | SubmitError::EngineFailed => "unavailable",
    }
}

/// A generated token as a proto `Token`.
pub(crate) fn token(ev: &TokenEvent) -> v1::Token {
    v1::Token {
        id: ev.id,
        logprob: ev.logprob,
        top_logprobs: ev
            .top_logprobs
            .iter()
            .map(|t| v1::TokenLogprob {
                id: t.id,
                logprob: t.logprob,
            })
            .collect(),
    }
}

/// A generated token as a `Generate` stream message.
pub(crate) fn delta(ev: TokenEvent) -> v1::GenerateResponse {
    let tok = token(&ev);
    v1::GenerateResponse {
        event: Some(v1::generate_response::Event::Delta(v1::Delta {
            text: ev.text,
            tokens: vec![tok],
        })),
    }
}

/// The proto finish reason. `DeadlineExceeded` never reaches clients as a reason (the call ends
/// with status DEADLINE_EXCEEDED), so it maps to `Cancelled` defensively.
pub(crate) fn finish_reason(r: FinishReason) -> v1::FinishReason {
    match r {
        FinishReason::Stop => v1::FinishReason::Stop,
        FinishReason::Length => v1::FinishReason::Length,
        FinishReason::Cancelled | FinishReason::DeadlineExceeded => v1::FinishReason::Cancelled,
        FinishReason::Error => v1::FinishReason::Error,
    }
}

/// Usage as a proto message.
pub(crate) fn usage(u: &Usage) -> v1::Usage {
    v1::Usage {
        prompt_tokens: saturate(u.prompt_tokens),
        completion_tokens: saturate(u.completion_tokens),
        time_to_first_token_seconds: u.time_to_first_token.map(|d| d.as_secs_f64()),
        time_per_output_token_seconds: u.time_per_output_token.map(|d| d.as_secs_f64()),
    }
}

/// The final message of a generation.
pub(crate) fn finished(f: &runtime::Finished) -> v1::Finished {
    v1::Finished {
        reason: finish_reason(f.reason) as i32,
        error: f.error.clone().unwrap_or_default(),
        usage: Some(usage(&f.usage)),
    }
}

/// A `usize` as a `u32` field, saturating.
pub(crate) fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The call's deadline from the `grpc-timeout` header ("<up to 8 digits><H|M|S|m|u|n>").
pub(crate) fn grpc_timeout(meta: &MetadataMap) -> Option<Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let split = v.len().checked_sub(1)?;
    let (digits, unit) = v.split_at(split);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse() {
        let mut m = MetadataMap::new();
        assert_eq!(grpc_timeout(&m), None);
        for (v, d) in [
            ("100m", Duration::from_millis(100)),
            ("2S", Duration::from_secs(2)),
            ("1H", Duration::from_secs(3600)),
            ("5M", Duration::from_secs(300)),
            ("7u", Duration::from_micros(7)),
            ("9n", Duration::from_nanos(9)),
        ] {
            m.insert("grpc-timeout", v.parse().expect("ascii"));
            assert_eq!(grpc_timeout(&m), Some(d), "{v}");
        }
        for bad in ["", "m", "123456789m", "10x", "-1S"] {
            m.insert("grpc-timeout", bad.parse().expect("ascii"));
            assert_eq!(grpc_timeout(&m), None, "{bad:?}");
        }
    }

    #[test]
    fn defaults_when_params_are_absent() {
        let input = v1::generate_request::Input::Prompt("hi".into());
        let c = to_engine(
            Some(&input),
            &v1::GenerationParams::default(),
            Site::Single,
            2048,
            None,
        )
        .expect("converts");
        assert_eq!(c.kind, InputKind::Prompt);
        let r = c.request;
        assert_eq!(r.sampling.temperature, DEFAULT_TEMPERATURE);
        assert_eq!(r.sampling.top_p, 1.0);
        assert_eq!(r.sampling.repetition_penalty, 1.0);
        assert_eq!(r.sampling.seed, None);
        assert_eq!(r.stop.max_tokens, 2048);
        assert!(!r.logprobs);
        assert_eq!(r.top_logprobs, 0);
    }

    #[test]
    fn top_logprobs_implies_logprobs_and_missing_input_is_named() {
        let input = v1::generate_request::Input::Tokens(v1::TokenInput {
            token_ids: vec![1, 2],
        });
        let p = v1::GenerationParams {
            top_logprobs: Some(3),
            temperature: Some(0.0),
            ..Default::default()
        };
        let r = to_engine(Some(&input), &p, Site::Single, 100, None)
            .expect("converts")
            .request;
        assert!(r.logprobs);
        assert_eq!(r.top_logprobs, 3);
        assert_eq!(r.sampling.temperature, 0.0);
        let e = to_engine(
            None,
            &p,
            Site::BatchItem {
                index: 4,
                item_params: None,
            },
            100,
            None,
        )
        .expect_err("no input");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("items[4].input:"), "{}", e.message());
    }

    #[test]
    fn item_params_override_shared_ones_field_by_field() {
        let shared = v1::GenerationParams {
            temperature: Some(0.5),
            max_tokens: Some(10),
            stop: vec!["a".into()],
            ..Default::default()
        };
        let item = v1::GenerationParams {
            max_tokens: Some(3),
            stop_token_ids: vec![7],
            ..Default::default()
        };
        let m = merge_params(Some(&shared), Some(&item));
        assert_eq!(m.temperature, Some(0.5));
        assert_eq!(m.max_tokens, Some(3));
        assert_eq!(m.stop, vec!["a".to_owned()]);
        assert_eq!(m.stop_token_ids, vec![7]);
        assert_eq!(merge_params(None, None), v1::GenerationParams::default());
    }

    #[test]
    fn engine_fields_become_proto_paths() {
        let item = v1::GenerationParams {
            top_p: Some(2.0),
            ..Default::default()
        };
        let site = Site::BatchItem {
            index: 2,
            item_params: Some(&item),
        };
        assert_eq!(
            field_path("top_p", InputKind::Prompt, site),
            "items[2].params.top_p"
        );
        assert_eq!(
            field_path("temperature", InputKind::Prompt, site),
            "params.temperature"
        );
        assert_eq!(
            field_path("prompt", InputKind::Chat, site),
            "items[2].chat.messages"
        );
        assert_eq!(
            field_path("prompt", InputKind::Tokens, Site::Single),
            "tokens.token_ids"
        );
        assert_eq!(
            field_path("messages.role", InputKind::Chat, Site::Single),
            "chat.messages.role"
        );
        assert_eq!(
            field_path("token_ids", InputKind::Tokens, Site::Single),
            "tokens.token_ids"
        );
        assert_eq!(
            field_path("max_tokens", InputKind::Prompt, Site::Single),
            "params.max_tokens"
        );
        let s = submit_error(
            &SubmitError::Invalid {
                field: "temperature",
                message: "must be in [0, 100]".into(),
            },
            InputKind::Prompt,
            Site::Single,
        );
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(s.message(), "params.temperature: must be in [0, 100]");
        let s = submit_error(
            &SubmitError::QueueFull("full".into()),
            InputKind::Prompt,
            Site::Single,
        );
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        let s = submit_error(&SubmitError::ShuttingDown, InputKind::Prompt, Site::Single);
        assert_eq!(s.code(), tonic::Code::Unavailable);
    }
}
