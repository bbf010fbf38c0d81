//! Every RPC field at its edge and past it, against the real `veil serve` (simulated
//! attestation, f32, plaintext RPCs on), while another client's long plaintext stream runs.
//!
//! For `Generate`, `GenerateBatch`, `SealedGenerate`, `SealedGenerateBatch`, `GetAttestation`
//! and `ModelInfo`: empty, huge, negative, NaN and infinite values; bytes that are not UTF-8
//! where a string is expected, fields of the wrong wire type, truncated and deeply nested
//! messages (raw protobuf through a pass-through codec); wrong lengths of `nonce`, `key_id`,
//! `bundle_digest` and `encapsulated_key`; `max_tokens` 0, at and past the context;
//! `top_logprobs` 20 and 21; 16 and 17 stop strings of 256 and 257 bytes; `max_batch_items` and
//! one more; messages at `max_request_bytes` and one byte past it. Values at the edge are
//! accepted and run; values past it are INVALID_ARGUMENT whose message starts with the field's
//! path (OUT_OF_RANGE for a message over the size limit, as the API documents). Sealed calls:
//! malformed wire fields are plain statuses; everything inside the opened request fails sealed
//! with the same code and path. Meanwhile the long stream gives exactly the tokens it gives
//! alone, and at the end the server still answers ModelInfo and its health check.
//!
//! `tests/server.rs` covers the first invalid value of each field; this file covers the edges
//! around them and the transport's own decoding.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use common::server::Server;
use prost::Message;
use prost::bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};
use veil_client::{Client, ClientError, OpenedChunk, Policy, SealedRpc};
use veil_proto::v1::generate_request::Input;
use veil_proto::v1::inference_client::InferenceClient;
use veil_proto::v1::sealed_payload::Body;
use veil_proto::v1::{self, GenerateBatchRequest, GenerateRequest, GenerationParams, SealedRequest};

/// The model's context length and vocabulary size.
const CONTEXT: u32 = 8192;
const VOCAB: u32 = 49152;
/// The server's defaults.
const MAX_REQUEST_BYTES: usize = 8 << 20;
const MAX_BATCH_ITEMS: usize = 4096;

// ---------------------------------------------------------------------------------------------
// Raw protobuf over gRPC

/// A codec that sends and receives message bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// Calls a server-streaming RPC with raw request bytes; returns the raw messages.
async fn raw_stream(channel: &Channel, rpc: &'static str, body: Vec<u8>) -> Result<Vec<Vec<u8>>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone()).max_decoding_message_size(64 << 20);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = PathAndQuery::from_static(rpc);
    let mut stream = grpc
        .server_streaming(tonic::Request::new(body), path, Raw)
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.push(m);
    }
    Ok(out)
}

/// Calls a unary RPC with raw request bytes.
async fn raw_unary(channel: &Channel, rpc: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone()).max_decoding_message_size(64 << 20);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = PathAndQuery::from_static(rpc);
    Ok(grpc
        .unary(tonic::Request::new(body), path, Raw)
        .await?
        .into_inner())
}

const GENERATE: &str = "/veil.v1.Inference/Generate";
const GENERATE_BATCH: &str = "/veil.v1.Inference/GenerateBatch";
const MODEL_INFO: &str = "/veil.v1.Inference/ModelInfo";
const GET_ATTESTATION: &str = "/veil.v1.Inference/GetAttestation";

/// A length-delimited field.
fn ld(field: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// A varint field.
fn varint(field: u32, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(field, prost::encoding::WireType::Varint, &mut out);
    prost::encoding::encode_varint(v, &mut out);
    out
}

/// Not UTF-8.
const BAD_UTF8: &[u8] = b"ok \xff\xfe \xc3";

// ---------------------------------------------------------------------------------------------
// Typed calls

fn greedy(max_tokens: u32) -> GenerationParams {
    GenerationParams {
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..Default::default()
    }
}

fn prompt(text: &str, params: GenerationParams) -> GenerateRequest {
    GenerateRequest {
        input: Some(Input::Prompt(text.into())),
        params: Some(params),
    }
}

fn chat(messages: &[(&str, &str)], params: GenerationParams) -> GenerateRequest {
    GenerateRequest {
        input: Some(Input::Chat(v1::ChatInput {
            messages: messages
                .iter()
                .map(|(role, content)| v1::ChatMessage {
                    role: (*role).into(),
                    content: (*content).into(),
                })
                .collect(),
        })),
        params: Some(params),
    }
}

fn tokens(ids: &[u32], params: GenerationParams) -> GenerateRequest {
    GenerateRequest {
        input: Some(Input::Tokens(v1::TokenInput {
            token_ids: ids.to_vec(),
        })),
        params: Some(params),
    }
}

/// One short request with `f` applied to greedy one-token parameters.
fn with(f: impl FnOnce(&mut GenerationParams)) -> GenerateRequest {
    let mut p = greedy(1);
    f(&mut p);
    prompt("Hello", p)
}

/// A finished generation.
#[derive(Debug)]
struct Completion {
    tokens: Vec<v1::Token>,
    finished: v1::Finished,
}

impl Completion {
    fn ids(&self) -> Vec<u32> {
        self.tokens.iter().map(|t| t.id).collect()
    }
}

/// Drains a `Generate` stream: deltas, then exactly one final message.
async fn drain(mut stream: tonic::Streaming<v1::GenerateResponse>) -> Result<Completion, Status> {
    let mut tokens = Vec::new();
    while let Some(msg) = stream.message().await? {
        match msg.event.expect("an event") {
            v1::generate_response::Event::Delta(d) => tokens.extend(d.tokens),
            v1::generate_response::Event::Finished(finished) => {
                assert!(
                    stream.message().await?.is_none(),
                    "nothing after the final message"
                );
                return Ok(Completion { tokens, finished });
            }
        }
    }
    panic!("the stream ended without a final message");
}

async fn generate(client: &mut InferenceClient<Channel>, req: GenerateRequest) -> Result<Completion, Status> {
    drain(client.generate(req).await?.into_inner()).await
}

/// Runs a batch to its end; the first error status, if any.
async fn batch(client: &mut InferenceClient<Channel>, req: GenerateBatchRequest) -> Result<usize, Status> {
    let mut stream = client.generate_batch(req).await?.into_inner();
    let mut n = 0;
    while stream.message().await?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// What a case must give.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Runs to its final message.
    Runs,
    /// Starts streaming (the first delta is checked, then the call is dropped).
    Starts,
    /// Refused with this code, the message starting with `PATH: `.
    Refused(Code, &'static str),
}

/// Checks a refusal: the code, and the message starting with `path: `.
#[track_caller]
fn check_refusal(label: &str, s: &Status, code: Code, path: &str) {
    assert_eq!(s.code(), code, "{label}: {s:?}");
    if code == Code::OutOfRange {
        return; // The transport's size limit names no field.
    }
    assert!(
        s.message().starts_with(&format!("{path}: ")),
        "{label}: expected the message to start with {path:?}: {:?}",
        s.message()
    );
}

/// Counts of what the cases checked, printed at the end.
#[derive(Debug, Default)]
struct Tally {
    refused: usize,
    accepted: usize,
}

async fn check_generate_cases(client: &mut InferenceClient<Channel>, tally: &mut Tally) {
    use Want::{Refused, Runs, Starts};
    let bad = |path: &'static str| Refused(Code::InvalidArgument, path);
    let stops = |n: usize, len: usize| -> Vec<String> { (0..n).map(|i| format!("{i:0>len$}")).collect() };
    let cases: Vec<(&str, GenerateRequest, Want)> = vec![
        // temperature in [0, 100]
        ("temperature 0", with(|p| p.temperature = Some(0.0)), Runs),
        ("temperature -0", with(|p| p.temperature = Some(-0.0)), Runs),
        ("temperature 100", with(|p| p.temperature = Some(100.0)), Runs),
        // The smallest denormal: greedy (the CPU backend's threads flush denormals to zero;
        // elsewhere the sampler takes a temperature whose reciprocal overflows as greedy).
        (
            "temperature denormal",
            with(|p| p.temperature = Some(f32::from_bits(1))),
            Runs,
        ),
        (
            "temperature smallest normal, sampled",
            with(|p| {
                p.temperature = Some(f32::MIN_POSITIVE);
                p.seed = Some(1);
                p.top_logprobs = Some(2);
            }),
            Runs,
        ),
        (
            "temperature past 100",
            with(|p| p.temperature = Some(100.001)),
            bad("params.temperature"),
        ),
        (
            "temperature +inf",
            with(|p| p.temperature = Some(f32::INFINITY)),
            bad("params.temperature"),
        ),
        (
            "temperature -inf",
            with(|p| p.temperature = Some(f32::NEG_INFINITY)),
            bad("params.temperature"),
        ),
        (
            "temperature min",
            with(|p| p.temperature = Some(f32::MIN)),
            bad("params.temperature"),
        ),
        // top_p in (0, 1]
        ("top_p 1", with(|p| p.top_p = Some(1.0)), Runs),
        (
            "top_p smallest normal",
            with(|p| p.top_p = Some(f32::MIN_POSITIVE)),
            Runs,
        ),
        ("top_p -0", with(|p| p.top_p = Some(-0.0)), bad("params.top_p")),
        (
            "top_p NaN",
            with(|p| p.top_p = Some(f32::NAN)),
            bad("params.top_p"),
        ),
        (
            "top_p inf",
            with(|p| p.top_p = Some(f32::INFINITY)),
            bad("params.top_p"),
        ),
        (
            "top_p past 1",
            with(|p| p.top_p = Some(1.000_000_1)),
            bad("params.top_p"),
        ),
        // top_k at most 2^20
        ("top_k 1", with(|p| p.top_k = Some(1)), Runs),
        ("top_k 2^20", with(|p| p.top_k = Some(1 << 20)), Runs),
        (
            "top_k 2^20+1",
            with(|p| p.top_k = Some((1 << 20) + 1)),
            bad("params.top_k"),
        ),
        // min_p in [0, 1]
        ("min_p 1", with(|p| p.min_p = Some(1.0)), Runs),
        ("min_p -0", with(|p| p.min_p = Some(-0.0)), Runs),
        (
            "min_p NaN",
            with(|p| p.min_p = Some(f32::NAN)),
            bad("params.min_p"),
        ),
        (
            "min_p negative",
            with(|p| p.min_p = Some(-1e-7)),
            bad("params.min_p"),
        ),
        (
            "min_p past 1",
            with(|p| p.min_p = Some(1.000_000_1)),
            bad("params.min_p"),
        ),
        // repetition_penalty in (0, 10]
        (
            "repetition_penalty 10",
            with(|p| p.repetition_penalty = Some(10.0)),
            Runs,
        ),
        // Penalised logits divided by 1e-38 overflow; sampling and log-probabilities must stay
        // finite (they were NaN, and the draw picked token 0).
        (
            "repetition_penalty 1e-38, sampled",
            with(|p| {
                p.repetition_penalty = Some(1e-38);
                p.temperature = Some(1.0);
                p.seed = Some(1);
                p.top_logprobs = Some(2);
                p.max_tokens = Some(3);
            }),
            Runs,
        ),
        (
            "repetition_penalty past 10",
            with(|p| p.repetition_penalty = Some(10.000_001)),
            bad("params.repetition_penalty"),
        ),
        (
            "repetition_penalty NaN",
            with(|p| p.repetition_penalty = Some(f32::NAN)),
            bad("params.repetition_penalty"),
        ),
        (
            "repetition_penalty inf",
            with(|p| p.repetition_penalty = Some(f32::INFINITY)),
            bad("params.repetition_penalty"),
        ),
        (
            "repetition_penalty negative",
            with(|p| p.repetition_penalty = Some(-1.0)),
            bad("params.repetition_penalty"),
        ),
        // presence and frequency penalties in [-2, 2]
        (
            "presence_penalty 2",
            with(|p| p.presence_penalty = Some(2.0)),
            Runs,
        ),
        (
            "presence_penalty -2",
            with(|p| p.presence_penalty = Some(-2.0)),
            Runs,
        ),
        (
            "presence_penalty past 2",
            with(|p| p.presence_penalty = Some(2.000_000_2)),
            bad("params.presence_penalty"),
        ),
        (
            "presence_penalty NaN",
            with(|p| p.presence_penalty = Some(f32::NAN)),
            bad("params.presence_penalty"),
        ),
        (
            "presence_penalty -inf",
            with(|p| p.presence_penalty = Some(f32::NEG_INFINITY)),
            bad("params.presence_penalty"),
        ),
        (
            "frequency_penalty -2",
            with(|p| p.frequency_penalty = Some(-2.0)),
            Runs,
        ),
        (
            "frequency_penalty past -2",
            with(|p| p.frequency_penalty = Some(-2.000_000_2)),
            bad("params.frequency_penalty"),
        ),
        (
            "frequency_penalty NaN",
            with(|p| p.frequency_penalty = Some(f32::NAN)),
            bad("params.frequency_penalty"),
        ),
        (
            "frequency_penalty inf",
            with(|p| p.frequency_penalty = Some(f32::INFINITY)),
            bad("params.frequency_penalty"),
        ),
        // seed: any
        ("seed 0", with(|p| p.seed = Some(0)), Runs),
        ("seed max", with(|p| p.seed = Some(u64::MAX)), Runs),
        // max_tokens in [1, context]
        (
            "max_tokens 0",
            with(|p| p.max_tokens = Some(0)),
            bad("params.max_tokens"),
        ),
        (
            "max_tokens context",
            with(|p| p.max_tokens = Some(CONTEXT)),
            Starts,
        ),
        (
            "max_tokens context+1",
            with(|p| p.max_tokens = Some(CONTEXT + 1)),
            bad("params.max_tokens"),
        ),
        (
            "max_tokens max",
            with(|p| p.max_tokens = Some(u32::MAX)),
            bad("params.max_tokens"),
        ),
        // stop: at most 16, each 1 to 256 bytes
        ("16 stop strings", with(|p| p.stop = stops(16, 4)), Runs),
        (
            "17 stop strings",
            with(|p| p.stop = stops(17, 4)),
            bad("params.stop"),
        ),
        (
            "stop of 256 bytes",
            with(|p| p.stop = vec!["é".repeat(128)]),
            Runs,
        ),
        (
            "stop of 257 bytes",
            with(|p| p.stop = vec![format!("x{}", "é".repeat(128))]),
            bad("params.stop"),
        ),
        ("stop NUL", with(|p| p.stop = vec!["\0".into()]), Runs),
        (
            "17 empty stops",
            with(|p| p.stop = vec![String::new(); 17]),
            bad("params.stop"),
        ),
        // stop_token_ids below the vocabulary
        (
            "stop_token_ids last",
            with(|p| p.stop_token_ids = vec![VOCAB - 1]),
            Runs,
        ),
        (
            "stop_token_ids vocab",
            with(|p| p.stop_token_ids = vec![0, VOCAB]),
            bad("params.stop_token_ids"),
        ),
        (
            "stop_token_ids max",
            with(|p| p.stop_token_ids = vec![u32::MAX]),
            bad("params.stop_token_ids"),
        ),
        (
            "200k stop_token_ids",
            with(|p| p.stop_token_ids = (0..200_000).map(|i| i % VOCAB).collect()),
            Runs,
        ),
        // top_logprobs in [0, 20]
        ("top_logprobs 20", with(|p| p.top_logprobs = Some(20)), Runs),
        (
            "top_logprobs 21",
            with(|p| p.top_logprobs = Some(21)),
            bad("params.top_logprobs"),
        ),
        (
            "top_logprobs max",
            with(|p| p.top_logprobs = Some(u32::MAX)),
            bad("params.top_logprobs"),
        ),
        // Inputs
        (
            "no input, no params",
            GenerateRequest {
                input: None,
                params: None,
            },
            bad("input"),
        ),
        ("prompt NUL", prompt("\0", greedy(1)), Runs),
        (
            "prompt of special tokens",
            prompt("<|im_end|><|im_start|>", greedy(1)),
            Runs,
        ),
        (
            "prompt of 1 MiB",
            prompt(&"ab".repeat(1 << 19), greedy(1)),
            bad("prompt"),
        ),
        (
            "prompt of 1 MiB + 1",
            prompt(&"a".repeat((1 << 20) + 1), greedy(1)),
            bad("prompt"),
        ),
        (
            "every role, empty content",
            chat(
                &[
                    ("system", ""),
                    ("user", ""),
                    ("assistant", ""),
                    ("tool", ""),
                    ("user", "Hi"),
                ],
                greedy(1),
            ),
            Runs,
        ),
        (
            "empty role",
            chat(&[("", "hi")], greedy(1)),
            bad("chat.messages.role"),
        ),
        (
            "role in capitals",
            chat(&[("User", "hi")], greedy(1)),
            bad("chat.messages.role"),
        ),
        (
            "a bad role after good ones",
            chat(&[("user", "hi"), ("assistant", "yo"), ("user\n", "x")], greedy(1)),
            bad("chat.messages.role"),
        ),
        (
            "chat content of 1 MiB + 1",
            chat(
                &[
                    ("user", &"a".repeat(1 << 19)),
                    ("user", &"b".repeat((1 << 19) + 1)),
                ],
                greedy(1),
            ),
            bad("chat.messages"),
        ),
        (
            "20k empty messages",
            GenerateRequest {
                input: Some(Input::Chat(v1::ChatInput {
                    messages: vec![
                        v1::ChatMessage {
                            role: "user".into(),
                            content: String::new(),
                        };
                        20_000
                    ],
                })),
                params: Some(greedy(1)),
            },
            bad("chat.messages"),
        ),
        ("token 0", tokens(&[0], greedy(1)), Runs),
        ("token vocab-1", tokens(&[VOCAB - 1], greedy(1)), Runs),
        (
            "token max",
            tokens(&[1, u32::MAX], greedy(1)),
            bad("tokens.token_ids"),
        ),
        (
            "context-sized token list",
            tokens(&vec![1; CONTEXT as usize + 1], greedy(1)),
            bad("tokens.token_ids"),
        ),
    ];
    for (label, req, want) in cases {
        let t = Instant::now();
        match want {
            Want::Runs => {
                let top = req.params.as_ref().and_then(|p| p.top_logprobs).unwrap_or(0);
                let c = generate(client, req)
                    .await
                    .unwrap_or_else(|s| panic!("{label}: refused: {s:?}"));
                assert!(c.finished.usage.is_some(), "{label}");
                assert!(
                    c.tokens
                        .iter()
                        .all(|t| t.id < VOCAB && t.top_logprobs.len() == top as usize),
                    "{label}: {:?}",
                    c.tokens
                );
                if top > 0 {
                    assert!(c.tokens.iter().all(|t| t.logprob.is_some()), "{label}");
                }
                assert!(
                    c.tokens.iter().all(|t| t.logprob.is_none_or(f32::is_finite)
                        && t.top_logprobs.iter().all(|a| a.logprob.is_finite())),
                    "{label}: a log-probability that is not finite: {:?}",
                    c.tokens
                );
                tally.accepted += 1;
            }
            Want::Starts => {
                let mut stream = client
                    .generate(req)
                    .await
                    .unwrap_or_else(|s| panic!("{label}: refused: {s:?}"))
                    .into_inner();
                let first = stream.message().await.unwrap().expect("a message");
                assert!(
                    matches!(first.event, Some(v1::generate_response::Event::Delta(_))),
                    "{label}: {first:?}"
                );
                drop(stream);
                tally.accepted += 1;
            }
            Want::Refused(code, path) => {
                let s = generate(client, req).await.expect_err(label);
                check_refusal(label, &s, code, path);
                tally.refused += 1;
            }
        }
        assert!(t.elapsed().as_secs() < 30, "{label} took {:?}", t.elapsed());
    }
}

async fn check_batch_cases(client: &mut InferenceClient<Channel>, tally: &mut Tally) {
    let item = |max_tokens: u32| tokens(&[1, 2, 3], greedy(max_tokens));
    let mut bad_item = item(1);
    bad_item.params.as_mut().unwrap().top_p = Some(f32::NAN);
    let shared = |f: fn(&mut GenerationParams)| {
        let mut p = GenerationParams::default();
        f(&mut p);
        Some(p)
    };
    let cases: Vec<(&str, GenerateBatchRequest, &str)> = vec![
        (
            "one item past max_batch_items",
            GenerateBatchRequest {
                items: vec![item(1); MAX_BATCH_ITEMS + 1],
                params: None,
            },
            "items",
        ),
        (
            // max_batch_items items are admitted (the first one's own parameter ends the call).
            "max_batch_items items",
            GenerateBatchRequest {
                items: std::iter::once(bad_item.clone())
                    .chain(std::iter::repeat_n(item(1), MAX_BATCH_ITEMS - 1))
                    .collect(),
                params: None,
            },
            "items[0].params.top_p",
        ),
        (
            "an item's max_tokens 0",
            GenerateBatchRequest {
                items: vec![item(1), item(0)],
                params: None,
            },
            "items[1].params.max_tokens",
        ),
        (
            "an item's max_tokens past the context",
            GenerateBatchRequest {
                items: vec![item(CONTEXT + 1)],
                params: None,
            },
            "items[0].params.max_tokens",
        ),
        (
            "17 shared stop strings",
            GenerateBatchRequest {
                items: vec![tokens(&[1], GenerationParams::default())],
                params: shared(|p| p.stop = (0..17).map(|i| i.to_string()).collect()),
            },
            "params.stop",
        ),
        (
            "17 item stop strings over valid shared ones",
            GenerateBatchRequest {
                items: vec![tokens(
                    &[1],
                    GenerationParams {
                        stop: (0..17).map(|i| i.to_string()).collect(),
                        ..Default::default()
                    },
                )],
                params: shared(|p| p.stop = vec!["a".into()]),
            },
            "items[0].params.stop",
        ),
        (
            "shared top_logprobs 21",
            GenerateBatchRequest {
                items: vec![item(1)],
                params: shared(|p| p.top_logprobs = Some(21)),
            },
            "params.top_logprobs",
        ),
        (
            "an item's token past the vocabulary",
            GenerateBatchRequest {
                items: vec![item(1), item(1), tokens(&[VOCAB], greedy(1))],
                params: None,
            },
            "items[2].tokens.token_ids",
        ),
        (
            "an item's empty role",
            GenerateBatchRequest {
                items: vec![item(1), chat(&[("", "x")], greedy(1))],
                params: None,
            },
            "items[1].chat.messages.role",
        ),
        (
            "a shared infinite temperature",
            GenerateBatchRequest {
                items: vec![tokens(&[1], GenerationParams::default())],
                params: shared(|p| p.temperature = Some(f32::INFINITY)),
            },
            "params.temperature",
        ),
        (
            "an item's NaN min_p over a valid shared one",
            GenerateBatchRequest {
                items: vec![tokens(
                    &[1],
                    GenerationParams {
                        min_p: Some(f32::NAN),
                        ..Default::default()
                    },
                )],
                params: shared(|p| p.min_p = Some(0.5)),
            },
            "items[0].params.min_p",
        ),
    ];
    for (label, req, path) in cases {
        let s = batch(client, req).await.expect_err(label);
        check_refusal(label, &s, Code::InvalidArgument, path);
        tally.refused += 1;
    }
    // At the edges: top_logprobs 20 shared, an item overriding with logprobs off.
    let req = GenerateBatchRequest {
        items: vec![
            item(2),
            tokens(
                &[4, 5],
                GenerationParams {
                    top_logprobs: Some(0),
                    ..greedy(1)
                },
            ),
        ],
        params: Some(GenerationParams {
            top_logprobs: Some(20),
            ..Default::default()
        }),
    };
    let mut stream = client.generate_batch(req).await.unwrap().into_inner();
    let mut seen = 0;
    while let Some(r) = stream.message().await.unwrap() {
        let want = if r.index == 0 { 20 } else { 0 };
        assert!(r.tokens.iter().all(|t| t.top_logprobs.len() == want), "{r:?}");
        seen += 1;
    }
    assert_eq!(seen, 2);
    tally.accepted += 1;
}

async fn check_raw_cases(channel: &Channel, tally: &mut Tally) {
    let hello = ld(1, b"Hello");
    let one = ld(4, &varint(9, 1)); // params.max_tokens = 1
    let msg = |role: &[u8], content: &[u8]| [ld(1, role), ld(2, content)].concat();
    let deep = [vec![0x7b; 5000], vec![0x7c; 5000]].concat(); // nested groups of field 15
    let generate_cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        (
            "prompt not UTF-8",
            [ld(1, BAD_UTF8), one.clone()].concat(),
            Some("prompt"),
        ),
        (
            "role not UTF-8",
            [ld(2, &ld(1, &msg(BAD_UTF8, b"hi"))), one.clone()].concat(),
            Some("chat.messages.role"),
        ),
        (
            "content not UTF-8",
            [ld(2, &ld(1, &msg(b"user", BAD_UTF8))), one.clone()].concat(),
            Some("chat.messages.content"),
        ),
        (
            "a stop string not UTF-8",
            [hello.clone(), ld(4, &[varint(9, 1), ld(10, BAD_UTF8)].concat())].concat(),
            Some("params.stop"),
        ),
        (
            "temperature as a varint",
            [hello.clone(), ld(4, &varint(1, 5))].concat(),
            Some("params.temperature"),
        ),
        (
            "token ids packed by hand",
            [ld(3, &ld(1, b"\x01\x02")), one.clone()].concat(),
            None, // packed varints: a valid encoding of [1, 2]
        ),
        (
            "token ids as fixed32",
            [ld(3, &[0x0d, 1, 0, 0, 0]), one.clone()].concat(),
            Some("tokens.token_ids"),
        ),
        ("a prompt cut short", hello[..4].to_vec(), Some("input")),
        (
            "params cut short",
            [hello.clone(), vec![0x22, 0x05, 0x48]].concat(),
            Some("params"),
        ),
        ("a varint cut short", vec![0x48], Some("request")),
        (
            "a varint of 11 bytes",
            vec![0x48; 1].into_iter().chain([0xff; 11]).collect(),
            Some("request"),
        ),
        ("field number 0", vec![0x02, 0x00], Some("request")),
        (
            "deeply nested groups",
            [deep, hello.clone(), one.clone()].concat(),
            Some("request"),
        ),
        ("empty", Vec::new(), Some("input")),
        (
            "unknown fields at every level",
            [
                varint(7, 1),
                ld(99, b"zzz"),
                hello.clone(),
                ld(4, &[varint(9, 1), varint(14, 3)].concat()),
            ]
            .concat(),
            None,
        ),
    ];
    for (label, body, path) in generate_cases {
        match (raw_stream(channel, GENERATE, body).await, path) {
            (Ok(msgs), None) => {
                let last = v1::GenerateResponse::decode(msgs.last().unwrap().as_slice()).unwrap();
                assert!(
                    matches!(last.event, Some(v1::generate_response::Event::Finished(_))),
                    "{label}"
                );
                tally.accepted += 1;
            }
            (Err(s), Some(path)) => {
                check_refusal(label, &s, Code::InvalidArgument, path);
                tally.refused += 1;
            }
            (r, _) => panic!("{label}: {r:?}"),
        }
    }
    // Batches: a bad item is named without its index (the decoder does not know it).
    for (label, body, path) in [
        (
            "an item's prompt not UTF-8",
            ld(1, &ld(1, BAD_UTF8)),
            "items.prompt",
        ),
        (
            "a shared stop string not UTF-8",
            [ld(1, &hello), ld(2, &ld(10, BAD_UTF8))].concat(),
            "params.stop",
        ),
        (
            "an item's content not UTF-8",
            ld(1, &ld(2, &ld(1, &msg(b"user", BAD_UTF8)))),
            "items.chat.messages.content",
        ),
    ] {
        let s = raw_stream(channel, GENERATE_BATCH, body).await.expect_err(label);
        check_refusal(label, &s, Code::InvalidArgument, path);
        tally.refused += 1;
    }
    // ModelInfo: unknown fields are ignored; bytes that do not decode are refused.
    let info = raw_unary(channel, MODEL_INFO, [varint(1, 1), ld(2, BAD_UTF8)].concat())
        .await
        .unwrap();
    assert!(
        !v1::ModelInfoResponse::decode(info.as_slice())
            .unwrap()
            .name
            .is_empty()
    );
    let s = raw_unary(channel, MODEL_INFO, vec![0xff]).await.unwrap_err();
    check_refusal("ModelInfo garbage", &s, Code::InvalidArgument, "request");
    // GetAttestation: a nonce of the wrong wire type.
    let s = raw_unary(channel, GET_ATTESTATION, varint(1, 7))
        .await
        .unwrap_err();
    check_refusal("nonce as a varint", &s, Code::InvalidArgument, "nonce");
    tally.accepted += 1;
    tally.refused += 2;

    // The size limit: a message of exactly max_request_bytes is read (and refused for its
    // content); one byte more is OUT_OF_RANGE before it is read.
    let sized = |n: usize| {
        // field 1 (prompt): key, 4-byte varint length, text.
        let mut body = vec![0x0a];
        let text = n - 1 - 4;
        prost::encoding::encode_varint(text as u64, &mut body);
        assert_eq!(body.len(), 5);
        body.resize(n, b'a');
        body
    };
    let s = raw_stream(channel, GENERATE, sized(MAX_REQUEST_BYTES))
        .await
        .unwrap_err();
    check_refusal("max_request_bytes", &s, Code::InvalidArgument, "prompt");
    let s = raw_stream(channel, GENERATE, sized(MAX_REQUEST_BYTES + 1))
        .await
        .unwrap_err();
    check_refusal("max_request_bytes + 1", &s, Code::OutOfRange, "");
    // A batch just under the limit: about 4000 items of 2 KiB prompts (under max_batch_items),
    // the first one invalid.
    let item = ld(1, &ld(1, &[b'x'; 2048]));
    let mut body = ld(1, &[ld(1, b"x"), ld(4, &varint(9, 0))].concat());
    while body.len() + item.len() <= MAX_REQUEST_BYTES - 16 {
        body.extend_from_slice(&item);
    }
    let s = raw_stream(channel, GENERATE_BATCH, body).await.unwrap_err();
    check_refusal(
        "a batch near max_request_bytes",
        &s,
        Code::InvalidArgument,
        "items[0].params.max_tokens",
    );
    tally.refused += 3;
}

async fn check_attestation_cases(client: &mut InferenceClient<Channel>, tally: &mut Tally) {
    for len in [0usize, 1, 31, 33, 64, 1 << 20] {
        let s = client
            .get_attestation(v1::GetAttestationRequest { nonce: vec![7; len] })
            .await
            .expect_err("a nonce of the wrong length");
        check_refusal(
            &format!("nonce of {len} bytes"),
            &s,
            Code::InvalidArgument,
            "nonce",
        );
        tally.refused += 1;
    }
    let r = client
        .get_attestation(v1::GetAttestationRequest {
            nonce: vec![0xff; 32],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.bundle.unwrap().nonce, vec![0xff; 32]);
    tally.accepted += 1;
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Drains a sealed `Generate`; the error the server sealed into the stream, if any.
async fn sealed_outcome(client: &mut Client, req: &GenerateRequest) -> Result<(), ClientError> {
    let mut stream = client.generate(req).await?;
    while stream.message().await?.is_some() {}
    stream.receipt().expect("a receipt").verify()?;
    Ok(())
}

async fn sealed_batch_outcome(client: &mut Client, req: &GenerateBatchRequest) -> Result<(), ClientError> {
    let mut stream = client.generate_batch(req).await?;
    while stream.message().await?.is_some() {}
    stream.receipt().expect("a receipt").verify()?;
    Ok(())
}

#[track_caller]
fn check_sealed_refusal(label: &str, r: Result<(), ClientError>, path: &str) {
    match r {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, Code::InvalidArgument, "{label}: {message}");
            assert!(
                message.starts_with(&format!("{path}: ")),
                "{label}: expected {path:?}: {message:?}"
            );
        }
        other => panic!("{label}: expected a sealed INVALID_ARGUMENT, got {other:?}"),
    }
}

async fn check_sealed_cases(channel: &Channel, tally: &mut Tally) {
    let policy = Policy {
        allow_simulated: true,
        ..Policy::default()
    };
    let mut client = Client::with_channel(channel.clone(), policy);
    let attested = client.attest().await.unwrap().clone();
    let body = tokens(&[1, 2, 3], greedy(1)).encode_to_vec();

    // Malformed wire fields: plain statuses naming the field, for both RPCs.
    for rpc in [SealedRpc::Generate, SealedRpc::GenerateBatch] {
        let (good, _) = attested.seal(rpc, &body, now()).unwrap();
        let mut cases: Vec<(String, SealedRequest, &str)> = Vec::new();
        for len in [0usize, 7, 9, 4096] {
            let mut w = good.clone();
            w.key_id = vec![1; len];
            cases.push((format!("key_id of {len}"), w, "key_id"));
        }
        for len in [0usize, 31, 33, 1 << 20] {
            let mut w = good.clone();
            w.bundle_digest = vec![1; len];
            cases.push((format!("bundle_digest of {len}"), w, "bundle_digest"));
        }
        for len in [0usize, 1, 31, 33, 4096] {
            let mut w = good.clone();
            w.encapsulated_key = vec![9; len];
            cases.push((format!("encapsulated_key of {len}"), w, "encapsulated_key"));
        }
        let mut w = good.clone();
        w.ciphertext.clear();
        cases.push(("empty ciphertext".into(), w, "ciphertext"));
        let mut w = good.clone();
        w.ciphertext.truncate(15);
        cases.push(("ciphertext shorter than its tag".into(), w, "ciphertext"));
        let mut w = good.clone();
        w.ciphertext = vec![0; MAX_REQUEST_BYTES - 200];
        cases.push(("ciphertext near max_request_bytes".into(), w, "ciphertext"));
        cases.push(("every field empty".into(), SealedRequest::default(), "key_id"));
        for (label, wire, path) in cases {
            let label = format!("{} {label}", rpc.name());
            let r = client.send_sealed(rpc, wire).await;
            let s = match r {
                Ok(mut stream) => loop {
                    match stream.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => panic!("{label}: accepted"),
                        Err(s) => break s,
                    }
                },
                Err(s) => s,
            };
            check_refusal(&label, &s, Code::InvalidArgument, path);
            tally.refused += 1;
        }
    }

    // Inside the opened request: the same codes and paths as the plaintext calls, sealed.
    let cases: Vec<(&str, GenerateRequest, &str)> = vec![
        (
            "temperature NaN",
            with(|p| p.temperature = Some(f32::NAN)),
            "params.temperature",
        ),
        (
            "top_p inf",
            with(|p| p.top_p = Some(f32::INFINITY)),
            "params.top_p",
        ),
        (
            "max_tokens context+1",
            with(|p| p.max_tokens = Some(CONTEXT + 1)),
            "params.max_tokens",
        ),
        (
            "top_logprobs 21",
            with(|p| p.top_logprobs = Some(21)),
            "params.top_logprobs",
        ),
        (
            "17 stop strings",
            with(|p| p.stop = (0..17).map(|i| i.to_string()).collect()),
            "params.stop",
        ),
        (
            "token past the vocabulary",
            tokens(&[VOCAB], greedy(1)),
            "tokens.token_ids",
        ),
        ("empty role", chat(&[("", "x")], greedy(1)), "chat.messages.role"),
        (
            "no input",
            GenerateRequest {
                input: None,
                params: None,
            },
            "input",
        ),
        (
            "prompt of 1 MiB + 1",
            prompt(&"a".repeat((1 << 20) + 1), greedy(1)),
            "prompt",
        ),
    ];
    for (label, req, path) in cases {
        check_sealed_refusal(label, sealed_outcome(&mut client, &req).await, path);
        tally.refused += 1;
    }
    // At the edge, sealed: top_logprobs 20 runs.
    sealed_outcome(&mut client, &with(|p| p.top_logprobs = Some(20)))
        .await
        .unwrap();
    tally.accepted += 1;
    let item = tokens(&[1, 2, 3], greedy(1));
    for (label, req, path) in [
        (
            "one item past max_batch_items",
            GenerateBatchRequest {
                items: vec![item.clone(); MAX_BATCH_ITEMS + 1],
                params: None,
            },
            "items",
        ),
        (
            "an item's max_tokens 0",
            GenerateBatchRequest {
                items: vec![item.clone(), tokens(&[1], greedy(0))],
                params: None,
            },
            "items[1].params.max_tokens",
        ),
        (
            "empty batch",
            GenerateBatchRequest {
                items: vec![],
                params: None,
            },
            "items",
        ),
    ] {
        check_sealed_refusal(label, sealed_batch_outcome(&mut client, &req).await, path);
        tally.refused += 1;
    }
    // Opened requests that do not decode: sealed INVALID_ARGUMENT naming the field.
    for (label, rpc, raw, path) in [
        (
            "sealed prompt not UTF-8",
            SealedRpc::Generate,
            ld(1, BAD_UTF8),
            "prompt",
        ),
        (
            "sealed batch item's role not UTF-8",
            SealedRpc::GenerateBatch,
            ld(1, &ld(2, &ld(1, &ld(1, BAD_UTF8)))),
            "items.chat.messages.role",
        ),
        (
            "sealed request cut short",
            SealedRpc::Generate,
            vec![0x48],
            "request",
        ),
        (
            "sealed prompt cut short",
            SealedRpc::Generate,
            vec![0x0a, 0x05],
            "input",
        ),
    ] {
        let (wire, mut opener) = attested.seal(rpc, &raw, now()).unwrap();
        let mut stream = client.send_sealed(rpc, wire).await.unwrap();
        let mut bodies = Vec::new();
        while let Some(c) = stream.message().await.unwrap() {
            match opener.open(&c.chunk).unwrap() {
                OpenedChunk::Payload(b) => bodies.push(b),
                OpenedChunk::End(receipt) => receipt.verify().unwrap(),
            }
        }
        opener.finish().unwrap();
        match bodies.as_slice() {
            [Body::Error(e)] => {
                assert_eq!(e.code, Code::InvalidArgument as i32, "{label}: {e:?}");
                assert!(
                    e.message.starts_with(&format!("{path}: ")),
                    "{label}: {:?}",
                    e.message
                );
            }
            other => panic!("{label}: {other:?}"),
        }
        tally.refused += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_edges() {
    let started = Instant::now();
    let mut server = Server::start(&["--attestation", "simulated"]);
    let channel = server.channel().await;
    let mut client = server.client().await;
    let limits = client
        .model_info(v1::ModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(limits.plaintext_enabled);
    assert_eq!((limits.context_length, limits.vocab_size), (CONTEXT, VOCAB));
    let l = limits.limits.unwrap();
    assert_eq!(l.max_request_bytes as usize, MAX_REQUEST_BYTES);
    assert_eq!(l.max_batch_items as usize, MAX_BATCH_ITEMS);

    // Another client's long stream, started first and read as it comes.
    let long = chat(
        &[("user", "Write a long story about a dragon who learns to cook.")],
        greedy(300),
    );
    let mut other = server.client().await;
    let mut stream = other.generate(long.clone()).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().expect("the first delta");
    let background = tokio::spawn(async move {
        let mut c = drain(stream).await.expect("the long stream completes");
        if let Some(v1::generate_response::Event::Delta(d)) = first.event {
            let mut tokens = d.tokens;
            tokens.append(&mut c.tokens);
            c.tokens = tokens;
        }
        (c, Instant::now())
    });

    let mut tally = Tally::default();
    let t = Instant::now();
    check_generate_cases(&mut client, &mut tally).await;
    println!("rpc_edges: Generate cases {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    check_batch_cases(&mut client, &mut tally).await;
    println!(
        "rpc_edges: GenerateBatch cases {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    check_raw_cases(&channel, &mut tally).await;
    println!("rpc_edges: raw protobuf cases {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    check_attestation_cases(&mut client, &mut tally).await;
    check_sealed_cases(&channel, &mut tally).await;
    println!(
        "rpc_edges: attestation and sealed cases {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let edges_done = Instant::now();

    // The long stream was not disturbed: the tokens it gives alone.
    let (concurrent, finished_at) = background.await.unwrap();
    println!(
        "rpc_edges: the long stream gave {} tokens and ended {} the edge cases",
        concurrent.tokens.len(),
        if finished_at > edges_done {
            "after"
        } else {
            "before"
        }
    );
    let solo = generate(&mut client, long).await.unwrap();
    assert_eq!(concurrent.ids(), solo.ids(), "the concurrent stream's tokens");
    assert_eq!(concurrent.finished.reason, solo.finished.reason);

    // Still serving.
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited:\n{}",
        server.log()
    );
    let info = client
        .model_info(v1::ModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.vocab_size, VOCAB);
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut health = HealthClient::new(channel.clone());
    let r = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status(), ServingStatus::Serving);
    assert!(
        !server.log().contains("panicked"),
        "a panic in the server log:\n{}",
        server.log()
    );
    println!(
        "rpc_edges: {} refusals and {} accepted edge values checked in {:.1} s",
        tally.refused,
        tally.accepted,
        started.elapsed().as_secs_f64()
    );
}
