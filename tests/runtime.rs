//! The continuous-batching runtime on the real model: concurrent greedy requests equal solo
//! runs (f32), chunked prefill and preemption do not change results, cancellation frees KV
//! blocks at once, deadlines, admission control (and submissions beyond the queue limit) and
//! field validation.

mod common;

use std::time::{Duration, Instant};

use veil_engine::backend::DType;
use veil_engine::output::StopConditions;
use veil_engine::runtime::{
    Event, FinishReason, Finished, Prompt, Request, RequestStream, RuntimeConfig, RuntimeHandle, SubmitError,
};
use veil_engine::sampling::SamplingParams;
use veil_engine::tokenizer::ChatMessage;

fn start(cfg: RuntimeConfig) -> RuntimeHandle {
    RuntimeHandle::start(common::load(DType::F32), "smollm2-135m-instruct".into(), cfg).expect("start")
}

fn greedy_request(prompt: Prompt, max_tokens: usize) -> Request {
    Request {
        prompt,
        sampling: SamplingParams::default(),
        stop: StopConditions {
            max_tokens,
            ..Default::default()
        },
        logprobs: false,
        top_logprobs: 0,
        deadline: None,
    }
}

fn long_story() -> Prompt {
    Prompt::Chat(vec![ChatMessage::new(
        "user",
        "Write a long story about a dragon who learns to cook.",
    )])
}

fn collect(mut stream: RequestStream) -> (Vec<u32>, Finished) {
    let mut ids = Vec::new();
    while let Some(ev) = stream.blocking_recv() {
        match ev {
            Event::Token(t) => ids.push(t.id),
            Event::Finished(f) => return (ids, f),
        }
    }
    panic!("stream ended without a Finished event");
}

fn prompts() -> Vec<Vec<u32>> {
    let mut p: Vec<Vec<u32>> = common::cases().into_iter().map(|c| c.input_ids).collect();
    let tok = veil_engine::tokenizer::Tokenizer::from_dir(&common::model_dir()).expect("tok");
    for q in [
        "Name three colours.",
        "What is 2 + 2?",
        "Write one sentence about the sea.",
        "Say hello in French.",
    ] {
        let text = tok
            .apply_chat_template(&[ChatMessage::new("user", q)])
            .expect("template");
        p.push(tok.encode(&text).expect("encode"));
    }
    p
}

/// Runs all prompts concurrently and checks each against the reference or the solo engine.
fn check_against_solo(cfg: RuntimeConfig, max_tokens: usize) -> RuntimeHandle {
    let prompts = prompts();
    let mut solo_model = common::load(DType::F32);
    let solo: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| common::greedy(&mut solo_model, p, max_tokens))
        .collect();
    drop(solo_model);
    let rt = start(cfg);
    let streams: Vec<RequestStream> = prompts
        .iter()
        .map(|p| {
            rt.submit(greedy_request(Prompt::Tokens(p.clone()), max_tokens))
                .expect("submit")
        })
        .collect();
    for (i, s) in streams.into_iter().enumerate() {
        let (ids, fin) = collect(s);
        assert_eq!(ids, solo[i], "request {i}");
        assert!(
            matches!(fin.reason, FinishReason::Stop | FinishReason::Length),
            "{fin:?}"
        );
        assert_eq!(fin.usage.completion_tokens, ids.len());
        assert_eq!(fin.usage.prompt_tokens, prompts[i].len());
    }
    // Reference cases also match the independent implementation.
    for (i, c) in common::cases().iter().enumerate() {
        let n = c.greedy_new_ids.len().min(max_tokens);
        assert_eq!(solo[i][..n], c.greedy_new_ids[..n]);
    }
    rt
}

#[test]
fn concurrent_greedy_equals_solo() {
    let rt = check_against_solo(RuntimeConfig::default(), 24);
    assert_eq!(rt.stats().kv_blocks_used, 0, "every block is returned");
}

#[test]
fn chunked_prefill_and_preemption_keep_results() {
    // A step budget of 16 tokens forces chunked prefill; 10 blocks of 16 positions cannot hold
    // seven sequences of ~50-60 positions, so sequences are preempted and recomputed.
    let probe = common::load(DType::F32);
    let block_bytes = probe.backend.kv_block_bytes(16);
    drop(probe);
    let cfg = RuntimeConfig {
        max_batched_tokens: 16,
        kv_cache_bytes: 10 * block_bytes,
        ..Default::default()
    };
    let rt = check_against_solo(cfg, 20);
    let stats = rt.stats();
    assert!(
        stats.preemptions_total > 0,
        "the test must exercise preemption: {stats:?}"
    );
    assert_eq!(stats.kv_blocks_used, 0);
}

#[test]
fn cancellation_frees_blocks_and_deadlines_end_requests() {
    let rt = start(RuntimeConfig::default());
    let mut stream = rt.submit(greedy_request(long_story(), 2000)).expect("submit");
    for _ in 0..3 {
        assert!(matches!(stream.blocking_recv(), Some(Event::Token(_))));
    }
    let t = Instant::now();
    while rt.stats().kv_blocks_used == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "stats never showed the running request"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(stream);
    let t = Instant::now();
    while rt.stats().kv_blocks_used > 0 || rt.stats().running > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "blocks not freed: {:?}",
            rt.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    let mut req = greedy_request(long_story(), 2000);
    req.deadline = Some(Instant::now() + Duration::from_millis(300));
    let (ids, fin) = collect(rt.submit(req).expect("submit"));
    assert_eq!(fin.reason, FinishReason::DeadlineExceeded);
    assert!(ids.len() < 2000);
    assert_eq!(rt.stats().kv_blocks_used, 0);
    rt.shutdown(Duration::from_secs(1));
    assert_eq!(
        rt.submit(greedy_request(Prompt::Text("hi".into()), 4)).err(),
        Some(SubmitError::ShuttingDown)
    );
}

#[test]
fn admission_control_and_validation() {
    let rt = start(RuntimeConfig {
        max_queue: 2,
        max_seqs: 1,
        ..Default::default()
    });
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..8 {
        match rt.submit(greedy_request(Prompt::Text("Count to one hundred.".into()), 64)) {
            Ok(s) => accepted.push(s),
            Err(SubmitError::QueueFull(msg)) => {
                assert!(msg.contains("limit 2"), "{msg}");
                refused += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(
        refused > 0 && accepted.len() >= 2,
        "accepted {}, refused {refused}",
        accepted.len()
    );
    drop(accepted);

    let field = |req: Request| match rt.submit(req) {
        Err(SubmitError::Invalid { field, .. } | SubmitError::TooLarge { field, .. }) => field,
        other => panic!("expected a field error, got {other:?}"),
    };
    let base = || greedy_request(Prompt::Text("hi".into()), 8);
    assert_eq!(
        field(Request {
            prompt: Prompt::Text(String::new()),
            ..base()
        }),
        "prompt"
    );
    assert_eq!(
        field(Request {
            prompt: Prompt::Chat(vec![]),
            ..base()
        }),
        "messages"
    );
    assert_eq!(
        field(Request {
            prompt: Prompt::Chat(vec![ChatMessage::new("wizard", "hi")]),
            ..base()
        }),
        "messages.role"
    );
    assert_eq!(
        field(Request {
            prompt: Prompt::Tokens(vec![]),
            ..base()
        }),
        "token_ids"
    );
    assert_eq!(
        field(Request {
            prompt: Prompt::Tokens(vec![1, 49152]),
            ..base()
        }),
        "token_ids"
    );
    assert_eq!(
        field(Request {
            prompt: Prompt::Tokens(vec![1; 9000]),
            ..base()
        }),
        "prompt"
    );
    assert_eq!(
        field(Request {
            prompt: Prompt::Text("x".repeat(2 << 20)),
            ..base()
        }),
        "prompt"
    );
    assert_eq!(field(greedy_request(Prompt::Text("hi".into()), 0)), "max_tokens");
    assert_eq!(
        field(greedy_request(Prompt::Text("hi".into()), 1 << 30)),
        "max_tokens"
    );
    let with = |sampling: SamplingParams| Request { sampling, ..base() };
    assert_eq!(
        field(with(SamplingParams {
            temperature: -0.5,
            ..Default::default()
        })),
        "temperature"
    );
    assert_eq!(
        field(with(SamplingParams {
            top_p: 0.0,
            ..Default::default()
        })),
        "top_p"
    );
    assert_eq!(
        field(with(SamplingParams {
            top_p: 1.5,
            ..Default::default()
        })),
        "top_p"
    );
    assert_eq!(
        field(Request {
            top_logprobs: 1000,
            ..base()
        }),
        "top_logprobs"
    );
    let mut r = base();
    r.stop.stop_strings = vec![String::new()];
    assert_eq!(field(r), "stop");
}

/// Waits until `ok(stats)` holds, for up to 10 s.
fn wait_stats(rt: &RuntimeHandle, ok: impl Fn(&veil_engine::runtime::RuntimeStats) -> bool) {
    let t = Instant::now();
    while !ok(&rt.stats()) {
        assert!(t.elapsed() < Duration::from_secs(10), "stuck at {:?}", rt.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn submissions_beyond_the_queue_limit() {
    let rt = start(RuntimeConfig {
        max_queue: 1,
        max_seqs: 1,
        ..Default::default()
    });
    let story = || greedy_request(long_story(), 500);
    let running = rt.submit(story()).expect("runs");
    wait_stats(&rt, |s| s.running == 1 && s.queued == 0);
    let waiting = rt.submit(story()).expect("waits");
    assert!(matches!(rt.submit(story()), Err(SubmitError::QueueFull(_))));
    assert!(!rt.queue_has_room());
    // Beyond the limit: queued anyway, and not counted against the limit for others.
    let beyond = rt.submit_beyond_limit(story()).expect("queued beyond the limit");
    assert_eq!(rt.stats().queued, 2);
    assert!(matches!(rt.submit(story()), Err(SubmitError::QueueFull(_))));
    drop(waiting);
    wait_stats(&rt, |s| s.queued == 1);
    assert!(rt.queue_has_room());
    let again = rt.submit(story()).expect("room again");
    // Every stream still ends; the counters return to zero.
    drop((running, beyond, again));
    wait_stats(&rt, |s| s.queued == 0 && s.running == 0 && s.kv_blocks_used == 0);
    assert!(rt.queue_has_room());
}
