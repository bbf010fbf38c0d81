//! Shared fixtures of the fuzz targets.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use veil_engine::tokenizer::Tokenizer;

/// The tokenizer the tokenizer and chat-template targets use: the default model's
/// (`smollm2-135m-instruct`) from `$VEIL_FUZZ_MODEL_DIR` or the model cache when it is there,
/// else a small byte-level BPE tokenizer built here with the same structure, special tokens and
/// chat template (so the targets run from a clone alone). Which one is printed once on stderr.
pub fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let (dir, what) = match real_model_dir() {
            Some(d) => (d, "the default model's"),
            None => (built_in_dir(), "a small built-in"),
        };
        eprintln!("veil-fuzz: {what} tokenizer from {}", dir.display());
        Tokenizer::from_dir(&dir).expect("load the fuzz tokenizer")
    })
}

fn real_model_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("VEIL_FUZZ_MODEL_DIR").map(PathBuf::from),
        std::env::var_os("VEIL_HOME").map(|h| PathBuf::from(h).join("models/smollm2-135m-instruct")),
        std::env::var_os("XDG_CACHE_HOME")
            .map(|h| PathBuf::from(h).join("veil/models/smollm2-135m-instruct")),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/veil/models/smollm2-135m-instruct")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("tokenizer.json").is_file())
}

/// SmolLM2's special tokens (ids 0..17).
const SPECIAL: [&str; 17] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<repo_name>",
    "<reponame>",
    "<file_sep>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<jupyter_script>",
    "<empty_output>",
];

/// SmolLM2-135M-Instruct's chat template (its tokenizer_config.json).
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// GPT-2's byte-to-character map of byte-level BPE.
fn byte_chars() -> Vec<char> {
    let mut bytes: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = bytes.clone();
    let mut n = 0;
    for b in 0..256 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut map = vec!['\0'; 256];
    for (b, c) in bytes.into_iter().zip(chars) {
        map[b as usize] = char::from_u32(c).expect("a char");
    }
    map
}

/// Writes the built-in tokenizer's files into a fresh directory.
fn built_in_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("veil-fuzz-tokenizer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the tokenizer directory");
    write_built_in(&dir);
    dir
}

/// The built-in tokenizer: SmolLM2's pre-tokenizer, decoder and special tokens, every byte, and
/// a few merges (ASCII words, spaces, a two-byte character).
pub fn write_built_in(dir: &Path) {
    use serde_json::json;
    let chars = byte_chars();
    let mut vocab = serde_json::Map::new();
    for (i, s) in SPECIAL.iter().enumerate() {
        vocab.insert((*s).to_owned(), json!(i));
    }
    for c in &chars {
        let id = vocab.len();
        vocab.insert(c.to_string(), json!(id));
    }
    let merges = [
        ("Ġ", "t"),
        ("Ġ", "a"),
        ("i", "n"),
        ("h", "e"),
        ("Ġ", "Ġ"),
        ("t", "he"),
        ("Ġt", "he"),
        ("e", "r"),
        ("o", "n"),
        ("Ã", "©"),
        ("ĠĠ", "ĠĠ"),
        ("Ċ", "Ċ"),
    ];
    for (a, b) in merges {
        let id = vocab.len();
        vocab.insert(format!("{a}{b}"), json!(id));
    }
    let added: Vec<_> = SPECIAL
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "\\p{N}"}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab,
            "merges": merges.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>()
        }
    });
    let config = json!({
        "add_bos_token": false,
        "add_eos_token": false,
        "bos_token": "<|im_start|>",
        "chat_template": CHAT_TEMPLATE,
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>"
    });
    let generation = json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2});
    for (name, value) in [
        ("tokenizer.json", tokenizer),
        ("tokenizer_config.json", config),
        ("generation_config.json", generation),
    ] {
        std::fs::write(dir.join(name), value.to_string()).expect("write a tokenizer file");
    }
}

/// Splits `data` into fields at 0xFF bytes, each as (lossy) UTF-8.
pub fn fields(data: &[u8]) -> Vec<String> {
    data.split(|&b| b == 0xFF)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect()
}
