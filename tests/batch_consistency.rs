//! Batching must not change results: sequences run together in one forward step (mixed
//! prefill chunks and decode tokens, interleaved KV blocks) give the logits they give alone.

mod common;

use veil_engine::backend::{Backend, DType, SeqChunk};
use veil_engine::sampling::argmax;

const STEPS: usize = 6;

/// Runs one sequence alone: prefill, then greedy decode; returns the logits of every step.
fn alone(backend: &mut dyn Backend, prompt: &[u32]) -> Vec<Vec<f32>> {
    let total = prompt.len() + STEPS;
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
    for pos in prompt.len()..prompt.len() + STEPS - 1 {
        let tok = [argmax(&logits)];
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

#[test]
fn batched_steps_equal_solo_runs() {
    let mut model = common::load(DType::F32);
    let cases = common::cases();
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
    for step in 0..STEPS + 3 {
        let mut batch = Vec::new();
        let mut owners = Vec::new();
        let mut tokens: [Vec<u32>; 3] = Default::default();
        for s in 0..3 {
            if got[s].len() == STEPS || (s == 2 && step < 2) {
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
        assert_eq!(got[s].len(), STEPS, "sequence {s} steps");
        for (step, (g, w)) in got[s].iter().zip(&solo[s]).enumerate() {
            let diff = g.iter().zip(w).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(diff < 1e-3, "seq {s} step {step}: max diff {diff}");
            assert_eq!(argmax(g), argmax(w), "seq {s} step {step}: greedy token differs");
        }
    }
}
