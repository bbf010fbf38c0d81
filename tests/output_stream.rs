//! Stop handling on the real tokenizer: stop strings spanning tokens are cut and never leaked
//! in part, stop ids end the stream, max tokens ends it with "length".

mod common;

use veil_engine::output::{FinishReason, OutputStream, StopConditions};
use veil_engine::tokenizer::Tokenizer;

fn stream(tok: &Tokenizer, text: &str, stop: StopConditions) -> (Vec<String>, Option<FinishReason>) {
    let mut out = OutputStream::new(stop);
    let mut pieces = Vec::new();
    for id in tok.encode(text).expect("encode") {
        let d = out.push(tok, id).expect("push");
        pieces.push(d.text);
        if d.finished.is_some() {
            return (pieces, d.finished);
        }
    }
    (pieces, None)
}

#[test]
fn stop_strings_cut_across_tokens_and_are_held_back() {
    let tok = Tokenizer::from_dir(&common::model_dir()).expect("tokenizer");
    let stop = StopConditions {
        max_tokens: 100,
        stop_strings: vec!["Paris.".into()],
        ..Default::default()
    };
    let (pieces, fin) = stream(&tok, "The capital of France is Paris. It is big.", stop);
    assert_eq!(fin, Some(FinishReason::Stop));
    assert_eq!(pieces.concat(), "The capital of France is ");
    // No emitted piece may contain a prefix of the stop string that later turned out to stop.
    assert!(pieces.iter().all(|p| !p.contains("Par")));

    // A partial match that does not complete is released.
    let stop = StopConditions {
        max_tokens: 100,
        stop_strings: vec!["Parisian".into()],
        ..Default::default()
    };
    let (pieces, fin) = stream(&tok, "Paris is", stop);
    assert_eq!(fin, None);
    assert_eq!(pieces.concat(), "Paris is");
}

#[test]
fn stop_ids_and_max_tokens() {
    let tok = Tokenizer::from_dir(&common::model_dir()).expect("tokenizer");
    let stop = StopConditions {
        max_tokens: 100,
        stop_token_ids: vec![2],
        ..Default::default()
    };
    let (pieces, fin) = stream(&tok, "Hello<|im_end|> more", stop);
    assert_eq!(fin, Some(FinishReason::Stop));
    assert_eq!(pieces.concat(), "Hello");
    let stop = StopConditions {
        max_tokens: 3,
        ..Default::default()
    };
    let (pieces, fin) = stream(&tok, "one two three four five", stop);
    assert_eq!(fin, Some(FinishReason::Length));
    assert_eq!(pieces.len(), 3);
    assert_eq!(pieces.concat(), "one two three");
}
