#![no_main]
//! The model's chat template on arbitrary messages: the input is split at 0xFF bytes into
//! role, content, role, content, ... (any role, not only the ones the engine admits), rendered
//! with `apply_chat_template`, and the result tokenized.

mod common;

use libfuzzer_sys::fuzz_target;
use veil_engine::tokenizer::ChatMessage;

fuzz_target!(|data: &[u8]| {
    let tok = common::tokenizer();
    let fields = common::fields(data);
    let messages: Vec<ChatMessage> = fields
        .chunks(2)
        .take(64)
        .map(|p| ChatMessage::new(p[0].as_str(), p.get(1).map_or("", String::as_str)))
        .collect();
    let Ok(text) = tok.apply_chat_template(&messages) else {
        return;
    };
    // Every message's content is in the rendering, and the assistant's turn is opened.
    for m in &messages {
        assert!(
            text.contains(m.content.as_str()),
            "a message's content went missing"
        );
    }
    assert!(text.ends_with("<|im_start|>assistant\n"), "no generation prompt");
    let _ = tok.encode(&text);
});
