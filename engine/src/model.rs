//! A loaded model: configuration, tokenizer, digest and a backend holding the weights.

use std::path::{Path, PathBuf};

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::CudaBackend;
use crate::backend::{Backend, DType, Device};
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
    /// Where the model runs.
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::Bf16,
            threads: veil_kernels::pool::ThreadPool::default_threads(),
            device: Device::Cpu,
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
    /// Loads a Hugging Face model directory onto the chosen device's backend. `progress` sees
    /// (layers loaded, layers total).
    pub fn load(dir: &Path, opts: &LoadOptions, progress: &mut dyn FnMut(usize, usize)) -> Result<Self> {
        let config = ModelConfig::from_dir(dir)?;
        let tokenizer = std::sync::Arc::new(Tokenizer::from_dir(dir)?);
        let digest = model_digest(dir)?;
        let weights = Weights::open(dir)?;
        let (backend, weight_bytes_per_token): (Box<dyn Backend>, usize) = match opts.device {
            Device::Cpu => {
                let b = CpuBackend::load(&weights, &config, opts.dtype, opts.threads, progress)?;
                let bytes = b.weight_bytes_per_token();
                (Box::new(b), bytes)
            }
            Device::Cuda(ordinal) => {
                if opts.dtype != DType::Bf16 {
                    return Err(crate::error::Error::Backend {
                        backend: "cuda",
                        reason: "the CUDA backend keeps weights in bf16 (use --dtype bf16)".into(),
                    });
                }
                let b = CudaBackend::load(&weights, &config, ordinal, progress)?;
                let bytes = b.weight_bytes_per_token();
                (Box::new(b), bytes)
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            config,
            tokenizer,
            digest,
            backend,
            weight_bytes_per_token,
        })
    }
}
