//! # veil-kernels: CPU compute kernels for Veil
//!
//! Everything a transformer forward pass needs on the CPU, tuned for small models
//! (SmolLM2-135M: hidden 576, 9/3 heads of 64, MLP 1536) on a few cores with AVX-512.
//!
//! ## Design overview
//!
//! * **Threads** ([`pool`]): a persistent [`ThreadPool`] in which the calling thread is worker 0,
//!   so a 2-vCPU machine runs exactly 2 compute threads. Jobs are published through an epoch
//!   counter; idle workers spin ~100 µs (a hand-off costs about 0.6 µs, and a decode step issues
//!   ~150 jobs) and then park, so an idle pool costs no CPU. Job indices are claimed rather than
//!   pinned, so a descheduled helper's share is picked up by the caller. Workers set FTZ/DAZ.
//! * **Memory** ([`aligned`]): weights live in 2 MiB-aligned anonymous mappings advised for
//!   transparent huge pages ([`AlignedBuf`]); mid-sized matrices share huge-page chunks. Fewer
//!   TLB misses give +10–20% on the weight-streaming decode path.
//! * **Matmul** ([`mod@matmul`]): weights are repacked once at load into 16-row panels stored
//!   k-major ([`PackedMatrix`]), f32 or bf16. Activations stay f32; bf16 weights are widened
//!   in registers and multiplied with FMA. Decode (`m == 1`) streams several panels with
//!   independent accumulators and no horizontal reductions (memory-bound); batches use a
//!   32-row × 8-token register tile (compute-bound). Kernels exist for AVX-512, AVX2+FMA and
//!   portable Rust, picked at runtime ([`matmul::kernel_name`], `VEIL_KERNEL` overrides).
//! * **Ops** ([`ops`]): RMSNorm, RoPE (rotate-half), SiLU·up, softmax and residual add on f32
//!   rows, auto-vectorised and compiled per ISA.
//! * **Attention** ([`attention`]): causal paged attention over an f32 KV cache laid out
//!   `[block][kv_head][slot][head_dim]`, one streaming-softmax pass per query, GQA heads
//!   sharing each K/V row, work balanced across threads by context length, and split-K over
//!   the context when a batch has too few rows to occupy every thread.
//!
//! No kernel allocates per call. Every public function validates its shapes and panics on a
//! mismatch rather than reading out of bounds.

pub mod aligned;
pub mod attention;
pub mod cuda;
pub mod error;
mod isa;
mod math;
pub mod matmul;
pub mod ops;
pub mod pool;

pub use aligned::AlignedBuf;
pub use attention::{AttnSeq, KvLayerView, paged_attention};
pub use error::KernelError;
pub use matmul::{PackedMatrix, WeightDtype, kernel_name, matmul, matmul_reference};
pub use ops::{RopeTable, add_inplace, rms_norm, silu_mul, softmax_inplace};
pub use pool::{ThreadPool, set_flush_denormals, split_range};
