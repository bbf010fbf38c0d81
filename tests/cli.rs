//! The `veil` binary end to end: tokenize, generate (text and JSON), import errors.

mod common;

use std::process::Command;

fn veil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_veil"))
}

#[test]
fn tokenize_prints_ids() {
    let dir = common::model_dir();
    let out = veil()
        .args(["tokenize", "--json", "--model"])
        .arg(&dir)
        .arg("Hello, world!")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[19556,28,905,17]");
    let out = veil()
        .args(["tokenize", "--model"])
        .arg(&dir)
        .arg("Hello, world!")
        .output()
        .expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "19556 28 905 17");
}

#[test]
fn generate_json_streams_reference_tokens_with_logprobs() {
    let dir = common::model_dir();
    let case = &common::cases()[0];
    let out = veil()
        .args([
            "generate",
            "--chat",
            "--json",
            "--logprobs",
            "3",
            "--dtype",
            "f32",
            "--max-tokens",
            "48",
        ])
        .args(["--prompt", &case.prompt, "--model"])
        .arg(&dir)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("tok/s"),
        "throughput missing from stderr: {stderr}"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let ids: Vec<u32> = lines
        .iter()
        .map(|l| l["id"].as_u64().expect("id") as u32)
        .collect();
    assert_eq!(ids, case.greedy_new_ids);
    let text: String = lines.iter().map(|l| l["text"].as_str().expect("text")).collect();
    assert_eq!(text, "The capital of France is Paris.");
    for l in &lines {
        let top = l["top_logprobs"].as_array().expect("top_logprobs");
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["id"], l["id"], "greedy picks the most likely token");
        let lp: Vec<f64> = top
            .iter()
            .map(|t| t["logprob"].as_f64().expect("logprob"))
            .collect();
        assert!(lp.windows(2).all(|w| w[0] >= w[1]) && lp[0] <= 0.0, "{lp:?}");
    }
}

#[test]
fn generate_text_with_stop_string_and_seed() {
    let dir = common::model_dir();
    let run = |seed: &str| {
        let out = veil()
            .args([
                "generate",
                "--chat",
                "--temperature",
                "0.8",
                "--top-p",
                "0.9",
                "--seed",
                seed,
                "--max-tokens",
                "24",
            ])
            .args(["--prompt", "Tell me a story.", "--model"])
            .arg(&dir)
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(run("42"), run("42"), "same seed, same text");
    let out = veil()
        .args([
            "generate",
            "--chat",
            "--stop",
            " is",
            "--prompt",
            "What is the capital of France?",
            "--model",
        ])
        .arg(&dir)
        .output()
        .expect("run");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "The capital of France"
    );
}

#[test]
fn import_rejects_corrupt_gguf_without_leaving_output() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cases: [(&str, Vec<u8>); 3] = [
        ("empty.gguf", Vec::new()),
        ("garbage.gguf", b"this is not a GGUF file at all".to_vec()),
        // A valid header claiming 2^40 tensors: must fail fast, not allocate.
        (
            "huge.gguf",
            [
                b"GGUF".as_slice(),
                &3u32.to_le_bytes(),
                &(1u64 << 40).to_le_bytes(),
                &0u64.to_le_bytes(),
            ]
            .concat(),
        ),
    ];
    for (name, bytes) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let dest = tmp.path().join(format!("{name}.out"));
        let out = veil()
            .args(["model", "import"])
            .arg(&path)
            .arg(&dest)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} accepted");
        assert!(
            stderr.contains("error") && !stderr.contains("panicked"),
            "{name}: {stderr}"
        );
        assert!(!dest.exists(), "{name}: a half-written model was left behind");
    }
}

#[test]
fn unknown_model_is_a_clear_error() {
    let out = veil()
        .args(["generate", "--prompt", "hi", "--model", "no-such-model"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-model") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// `--cc sealed` on the CPU backend passes every weight tensor through the sealed channel in
/// loopback (small chunks, a key rotation every 3 messages): the model is bit-for-bit the same,
/// so greedy decoding gives the reference tokens. `--cc hardware` needs a GPU in CC mode and is
/// refused on the CPU with the reason.
#[test]
fn sealed_loopback_loads_the_same_model_and_hardware_needs_a_gpu() {
    let dir = common::model_dir();
    let case = &common::cases()[0];
    let out = veil()
        .args([
            "generate",
            "--chat",
            "--json",
            "--dtype",
            "f32",
            "--max-tokens",
            "48",
        ])
        .args([
            "--device",
            "cpu",
            "--cc",
            "sealed",
            "--cc-chunk-kib",
            "4",
            "--cc-rotate-after",
            "3",
        ])
        .args(["--prompt", &case.prompt, "--model"])
        .arg(&dir)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("cc sealed"), "{stderr}");
    let ids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            v["id"].as_u64().expect("id") as u32
        })
        .collect();
    assert_eq!(ids, case.greedy_new_ids);

    let out = veil()
        .args([
            "generate", "--dtype", "f32", "--device", "cpu", "--cc", "hardware",
        ])
        .args(["--prompt", "hi", "--model"])
        .arg(&dir)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--cc hardware needs a GPU in CC mode"),
        "{stderr}"
    );
    let out = veil()
        .args(["generate", "--cc", "sideways", "--prompt", "hi"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown CC mode"));
}
