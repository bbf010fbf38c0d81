//! Loading a model's tensors into the CPU backend's packed layout.

use half::bf16;
use veil_kernels::matmul::{PackedMatrix, WeightDtype};

use crate::backend::DType;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::weights::Weights;

/// The token embedding table, kept row-major for lookups.
#[derive(Debug)]
pub(crate) enum Embedding {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
}

impl Embedding {
    /// Writes row `id` into `out` as f32.
    pub(crate) fn row_into(&self, id: usize, out: &mut [f32]) {
        let h = out.len();
        match self {
            Self::F32(v) => out.copy_from_slice(&v[id * h..(id + 1) * h]),
            Self::Bf16(v) => {
                for (o, w) in out.iter_mut().zip(&v[id * h..(id + 1) * h]) {
                    *o = w.to_f32();
                }
            }
        }
    }
}

/// One decoder layer, with q|k|v and gate|up fused into single matrices.
#[derive(Debug)]
pub(crate) struct Layer {
    pub(crate) attn_norm: Vec<f32>,
    pub(crate) qkv: PackedMatrix,
    pub(crate) qkv_bias: Option<Vec<f32>>,
    pub(crate) o_proj: PackedMatrix,
    pub(crate) mlp_norm: Vec<f32>,
    pub(crate) gate_up: PackedMatrix,
    pub(crate) down: PackedMatrix,
}

/// All weights of the model in the CPU backend's layout.
#[derive(Debug)]
pub(crate) struct CpuWeights {
    pub(crate) embedding: Embedding,
    pub(crate) layers: Vec<Layer>,
    pub(crate) final_norm: Vec<f32>,
    pub(crate) lm_head: PackedMatrix,
}

fn kernel_dtype(d: DType) -> WeightDtype {
    match d {
        DType::Bf16 => WeightDtype::Bf16,
        DType::F32 => WeightDtype::F32,
    }
}

fn pack(name: &str, rows: usize, cols: usize, data: &[f32], dtype: DType) -> Result<PackedMatrix> {
    PackedMatrix::from_f32(rows, cols, data, kernel_dtype(dtype)).map_err(|e| Error::Tensor {
        name: name.into(),
        reason: e.to_string(),
    })
}

impl CpuWeights {
    /// Reads and repacks every tensor, reporting progress as (layers done, layers total).
    pub(crate) fn load(
        w: &Weights,
        cfg: &ModelConfig,
        dtype: DType,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let (nh, nkv, hd, inter) = (
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.intermediate_size,
        );
        let embed = w.f32("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let lm_head = if cfg.tie_word_embeddings || !w.contains("lm_head.weight") {
            pack("lm_head (tied)", cfg.vocab_size, h, &embed, dtype)?
        } else {
            let head = w.f32("lm_head.weight", &[cfg.vocab_size, h])?;
            pack("lm_head.weight", cfg.vocab_size, h, &head, dtype)?
        };
        let embedding = match dtype {
            DType::F32 => Embedding::F32(embed),
            DType::Bf16 => Embedding::Bf16(embed.iter().map(|&x| bf16::from_f32(x)).collect()),
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let t = w.layer(cfg, i)?;
            layers.push(Layer {
                attn_norm: t.attn_norm,
                qkv: pack(
                    &format!("{p}.self_attn.qkv"),
                    (nh + 2 * nkv) * hd,
                    h,
                    &t.qkv,
                    dtype,
                )?,
                qkv_bias: t.qkv_bias,
                o_proj: pack(
                    &format!("{p}.self_attn.o_proj.weight"),
                    h,
                    nh * hd,
                    &t.o_proj,
                    dtype,
                )?,
                mlp_norm: t.mlp_norm,
                gate_up: pack(&format!("{p}.mlp.gate_up"), 2 * inter, h, &t.gate_up, dtype)?,
                down: pack(&format!("{p}.mlp.down_proj.weight"), h, inter, &t.down, dtype)?,
            });
            progress(i + 1, cfg.num_layers);
        }
        Ok(Self {
            embedding,
            layers,
            final_norm: w.f32("model.norm.weight", &[h])?,
            lm_head,
        })
    }

    /// Bytes of weights read for one decode step (every matrix once, plus the LM head).
    pub(crate) fn bytes_per_token(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                l.qkv.size_bytes() + l.o_proj.size_bytes() + l.gate_up.size_bytes() + l.down.size_bytes()
            })
            .sum::<usize>()
            + self.lm_head.size_bytes()
    }
}
