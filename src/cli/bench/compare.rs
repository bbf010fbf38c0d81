//! Comparing runs: `veil bench compare A.json B.json` (two saved `--json` reports, e.g. a real
//! CC-on and a CC-off boot of one machine) and the table of `veil bench --compare-cc`. Both
//! reduce each run to a [`RunSummary`] and print the same markdown table (every metric of the
//! first run against each other run, in percent) and SVG chart.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use super::report::{LevelResult, Mode};

/// Arguments of `veil bench compare`.
#[derive(Debug, Args)]
pub(crate) struct CompareArgs {
    /// The baseline run: a report written by `veil bench --json`.
    baseline: PathBuf,
    /// The run compared with it (same workload, another configuration).
    other: PathBuf,
    /// Names of the two runs in the table and chart [default: the files' names].
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    labels: Vec<String>,
    /// Also write the table (markdown) to this file.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Write a chart (SVG: output tokens/s and TTFT p50 per level) to this file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

/// One level of one run, reduced to what is compared.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LevelSummary {
    /// The level, e.g. "32 clients" or "2 req/s".
    pub(crate) load: String,
    pub(crate) output_tokens_per_s: f64,
    pub(crate) requests_per_s: f64,
    pub(crate) ttft_p50_s: Option<f64>,
    pub(crate) ttft_p99_s: Option<f64>,
    pub(crate) tpot_p50_s: Option<f64>,
    pub(crate) tpot_p99_s: Option<f64>,
    pub(crate) errors: usize,
}

/// One run, reduced to what is compared.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunSummary {
    /// The run's name in tables and charts.
    pub(crate) label: String,
    /// Seconds the server took to load the model, when it reported it.
    pub(crate) load_s: Option<f64>,
    /// The weights' host-to-device rate during loading, GB/s, when reported.
    pub(crate) upload_gbps: Option<f64>,
    pub(crate) levels: Vec<LevelSummary>,
}

/// The name of a level.
pub(crate) fn load_name(mode: Mode) -> String {
    match mode {
        Mode::Closed { concurrency: 1 } => "1 client".into(),
        Mode::Closed { concurrency } => format!("{concurrency} clients"),
        Mode::Open { rate } => format!("{rate} req/s"),
    }
}

impl LevelSummary {
    /// From a measured level.
    pub(crate) fn of(l: &LevelResult) -> Self {
        Self {
            load: load_name(l.mode),
            output_tokens_per_s: l.output_tokens_per_s,
            requests_per_s: l.requests_per_s,
            ttft_p50_s: l.ttft_s.p50,
            ttft_p99_s: l.ttft_s.p99,
            tpot_p50_s: l.tpot_s.p50,
            tpot_p99_s: l.tpot_s.p99,
            errors: l.error_count(),
        }
    }

    /// From one entry of a JSON report's `results`.
    fn from_json(v: &Value) -> anyhow::Result<Self> {
        let num = |k: &str| v.get(k).and_then(Value::as_f64);
        let pct = |k: &str, p: &str| v.get(k).and_then(|s| s.get(p)).and_then(Value::as_f64);
        let mode = match v.get("mode").and_then(Value::as_str) {
            Some("closed") => Mode::Closed {
                concurrency: v
                    .get("concurrency")
                    .and_then(Value::as_u64)
                    .and_then(|c| usize::try_from(c).ok())
                    .context("a closed-loop level without its concurrency")?,
            },
            Some("open") => Mode::Open {
                rate: num("rate").context("an open-loop level without its rate")?,
            },
            other => anyhow::bail!("a level of unknown mode {other:?}"),
        };
        let errors = v
            .get("errors")
            .and_then(Value::as_object)
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum::<u64>() as usize);
        Ok(Self {
            load: load_name(mode),
            output_tokens_per_s: num("output_tokens_per_s").context("a level without output_tokens_per_s")?,
            requests_per_s: num("requests_per_s").context("a level without requests_per_s")?,
            ttft_p50_s: pct("ttft_s", "p50"),
            ttft_p99_s: pct("ttft_s", "p99"),
            tpot_p50_s: pct("tpot_s", "p50"),
            tpot_p99_s: pct("tpot_s", "p99"),
            errors,
        })
    }
}

impl RunSummary {
    /// Reads a report written by `veil bench --json`.
    pub(crate) fn read(path: &Path, label: String) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let doc: Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
        Self::from_json(&doc, label)
            .with_context(|| format!("{} is not a `veil bench --json` report", path.display()))
    }

    fn from_json(doc: &Value, label: String) -> anyhow::Result<Self> {
        if doc.get("tool").and_then(Value::as_str) != Some("veil bench") {
            anyhow::bail!("no \"tool\": \"veil bench\"");
        }
        let results = doc
            .get("results")
            .and_then(Value::as_array)
            .context("no \"results\" array")?;
        if results.is_empty() {
            anyhow::bail!(
                "it has no plain results (a --sealed or --compare-cc report compares within \
                 itself; compare two plain runs)"
            );
        }
        let levels = results
            .iter()
            .map(LevelSummary::from_json)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let model = doc.get("server").and_then(|s| s.get("model"));
        let model_num = |k: &str| {
            model
                .and_then(|m| m.get(k))
                .and_then(Value::as_f64)
                .filter(|x| *x > 0.0)
        };
        Ok(Self {
            label,
            load_s: model_num("load_seconds"),
            upload_gbps: model_num("weight_upload_gbps"),
            levels,
        })
    }
}

/// What differs between two reports' workloads or models (printed as warnings: a comparison
/// of different workloads measures the workloads).
fn mismatches(a: &Value, b: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let pick = |v: &Value, path: &[&str]| {
        let mut cur = v;
        for k in path {
            cur = cur.get(k).unwrap_or(&Value::Null);
        }
        cur.clone()
    };
    for path in [
        &["server", "model", "digest"][..],
        &["server", "model", "dtype"],
        &["parameters", "prompt_tokens"],
        &["parameters", "output_tokens"],
        &["parameters", "temperature"],
        &["parameters", "seed"],
    ] {
        let (x, y) = (pick(a, path), pick(b, path));
        if x != y {
            out.push(format!("{} differs: {x} vs {y}", path.join(".")));
        }
    }
    out
}

/// `veil bench compare`.
pub(crate) fn run(a: CompareArgs) -> anyhow::Result<()> {
    let name = |p: &Path| {
        p.file_stem()
            .map_or_else(|| p.display().to_string(), |s| s.to_string_lossy().into_owned())
    };
    let (la, lb) = match a.labels.as_slice() {
        [x, y] => (x.clone(), y.clone()),
        [] => (name(&a.baseline), name(&a.other)),
        _ => anyhow::bail!("--labels takes two names, e.g. --labels \"CC off,CC on\""),
    };
    let runs = [
        RunSummary::read(&a.baseline, la)?,
        RunSummary::read(&a.other, lb)?,
    ];
    let docs = [&a.baseline, &a.other].map(|p| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .unwrap_or(Value::Null)
    });
    for m in mismatches(&docs[0], &docs[1]) {
        eprintln!("warning: the runs are not the same workload: {m}");
    }
    let table = markdown(&runs);
    print!("{table}");
    if let Some(p) = &a.markdown {
        std::fs::write(p, &table).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &a.svg {
        std::fs::write(p, svg(&runs)).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// (x - base) / base in percent.
pub(crate) fn diff_pct(base: Option<f64>, x: Option<f64>) -> Option<f64> {
    match (base, x) {
        (Some(b), Some(x)) if b > 0.0 && x.is_finite() => Some((x - b) / b * 100.0),
        _ => None,
    }
}

fn pct_cell(d: Option<f64>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{d:+.1}%"))
}

/// The comparison as a markdown table: one row per (level, metric), a column per run, and the
/// difference of each run after the first against the first. Levels are matched by name; a
/// level missing from a run shows "-".
pub(crate) fn markdown(runs: &[RunSummary]) -> String {
    let mut s = String::new();
    let Some(base) = runs.first() else {
        return s;
    };
    let _ = write!(s, "| level | metric |");
    for r in runs {
        let _ = write!(s, " {} |", r.label);
    }
    for r in &runs[1..] {
        let _ = write!(s, " {} vs {} |", r.label, base.label);
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "|---|---|{}", "---:|".repeat(2 * runs.len() - 1));
    type Metric = (&'static str, fn(&LevelSummary) -> Option<f64>, f64, usize);
    let metrics: [Metric; 6] = [
        ("output tok/s", |l| Some(l.output_tokens_per_s), 1.0, 1),
        ("requests/s", |l| Some(l.requests_per_s), 1.0, 2),
        ("TTFT p50 (ms)", |l| l.ttft_p50_s, 1e3, 1),
        ("TTFT p99 (ms)", |l| l.ttft_p99_s, 1e3, 1),
        ("TPOT p50 (ms)", |l| l.tpot_p50_s, 1e3, 2),
        ("TPOT p99 (ms)", |l| l.tpot_p99_s, 1e3, 2),
    ];
    let row = |s: &mut String, level: &str, metric: &str, vals: &[Option<f64>], scale: f64, prec: usize| {
        let _ = write!(s, "| {level} | {metric} |");
        for v in vals {
            let cell = v.map_or_else(|| "-".into(), |v| format!("{:.*}", prec, v * scale));
            let _ = write!(s, " {cell} |");
        }
        for v in &vals[1..] {
            let _ = write!(s, " {} |", pct_cell(diff_pct(vals[0], *v)));
        }
        let _ = writeln!(s);
    };
    if runs.iter().any(|r| r.load_s.is_some()) {
        let loads: Vec<Option<f64>> = runs.iter().map(|r| r.load_s).collect();
        row(&mut s, "model load", "seconds", &loads, 1.0, 2);
        let rates: Vec<Option<f64>> = runs.iter().map(|r| r.upload_gbps).collect();
        if rates.iter().any(Option::is_some) {
            row(&mut s, "model load", "weights GB/s", &rates, 1.0, 2);
        }
    }
    for level in &base.levels {
        let found: Vec<Option<&LevelSummary>> = runs
            .iter()
            .map(|r| r.levels.iter().find(|l| l.load == level.load))
            .collect();
        for (name, get, scale, prec) in metrics {
            let vals: Vec<Option<f64>> = found.iter().map(|l| l.and_then(get)).collect();
            row(&mut s, &level.load, name, &vals, scale, prec);
        }
        if found.iter().any(|l| l.is_some_and(|l| l.errors > 0)) {
            let vals: Vec<Option<f64>> = found.iter().map(|l| l.map(|l| l.errors as f64)).collect();
            row(&mut s, &level.load, "failed requests", &vals, 1.0, 0);
        }
    }
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Bar colours of the runs, in order (a colour-blind-safe palette).
const COLOURS: [&str; 6] = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00"];

/// A grouped bar chart (SVG) with two panels: output tokens/s and TTFT p50 per level, a bar
/// per run, each bar labelled with its value.
pub(crate) fn svg(runs: &[RunSummary]) -> String {
    let levels: Vec<String> = runs
        .first()
        .map(|r| r.levels.iter().map(|l| l.load.clone()).collect())
        .unwrap_or_default();
    let (panel_w, panel_h, top, left) = (
        60.0 + 70.0 * levels.len().max(1) as f64 * runs.len().max(1) as f64 / 2.0,
        240.0,
        50.0,
        60.0,
    );
    let panel_w = panel_w.max(320.0);
    let width = left + 2.0 * (panel_w + 40.0);
    let height = top + panel_h + 90.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    type Get = fn(&LevelSummary) -> Option<f64>;
    let panels: [(&str, Get, f64); 2] = [
        ("output tokens/s", |l| Some(l.output_tokens_per_s), 1.0),
        ("TTFT p50 (ms)", |l| l.ttft_p50_s, 1e3),
    ];
    for (p, (title, get, scale)) in panels.iter().enumerate() {
        let x0 = left + p as f64 * (panel_w + 40.0);
        let value = |r: &RunSummary, level: &str| {
            r.levels
                .iter()
                .find(|l| l.load == level)
                .and_then(get)
                .map(|v| v * scale)
        };
        let max = runs
            .iter()
            .flat_map(|r| levels.iter().filter_map(move |l| value(r, l)))
            .fold(0.0, f64::max);
        let max = if max > 0.0 { max * 1.15 } else { 1.0 };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-weight="bold">{}</text>"#,
            x0 + panel_w / 2.0,
            top - 20.0,
            xml_escape(title)
        );
        let _ = writeln!(
            s,
            r##"<line x1="{x0:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
            top + panel_h,
            x0 + panel_w,
            top + panel_h
        );
        let group_w = panel_w / levels.len().max(1) as f64;
        let bar_w = (group_w * 0.8) / runs.len().max(1) as f64;
        for (g, level) in levels.iter().enumerate() {
            let gx = x0 + g as f64 * group_w + group_w * 0.1;
            for (i, r) in runs.iter().enumerate() {
                let Some(v) = value(r, level) else { continue };
                let h = v / max * panel_h;
                let x = gx + i as f64 * bar_w;
                let y = top + panel_h - h;
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {v:.2}</title></rect>"#,
                    bar_w * 0.9,
                    COLOURS[i % COLOURS.len()],
                    xml_escape(&r.label)
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                    x + bar_w * 0.45,
                    y - 3.0,
                    if v >= 100.0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.1}")
                    }
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                gx + group_w * 0.4,
                top + panel_h + 16.0,
                xml_escape(level)
            );
        }
    }
    for (i, r) in runs.iter().enumerate() {
        let y = top + panel_h + 40.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{left:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            y - 10.0,
            COLOURS[i % COLOURS.len()],
            left + 18.0,
            y,
            xml_escape(&r.label)
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(tps: f64, ttft: f64, load: f64) -> Value {
        serde_json::json!({
            "tool": "veil bench",
            "server": {"model": {"digest": "ab", "dtype": "bf16", "load_seconds": load}},
            "parameters": {"prompt_tokens": "128", "output_tokens": "128", "seed": 0, "temperature": 1.0},
            "results": [
                {"mode": "closed", "concurrency": 1, "output_tokens_per_s": tps / 10.0, "requests_per_s": 0.5,
                 "ttft_s": {"p50": ttft, "p99": ttft * 2.0}, "tpot_s": {"p50": 0.02, "p99": 0.03}, "errors": {}},
                {"mode": "closed", "concurrency": 32, "output_tokens_per_s": tps, "requests_per_s": 4.0,
                 "ttft_s": {"p50": ttft * 3.0, "p99": null}, "tpot_s": {"p50": 0.05, "p99": 0.06},
                 "errors": {"Unavailable": 2}}
            ]
        })
    }

    #[test]
    fn reads_reports_and_tabulates_differences() {
        let a = RunSummary::from_json(&report(1000.0, 0.1, 2.0), "off".into()).expect("a");
        let b = RunSummary::from_json(&report(980.0, 0.105, 3.0), "sealed".into()).expect("b");
        assert_eq!(a.levels.len(), 2);
        assert_eq!(a.levels[1].load, "32 clients");
        assert_eq!(a.levels[1].errors, 2);
        assert_eq!(a.levels[1].ttft_p99_s, None);
        let t = markdown(&[a.clone(), b.clone()]);
        assert!(
            t.starts_with("| level | metric | off | sealed | sealed vs off |"),
            "{t}"
        );
        assert!(
            t.contains("| model load | seconds | 2.00 | 3.00 | +50.0% |"),
            "{t}"
        );
        assert!(
            t.contains("| 32 clients | output tok/s | 1000.0 | 980.0 | -2.0% |"),
            "{t}"
        );
        assert!(
            t.contains("| 1 client | TTFT p50 (ms) | 100.0 | 105.0 | +5.0% |"),
            "{t}"
        );
        assert!(t.contains("| 32 clients | TTFT p99 (ms) | - | - | - |"), "{t}");
        assert!(
            t.contains("| 32 clients | failed requests | 2 | 2 | +0.0% |"),
            "{t}"
        );
        let chart = svg(&[a, b]);
        assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
        assert_eq!(chart.matches("<rect x=").count(), 2 * 2 * 2 + 2, "{chart}");
    }

    #[test]
    fn refuses_what_is_not_a_plain_report() {
        assert!(RunSummary::from_json(&serde_json::json!({"tool": "x"}), "a".into()).is_err());
        let sealed = serde_json::json!({"tool": "veil bench", "results": [], "sealed_comparison": {}});
        let e = RunSummary::from_json(&sealed, "a".into()).expect_err("empty");
        assert!(e.to_string().contains("compare two plain runs"), "{e}");
        let bad = serde_json::json!({"tool": "veil bench", "results": [{"mode": "sideways"}]});
        assert!(RunSummary::from_json(&bad, "a".into()).is_err());
    }

    #[test]
    fn names_workload_mismatches() {
        let a = report(1.0, 1.0, 1.0);
        let mut b = a.clone();
        b["parameters"]["seed"] = serde_json::json!(7);
        let m = mismatches(&a, &b);
        assert_eq!(m, vec!["parameters.seed differs: 0 vs 7".to_string()]);
        assert!(mismatches(&a, &a).is_empty());
    }

    #[test]
    fn labels_are_escaped_in_the_chart() {
        let mut a = RunSummary::from_json(&report(1.0, 1.0, 1.0), "<on & off>".into()).expect("a");
        a.levels.truncate(1);
        let chart = svg(&[a]);
        assert!(
            chart.contains("&lt;on &amp; off&gt;") && !chart.contains("<on &"),
            "{chart}"
        );
    }
}
