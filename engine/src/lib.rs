//! # veil-engine: the inference core of Veil
//!
//! Design overview:
//! - [`config`], [`weights`], [`tokenizer`]: read a Hugging Face model directory (config,
//!   memory-mapped safetensors, tokenizer and chat template). [`gguf`] imports GGUF files into
//!   such a directory; [`store`] keeps a cache of models and pulls the default one;
//!   [`digest`] names a model by the SHA-256 of its files; [`synth`] writes models of real
//!   shapes with random weights, for benchmarks.
//! - [`backend`]: the [`backend::Backend`] trait runs a forward pass for a batch of sequence
//!   chunks against a paged KV cache; [`backend::cpu`] implements it on
//!   [`veil_kernels`]. [`kv_cache`] keeps the block tables, the same for every backend.
//! - [`sampling`] picks tokens; [`output`] turns them into text with stop conditions;
//!   [`generate`] drives one request end to end.
//! - [`model`] ties these together into a [`model::LoadedModel`].
//! - [`cc`]: the host side of the `sealed` CC transfer channel (AES-256-GCM frames between host
//!   and GPU, `docs/cc-transfer.md`).

pub mod backend;
pub mod cc;
pub mod config;
pub mod digest;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod kv_cache;
pub mod model;
pub mod output;
pub mod runtime;
pub mod sampling;
pub mod store;
pub mod synth;
pub mod tokenizer;
pub mod weights;

pub use error::{Error, Result};
