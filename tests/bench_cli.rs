//! `veil bench` and `veil chat` against a real `veil serve` on a free local port.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn veil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_veil"))
}

/// A `veil serve` child process, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    /// Starts `veil serve --listen 127.0.0.1:0` on the default model and waits for the
    /// `listening on ADDR` line on its stderr.
    fn start() -> Self {
        let mut child = veil()
            .args(["serve", "--listen", "127.0.0.1:0", "--threads", "2", "--model"])
            .arg(common::model_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn veil serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining stderr so the server never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
                eprintln!("[serve] {line}");
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("veil serve did not print its address");
            }
        };
        Self { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// p50 <= p90 <= p99 <= max, all positive.
fn assert_ordered(s: &serde_json::Value, what: &str) {
    let (min, p50, p90, p99, max) = (
        f(&s["min"]),
        f(&s["p50"]),
        f(&s["p90"]),
        f(&s["p99"]),
        f(&s["max"]),
    );
    assert!(
        0.0 < min && min <= p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
        "{what} percentiles out of order: {s}"
    );
}

fn bench(server: &Server, args: &[&str]) -> (String, String) {
    let out = veil()
        .args(["bench", "--server", &server.addr])
        .args(args)
        .output()
        .expect("run veil bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "veil bench {args:?} failed:\n{stderr}\n{stdout}"
    );
    (stdout, stderr)
}

#[test]
fn bench_and_chat_against_a_live_server() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");

    // Closed loop, JSON report.
    let json_path = dir.path().join("bench.json");
    let json_arg = json_path.to_str().expect("utf-8 path");
    let (stdout, _) = bench(
        &server,
        &[
            "--requests",
            "6",
            "--concurrency",
            "3",
            "--prompt-tokens",
            "16",
            "--output-tokens",
            "8",
            "--json",
            json_arg,
        ],
    );
    assert!(stdout.contains("output tokens/s"), "{stdout}");
    assert!(stdout.contains("6 ok, 0 errors"), "{stdout}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("read JSON")).expect("parse JSON");
    assert!(
        doc["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{}",
        doc["timestamp"]
    );
    assert!(
        doc["server"]["model"]["vocab_size"]
            .as_u64()
            .is_some_and(|v| v > 1000)
    );
    assert_eq!(doc["parameters"]["concurrency"], 3);
    assert_eq!(doc["parameters"]["prompt_tokens"], "16");
    let results = doc["results"].as_array().expect("results");
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert_eq!(r["mode"], "closed");
    assert_eq!(r["concurrency"], 3);
    assert_eq!(r["requests"], 6);
    assert_eq!(r["ok"], 6);
    assert_eq!(r["errors"], serde_json::json!({}));
    assert_eq!(r["prompt_tokens"], 6 * 16);
    let completion = r["completion_tokens"].as_u64().expect("completion tokens");
    assert!((1..=6 * 8).contains(&completion), "{completion}");
    assert!(f(&r["output_tokens_per_s"]) > 0.0 && f(&r["requests_per_s"]) > 0.0);
    assert!(f(&r["wall_s"]) > 0.0);
    assert_ordered(&r["ttft_s"], "TTFT");
    assert_ordered(&r["e2e_s"], "latency");
    assert!(f(&r["ttft_s"]["max"]) <= f(&r["e2e_s"]["max"]));
    if r["tpot_s"]["count"].as_u64().is_some_and(|n| n > 0) {
        assert_ordered(&r["tpot_s"], "TPOT");
    }
    let records = r["request_records"].as_array().expect("records");
    assert_eq!(records.len(), 6);
    for rec in records {
        assert_eq!(rec["prompt_tokens"], 16);
        assert!(
            rec["completion_tokens"]
                .as_u64()
                .is_some_and(|n| (1..=8).contains(&n)),
            "{rec}"
        );
        assert!(rec["finish"] == "length" || rec["finish"] == "stop", "{rec}");
    }

    // The same run again, then `veil bench compare` of the two saved reports.
    let json_b = dir.path().join("bench-b.json");
    let mut again: Vec<&str> = vec!["--requests", "6", "--concurrency", "3", "--prompt-tokens", "16"];
    again.extend([
        "--output-tokens",
        "8",
        "--json",
        json_b.to_str().expect("utf-8 path"),
    ]);
    bench(&server, &again);
    let (svg, md) = (dir.path().join("c.svg"), dir.path().join("c.md"));
    let out = veil()
        .args(["bench", "compare", json_arg, json_b.to_str().expect("utf-8")])
        .args(["--labels", "first,second", "--svg", svg.to_str().expect("utf-8")])
        .args(["--markdown", md.to_str().expect("utf-8")])
        .output()
        .expect("run veil bench compare");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.starts_with("| level | metric | first | second | second vs first |"),
        "{table}"
    );
    let tps = table
        .lines()
        .find(|l| l.starts_with("| 3 clients | output tok/s |"))
        .unwrap_or_else(|| panic!("no throughput row:\n{table}"));
    assert!(tps.ends_with('%') || tps.ends_with("% |"), "{tps}");
    assert_eq!(std::fs::read_to_string(&md).expect("markdown"), table);
    let chart = std::fs::read_to_string(&svg).expect("svg");
    assert!(
        chart.starts_with("<svg") && chart.contains("3 clients"),
        "{chart}"
    );
    // A file that is not a report is refused with its name.
    let out = veil()
        .args(["bench", "compare", json_arg, md.to_str().expect("utf-8")])
        .output()
        .expect("run veil bench compare");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not JSON"));

    // Open loop and a small sweep.
    let (stdout, _) = bench(
        &server,
        &[
            "--rate",
            "20",
            "--requests",
            "3",
            "--prompt-tokens",
            "8..12",
            "--output-tokens",
            "4",
        ],
    );
    assert!(
        stdout.contains("open loop") && stdout.contains("3 ok, 0 errors"),
        "{stdout}"
    );
    let (stdout, _) = bench(
        &server,
        &[
            "--sweep",
            "1,2",
            "--requests-per-client",
            "1",
            "--prompt-tokens",
            "8",
            "--output-tokens",
            "4",
        ],
    );
    let rows: Vec<&str> = stdout.lines().collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    assert!(
        rows[1].trim_start().starts_with("1 ") && rows[1].contains("1.00x"),
        "{stdout}"
    );
    assert!(rows[2].trim_start().starts_with("2 "), "{stdout}");

    // Plaintext against sealed, on the same server (simulated evidence, plaintext RPCs on).
    // A policy that accepts the server's simulated evidence, for the sealed calls below.
    let policy = dir.path().join("simulated.toml");
    std::fs::write(&policy, "allow_simulated = true\n").expect("write policy");
    sealed_comparison(&server, &policy, dir.path());
    strict_policy_is_refused(&server);

    // Chat (sealed): two piped lines, two streamed replies.
    let mut child = veil()
        .args([
            "chat",
            "--server",
            &server.addr,
            "--temperature",
            "0",
            "--max-tokens",
            "12",
            "--policy",
        ])
        .arg(&policy)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn veil chat");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"Hello! What is the capital of France?\nAnd of Italy?\n")
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait for veil chat");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "veil chat failed:\n{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    assert!(
        stdout.chars().filter(|c| c.is_alphabetic()).count() >= 4,
        "no reply: {stdout:?}"
    );
    // Each reply ends with a newline; greedy replies to these questions are not empty.
    assert!(
        stdout.lines().filter(|l| !l.trim().is_empty()).count() >= 2,
        "{stdout:?}"
    );
}

/// `veil bench --sealed` with a policy that accepts simulated evidence: a comparison table per
/// level with both modes, and both in the JSON report.
fn sealed_comparison(server: &Server, policy: &std::path::Path, dir: &std::path::Path) {
    let json_path = dir.join("sealed.json");
    let (stdout, _) = bench(
        server,
        &[
            "--sealed",
            "--policy",
            policy.to_str().expect("utf-8 path"),
            "--prompt-tokens",
            "8",
            "--output-tokens",
            "4",
            "--requests",
            "4",
            "--sweep",
            "1,2",
            "--rounds",
            "1",
            "--json",
            json_path.to_str().expect("utf-8 path"),
        ],
    );
    assert!(stdout.contains("attestation: verified in"), "{stdout}");
    for level in ["1 client", "2 clients"] {
        assert!(
            stdout.contains(&format!(
                "plaintext vs sealed, closed loop, {level}: 1 round(s) each"
            )),
            "{stdout}"
        );
    }
    let counts: Vec<Vec<&str>> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("requests ok/errors"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(counts, [["4/0", "4/0"], ["4/0", "4/0"]], "{stdout}");
    assert!(
        stdout.contains("goal: sealed output tokens/s within 2% of plaintext"),
        "{stdout}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("read JSON")).expect("parse JSON");
    assert_eq!(doc["parameters"]["sealed"], true);
    assert_eq!(doc["parameters"]["rounds"], 1);
    let cmp = &doc["sealed_comparison"];
    assert_eq!(cmp["goal_max_throughput_diff_pct"], 2.0);
    assert_eq!(cmp["attestation"]["confidential"], false);
    assert!(f(&cmp["attestation"]["latency_s"]) > 0.0);
    let levels = cmp["levels"].as_array().expect("levels");
    assert_eq!(levels.len(), 2);
    for (l, clients) in levels.iter().zip([1, 2]) {
        assert_eq!(l["concurrency"], clients);
        assert_eq!(l["order"], serde_json::json!(["plaintext", "sealed"]));
        for mode in ["plaintext", "sealed"] {
            assert_eq!(l[mode]["requests"], 4, "{mode}: {}", l[mode]);
            assert_eq!(l[mode]["ok"], 4, "{mode}: {}", l[mode]);
            assert!(f(&l[mode]["output_tokens_per_s"]) > 0.0);
            assert_ordered(&l[mode]["ttft_s"], mode);
        }
        // The same requests in both modes.
        let prompts = |mode: &str| -> Vec<u64> {
            let mut v: Vec<u64> = l[mode]["request_records"]
                .as_array()
                .expect("records")
                .iter()
                .map(|r| r["prompt_tokens"].as_u64().expect("prompt tokens"))
                .collect();
            v.sort_unstable();
            v
        };
        assert_eq!(prompts("plaintext"), prompts("sealed"));
        assert!(f(&l["throughput_ratio"]) > 0.0);
        assert!(l["within_goal"].is_boolean());
    }
}

/// `veil bench --sealed` without a policy: the strict default refuses simulated evidence and
/// says how to accept it.
fn strict_policy_is_refused(server: &Server) {
    let out = veil()
        .args(["bench", "--server", &server.addr, "--sealed", "--requests", "1"])
        .output()
        .expect("run veil bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("does not verify") && stderr.contains("allow_simulated = true"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn chat_and_bench_report_an_unreachable_server() {
    // Port 1 on localhost: nothing listens there.
    let mut child = veil()
        .args(["chat", "--server", "127.0.0.1:1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn veil chat");
    let _ = child.stdin.take().expect("stdin").write_all(b"hi\n");
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot connect to the Veil server"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let out = veil()
        .args(["bench", "--server", "127.0.0.1:1", "--requests", "1"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot connect to the Veil server"), "{stderr}");

    let out = veil()
        .args(["bench", "--prompt-tokens", "9..3"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty range"));

    // --sealed compares closed-loop levels only; --rounds and --policy need --sealed.
    for args in [
        &["--sealed", "--rate", "5"][..],
        &["--rounds", "3"],
        &["--policy", "p.toml"],
    ] {
        let out = veil().arg("bench").args(args).output().expect("run");
        assert!(!out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--"), "{args:?}");
    }
}

/// `veil bench --compare-cc off,sealed` on the CPU backend (where `sealed` runs the channel in
/// loopback): it starts a server per mode, checks each reports its mode, and prints the
/// comparison table with the model load rows; the JSON holds both modes.
#[test]
fn compare_cc_starts_a_server_per_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("cc.json");
    let model = common::model_dir();
    let out = veil()
        .args([
            "bench",
            "--compare-cc",
            "off,sealed",
            "--rounds",
            "1",
            "--concurrency",
            "1",
        ])
        .args([
            "--requests",
            "2",
            "--prompt-tokens",
            "8",
            "--output-tokens",
            "4",
            "--json",
        ])
        .arg(&json)
        .args(["--serve-arg=--model", &format!("--serve-arg={}", model.display())])
        .args([
            "--serve-arg=--threads",
            "--serve-arg=2",
            "--serve-arg=--dtype",
            "--serve-arg=f32",
        ])
        .args(["--serve-arg=--kv-cache-mb", "--serve-arg=64"])
        .output()
        .expect("run veil bench --compare-cc");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}\n{stdout}");
    assert!(
        stdout.starts_with("| level | metric | cc off | cc sealed | cc sealed vs cc off |"),
        "{stdout}"
    );
    assert!(stdout.contains("| model load | seconds |"), "{stdout}");
    assert!(stdout.contains("| 1 client | output tok/s |"), "{stdout}");
    assert!(stderr.contains("--cc sealed: smollm2"), "{stderr}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("read JSON")).expect("JSON");
    let cc = &doc["cc_comparison"];
    assert_eq!(cc["modes"], serde_json::json!(["off", "sealed"]));
    let level = &cc["levels"][0];
    assert_eq!(level["concurrency"], 1);
    for r in level["results"].as_array().expect("results") {
        assert_eq!(r["ok"], 2, "{r}");
    }
    for m in cc["model_load"].as_array().expect("model_load") {
        assert!(m["seconds"]["mean"].as_f64().is_some_and(|s| s > 0.0), "{m}");
    }
    // Fewer than two modes, or a repeated one, is a usage error.
    for modes in ["off", "off,off"] {
        let out = veil()
            .args(["bench", "--compare-cc", modes])
            .output()
            .expect("run");
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("two or more different modes"));
    }
}
