//! Soak: the real `veil serve` (simulated attestation, f32, a KV cache small enough that
//! sequences are preempted) under 64 concurrent clients for a bounded time (`VEIL_SOAK_SECS`,
//! default 45 s), mixing plaintext `Generate` and `GenerateBatch` with sealed calls through
//! `veil_client::Client`, sampled and greedy, with and without stop strings and log-probabilities.
//!
//! Checks: no unexpected error (RESOURCE_EXHAUSTED from the bounded queue is allowed, counted,
//! and answered with back-off); every call sent either completes (each sequence with exactly one
//! final message, STOP or LENGTH, within its token budget; sealed streams with a verified
//! receipt) or is refused cleanly: sent = completed + refused; the server's counters agree with
//! the clients' (sequences finished, requests refused); once the load stops, no KV block is in
//! use and nothing runs or waits; resident memory (VmRSS, sampled every 500 ms after a warm-up)
//! does not grow: the mean of the last third is within 10% + 32 MiB of the first third's; the
//! server still drains and exits 0 on SIGTERM; no call takes over 2 minutes (a batch used to
//! starve behind single calls under this load). The numbers, with call latencies by kind, are
//! printed (run with `--nocapture`) for docs/reliability.md.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::server::Server;
use tonic::Code;
use tonic::transport::Channel;
use veil_client::{Client, ClientError, Policy};
use veil_proto::v1::generate_request::Input;
use veil_proto::v1::generate_response::Event;
use veil_proto::v1::inference_client::InferenceClient;
use veil_proto::v1::{self, FinishReason, GenerateBatchRequest, GenerateRequest, GenerationParams};

/// Concurrent clients.
const CLIENTS: usize = 64;
/// The longest one call may take before it counts as hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

const PROMPTS: [&str; 8] = [
    "Tell me about the moon.",
    "What is two plus two?",
    "Name three colors.",
    "Write a haiku about rain.",
    "Say hello in French.",
    "Why is the sky blue?",
    "List some fruits.",
    "Describe a cat in one sentence.",
];

/// What the clients saw.
#[derive(Debug, Default)]
struct Tally {
    /// Calls sent.
    sent: AtomicU64,
    /// Calls that completed (every sequence finished).
    completed: AtomicU64,
    /// Calls refused with RESOURCE_EXHAUSTED.
    refused: AtomicU64,
    /// Sequences finished (a Generate is one, a batch item one).
    sequences: AtomicU64,
    /// Tokens received.
    tokens: AtomicU64,
    /// Calls by kind: plaintext Generate, plaintext batch, sealed Generate, sealed batch.
    by_kind: [AtomicU64; 4],
    /// Unexpected failures, described.
    errors: std::sync::Mutex<Vec<String>>,
    /// Wall time of each completed call, in milliseconds, by kind.
    latencies_ms: [std::sync::Mutex<Vec<u64>>; 4],
}

impl Tally {
    fn error(&self, what: String) {
        self.errors.lock().unwrap().push(what);
    }
}

/// A small deterministic generator per client.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random request: chat or text prompt, 4 to 24 tokens, greedy or seeded sampling, sometimes
/// a stop string or log-probabilities.
fn request(rng: &mut Rng) -> (GenerateRequest, u32) {
    let prompt = PROMPTS[rng.below(PROMPTS.len() as u64) as usize];
    let max_tokens = 4 + rng.below(21) as u32;
    let input = if rng.below(2) == 0 {
        Input::Chat(v1::ChatInput {
            messages: vec![v1::ChatMessage {
                role: "user".into(),
                content: prompt.into(),
            }],
        })
    } else {
        Input::Prompt(prompt.into())
    };
    let sampled = rng.below(2) == 0;
    let params = GenerationParams {
        temperature: Some(if sampled { 0.8 } else { 0.0 }),
        top_p: sampled.then_some(0.95),
        seed: sampled.then(|| rng.next()),
        max_tokens: Some(max_tokens),
        stop: if rng.below(4) == 0 {
            vec![".".into()]
        } else {
            Vec::new()
        },
        logprobs: Some(rng.below(3) == 0),
        top_logprobs: (rng.below(5) == 0).then_some(2),
        ..Default::default()
    };
    (
        GenerateRequest {
            input: Some(input),
            params: Some(params),
        },
        max_tokens,
    )
}

/// How one call ended.
enum Outcome {
    /// Every sequence finished: (sequences, tokens).
    Completed(u64, u64),
    /// RESOURCE_EXHAUSTED.
    Refused,
    /// Anything else.
    Failed(String),
}

fn finished_ok(f: &v1::Finished, tokens: usize, max_tokens: u32) -> Result<(), String> {
    let reason = FinishReason::try_from(f.reason).map_err(|_| format!("unknown reason {}", f.reason))?;
    if !matches!(reason, FinishReason::Stop | FinishReason::Length) {
        return Err(format!("finish reason {reason:?} ({})", f.error));
    }
    if tokens > max_tokens as usize {
        return Err(format!("{tokens} tokens for max_tokens {max_tokens}"));
    }
    Ok(())
}

async fn plaintext_generate(rpc: &mut InferenceClient<Channel>, req: GenerateRequest, max: u32) -> Outcome {
    let mut call = tonic::Request::new(req);
    call.set_timeout(CALL_TIMEOUT);
    let mut stream = match rpc.generate(call).await {
        Ok(s) => s.into_inner(),
        Err(s) if s.code() == Code::ResourceExhausted => return Outcome::Refused,
        Err(s) => return Outcome::Failed(format!("Generate refused: {s:?}")),
    };
    let mut tokens = 0;
    loop {
        match stream.message().await {
            Ok(Some(v1::GenerateResponse {
                event: Some(Event::Delta(d)),
            })) => tokens += d.tokens.len(),
            Ok(Some(v1::GenerateResponse {
                event: Some(Event::Finished(f)),
            })) => {
                if let Err(e) = finished_ok(&f, tokens, max) {
                    return Outcome::Failed(format!("Generate: {e}"));
                }
                return match stream.message().await {
                    Ok(None) => Outcome::Completed(1, tokens as u64),
                    other => Outcome::Failed(format!("Generate: after the final message: {other:?}")),
                };
            }
            Ok(Some(m)) => return Outcome::Failed(format!("Generate: empty message {m:?}")),
            Ok(None) => return Outcome::Failed("Generate: no final message".into()),
            Err(s) => return Outcome::Failed(format!("Generate stream: {s:?}")),
        }
    }
}

async fn plaintext_batch(rpc: &mut InferenceClient<Channel>, reqs: Vec<(GenerateRequest, u32)>) -> Outcome {
    let max: Vec<u32> = reqs.iter().map(|r| r.1).collect();
    let mut call = tonic::Request::new(GenerateBatchRequest {
        items: reqs.into_iter().map(|r| r.0).collect(),
        params: None,
    });
    call.set_timeout(CALL_TIMEOUT);
    let mut stream = match rpc.generate_batch(call).await {
        Ok(s) => s.into_inner(),
        Err(s) if s.code() == Code::ResourceExhausted => return Outcome::Refused,
        Err(s) => return Outcome::Failed(format!("GenerateBatch refused: {s:?}")),
    };
    let mut seen = vec![false; max.len()];
    let mut tokens = 0;
    loop {
        match stream.message().await {
            Ok(Some(item)) => {
                if let Err(e) = batch_item(&item, &mut seen, &max, &mut tokens) {
                    return Outcome::Failed(format!("GenerateBatch: {e}"));
                }
            }
            Ok(None) if seen.iter().all(|&s| s) => return Outcome::Completed(seen.len() as u64, tokens),
            Ok(None) => return Outcome::Failed(format!("GenerateBatch: items missing: {seen:?}")),
            Err(s) => return Outcome::Failed(format!("GenerateBatch stream: {s:?}")),
        }
    }
}

/// Checks one batch item: its index is new and in range, it ended well within its budget;
/// marks it seen and counts its tokens.
fn batch_item(
    item: &v1::GenerateBatchResponse,
    seen: &mut [bool],
    max: &[u32],
    tokens: &mut u64,
) -> Result<(), String> {
    let i = item.index as usize;
    if i >= seen.len() || seen[i] {
        return Err(format!("item {i} unexpected"));
    }
    seen[i] = true;
    let f = item.finished.as_ref().ok_or("item without an end")?;
    finished_ok(f, item.tokens.len(), max[i]).map_err(|e| format!("item {i}: {e}"))?;
    *tokens += item.tokens.len() as u64;
    Ok(())
}

/// A sealed error or status that means "queue full, back off".
fn exhausted(e: &ClientError) -> bool {
    match e {
        ClientError::Status(s) => s.code() == Code::ResourceExhausted,
        ClientError::Server { code, .. } => *code == Code::ResourceExhausted,
        _ => false,
    }
}

async fn sealed_generate(client: &mut Client, req: GenerateRequest, max: u32) -> Outcome {
    let mut stream = match client.generate(&req).await {
        Ok(s) => s,
        Err(e) if exhausted(&e) => return Outcome::Refused,
        Err(e) => return Outcome::Failed(format!("SealedGenerate: {e}")),
    };
    let (mut tokens, mut finished) = (0, None);
    loop {
        match stream.message().await {
            Ok(Some(m)) => match m.event {
                Some(Event::Delta(d)) if finished.is_none() => tokens += d.tokens.len(),
                Some(Event::Finished(f)) if finished.is_none() => finished = Some(f),
                other => return Outcome::Failed(format!("SealedGenerate: unexpected {other:?}")),
            },
            Ok(None) => break,
            Err(e) if exhausted(&e) && finished.is_none() && tokens == 0 => return Outcome::Refused,
            Err(e) => return Outcome::Failed(format!("SealedGenerate stream: {e}")),
        }
    }
    let Some(f) = finished else {
        return Outcome::Failed("SealedGenerate: no final message".into());
    };
    if let Err(e) = finished_ok(&f, tokens, max) {
        return Outcome::Failed(format!("SealedGenerate: {e}"));
    }
    match stream.receipt().map(|r| r.verify()) {
        Some(Ok(())) => Outcome::Completed(1, tokens as u64),
        other => Outcome::Failed(format!("SealedGenerate receipt: {other:?}")),
    }
}

async fn sealed_batch(client: &mut Client, reqs: Vec<(GenerateRequest, u32)>) -> Outcome {
    let max: Vec<u32> = reqs.iter().map(|r| r.1).collect();
    let batch = GenerateBatchRequest {
        items: reqs.into_iter().map(|r| r.0).collect(),
        params: None,
    };
    let mut stream = match client.generate_batch(&batch).await {
        Ok(s) => s,
        Err(e) if exhausted(&e) => return Outcome::Refused,
        Err(e) => return Outcome::Failed(format!("SealedGenerateBatch: {e}")),
    };
    let mut seen = vec![false; max.len()];
    let mut tokens = 0;
    loop {
        match stream.message().await {
            Ok(Some(item)) => {
                if let Err(e) = batch_item(&item, &mut seen, &max, &mut tokens) {
                    return Outcome::Failed(format!("SealedGenerateBatch: {e}"));
                }
            }
            Ok(None) => break,
            Err(e) => return Outcome::Failed(format!("SealedGenerateBatch stream: {e}")),
        }
    }
    if !seen.iter().all(|&s| s) {
        return Outcome::Failed(format!("SealedGenerateBatch: items missing: {seen:?}"));
    }
    match stream.receipt().map(|r| r.verify()) {
        Some(Ok(())) => Outcome::Completed(seen.len() as u64, tokens),
        other => Outcome::Failed(format!("SealedGenerateBatch receipt: {other:?}")),
    }
}

/// One client: calls of every kind in turn until `stop`, backing off when refused.
async fn client_loop(index: usize, channel: Channel, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut rpc = InferenceClient::new(channel.clone());
    let mut sealed = Client::with_channel(
        channel,
        Policy {
            allow_simulated: true,
            ..Policy::default()
        },
    );
    sealed.set_timeout(Some(CALL_TIMEOUT));
    let mut backoff = Duration::from_millis(25);
    let mut turn = index;
    while !stop.load(Ordering::Relaxed) {
        let kind = turn % 4;
        turn += 1;
        let batch = |rng: &mut Rng| (0..2 + rng.below(3)).map(|_| request(rng)).collect::<Vec<_>>();
        tally.sent.fetch_add(1, Ordering::Relaxed);
        tally.by_kind[kind].fetch_add(1, Ordering::Relaxed);
        let call_started = Instant::now();
        let outcome = match kind {
            0 => {
                let (r, m) = request(&mut rng);
                plaintext_generate(&mut rpc, r, m).await
            }
            1 => plaintext_batch(&mut rpc, batch(&mut rng)).await,
            2 => {
                let (r, m) = request(&mut rng);
                sealed_generate(&mut sealed, r, m).await
            }
            _ => sealed_batch(&mut sealed, batch(&mut rng)).await,
        };
        match outcome {
            Outcome::Completed(seqs, tokens) => {
                tally.completed.fetch_add(1, Ordering::Relaxed);
                tally.sequences.fetch_add(seqs, Ordering::Relaxed);
                tally.tokens.fetch_add(tokens, Ordering::Relaxed);
                let ms = call_started.elapsed().as_millis() as u64;
                tally.latencies_ms[kind].lock().unwrap().push(ms);
                backoff = Duration::from_millis(25);
            }
            Outcome::Refused => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                // Exponential back-off with jitter, capped at 1 s.
                let jitter = Duration::from_millis(rng.below(25));
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Outcome::Failed(e) => tally.error(format!("client {index}: {e}")),
        }
    }
}

fn soak_secs() -> u64 {
    std::env::var("VEIL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&s| s > 0)
        .unwrap_or(45)
}

/// The `p` quantile of sorted milliseconds, in seconds.
fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1e3
}

fn mean(v: &[u64]) -> f64 {
    v.iter().sum::<u64>() as f64 / v.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    let secs = soak_secs();
    let args: Vec<String> = [
        "--attestation",
        "simulated",
        "--metrics-listen",
        "127.0.0.1:0",
        "--dtype",
        "f32",
        "--threads",
        "2",
        // 34 blocks of 16 positions: about 10 of these sequences fit, so they get preempted.
        "--kv-cache-mb",
        "24",
        "--max-seqs",
        "32",
        // A bounded queue: some calls are refused and retried with back-off.
        "--max-queue",
        "24",
        "--attestation-rate",
        "200",
        "--attestation-burst",
        "128",
        "--shutdown-grace",
        "10",
    ]
    .map(String::from)
    .to_vec();
    let mut server = Server::spawn(&args);
    let blocks = server.metric("veil_kv_blocks_total");
    let rss_start = server.rss_kib();

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    // A few channels (HTTP/2 connections) shared by the clients, as real client pools do.
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(server.channel().await);
    }
    let started = Instant::now();
    for i in 0..CLIENTS {
        clients.spawn(client_loop(
            i,
            channels[i % channels.len()].clone(),
            stop.clone(),
            tally.clone(),
        ));
    }

    // Sample resident memory every 500 ms after a warm-up of a tenth of the run (at least 3 s).
    let warmup = Duration::from_secs(secs / 10).max(Duration::from_secs(3));
    let mut rss = Vec::new();
    let mut last_report = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if started.elapsed() >= warmup {
            rss.push(server.rss_kib());
        }
        if last_report.elapsed() >= Duration::from_secs(15) {
            last_report = Instant::now();
            eprintln!(
                "soak: {:>4.0} s: {} calls done, {} refused, running {}, queued {}, KV {}/{blocks}",
                started.elapsed().as_secs_f64(),
                tally.completed.load(Ordering::Relaxed),
                tally.refused.load(Ordering::Relaxed),
                server.metric("veil_running_sequences"),
                server.metric("veil_queue_depth"),
                server.metric("veil_kv_blocks_used"),
            );
        }
        assert!(
            tally.errors.lock().unwrap().is_empty(),
            "unexpected errors: {:#?}",
            tally.errors.lock().unwrap()
        );
    }
    stop.store(true, Ordering::Relaxed);
    // Every client finishes its call in flight.
    let drain = tokio::time::timeout(CALL_TIMEOUT, async {
        while let Some(r) = clients.join_next().await {
            r.unwrap();
        }
    })
    .await;
    assert!(drain.is_ok(), "clients did not finish their last calls");
    let elapsed = started.elapsed().as_secs_f64();

    let errors = tally.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "unexpected errors: {errors:#?}");
    let t = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (sent, completed, refused) = (t(&tally.sent), t(&tally.completed), t(&tally.refused));
    let (sequences, tokens) = (t(&tally.sequences), t(&tally.tokens));
    assert_eq!(sent, completed + refused, "every call completed or was refused");
    assert!(completed > 0);
    for (k, n) in tally.by_kind.iter().enumerate() {
        assert!(t(n) > 0, "no call of kind {k}");
    }

    // Idle again: nothing running or waiting, every KV block free.
    server.wait_metric("veil_kv_blocks_used", Duration::from_secs(10), |v| v == 0.0);
    server.wait_metric("veil_running_sequences", Duration::from_secs(10), |v| v == 0.0);
    server.wait_metric("veil_queue_depth", Duration::from_secs(10), |v| v == 0.0);
    // The server's counters agree with the clients'.
    let finished = |r: &str| server.metric(&format!("veil_requests_total{{finish_reason=\"{r}\"}}"));
    assert_eq!(finished("stop") + finished("length"), sequences as f64);
    for r in ["cancelled", "deadline_exceeded", "error"] {
        assert_eq!(finished(r), 0.0, "requests finished with {r}");
    }
    assert_eq!(
        server.metric("veil_requests_rejected_total{code=\"resource_exhausted\"}"),
        refused as f64
    );
    assert_eq!(
        server.metric("veil_requests_rejected_total{code=\"invalid_argument\"}"),
        0.0
    );
    let preemptions = server.metric("veil_preemptions_total");
    let generated = server.metric("veil_generated_tokens_total");

    // Memory: the last third of the samples is not above the first third (10% + 32 MiB slack).
    assert!(rss.len() >= 6, "too few memory samples: {rss:?}");
    let third = rss.len() / 3;
    let first = mean(&rss[..third]);
    let last = mean(&rss[rss.len() - third..]);
    let max = *rss.iter().max().unwrap();
    let mut all = Vec::new();
    let mut by_kind = Vec::new();
    for l in &tally.latencies_ms {
        let mut l = l.lock().unwrap().clone();
        all.extend_from_slice(&l);
        l.sort_unstable();
        by_kind.push(format!("{:.1}/{:.1}", pct(&l, 0.5), pct(&l, 1.0)));
    }
    all.sort_unstable();
    println!(
        "soak report: {CLIENTS} concurrent clients for {elapsed:.1} s against a KV cache of {blocks} \
         blocks; calls sent {sent} = completed {completed} + refused (RESOURCE_EXHAUSTED) {refused}; \
         unexpected errors 0; {:.1} calls/s, {sequences} sequences ({:.1}/s), {tokens} tokens \
         received ({:.1}/s; server generated {generated}); calls by kind [plain Generate, plain \
         batch, sealed Generate, sealed batch] = {:?}; preemptions {preemptions}; VmRSS start {} \
         MiB, mean first third {:.1} MiB, mean last third {:.1} MiB, max {} MiB ({} samples); \
         completed-call latency p50 {:.1} s, p99 {:.1} s, max {:.1} s (p50/max by kind, s: {:?})",
        completed as f64 / elapsed,
        sequences as f64 / elapsed,
        tokens as f64 / elapsed,
        tally.by_kind.iter().map(t).collect::<Vec<_>>(),
        rss_start / 1024,
        first / 1024.0,
        last / 1024.0,
        max / 1024,
        rss.len(),
        pct(&all, 0.5),
        pct(&all, 0.99),
        pct(&all, 1.0),
        by_kind,
    );
    assert!(
        last <= first * 1.10 + 32.0 * 1024.0,
        "resident memory grew: first third {first:.0} KiB, last third {last:.0} KiB: {rss:?}"
    );
    assert!(preemptions > 0.0, "the small KV cache never forced a preemption");

    // Still healthy: drains and exits 0.
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}:\n{}", server.log());
}
