//! A loaded model: configuration, tokenizer, digest and a backend holding the weights.

use std::path::{Path, PathBuf};

use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, DType};
use crate::config::ModelConfig;
use crate::digest::{ModelDigest, model_digest};
use crate::error::Result;
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Weight precision in memory.
    pub dtype: DType,
    /// Compute threads (CPU backend).
    pub threads: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::Bf16,
            threads: veil_kernels::pool::ThreadPool::default_threads(),
        }
    }
}

/// A model ready to run.
pub struct LoadedModel {
    /// The model directory.
    pub dir: PathBuf,
    /// Its configuration.
    pub config: ModelConfig,
    /// Its tokenizer and chat template.
    pub tokenizer: std::sync::Arc<Tokenizer>,
    /// SHA-256 over its weights, tokenizer and configuration.
    pub digest: ModelDigest,
    /// The runtime holding the weights.
    pub backend: Box<dyn Backend>,
    /// Bytes of weights read per decoded token.
    pub weight_bytes_per_token: usize,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("dir", &self.dir)
            .field("digest", &self.digest)
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl LoadedModel {
    /// Loads a Hugging Face model directory onto the CPU backend. `progress` sees
    /// (layers loaded, layers total).
    pub fn load(dir: &Path, opts: &LoadOptions, progress: &mut dyn FnMut(usize, usize)) -> Result<Self> {
        let config = ModelConfig::from_dir(dir)?;
        let tokenizer = std::sync::Arc::new(Tokenizer::from_dir(dir)?);
        let digest = model_digest(dir)?;
        let weights = Weights::open(dir)?;
        let backend = CpuBackend::load(&weights, &config, opts.dtype, opts.threads, progress)?;
        let weight_bytes_per_token = backend.weight_bytes_per_token();
        Ok(Self {
            dir: dir.to_owned(),
            config,
            tokenizer,
            digest,
            backend: Box::new(backend),
            weight_bytes_per_token,
        })
    }
}
