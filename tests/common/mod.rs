//! Helpers shared by the end-to-end tests.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::OnceLock;

use veil_engine::backend::{DType, SeqChunk};
use veil_engine::model::{LoadOptions, LoadedModel};
use veil_engine::store::{DEFAULT_MODEL, ModelStore};

pub mod server;

/// The reference data directory.
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/smollm2-135m-instruct")
}

/// The default model's directory, pulled into the cache on first use.
pub fn model_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let store = ModelStore::open_default().expect("open the model store");
        match store.resolve(DEFAULT_MODEL) {
            Ok(dir) => dir,
            Err(_) => {
                eprintln!("pulling {DEFAULT_MODEL} for the tests");
                store
                    .pull(DEFAULT_MODEL, &mut |_| {})
                    .expect("pull the default model")
            }
        }
    })
    .clone()
}

/// Loads the default model.
pub fn load(dtype: DType) -> LoadedModel {
    let opts = LoadOptions {
        dtype,
        ..LoadOptions::default()
    };
    LoadedModel::load(&model_dir(), &opts, &mut |_, _| {}).expect("load the default model")
}

/// One reference generation case.
#[derive(Debug, serde::Deserialize)]
pub struct Case {
    pub prompt: String,
    pub chat_text: String,
    pub input_ids: Vec<u32>,
    pub greedy_new_ids: Vec<u32>,
    pub greedy_text: String,
    pub top10_ids: Vec<u32>,
    pub top10_logits: Vec<f32>,
    pub last_logits_file: String,
}

/// The reference generation cases.
pub fn cases() -> Vec<Case> {
    #[derive(serde::Deserialize)]
    struct File {
        cases: Vec<Case>,
    }
    let text = std::fs::read_to_string(data_dir().join("generation_cases.json")).expect("read cases");
    serde_json::from_str::<File>(&text).expect("parse cases").cases
}

/// A reference logits file.
pub fn reference_logits(case: &Case) -> Vec<f32> {
    let bytes = std::fs::read(data_dir().join(&case.last_logits_file)).expect("read logits");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Next-token logits after `ids`, from a fresh KV cache.
pub fn prompt_logits(model: &mut LoadedModel, ids: &[u32]) -> Vec<f32> {
    let blocks = ids.len().div_ceil(16);
    model.backend.init_kv_cache(blocks, 16).expect("kv");
    let table: Vec<u32> = (0..blocks as u32).collect();
    let mut logits = Vec::new();
    let chunk = SeqChunk {
        tokens: ids,
        start_pos: 0,
        block_table: &table,
        want_logits: true,
    };
    model.backend.forward(&[chunk], &mut logits).expect("forward");
    logits
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Greedy tokens for `prompt`, at most `max_tokens`, stopping at end of turn.
pub fn greedy(model: &mut LoadedModel, prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    use veil_engine::generate::{GenerateRequest, generate};
    use veil_engine::output::StopConditions;
    let req = GenerateRequest {
        prompt: prompt.to_vec(),
        sampling: Default::default(),
        stop: StopConditions {
            max_tokens,
            ..Default::default()
        },
        logprobs: None,
    };
    let mut got = Vec::new();
    generate(model, &req, &mut |ev| {
        got.push(ev.id);
        true
    })
    .expect("generate");
    got
}
