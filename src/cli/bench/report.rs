//! The measuring side of `veil bench`: per-request records, percentiles, per-level results,
//! the human tables and the JSON report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// What happened to one measured request. Times are in seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct RequestRecord {
    /// When the request was sent, from the start of the measured phase.
    pub(crate) start_s: f64,
    /// From sending the request to the end of its stream.
    pub(crate) e2e_s: f64,
    /// From sending the request to the first message carrying a token.
    pub(crate) ttft_s: Option<f64>,
    /// (last token time - first token time) / (tokens - 1), as the client saw them.
    pub(crate) tpot_s: Option<f64>,
    /// Prompt tokens (the server's count).
    pub(crate) prompt_tokens: u32,
    /// Generated tokens (the server's count).
    pub(crate) completion_tokens: u32,
    /// `max_tokens` asked for.
    pub(crate) max_tokens: u32,
    /// The server's time to first token (from admission).
    pub(crate) server_ttft_s: Option<f64>,
    /// The server's mean time per output token.
    pub(crate) server_tpot_s: Option<f64>,
    /// The finish reason of a successful request: "stop" or "length".
    pub(crate) finish: Option<String>,
    /// Why the request failed: the gRPC code name (e.g. "Unavailable"), "FinishError" or
    /// "FinishCancelled" for a stream that ended with that reason, "NoFinish" for a stream that
    /// ended without its final message.
    pub(crate) error: Option<String>,
    /// The error's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error_message: Option<String>,
}

/// The value at percentile `p` (0..=100) of sorted samples, interpolating linearly between
/// the closest ranks (NumPy's default). `None` for no samples.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = (p.clamp(0.0, 100.0) / 100.0) * last as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// Distribution of one metric. Every field is `None` when there were no samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Summary {
    /// Number of samples.
    pub(crate) count: usize,
    /// Mean.
    pub(crate) mean: Option<f64>,
    /// Smallest sample.
    pub(crate) min: Option<f64>,
    /// Median.
    pub(crate) p50: Option<f64>,
    /// 90th percentile.
    pub(crate) p90: Option<f64>,
    /// 99th percentile.
    pub(crate) p99: Option<f64>,
    /// Largest sample.
    pub(crate) max: Option<f64>,
}

impl Summary {
    /// Summarizes samples (NaNs are dropped).
    pub(crate) fn of(samples: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = samples.into_iter().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        let mean = (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        Self {
            count: v.len(),
            mean,
            min: v.first().copied(),
            p50: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            p99: percentile(&v, 99.0),
            max: v.last().copied(),
        }
    }
}

/// How one level was driven.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub(crate) enum Mode {
    /// `concurrency` clients, each sending its next request when the previous one finishes.
    Closed {
        /// Number of clients.
        concurrency: usize,
    },
    /// Poisson arrivals at `rate` requests per second, however many are in flight.
    Open {
        /// Mean arrivals per second.
        rate: f64,
    },
}

impl Mode {
    /// A short description, e.g. "closed loop, 4 clients".
    pub(crate) fn describe(self) -> String {
        match self {
            Self::Closed { concurrency: 1 } => "closed loop, 1 client".into(),
            Self::Closed { concurrency } => format!("closed loop, {concurrency} clients"),
            Self::Open { rate } => format!("open loop, {rate} requests/s (Poisson)"),
        }
    }
}

/// The measured results of one level (one concurrency or one rate).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LevelResult {
    /// How the load was driven.
    #[serde(flatten)]
    pub(crate) mode: Mode,
    /// Measured requests sent.
    pub(crate) requests: usize,
    /// Of those, the ones that finished normally (finish reason stop or length).
    pub(crate) ok: usize,
    /// Failed requests by reason (see [`RequestRecord::error`]).
    pub(crate) errors: BTreeMap<String, usize>,
    /// Successful requests by finish reason.
    pub(crate) finish_reasons: BTreeMap<String, usize>,
    /// Seconds from the first measured request's start to the last one's end.
    pub(crate) wall_s: f64,
    /// Successful requests per second of wall time.
    pub(crate) requests_per_s: f64,
    /// Completion tokens of successful requests per second of wall time.
    pub(crate) output_tokens_per_s: f64,
    /// Prompt tokens of successful requests per second of wall time.
    pub(crate) input_tokens_per_s: f64,
    /// Prompt tokens of successful requests.
    pub(crate) prompt_tokens: u64,
    /// Completion tokens of successful requests.
    pub(crate) completion_tokens: u64,
    /// Client-side time to first token, seconds.
    pub(crate) ttft_s: Summary,
    /// Client-side time per output token after the first, seconds.
    pub(crate) tpot_s: Summary,
    /// Client-side end-to-end latency, seconds.
    pub(crate) e2e_s: Summary,
    /// Completion tokens per successful request.
    pub(crate) completion_tokens_per_request: Summary,
    /// The server's reported time to first token (from admission), seconds.
    pub(crate) server_ttft_s: Summary,
    /// The server's reported mean time per output token, seconds.
    pub(crate) server_tpot_s: Summary,
    /// Every measured request.
    pub(crate) request_records: Vec<RequestRecord>,
}

impl LevelResult {
    /// Aggregates the records of one level measured over `wall_s` seconds.
    pub(crate) fn new(mode: Mode, records: Vec<RequestRecord>, wall_s: f64) -> Self {
        let mut errors = BTreeMap::new();
        let mut finish_reasons = BTreeMap::new();
        for r in &records {
            if let Some(e) = &r.error {
                *errors.entry(e.clone()).or_insert(0) += 1;
            } else if let Some(f) = &r.finish {
                *finish_reasons.entry(f.clone()).or_insert(0) += 1;
            }
        }
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.error.is_none()).collect();
        let prompt_tokens: u64 = ok.iter().map(|r| u64::from(r.prompt_tokens)).sum();
        let completion_tokens: u64 = ok.iter().map(|r| u64::from(r.completion_tokens)).sum();
        let per_s = |x: f64| if wall_s > 0.0 { x / wall_s } else { 0.0 };
        Self {
            mode,
            requests: records.len(),
            ok: ok.len(),
            errors,
            finish_reasons,
            wall_s,
            requests_per_s: per_s(ok.len() as f64),
            output_tokens_per_s: per_s(completion_tokens as f64),
            input_tokens_per_s: per_s(prompt_tokens as f64),
            prompt_tokens,
            completion_tokens,
            ttft_s: Summary::of(ok.iter().filter_map(|r| r.ttft_s)),
            tpot_s: Summary::of(ok.iter().filter_map(|r| r.tpot_s)),
            e2e_s: Summary::of(ok.iter().map(|r| r.e2e_s)),
            completion_tokens_per_request: Summary::of(ok.iter().map(|r| f64::from(r.completion_tokens))),
            server_ttft_s: Summary::of(ok.iter().filter_map(|r| r.server_ttft_s)),
            server_tpot_s: Summary::of(ok.iter().filter_map(|r| r.server_tpot_s)),
            request_records: records,
        }
    }

    /// Failed requests in all.
    pub(crate) fn error_count(&self) -> usize {
        self.errors.values().sum()
    }
}

fn ms(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |x| format!("{:.1}", x * 1e3))
}

fn counts(map: &BTreeMap<String, usize>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The human-readable report of one level.
pub(crate) fn level_table(r: &LevelResult) -> String {
    let mut s = String::new();
    let mean_out = r.completion_tokens_per_request.mean.unwrap_or(0.0);
    let _ = writeln!(s, "{:<18}{}", "load", r.mode.describe());
    let mut line = format!("{} ok, {} errors", r.ok, r.error_count());
    if !r.errors.is_empty() {
        let _ = write!(line, " ({})", counts(&r.errors));
    }
    if !r.finish_reasons.is_empty() {
        let _ = write!(line, "; finish: {}", counts(&r.finish_reasons));
    }
    let _ = writeln!(s, "{:<18}{line}", "requests");
    let _ = writeln!(s, "{:<18}{:.2} s", "measured window", r.wall_s);
    let _ = writeln!(s, "{:<18}{:.2}", "requests/s", r.requests_per_s);
    let _ = writeln!(
        s,
        "{:<18}{:.1}  ({} tokens, {:.1} per request)",
        "output tokens/s", r.output_tokens_per_s, r.completion_tokens, mean_out
    );
    let _ = writeln!(
        s,
        "{:<18}{:.1}  ({} tokens)",
        "input tokens/s", r.input_tokens_per_s, r.prompt_tokens
    );
    let _ = writeln!(
        s,
        "{:<18}{:>10}{:>10}{:>10}{:>10}",
        "(ms)", "p50", "p90", "p99", "mean"
    );
    for (name, m) in [("TTFT", &r.ttft_s), ("TPOT", &r.tpot_s), ("latency", &r.e2e_s)] {
        let _ = writeln!(
            s,
            "{name:<18}{:>10}{:>10}{:>10}{:>10}",
            ms(m.p50),
            ms(m.p90),
            ms(m.p99),
            ms(m.mean)
        );
    }
    s
}

/// The sweep table: one row per level with throughput, its ratio to the first level's and
/// the latency percentiles.
pub(crate) fn sweep_table(levels: &[LevelResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>8} {:>5} {:>5} {:>7} {:>10} {:>6} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "clients",
        "reqs",
        "errs",
        "req/s",
        "out tok/s",
        "ratio",
        "in tok/s",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "TPOT p99",
        "e2e p50",
        "e2e p99"
    );
    let base = levels.first().map(|l| l.output_tokens_per_s).unwrap_or(0.0);
    for l in levels {
        let load = match l.mode {
            Mode::Closed { concurrency } => concurrency.to_string(),
            Mode::Open { rate } => format!("{rate}/s"),
        };
        let ratio = if base > 0.0 {
            format!("{:.2}x", l.output_tokens_per_s / base)
        } else {
            "-".into()
        };
        let _ = writeln!(
            s,
            "{load:>8} {:>5} {:>5} {:>7.2} {:>10.1} {ratio:>6} {:>10.1} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
            l.ok,
            l.error_count(),
            l.requests_per_s,
            l.output_tokens_per_s,
            l.input_tokens_per_s,
            ms(l.ttft_s.p50),
            ms(l.ttft_s.p99),
            ms(l.tpot_s.p50),
            ms(l.tpot_s.p99),
            ms(l.e2e_s.p50),
            ms(l.e2e_s.p99),
        );
    }
    let _ = writeln!(s, "(times in ms; ratio: output tok/s relative to the first row)");
    s
}

/// Formats seconds since the Unix epoch as an RFC 3339 UTC timestamp, e.g.
/// `2025-01-31T12:00:00Z`.
pub(crate) fn rfc3339_utc(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 50.0), Some(3.0));
        assert_eq!(percentile(&v, 100.0), Some(5.0));
        assert_eq!(percentile(&v, 25.0), Some(2.0));
        assert_eq!(percentile(&v, 90.0), Some(4.6));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p99 = percentile(&v, 99.0).unwrap_or_default();
        assert!((p99 - 99.01).abs() < 1e-9, "{p99}");
    }

    #[test]
    fn summary_sorts_and_orders() {
        let s = Summary::of([5.0, 1.0, f64::NAN, 3.0, 2.0, 4.0]);
        assert_eq!(s.count, 5);
        assert_eq!(s.min, Some(1.0));
        assert_eq!(s.max, Some(5.0));
        assert_eq!(s.p50, Some(3.0));
        assert_eq!(s.mean, Some(3.0));
        let (p50, p90, p99) = (
            s.p50.unwrap_or_default(),
            s.p90.unwrap_or_default(),
            s.p99.unwrap_or_default(),
        );
        assert!(p50 <= p90 && p90 <= p99 && p99 <= 5.0);
        assert_eq!(Summary::of([]), Summary::default());
    }

    fn rec(ttft: f64, e2e: f64, completion: u32, error: Option<&str>) -> RequestRecord {
        RequestRecord {
            e2e_s: e2e,
            ttft_s: Some(ttft),
            tpot_s: Some((e2e - ttft) / f64::from(completion.max(2) - 1)),
            prompt_tokens: 16,
            completion_tokens: completion,
            max_tokens: 8,
            finish: error.is_none().then(|| "length".to_string()),
            error: error.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn level_counts_only_successful_requests() {
        let records = vec![
            rec(0.1, 1.0, 8, None),
            rec(0.2, 1.2, 8, None),
            rec(0.3, 0.3, 0, Some("Unavailable")),
            rec(0.1, 0.9, 4, None),
        ];
        let l = LevelResult::new(Mode::Closed { concurrency: 2 }, records, 2.0);
        assert_eq!((l.requests, l.ok, l.error_count()), (4, 3, 1));
        assert_eq!(l.errors.get("Unavailable"), Some(&1));
        assert_eq!(l.finish_reasons.get("length"), Some(&3));
        assert_eq!(l.completion_tokens, 20);
        assert_eq!(l.prompt_tokens, 48);
        assert!((l.output_tokens_per_s - 10.0).abs() < 1e-9);
        assert!((l.input_tokens_per_s - 24.0).abs() < 1e-9);
        assert!((l.requests_per_s - 1.5).abs() < 1e-9);
        assert_eq!(l.ttft_s.count, 3);
        assert_eq!(l.e2e_s.max, Some(1.2));
        let table = level_table(&l);
        assert!(table.contains("3 ok, 1 errors (Unavailable 1)"), "{table}");
        assert!(table.contains("output tokens/s   10.0"), "{table}");
        let json = serde_json::to_value(&l).unwrap_or_default();
        assert_eq!(json["mode"], "closed");
        assert_eq!(json["concurrency"], 2);
        assert_eq!(json["request_records"].as_array().map(Vec::len), Some(4));
    }

    #[test]
    fn sweep_table_has_ratios() {
        let a = LevelResult::new(Mode::Closed { concurrency: 1 }, vec![rec(0.1, 1.0, 8, None)], 1.0);
        let b = LevelResult::new(
            Mode::Closed { concurrency: 4 },
            vec![
                rec(0.1, 1.0, 8, None),
                rec(0.1, 1.0, 8, None),
                rec(0.1, 1.0, 8, None),
            ],
            1.0,
        );
        let t = sweep_table(&[a, b]);
        assert!(t.contains("1.00x") && t.contains("3.00x"), "{t}");
        assert_eq!(t.lines().count(), 4);
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
