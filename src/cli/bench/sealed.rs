//! `veil bench --sealed`: the cost of sealing. At each closed-loop level the same workload runs
//! in plaintext and sealed, `--rounds` times each, alternating in the balanced order plaintext,
//! sealed, sealed, plaintext, ... so that drift on a shared machine falls on both modes alike;
//! each mode's rounds are aggregated (their requests pooled, their windows added) and the two
//! are compared. Round `r` sends the same requests (prompts, lengths, seeds) in both modes.
//!
//! The client attests the server once before measuring (its latency is reported on its own) and
//! again, outside the measured window, before each sealed phase, so a pin never expires inside
//! one. A sealed request's TTFT includes sealing it on the client.

use std::fmt::Write as _;
use std::time::Instant;

use serde::Serialize;
use veil_attest::policy::Policy;
use veil_client::Client;

use super::load::Workload;
use super::report::{LevelResult, Mode, Summary};
use super::transport::Transport;
use super::{BenchArgs, run_phase, stop_at, warmup};
use crate::cli::remote::{client_error, load_policy};

/// The goal: sealed output tokens/s within this many percent of plaintext.
const GOAL_PCT: f64 = 2.0;

/// The `sealed_comparison` of the JSON report.
#[derive(Debug, Serialize)]
pub(crate) struct SealedReport {
    /// The goal: |sealed - plaintext| output tokens/s under this percentage of plaintext.
    goal_max_throughput_diff_pct: f64,
    /// The attestation made before measuring.
    attestation: AttestationReport,
    /// Plaintext and sealed, level by level.
    levels: Vec<LevelComparison>,
}

/// The attestation of the sealed side.
#[derive(Debug, Serialize)]
struct AttestationReport {
    /// Seconds the first attestation took (GetAttestation and verifying the bundle), before
    /// anything was measured.
    latency_s: f64,
    /// The re-attestations before each sealed phase (outside the measured windows), seconds.
    reattest_latency_s: Summary,
    /// Whether the verified evidence proves confidentiality (false for simulated evidence).
    confidential: bool,
    /// The verifier's summary of what was proven.
    summary: String,
}

/// Plaintext against sealed at one closed-loop level.
#[derive(Debug, Serialize)]
pub(crate) struct LevelComparison {
    /// Clients, each sending its next request when the previous one finishes.
    concurrency: usize,
    /// Measurements of each mode.
    rounds: u32,
    /// The modes in the order they ran.
    order: Vec<&'static str>,
    /// Plaintext, all rounds pooled (`start_s` of a record counts from its round's start).
    plaintext: LevelResult,
    /// Sealed, all rounds pooled.
    sealed: LevelResult,
    /// Output tokens/s of each plaintext round.
    plaintext_round_output_tokens_per_s: Vec<f64>,
    /// Output tokens/s of each sealed round.
    sealed_round_output_tokens_per_s: Vec<f64>,
    /// Sealed over plaintext output tokens/s.
    throughput_ratio: Option<f64>,
    /// (sealed - plaintext) / plaintext output tokens/s, in percent.
    throughput_diff_pct: Option<f64>,
    /// Sealed over plaintext requests/s.
    requests_per_s_ratio: Option<f64>,
    /// Whether |throughput_diff_pct| is under the goal.
    within_goal: Option<bool>,
    /// How much the rounds of one mode differ, in percent: (max - min) / mean of the rounds'
    /// output tokens/s, the larger of the two modes' (with one round: none). A difference
    /// between the modes smaller than this is within the run-to-run noise.
    round_spread_pct: Option<f64>,
}

/// `b / a`, if `a` is positive.
fn ratio(a: f64, b: f64) -> Option<f64> {
    (a > 0.0).then(|| b / a)
}

/// (max - min) / mean of `rounds`, in percent; `None` for fewer than two rounds or a zero mean.
fn spread_pct(rounds: &[f64]) -> Option<f64> {
    if rounds.len() < 2 {
        return None;
    }
    let mean = rounds.iter().sum::<f64>() / rounds.len() as f64;
    let (lo, hi) = rounds
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    ratio(mean, hi - lo).map(|r| r * 100.0)
}

impl LevelComparison {
    /// Compares the pooled results of both modes.
    fn new(
        concurrency: usize,
        rounds: u32,
        order: Vec<&'static str>,
        [plaintext, sealed]: [Pooled; 2],
    ) -> Self {
        let plain = LevelResult::new(Mode::Closed { concurrency }, plaintext.records, plaintext.wall_s);
        let seal = LevelResult::new(Mode::Closed { concurrency }, sealed.records, sealed.wall_s);
        let throughput_ratio = ratio(plain.output_tokens_per_s, seal.output_tokens_per_s);
        let throughput_diff_pct = throughput_ratio.map(|r| (r - 1.0) * 100.0);
        let round_spread_pct = match (
            spread_pct(&plaintext.round_output_tokens_per_s),
            spread_pct(&sealed.round_output_tokens_per_s),
        ) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        Self {
            concurrency,
            rounds,
            order,
            requests_per_s_ratio: ratio(plain.requests_per_s, seal.requests_per_s),
            plaintext: plain,
            sealed: seal,
            plaintext_round_output_tokens_per_s: plaintext.round_output_tokens_per_s,
            sealed_round_output_tokens_per_s: sealed.round_output_tokens_per_s,
            throughput_ratio,
            throughput_diff_pct,
            within_goal: throughput_diff_pct.map(|d| d.abs() < GOAL_PCT),
            round_spread_pct,
        }
    }

    /// "1 client" or "N clients".
    fn clients(&self) -> String {
        match self.concurrency {
            1 => "1 client".into(),
            n => format!("{n} clients"),
        }
    }
}

/// One mode's rounds at one level, pooled.
#[derive(Debug, Default)]
struct Pooled {
    records: Vec<super::report::RequestRecord>,
    wall_s: f64,
    round_output_tokens_per_s: Vec<f64>,
}

/// The balanced order of round `round` (0-based): plaintext first in even rounds, sealed first
/// in odd ones. Indices: 0 plaintext, 1 sealed.
fn round_order(round: u32) -> [usize; 2] {
    if round.is_multiple_of(2) { [0, 1] } else { [1, 0] }
}

/// Attests, timing it.
async fn attest(client: &mut Client) -> anyhow::Result<f64> {
    let t = Instant::now();
    client.attest().await.map_err(client_error)?;
    Ok(t.elapsed().as_secs_f64())
}

/// Runs the comparison at each closed-loop level of `modes`, printing a table per level and the
/// verdict against the goal; returns the JSON part.
pub(super) async fn compare(
    a: &BenchArgs,
    plain: &Transport,
    modes: &[Mode],
    workload: &Workload,
) -> anyhow::Result<SealedReport> {
    let policy = match &a.policy {
        Some(p) => load_policy(p)?,
        None => Policy::default(),
    };
    let mut client = Client::connect(&a.server, policy).await.map_err(client_error)?;
    let latency_s = attest(&mut client).await?;
    let pin = client
        .attested()
        .ok_or_else(|| anyhow::anyhow!("attestation left no pin"))?;
    for line in pin.describe() {
        eprintln!("attested: {line}");
    }
    let (confidential, summary) = (pin.confidential(), pin.verdict().summary.clone());
    if !confidential {
        eprintln!("NOT CONFIDENTIAL: the server's evidence proves no TEE (sealing is measured all the same)");
    }
    println!(
        "attestation: verified in {:.1} ms, once before measuring (not in the numbers below)",
        latency_s * 1e3
    );
    let mut reattest = Vec::new();
    let mut levels = Vec::new();
    for &mode in modes {
        let Mode::Closed { concurrency } = mode else {
            anyhow::bail!("--sealed measures closed-loop levels only");
        };
        warmup(plain, a, mode, workload).await;
        if a.warmup > 0 {
            reattest.push(attest(&mut client).await?);
            warmup(&Transport::Sealed(Box::new(client.clone())), a, mode, workload).await;
        }
        let mut pooled = [Pooled::default(), Pooled::default()];
        let mut order = Vec::new();
        for round in 0..a.rounds {
            let w = workload.reseeded(round_seed(a.seed, round));
            for m in round_order(round) {
                let transport = if m == 0 {
                    plain.clone()
                } else {
                    reattest.push(attest(&mut client).await?);
                    Transport::Sealed(Box::new(client.clone()))
                };
                order.push(transport.name());
                let what = format!("{} {}/{}", transport.name(), round + 1, a.rounds);
                let phase = run_phase(&transport, a, mode, &w, stop_at(a, mode), &what).await;
                let l = LevelResult::new(mode, phase.records, phase.wall_s);
                eprintln!(
                    "{}, {what}: {:.1} output tok/s, {} ok, {} errors",
                    mode.describe(),
                    l.output_tokens_per_s,
                    l.ok,
                    l.error_count()
                );
                let p = &mut pooled[m];
                p.round_output_tokens_per_s.push(l.output_tokens_per_s);
                p.wall_s += l.wall_s;
                p.records.extend(l.request_records);
            }
        }
        let level = LevelComparison::new(concurrency, a.rounds, order, pooled);
        print!("{}", comparison_table(&level));
        levels.push(level);
    }
    println!("{}", goal_line(&levels));
    Ok(SealedReport {
        goal_max_throughput_diff_pct: GOAL_PCT,
        attestation: AttestationReport {
            latency_s,
            reattest_latency_s: Summary::of(reattest),
            confidential,
            summary,
        },
        levels,
    })
}

/// The workload seed of round `round`: the given seed for the first, derived ones after.
fn round_seed(seed: u64, round: u32) -> u64 {
    seed.wrapping_add(u64::from(round).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn ms(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |x| format!("{:.1}", x * 1e3))
}

/// "0.991x (-0.9%)".
fn ratio_pct(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.3}x ({:+.1}%)", (r - 1.0) * 100.0))
}

/// The difference of two latencies, in ms.
fn delta_ms(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:+.1} ms", (b - a) * 1e3),
        _ => "-".into(),
    }
}

/// The human table of one level.
fn comparison_table(l: &LevelComparison) -> String {
    let (p, s) = (&l.plaintext, &l.sealed);
    let mut t = String::new();
    let short: Vec<&str> = l.order.iter().map(|m| &m[..1]).collect();
    let _ = writeln!(
        t,
        "\nplaintext vs sealed, closed loop, {}: {} round(s) each, order {}",
        l.clients(),
        l.rounds,
        short.join(" ").to_uppercase()
    );
    let row = |t: &mut String, name: &str, p: String, s: String, d: String| {
        let line = format!("{name:<20}{p:>12}{s:>12}   {d}");
        let _ = writeln!(t, "{}", line.trim_end());
    };
    row(
        &mut t,
        "",
        "plaintext".into(),
        "sealed".into(),
        "sealed vs plaintext".into(),
    );
    row(
        &mut t,
        "requests ok/errors",
        format!("{}/{}", p.ok, p.error_count()),
        format!("{}/{}", s.ok, s.error_count()),
        String::new(),
    );
    row(
        &mut t,
        "output tokens/s",
        format!("{:.1}", p.output_tokens_per_s),
        format!("{:.1}", s.output_tokens_per_s),
        ratio_pct(l.throughput_ratio),
    );
    row(
        &mut t,
        "requests/s",
        format!("{:.3}", p.requests_per_s),
        format!("{:.3}", s.requests_per_s),
        ratio_pct(l.requests_per_s_ratio),
    );
    for (name, pm, sm) in [
        ("TTFT p50 (ms)", p.ttft_s.p50, s.ttft_s.p50),
        ("TTFT p99 (ms)", p.ttft_s.p99, s.ttft_s.p99),
        ("TPOT p50 (ms)", p.tpot_s.p50, s.tpot_s.p50),
    ] {
        row(&mut t, name, ms(pm), ms(sm), delta_ms(pm, sm));
    }
    let rounds = |v: &[f64]| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(" ");
    let spread = l
        .round_spread_pct
        .map_or_else(String::new, |x| format!(" (rounds spread {x:.1}%)"));
    let _ = writeln!(
        t,
        "{:<20}plaintext {} | sealed {}{spread}",
        "out tok/s by round",
        rounds(&l.plaintext_round_output_tokens_per_s),
        rounds(&l.sealed_round_output_tokens_per_s)
    );
    t
}

/// The verdict against the goal, level by level.
fn goal_line(levels: &[LevelComparison]) -> String {
    let verdicts: Vec<String> = levels
        .iter()
        .map(|l| {
            let noise = match l.round_spread_pct {
                Some(x) if l.throughput_diff_pct.is_some_and(|d| d.abs() < x) => {
                    format!(", within the rounds' {x:.1}% spread")
                }
                _ => String::new(),
            };
            match l.throughput_diff_pct {
                Some(d) if d.abs() < GOAL_PCT => format!("met at {} ({d:+.1}%{noise})", l.clients()),
                Some(d) => format!("NOT met at {} ({d:+.1}%{noise})", l.clients()),
                None => format!("unknown at {} (no plaintext throughput)", l.clients()),
            }
        })
        .collect();
    format!(
        "\ngoal: sealed output tokens/s within {GOAL_PCT}% of plaintext: {}\n(sealed TTFT includes \
         sealing each request on the client; the attestation is not in the numbers)",
        verdicts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::super::report::RequestRecord;
    use super::*;

    fn pooled(rounds: &[(u32, f64)]) -> Pooled {
        let mut p = Pooled::default();
        for &(tokens, wall_s) in rounds {
            p.records.push(RequestRecord {
                e2e_s: wall_s,
                ttft_s: Some(0.1),
                tpot_s: Some(0.01),
                prompt_tokens: 8,
                completion_tokens: tokens,
                max_tokens: tokens,
                finish: Some("length".into()),
                ..Default::default()
            });
            p.wall_s += wall_s;
            p.round_output_tokens_per_s.push(f64::from(tokens) / wall_s);
        }
        p
    }

    #[test]
    fn spread_of_rounds() {
        assert_eq!(spread_pct(&[100.0]), None);
        assert_eq!(spread_pct(&[0.0, 0.0]), None);
        let s = spread_pct(&[95.0, 100.0, 105.0]).unwrap_or_default();
        assert!((s - 10.0).abs() < 1e-9, "{s}");
        let l = LevelComparison::new(
            2,
            2,
            vec!["plaintext", "sealed", "sealed", "plaintext"],
            [
                pooled(&[(95, 1.0), (105, 1.0)]),
                pooled(&[(103, 1.0), (103, 1.0)]),
            ],
        );
        assert!((l.round_spread_pct.unwrap_or_default() - 10.0).abs() < 1e-9);
        let g = goal_line(&[l]);
        assert!(
            g.contains("NOT met at 2 clients (+3.0%, within the rounds' 10.0% spread)"),
            "{g}"
        );
    }

    #[test]
    fn rounds_alternate_in_balanced_order() {
        let order: Vec<usize> = (0..4).flat_map(round_order).collect();
        assert_eq!(order, [0, 1, 1, 0, 0, 1, 1, 0]);
        assert_eq!(round_seed(7, 0), 7);
        assert_ne!(round_seed(7, 1), 7);
    }

    #[test]
    fn comparison_pools_rounds_and_reports_the_difference() {
        // Plaintext: 200 tokens in 2 s; sealed: 196 tokens in 2 s (-2%).
        let l = LevelComparison::new(
            4,
            2,
            vec!["plaintext", "sealed", "sealed", "plaintext"],
            [pooled(&[(100, 1.0), (100, 1.0)]), pooled(&[(98, 1.0), (98, 1.0)])],
        );
        assert_eq!((l.plaintext.ok, l.sealed.ok), (2, 2));
        assert!((l.plaintext.output_tokens_per_s - 100.0).abs() < 1e-9);
        let d = l.throughput_diff_pct.unwrap_or_default();
        assert!((d + 2.0).abs() < 1e-9, "{d}");
        assert_eq!(l.within_goal, Some(false));
        let t = comparison_table(&l);
        assert!(
            t.contains("closed loop, 4 clients: 2 round(s) each, order P S S P"),
            "{t}"
        );
        assert!(t.contains("plaintext") && t.contains("sealed"), "{t}");
        assert!(t.contains("0.980x (-2.0%)"), "{t}");
        assert!(
            t.contains("plaintext 100.0 100.0 | sealed 98.0 98.0 (rounds spread 0.0%)"),
            "{t}"
        );
        let g = goal_line(&[l]);
        assert!(
            g.contains("within 2% of plaintext: NOT met at 4 clients (-2.0%)"),
            "{g}"
        );
        let json = serde_json::to_value(LevelComparison::new(
            1,
            1,
            vec!["plaintext", "sealed"],
            [pooled(&[(10, 1.0)]), pooled(&[(10, 1.0)])],
        ))
        .unwrap_or_default();
        assert_eq!(json["within_goal"], true);
        assert_eq!(json["round_spread_pct"], serde_json::Value::Null);
        assert_eq!(json["plaintext"]["concurrency"], 1);
        assert_eq!(json["sealed"]["ok"], 1);
    }
}
