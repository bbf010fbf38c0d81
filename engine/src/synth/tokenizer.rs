//! A synthetic byte-level BPE tokenizer of exactly the model's vocabulary size.
//!
//! The vocabulary has the real model's special tokens at their real ids, the 256 byte tokens,
//! and generated merges: first every pair of byte characters (most common characters first),
//! then byte triples, until the vocabulary is full. Every token is spelled with byte-level
//! characters, so any id decodes. The tokenizer itself is built by the GGUF import's builder
//! ([`crate::gguf::tokenizer_from_parts`]), which also writes the post-processor.

use serde_json::{Map, Value, json};

use super::shapes::{SpecialIds, TokenizerFamily};
use crate::error::{Error, Result};
use crate::gguf::tokenizer::token_type;
use crate::gguf::{BpeParts, GgufTokenizer, byte_char, tokenizer_from_parts};

/// SmolLM2's special tokens, ids 0 to 16.
const SMOLLM2_SPECIALS: [&str; 17] = [
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

/// ChatML without SmolLM2's default system prompt.
const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Llama 3's header format, without Llama 3.1's tool and date preamble.
const LLAMA3_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

/// Llama 3.1's special tokens: 256 from id `vocab - 256`.
fn llama3_specials() -> Vec<String> {
    let named = [
        (0, "<|begin_of_text|>"),
        (1, "<|end_of_text|>"),
        (4, "<|finetune_right_pad_id|>"),
        (6, "<|start_header_id|>"),
        (7, "<|end_header_id|>"),
        (8, "<|eom_id|>"),
        (9, "<|eot_id|>"),
        (10, "<|python_tag|>"),
    ];
    let mut reserved = 0;
    (0..256)
        .map(|i| match named.iter().find(|(j, _)| *j == i) {
            Some((_, s)) => (*s).to_owned(),
            None => {
                let s = format!("<|reserved_special_token_{reserved}|>");
                reserved += 1;
                s
            }
        })
        .collect()
}

/// The 256 byte characters, most useful for merging first: space, lowercase letters by
/// frequency, uppercase, digits, punctuation, newline, then the rest in code point order.
fn byte_chars_by_priority() -> Vec<char> {
    let mut out: Vec<char> = Vec::with_capacity(256);
    let preferred = " etaoinshrdlcumwfgypbvkjxqzETAOINSHRDLCUMWFGYPBVKJXQZ0123456789.,'\"-:;!?()\n";
    for b in preferred.bytes() {
        out.push(byte_char(b));
    }
    let mut rest: Vec<char> = (0..=255u8).map(byte_char).filter(|c| !out.contains(c)).collect();
    rest.sort_unstable();
    out.extend(rest);
    out
}

/// Merges as (left, right) token strings.
type MergeList = Vec<(String, String)>;

/// `n` regular tokens (byte tokens first, in GPT-2's order) and the merges that make them.
fn regular_tokens(n: usize) -> Result<(Vec<String>, MergeList)> {
    if n < 256 {
        return Err(Error::InvalidRequest(format!(
            "a byte-level vocabulary needs at least 256 regular tokens, not {n}"
        )));
    }
    let mut bytes: Vec<char> = (0..=255u8).map(byte_char).collect();
    bytes.sort_unstable();
    let mut tokens: Vec<String> = bytes.iter().map(char::to_string).collect();
    let mut merges = Vec::with_capacity(n - 256);
    let prio = byte_chars_by_priority();
    // Pairs, in "square shells": every pair of the k most useful characters before any pair
    // involving character k+1.
    let mut pairs: Vec<(usize, usize)> = (0..256).flat_map(|a| (0..256).map(move |b| (a, b))).collect();
    pairs.sort_unstable_by_key(|&(a, b)| (a.max(b), a, b));
    let mut pair_tokens = Vec::new();
    for (a, b) in pairs {
        if tokens.len() == n {
            return Ok((tokens, merges));
        }
        let (l, r) = (prio[a].to_string(), prio[b].to_string());
        let t = format!("{l}{r}");
        merges.push((l, r));
        pair_tokens.push(t.clone());
        tokens.push(t);
    }
    // Triples: each pair extended by each character, most useful first.
    for p in &pair_tokens {
        for c in &prio {
            if tokens.len() == n {
                return Ok((tokens, merges));
            }
            let r = c.to_string();
            merges.push((p.clone(), r.clone()));
            tokens.push(format!("{p}{r}"));
        }
    }
    Err(Error::InvalidRequest(format!(
        "a synthetic vocabulary of {n} regular tokens is too large"
    )))
}

/// A synthetic tokenizer with its companion files' contents.
#[derive(Debug)]
pub struct SynthTokenizer {
    /// The tokenizer and its special-token facts.
    pub tokenizer: GgufTokenizer,
    /// The chat template.
    pub chat_template: &'static str,
    /// Ids for `config.json` and `generation_config.json`.
    pub ids: SpecialIds,
}

/// Builds the tokenizer of `family` with exactly `vocab_size` tokens.
pub fn build_tokenizer(family: TokenizerFamily, vocab_size: usize) -> Result<SynthTokenizer> {
    let (specials, specials_first) = match family {
        TokenizerFamily::Llama3 => (llama3_specials(), false),
        TokenizerFamily::SmolLm2 => (SMOLLM2_SPECIALS.iter().map(|s| (*s).to_owned()).collect(), true),
    };
    let n_regular = vocab_size
        .checked_sub(specials.len())
        .ok_or_else(|| Error::InvalidRequest(format!("vocabulary size {vocab_size} is too small")))?;
    let (regular, merges) = regular_tokens(n_regular)?;
    let (tokens, types): (Vec<String>, Vec<i32>) = if specials_first {
        let types = specials
            .iter()
            .map(|_| token_type::CONTROL)
            .chain(regular.iter().map(|_| token_type::NORMAL))
            .collect();
        (specials.into_iter().chain(regular).collect(), types)
    } else {
        let types = regular
            .iter()
            .map(|_| token_type::NORMAL)
            .chain(specials.iter().map(|_| token_type::CONTROL))
            .collect();
        (regular.into_iter().chain(specials).collect(), types)
    };
    let id = |s: &str| -> Result<u32> {
        tokens
            .iter()
            .position(|t| t == s)
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| Error::Tokenizer(format!("synthetic vocabulary lacks {s}")))
    };
    let (parts, chat_template, ids) = match family {
        TokenizerFamily::Llama3 => {
            let (bos, eos, eom, eot) = (
                id("<|begin_of_text|>")?,
                id("<|end_of_text|>")?,
                id("<|eom_id|>")?,
                id("<|eot_id|>")?,
            );
            let parts = BpeParts {
                pre: "llama-bpe".into(),
                bos_id: Some(bos),
                // As Llama 3.1 Instruct: the tokenizer's EOS is end-of-turn.
                eos_id: Some(eot),
                eot_id: Some(eot),
                add_bos: Some(true),
                ..BpeParts::default()
            };
            let ids = SpecialIds {
                bos,
                eos: vec![eos, eom, eot],
                pad: None,
            };
            (parts, LLAMA3_TEMPLATE, ids)
        }
        TokenizerFamily::SmolLm2 => {
            let (unk, start, end) = (id("<|endoftext|>")?, id("<|im_start|>")?, id("<|im_end|>")?);
            let parts = BpeParts {
                pre: "smollm".into(),
                bos_id: Some(start),
                eos_id: Some(end),
                pad_id: Some(end),
                unk_id: Some(unk),
                add_bos: Some(false),
                ..BpeParts::default()
            };
            let ids = SpecialIds {
                bos: start,
                eos: vec![end],
                pad: Some(end),
            };
            (parts, SMOLLM2_TEMPLATE, ids)
        }
    };
    let tokenizer = tokenizer_from_parts(BpeParts {
        tokens,
        types,
        merges,
        ..parts
    })?;
    Ok(SynthTokenizer {
        tokenizer,
        chat_template,
        ids,
    })
}

impl SynthTokenizer {
    /// `tokenizer.json`.
    pub fn tokenizer_json(&self) -> Result<String> {
        self.tokenizer
            .tokenizer
            .to_string(true)
            .map_err(|e| Error::Tokenizer(format!("serializing the synthetic tokenizer: {e}")))
    }

    /// `tokenizer_config.json`.
    pub fn tokenizer_config_json(&self, model_max_length: usize) -> Value {
        let t = &self.tokenizer;
        let mut m = Map::new();
        m.insert("add_bos_token".into(), json!(t.add_bos));
        m.insert("add_eos_token".into(), json!(t.add_eos));
        m.insert("bos_token".into(), json!(t.token(t.bos_id)));
        m.insert("eos_token".into(), json!(t.token(t.eos_id)));
        m.insert("pad_token".into(), json!(t.token(t.pad_id)));
        m.insert("unk_token".into(), json!(t.token(t.unk_id)));
        m.insert("chat_template".into(), json!(self.chat_template));
        m.insert("clean_up_tokenization_spaces".into(), json!(t.clean_spaces));
        m.insert("model_max_length".into(), json!(model_max_length));
        m.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        Value::Object(m)
    }

    /// `generation_config.json`.
    pub fn generation_config_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("bos_token_id".into(), json!(self.ids.bos));
        m.insert("eos_token_id".into(), self.ids.eos_json());
        if let Some(pad) = self.ids.pad {
            m.insert("pad_token_id".into(), json!(pad));
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(t: &SynthTokenizer, text: &str) -> Vec<u32> {
        t.tokenizer
            .tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }

    #[test]
    fn smollm2_layout() {
        let t = build_tokenizer(TokenizerFamily::SmolLm2, 49_152).expect("tokenizer");
        let tok = &t.tokenizer.tokenizer;
        assert_eq!(tok.get_vocab_size(true), 49_152);
        assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
        assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
        assert_eq!(tok.token_to_id("!"), Some(17), "byte tokens follow the specials");
        assert_eq!(t.ids.eos, vec![2]);
        // Special text is matched whole; pairs of common characters are single tokens.
        let enc = ids(&t, "<|im_start|>hi<|im_end|>");
        assert_eq!(enc.len(), 3, "{enc:?}");
        assert_eq!((enc[0], enc[2]), (1, 2));
        // Digits are isolated.
        assert_eq!(ids(&t, "42").len(), 2);
        // Any text round-trips; every id decodes.
        let text = "Hello, world! Ünïcödé 12345\n\ttabs";
        let enc = ids(&t, text);
        assert_eq!(tok.decode(&enc, false).ok().as_deref(), Some(text));
        let all: Vec<u32> = (0..49_152).collect();
        assert!(tok.decode(&all, false).is_ok());
    }

    #[test]
    fn llama3_layout() {
        let t = build_tokenizer(TokenizerFamily::Llama3, 128_256).expect("tokenizer");
        let tok = &t.tokenizer.tokenizer;
        assert_eq!(tok.get_vocab_size(true), 128_256);
        assert_eq!(tok.token_to_id("<|begin_of_text|>"), Some(128_000));
        assert_eq!(tok.token_to_id("<|end_of_text|>"), Some(128_001));
        assert_eq!(tok.token_to_id("<|eot_id|>"), Some(128_009));
        assert_eq!(tok.token_to_id("<|reserved_special_token_247|>"), Some(128_255));
        assert_eq!(t.ids.eos, vec![128_001, 128_008, 128_009]);
        assert_eq!(t.tokenizer.token(t.tokenizer.eos_id), Some("<|eot_id|>"));
        // The post-processor adds BOS when asked for special tokens.
        let with = tok
            .encode("hi", true)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default();
        assert_eq!(with.first(), Some(&128_000));
        let text = "The quick brown fox, 1234567.";
        let enc = ids(&t, text);
        assert!(enc.len() < text.len(), "merges apply: {enc:?}");
        assert_eq!(tok.decode(&enc, false).ok().as_deref(), Some(text));
        // The JSON reloads to the same tokenizer.
        let json = t.tokenizer_json().expect("json");
        let back: tokenizers::Tokenizer = json.parse().expect("reload");
        assert_eq!(back.get_vocab_size(true), 128_256);
        assert_eq!(
            back.encode(text, false).map(|e| e.get_ids().to_vec()).ok(),
            Some(enc)
        );
    }

    #[test]
    fn too_small_vocabularies_are_errors() {
        assert!(build_tokenizer(TokenizerFamily::Llama3, 300).is_err());
        assert!(build_tokenizer(TokenizerFamily::SmolLm2, 10).is_err());
        assert!(build_tokenizer(TokenizerFamily::SmolLm2, 17 + 256).is_ok());
    }
}
