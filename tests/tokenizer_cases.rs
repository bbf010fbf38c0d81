//! The default model's tokenizer against the reference tokenizer cases.

mod common;

use veil_engine::tokenizer::Tokenizer;

#[test]
fn tokenizer_matches_reference_cases() {
    let tok = Tokenizer::from_dir(&common::model_dir()).expect("tokenizer");
    let text = std::fs::read_to_string(common::data_dir().join("tokenizer_cases.json")).expect("cases");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json");
    assert!(!cases.is_empty());
    for c in cases {
        let text = c["text"].as_str().expect("text");
        let want: Vec<u32> = c["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        assert_eq!(tok.encode(text).expect("encode"), want, "{text:?}");
        // Decoding gives the text back.
        assert_eq!(tok.decode(&want).expect("decode"), text);
    }
    for c in common::cases() {
        assert_eq!(tok.encode(&c.chat_text).expect("encode"), c.input_ids);
    }
}

#[test]
fn chat_template_reproduces_reference_prompts() {
    let tok = Tokenizer::from_dir(&common::model_dir()).expect("tokenizer");
    for c in common::cases() {
        let rendered = tok
            .apply_chat_template(&[veil_engine::tokenizer::ChatMessage::new("user", &c.prompt)])
            .expect("template");
        assert_eq!(rendered, c.chat_text);
    }
}

#[test]
fn incremental_detokenizer_never_splits_characters() {
    let tok = Tokenizer::from_dir(&common::model_dir()).expect("tokenizer");
    for text in [
        "naïve café — déjà vu",
        "日本語のテキスト 🔐🔑 emoji",
        "plain ascii",
    ] {
        let ids = tok.encode(text).expect("encode");
        let mut d = veil_engine::tokenizer::IncrementalDetokenizer::new();
        let mut out = String::new();
        for &id in &ids {
            let piece = d.push(&tok, id).expect("push");
            assert!(!piece.contains('\u{FFFD}'), "broken character in {piece:?}");
            out.push_str(&piece);
        }
        out.push_str(&d.flush(&tok).expect("flush"));
        assert_eq!(out, text);
    }
}
