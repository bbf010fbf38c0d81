//! Rebuilding a Hugging Face `tokenizer.json` from GGUF tokenizer metadata.
//!
//! Only byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`) are
//! supported, with the pre-tokenizers of the llama.cpp `tokenizer.ggml.pre`
//! names listed in [`PreTokenizerKind::from_gguf_name`]. An unknown `pre` is an
//! [`Error::Unsupported`]: guessing would silently change tokenization.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::sequence::Sequence as ProcessorSequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::reader::GgufFile;
use crate::error::{Error, Result};

/// llama.cpp token types (`tokenizer.ggml.token_type`).
pub mod token_type {
    /// An ordinary vocabulary entry.
    pub const NORMAL: i32 = 1;
    /// The unknown token (special).
    pub const UNKNOWN: i32 = 2;
    /// A control token such as BOS/EOS (special: matched whole, marked special).
    pub const CONTROL: i32 = 3;
    /// A user-defined added token (matched whole, not special).
    pub const USER_DEFINED: i32 = 4;
}

/// GPT-2's byte-to-unicode mapping: the character a byte-level BPE vocabulary spells byte `b` with.
pub fn byte_char(b: u8) -> char {
    let printable =
        |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(b) {
        return char::from(b);
    }
    // The others map, in byte order, to U+0100, U+0101, ...
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).unwrap_or('?')
}

/// The Llama-3 word-splitting regex (as in Meta's `tokenizer.json`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer families we reproduce exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// Plain GPT-2 byte-level splitting.
    Gpt2,
    /// Every digit isolated, then GPT-2 splitting (SmolLM, StarCoder, ...).
    DigitsThenGpt2,
    /// The Llama-3 regex, byte-level without its own regex, `ignore_merges`.
    Llama3,
}

impl PreTokenizerKind {
    /// Maps a llama.cpp `tokenizer.ggml.pre` name to its family, following
    /// `llama-vocab.cpp`; `None` for names we do not reproduce.
    pub fn from_gguf_name(pre: &str) -> Option<Self> {
        Some(match pre {
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
                Self::DigitsThenGpt2
            }
            "gpt-2" | "phi-2" | "mpt" | "olmo" => Self::Gpt2,
            "llama3" | "llama-v3" | "llama-bpe" => Self::Llama3,
            _ => return None,
        })
    }

    /// Whether llama.cpp adds a BOS token by default for this family (used
    /// when `tokenizer.ggml.add_bos_token` is absent).
    fn default_add_bos(self) -> bool {
        matches!(self, Self::Llama3)
    }

    /// llama.cpp's `clean_spaces` default for the family.
    fn clean_spaces(self, pre: &str) -> bool {
        match self {
            Self::DigitsThenGpt2 => !matches!(pre, "smollm" | "command-r"),
            Self::Gpt2 | Self::Llama3 => true,
        }
    }
}

/// A tokenizer rebuilt from GGUF metadata plus the special-token facts needed
/// for `tokenizer_config.json` / `generation_config.json`.
#[derive(Debug)]
pub struct GgufTokenizer {
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// All token strings, by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id` (end of turn), if given.
    pub eot_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// Whether a BOS token is prepended when encoding with special tokens.
    pub add_bos: bool,
    /// Whether an EOS token is appended when encoding with special tokens.
    pub add_eos: bool,
    /// llama.cpp's `clean_spaces` (HF `clean_up_tokenization_spaces`).
    pub clean_spaces: bool,
}

impl GgufTokenizer {
    /// The string of token `id`, if it exists.
    pub fn token(&self, id: Option<u32>) -> Option<&str> {
        id.and_then(|i| self.tokens.get(i as usize)).map(String::as_str)
    }
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

fn opt_id(g: &GgufFile, key: &str, n_tokens: usize) -> Result<Option<u32>> {
    // Some converters write -1 (as i32) or u32::MAX for "none".
    let v = match g.get(key) {
        None => return Ok(None),
        Some(v) => v,
    };
    let Some(i) = v.as_integer() else {
        return Err(Error::format("GGUF", format!("{key} is not an integer: {v:?}")));
    };
    if i < 0 || i == i128::from(u32::MAX) {
        return Ok(None);
    }
    match u32::try_from(i) {
        Ok(id) if (id as usize) < n_tokens => Ok(Some(id)),
        _ => Err(Error::format(
            "GGUF",
            format!("{key} = {i} is not a token id (vocabulary has {n_tokens} tokens)"),
        )),
    }
}

/// A byte-level BPE vocabulary in GGUF terms, from which [`tokenizer_from_parts`] builds a
/// tokenizer (GGUF import reads it from `tokenizer.ggml.*`; `crate::synth` generates one).
#[derive(Debug, Clone, Default)]
pub struct BpeParts {
    /// The llama.cpp pre-tokenizer name (`tokenizer.ggml.pre`), e.g. `"smollm"` or `"llama-bpe"`.
    pub pre: String,
    /// Token strings by id (byte-level spelling, see [`byte_char`]).
    pub tokens: Vec<String>,
    /// The [`token_type`] of each token.
    pub types: Vec<i32>,
    /// Merges by priority, as (left, right) token strings.
    pub merges: Vec<(String, String)>,
    /// Beginning-of-sequence token id.
    pub bos_id: Option<u32>,
    /// End-of-sequence token id.
    pub eos_id: Option<u32>,
    /// End-of-turn token id.
    pub eot_id: Option<u32>,
    /// Padding token id.
    pub pad_id: Option<u32>,
    /// Unknown token id.
    pub unk_id: Option<u32>,
    /// Whether to prepend BOS when encoding with special tokens (`None`: the family's default).
    pub add_bos: Option<bool>,
    /// Whether to append EOS when encoding with special tokens.
    pub add_eos: bool,
}

/// Builds the tokenizer described by the GGUF `tokenizer.ggml.*` keys.
pub fn tokenizer_from_gguf(g: &GgufFile) -> Result<GgufTokenizer> {
    let model = g.get_str("tokenizer.ggml.model")?;
    match model {
        "gpt2" => {}
        "llama" => {
            return Err(Error::Unsupported {
                what: "GGUF tokenizer model",
                name: "llama (SentencePiece)".into(),
            });
        }
        other => {
            return Err(Error::Unsupported {
                what: "GGUF tokenizer model",
                name: other.into(),
            });
        }
    }
    let pre = g
        .get_str_opt("tokenizer.ggml.pre")?
        .ok_or_else(|| Error::Unsupported {
            what: "GGUF pre-tokenizer",
            name: "(tokenizer.ggml.pre missing)".into(),
        })?;
    // Checked before reading the vocabulary, so an unsupported pre-tokenizer is reported as such.
    PreTokenizerKind::from_gguf_name(pre).ok_or_else(|| Error::Unsupported {
        what: "GGUF pre-tokenizer (tokenizer.ggml.pre)",
        name: pre.into(),
    })?;

    let tokens: Vec<String> = g
        .get_str_array("tokenizer.ggml.tokens")?
        .into_iter()
        .map(str::to_owned)
        .collect();
    if tokens.is_empty() {
        return Err(Error::format("GGUF", "tokenizer.ggml.tokens is empty"));
    }
    let n = tokens.len();
    if u32::try_from(n).is_err() {
        return Err(Error::format("GGUF", format!("{n} tokens is too many")));
    }
    let types = match g.get("tokenizer.ggml.token_type") {
        None => vec![token_type::NORMAL; n],
        Some(_) => g.get_i32_array("tokenizer.ggml.token_type")?,
    };
    let merges = g
        .get_str_array("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| Error::format("GGUF", format!("merge {m:?} has no space")))
        })
        .collect::<Result<_>>()?;
    let parts = BpeParts {
        pre: pre.to_owned(),
        bos_id: opt_id(g, "tokenizer.ggml.bos_token_id", n)?,
        eos_id: opt_id(g, "tokenizer.ggml.eos_token_id", n)?,
        eot_id: opt_id(g, "tokenizer.ggml.eot_token_id", n)?,
        pad_id: opt_id(g, "tokenizer.ggml.padding_token_id", n)?,
        unk_id: opt_id(g, "tokenizer.ggml.unknown_token_id", n)?,
        add_bos: g.get_bool_opt("tokenizer.ggml.add_bos_token")?,
        add_eos: g.get_bool_opt("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        tokens,
        types,
        merges,
    };
    tokenizer_from_parts(parts)
}

/// Builds a byte-level BPE tokenizer from its parts, checking them (unknown pre-tokenizer,
/// duplicate tokens, merges or special ids outside the vocabulary are errors).
pub fn tokenizer_from_parts(parts: BpeParts) -> Result<GgufTokenizer> {
    let BpeParts {
        pre,
        tokens,
        types,
        merges,
        bos_id,
        eos_id,
        eot_id,
        pad_id,
        unk_id,
        add_bos,
        add_eos,
    } = parts;
    let kind = PreTokenizerKind::from_gguf_name(&pre).ok_or_else(|| Error::Unsupported {
        what: "GGUF pre-tokenizer (tokenizer.ggml.pre)",
        name: pre.clone(),
    })?;
    let n = tokens.len();
    if n == 0 || u32::try_from(n).is_err() {
        return Err(Error::format("GGUF", format!("{n} tokens is not a vocabulary")));
    }
    if types.len() != n {
        return Err(Error::format(
            "GGUF",
            format!(
                "tokenizer.ggml.token_type has {} entries for {n} tokens",
                types.len()
            ),
        ));
    }
    for (what, id) in [
        ("bos", bos_id),
        ("eos", eos_id),
        ("eot", eot_id),
        ("padding", pad_id),
        ("unknown", unk_id),
    ] {
        if let Some(id) = id
            && id as usize >= n
        {
            return Err(Error::format(
                "GGUF",
                format!("{what} token id {id} is not a token id (vocabulary has {n} tokens)"),
            ));
        }
    }

    let mut vocab = Vocab::default();
    for (i, t) in tokens.iter().enumerate() {
        if vocab.insert(t.clone(), i as u32).is_some() {
            return Err(Error::format(
                "GGUF",
                format!("token {t:?} appears twice in tokenizer.ggml.tokens (id {i})"),
            ));
        }
    }

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(kind == PreTokenizerKind::Llama3)
        .build()
        .map_err(tok_err)?;
    let mut tok = Tokenizer::new(bpe);

    let pre_tok: PreTokenizerWrapper = match kind {
        PreTokenizerKind::Gpt2 => ByteLevel::new(false, true, true).into(),
        PreTokenizerKind::DigitsThenGpt2 => {
            let digits = Split::new(
                SplitPattern::Regex(r"\p{N}".into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(tok_err)?;
            Sequence::new(vec![digits.into(), ByteLevel::new(false, true, true).into()]).into()
        }
        PreTokenizerKind::Llama3 => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_REGEX.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(tok_err)?;
            Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
        }
    };
    tok.with_pre_tokenizer(Some(pre_tok));
    tok.with_decoder(Some(ByteLevelDecoder::default()));

    let add_bos = add_bos.unwrap_or(kind.default_add_bos());

    // Special tokens: control and unknown tokens are special (skipped when
    // decoding with skip_special_tokens); user-defined ones are plain added
    // tokens. Both are matched whole in input text, as llama.cpp does.
    let mut specials = Vec::new();
    let mut added = Vec::new();
    for (t, &ty) in tokens.iter().zip(&types) {
        match ty {
            token_type::CONTROL | token_type::UNKNOWN => specials.push(AddedToken::from(t.clone(), true)),
            token_type::USER_DEFINED => added.push(AddedToken::from(t.clone(), false)),
            _ => {}
        }
    }
    tok.add_special_tokens(specials).map_err(tok_err)?;
    tok.add_tokens(added).map_err(tok_err)?;

    // Byte-level offsets post-processing, plus BOS/EOS insertion if asked.
    let byte_level: PostProcessorWrapper = ByteLevel::new(true, false, true).into();
    if add_bos || add_eos {
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut special_tokens = Vec::new();
        let piece = |id: Option<u32>, what: &str| -> Result<String> {
            let id = id.ok_or_else(|| {
                Error::format(
                    "GGUF",
                    format!("add_{what}_token is set but there is no {what} token"),
                )
            })?;
            let s = tokens[id as usize].clone();
            if s.is_empty() || s.starts_with('$') || s.contains(char::is_whitespace) || s.contains(':') {
                return Err(Error::Unsupported {
                    what: "special token spelling for a post-processor template",
                    name: s,
                });
            }
            Ok(s)
        };
        if add_bos {
            let b = piece(bos_id, "bos")?;
            single.push(b.clone());
            pair.push(b.clone());
            special_tokens.push((b, bos_id.unwrap_or_default()));
        }
        single.push("$A".to_string());
        pair.push("$A".to_string());
        if add_eos {
            let e = piece(eos_id, "eos")?;
            single.push(e.clone());
            pair.push(e.clone());
            special_tokens.push((e, eos_id.unwrap_or_default()));
        }
        if add_bos {
            pair.push(format!("{}:1", special_tokens[0].0));
        }
        pair.push("$B:1".to_string());
        if add_eos {
            pair.push(format!("{}:1", special_tokens[special_tokens.len() - 1].0));
        }
        let template = TemplateProcessing::builder()
            .try_single(single)
            .map_err(tok_err)?
            .try_pair(pair)
            .map_err(tok_err)?
            .special_tokens(special_tokens)
            .build()
            .map_err(tok_err)?;
        tok.with_post_processor(Some(ProcessorSequence::new(vec![byte_level, template.into()])));
    } else {
        tok.with_post_processor(Some(byte_level));
    }

    Ok(GgufTokenizer {
        tokenizer: tok,
        tokens,
        bos_id,
        eos_id,
        eot_id,
        pad_id,
        unk_id,
        add_bos,
        add_eos,
        clean_spaces: kind.clean_spaces(&pre),
    })
}

#[cfg(test)]
pub(crate) mod test_vocab {
    //! A tiny byte-level BPE vocabulary for tests.

    use crate::gguf::reader::GgufValue;
    use crate::gguf::reader::test_writer::{i32_array, str_array};

    pub(crate) use crate::gguf::tokenizer::byte_char;

    /// Tokens: 3 control tokens, all 256 byte tokens, then merges results.
    pub(crate) fn tokens_and_merges() -> (Vec<String>, Vec<i32>, Vec<String>) {
        let mut tokens = vec![
            "<|endoftext|>".to_string(),
            "<|im_start|>".to_string(),
            "<|im_end|>".to_string(),
        ];
        let mut types = vec![3, 3, 3];
        for b in 0..=255u8 {
            tokens.push(byte_char(b).to_string());
            types.push(1);
        }
        let merges = [
            "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
        ];
        for m in merges {
            let (a, b) = m.split_once(' ').unwrap_or((m, ""));
            tokens.push(format!("{a}{b}"));
            types.push(1);
        }
        (tokens, types, merges.iter().map(|s| s.to_string()).collect())
    }

    /// The `tokenizer.ggml.*` key-values for the tiny vocabulary.
    pub(crate) fn kvs(pre: &str) -> Vec<(&'static str, GgufValue)> {
        let (tokens, types, merges) = tokens_and_merges();
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let merges: Vec<&str> = merges.iter().map(String::as_str).collect();
        vec![
            ("tokenizer.ggml.model", GgufValue::String("gpt2".into())),
            ("tokenizer.ggml.pre", GgufValue::String(pre.into())),
            ("tokenizer.ggml.tokens", str_array(&tokens)),
            ("tokenizer.ggml.token_type", i32_array(&types)),
            ("tokenizer.ggml.merges", str_array(&merges)),
            ("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
            ("tokenizer.ggml.eos_token_id", GgufValue::U32(2)),
            ("tokenizer.ggml.padding_token_id", GgufValue::U32(2)),
            ("tokenizer.ggml.unknown_token_id", GgufValue::U32(0)),
            ("tokenizer.ggml.add_bos_token", GgufValue::Bool(false)),
            (
                "tokenizer.chat_template",
                GgufValue::String(
                    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                        .into(),
                ),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::test_vocab::*;
    use super::*;
    use crate::gguf::reader::GgufValue;
    use crate::gguf::reader::test_writer::write_gguf;

    fn build(kvs: &[(&str, GgufValue)]) -> Result<GgufTokenizer> {
        let bytes = write_gguf(kvs, &[]);
        let g = GgufFile::parse(&bytes)?;
        tokenizer_from_gguf(&g)
    }

    fn ids(t: &GgufTokenizer, text: &str, special: bool) -> Vec<u32> {
        t.tokenizer
            .encode(text, special)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }

    #[test]
    fn smollm_tiny_vocab() {
        let t = build(&kvs("smollm")).expect("tokenizer");
        let (tokens, _, _) = tokens_and_merges();
        let id = |s: &str| tokens.iter().position(|t| t == s).map(|i| i as u32);
        let hello = id("hello").expect("hello");
        let world = id("Ġworld").expect("Ġworld");
        assert_eq!(ids(&t, "hello world", false), vec![hello, world]);
        // Digits are isolated: "12" -> "1", "2".
        let one = id("1").expect("1");
        let two = id("2").expect("2");
        assert_eq!(ids(&t, "12", false), vec![one, two]);
        // Control tokens are matched whole.
        assert_eq!(ids(&t, "<|im_start|>hello<|im_end|>", false), vec![1, hello, 2]);
        // Round trip through the byte-level decoder.
        let enc = ids(&t, "hello world 42 ünï", false);
        assert_eq!(
            t.tokenizer.decode(&enc, false).ok().as_deref(),
            Some("hello world 42 ünï")
        );
        assert_eq!(t.bos_id, Some(1));
        assert_eq!(t.eos_id, Some(2));
        assert!(!t.add_bos);
        assert!(!t.clean_spaces);
        // Serializes and reloads.
        let json = t.tokenizer.to_string(false).expect("json");
        assert!(json.contains(r"\\p{N}"), "digit split in {json}");
        let back: Tokenizer = json.parse().expect("reload");
        assert_eq!(
            back.encode("hello world", false)
                .map(|e| e.get_ids().to_vec())
                .ok(),
            Some(vec![hello, world])
        );
    }

    #[test]
    fn gpt2_does_not_split_digits() {
        let t = build(&kvs("gpt-2")).expect("tokenizer");
        // Without merges for digits, "12" is still two byte tokens, but as one
        // pre-token: check the pre-tokenizer kind via the JSON instead.
        let json = t.tokenizer.to_string(false).expect("json");
        assert!(!json.contains(r"\\p{N}"), "{json}");
    }

    #[test]
    fn llama3_adds_bos_by_default() {
        let mut kv = kvs("llama-bpe");
        kv.retain(|(k, _)| *k != "tokenizer.ggml.add_bos_token");
        let t = build(&kv).expect("tokenizer");
        assert!(t.add_bos);
        let enc = ids(&t, "hello", true);
        assert_eq!(enc.first(), Some(&1));
        assert_eq!(
            ids(&t, "hello", false).first().copied(),
            ids(&t, "hello", true).get(1).copied()
        );
    }

    #[test]
    fn unknown_pre_and_models_are_unsupported() {
        for (key, val) in [
            ("tokenizer.ggml.pre", "default"),
            ("tokenizer.ggml.pre", "qwen2"),
            ("tokenizer.ggml.model", "llama"),
            ("tokenizer.ggml.model", "bert"),
        ] {
            let mut kv = kvs("smollm");
            for (k, v) in kv.iter_mut() {
                if *k == key {
                    *v = GgufValue::String(val.into());
                }
            }
            let e = build(&kv).expect_err(val);
            assert!(matches!(e, Error::Unsupported { .. }), "{e}");
            assert!(
                e.to_string().contains(val.split(' ').next().unwrap_or(val)),
                "{e}"
            );
        }
        let mut kv = kvs("smollm");
        kv.retain(|(k, _)| *k != "tokenizer.ggml.pre");
        assert!(matches!(build(&kv), Err(Error::Unsupported { .. })));
    }

    #[test]
    fn bad_metadata_is_an_error() {
        let mut kv = kvs("smollm");
        kv.retain(|(k, _)| *k != "tokenizer.ggml.merges");
        assert!(build(&kv).is_err());
        let mut kv = kvs("smollm");
        for (k, v) in kv.iter_mut() {
            if *k == "tokenizer.ggml.bos_token_id" {
                *v = GgufValue::U32(1_000_000);
            }
        }
        assert!(build(&kv).is_err());
    }
}
