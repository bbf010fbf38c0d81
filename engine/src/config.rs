//! The model's architecture hyper-parameters, read from a Hugging Face `config.json`.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Which member of the Llama family a model is; they differ only in details the runtime handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, SmolLM/SmolLM2.
    Llama,
    /// Mistral (Llama layout; sliding window limits the context).
    Mistral,
    /// Qwen2 (Llama layout with q/k/v biases).
    Qwen2,
}

impl Architecture {
    /// The Hugging Face class name.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// RoPE frequency scaling as configured by `rope_scaling`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Llama 3.1 style: low frequencies divided by `factor`, a smooth ramp in between.
    Llama3 {
        /// Division factor for low frequencies.
        factor: f32,
        /// Wavelength boundary factor for low frequencies.
        low_freq_factor: f32,
        /// Wavelength boundary factor for high frequencies.
        high_freq_factor: f32,
        /// The context the model was pre-trained with.
        original_max_position_embeddings: usize,
    },
    /// Positions divided by `factor` (linear interpolation).
    Linear {
        /// Division factor.
        factor: f32,
    },
}

/// Hyper-parameters of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Architecture family.
    pub architecture: Architecture,
    /// Residual stream width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// Optional RoPE scaling.
    pub rope_scaling: Option<RopeScaling>,
    /// Whether the LM head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections have biases.
    pub attention_bias: bool,
    /// Beginning-of-sequence token id, if any.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids.
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f32,
    #[serde(default = "default_theta")]
    rope_theta: f32,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    attention_bias: Option<bool>,
    hidden_act: Option<String>,
    sliding_window: Option<serde_json::Value>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

fn default_max_pos() -> usize {
    2048
}
fn default_eps() -> f32 {
    1e-6
}
fn default_theta() -> f32 {
    10_000.0
}

/// Reads token ids given as a number or a list of numbers.
pub(crate) fn token_ids(value: Option<&serde_json::Value>) -> Vec<u32> {
    match value {
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .into_iter()
            .collect(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok()))
            .collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    /// Reads and validates `config.json` in a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading model config", &path, e))?;
        Self::from_json(&text)
    }

    /// Parses and validates the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| Error::format("config.json", e.to_string()))?;
        let arch_name = raw
            .architectures
            .first()
            .cloned()
            .or_else(|| raw.model_type.clone())
            .unwrap_or_default();
        let architecture = match arch_name.as_str() {
            "LlamaForCausalLM" | "llama" => Architecture::Llama,
            "MistralForCausalLM" | "mistral" => Architecture::Mistral,
            "Qwen2ForCausalLM" | "qwen2" => Architecture::Qwen2,
            other => {
                return Err(Error::Unsupported {
                    what: "architecture",
                    name: if other.is_empty() {
                        "(none given)".into()
                    } else {
                        other.into()
                    },
                });
            }
        };
        if let Some(act) = raw.hidden_act.as_deref()
            && act != "silu"
        {
            return Err(Error::Unsupported {
                what: "activation",
                name: act.into(),
            });
        }
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        let bad = |reason: String| Err(Error::format("config.json", reason));
        if raw.hidden_size == 0
            || raw.num_attention_heads == 0
            || raw.num_hidden_layers == 0
            || raw.vocab_size == 0
        {
            return bad(
                "hidden_size, num_attention_heads, num_hidden_layers and vocab_size must be positive".into(),
            );
        }
        if raw.hidden_size > 1 << 16
            || raw.intermediate_size > 1 << 18
            || raw.num_hidden_layers > 1024
            || raw.vocab_size > 1 << 22
        {
            return bad("dimensions are implausibly large".into());
        }
        if num_kv_heads == 0 || !raw.num_attention_heads.is_multiple_of(num_kv_heads) {
            return bad(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({num_kv_heads})",
                raw.num_attention_heads
            ));
        }
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / raw.num_attention_heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) || head_dim > 256 {
            return bad(format!("head_dim {head_dim} must be even and at most 256"));
        }
        let rope_scaling = match &raw.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => parse_rope_scaling(v)?,
        };
        let mut max_position_embeddings = raw.max_position_embeddings.max(1);
        if architecture == Architecture::Mistral
            && let Some(window) = raw.sliding_window.as_ref().and_then(|v| v.as_u64())
        {
            // Within the window sliding-window attention equals full attention; beyond it we
            // would compute something else, so the context is capped instead.
            max_position_embeddings = max_position_embeddings.min(window as usize);
        }
        let attention_bias = raw.attention_bias.unwrap_or(architecture == Architecture::Qwen2);
        Ok(Self {
            architecture,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            vocab_size: raw.vocab_size,
            max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta: raw.rope_theta,
            rope_scaling,
            tie_word_embeddings: raw.tie_word_embeddings,
            attention_bias,
            bos_token_id: token_ids(raw.bos_token_id.as_ref()).first().copied(),
            eos_token_ids: token_ids(raw.eos_token_id.as_ref()),
        })
    }

    /// RoPE inverse frequencies (one per rotated pair), with scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        let base: Vec<f64> = (0..half)
            .map(|i| 1.0 / (self.rope_theta as f64).powf(2.0 * i as f64 / self.head_dim as f64))
            .collect();
        match &self.rope_scaling {
            None => base.iter().map(|&f| f as f32).collect(),
            Some(RopeScaling::Linear { factor }) => {
                base.iter().map(|&f| (f / *factor as f64) as f32).collect()
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let (factor, low, high) = (*factor as f64, *low_freq_factor as f64, *high_freq_factor as f64);
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low;
                let high_wavelen = old / high;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let v = if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        };
                        v as f32
                    })
                    .collect()
            }
        }
    }

    /// Width of the fused q|k|v projection output.
    pub fn qkv_width(&self) -> usize {
        (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
    }
}

fn parse_rope_scaling(v: &serde_json::Value) -> Result<Option<RopeScaling>> {
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |key: &str| -> Result<f32> {
        v.get(key)
            .and_then(|x| x.as_f64())
            .map(|x| x as f32)
            .ok_or_else(|| {
                Error::format(
                    "config.json",
                    format!("rope_scaling.{key} missing or not a number"),
                )
            })
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: num("factor")?,
        })),
        "llama3" => {
            let original = v
                .get("original_max_position_embeddings")
                .and_then(|x| x.as_u64())
                .ok_or_else(|| {
                    Error::format(
                        "config.json",
                        "rope_scaling.original_max_position_embeddings missing",
                    )
                })?;
            let s = RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: original as usize,
            };
            if let RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                ..
            } = &s
                && (*factor <= 0.0 || *low_freq_factor <= 0.0 || high_freq_factor <= low_freq_factor)
            {
                return Err(Error::format(
                    "config.json",
                    "rope_scaling llama3 factors are inconsistent",
                ));
            }
            Ok(Some(s))
        }
        other => Err(Error::Unsupported {
            what: "rope_scaling type",
            name: other.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":576,"intermediate_size":1536,
        "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"vocab_size":49152,
        "rms_norm_eps":1e-5,"rope_theta":100000.0,"tie_word_embeddings":true,"bos_token_id":1,"eos_token_id":2,
        "max_position_embeddings":8192,"hidden_act":"silu"}"#;

    #[test]
    fn parses_smollm2() {
        let c = ModelConfig::from_json(SMOL).expect("valid config");
        assert_eq!(c.architecture, Architecture::Llama);
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.qkv_width(), 960);
        assert_eq!(c.eos_token_ids, vec![2]);
        assert!(!c.attention_bias);
        let f = c.rope_inv_freq();
        assert_eq!(f.len(), 32);
        assert!((f[0] - 1.0).abs() < 1e-7);
    }

    #[test]
    fn unknown_architecture_is_named() {
        let text = SMOL.replace("LlamaForCausalLM", "GPTNeoXForCausalLM");
        let err = ModelConfig::from_json(&text).expect_err("must fail").to_string();
        assert!(err.contains("GPTNeoXForCausalLM"), "{err}");
    }

    #[test]
    fn qwen2_has_bias_and_llama3_scaling_applies() {
        let text = SMOL.replace("LlamaForCausalLM", "Qwen2ForCausalLM");
        assert!(ModelConfig::from_json(&text).expect("qwen2").attention_bias);
        let text = SMOL.replace(
            "\"hidden_act\"",
            r#""rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192},"hidden_act""#,
        );
        let c = ModelConfig::from_json(&text).expect("llama3");
        let f = c.rope_inv_freq();
        // Highest frequency untouched, lowest divided by the factor.
        assert!((f[0] - 1.0).abs() < 1e-7);
        let plain = 1.0 / 100000f64.powf(62.0 / 64.0);
        assert!(((f[31] as f64) - plain / 8.0).abs() < 1e-9);
    }

    #[test]
    fn bad_heads_rejected() {
        let text = SMOL.replace("\"num_key_value_heads\":3", "\"num_key_value_heads\":4");
        assert!(ModelConfig::from_json(&text).is_err());
        let text = SMOL.replace("\"rope_scaling\"", "x");
        assert!(ModelConfig::from_json(&text).is_ok());
        let text = SMOL.replace("\"hidden_act\":\"silu\"", "\"hidden_act\":\"gelu\"");
        assert!(ModelConfig::from_json(&text).is_err());
    }
}
