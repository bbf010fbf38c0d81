//! The f32 runtime against the independent reference implementation (HF transformers, f32):
//! prompt tokens, last-position logits within 1e-3, and 48 greedy tokens.

mod common;

use veil_engine::backend::DType;

/// Max |logit - reference| allowed in f32: the reference's own README bound (measured ≤ 7.5e-5).
const F32_LOGIT_TOLERANCE: f32 = 1e-3;

#[test]
fn f32_matches_reference() {
    let mut model = common::load(DType::F32);
    for case in common::cases() {
        let ids = model.tokenizer.encode(&case.chat_text).expect("encode");
        assert_eq!(ids, case.input_ids, "prompt tokens of {:?}", case.prompt);
        let logits = common::prompt_logits(&mut model, &ids);
        let max_diff = common::max_abs_diff(&logits, &common::reference_logits(&case));
        eprintln!("{:?}: max |logit diff| = {max_diff:.2e}", case.prompt);
        assert!(
            max_diff <= F32_LOGIT_TOLERANCE,
            "{:?}: max |logit diff| {max_diff}",
            case.prompt
        );
        let got = common::greedy(&mut model, &ids, case.greedy_new_ids.len());
        assert_eq!(got, case.greedy_new_ids, "greedy tokens of {:?}", case.prompt);
    }
}
