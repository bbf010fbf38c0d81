//! Prometheus metrics: counters and histograms the gRPC handlers record, gauges read from the
//! engine's [`RuntimeStats`], and a tiny HTTP/1.1 responder that serves them at `/metrics` in the
//! text exposition format (version 0.0.4).
//!
//! Metric names (all prefixed `veil_`): `queue_depth`, `running_sequences`, `kv_blocks_used`,
//! `kv_blocks_free`, `kv_blocks_total` (gauges); `prompt_tokens_total`, `generated_tokens_total`,
//! `preemptions_total`, `engine_steps_total`, `requests_total{finish_reason}`,
//! `requests_rejected_total{code}` (counters); `time_to_first_token_seconds`,
//! `time_per_output_token_seconds` (histograms); `model_info{...} 1`. Tokens per second are
//! `rate(veil_generated_tokens_total[1m])`.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use veil_engine::runtime::{FinishReason, RuntimeHandle, RuntimeStats, Usage};

/// Finish reasons as metric label values, in a fixed order.
const REASONS: [(FinishReason, &str); 5] = [
    (FinishReason::Stop, "stop"),
    (FinishReason::Length, "length"),
    (FinishReason::Cancelled, "cancelled"),
    (FinishReason::DeadlineExceeded, "deadline_exceeded"),
    (FinishReason::Error, "error"),
];

/// Reasons of refused requests as label values: status codes, plus `plaintext_off` (a plaintext
/// call to a server that turned them off) and `sealed_open` (a sealed request that did not open:
/// wrong key, tampered, stale, replayed).
const REJECTIONS: [&str; 5] = [
    "invalid_argument",
    "resource_exhausted",
    "unavailable",
    "plaintext_off",
    "sealed_open",
];

/// Upper bounds of the time-to-first-token buckets, in seconds.
const TTFT_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds of the time-per-output-token buckets, in seconds.
const TPOT_BUCKETS: [f64; 11] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// A cumulative histogram with fixed buckets.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    state: Mutex<HistogramState>,
}

#[derive(Debug, Default)]
struct HistogramState {
    /// Observations per bucket (not cumulative); the last entry is +Inf.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            state: Mutex::new(HistogramState {
                counts: vec![0; bounds.len() + 1],
                sum: 0.0,
            }),
        }
    }

    fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        if let Ok(mut s) = self.state.lock() {
            s.counts[i] += 1;
            s.sum += v;
        }
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let (counts, sum) = match self.state.lock() {
            Ok(s) => (s.counts.clone(), s.sum),
            Err(_) => return,
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += counts.last().copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// What the server records per request.
#[derive(Debug)]
pub(crate) struct Metrics {
    finished: [AtomicU64; REASONS.len()],
    rejected: [AtomicU64; REJECTIONS.len()],
    ttft: Histogram,
    tpot: Histogram,
    /// `model_info` labels, rendered once.
    info_labels: String,
}

impl Metrics {
    /// Empty metrics for the model described by `info`.
    pub(crate) fn new(info: &veil_engine::runtime::ModelInfo) -> Self {
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        Self {
            finished: Default::default(),
            rejected: Default::default(),
            ttft: Histogram::new(&TTFT_BUCKETS),
            tpot: Histogram::new(&TPOT_BUCKETS),
            info_labels: format!(
                "model=\"{}\",architecture=\"{}\",digest=\"{}\",dtype=\"{}\",backend=\"{}\"",
                esc(&info.name),
                esc(&info.architecture),
                esc(&info.digest),
                esc(&info.dtype),
                esc(&info.backend)
            ),
        }
    }

    /// Records a finished request: its reason and, when known, its timings.
    pub(crate) fn record_finished(&self, reason: FinishReason, usage: Option<&Usage>) {
        if let Some(i) = REASONS.iter().position(|(r, _)| *r == reason) {
            self.finished[i].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(u) = usage {
            if let Some(d) = u.time_to_first_token {
                self.ttft.observe(d.as_secs_f64());
            }
            if let Some(d) = u.time_per_output_token {
                self.tpot.observe(d.as_secs_f64());
            }
        }
    }

    /// Records a refused request by its status's short name (see [`REJECTIONS`]).
    pub(crate) fn record_rejected(&self, code: &str) {
        if let Some(i) = REJECTIONS.iter().position(|c| *c == code) {
            self.rejected[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The text exposition of every metric, with the engine's current `stats`.
    pub(crate) fn render(&self, stats: &RuntimeStats) -> String {
        let mut out = String::with_capacity(4096);
        let mut one = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        let g = |n: usize| n as u64;
        one(
            "veil_queue_depth",
            "gauge",
            "Requests waiting for admission.",
            g(stats.queued),
        );
        one(
            "veil_running_sequences",
            "gauge",
            "Sequences being generated.",
            g(stats.running),
        );
        one(
            "veil_kv_blocks_used",
            "gauge",
            "KV-cache blocks in use.",
            g(stats.kv_blocks_used),
        );
        one(
            "veil_kv_blocks_free",
            "gauge",
            "KV-cache blocks free.",
            g(stats.kv_blocks_total.saturating_sub(stats.kv_blocks_used)),
        );
        one(
            "veil_kv_blocks_total",
            "gauge",
            "KV-cache blocks in all.",
            g(stats.kv_blocks_total),
        );
        one(
            "veil_prompt_tokens_total",
            "counter",
            "Prompt tokens accepted.",
            stats.prompt_tokens_total,
        );
        one(
            "veil_generated_tokens_total",
            "counter",
            "Tokens generated.",
            stats.generated_tokens_total,
        );
        one(
            "veil_preemptions_total",
            "counter",
            "Sequences preempted for lack of KV blocks.",
            stats.preemptions_total,
        );
        one(
            "veil_engine_steps_total",
            "counter",
            "Engine steps run.",
            stats.steps_total,
        );
        let _ = writeln!(
            out,
            "# HELP veil_requests_total Generations finished, by finish reason.\n\
             # TYPE veil_requests_total counter"
        );
        for ((_, label), n) in REASONS.iter().zip(&self.finished) {
            let _ = writeln!(
                out,
                "veil_requests_total{{finish_reason=\"{label}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP veil_requests_rejected_total Requests refused before generation, by status.\n\
             # TYPE veil_requests_rejected_total counter"
        );
        for (label, n) in REJECTIONS.iter().zip(&self.rejected) {
            let _ = writeln!(
                out,
                "veil_requests_rejected_total{{code=\"{label}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        self.ttft.render(
            &mut out,
            "veil_time_to_first_token_seconds",
            "Seconds from admission to the first generated token.",
        );
        self.tpot.render(
            &mut out,
            "veil_time_per_output_token_seconds",
            "Mean seconds between generated tokens after the first, per request.",
        );
        let _ = writeln!(
            out,
            "# HELP veil_model_info The served model.\n# TYPE veil_model_info gauge\n\
             veil_model_info{{{}}} 1",
            self.info_labels
        );
        out
    }
}

/// Longest request head the responder reads.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, handle: RuntimeHandle, metrics: std::sync::Arc<Metrics>) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = respond(sock, &handle, &metrics).await {
                tracing::debug!(%peer, error = %e, "metrics: connection failed");
            }
        });
    }
}

/// Reads one request head and answers it; the connection is closed afterwards.
async fn respond(mut sock: TcpStream, handle: &RuntimeHandle, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
            if head.len() > MAX_HEAD {
                break;
            }
        }
        std::io::Result::Ok(())
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        _ if head.len() > MAX_HEAD => ("431 Request Header Fields Too Large", "text/plain", String::new()),
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(&handle.stats()),
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain",
            "not found; try /metrics\n".to_owned(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", String::new()),
    };
    let mut resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        resp.push_str(&body);
    }
    sock.write_all(resp.as_bytes()).await?;
    sock.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> veil_engine::runtime::ModelInfo {
        veil_engine::runtime::ModelInfo {
            name: "m\"x".into(),
            architecture: "LlamaForCausalLM".into(),
            digest: "abc".into(),
            context_length: 8,
            vocab_size: 10,
            dtype: "f32".into(),
            backend: "cpu".into(),
            max_batched_tokens: 8,
            max_seqs: 2,
            max_queue: 2,
            kv_cache_blocks: 4,
            block_size: 16,
            eos_token_ids: vec![2],
            load: Default::default(),
        }
    }

    #[test]
    fn renders_the_named_metrics() {
        let m = Metrics::new(&info());
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
            time_to_first_token: Some(Duration::from_millis(30)),
            time_per_output_token: Some(Duration::from_millis(7)),
        };
        m.record_finished(FinishReason::Length, Some(&usage));
        m.record_finished(FinishReason::Cancelled, None);
        m.record_rejected("resource_exhausted");
        let stats = RuntimeStats {
            queued: 1,
            running: 2,
            kv_blocks_used: 3,
            kv_blocks_total: 10,
            prompt_tokens_total: 5,
            generated_tokens_total: 6,
            preemptions_total: 0,
            steps_total: 9,
        };
        let text = m.render(&stats);
        for line in [
            "veil_queue_depth 1",
            "veil_running_sequences 2",
            "veil_kv_blocks_used 3",
            "veil_kv_blocks_free 7",
            "veil_generated_tokens_total 6",
            "veil_prompt_tokens_total 5",
            "veil_requests_total{finish_reason=\"length\"} 1",
            "veil_requests_total{finish_reason=\"cancelled\"} 1",
            "veil_requests_rejected_total{code=\"resource_exhausted\"} 1",
            "veil_time_to_first_token_seconds_bucket{le=\"0.025\"} 0",
            "veil_time_to_first_token_seconds_bucket{le=\"0.05\"} 1",
            "veil_time_to_first_token_seconds_count 1",
            "veil_time_per_output_token_seconds_bucket{le=\"+Inf\"} 1",
            "veil_model_info{model=\"m\\\"x\",",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
