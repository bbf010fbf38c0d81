//! Helpers shared by the end-to-end tests.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::OnceLock;

use veil_engine::backend::{Backend, DType, SeqChunk};
use veil_engine::model::{LoadOptions, LoadedModel};
use veil_engine::store::{DEFAULT_MODEL, ModelStore};

pub mod server;

/// The reference data directory: in the source tree the test was built from, or, for test
/// executables carried to another machine (scripts/gpu-check.sh), under the current directory.
pub fn data_dir() -> PathBuf {
    let rel = "tests/data/smollm2-135m-instruct";
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    if built.is_dir() { built } else { PathBuf::from(rel) }
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

/// Decode steps of [`batched_equals_solo`].
pub const BATCH_STEPS: usize = 6;

/// Runs one sequence alone: prefill, then greedy decode; returns the logits of every step.
pub fn alone(backend: &mut dyn Backend, prompt: &[u32]) -> Vec<Vec<f32>> {
    let total = prompt.len() + BATCH_STEPS;
    let blocks = total.div_ceil(16);
    backend.init_kv_cache(blocks, 16).expect("kv");
    let table: Vec<u32> = (0..blocks as u32).collect();
    let mut logits = Vec::new();
    backend
        .forward(
            &[SeqChunk {
                tokens: prompt,
                start_pos: 0,
                block_table: &table,
                want_logits: true,
            }],
            &mut logits,
        )
        .expect("prefill");
    let mut out = vec![logits.clone()];
    for pos in prompt.len()..prompt.len() + BATCH_STEPS - 1 {
        let tok = [veil_engine::sampling::argmax(&logits)];
        backend
            .forward(
                &[SeqChunk {
                    tokens: &tok,
                    start_pos: pos,
                    block_table: &table,
                    want_logits: true,
                }],
                &mut logits,
            )
            .expect("decode");
        out.push(logits.clone());
    }
    out
}

/// Sequences run together in one forward step (mixed prefill chunks and decode tokens,
/// interleaved shuffled KV blocks) give the logits they give alone, within `tolerance`, and
/// the same greedy tokens. The reference prompts; any backend.
pub fn batched_equals_solo(model: &mut LoadedModel, tolerance: f32) {
    use veil_engine::sampling::argmax;
    let cases = cases();
    let (a, b, c) = (&cases[0].input_ids, &cases[1].input_ids, &cases[2].input_ids);
    let vocab = model.config.vocab_size;
    let solo: Vec<Vec<Vec<f32>>> = [a, b, c]
        .iter()
        .map(|p| alone(model.backend.as_mut(), p))
        .collect();

    // Interleaved, shuffled block tables in one shared pool.
    model.backend.init_kv_cache(32, 16).expect("kv");
    let tables: [Vec<u32>; 3] = [vec![7, 2, 30, 11], vec![0, 19, 5, 23], vec![31, 9, 14, 3]];
    let prompts = [a, b, c];
    let mut pos = [0usize; 3];
    let mut next: [Option<u32>; 3] = [None; 3];
    let mut got: [Vec<Vec<f32>>; 3] = Default::default();
    let mut logits = Vec::new();
    // Step schedule: a's prompt in two chunks; b whole; c joins at step 2 while others decode.
    for step in 0..BATCH_STEPS + 3 {
        let mut batch = Vec::new();
        let mut owners = Vec::new();
        let mut tokens: [Vec<u32>; 3] = Default::default();
        for s in 0..3 {
            if got[s].len() == BATCH_STEPS || (s == 2 && step < 2) {
                continue;
            }
            let p = prompts[s];
            tokens[s] = if pos[s] < p.len() {
                let end = if s == 0 && pos[s] == 0 { 20 } else { p.len() };
                p[pos[s]..end].to_vec()
            } else {
                vec![next[s].expect("sampled")]
            };
        }
        for s in 0..3 {
            if tokens[s].is_empty() {
                continue;
            }
            let want = pos[s] + tokens[s].len() >= prompts[s].len();
            batch.push(SeqChunk {
                tokens: &tokens[s],
                start_pos: pos[s],
                block_table: &tables[s],
                want_logits: want,
            });
            if want {
                owners.push(s);
            }
        }
        if batch.is_empty() {
            break;
        }
        model
            .backend
            .forward(&batch, &mut logits)
            .expect("batched forward");
        for s in 0..3 {
            pos[s] += tokens[s].len();
        }
        for (i, &s) in owners.iter().enumerate() {
            let row = logits[i * vocab..(i + 1) * vocab].to_vec();
            next[s] = Some(argmax(&row));
            got[s].push(row);
        }
    }
    for s in 0..3 {
        assert_eq!(got[s].len(), BATCH_STEPS, "sequence {s} steps");
        for (step, (g, w)) in got[s].iter().zip(&solo[s]).enumerate() {
            let diff = g.iter().zip(w).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(diff < tolerance, "seq {s} step {step}: max diff {diff}");
            assert_eq!(argmax(g), argmax(w), "seq {s} step {step}: greedy token differs");
        }
    }
}
