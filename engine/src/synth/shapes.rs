//! The model shapes `veil model synth` can produce: hyper-parameters, the tensor list and
//! `config.json`.

use std::str::FromStr;

use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::gguf::ImportDtype;
use crate::gguf::import::f32_json;

/// A named real-world model shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SynthShape {
    /// Llama 3.1 8B (`meta-llama/Llama-3.1-8B-Instruct`'s config; 128K context).
    Llama3_8b,
    /// One decoder layer of Llama 3.1 70B, with its full-size embedding and LM head.
    Llama3_70bLayer,
    /// SmolLM2-135M-Instruct (`HuggingFaceTB/SmolLM2-135M-Instruct`'s config).
    Smollm2_135m,
}

impl SynthShape {
    /// Every shape, in the order the CLI lists them.
    pub const ALL: [Self; 3] = [Self::Llama3_8b, Self::Llama3_70bLayer, Self::Smollm2_135m];

    /// The CLI names of [`Self::ALL`].
    pub const NAMES: [&'static str; 3] = ["llama-3-8b", "llama-3-70b-layer", "smollm2-135m"];

    /// The CLI name (`llama-3-8b`, `llama-3-70b-layer`, `smollm2-135m`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama3_8b => Self::NAMES[0],
            Self::Llama3_70bLayer => Self::NAMES[1],
            Self::Smollm2_135m => Self::NAMES[2],
        }
    }

    /// The hyper-parameters.
    pub fn spec(self) -> ShapeSpec {
        // Llama 3.1's `rope_scaling` (the same for 8B and 70B).
        let llama31_rope = || {
            json!({
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
                "rope_type": "llama3",
            })
        };
        match self {
            Self::Llama3_8b => ShapeSpec {
                hidden_size: 4096,
                intermediate_size: 14336,
                num_layers: 32,
                num_heads: 32,
                num_kv_heads: 8,
                head_dim: 128,
                vocab_size: 128_256,
                max_position_embeddings: 131_072,
                rms_norm_eps: 1e-5,
                rope_theta: 500_000.0,
                rope_scaling: Some(llama31_rope()),
                tie_word_embeddings: false,
                family: TokenizerFamily::Llama3,
            },
            Self::Llama3_70bLayer => ShapeSpec {
                hidden_size: 8192,
                intermediate_size: 28672,
                num_layers: 1,
                num_heads: 64,
                num_kv_heads: 8,
                head_dim: 128,
                vocab_size: 128_256,
                max_position_embeddings: 131_072,
                rms_norm_eps: 1e-5,
                rope_theta: 500_000.0,
                rope_scaling: Some(llama31_rope()),
                tie_word_embeddings: false,
                family: TokenizerFamily::Llama3,
            },
            Self::Smollm2_135m => ShapeSpec {
                hidden_size: 576,
                intermediate_size: 1536,
                num_layers: 30,
                num_heads: 9,
                num_kv_heads: 3,
                head_dim: 64,
                vocab_size: 49_152,
                max_position_embeddings: 8192,
                rms_norm_eps: 1e-5,
                rope_theta: 100_000.0,
                rope_scaling: None,
                tie_word_embeddings: true,
                family: TokenizerFamily::SmolLm2,
            },
        }
    }
}

impl std::fmt::Display for SynthShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SynthShape {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "unknown synthetic model shape {s:?} (expected one of {})",
                Self::NAMES.join(", ")
            ))
        })
    }
}

/// Which synthetic tokenizer (and chat template) a shape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenizerFamily {
    /// Llama 3 layout: regular tokens, then 256 special tokens from id `vocab - 256`
    /// (`<|begin_of_text|>`, `<|end_of_text|>`, `<|eot_id|>`, ...), Llama-3 pre-tokenizer.
    Llama3,
    /// SmolLM2 layout: 17 special tokens from id 0 (`<|endoftext|>`, `<|im_start|>`,
    /// `<|im_end|>`, ...), then the regular tokens; digits split one by one.
    SmolLm2,
}

/// Hyper-parameters of a synthetic Llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeSpec {
    /// Residual stream width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size (embedding rows and tokenizer size).
    pub vocab_size: usize,
    /// Longest context.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// `rope_scaling` as written to `config.json`.
    pub rope_scaling: Option<Value>,
    /// Whether the LM head reuses the embedding (no `lm_head.weight` then).
    pub tie_word_embeddings: bool,
    /// The tokenizer layout.
    pub family: TokenizerFamily,
}

/// How a tensor's values are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorInit {
    /// Normal-ish random values with standard deviation [`crate::synth::weights::MATRIX_STD`].
    Random,
    /// All ones (RMSNorm weights, so activations stay finite).
    Ones,
}

/// One tensor of a synthetic model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Hugging Face Llama tensor name.
    pub name: String,
    /// Shape (rows first).
    pub shape: Vec<usize>,
    /// How its values are drawn.
    pub init: TensorInit,
}

impl TensorSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl ShapeSpec {
    /// The tensors in file order: embedding, each layer, final norm, LM head (when untied).
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let h = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let inter = self.intermediate_size;
        let t = |name: String, shape: &[usize], init| TensorSpec {
            name,
            shape: shape.to_vec(),
            init,
        };
        let mut out = vec![t(
            "model.embed_tokens.weight".into(),
            &[self.vocab_size, h],
            TensorInit::Random,
        )];
        for i in 0..self.num_layers {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            out.extend([
                t(p("input_layernorm.weight"), &[h], TensorInit::Ones),
                t(p("self_attn.q_proj.weight"), &[q, h], TensorInit::Random),
                t(p("self_attn.k_proj.weight"), &[kv, h], TensorInit::Random),
                t(p("self_attn.v_proj.weight"), &[kv, h], TensorInit::Random),
                t(p("self_attn.o_proj.weight"), &[h, q], TensorInit::Random),
                t(p("post_attention_layernorm.weight"), &[h], TensorInit::Ones),
                t(p("mlp.gate_proj.weight"), &[inter, h], TensorInit::Random),
                t(p("mlp.up_proj.weight"), &[inter, h], TensorInit::Random),
                t(p("mlp.down_proj.weight"), &[h, inter], TensorInit::Random),
            ]);
        }
        out.push(t("model.norm.weight".into(), &[h], TensorInit::Ones));
        if !self.tie_word_embeddings {
            out.push(t(
                "lm_head.weight".into(),
                &[self.vocab_size, h],
                TensorInit::Random,
            ));
        }
        out
    }

    /// Total number of parameters.
    pub fn num_parameters(&self) -> u64 {
        self.tensors().iter().map(|t| t.numel() as u64).sum()
    }

    /// `config.json`, marked synthetic with `veil_synthetic`.
    pub(crate) fn config_json(&self, ids: &SpecialIds, marker: Value, dtype: ImportDtype) -> Value {
        let mut m = Map::new();
        m.insert("_name_or_path".into(), marker["name"].clone());
        m.insert("architectures".into(), json!(["LlamaForCausalLM"]));
        m.insert("model_type".into(), json!("llama"));
        m.insert("hidden_size".into(), json!(self.hidden_size));
        m.insert("intermediate_size".into(), json!(self.intermediate_size));
        m.insert("num_hidden_layers".into(), json!(self.num_layers));
        m.insert("num_attention_heads".into(), json!(self.num_heads));
        m.insert("num_key_value_heads".into(), json!(self.num_kv_heads));
        m.insert("head_dim".into(), json!(self.head_dim));
        m.insert("hidden_act".into(), json!("silu"));
        m.insert("rms_norm_eps".into(), f32_json(self.rms_norm_eps));
        m.insert("rope_theta".into(), f32_json(self.rope_theta));
        m.insert(
            "rope_scaling".into(),
            self.rope_scaling.clone().unwrap_or(Value::Null),
        );
        m.insert(
            "max_position_embeddings".into(),
            json!(self.max_position_embeddings),
        );
        m.insert("vocab_size".into(), json!(self.vocab_size));
        m.insert("tie_word_embeddings".into(), json!(self.tie_word_embeddings));
        m.insert("attention_bias".into(), json!(false));
        m.insert("attention_dropout".into(), json!(0.0));
        m.insert("mlp_bias".into(), json!(false));
        m.insert("initializer_range".into(), json!(0.02));
        m.insert("bos_token_id".into(), json!(ids.bos));
        m.insert("eos_token_id".into(), ids.eos_json());
        if let Some(pad) = ids.pad {
            m.insert("pad_token_id".into(), json!(pad));
        }
        m.insert("torch_dtype".into(), json!(dtype.torch_name()));
        m.insert("use_cache".into(), json!(true));
        m.insert("veil_synthetic".into(), marker);
        Value::Object(m)
    }
}

/// The special token ids written to `config.json` and `generation_config.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialIds {
    /// Beginning of sequence.
    pub bos: u32,
    /// End of sequence (all of them; generation stops at any).
    pub eos: Vec<u32>,
    /// Padding, if any.
    pub pad: Option<u32>,
}

impl SpecialIds {
    /// `eos_token_id` as Hugging Face writes it: a number when there is one, else a list.
    pub(crate) fn eos_json(&self) -> Value {
        match self.eos.as_slice() {
            [one] => json!(one),
            many => json!(many),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_real_models() {
        // Published parameter counts.
        assert_eq!(SynthShape::Smollm2_135m.spec().num_parameters(), 134_515_008);
        assert_eq!(SynthShape::Llama3_8b.spec().num_parameters(), 8_030_261_248);
        // 70B: 2 * 128256 * 8192 embeddings + 8192 final norm + one of its 80 layers.
        let layer_70b = 8192 * 8192 * 2 + 8192 * 1024 * 2 + 3 * 8192 * 28672 + 2 * 8192;
        assert_eq!(
            SynthShape::Llama3_70bLayer.spec().num_parameters(),
            2 * 128_256 * 8192 + 8192 + layer_70b
        );
        // ... which is the real 70B's count with 79 layers removed.
        assert_eq!(
            SynthShape::Llama3_70bLayer.spec().num_parameters() + 79 * layer_70b,
            70_553_706_496
        );
    }

    #[test]
    fn tensor_lists() {
        let smol = SynthShape::Smollm2_135m.spec().tensors();
        assert_eq!(smol.len(), 1 + 30 * 9 + 1);
        assert!(!smol.iter().any(|t| t.name == "lm_head.weight"));
        let big = SynthShape::Llama3_8b.spec().tensors();
        assert_eq!(big.len(), 1 + 32 * 9 + 2);
        let find = |name: &str| big.iter().find(|t| t.name == name).map(|t| t.shape.clone());
        assert_eq!(find("lm_head.weight"), Some(vec![128_256, 4096]));
        assert_eq!(
            find("model.layers.31.self_attn.k_proj.weight"),
            Some(vec![1024, 4096])
        );
        assert_eq!(
            find("model.layers.0.mlp.down_proj.weight"),
            Some(vec![4096, 14336])
        );
        assert!(
            big.iter()
                .filter(|t| t.name.ends_with("norm.weight"))
                .all(|t| t.init == TensorInit::Ones && t.shape == [4096])
        );
        let names: std::collections::HashSet<_> = big.iter().map(|t| &t.name).collect();
        assert_eq!(names.len(), big.len(), "names are unique");
    }

    #[test]
    fn names_round_trip() {
        for s in SynthShape::ALL {
            assert_eq!(s.name().parse::<SynthShape>().ok(), Some(s));
        }
        assert!("llama-3-70b".parse::<SynthShape>().is_err());
    }
}
