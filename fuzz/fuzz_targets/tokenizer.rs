#![no_main]
//! The engine's tokenizer on arbitrary text (prompts and stop strings are client text): encode
//! never panics, its ids decode, and the incremental detokenizer (the server's output path)
//! takes them one by one.

mod common;

use libfuzzer_sys::fuzz_target;
use veil_engine::tokenizer::IncrementalDetokenizer;

fuzz_target!(|data: &[u8]| {
    let tok = common::tokenizer();
    let text = String::from_utf8_lossy(data);
    let Ok(ids) = tok.encode(&text) else { return };
    let vocab = tok.vocab_size();
    assert!(
        ids.iter().all(|&id| (id as usize) < vocab),
        "an id outside the vocabulary"
    );
    let _ = tok.decode(&ids);
    let mut detok = IncrementalDetokenizer::new();
    for &id in ids.iter().take(256) {
        let _ = detok.push(tok, id);
    }
    let _ = detok.flush(tok);
});
