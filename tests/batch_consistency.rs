//! Batching must not change results: sequences run together in one forward step (mixed
//! prefill chunks and decode tokens, interleaved KV blocks) give the logits they give alone.

mod common;

use veil_engine::backend::DType;

#[test]
fn batched_steps_equal_solo_runs() {
    let mut model = common::load(DType::F32);
    common::batched_equals_solo(&mut model, 1e-3);
}
