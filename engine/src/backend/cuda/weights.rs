//! The model's weights in GPU memory, in bf16, with q|k|v and gate|up fused like the CPU
//! backend's. Uploads go through one pinned staging buffer allocated once (no host memory
//! registration, no managed memory: both fail or break under confidential computing).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, PinnedHostSlice};
use half::bf16;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::weights::Weights;

/// Elements per staging chunk (32 MiB of bf16).
const STAGING_ELEMS: usize = 16 << 20;

fn cuda_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "cuda",
        reason: format!("{what}: {e}"),
    }
}

/// One decoder layer on the GPU.
#[derive(Debug)]
pub(crate) struct GpuLayer {
    pub(crate) attn_norm: CudaSlice<u16>,
    pub(crate) qkv: CudaSlice<u16>,
    pub(crate) qkv_bias: Option<CudaSlice<u16>>,
    pub(crate) o_proj: CudaSlice<u16>,
    pub(crate) mlp_norm: CudaSlice<u16>,
    pub(crate) gate_up: CudaSlice<u16>,
    pub(crate) down: CudaSlice<u16>,
}

/// All weights on the GPU.
#[derive(Debug)]
pub(crate) struct GpuWeights {
    pub(crate) embedding: CudaSlice<u16>,
    pub(crate) layers: Vec<GpuLayer>,
    pub(crate) final_norm: CudaSlice<u16>,
    /// `None` when tied to the embedding.
    pub(crate) lm_head: Option<CudaSlice<u16>>,
    /// Bytes of weights on the device.
    pub(crate) bytes: usize,
}

/// Copies host tensors to the device through the pinned staging buffer.
struct Uploader {
    stream: Arc<CudaStream>,
    staging: PinnedHostSlice<u16>,
    bytes: usize,
}

impl Uploader {
    fn upload(&mut self, data: &[f32]) -> Result<CudaSlice<u16>> {
        let mut dst = self
            .stream
            .alloc_zeros::<u16>(data.len().max(1))
            .map_err(|e| cuda_err("allocating weights (out of GPU memory?)", e))?;
        for (i, chunk) in data.chunks(STAGING_ELEMS).enumerate() {
            let off = i * STAGING_ELEMS;
            {
                let host = self
                    .staging
                    .as_mut_slice()
                    .map_err(|e| cuda_err("staging buffer", e))?;
                for (h, &x) in host.iter_mut().zip(chunk) {
                    *h = bf16::from_f32(x).to_bits();
                }
                let src = host
                    .get(..chunk.len())
                    .ok_or_else(|| cuda_err("staging buffer", "too small"))?;
                let mut view = dst.slice_mut(off..off + chunk.len());
                self.stream
                    .memcpy_htod(src, &mut view)
                    .map_err(|e| cuda_err("copying weights", e))?;
            }
            // The next chunk reuses the staging buffer: wait for this copy.
            self.stream
                .synchronize()
                .map_err(|e| cuda_err("copying weights", e))?;
        }
        self.bytes += data.len() * 2;
        Ok(dst)
    }
}

impl GpuWeights {
    /// Reads, converts to bf16 and uploads every tensor; `progress` sees (layers, total).
    pub(crate) fn load(
        w: &Weights,
        cfg: &ModelConfig,
        stream: &Arc<CudaStream>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        // SAFETY: the buffer is written (by `upload`) before any byte of it is read.
        let staging = unsafe { stream.context().alloc_pinned::<u16>(STAGING_ELEMS) }
            .map_err(|e| cuda_err("allocating the pinned staging buffer", e))?;
        let mut up = Uploader {
            stream: stream.clone(),
            staging,
            bytes: 0,
        };
        let h = cfg.hidden_size;
        let embed = w.f32("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let embedding = up.upload(&embed)?;
        let lm_head = if cfg.tie_word_embeddings || !w.contains("lm_head.weight") {
            None
        } else {
            Some(up.upload(&w.f32("lm_head.weight", &[cfg.vocab_size, h])?)?)
        };
        drop(embed);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let t = w.layer(cfg, i)?;
            layers.push(GpuLayer {
                attn_norm: up.upload(&t.attn_norm)?,
                qkv: up.upload(&t.qkv)?,
                qkv_bias: t.qkv_bias.as_deref().map(|b| up.upload(b)).transpose()?,
                o_proj: up.upload(&t.o_proj)?,
                mlp_norm: up.upload(&t.mlp_norm)?,
                gate_up: up.upload(&t.gate_up)?,
                down: up.upload(&t.down)?,
            });
            progress(i + 1, cfg.num_layers);
        }
        let final_norm = up.upload(&w.f32("model.norm.weight", &[h])?)?;
        Ok(Self {
            embedding,
            layers,
            final_norm,
            lm_head,
            bytes: up.bytes,
        })
    }
}
