//! The f32 runtime against the independent reference implementation (HF transformers, f32):
//! prompt tokens, last-position logits within 1e-3, and 48 greedy tokens.

mod common;

use veil_engine::backend::{DType, SeqChunk};
use veil_engine::generate::{GenerateRequest, generate};
use veil_engine::output::StopConditions;
use veil_engine::sampling::SamplingParams;

/// Max |logit - reference| allowed in f32: the reference's own README bound.
const F32_LOGIT_TOLERANCE: f32 = 1e-3;

#[test]
fn f32_matches_reference() {
    let mut model = common::load(DType::F32);
    for case in common::cases() {
        let ids = model.tokenizer.encode(&case.chat_text).expect("encode");
        assert_eq!(ids, case.input_ids, "prompt tokens of {:?}", case.prompt);

        // Last-position logits of the prompt.
        let n = ids.len();
        let blocks = n.div_ceil(16);
        model.backend.init_kv_cache(blocks, 16).expect("kv");
        let table: Vec<u32> = (0..blocks as u32).collect();
        let mut logits = Vec::new();
        model
            .backend
            .forward(
                &[SeqChunk {
                    tokens: &ids,
                    start_pos: 0,
                    block_table: &table,
                    want_logits: true,
                }],
                &mut logits,
            )
            .expect("forward");
        let reference = common::reference_logits(&case);
        assert_eq!(logits.len(), reference.len());
        let max_diff = logits
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{:?}: max |logit diff| = {max_diff:.2e}", case.prompt);
        assert!(
            max_diff <= F32_LOGIT_TOLERANCE,
            "{:?}: max |logit diff| {max_diff}",
            case.prompt
        );

        // Greedy continuation.
        let req = GenerateRequest {
            prompt: ids,
            sampling: SamplingParams::default(),
            stop: StopConditions {
                max_tokens: case.greedy_new_ids.len(),
                ..Default::default()
            },
            top_logprobs: 0,
        };
        let mut got = Vec::new();
        generate(&mut model, &req, &mut |ev| {
            got.push(ev.id);
            true
        })
        .expect("generate");
        assert_eq!(got, case.greedy_new_ids, "greedy tokens of {:?}", case.prompt);
    }
}
