//! The CUDA backend: the transformer on an NVIDIA GPU (compute capability 8.0 or newer),
//! built for confidential computing.
//!
//! - **Loading without CUDA.** cudarc loads `libcuda`, cuBLAS and cuBLASLt at run time, so
//!   the workspace builds and tests anywhere; [`probe`] says why a device is not usable
//!   instead of panicking. Kernels come as PTX compiled ahead of time from `kernels/cuda`
//!   (`veil_kernels::cuda`), so a machine with only the driver runs them.
//! - **Weights** are resident in bf16 (`weights`); matrix products go to cuBLASLt on tensor
//!   cores with f32 accumulation (`gemm`); embedding, fused residual-add + RMSNorm, RoPE with
//!   the KV write, paged attention (tiled prefill, split-K decode), SwiGLU and sampling are
//!   our kernels (`launch`). The residual stream stays f32; other activations are bf16.
//! - **One copy each way per step.** The host plans a step (`plan`) into one buffer of words
//!   (token ids, positions, KV slots, block tables, tiles, sampling parameters, penalties),
//!   copied to the device once from a pinned buffer allocated once; the step ends with one
//!   copy back of the picked ids and requested log-probabilities. No host registration and no
//!   managed memory: both fail or break under CC mode.
//! - **CUDA graphs.** Decode-only steps are padded to a batch-size bucket and replayed from a
//!   graph captured once per (bucket, block-table width, attention splits).
//! - **KV memory** is sized like vLLM's `gpu_memory_utilization`: after the weights and a
//!   profiling pass at the step's largest shape, a fraction of free memory becomes KV blocks
//!   ([`CudaBackend::kv_budget`]).

mod gcm;
mod gemm;
mod launch;
mod link;
mod plan;
mod probe;
#[cfg(test)]
mod tests;
mod weights;

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaGraph, CudaSlice, CudaStream, DevicePtr, PinnedHostSlice, sys};
use veil_kernels::ops::RopeTable;

pub use probe::{CudaDeviceInfo, probe};

use self::gemm::{Gemm, OutType, Shape};
use self::launch::{Arg, Kernels};
use self::link::SealedLink;
use self::plan::{MAX_TOP, StepPlan};
use self::weights::GpuWeights;
use super::{Backend, DType, DeviceSample, SampleRow, SeqChunk};
use crate::cc::{CcMode, ChannelConfig};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::weights::Weights;

/// Decode batch sizes that get a CUDA graph; larger decode steps run without one.
const GRAPH_BUCKETS: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];
/// The longest context the RoPE table covers (positions beyond need a larger table).
const MAX_ROPE_POSITIONS: usize = 131_072;
/// Words copied back per sampled row: id, logprob, then top ids and top logprobs.
const OUT_WORDS_PER_ROW: usize = 2 + 2 * MAX_TOP;

fn cuda_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "cuda",
        reason: format!("{what}: {e}"),
    }
}

/// Dynamic shared memory of `veil_attention_prefill` (kernels/cuda/ABI.md).
fn prefill_shared_bytes(head_dim: usize) -> u32 {
    veil_kernels::cuda::prefill_shared_bytes(head_dim) as u32
}

/// The raw address of a device buffer (event tracking is off: the backend uses one stream).
fn ptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (p, _sync) = s.device_ptr(stream);
    p
}

/// Activation buffers for up to `tokens` tokens, `rows` sampled rows and `parts` decode
/// attention partials; grown on demand (which drops the captured graphs).
#[derive(Debug)]
struct Buffers {
    tokens: usize,
    rows: usize,
    parts: usize,
    words_in: usize,
    residual: CudaSlice<f32>,
    normed: CudaSlice<u16>,
    qkv: CudaSlice<u16>,
    attn: CudaSlice<u16>,
    delta: CudaSlice<u16>,
    gate_up: CudaSlice<u16>,
    act: CudaSlice<u16>,
    rows_normed: CudaSlice<u16>,
    logits: CudaSlice<f32>,
    part_acc: CudaSlice<f32>,
    part_ml: CudaSlice<f32>,
    input: CudaSlice<i32>,
    output: CudaSlice<i32>,
    host_in: PinnedHostSlice<i32>,
    host_out: PinnedHostSlice<i32>,
}

/// A captured CUDA graph.
struct Graph(CudaGraph);

// SAFETY: a graph is made and replayed only by the thread that drives the backend (the
// engine thread; `Backend` is `Send` but not `Sync`, so never two threads at once), which is
// what CUDA requires of graph objects; moving it between threads is allowed.
unsafe impl Send for Graph {}

/// The CUDA backend.
pub struct CudaBackend {
    cfg: ModelConfig,
    info: CudaDeviceInfo,
    _ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    gemm: Gemm,
    w: GpuWeights,
    rope_cos: CudaSlice<f32>,
    rope_sin: CudaSlice<f32>,
    rope_positions: usize,
    kv: Vec<(CudaSlice<u16>, CudaSlice<u16>)>,
    block_size: usize,
    bufs: Option<Buffers>,
    /// Graphs by (bucket, block-table width, attention splits, penalty capacity): the plan's
    /// layout is fixed by these.
    graphs: HashMap<(usize, usize, usize, usize), Graph>,
    plan: StepPlan,
    upload_seconds: f64,
    /// How bytes cross to and from the GPU.
    cc: CcMode,
    /// With `--cc sealed`: the sealed channel.
    link: Option<SealedLink>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.info.to_string())
            .field("weight_bytes", &self.w.bytes)
            .field("kv_layers", &self.kv.len())
            .field("graphs", &self.graphs.len())
            .field("cc", &self.cc)
            .finish_non_exhaustive()
    }
}

impl CudaBackend {
    /// Loads the model onto CUDA device `ordinal`.
    pub fn load(
        weights: &Weights,
        cfg: &ModelConfig,
        ordinal: usize,
        cc: CcMode,
        channel: &ChannelConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let (ctx, info) = probe::open(ordinal)?;
        // SAFETY: the backend enqueues everything on one stream in order, so cudarc's
        // per-buffer events are not needed; they must be off to capture CUDA graphs.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| cuda_err("creating a stream", e))?;
        let kernels = Kernels::load(&ctx, info.compute_capability)?;
        let gemm = Gemm::new(stream.clone())?;
        let mut link = match cc {
            CcMode::Sealed => Some(SealedLink::new(&stream, &kernels, channel)?),
            CcMode::Off | CcMode::Hardware => None,
        };
        let t0 = std::time::Instant::now();
        let w = match &mut link {
            None => GpuWeights::load(weights, cfg, &stream, progress)?,
            Some(l) => GpuWeights::load_sealed(weights, cfg, &stream, &kernels, l, progress)?,
        };
        let upload_seconds = t0.elapsed().as_secs_f64();
        let rope_positions = cfg.max_position_embeddings.clamp(1, MAX_ROPE_POSITIONS);
        let table = RopeTable::new(cfg.head_dim, rope_positions, &cfg.rope_inv_freq());
        let upload_f32 = |link: &mut Option<SealedLink>, data: &[f32]| -> Result<CudaSlice<f32>> {
            match link {
                None => stream
                    .clone_htod(data)
                    .map_err(|e| cuda_err("uploading the RoPE table", e)),
                Some(l) => {
                    let dst = stream
                        .alloc_zeros::<f32>(data.len().max(1))
                        .map_err(|e| cuda_err("uploading the RoPE table", e))?;
                    l.upload(&kernels, &stream, bytemuck::cast_slice(data), ptr(&dst, &stream))?;
                    Ok(dst)
                }
            }
        };
        let rope_cos = upload_f32(&mut link, table.cos())?;
        let rope_sin = upload_f32(&mut link, table.sin())?;
        if let Some(l) = &mut link {
            // Every weight is in place and authenticated before the engine serves.
            l.check(&kernels, &stream)?;
        }
        tracing::info!(
            device = %info,
            weight_mib = w.bytes >> 20,
            cc = %cc,
            seconds = upload_seconds,
            gb_per_s = w.bytes as f64 / upload_seconds.max(1e-9) / 1e9,
            "model loaded on the GPU"
        );
        Ok(Self {
            cfg: cfg.clone(),
            info,
            _ctx: ctx,
            stream,
            kernels,
            gemm,
            w,
            rope_cos,
            rope_sin,
            rope_positions,
            kv: Vec::new(),
            block_size: 16,
            bufs: None,
            graphs: HashMap::new(),
            plan: StepPlan::default(),
            upload_seconds,
            cc,
            link,
        })
    }

    /// Seconds the weights took to reach the device (read, convert, transfer).
    pub fn weight_upload_seconds(&self) -> f64 {
        self.upload_seconds
    }

    /// The device.
    pub fn device(&self) -> &CudaDeviceInfo {
        &self.info
    }

    /// Bytes of weights read per decoded token.
    pub fn weight_bytes_per_token(&self) -> usize {
        self.w.bytes
    }

    /// KV memory to allocate, like vLLM's `gpu_memory_utilization`: reserves the activation
    /// buffers of a step of `max_tokens` tokens (the profiling pass), then returns `fraction`
    /// of the device's total memory minus what is in use.
    pub fn kv_budget(&mut self, fraction: f64, max_tokens: usize, max_rows: usize) -> Result<usize> {
        let splits = self.rope_positions.div_ceil(plan::SPLIT_LEN);
        self.ensure_buffers(
            max_tokens,
            max_rows,
            max_rows * self.cfg.num_heads * splits,
            1 << 16,
        )?;
        let (free, total) = self
            .stream
            .context()
            .mem_get_info()
            .map_err(|e| cuda_err("reading free memory", e))?;
        let used = total.saturating_sub(free);
        let budget = (total as f64 * fraction.clamp(0.05, 0.99)) as usize;
        Ok(budget.saturating_sub(used))
    }

    fn ensure_buffers(&mut self, tokens: usize, rows: usize, parts: usize, words_in: usize) -> Result<()> {
        if let Some(b) = &self.bufs
            && b.tokens >= tokens
            && b.rows >= rows
            && b.parts >= parts
            && b.words_in >= words_in
        {
            return Ok(());
        }
        let old = self.bufs.take();
        let grow = |have: Option<usize>, need: usize| need.max(have.unwrap_or(0)).max(1).next_power_of_two();
        let tokens = grow(old.as_ref().map(|b| b.tokens), tokens);
        let rows = grow(old.as_ref().map(|b| b.rows), rows);
        let parts = grow(old.as_ref().map(|b| b.parts), parts);
        let words_in = grow(old.as_ref().map(|b| b.words_in), words_in);
        drop(old);
        // Graphs captured the old addresses.
        self.graphs.clear();
        let c = &self.cfg;
        let s = &self.stream;
        let hd = c.head_dim;
        let alloc_err = |e| cuda_err("allocating activations (out of GPU memory?)", e);
        let bufs = Buffers {
            tokens,
            rows,
            parts,
            words_in,
            residual: s.alloc_zeros(tokens * c.hidden_size).map_err(alloc_err)?,
            normed: s.alloc_zeros(tokens * c.hidden_size).map_err(alloc_err)?,
            qkv: s.alloc_zeros(tokens * c.qkv_width()).map_err(alloc_err)?,
            attn: s.alloc_zeros(tokens * c.num_heads * hd).map_err(alloc_err)?,
            delta: s.alloc_zeros(tokens * c.hidden_size).map_err(alloc_err)?,
            gate_up: s
                .alloc_zeros(tokens * 2 * c.intermediate_size)
                .map_err(alloc_err)?,
            act: s.alloc_zeros(tokens * c.intermediate_size).map_err(alloc_err)?,
            rows_normed: s.alloc_zeros(rows * c.hidden_size).map_err(alloc_err)?,
            logits: s.alloc_zeros(rows * c.vocab_size).map_err(alloc_err)?,
            part_acc: s.alloc_zeros(parts * hd).map_err(alloc_err)?,
            part_ml: s.alloc_zeros(parts * 2).map_err(alloc_err)?,
            input: s.alloc_zeros(words_in).map_err(alloc_err)?,
            // One word more: the sealed channel's failure word travels back with the output.
            output: s.alloc_zeros(rows * OUT_WORDS_PER_ROW + 1).map_err(alloc_err)?,
            // SAFETY: both are written before being read: `host_in` by the step's plan, then
            // copied; `host_out` by the device-to-host copy, then read.
            host_in: unsafe { s.context().alloc_pinned::<i32>(words_in) }
                .map_err(|e| cuda_err("allocating pinned memory", e))?,
            // Not write-combined: the host reads this one.
            // SAFETY: as above.
            host_out: unsafe {
                s.context()
                    .alloc_pinned_with_flags::<i32>(rows * OUT_WORDS_PER_ROW + 1, 0)
            }
            .map_err(|e| cuda_err("allocating pinned memory", e))?,
        };
        self.bufs = Some(bufs);
        Ok(())
    }

    /// Copies the plan's words to the device (the step's one host-to-device copy).
    fn upload_plan(&mut self) -> Result<()> {
        let plan = &self.plan;
        let b = self.bufs.as_mut().ok_or_else(|| cuda_err("step", "no buffers"))?;
        let n = plan.words.len();
        let host = b
            .host_in
            .as_mut_slice()
            .map_err(|e| cuda_err("pinned input", e))?;
        let host = host
            .get_mut(..n)
            .ok_or_else(|| cuda_err("pinned input", "too small"))?;
        if let Some(link) = &mut self.link {
            let dst = ptr(&b.input, &self.stream);
            return link.upload(
                &self.kernels,
                &self.stream,
                bytemuck::cast_slice(&plan.words),
                dst,
            );
        }
        host.copy_from_slice(&plan.words);
        let mut dst = b.input.slice_mut(..n);
        self.stream
            .memcpy_htod(&*host, &mut dst)
            .map_err(|e| cuda_err("copying the step's inputs", e))
    }

    /// Enqueues the forward pass of the planned step up to the logits of its rows (and, when
    /// `sample`, the sampling kernel). Everything is on the stream; nothing is synchronised.
    fn enqueue(&mut self, sample: bool) -> Result<()> {
        let c = self.cfg.clone();
        let st = self.stream.clone();
        let p = &self.plan;
        let b = self.bufs.as_ref().ok_or_else(|| cuda_err("step", "no buffers"))?;
        let (h, hd, nh, nkv, inter) = (
            c.hidden_size,
            c.head_dim,
            c.num_heads,
            c.num_kv_heads,
            c.intermediate_size,
        );
        let qkv_w = c.qkv_width();
        let t = p.n_tokens;
        let i32v = |v: usize| Arg::I32(v as i32);
        let input = ptr(&b.input, &st);
        let word = |off: usize| Arg::Ptr(input + 4 * off as u64);
        let (resid, normed, qkv, attn, delta, gate_up, act) = (
            ptr(&b.residual, &st),
            ptr(&b.normed, &st),
            ptr(&b.qkv, &st),
            ptr(&b.attn, &st),
            ptr(&b.delta, &st),
            ptr(&b.gate_up, &st),
            ptr(&b.act, &st),
        );
        let (part_acc, part_ml) = (ptr(&b.part_acc, &st), ptr(&b.part_ml, &st));
        let (rows_normed, logits, output) =
            (ptr(&b.rows_normed, &st), ptr(&b.logits, &st), ptr(&b.output, &st));
        let k = &self.kernels;
        let eps = Arg::F32(c.rms_norm_eps);
        let scale = Arg::F32(1.0 / (hd as f32).sqrt());
        let gt = |n: usize| (n as u32, 1, 1);
        // residual += delta (unless 0, i.e. NULL); normed = RMSNorm(residual) · weight.
        let add_norm = |delta: u64, weight: u64| {
            k.launch(
                &st,
                "veil_add_rmsnorm",
                gt(t),
                256,
                0,
                &[
                    Arg::Ptr(resid),
                    Arg::Ptr(delta),
                    Arg::Ptr(weight),
                    Arg::Ptr(normed),
                    i32v(t),
                    i32v(h),
                    eps,
                ],
            )
        };
        k.launch(
            &st,
            "veil_embed",
            gt(t),
            256,
            0,
            &[
                Arg::Ptr(ptr(&self.w.embedding, &st)),
                word(p.off.tokens),
                Arg::Ptr(resid),
                i32v(t),
                i32v(h),
            ],
        )?;
        for (l, layer) in self.w.layers.iter().enumerate() {
            let prev = if l == 0 { 0 } else { delta };
            add_norm(prev, ptr(&layer.attn_norm, &st))?;
            self.gemm.matmul(
                qkv,
                normed,
                ptr(&layer.qkv, &st),
                Shape {
                    m: qkv_w,
                    n: t,
                    k: h,
                    out: OutType::Bf16,
                },
            )?;
            let (kc, vc) = &self.kv[l];
            let (kc, vc) = (ptr(kc, &st), ptr(vc, &st));
            let bias = layer.qkv_bias.as_ref().map_or(0, |b| ptr(b, &st));
            k.launch(
                &st,
                "veil_rope_kv",
                gt(t),
                128,
                0,
                &[
                    Arg::Ptr(qkv),
                    Arg::Ptr(bias),
                    word(p.off.positions),
                    Arg::Ptr(ptr(&self.rope_cos, &st)),
                    Arg::Ptr(ptr(&self.rope_sin, &st)),
                    Arg::Ptr(kc),
                    Arg::Ptr(vc),
                    word(p.off.slots),
                    i32v(t),
                    i32v(nh),
                    i32v(nkv),
                    i32v(hd),
                    i32v(self.block_size),
                ],
            )?;
            if p.n_decode > 0 {
                k.launch(
                    &st,
                    "veil_attention_decode",
                    (p.n_decode as u32, nh as u32, p.n_splits as u32),
                    128,
                    0,
                    &[
                        Arg::Ptr(part_acc),
                        Arg::Ptr(part_ml),
                        Arg::Ptr(qkv),
                        Arg::Ptr(kc),
                        Arg::Ptr(vc),
                        word(p.off.block_tables),
                        word(p.off.query_seq),
                        word(p.off.query_pos),
                        i32v(p.n_decode),
                        i32v(nh),
                        i32v(nkv),
                        i32v(hd),
                        i32v(self.block_size),
                        i32v(p.max_blocks),
                        i32v(qkv_w),
                        i32v(p.n_splits),
                        i32v(plan::SPLIT_LEN),
                        scale,
                    ],
                )?;
                k.launch(
                    &st,
                    "veil_attention_reduce",
                    (p.n_decode as u32, nh as u32, 1),
                    128,
                    0,
                    &[
                        Arg::Ptr(attn),
                        Arg::Ptr(part_acc),
                        Arg::Ptr(part_ml),
                        i32v(p.n_decode),
                        i32v(nh),
                        i32v(hd),
                        i32v(p.n_splits),
                    ],
                )?;
            }
            if p.n_tiles > 0 {
                k.launch(
                    &st,
                    "veil_attention_prefill",
                    (p.n_tiles as u32, nh as u32, 1),
                    128,
                    prefill_shared_bytes(hd),
                    &[
                        Arg::Ptr(attn),
                        Arg::Ptr(qkv),
                        Arg::Ptr(kc),
                        Arg::Ptr(vc),
                        word(p.off.block_tables),
                        word(p.off.tile_seq),
                        word(p.off.tile_first_query),
                        word(p.off.tile_n_queries),
                        word(p.off.tile_first_pos),
                        i32v(nh),
                        i32v(nkv),
                        i32v(hd),
                        i32v(self.block_size),
                        i32v(p.max_blocks),
                        i32v(qkv_w),
                        scale,
                    ],
                )?;
            }
            self.gemm.matmul(
                delta,
                attn,
                ptr(&layer.o_proj, &st),
                Shape {
                    m: h,
                    n: t,
                    k: nh * hd,
                    out: OutType::Bf16,
                },
            )?;
            add_norm(delta, ptr(&layer.mlp_norm, &st))?;
            self.gemm.matmul(
                gate_up,
                normed,
                ptr(&layer.gate_up, &st),
                Shape {
                    m: 2 * inter,
                    n: t,
                    k: h,
                    out: OutType::Bf16,
                },
            )?;
            k.launch(
                &st,
                "veil_silu_mul",
                gt(t),
                256,
                0,
                &[Arg::Ptr(gate_up), Arg::Ptr(act), i32v(t), i32v(inter)],
            )?;
            self.gemm.matmul(
                delta,
                act,
                ptr(&layer.down, &st),
                Shape {
                    m: h,
                    n: t,
                    k: inter,
                    out: OutType::Bf16,
                },
            )?;
        }
        // The last layer's MLP output joins the residual; then the final norm of the sampled
        // rows only, the LM head and (optionally) sampling.
        add_norm(delta, ptr(&self.w.final_norm, &st))?;
        let r = p.n_rows;
        if r == 0 {
            return Ok(());
        }
        k.launch(
            &st,
            "veil_rmsnorm_rows",
            gt(r),
            256,
            0,
            &[
                Arg::Ptr(resid),
                word(p.off.logits_rows),
                Arg::Ptr(ptr(&self.w.final_norm, &st)),
                Arg::Ptr(rows_normed),
                i32v(r),
                i32v(h),
                eps,
            ],
        )?;
        let head = ptr(self.w.lm_head.as_ref().unwrap_or(&self.w.embedding), &st);
        self.gemm.matmul(
            logits,
            rows_normed,
            head,
            Shape {
                m: c.vocab_size,
                n: r,
                k: h,
                out: OutType::F32,
            },
        )?;
        if sample {
            let out = |w: usize| Arg::Ptr(output + 4 * w as u64);
            k.launch(
                &st,
                "veil_sample",
                gt(r),
                1024,
                0,
                &[
                    Arg::Ptr(logits),
                    word(p.off.params),
                    word(p.off.penalty_ids),
                    word(p.off.penalty_counts),
                    out(0),
                    out(r),
                    out(2 * r),
                    out(2 * r + r * MAX_TOP),
                    i32v(r),
                    i32v(c.vocab_size),
                    i32v(MAX_TOP),
                ],
            )?;
        }
        Ok(())
    }

    /// Plans, uploads and enqueues a step, replaying a CUDA graph for decode-only steps.
    fn run(&mut self, batch: &[SeqChunk<'_>], rows: &[SampleRow<'_>], sample: bool) -> Result<()> {
        if self.kv.is_empty() {
            return Err(cuda_err("forward", "the KV cache is not initialised"));
        }
        if let Some(c) = batch
            .iter()
            .find(|c| c.start_pos + c.tokens.len() > self.rope_positions)
        {
            return Err(cuda_err(
                "forward",
                format!(
                    "position {} is beyond the {} positions the RoPE table covers",
                    c.start_pos + c.tokens.len(),
                    self.rope_positions
                ),
            ));
        }
        let decode_only = !batch.is_empty() && batch.iter().all(|c| c.tokens.len() == 1 && c.want_logits);
        let bucket = if decode_only && sample {
            GRAPH_BUCKETS.iter().copied().find(|&b| b >= batch.len())
        } else {
            None
        };
        self.plan = StepPlan::build(batch, rows, self.block_size, bucket)?;
        let p = &self.plan;
        let parts = p.n_decode * self.cfg.num_heads * p.n_splits;
        self.ensure_buffers(p.n_tokens, p.n_rows, parts, p.words.len())?;
        self.upload_plan()?;
        let Some(bucket) = bucket else {
            return self.enqueue(sample);
        };
        let key = (
            bucket,
            self.plan.max_blocks,
            self.plan.n_splits,
            self.plan.penalty_capacity,
        );
        if !self.graphs.contains_key(&key) {
            self.stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(|e| cuda_err("capturing a CUDA graph", e))?;
            let captured = self.enqueue(sample);
            let graph = self
                .stream
                .end_capture(sys::CUgraphInstantiate_flags(0))
                .map_err(|e| cuda_err("capturing a CUDA graph", e))?;
            captured?;
            let graph = graph.ok_or_else(|| cuda_err("capturing a CUDA graph", "empty graph"))?;
            graph
                .upload()
                .map_err(|e| cuda_err("uploading a CUDA graph", e))?;
            self.graphs.insert(key, Graph(graph));
        }
        let graph = self
            .graphs
            .get(&key)
            .ok_or_else(|| cuda_err("CUDA graph", "missing"))?;
        graph
            .0
            .launch()
            .map_err(|e| cuda_err("launching a CUDA graph", e))
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn dtype(&self) -> DType {
        DType::Bf16
    }

    fn kv_block_bytes(&self, block_size: usize) -> usize {
        // K and V, bf16, every layer.
        2 * 2 * self.cfg.num_layers * self.cfg.num_kv_heads * block_size * self.cfg.head_dim
    }

    fn init_kv_cache(&mut self, num_blocks: usize, block_size: usize) -> Result<()> {
        self.kv.clear();
        self.graphs.clear();
        let n = num_blocks * self.cfg.num_kv_heads * block_size * self.cfg.head_dim;
        for _ in 0..self.cfg.num_layers {
            let k = self
                .stream
                .alloc_zeros::<u16>(n.max(1))
                .map_err(|e| cuda_err("allocating the KV cache", e))?;
            let v = self
                .stream
                .alloc_zeros::<u16>(n.max(1))
                .map_err(|e| cuda_err("allocating the KV cache", e))?;
            self.kv.push((k, v));
        }
        self.block_size = block_size;
        Ok(())
    }

    fn forward(&mut self, batch: &[SeqChunk<'_>], logits: &mut Vec<f32>) -> Result<()> {
        self.run(batch, &[], false)?;
        let rows = self.plan.n_rows;
        let v = self.cfg.vocab_size;
        logits.resize(rows * v, 0.0);
        if rows == 0 {
            return self.stream.synchronize().map_err(|e| cuda_err("forward", e));
        }
        let b = self.bufs.as_ref().ok_or_else(|| cuda_err("step", "no buffers"))?;
        if let Some(link) = &mut self.link {
            let src = ptr(&b.logits, &self.stream);
            link.download(
                &self.kernels,
                &self.stream,
                src,
                bytemuck::cast_slice_mut(logits.as_mut_slice()),
            )?;
            return link.check(&self.kernels, &self.stream);
        }
        self.stream
            .memcpy_dtoh(&b.logits.slice(..rows * v), logits.as_mut_slice())
            .map_err(|e| cuda_err("copying logits back", e))?;
        self.stream.synchronize().map_err(|e| cuda_err("forward", e))
    }

    fn samples_on_device(&self) -> bool {
        true
    }

    fn kv_memory_budget(
        &mut self,
        fraction: f64,
        max_tokens: usize,
        max_rows: usize,
    ) -> Result<Option<usize>> {
        self.kv_budget(fraction, max_tokens, max_rows).map(Some)
    }

    fn forward_sample(
        &mut self,
        batch: &[SeqChunk<'_>],
        rows: &[SampleRow<'_>],
        out: &mut Vec<DeviceSample>,
    ) -> Result<()> {
        self.run(batch, rows, true)?;
        let r = self.plan.n_rows;
        let b = self.bufs.as_mut().ok_or_else(|| cuda_err("step", "no buffers"))?;
        let n = r * OUT_WORDS_PER_ROW;
        if let Some(link) = &mut self.link {
            // The output words and the failure word, in one sealed message.
            link.append_status(&self.stream, &mut b.output, n)?;
            let host = b
                .host_out
                .as_mut_slice()
                .map_err(|e| cuda_err("pinned output", e))?;
            let host = host
                .get_mut(..n + 1)
                .ok_or_else(|| cuda_err("pinned output", "too small"))?;
            let src = ptr(&b.output, &self.stream);
            link.download(&self.kernels, &self.stream, src, bytemuck::cast_slice_mut(host))?;
            link::check_status(host[n])?;
        } else {
            let host = b
                .host_out
                .as_mut_slice()
                .map_err(|e| cuda_err("pinned output", e))?;
            let host = host
                .get_mut(..n)
                .ok_or_else(|| cuda_err("pinned output", "too small"))?;
            // The step's one device-to-host copy: ids, log-probabilities, top candidates.
            self.stream
                .memcpy_dtoh(&b.output.slice(..n), host)
                .map_err(|e| cuda_err("copying picked tokens back", e))?;
            self.stream.synchronize().map_err(|e| cuda_err("forward", e))?;
        }
        let host = b.host_out.as_slice().map_err(|e| cuda_err("pinned output", e))?;
        let f = |w: i32| f32::from_bits(w as u32);
        out.clear();
        for (i, row) in rows.iter().enumerate() {
            let id = u32::try_from(host[i]).map_err(|_| cuda_err("sampling", "negative token id"))?;
            let (logprob, top) = match row.logprobs {
                None => (None, Vec::new()),
                Some(n) => {
                    let n = n.min(MAX_TOP);
                    let ids = &host[2 * r + i * MAX_TOP..2 * r + i * MAX_TOP + n];
                    let lps = &host[2 * r + r * MAX_TOP + i * MAX_TOP..2 * r + r * MAX_TOP + i * MAX_TOP + n];
                    let top = ids.iter().zip(lps).map(|(&id, &lp)| (id as u32, f(lp))).collect();
                    (Some(f(host[r + i])), top)
                }
            };
            out.push(DeviceSample {
                id,
                logprob,
                top_logprobs: top,
            });
        }
        Ok(())
    }
}
