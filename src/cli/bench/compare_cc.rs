//! `veil bench --compare-cc off,sealed`: the same workload against the same model under each
//! CC transfer mode, in one run. A mode needs its own engine (transfers are fixed at load), so
//! for each mode this starts a `veil serve --cc MODE` of its own (this executable, a free
//! loopback port), measures its model load (from `ModelInfo`), runs every level, and stops it
//! with SIGTERM. With `--rounds R` the modes alternate in the balanced order A B B A ...; each
//! mode's rounds are pooled. The table gives every metric of each mode against the first.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use veil_engine::cc::CcMode;
use veil_proto::v1::ModelInfoRequest;

use super::compare::{LevelSummary, RunSummary, diff_pct, markdown, svg};
use super::load::Workload;
use super::report::{LevelResult, Mode, RequestRecord, Summary};
use super::transport::Transport;
use super::{BenchArgs, run_phase, stop_at, warmup};
use crate::cli::remote::{connect, status_error};

/// Goals against `off` at 32 or more concurrent streams: throughput within 2%, TTFT within 5%.
const GOAL_THROUGHPUT_PCT: f64 = 2.0;
const GOAL_TTFT_PCT: f64 = 5.0;
/// Goal for weight loading through `sealed`, GB/s.
const GOAL_LOAD_GBPS: f64 = 10.0;
/// How long a server may take to load its model and listen.
const START_TIMEOUT: Duration = Duration::from_secs(1800);

/// A `veil serve` child, stopped (SIGTERM, then SIGKILL) when dropped.
struct ServeChild {
    child: Child,
    addr: String,
}

impl ServeChild {
    fn start(mode: CcMode, serve_args: &[String]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the veil executable")?;
        let mut cmd = Command::new(exe);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--cc", mode.as_str()]);
        if !serve_args.iter().any(|a| a.starts_with("--attestation")) {
            cmd.args(["--attestation", "simulated"]);
        }
        if !serve_args.iter().any(|a| a.starts_with("--plaintext")) {
            cmd.args(["--plaintext", "on"]);
        }
        cmd.args(serve_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting veil serve")?;
        let stderr = child.stderr.take().context("the server's stderr")?;
        let (tx, rx) = mpsc::channel();
        // Reads the server's log to its end (a full pipe would block the server), passing on
        // the address it listens on and, if it exits first, its last lines.
        std::thread::spawn(move || {
            let mut tail: Vec<String> = Vec::new();
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(Ok(addr.trim().to_owned()));
                    sent = true;
                }
                if !sent {
                    tail.push(line);
                    if tail.len() > 20 {
                        tail.remove(0);
                    }
                }
            }
            if !sent {
                let _ = tx.send(Err(tail.join("\n")));
            }
        });
        let mut server = Self {
            child,
            addr: String::new(),
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(addr)) => server.addr = addr,
            Ok(Err(log)) => anyhow::bail!("`veil serve --cc {mode}` exited before listening:\n{log}"),
            Err(_) => anyhow::bail!("`veil serve --cc {mode}` did not listen within {START_TIMEOUT:?}"),
        }
        Ok(server)
    }

    /// Stops the server with SIGTERM and waits for it (SIGKILL after 60 s).
    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with our own child's pid and a valid signal; no memory involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        for _ in 0..600 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}

/// One mode's measurements, pooled over rounds.
#[derive(Debug, Default)]
struct ModeRuns {
    load_s: Vec<f64>,
    load_gbps: Vec<f64>,
    /// Per level (in `modes` order): the pooled records and windows.
    levels: Vec<(Vec<RequestRecord>, f64)>,
}

/// The `cc_comparison` of the JSON report.
#[derive(Debug, Serialize)]
pub(crate) struct CcReport {
    /// The modes, the first being the baseline.
    modes: Vec<&'static str>,
    rounds: u32,
    /// Model load per mode: seconds and weight GB/s of each round.
    model_load: Vec<ModeLoad>,
    /// Each level under each mode.
    levels: Vec<CcLevel>,
    /// The comparison as printed.
    table_markdown: String,
}

#[derive(Debug, Serialize)]
struct ModeLoad {
    mode: &'static str,
    seconds: Summary,
    weight_gbps: Summary,
}

#[derive(Debug, Serialize)]
struct CcLevel {
    #[serde(flatten)]
    mode: Mode,
    /// Results per CC mode, in `modes` order.
    results: Vec<LevelResult>,
    /// Output tokens/s of each mode against the first, in percent.
    throughput_diff_pct: Vec<Option<f64>>,
    /// TTFT p50 of each mode against the first, in percent.
    ttft_p50_diff_pct: Vec<Option<f64>>,
    /// TPOT p50 of each mode against the first, in percent.
    tpot_p50_diff_pct: Vec<Option<f64>>,
}

/// The order of the modes in round `round`: forward on even rounds, reversed on odd ones (A B,
/// B A, ...), so that drift falls on every mode alike.
fn round_order(n: usize, round: u32) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    if round % 2 == 1 {
        v.reverse();
    }
    v
}

/// Runs the comparison.
pub(super) async fn compare(a: &BenchArgs, levels: &[Mode]) -> anyhow::Result<CcReport> {
    let modes: Vec<CcMode> = a.compare_cc.clone();
    let mut runs: Vec<ModeRuns> = modes
        .iter()
        .map(|_| ModeRuns {
            levels: levels.iter().map(|_| (Vec::new(), 0.0)).collect(),
            ..ModeRuns::default()
        })
        .collect();
    let mut workload: Option<Workload> = None;
    let mut backend = String::new();
    for round in 0..a.rounds {
        for m in round_order(modes.len(), round) {
            let mode = modes[m];
            eprintln!(
                "starting veil serve --cc {mode} (round {}/{})",
                round + 1,
                a.rounds
            );
            let server = ServeChild::start(mode, &a.serve_arg)?;
            let mut client = connect(&server.addr).await?;
            let info = client
                .model_info(ModelInfoRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("ModelInfo: {}", status_error(&s)))?
                .into_inner();
            if info.cc_transfer != mode.as_str() {
                anyhow::bail!(
                    "the server started with --cc {mode} reports cc_transfer {:?}",
                    info.cc_transfer
                );
            }
            let longest = u64::from(a.prompt_tokens.max()) + u64::from(a.output_tokens.max());
            if longest > u64::from(info.context_length) {
                anyhow::bail!(
                    "prompt plus output tokens ({longest}) exceed the model's context length ({})",
                    info.context_length
                );
            }
            eprintln!(
                "--cc {mode}: {} on {}, loaded in {:.2} s ({:.2} GB/s of weights)",
                info.name, info.backend, info.model_load_seconds, info.weight_transfer_gbps
            );
            backend.clone_from(&info.backend);
            runs[m].load_s.push(info.model_load_seconds);
            runs[m].load_gbps.push(info.weight_transfer_gbps);
            let w = workload
                .get_or_insert_with(|| {
                    Workload::new(a.seed, a.prompt_tokens, a.output_tokens, info.vocab_size)
                })
                .clone();
            let transport = Transport::Plain(client);
            for (li, &level) in levels.iter().enumerate() {
                warmup(&transport, a, level, &w).await;
                let what = format!("cc {mode} {}/{}", round + 1, a.rounds);
                let phase = run_phase(&transport, a, level, &w, stop_at(a, level), &what).await;
                let l = LevelResult::new(level, phase.records, phase.wall_s);
                eprintln!(
                    "{}, {what}: {:.1} output tok/s, {} ok, {} errors",
                    level.describe(),
                    l.output_tokens_per_s,
                    l.ok,
                    l.error_count()
                );
                let pooled = &mut runs[m].levels[li];
                pooled.0.extend(l.request_records);
                pooled.1 += l.wall_s;
            }
            drop(transport);
            server.stop();
        }
    }
    let mut results: Vec<Vec<LevelResult>> = Vec::new();
    for r in &mut runs {
        results.push(
            levels
                .iter()
                .zip(r.levels.drain(..))
                .map(|(&level, (records, wall))| LevelResult::new(level, records, wall))
                .collect(),
        );
    }
    let summaries: Vec<RunSummary> = modes
        .iter()
        .zip(&runs)
        .zip(&results)
        .map(|((mode, r), res)| RunSummary {
            label: format!("cc {mode}"),
            load_s: Summary::of(r.load_s.iter().copied()).mean,
            upload_gbps: Summary::of(r.load_gbps.iter().copied()).mean,
            levels: res.iter().map(LevelSummary::of).collect(),
        })
        .collect();
    let table = markdown(&summaries);
    print!("{table}");
    if backend == "cuda" {
        for line in goal_lines(&modes, &summaries) {
            println!("{line}");
        }
    } else {
        println!(
            "(the goals are for GPUs; on the {backend} backend `sealed` runs the channel in \
             loopback over the weights: the model-load row is the cost of the cryptography)"
        );
    }
    if let Some(path) = &a.svg {
        std::fs::write(path, svg(&summaries)).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let cc_levels = levels
        .iter()
        .enumerate()
        .map(|(li, &level)| {
            let per_mode: Vec<LevelResult> = results.iter().map(|r| r[li].clone()).collect();
            let base = &per_mode[0];
            CcLevel {
                mode: level,
                throughput_diff_pct: per_mode
                    .iter()
                    .map(|l| diff_pct(Some(base.output_tokens_per_s), Some(l.output_tokens_per_s)))
                    .collect(),
                ttft_p50_diff_pct: per_mode
                    .iter()
                    .map(|l| diff_pct(base.ttft_s.p50, l.ttft_s.p50))
                    .collect(),
                tpot_p50_diff_pct: per_mode
                    .iter()
                    .map(|l| diff_pct(base.tpot_s.p50, l.tpot_s.p50))
                    .collect(),
                results: per_mode,
            }
        })
        .collect();
    Ok(CcReport {
        modes: modes.iter().map(|m| m.as_str()).collect(),
        rounds: a.rounds,
        model_load: modes
            .iter()
            .zip(&runs)
            .map(|(m, r)| ModeLoad {
                mode: m.as_str(),
                seconds: Summary::of(r.load_s.iter().copied()),
                weight_gbps: Summary::of(r.load_gbps.iter().copied()),
            })
            .collect(),
        levels: cc_levels,
        table_markdown: table,
    })
}

/// The verdicts against the goals for `sealed` (against the first mode, normally `off`).
fn goal_lines(modes: &[CcMode], runs: &[RunSummary]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(base) = runs.first() else { return out };
    for (mode, run) in modes.iter().zip(runs).skip(1) {
        if *mode != CcMode::Sealed {
            continue;
        }
        for level in &run.levels {
            let Some(b) = base.levels.iter().find(|l| l.load == level.load) else {
                continue;
            };
            let streams: usize = level
                .load
                .split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if streams < 32 || level.load.contains("req/s") {
                continue;
            }
            let t = diff_pct(Some(b.output_tokens_per_s), Some(level.output_tokens_per_s));
            let f = diff_pct(b.ttft_p50_s, level.ttft_p50_s);
            let ok = |d: Option<f64>, goal: f64, slower_is_positive: bool| match d {
                Some(d) if slower_is_positive => d <= goal,
                Some(d) => d >= -goal,
                None => false,
            };
            out.push(format!(
                "goal at {}: sealed throughput within {GOAL_THROUGHPUT_PCT}% of {} ({}) {}; TTFT p50 within {GOAL_TTFT_PCT}% ({}) {}",
                level.load,
                base.label,
                t.map_or("-".into(), |d| format!("{d:+.1}%")),
                if ok(t, GOAL_THROUGHPUT_PCT, false) { "met" } else { "NOT met" },
                f.map_or("-".into(), |d| format!("{d:+.1}%")),
                if ok(f, GOAL_TTFT_PCT, true) { "met" } else { "NOT met" },
            ));
        }
        if let Some(g) = run.upload_gbps {
            out.push(format!(
                "goal: weight loading through sealed at {GOAL_LOAD_GBPS} GB/s or more: {g:.2} GB/s, {}",
                if g >= GOAL_LOAD_GBPS { "met" } else { "NOT met" }
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_alternate() {
        assert_eq!(round_order(2, 0), vec![0, 1]);
        assert_eq!(round_order(2, 1), vec![1, 0]);
        assert_eq!(round_order(3, 1), vec![2, 1, 0]);
    }

    fn run(label: &str, tps: f64, ttft: f64, gbps: Option<f64>) -> RunSummary {
        RunSummary {
            label: label.into(),
            load_s: Some(1.0),
            upload_gbps: gbps,
            levels: ["1 client", "32 clients"]
                .iter()
                .map(|l| LevelSummary {
                    load: (*l).into(),
                    output_tokens_per_s: tps,
                    requests_per_s: 1.0,
                    ttft_p50_s: Some(ttft),
                    ttft_p99_s: None,
                    tpot_p50_s: None,
                    tpot_p99_s: None,
                    errors: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn goals_only_at_32_streams_and_for_sealed() {
        let modes = [CcMode::Off, CcMode::Sealed];
        let lines = goal_lines(
            &modes,
            &[
                run("off", 100.0, 1.0, Some(20.0)),
                run("sealed", 98.5, 1.04, Some(12.0)),
            ],
        );
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("goal at 32 clients") && lines[0].contains("(-1.5%) met"),
            "{lines:?}"
        );
        assert!(lines[0].contains("(+4.0%) met"), "{lines:?}");
        assert!(lines[1].contains("12.00 GB/s, met"), "{lines:?}");
        let lines = goal_lines(
            &modes,
            &[run("off", 100.0, 1.0, None), run("sealed", 97.0, 1.2, Some(2.0))],
        );
        assert!(
            lines[0].contains("(-3.0%) NOT met") && lines[0].contains("(+20.0%) NOT met"),
            "{lines:?}"
        );
        assert!(lines[1].contains("NOT met"), "{lines:?}");
        assert!(
            goal_lines(
                &[CcMode::Off, CcMode::Hardware],
                &[run("a", 1.0, 1.0, None), run("b", 1.0, 1.0, None)]
            )
            .is_empty()
        );
    }
}
