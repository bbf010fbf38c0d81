//! A loaded model: configuration, tokenizer, digest and a backend holding the weights.

use std::path::{Path, PathBuf};

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::CudaBackend;
use crate::backend::{Backend, DType, Device};
use crate::cc::{CcMode, ChannelConfig};
use crate::config::ModelConfig;
use crate::digest::{ModelDigest, model_digest};
use crate::error::{Error, Result};
use crate::store::ModelMetadata;
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
    /// Refuse the model unless its files hash to this digest (the operator's pin), besides
    /// the digest recorded in its `veil-model.json`, which is always checked.
    pub expected_digest: Option<ModelDigest>,
    /// How bytes cross between host and device (docs/cc-transfer.md). On the CPU backend,
    /// which has no device link, `Sealed` passes the weights through the channel to the
    /// host-side device end (loopback: it measures the cost of the cryptography only) and
    /// `Hardware` is refused.
    pub cc: CcMode,
    /// Settings of the sealed channel (with `cc: Sealed`).
    pub channel: ChannelConfig,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::Bf16,
            threads: veil_kernels::pool::ThreadPool::default_threads(),
            device: Device::Cpu,
            expected_digest: None,
            cc: CcMode::Off,
            channel: ChannelConfig::default(),
        }
    }
}

/// How loading went: for logs, `ModelInfo` and CC-on/off comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoadReport {
    /// The transfer mode the model was loaded (and is served) with.
    pub cc: CcMode,
    /// Seconds from the start of loading (digest check included) to a ready backend.
    pub seconds: f64,
    /// Weight bytes moved to the backend (bf16 or f32, as stored there).
    pub weight_bytes: u64,
    /// The weights' transfer rate in GB/s (10^9 bytes/s) over the transfer itself.
    pub transfer_gb_per_s: f64,
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
    /// How loading went.
    pub load: LoadReport,
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
    ///
    /// First the files' digest is computed and checked against the one recorded in the
    /// directory's `veil-model.json` (written by `veil model pull` and `import`), if any, and
    /// against [`LoadOptions::expected_digest`]; a mismatch is [`Error::DigestMismatch`] and
    /// nothing else is read.
    pub fn load(dir: &Path, opts: &LoadOptions, progress: &mut dyn FnMut(usize, usize)) -> Result<Self> {
        let start = std::time::Instant::now();
        opts.channel.validate()?;
        let digest = verify_digest(dir, opts.expected_digest)?;
        let config = ModelConfig::from_dir(dir)?;
        let tokenizer = std::sync::Arc::new(Tokenizer::from_dir(dir)?);
        let mut weights = Weights::open(dir)?;
        let (backend, weight_bytes_per_token, transfer): (Box<dyn Backend>, usize, _) = match opts.device {
            Device::Cpu => {
                match opts.cc {
                    CcMode::Off => {}
                    CcMode::Hardware => {
                        return Err(Error::Backend {
                            backend: "cpu",
                            reason: "--cc hardware needs a GPU in CC mode; the CPU backend has no \
                                     host-device transfers (use --cc off, or sealed for the \
                                     loopback channel)"
                                .into(),
                        });
                    }
                    CcMode::Sealed => weights.seal_reads(crate::cc::loopback::Loopback::new(&opts.channel)?),
                }
                let t0 = std::time::Instant::now();
                let b = CpuBackend::load(&weights, &config, opts.dtype, opts.threads, progress)?;
                let bytes = b.weight_bytes_per_token();
                let secs = t0.elapsed().as_secs_f64();
                (Box::new(b), bytes, (bytes as u64, secs))
            }
            Device::Cuda(ordinal) => {
                if opts.dtype != DType::Bf16 {
                    return Err(crate::error::Error::Backend {
                        backend: "cuda",
                        reason: "the CUDA backend keeps weights in bf16 (use --dtype bf16)".into(),
                    });
                }
                let b = CudaBackend::load(&weights, &config, ordinal, opts.cc, &opts.channel, progress)?;
                let bytes = b.weight_bytes_per_token();
                let secs = b.weight_upload_seconds();
                (Box::new(b), bytes, (bytes as u64, secs))
            }
        };
        let (weight_bytes, secs) = transfer;
        let load = LoadReport {
            cc: opts.cc,
            seconds: start.elapsed().as_secs_f64(),
            weight_bytes,
            transfer_gb_per_s: if secs > 0.0 {
                weight_bytes as f64 / secs / 1e9
            } else {
                0.0
            },
        };
        tracing::info!(
            cc = %opts.cc,
            seconds = load.seconds,
            weight_mib = weight_bytes >> 20,
            gb_per_s = load.transfer_gb_per_s,
            "model loaded"
        );
        Ok(Self {
            dir: dir.to_owned(),
            config,
            tokenizer,
            digest,
            backend,
            weight_bytes_per_token,
            load,
        })
    }
}

/// Computes `dir`'s digest and checks it against the recorded and the pinned digests.
pub fn verify_digest(dir: &Path, pinned: Option<ModelDigest>) -> Result<ModelDigest> {
    let recorded = ModelMetadata::recorded_digest(dir)?;
    let actual = model_digest(dir)?;
    let expected = [
        (
            recorded,
            "the digest recorded in veil-model.json",
            "a model file was modified or corrupted on disk (pull or import the model again)",
        ),
        (
            pinned,
            "the pinned digest",
            "this is not the model the operator pinned (check --model and --model-digest)",
        ),
    ];
    for (want, from, hint) in expected {
        if let Some(want) = want
            && want != actual
        {
            return Err(Error::DigestMismatch {
                dir: dir.to_owned(),
                expected_from: from,
                hint,
                expected: want.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    Ok(actual)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_checked_against_record_and_pin() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = tmp.path();
        std::fs::write(d.join("model.safetensors"), b"weights").expect("w");
        std::fs::write(d.join("config.json"), b"{}").expect("w");
        let good = model_digest(d).expect("digest");
        // No record, no pin: any content loads.
        assert_eq!(verify_digest(d, None).ok(), Some(good));
        // A pin that matches; one that does not names both digests.
        assert_eq!(verify_digest(d, Some(good)).ok(), Some(good));
        let other = ModelDigest::from_bytes([7; 32]);
        let e = verify_digest(d, Some(other)).expect_err("pin mismatch");
        let msg = e.to_string();
        assert!(
            msg.contains(&good.to_string()) && msg.contains(&other.to_string()),
            "{msg}"
        );
        assert!(msg.contains("pinned"), "{msg}");
        // A recorded digest: a corrupted file is refused, naming both digests.
        crate::store::ModelMetadata {
            name: "m".into(),
            source: None,
            imported_from: None,
            dtype: "f32".into(),
            digest: good.to_string(),
        }
        .write(d)
        .expect("record");
        assert_eq!(verify_digest(d, None).ok(), Some(good));
        std::fs::write(d.join("model.safetensors"), b"weightz").expect("w");
        let bad = model_digest(d).expect("digest");
        let e = verify_digest(d, None).expect_err("corrupted");
        assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&good.to_string()) && msg.contains(&bad.to_string()),
            "{msg}"
        );
        assert!(msg.contains("veil-model.json"), "{msg}");
        // An unreadable record is refused too.
        std::fs::write(d.join("veil-model.json"), b"{").expect("w");
        assert!(verify_digest(d, None).is_err());
    }
}
