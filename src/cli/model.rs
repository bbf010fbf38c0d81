//! `veil model pull | import | synth | list`, and resolving `--model` arguments.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use veil_engine::gguf::{ImportDtype, import_gguf};
use veil_engine::store::{DEFAULT_MODEL, ModelStore, PullEvent};
use veil_engine::synth::{SynthOptions, SynthShape, synth_model};

/// The `--model` option shared by commands that run a model.
#[derive(Debug, Args)]
pub(crate) struct ModelArg {
    /// A cached model name, or a Hugging Face model directory.
    #[arg(long, short, default_value = DEFAULT_MODEL, env = "VEIL_MODEL")]
    pub(crate) model: String,
    /// Where the model runs: `auto` (the first CUDA GPU when one is usable, else the CPU),
    /// `cpu`, or `cuda:N`. The CUDA backend keeps weights in bf16.
    #[arg(long, default_value = "auto", env = "VEIL_DEVICE")]
    pub(crate) device: veil_engine::backend::DeviceArg,
    /// How bytes cross between host and GPU (docs/cc-transfer.md): `off` (plain copies),
    /// `hardware` (the GPU's CC mode encrypts; checked through NVML at start-up), `sealed`
    /// (Veil's AES-256-GCM channel, on any GPU: integrity, and the cost of CC, but not
    /// confidentiality without hardware CC). `auto`: `hardware` when the GPU is in CC mode,
    /// else `off`. On the CPU backend `sealed` runs the channel in loopback.
    #[arg(long, default_value = "auto", env = "VEIL_CC")]
    pub(crate) cc: super::cc::CcArg,
    /// Sealed channel: bytes per authenticated chunk, in KiB (a GPU block opens one chunk).
    #[arg(long, default_value_t = 64, value_name = "KIB",
          value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub(crate) cc_chunk_kib: u32,
    /// Sealed channel: messages per key epoch before both directions rotate their keys.
    #[arg(long, default_value_t = 1 << 20, value_name = "MESSAGES",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) cc_rotate_after: u64,
}

/// Model management commands.
#[derive(Debug, Subcommand)]
pub(crate) enum ModelCommand {
    /// Fetch a known model into the cache ($VEIL_HOME, default ~/.cache/veil).
    Pull {
        /// Model name.
        #[arg(default_value = DEFAULT_MODEL)]
        name: String,
    },
    /// Convert a GGUF file into a Hugging Face model directory.
    Import {
        /// The GGUF file.
        gguf: PathBuf,
        /// The directory to create.
        dir: PathBuf,
        /// Precision of the written safetensors.
        #[arg(long, default_value = "bf16", value_parser = ["bf16", "f32"])]
        dtype: String,
    },
    /// Write a model directory with a real model's shapes and deterministic random weights
    /// (for benchmarks where real weights cannot be brought; its output is meaningless).
    Synth {
        /// The model shape.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(SynthShape::NAMES))]
        shape: String,
        /// Seed of the weights; the same seed writes byte-identical files.
        #[arg(long)]
        seed: u64,
        /// Precision of the written safetensors.
        #[arg(long, default_value = "bf16", value_parser = ["bf16", "f32"])]
        dtype: String,
        /// Replace DIR if it is a non-empty model directory.
        #[arg(long)]
        force: bool,
        /// The directory to create.
        dir: PathBuf,
    },
    /// List cached models with their digests.
    List,
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

/// Pulls a model with progress bars on stderr.
pub(crate) fn pull(store: &ModelStore, name: &str) -> anyhow::Result<PathBuf> {
    let mut current: Option<ProgressBar> = None;
    let path = store.pull(name, &mut |ev| match ev {
        PullEvent::AlreadyPresent { path } => eprintln!("{name} is already in the cache: {}", path.display()),
        PullEvent::StageStarted { stage, total } => {
            let pb = match total {
                Some(t) => bar(t, stage.label()),
                None => {
                    let pb = ProgressBar::new_spinner();
                    pb.set_message(stage.label());
                    pb.enable_steady_tick(std::time::Duration::from_millis(120));
                    pb
                }
            };
            if let Some(old) = current.replace(pb) {
                old.finish_and_clear();
            }
        }
        PullEvent::Progress { done, .. } => {
            if let Some(pb) = &current {
                pb.set_position(done);
            }
        }
        PullEvent::StageFinished { stage } => {
            if let Some(pb) = current.take() {
                pb.finish_and_clear();
            }
            eprintln!("{}: done", stage.label());
        }
        PullEvent::Done { digest, .. } => eprintln!("{name}: digest {digest}"),
    })?;
    if let Some(pb) = current.take() {
        pb.finish_and_clear();
    }
    Ok(path)
}

/// Turns `--model` into a directory: an existing directory as is, else a cached model, pulling
/// a known model on first use.
pub(crate) fn resolve_model(arg: &str) -> anyhow::Result<PathBuf> {
    let p = Path::new(arg);
    if p.is_dir() {
        return Ok(p.to_owned());
    }
    let store = ModelStore::open_default()?;
    match store.resolve(arg) {
        Ok(dir) => Ok(dir),
        Err(_) if store.is_known(arg) => {
            eprintln!("model {arg} is not in the cache yet; pulling it");
            pull(&store, arg)
        }
        Err(e) => Err(e.into()),
    }
}

/// Resolves `--model` and loads it, reporting what was loaded on stderr. The files' digest is
/// checked against the one recorded at pull or import and, when given, against `pin`.
pub(crate) fn load_model(
    m: &ModelArg,
    dtype: veil_engine::backend::DType,
    threads: Option<usize>,
    pin: Option<veil_engine::digest::ModelDigest>,
) -> anyhow::Result<veil_engine::model::LoadedModel> {
    use veil_engine::model::{LoadOptions, LoadedModel};
    let dir = resolve_model(&m.model)?;
    // f32 weights exist only on the CPU backend.
    let device = match (m.device, dtype) {
        (veil_engine::backend::DeviceArg::Auto, veil_engine::backend::DType::F32) => {
            veil_engine::backend::Device::Cpu
        }
        (d, _) => d.resolve()?,
    };
    let mut opts = LoadOptions {
        dtype,
        device,
        expected_digest: pin,
        cc: m.cc.resolve(device)?,
        ..LoadOptions::default()
    };
    opts.channel.chunk_size = m.cc_chunk_kib as usize * 1024;
    opts.channel.rotate_after = m.cc_rotate_after;
    if let Some(t) = threads {
        opts.threads = t;
    }
    let start = std::time::Instant::now();
    // Layers loaded, on stderr when it is a terminal (indicatif hides it otherwise).
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} layers ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(format!("loading (cc {})", opts.cc));
    let loaded = LoadedModel::load(&dir, &opts, &mut |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    });
    pb.finish_and_clear();
    let model = loaded.with_context(|| format!("loading {}", dir.display()))?;
    let compute = match device {
        veil_engine::backend::Device::Cpu => format!("{} threads", opts.threads),
        veil_engine::backend::Device::Cuda(n) => format!("cuda:{n}"),
    };
    eprintln!(
        "loaded {} ({}, {} weights, {compute}, cc {}, digest {}) in {:.2}s ({:.2} GB/s of weights)",
        dir.display(),
        model.backend.name(),
        model.backend.dtype().name(),
        model.load.cc,
        model.digest,
        start.elapsed().as_secs_f64(),
        model.load.transfer_gb_per_s,
    );
    Ok(model)
}

pub(crate) fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Pull { name } => {
            let store = ModelStore::open_default()?;
            let path = pull(&store, &name)?;
            println!("{}", path.display());
            Ok(())
        }
        ModelCommand::Import { gguf, dir, dtype } => {
            let dtype = if dtype == "f32" {
                ImportDtype::F32
            } else {
                ImportDtype::Bf16
            };
            let size = std::fs::metadata(&gguf)
                .with_context(|| format!("reading {}", gguf.display()))?
                .len();
            let pb = bar(size, "importing");
            import_gguf(&gguf, &dir, dtype, &mut |done, total| {
                pb.set_length(total);
                pb.set_position(done);
            })?;
            pb.finish_and_clear();
            // Recorded in DIR/veil-model.json: loading the model later checks its files.
            let digest = veil_engine::store::record_import(&dir, &gguf, dtype)?;
            println!("{} {digest}", dir.display());
            Ok(())
        }
        ModelCommand::Synth {
            shape,
            seed,
            dtype,
            force,
            dir,
        } => {
            let shape: SynthShape = shape.parse()?;
            let opts = SynthOptions {
                dtype: dtype.parse::<ImportDtype>()?,
                force,
                ..SynthOptions::new(shape, seed)
            };
            let start = std::time::Instant::now();
            let pb = bar(0, "synthesizing");
            let summary = synth_model(&dir, &opts, &mut |done, total| {
                pb.set_length(total);
                pb.set_position(done);
            })
            .with_context(|| format!("synthesizing {shape} into {}", dir.display()))?;
            pb.finish_and_clear();
            eprintln!(
                "{shape}: {:.2} B parameters of RANDOM weights (seed {seed}), {:.2} GB in {} file(s), {:.1}s",
                summary.num_parameters as f64 / 1e9,
                summary.weight_bytes as f64 / 1e9,
                summary.shards,
                start.elapsed().as_secs_f64()
            );
            let digest = veil_engine::digest::model_digest(&dir)?;
            println!("{} {digest}", dir.display());
            Ok(())
        }
        ModelCommand::List => {
            let store = ModelStore::open_default()?;
            let models = store.list()?;
            if models.is_empty() {
                eprintln!("no models in {}; run `veil model pull`", store.root().display());
            }
            for m in models {
                println!(
                    "{:<28} {} {:>8.1} MB  {}",
                    m.name,
                    m.digest,
                    m.size_bytes as f64 / 1e6,
                    m.path.display()
                );
            }
            Ok(())
        }
    }
}
