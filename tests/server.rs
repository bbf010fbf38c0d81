//! `veil serve` end to end: the real binary on the default model (f32) driven by a tonic client.
//!
//! - `serving`: model info, health, reflection (v1 and v1alpha), the reference prompts' greedy
//!   tokens over gRPC (token ids, chat and text inputs, log-probabilities), concurrent streams
//!   and a batch identical to solo runs, every invalid field named in INVALID_ARGUMENT,
//!   oversized messages, deadlines, cancellation returning KV blocks, the metrics endpoint.
//! - `admission_control`: a tiny queue refuses a flood with RESOURCE_EXHAUSTED; a batch larger
//!   than the queue still completes.
//! - `graceful_shutdown_on_sigterm`: NOT_SERVING and UNAVAILABLE while draining, in-flight work
//!   cancelled after the grace period with a final CANCELLED message, exit status 0.
//! - `python_client_example`: `examples/python_client.py` against the server (skipped when
//!   grpcio or grpcio-tools is missing).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::server::Server;

use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use veil_proto::v1::generate_request::Input;
use veil_proto::v1::inference_client::InferenceClient;
use veil_proto::v1::{self, FinishReason, GenerateRequest, GenerationParams};

fn greedy(max_tokens: u32) -> Option<GenerationParams> {
    Some(GenerationParams {
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..Default::default()
    })
}

fn tokens_request(ids: &[u32], params: Option<GenerationParams>) -> GenerateRequest {
    GenerateRequest {
        input: Some(Input::Tokens(v1::TokenInput {
            token_ids: ids.to_vec(),
        })),
        params,
    }
}

fn chat_request(text: &str, params: Option<GenerationParams>) -> GenerateRequest {
    GenerateRequest {
        input: Some(Input::Chat(v1::ChatInput {
            messages: vec![v1::ChatMessage {
                role: "user".into(),
                content: text.into(),
            }],
        })),
        params,
    }
}

fn long_story(max_tokens: u32) -> GenerateRequest {
    chat_request(
        "Write a long story about a dragon who learns to cook.",
        greedy(max_tokens),
    )
}

/// A whole `Generate` result.
#[derive(Debug)]
struct Completion {
    text: String,
    tokens: Vec<v1::Token>,
    finished: v1::Finished,
}

impl Completion {
    fn ids(&self) -> Vec<u32> {
        self.tokens.iter().map(|t| t.id).collect()
    }
}

/// Drains a `Generate` stream; every stream must end with exactly one `finished` message.
async fn drain(mut stream: tonic::Streaming<v1::GenerateResponse>) -> Result<Completion, Status> {
    let (mut text, mut tokens) = (String::new(), Vec::new());
    while let Some(msg) = stream.message().await? {
        match msg.event.expect("an event") {
            v1::generate_response::Event::Delta(d) => {
                text.push_str(&d.text);
                tokens.extend(d.tokens);
            }
            v1::generate_response::Event::Finished(f) => {
                assert!(
                    stream.message().await?.is_none(),
                    "nothing after the final message"
                );
                return Ok(Completion {
                    text,
                    tokens,
                    finished: f,
                });
            }
        }
    }
    panic!("the stream ended without a final message");
}

async fn generate(client: &mut InferenceClient<Channel>, req: GenerateRequest) -> Result<Completion, Status> {
    drain(client.generate(req).await?.into_inner()).await
}

/// The status of a request that must be refused, with its message.
async fn refused(client: &mut InferenceClient<Channel>, req: GenerateRequest) -> Status {
    match generate(client, req).await {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(s) => s,
    }
}

fn reason(f: &v1::Finished) -> FinishReason {
    FinishReason::try_from(f.reason).expect("a known reason")
}

async fn check_model_info_health_and_reflection(server: &Server) {
    let mut client = server.client().await;
    let info = client
        .model_info(v1::ModelInfoRequest {})
        .await
        .expect("model info")
        .into_inner();
    assert_eq!(info.architecture, "LlamaForCausalLM");
    assert_eq!(info.dtype, "f32");
    assert_eq!(info.backend, "cpu");
    assert_eq!(info.context_length, 8192);
    assert_eq!(info.vocab_size, 49152);
    assert!(!info.name.is_empty() && !info.digest.is_empty() && !info.server_version.is_empty());
    let eos = *common::cases()[0].greedy_new_ids.last().expect("ids");
    assert!(info.eos_token_ids.contains(&eos), "{:?}", info.eos_token_ids);
    let limits = info.limits.expect("limits");
    assert_eq!(limits.max_seqs, 16);
    assert_eq!(limits.max_tokens, 8192);
    assert!(limits.kv_cache_blocks > 0 && limits.block_size > 0);
    assert!(limits.max_request_bytes > 0 && limits.max_batch_items > 0);

    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "veil.v1.Inference"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let ask = |m: MessageRequest| {
        tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        }])
    };
    let first = |mut s: tonic::Streaming<ServerReflectionResponse>| async move {
        s.message()
            .await
            .expect("reflection")
            .expect("a response")
            .message_response
    };
    let resp = reflection
        .server_reflection_info(ask(MessageRequest::ListServices(String::new())))
        .await
        .expect("reflection v1");
    let Some(MessageResponse::ListServicesResponse(list)) = first(resp.into_inner()).await else {
        panic!("not a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == "veil.v1.Inference"), "{names:?}");
    assert!(names.iter().any(|n| n == "grpc.health.v1.Health"), "{names:?}");
    let resp = reflection
        .server_reflection_info(ask(MessageRequest::FileContainingSymbol(
            "veil.v1.Inference".into(),
        )))
        .await
        .expect("reflection v1");
    let Some(MessageResponse::FileDescriptorResponse(files)) = first(resp.into_inner()).await else {
        panic!("no file descriptor for veil.v1.Inference");
    };
    assert!(!files.file_descriptor_proto.is_empty());

    use tonic_reflection::pb::v1alpha as alpha;
    let mut reflection = alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let mut s = reflection
        .server_reflection_info(tokio_stream::iter([alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(alpha::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        }]))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    let msg = s.message().await.expect("v1alpha").expect("a response");
    let Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        msg.message_response
    else {
        panic!("not a service list");
    };
    assert!(list.service.iter().any(|s| s.name == "veil.v1.Inference"));
}

async fn check_reference_generations(server: &Server) {
    let mut client = server.client().await;
    for case in common::cases() {
        let n = case.greedy_new_ids.len() as u32;
        let c = generate(&mut client, tokens_request(&case.input_ids, greedy(n)))
            .await
            .expect("generate");
        assert_eq!(c.ids(), case.greedy_new_ids, "{:?}", case.prompt);
        let usage = c.finished.usage.expect("usage");
        assert_eq!(usage.prompt_tokens as usize, case.input_ids.len());
        assert_eq!(usage.completion_tokens, n);
        assert!(usage.time_to_first_token_seconds.is_some_and(|t| t > 0.0));
        assert!(usage.time_per_output_token_seconds.is_some_and(|t| t > 0.0));
        let expected = if case.greedy_text.ends_with("<|im_end|>") {
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        assert_eq!(reason(&c.finished), expected);
        assert!(
            c.tokens
                .iter()
                .all(|t| t.logprob.is_none() && t.top_logprobs.is_empty())
        );
    }

    // The chat template applied by the server gives the same tokens; log-probabilities on request.
    let case = &common::cases()[0];
    let mut params = greedy(32);
    if let Some(p) = params.as_mut() {
        p.top_logprobs = Some(3);
    }
    let c = generate(&mut client, chat_request(&case.prompt, params))
        .await
        .expect("chat");
    assert_eq!(c.ids(), case.greedy_new_ids);
    assert_eq!(c.text, "The capital of France is Paris.");
    assert_eq!(reason(&c.finished), FinishReason::Stop);
    for t in &c.tokens {
        assert_eq!(t.top_logprobs.len(), 3);
        assert_eq!(t.top_logprobs[0].id, t.id, "greedy picks the most likely token");
        let lp = t.logprob.expect("logprob");
        assert!(lp <= 0.0 && (lp - t.top_logprobs[0].logprob).abs() < 1e-6);
    }

    // Plain text input, a stop string and the same seed twice.
    let c = generate(
        &mut client,
        GenerateRequest {
            input: Some(Input::Prompt(case.chat_text.clone())),
            params: Some(GenerationParams {
                temperature: Some(0.0),
                max_tokens: Some(32),
                stop: vec![" is".into()],
                ..Default::default()
            }),
        },
    )
    .await
    .expect("text");
    assert_eq!(c.text, "The capital of France");
    assert_eq!(reason(&c.finished), FinishReason::Stop);
    let sampled = GenerationParams {
        temperature: Some(0.8),
        top_p: Some(0.9),
        seed: Some(42),
        max_tokens: Some(12),
        ..Default::default()
    };
    let a = generate(
        &mut client,
        chat_request("Tell me a story.", Some(sampled.clone())),
    )
    .await
    .expect("sampled");
    let b = generate(&mut client, chat_request("Tell me a story.", Some(sampled)))
        .await
        .expect("sampled");
    assert_eq!(a.ids(), b.ids(), "same seed, same tokens");
}

/// Token-id inputs: the reference prompts plus a few chat prompts.
fn prompts() -> Vec<Vec<u32>> {
    let mut p: Vec<Vec<u32>> = common::cases().into_iter().map(|c| c.input_ids).collect();
    let tok = veil_engine::tokenizer::Tokenizer::from_dir(&common::model_dir()).expect("tokenizer");
    for q in [
        "Name three colours.",
        "What is 2 + 2?",
        "Write one sentence about the sea.",
        "Say hello in French.",
        "What is a computer?",
    ] {
        let text = tok
            .apply_chat_template(&[veil_engine::tokenizer::ChatMessage::new("user", q)])
            .expect("template");
        p.push(tok.encode(&text).expect("encode"));
    }
    p
}

async fn check_concurrency_and_batch(server: &Server) {
    const MAX: u32 = 12;
    let prompts = prompts();
    let mut client = server.client().await;
    let mut solo = Vec::new();
    for p in &prompts {
        solo.push(
            generate(&mut client, tokens_request(p, greedy(MAX)))
                .await
                .expect("solo"),
        );
    }
    for (case, s) in common::cases().iter().zip(&solo) {
        let n = case.greedy_new_ids.len().min(MAX as usize);
        assert_eq!(s.ids()[..n], case.greedy_new_ids[..n]);
    }

    // All at once, twice over, on separate connections and one shared connection.
    let shared = server.client().await;
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..2 {
        for (i, p) in prompts.iter().enumerate() {
            let req = tokens_request(p, greedy(MAX));
            let mut c = if round == 0 {
                server.client().await
            } else {
                shared.clone()
            };
            tasks.spawn(async move { (i, generate(&mut c, req).await) });
        }
    }
    let mut count = 0;
    while let Some(r) = tasks.join_next().await {
        let (i, c) = r.expect("task");
        let c = c.expect("concurrent generate");
        assert_eq!(c.ids(), solo[i].ids(), "prompt {i}");
        assert_eq!(c.text, solo[i].text, "prompt {i}");
        count += 1;
    }
    assert_eq!(count, 2 * prompts.len());

    // The same prompts as one batch: shared parameters, one item overriding max_tokens.
    let mut items: Vec<GenerateRequest> = prompts.iter().map(|p| tokens_request(p, None)).collect();
    items[1].params = Some(GenerationParams {
        max_tokens: Some(3),
        ..Default::default()
    });
    let mut stream = client
        .generate_batch(v1::GenerateBatchRequest {
            items,
            params: greedy(MAX),
        })
        .await
        .expect("batch")
        .into_inner();
    let mut seen = vec![false; prompts.len()];
    while let Some(r) = stream.message().await.expect("batch result") {
        let i = r.index as usize;
        assert!(!seen[i], "item {i} twice");
        seen[i] = true;
        let ids: Vec<u32> = r.tokens.iter().map(|t| t.id).collect();
        let want = if i == 1 {
            &solo[i].ids()[..3]
        } else {
            &solo[i].ids()[..]
        };
        assert_eq!(ids, want, "item {i}");
        if i != 1 {
            assert_eq!(r.text, solo[i].text, "item {i}");
        }
        let f = r.finished.expect("finished");
        assert_eq!(f.usage.expect("usage").completion_tokens as usize, want.len());
    }
    assert!(seen.iter().all(|&s| s), "every item has a result");
}

async fn check_invalid_fields(server: &Server) {
    let mut client = server.client().await;
    let text = |s: &str| Some(Input::Prompt(s.into()));
    let with = |f: &dyn Fn(&mut GenerationParams)| {
        let mut p = GenerationParams::default();
        f(&mut p);
        GenerateRequest {
            input: text("Hello"),
            params: Some(p),
        }
    };
    let chat = |role: &str| GenerateRequest {
        input: Some(Input::Chat(v1::ChatInput {
            messages: vec![v1::ChatMessage {
                role: role.into(),
                content: "hi".into(),
            }],
        })),
        params: greedy(4),
    };
    let cases: Vec<(GenerateRequest, &str)> = vec![
        (
            GenerateRequest {
                input: None,
                params: None,
            },
            "input",
        ),
        (
            GenerateRequest {
                input: text(""),
                params: None,
            },
            "prompt",
        ),
        (
            GenerateRequest {
                input: text(&"word ".repeat(300_000)),
                params: None,
            },
            "prompt",
        ),
        (
            GenerateRequest {
                input: Some(Input::Chat(v1::ChatInput { messages: vec![] })),
                params: None,
            },
            "chat.messages",
        ),
        (chat("robot"), "chat.messages.role"),
        (tokens_request(&[], None), "tokens.token_ids"),
        (tokens_request(&[1, 49152], None), "tokens.token_ids"),
        (tokens_request(&vec![1; 8192], greedy(1)), "tokens.token_ids"),
        (with(&|p| p.max_tokens = Some(0)), "params.max_tokens"),
        (with(&|p| p.max_tokens = Some(1_000_000)), "params.max_tokens"),
        (with(&|p| p.temperature = Some(-0.5)), "params.temperature"),
        (with(&|p| p.temperature = Some(f32::NAN)), "params.temperature"),
        (with(&|p| p.top_p = Some(0.0)), "params.top_p"),
        (with(&|p| p.top_p = Some(1.5)), "params.top_p"),
        (with(&|p| p.top_k = Some(u32::MAX)), "params.top_k"),
        (with(&|p| p.min_p = Some(2.0)), "params.min_p"),
        (
            with(&|p| p.repetition_penalty = Some(0.0)),
            "params.repetition_penalty",
        ),
        (
            with(&|p| p.presence_penalty = Some(3.0)),
            "params.presence_penalty",
        ),
        (
            with(&|p| p.frequency_penalty = Some(-3.0)),
            "params.frequency_penalty",
        ),
        (with(&|p| p.stop = vec![String::new()]), "params.stop"),
        (with(&|p| p.stop = vec!["x".repeat(1000)]), "params.stop"),
        (
            with(&|p| p.stop = (0..40).map(|i| i.to_string()).collect()),
            "params.stop",
        ),
        (
            with(&|p| p.stop_token_ids = vec![1 << 30]),
            "params.stop_token_ids",
        ),
        (with(&|p| p.top_logprobs = Some(1000)), "params.top_logprobs"),
    ];
    for (req, field) in cases {
        let s = refused(&mut client, req).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{field}: {s:?}");
        assert!(
            s.message().starts_with(&format!("{field}: ")),
            "expected the message to name {field}: {:?}",
            s.message()
        );
    }

    // Batches name the item, or the shared parameters.
    let batch = |items: Vec<GenerateRequest>, params: Option<GenerationParams>| v1::GenerateBatchRequest {
        items,
        params,
    };
    let ok = || tokens_request(&[1, 2, 3], None);
    let bad_top_p = tokens_request(
        &[1, 2, 3],
        Some(GenerationParams {
            top_p: Some(2.0),
            ..Default::default()
        }),
    );
    let mut no_input = ok();
    no_input.input = None;
    let shared_bad = Some(GenerationParams {
        temperature: Some(-1.0),
        ..Default::default()
    });
    for (req, field) in [
        (batch(vec![], greedy(2)), "items"),
        (batch(vec![ok(), bad_top_p], greedy(2)), "items[1].params.top_p"),
        (batch(vec![ok(), ok(), no_input], greedy(2)), "items[2].input"),
        (batch(vec![ok()], shared_bad), "params.temperature"),
    ] {
        let s = match client.generate_batch(req).await {
            Err(s) => s,
            Ok(r) => {
                let mut stream = r.into_inner();
                loop {
                    match stream.message().await {
                        Err(s) => break s,
                        Ok(Some(_)) => {}
                        Ok(None) => panic!("{field}: the batch succeeded"),
                    }
                }
            }
        };
        assert_eq!(s.code(), Code::InvalidArgument, "{field}: {s:?}");
        assert!(
            s.message().starts_with(&format!("{field}: ")),
            "{field}: {:?}",
            s.message()
        );
    }

    // A message over the transport's limit (8 MiB by default) is refused before it is read.
    let huge = GenerateRequest {
        input: text(&"x".repeat(9 << 20)),
        params: None,
    };
    let s = refused(&mut client, huge).await;
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
}

async fn check_deadline_and_cancellation(server: &Server) {
    let mut client = server.client().await;
    // A deadline that passes mid-generation ends the stream with DEADLINE_EXCEEDED.
    let mut req = Request::new(long_story(1000));
    req.set_timeout(Duration::from_millis(1500));
    let t = Instant::now();
    let mut stream = client.generate(req).await.expect("accepted").into_inner();
    let mut deltas = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(m)) => {
                assert!(
                    matches!(m.event, Some(v1::generate_response::Event::Delta(_))),
                    "no final message before the deadline: {m:?}"
                );
                deltas += 1;
            }
            Ok(None) => panic!("the stream ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(deltas > 0, "tokens arrive before the deadline");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the deadline was honoured late: {:?}",
        t.elapsed()
    );
    server.wait_metric("veil_kv_blocks_used", Duration::from_secs(5), |v| v == 0.0);

    // A client that drops its stream mid-generation: the engine frees the sequence's blocks.
    let mut stream = client
        .generate(long_story(1000))
        .await
        .expect("accepted")
        .into_inner();
    for _ in 0..3 {
        let m = stream.message().await.expect("message").expect("a delta");
        assert!(matches!(m.event, Some(v1::generate_response::Event::Delta(_))));
    }
    assert!(
        server.metric("veil_kv_blocks_used") > 0.0,
        "the running request holds blocks"
    );
    assert_eq!(server.metric("veil_running_sequences"), 1.0);
    let cancelled = server.metric("veil_requests_total{finish_reason=\"cancelled\"}");
    drop(stream);
    server.wait_metric("veil_kv_blocks_used", Duration::from_secs(5), |v| v == 0.0);
    server.wait_metric("veil_running_sequences", Duration::from_secs(5), |v| v == 0.0);
    server.wait_metric(
        "veil_requests_total{finish_reason=\"cancelled\"}",
        Duration::from_secs(5),
        |v| v == cancelled + 1.0,
    );
}

fn check_metrics_endpoint(server: &Server) {
    let text = server.metrics();
    for name in [
        "veil_queue_depth",
        "veil_running_sequences",
        "veil_kv_blocks_used",
        "veil_kv_blocks_free",
        "veil_kv_blocks_total",
        "veil_prompt_tokens_total",
        "veil_generated_tokens_total",
        "veil_preemptions_total",
        "veil_requests_total{finish_reason=\"stop\"}",
        "veil_requests_total{finish_reason=\"length\"}",
        "veil_requests_rejected_total{code=\"invalid_argument\"}",
        "veil_time_to_first_token_seconds_bucket",
        "veil_time_per_output_token_seconds_count",
        "veil_model_info{",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    assert!(server.metric("veil_generated_tokens_total") > 0.0);
    assert!(server.metric("veil_prompt_tokens_total") > 0.0);
    assert!(server.metric("veil_requests_total{finish_reason=\"stop\"}") > 0.0);
    assert!(server.metric("veil_requests_rejected_total{code=\"invalid_argument\"}") > 0.0);
    assert!(server.metric("veil_time_to_first_token_seconds_count") > 0.0);
    assert!(server.metric("veil_kv_blocks_free") > 0.0);
    assert_eq!(server.http_get("/nothing").0, "HTTP/1.1 404 Not Found");
    // The logs never carry content: no prompt text.
    assert!(!server.log().contains("dragon"), "prompt text in the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving() {
    let server = Server::start(&["--max-seqs", "16"]);
    check_model_info_health_and_reflection(&server).await;
    check_reference_generations(&server).await;
    check_concurrency_and_batch(&server).await;
    check_invalid_fields(&server).await;
    check_deadline_and_cancellation(&server).await;
    check_metrics_endpoint(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_control() {
    let server = Server::start(&["--max-seqs", "1", "--max-queue", "1"]);
    let client = server.client().await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut c = client.clone();
        calls.spawn(async move { c.generate(long_story(24)).await.map(|r| r.into_inner()) });
    }
    let (mut accepted, mut exhausted) = (Vec::new(), 0);
    while let Some(r) = calls.join_next().await {
        match r.expect("task") {
            Ok(stream) => accepted.push(stream),
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("queue is full"), "{}", s.message());
                exhausted += 1;
            }
        }
    }
    assert!(
        exhausted > 0,
        "a flood of 8 requests against 1 running + 1 queued is refused"
    );
    assert!(!accepted.is_empty());
    assert!(server.metric("veil_requests_rejected_total{code=\"resource_exhausted\"}") > 0.0);
    for s in accepted {
        let c = drain(s).await.expect("accepted requests complete");
        assert_eq!(c.tokens.len(), 24);
    }
    // A batch larger than the queue waits for room instead of failing.
    let mut stream = client
        .clone()
        .generate_batch(v1::GenerateBatchRequest {
            items: (0..4)
                .map(|i| chat_request(&format!("Count to {i}."), None))
                .collect(),
            params: greedy(3),
        })
        .await
        .expect("batch")
        .into_inner();
    let mut n = 0;
    while let Some(r) = stream.message().await.expect("batch result") {
        assert_eq!(r.tokens.len(), 3, "{r:?}");
        n += 1;
    }
    assert_eq!(n, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_on_sigterm() {
    let mut server = Server::start(&["--shutdown-grace", "4"]);
    let mut client = server.client().await;
    let mut stream = client
        .generate(long_story(1000))
        .await
        .expect("accepted")
        .into_inner();
    stream.message().await.expect("message").expect("a first delta");
    server.terminate();

    // Draining: health says NOT_SERVING and new calls are refused with UNAVAILABLE.
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut health = HealthClient::new(server.channel().await);
    let t = Instant::now();
    loop {
        let r = health
            .check(HealthCheckRequest {
                service: "veil.v1.Inference".into(),
            })
            .await
            .expect("health during drain")
            .into_inner();
        if r.status() == ServingStatus::NotServing {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "health never became NOT_SERVING"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = refused(&mut client, chat_request("Hi", greedy(2))).await;
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");

    // The in-flight generation is cancelled once the grace period is over, with a final message.
    let c = drain(stream).await.expect("the stream ends cleanly");
    assert_eq!(reason(&c.finished), FinishReason::Cancelled);
    assert!(!c.tokens.is_empty());
    drop(client);
    drop(health);
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}:\n{}", server.log());
    let log = server.log();
    assert!(
        log.contains("SIGTERM: shutting down") && log.contains("shut down"),
        "{log}"
    );
}

#[test]
fn python_client_example() {
    let probe = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => {
            eprintln!(
                "skipping python_client_example: python3 with grpcio and grpcio-tools is not \
                 available (python3 -m pip install grpcio grpcio-tools)"
            );
            return;
        }
    }
    let server = Server::start(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python_client.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["--server", &server.addr, "--max-tokens", "16"])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed:\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("The capital of France is Paris."), "{stdout}");
    assert!(stdout.contains("[finish: FINISH_REASON_STOP;"), "{stdout}");
    for i in 0..3 {
        assert!(
            stdout.contains(&format!("[{i}] ")),
            "batch item {i} missing: {stdout}"
        );
    }
}
