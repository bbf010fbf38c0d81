//! The model's weights in GPU memory, in bf16, with q|k|v and gate|up fused like the CPU
//! backend's. Uploads go through one pinned staging buffer allocated once (no host memory
//! registration, no managed memory: both fail or break under confidential computing).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, PinnedHostSlice};
use half::bf16;

use super::launch::Kernels;
use super::link::SealedLink;
use super::ptr;
use crate::cc::frame_len;
use crate::cc::pipeline::{SealedFrame, seal_stream};
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

/// Bytes of plaintext per sealed message while loading weights (a large tensor is several).
const SEALED_PIECE_BYTES: usize = 32 << 20;
/// Pinned staging frames of the sealed loading pipeline: one sealed while one is copied, one
/// spare so that sealing runs ahead of an uneven transfer.
const SEALED_STAGING: usize = 3;

/// Where one sealed piece of a tensor goes.
#[derive(Debug, Clone, Copy)]
struct Piece {
    /// Index of the tensor in loading order.
    tensor: usize,
    /// Elements of the whole tensor.
    tensor_len: usize,
    /// The piece's first element within the tensor.
    offset: usize,
    /// The layer the tensor belongs to (for progress), or `None`.
    layer: Option<usize>,
    /// Whether this is the tensor's last piece.
    last: bool,
}

/// The tensors in loading order: the embedding, the LM head (untied), each layer's, the final
/// norm, each with its layer (for progress).
fn tensors_in_order<'a>(
    w: &'a Weights,
    cfg: &'a ModelConfig,
) -> impl Iterator<Item = Result<(Option<usize>, Vec<f32>)>> + Send + 'a {
    let h = cfg.hidden_size;
    let untied = !cfg.tie_word_embeddings && w.contains("lm_head.weight");
    let head = std::iter::once(()).flat_map(move |()| {
        let mut v = vec![
            w.f32("model.embed_tokens.weight", &[cfg.vocab_size, h])
                .map(|t| (None, t)),
        ];
        if untied {
            v.push(w.f32("lm_head.weight", &[cfg.vocab_size, h]).map(|t| (None, t)));
        }
        v
    });
    let layers = (0..cfg.num_layers).flat_map(move |i| match w.layer(cfg, i) {
        Err(e) => vec![Err(e)],
        Ok(t) => {
            let mut v = vec![Ok((Some(i), t.attn_norm)), Ok((Some(i), t.qkv))];
            if let Some(b) = t.qkv_bias {
                v.push(Ok((Some(i), b)));
            }
            v.extend([t.o_proj, t.mlp_norm, t.gate_up, t.down].map(|x| Ok((Some(i), x))));
            v
        }
    });
    let tail = std::iter::once(()).map(move |()| w.f32("model.norm.weight", &[h]).map(|t| (None, t)));
    head.chain(layers).chain(tail)
}

impl GpuWeights {
    /// As [`GpuWeights::load`], through the sealed channel: a pipeline reads and converts each
    /// tensor (one thread), seals it in pieces (another, itself using the channel's threads)
    /// and, on this thread, copies each frame to the device and enqueues its authentication
    /// and decryption into the tensor's place. Logs the achieved rate.
    pub(crate) fn load_sealed(
        w: &Weights,
        cfg: &ModelConfig,
        stream: &Arc<CudaStream>,
        kernels: &Kernels,
        link: &mut SealedLink,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let chunk = link.config().chunk_size;
        let frame_cap = frame_len(SEALED_PIECE_BYTES, chunk);
        let mut pinned = Vec::with_capacity(SEALED_STAGING);
        for _ in 0..SEALED_STAGING {
            // SAFETY: a staging frame is written by sealing before it is copied.
            let p = unsafe { stream.context().alloc_pinned::<u8>(frame_cap) }
                .map_err(|e| cuda_err("allocating pinned staging", e))?;
            pinned.push(p);
        }
        let mut staging: Vec<&mut [u8]> = pinned
            .iter_mut()
            .map(|p| p.as_mut_slice().map_err(|e| cuda_err("pinned staging", e)))
            .collect::<Result<_>>()?;
        let dev_frames = [(); 2].map(|()| stream.alloc_zeros::<u8>(frame_cap));
        let [Ok(f0), Ok(f1)] = dev_frames else {
            return Err(cuda_err(
                "allocating sealed-transfer buffers",
                "out of GPU memory?",
            ));
        };
        let mut dev_frames = [f0, f1];
        // The pieces in the order they are sealed: the source pushes, the sink pops.
        let pieces = std::sync::Mutex::new(std::collections::VecDeque::<Piece>::new());
        let source = tensors_in_order(w, cfg).enumerate().flat_map(|(tensor, item)| {
            let (layer, data) = match item {
                Ok(x) => x,
                Err(e) => return vec![Err(e)],
            };
            let per = SEALED_PIECE_BYTES / 2;
            let n = data.len().max(1);
            (0..n.div_ceil(per))
                .map(|k| {
                    let offset = k * per;
                    let end = (offset + per).min(data.len());
                    let bytes: Vec<u8> = data
                        .get(offset..end)
                        .unwrap_or_default()
                        .iter()
                        .flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes())
                        .collect();
                    if let Ok(mut q) = pieces.lock() {
                        q.push_back(Piece {
                            tensor,
                            tensor_len: data.len(),
                            offset,
                            layer,
                            last: end >= data.len(),
                        });
                    }
                    Ok(bytes)
                })
                .collect()
        });
        let mut tensors: Vec<CudaSlice<u16>> = Vec::new();
        let mut bytes = 0usize;
        let mut turn = 0usize;
        let (sealer, mut device) = link.split();
        let mut sink = |sealed: &SealedFrame<'_>| -> Result<()> {
            let piece = pieces
                .lock()
                .ok()
                .and_then(|mut q| q.pop_front())
                .ok_or_else(|| cuda_err("sealed loading", "a frame without its destination"))?;
            if piece.offset == 0 {
                let t = stream
                    .alloc_zeros::<u16>(piece.tensor_len.max(1))
                    .map_err(|e| cuda_err("allocating weights (out of GPU memory?)", e))?;
                if tensors.len() != piece.tensor {
                    return Err(cuda_err("sealed loading", "tensors out of order"));
                }
                tensors.push(t);
            }
            if let Some(key) = sealed.new_key {
                device.upload_key(stream, key)?;
            }
            let n = sealed.frame.len();
            let dev = &mut dev_frames[turn % 2];
            turn += 1;
            {
                let mut view = dev.slice_mut(..n);
                stream
                    .memcpy_htod(sealed.frame, &mut view)
                    .map_err(|e| cuda_err("copying a sealed frame", e))?;
            }
            let t = tensors
                .get(piece.tensor)
                .ok_or_else(|| cuda_err("sealed loading", "missing tensor"))?;
            let dst = ptr(t, stream) + (piece.offset * 2) as u64;
            device.open(kernels, stream, ptr(dev, stream), dst, &sealed.params)?;
            // The staging frame is recycled when this returns: its copy must be done.
            stream
                .synchronize()
                .map_err(|e| cuda_err("copying a sealed frame", e))?;
            bytes += sealed.params.len as usize;
            if piece.last
                && let Some(layer) = piece.layer
            {
                progress(layer + 1, cfg.num_layers);
            }
            Ok(())
        };
        let stats = seal_stream(sealer, source, &mut staging, &mut sink)?;
        tracing::info!(
            bytes = stats.bytes,
            seconds = stats.elapsed.as_secs_f64(),
            gb_per_s = stats.gb_per_s(),
            seal_seconds = stats.seal_time.as_secs_f64(),
            transfer_seconds = stats.transfer_time.as_secs_f64(),
            "weights sealed and transferred"
        );
        Self::assemble(cfg, tensors, w, bytes)
    }

    /// Puts tensors uploaded in [`tensors_in_order`] order in their places.
    fn assemble(cfg: &ModelConfig, tensors: Vec<CudaSlice<u16>>, w: &Weights, bytes: usize) -> Result<Self> {
        let untied = !cfg.tie_word_embeddings && w.contains("lm_head.weight");
        let bias = cfg.attention_bias;
        let mut it = tensors.into_iter();
        let mut next = || {
            it.next()
                .ok_or_else(|| cuda_err("sealed loading", "a tensor is missing"))
        };
        let embedding = next()?;
        let lm_head = if untied { Some(next()?) } else { None };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for _ in 0..cfg.num_layers {
            layers.push(GpuLayer {
                attn_norm: next()?,
                qkv: next()?,
                qkv_bias: if bias { Some(next()?) } else { None },
                o_proj: next()?,
                mlp_norm: next()?,
                gate_up: next()?,
                down: next()?,
            });
        }
        let final_norm = next()?;
        Ok(Self {
            embedding,
            layers,
            final_norm,
            lm_head,
            bytes,
        })
    }

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
