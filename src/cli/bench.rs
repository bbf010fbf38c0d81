//! `veil bench`: a load generator against a running Veil server.
//!
//! Closed loop (`--concurrency N`: N clients, each sending its next request as soon as the
//! previous one finishes) or open loop (`--rate R`: Poisson arrivals, however many are in
//! flight), or a sweep of closed-loop levels (`--sweep 1,4,16,64`). Prompts are random ordinary
//! vocabulary ids sent as `TokenInput`, so their lengths are exact; every request asks for
//! `max_tokens` = the output length, but may end earlier (the API has no ignore-EOS), so
//! throughput counts the completion tokens the server reports. Latencies are measured on the
//! client: TTFT from sending the request to the first message carrying a token, TPOT as (last
//! token time - first token time) / (tokens - 1).
//!
//! `--sealed` runs the same workload in plaintext and sealed (`SealedGenerate`), alternating, at
//! each closed-loop level, and compares the two (see [`sealed`]).

mod compare;
mod compare_cc;
mod load;
mod report;
mod sealed;
mod transport;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use veil_proto::v1::generate_request::Input;
use veil_proto::v1::generate_response::Event;
use veil_proto::v1::{
    FinishReason, GenerateRequest, GenerationParams, ModelInfoRequest, ModelInfoResponse, TokenInput,
};

use self::load::{LengthSpec, RequestSpec, Workload};
use self::report::{LevelResult, Mode, RequestRecord};
use self::sealed::SealedReport;
use self::transport::Transport;
use super::remote::{DEFAULT_SERVER, connect, server_url, status_error};

/// Arguments of `veil bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    /// The server: URL or HOST:PORT.
    #[arg(long, default_value = DEFAULT_SERVER, env = "VEIL_SERVER")]
    server: String,
    /// Closed loop: this many clients, each sending its next request when the previous ends
    /// [default: 1; with --sealed, levels 1 and 16; with --compare-cc, 1 and 32].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: Option<u32>,
    /// Open loop: Poisson arrivals at this many requests per second, unbounded in flight.
    #[arg(long, conflicts_with_all = ["concurrency", "sweep", "sealed"])]
    rate: Option<f64>,
    /// Closed-loop sweep: measure at each of these concurrencies in turn (e.g. 1,4,16,64).
    #[arg(long, value_delimiter = ',', conflicts_with = "concurrency",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    sweep: Vec<u32>,
    /// Prompt tokens per request: N, or LO..HI drawn uniformly (inclusive).
    #[arg(long, default_value = "128")]
    prompt_tokens: LengthSpec,
    /// Output tokens per request (`max_tokens`): N, or LO..HI drawn uniformly (inclusive).
    #[arg(long, default_value = "128")]
    output_tokens: LengthSpec,
    /// Measured requests (per level with --sweep).
    #[arg(long)]
    requests: Option<u64>,
    /// Measured requests per client (closed loop; per level with --sweep); with --requests,
    /// the larger of the two counts applies.
    #[arg(long, conflicts_with = "rate")]
    requests_per_client: Option<u64>,
    /// Stop sending new requests after this many seconds (per level); in-flight requests
    /// finish and count. Default 30 when no request count is given.
    #[arg(long)]
    duration: Option<f64>,
    /// Requests sent (at the same load) and completed before each measurement; not counted.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Sampling temperature of every request.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Seed of the workload (prompts, lengths, arrival times, per-request sampling seeds).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Deadline of each request, seconds.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    /// Write all parameters and results (every request included) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Measure the cost of sealing: run the same workload in plaintext and sealed
    /// (`SealedGenerate`, attested first), alternating, at each closed-loop level, and compare
    /// them. The server must have its plaintext RPCs on (`veil serve --plaintext on`; a
    /// simulated server has them on by default).
    #[arg(long, group = "comparison")]
    sealed: bool,
    /// With --sealed: the attestation policy (TOML, see docs/attestation.md) the server must
    /// satisfy [default: strict: hardware evidence only, GPUs in CC mode].
    #[arg(long, value_name = "FILE", requires = "sealed")]
    policy: Option<PathBuf>,
    /// With --sealed or --compare-cc: measure each mode this many times per level, in the
    /// balanced order A B B A ... (against drift); each measurement stops as a level does
    /// (--requests, --requests-per-client, --duration); results are pooled per mode.
    #[arg(long, default_value_t = 2, requires = "comparison",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,
    /// Compare CC transfer modes (e.g. `off,sealed`; the first is the baseline): for each, start
    /// a `veil serve --cc MODE` of this executable on a free loopback port (simulated attestation
    /// and plaintext RPCs unless --serve-arg says otherwise), run the same workload, and report
    /// throughput, TTFT, TPOT and model load time with each mode's difference in percent.
    /// --server is not used.
    #[arg(long, value_delimiter = ',', group = "comparison", conflicts_with_all = ["sealed", "rate"])]
    compare_cc: Vec<veil_engine::cc::CcMode>,
    /// With --compare-cc: an argument for every `veil serve` started (repeat it, e.g.
    /// `--serve-arg=--device --serve-arg=cuda:0 --serve-arg=--model --serve-arg=DIR`).
    #[arg(long, allow_hyphen_values = true, value_name = "ARG")]
    serve_arg: Vec<String>,
    /// With --compare-cc: write a chart (SVG) of the comparison to this file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

/// `veil bench` subcommands.
#[derive(Debug, clap::Subcommand)]
enum BenchCommand {
    /// Compare two runs saved with `veil bench --json` (e.g. a CC-on and a CC-off boot of one
    /// machine): a markdown table of every metric with the difference in percent, and an SVG
    /// chart.
    Compare(compare::CompareArgs),
}

/// When a phase stops sending requests.
#[derive(Debug, Clone, Copy)]
struct StopAt {
    requests: Option<u64>,
    duration: Option<Duration>,
}

/// What one phase measured.
#[derive(Debug)]
struct Phase {
    records: Vec<RequestRecord>,
    wall_s: f64,
}

pub(crate) fn run(mut a: BenchArgs) -> anyhow::Result<()> {
    if let Some(BenchCommand::Compare(c)) = a.command.take() {
        return compare::run(c);
    }
    if let Some(r) = a.rate
        && !(r.is_finite() && r > 0.0)
    {
        anyhow::bail!("--rate must be a positive number of requests per second");
    }
    if let Some(d) = a.duration
        && !(d.is_finite() && d > 0.0)
    {
        anyhow::bail!("--duration must be a positive number of seconds");
    }
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        anyhow::bail!("--timeout must be a positive number of seconds");
    }
    if a.requests == Some(0) || a.requests_per_client == Some(0) {
        anyhow::bail!("--requests and --requests-per-client must be at least 1");
    }
    // The client's work is light: one thread leaves the cores to a local server.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(bench(a))
}

async fn bench(a: BenchArgs) -> anyhow::Result<()> {
    if !a.compare_cc.is_empty() {
        let modes = &a.compare_cc;
        if modes.len() < 2 || (1..modes.len()).any(|i| modes[..i].contains(&modes[i])) {
            anyhow::bail!("--compare-cc needs two or more different modes, e.g. off,sealed");
        }
        let levels = self::modes(&a);
        let report = compare_cc::compare(&a, &levels).await?;
        return write_cc_json(&a, &report);
    }
    if !a.serve_arg.is_empty() || a.svg.is_some() {
        anyhow::bail!("--serve-arg and --svg go with --compare-cc");
    }
    let mut client = connect(&a.server).await?;
    let info = client
        .model_info(ModelInfoRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("ModelInfo: {}", status_error(&s)))?
        .into_inner();
    let longest = u64::from(a.prompt_tokens.max()) + u64::from(a.output_tokens.max());
    if longest > u64::from(info.context_length) {
        anyhow::bail!(
            "prompt plus output tokens ({longest}) exceed the model's context length ({})",
            info.context_length
        );
    }
    if info.vocab_size < 2 {
        anyhow::bail!("the server reports a vocabulary of {} tokens", info.vocab_size);
    }
    eprintln!(
        "server {}: {} ({}, {}, {}), context {}, max {} sequences",
        server_url(&a.server),
        info.name,
        info.architecture,
        info.dtype,
        info.backend,
        info.context_length,
        info.limits.as_ref().map_or(0, |l| l.max_seqs),
    );
    if !info.plaintext_enabled {
        anyhow::bail!(
            "the server's plaintext Generate RPCs are off (ModelInfo.plaintext_enabled = false; a \
             confidential server turns them off): veil bench{} needs them, restart the server \
             with `veil serve --plaintext on`",
            if a.sealed {
                " --sealed compares against them and"
            } else {
                ""
            }
        );
    }
    let modes = modes(&a);
    let workload = Workload::new(a.seed, a.prompt_tokens, a.output_tokens, info.vocab_size);
    let plain = Transport::Plain(client);
    if a.sealed {
        let report = sealed::compare(&a, &plain, &modes, &workload).await?;
        return write_json(&a, &info, &[], Some(&report));
    }
    let mut results = Vec::new();
    for mode in modes {
        warmup(&plain, &a, mode, &workload).await;
        let stop = stop_at(&a, mode);
        let phase = run_phase(&plain, &a, mode, &workload, stop, "measure").await;
        let level = LevelResult::new(mode, phase.records, phase.wall_s);
        if a.sweep.len() > 1 {
            eprintln!(
                "{}: {:.1} output tok/s, {} ok, {} errors",
                mode.describe(),
                level.output_tokens_per_s,
                level.ok,
                level.error_count()
            );
        }
        results.push(level);
    }
    if a.sweep.len() > 1 {
        print!("{}", report::sweep_table(&results));
    } else {
        for l in &results {
            print!("{}", report::level_table(l));
        }
    }
    write_json(&a, &info, &results, None)
}

/// The levels to measure: the open-loop rate, the sweep, the one concurrency or, with
/// --sealed (--compare-cc) and none of these given, closed loop at 1 and 16 (32) clients.
fn modes(a: &BenchArgs) -> Vec<Mode> {
    let closed = |c: &u32| Mode::Closed {
        concurrency: *c as usize,
    };
    if let Some(rate) = a.rate {
        vec![Mode::Open { rate }]
    } else if !a.sweep.is_empty() {
        a.sweep.iter().map(closed).collect()
    } else if let Some(c) = a.concurrency {
        vec![closed(&c)]
    } else if a.sealed {
        [1, 16].iter().map(closed).collect()
    } else if !a.compare_cc.is_empty() {
        [1, 32].iter().map(closed).collect()
    } else {
        vec![closed(&1)]
    }
}

/// Runs `--warmup` requests (if any) under `mode` through `transport`, uncounted. They come
/// from their own workload (another seed), so measured requests are never repeats of them.
async fn warmup(transport: &Transport, a: &BenchArgs, mode: Mode, workload: &Workload) {
    if a.warmup == 0 {
        return;
    }
    let stop = StopAt {
        requests: Some(a.warmup),
        duration: None,
    };
    let warmup = workload.reseeded(a.seed ^ 0x5741_524D_5550);
    let what = format!("warmup {}", transport.name());
    run_phase(transport, a, mode, &warmup, stop, &what).await;
}

/// Writes the `--json` report, if asked for.
fn write_json(
    a: &BenchArgs,
    info: &ModelInfoResponse,
    results: &[LevelResult],
    sealed: Option<&SealedReport>,
) -> anyhow::Result<()> {
    let Some(path) = &a.json else {
        return Ok(());
    };
    let doc = json_report(a, info, results, sealed);
    let text = serde_json::to_string_pretty(&doc).context("encoding the JSON report")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Writes the `--json` report of `--compare-cc`, if asked for.
fn write_cc_json(a: &BenchArgs, report: &compare_cc::CcReport) -> anyhow::Result<()> {
    let Some(path) = &a.json else {
        return Ok(());
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let doc = serde_json::json!({
        "tool": "veil bench",
        "version": env!("CARGO_PKG_VERSION"),
        "timestamp": report::rfc3339_utc(now.as_secs()),
        "unix_time": now.as_secs_f64(),
        "parameters": {
            "concurrency": a.concurrency,
            "sweep": a.sweep,
            "prompt_tokens": a.prompt_tokens.to_string(),
            "output_tokens": a.output_tokens.to_string(),
            "requests": a.requests,
            "requests_per_client": a.requests_per_client,
            "duration_s": a.duration,
            "warmup": a.warmup,
            "temperature": a.temperature,
            "seed": a.seed,
            "timeout_s": a.timeout,
            "rounds": a.rounds,
            "serve_args": a.serve_arg,
        },
        "results": [],
        "cc_comparison": report,
    });
    let text = serde_json::to_string_pretty(&doc).context("encoding the JSON report")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// The stopping rule of one measured level.
fn stop_at(a: &BenchArgs, mode: Mode) -> StopAt {
    let per_client = match mode {
        Mode::Closed { concurrency } => a.requests_per_client.map(|k| k * concurrency as u64),
        Mode::Open { .. } => None,
    };
    let requests = match (a.requests, per_client) {
        (Some(n), Some(m)) => Some(n.max(m)),
        (n, m) => n.or(m),
    };
    let duration = match (requests, a.duration) {
        (None, None) => Some(30.0),
        (_, d) => d,
    };
    StopAt {
        requests,
        duration: duration.map(Duration::from_secs_f64),
    }
}

/// Runs requests under `mode` through `transport` until `stop`, and waits for all of them.
async fn run_phase(
    transport: &Transport,
    a: &BenchArgs,
    mode: Mode,
    workload: &Workload,
    stop: StopAt,
    what: &str,
) -> Phase {
    let pb = progress_bar(mode, stop, what);
    let start = Instant::now();
    let deadline = stop.duration.map(|d| start + d);
    let limit = stop.requests.unwrap_or(u64::MAX);
    let params = Arc::new(RequestParams {
        temperature: a.temperature,
        timeout: Duration::from_secs_f64(a.timeout),
        start,
    });
    let mut tasks = tokio::task::JoinSet::new();
    match mode {
        Mode::Closed { concurrency } => {
            let next = Arc::new(AtomicU64::new(0));
            for _ in 0..concurrency {
                let (mut client, workload, next, params, pb) = (
                    transport.clone(),
                    workload.clone(),
                    next.clone(),
                    params.clone(),
                    pb.clone(),
                );
                tasks.spawn(async move {
                    let mut records = Vec::new();
                    loop {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= limit {
                            break;
                        }
                        let r = one_request(&mut client, workload.request(i), &params).await;
                        tick(&pb, &r);
                        records.push(r);
                    }
                    records
                });
            }
        }
        Mode::Open { rate } => {
            let mut rng = load::Rng::new(a.seed ^ 0x4F50_454E);
            let mut at = start;
            for i in 0..limit {
                if deadline.is_some_and(|d| at >= d) {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                let (mut client, spec, params, pb) =
                    (transport.clone(), workload.request(i), params.clone(), pb.clone());
                tasks.spawn(async move {
                    let r = one_request(&mut client, spec, &params).await;
                    tick(&pb, &r);
                    vec![r]
                });
                at += Duration::from_secs_f64(rng.exponential(rate));
            }
        }
    }
    let mut records = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(r) => records.extend(r),
            Err(e) => tracing::error!("a bench task failed: {e}"),
        }
    }
    pb.finish_and_clear();
    records.sort_by(|x, y| x.start_s.total_cmp(&y.start_s));
    let wall_s = records.iter().map(|r| r.start_s + r.e2e_s).fold(0.0, f64::max)
        - records.first().map_or(0.0, |r| r.start_s);
    Phase { records, wall_s }
}

fn progress_bar(mode: Mode, stop: StopAt, what: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(stop.requests, ProgressDrawTarget::stderr());
    let template = if stop.requests.is_some() {
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}"
    } else {
        "{prefix} [{elapsed_precise}] {spinner} {pos} requests {msg}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style);
    }
    pb.set_prefix(format!("{what} ({})", mode.describe()));
    pb.enable_steady_tick(Duration::from_millis(250));
    pb
}

fn tick(pb: &ProgressBar, r: &RequestRecord) {
    pb.inc(1);
    if let Some(e) = &r.error {
        pb.set_message(format!("last error: {e}"));
    }
}

/// What every request of a phase shares.
#[derive(Debug)]
struct RequestParams {
    temperature: f32,
    timeout: Duration,
    /// The phase's start, the origin of `RequestRecord::start_s`.
    start: Instant,
}

/// Sends one request and times its stream. TTFT starts before the request is sent, so for a
/// sealed call it includes sealing the request.
async fn one_request(client: &mut Transport, spec: RequestSpec, p: &RequestParams) -> RequestRecord {
    let prompt_len = spec.prompt.len() as u32;
    let req = GenerateRequest {
        input: Some(Input::Tokens(TokenInput {
            token_ids: spec.prompt,
        })),
        params: Some(GenerationParams {
            temperature: Some(p.temperature),
            max_tokens: Some(spec.max_tokens),
            seed: Some(spec.seed),
            ..Default::default()
        }),
    };
    let sent = Instant::now();
    let mut first = None;
    let mut last = sent;
    let mut tokens = 0usize;
    let result = async {
        let mut stream = client.generate(req, p.timeout).await?;
        let mut finished = None;
        while let Some(msg) = stream.message().await? {
            match msg.event {
                Some(Event::Delta(d)) if !d.tokens.is_empty() => {
                    let now = Instant::now();
                    first.get_or_insert(now);
                    last = now;
                    tokens += d.tokens.len();
                }
                Some(Event::Finished(f)) => finished = Some(f),
                _ => {}
            }
        }
        Ok::<_, transport::CallError>(finished)
    }
    .await;
    let end = Instant::now();
    let mut r = RequestRecord {
        start_s: sent.duration_since(p.start).as_secs_f64(),
        e2e_s: end.duration_since(sent).as_secs_f64(),
        ttft_s: first.map(|f| f.duration_since(sent).as_secs_f64()),
        tpot_s: first
            .filter(|_| tokens > 1)
            .map(|f| last.duration_since(f).as_secs_f64() / (tokens - 1) as f64),
        prompt_tokens: prompt_len,
        completion_tokens: tokens as u32,
        max_tokens: spec.max_tokens,
        ..Default::default()
    };
    match result {
        Err(e) => {
            r.error = Some(e.code);
            r.error_message = Some(e.message);
        }
        Ok(None) => r.error = Some("NoFinish".into()),
        Ok(Some(f)) => {
            if let Some(u) = &f.usage {
                r.prompt_tokens = u.prompt_tokens;
                r.completion_tokens = u.completion_tokens;
                r.server_ttft_s = u.time_to_first_token_seconds;
                r.server_tpot_s = u.time_per_output_token_seconds;
            }
            match FinishReason::try_from(f.reason) {
                Ok(FinishReason::Stop) => r.finish = Some("stop".into()),
                Ok(FinishReason::Length) => r.finish = Some("length".into()),
                Ok(FinishReason::Cancelled) => r.error = Some("FinishCancelled".into()),
                Ok(FinishReason::Error) => {
                    r.error = Some("FinishError".into());
                    r.error_message = Some(f.error);
                }
                _ => r.error = Some(format!("FinishReason{}", f.reason)),
            }
        }
    }
    r
}

/// The `--json` document: what ran, against what, and the results (fields in this order).
#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    tool: &'static str,
    version: &'static str,
    /// RFC 3339 UTC time at the end of the run.
    timestamp: String,
    unix_time: f64,
    server: JsonServer<'a>,
    parameters: JsonParameters<'a>,
    /// The measured levels (empty with --sealed: see `sealed_comparison`).
    results: &'a [LevelResult],
    /// With --sealed: plaintext and sealed, level by level.
    #[serde(skip_serializing_if = "Option::is_none")]
    sealed_comparison: Option<&'a SealedReport>,
}

#[derive(Debug, Serialize)]
struct JsonServer<'a> {
    url: String,
    model: JsonModel<'a>,
}

/// `ModelInfoResponse`, field for field.
#[derive(Debug, Serialize)]
struct JsonModel<'a> {
    name: &'a str,
    architecture: &'a str,
    digest: &'a str,
    context_length: u32,
    vocab_size: u32,
    dtype: &'a str,
    backend: &'a str,
    server_version: &'a str,
    /// How bytes cross between host and GPU: off, hardware or sealed.
    cc_transfer: &'a str,
    /// Seconds the server took to load the model.
    load_seconds: f64,
    /// The weights' transfer rate while loading, GB/s.
    weight_upload_gbps: f64,
    limits: serde_json::Value,
}

#[derive(Debug, Serialize)]
struct JsonParameters<'a> {
    /// Closed loop with one level (--concurrency, or the default 1 without --sealed): the
    /// number of clients.
    concurrency: Option<u32>,
    rate: Option<f64>,
    sweep: &'a [u32],
    prompt_tokens: String,
    output_tokens: String,
    requests: Option<u64>,
    requests_per_client: Option<u64>,
    duration_s: Option<f64>,
    warmup: u64,
    temperature: f32,
    seed: u64,
    timeout_s: f64,
    sealed: bool,
    /// With --sealed: the policy file (null: the strict default).
    policy: Option<String>,
    /// With --sealed: measurements of each mode per level.
    rounds: Option<u32>,
}

fn json_report<'a>(
    a: &'a BenchArgs,
    info: &'a ModelInfoResponse,
    levels: &'a [LevelResult],
    sealed: Option<&'a SealedReport>,
) -> JsonReport<'a> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let limits = info.limits.unwrap_or_default();
    JsonReport {
        tool: "veil bench",
        version: env!("CARGO_PKG_VERSION"),
        timestamp: report::rfc3339_utc(now.as_secs()),
        unix_time: now.as_secs_f64(),
        server: JsonServer {
            url: server_url(&a.server),
            model: JsonModel {
                name: &info.name,
                architecture: &info.architecture,
                digest: &info.digest,
                context_length: info.context_length,
                vocab_size: info.vocab_size,
                dtype: &info.dtype,
                backend: &info.backend,
                server_version: &info.server_version,
                cc_transfer: &info.cc_transfer,
                load_seconds: info.model_load_seconds,
                weight_upload_gbps: info.weight_transfer_gbps,
                limits: serde_json::json!({
                    "max_tokens": limits.max_tokens,
                    "max_batched_tokens": limits.max_batched_tokens,
                    "max_seqs": limits.max_seqs,
                    "max_queue": limits.max_queue,
                    "kv_cache_blocks": limits.kv_cache_blocks,
                    "block_size": limits.block_size,
                    "max_request_bytes": limits.max_request_bytes,
                    "max_batch_items": limits.max_batch_items,
                }),
            },
        },
        parameters: JsonParameters {
            concurrency: a
                .concurrency
                .or((a.rate.is_none() && a.sweep.is_empty() && !a.sealed).then_some(1)),
            rate: a.rate,
            sweep: &a.sweep,
            prompt_tokens: a.prompt_tokens.to_string(),
            output_tokens: a.output_tokens.to_string(),
            requests: a.requests,
            requests_per_client: a.requests_per_client,
            duration_s: a.duration,
            warmup: a.warmup,
            temperature: a.temperature,
            seed: a.seed,
            timeout_s: a.timeout,
            sealed: a.sealed,
            policy: a.policy.as_ref().map(|p| p.display().to_string()),
            rounds: a.sealed.then_some(a.rounds),
        },
        results: levels,
        sealed_comparison: sealed,
    }
}
