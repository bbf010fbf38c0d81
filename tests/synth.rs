//! `veil model synth` end to end: a synthetic SmolLM2-135M loads with the real shapes, generates,
//! and the same seed reproduces the same model digest.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn veil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_veil"))
}

fn synth(dir: &Path, seed: u64, extra: &[&str]) -> Output {
    veil()
        .args(["model", "synth", "--shape", "smollm2-135m", "--seed"])
        .arg(seed.to_string())
        .args(extra)
        .arg(dir)
        .output()
        .expect("run veil model synth")
}

/// The digest printed as `DIR DIGEST`.
fn printed_digest(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let digest = stdout.split_whitespace().last().unwrap_or_default().to_owned();
    assert_eq!(digest.len(), 64, "stdout: {stdout}");
    digest
}

#[test]
fn synth_smollm2_loads_generates_and_reproduces() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let start = std::time::Instant::now();
    let out = synth(&a, 7, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("RANDOM"), "{stderr}");
    eprintln!("synth smollm2-135m: {:.1}s", start.elapsed().as_secs_f64());
    let digest_a = printed_digest(&out);
    assert_eq!(
        veil_engine::digest::model_digest(&a).unwrap().to_string(),
        digest_a
    );

    // The loader sees SmolLM2-135M's shapes.
    let cfg = veil_engine::config::ModelConfig::from_dir(&a).unwrap();
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.num_layers,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim
        ),
        (576, 30, 9, 3, 64)
    );
    assert_eq!(
        (cfg.intermediate_size, cfg.vocab_size, cfg.max_position_embeddings),
        (1536, 49152, 8192)
    );
    assert!(cfg.tie_word_embeddings);
    assert_eq!(cfg.eos_token_ids, vec![2]);
    let w = veil_engine::weights::Weights::open(&a).unwrap();
    assert_eq!(w.shape("model.embed_tokens.weight").unwrap(), &[49152, 576]);
    assert_eq!(
        w.shape("model.layers.29.self_attn.k_proj.weight").unwrap(),
        &[192, 576]
    );
    assert_eq!(w.dtype_name("model.norm.weight").unwrap(), "BF16");
    assert!(!w.contains("lm_head.weight"));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["veil_synthetic"]["shape"], "smollm2-135m");
    assert_eq!(config["veil_synthetic"]["seed"], 7);
    let tok = veil_engine::tokenizer::Tokenizer::from_dir(&a).unwrap();
    assert_eq!(tok.vocab_size(), 49152);

    // It runs.
    let out = veil()
        .args(["generate", "--prompt", "hi", "--max-tokens", "4", "--model"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The same seed gives the same model, byte for byte.
    let b = tmp.path().join("b");
    let out = synth(&b, 7, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(printed_digest(&out), digest_a);

    // A non-empty directory needs --force; another seed is another model.
    let out = synth(&a, 8, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    let out = synth(&a, 8, &["--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(printed_digest(&out), digest_a);
}
