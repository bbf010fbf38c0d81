//! `veil serve`: load a model, start the engine runtime and serve the gRPC API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use veil_engine::backend::DType;
use veil_engine::runtime::{RuntimeConfig, RuntimeHandle};

use super::model::{ModelArg, load_model};
use crate::registry::Registry;
use crate::server::{
    AttestationConfig, AttestationMode, Attestor, Collectors, Limits, SealedConfig, ServerConfig,
};

/// Arguments of `veil serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// gRPC address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:50051", env = "VEIL_LISTEN")]
    listen: SocketAddr,
    /// Serve Prometheus metrics over HTTP at ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Weight precision in memory.
    #[arg(long, default_value = "bf16")]
    dtype: DType,
    /// Compute threads (default: all cores, or VEIL_THREADS).
    #[arg(long)]
    threads: Option<usize>,
    /// Tokens one engine step processes across all sequences [default: 512].
    #[arg(long)]
    max_batched_tokens: Option<usize>,
    /// Sequences generated at once [default: 64].
    #[arg(long)]
    max_seqs: Option<usize>,
    /// KV-cache memory budget in MiB [default: 1024 on the CPU; on a GPU, see
    /// --gpu-memory-utilization].
    #[arg(long)]
    kv_cache_mb: Option<usize>,
    /// On a GPU without --kv-cache-mb: the fraction of device memory the server may use in
    /// all; after the weights and a profiling pass at the largest step, the rest of that
    /// fraction becomes KV-cache blocks.
    #[arg(long, default_value_t = 0.9, value_name = "FRACTION")]
    gpu_memory_utilization: f64,
    /// Requests that may wait for admission; more get RESOURCE_EXHAUSTED [default: 256]. (A
    /// GenerateBatch call with no item in the engine queues its next item beyond this limit, so
    /// that batches cannot starve behind new calls.)
    #[arg(long)]
    max_queue: Option<usize>,
    /// Largest request message in bytes (larger ones get OUT_OF_RANGE).
    #[arg(long, default_value_t = 8 << 20)]
    max_request_bytes: usize,
    /// Most items of one GenerateBatch call.
    #[arg(long, default_value_t = 4096)]
    max_batch_items: usize,
    /// Seconds in-flight generations may run on after SIGINT/SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    shutdown_grace: f64,
    /// Where attestation evidence comes from: `hardware` (the CPU TEE through configfs-tsm and
    /// the NVIDIA GPUs through NVML, verified at start-up; failure is fatal), `simulated`
    /// (keys made at start-up: NOT confidential) or `auto` (hardware when a CPU TEE is present,
    /// else simulated).
    #[arg(long, value_enum, default_value = "auto")]
    attestation: AttestationMode,
    /// Serve even though a GPU's confidential-computing mode is off or in developer-tools mode,
    /// WITHOUT confidentiality (said in the logs, ModelInfo and every attestation bundle).
    #[arg(long)]
    allow_insecure: bool,
    /// GetAttestation calls per second allowed (sustained); more get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 4.0, value_name = "PER_SEC")]
    attestation_rate: f64,
    /// GetAttestation calls allowed in a burst.
    #[arg(long, default_value_t = 8, value_name = "N")]
    attestation_burst: u32,
    /// The plaintext Generate and GenerateBatch RPCs: `auto` turns them off when the server is
    /// confidential (clients must seal requests) and on otherwise; `on` keeps them on even then
    /// (for benchmarks and development: the operator can read those calls); `off` turns them off.
    #[arg(long, value_enum, default_value = "auto")]
    plaintext: PlaintextRpcs,
    /// Sealed requests whose timestamp differs from the server's clock by more than this are
    /// refused (and replays are remembered this long).
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    seal_window: u32,
    /// Sealed requests the replay cache remembers within the window; beyond that, new sealed
    /// requests get RESOURCE_EXHAUSTED until entries expire.
    #[arg(long, default_value_t = 1 << 18, value_name = "N")]
    replay_cache: usize,
    /// Harden the process even when not confidential: no core dumps (RLIMIT_CORE 0) and not
    /// dumpable (PR_SET_DUMPABLE 0: other processes cannot ptrace it or read its memory).
    /// Always done when the server is confidential.
    #[arg(long)]
    harden: bool,
    /// Refuse to serve unless the model's files hash to this digest (64 hex digits, as
    /// `veil model list` shows). The digest recorded at pull or import is always checked.
    #[arg(long, value_name = "HEX")]
    model_digest: Option<veil_engine::digest::ModelDigest>,
    /// A replica of this deployment, for `ListReplicas` (repeatable; the operator's registry,
    /// which clients do not trust: they verify each replica's attestation).
    #[arg(long, value_name = "NAME=URL")]
    replica: Vec<String>,
    /// A TOML file of the deployment's replicas (`[[replica]]` tables with `name` and `url`),
    /// listed before any --replica.
    #[arg(long, value_name = "FILE")]
    replicas: Option<PathBuf>,
    /// This replica's name in the registry: its entry in `ListReplicas` carries its session key
    /// id, and `ModelInfo.replica_name` reports it.
    #[arg(long, value_name = "NAME")]
    replica_name: Option<String>,
    #[command(flatten)]
    model: ModelArg,
}

/// `veil serve --plaintext`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PlaintextRpcs {
    /// Off when the server is confidential, on otherwise.
    Auto,
    /// On.
    On,
    /// Off.
    Off,
}

/// The name the server reports for `--model ARG` resolved to `dir`.
fn model_name(arg: &str, dir: &Path) -> String {
    if Path::new(arg).is_dir() {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| arg.to_owned())
    } else {
        arg.to_owned()
    }
}

pub(crate) fn run(a: ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.shutdown_grace.is_finite() && a.shutdown_grace >= 0.0,
        "--shutdown-grace must be a non-negative number of seconds"
    );
    anyhow::ensure!(a.max_batch_items > 0, "--max-batch-items must be at least 1");
    let attestation = AttestationConfig {
        mode: a.attestation,
        allow_insecure: a.allow_insecure,
        rate: a.attestation_rate,
        burst: a.attestation_burst,
    };
    anyhow::ensure!(
        attestation.rate.is_finite() && attestation.rate > 0.0,
        "--attestation-rate must be a positive number of calls per second"
    );
    anyhow::ensure!(attestation.burst >= 1, "--attestation-burst must be at least 1");
    anyhow::ensure!(a.seal_window >= 1, "--seal-window must be at least 1 second");
    anyhow::ensure!(a.replay_cache >= 1, "--replay-cache must be at least 1");
    let registry = Registry::load(&a.replica, a.replicas.as_deref())?;
    // Checked before the model loads (the key id is filled in once the key exists).
    registry.listing(a.replica_name.as_deref(), "")?;
    // Before loading the model: a machine that cannot attest as asked fails fast.
    let collectors = Collectors::detect(&attestation).context("attestation")?;
    // Before any plaintext, key or weight is in memory.
    if collectors.confidential() || a.harden {
        let why = if collectors.confidential() {
            "confidential serving"
        } else {
            "--harden"
        };
        let done = crate::server::harden().with_context(|| format!("hardening the process ({why})"))?;
        let (soft, hard) = done.core_limit_before;
        tracing::info!(
            reason = why,
            core_limit_before_soft = soft,
            core_limit_before_hard = hard,
            "hardened the process: core dumps off (RLIMIT_CORE 0, soft and hard), not dumpable \
             (PR_SET_DUMPABLE 0: no ptrace attach or /proc/PID/mem reads by other processes)"
        );
    } else {
        tracing::warn!(
            "process not hardened (not confidential and no --harden): core dumps and ptrace \
             follow the system's settings"
        );
    }
    if veil_engine::runtime::FAULT_INJECTION {
        tracing::warn!(
            "this build has test-only fault injection compiled in (cargo feature \
             veil-engine/fault-injection); do not use it in production"
        );
    }
    anyhow::ensure!(
        a.gpu_memory_utilization > 0.0 && a.gpu_memory_utilization < 1.0,
        "--gpu-memory-utilization must be in (0, 1)"
    );
    let mut model = load_model(&a.model, a.dtype, a.threads, a.model_digest)?;
    let defaults = RuntimeConfig::default();
    let cfg = RuntimeConfig {
        max_batched_tokens: a.max_batched_tokens.unwrap_or(defaults.max_batched_tokens),
        max_seqs: a.max_seqs.unwrap_or(defaults.max_seqs),
        kv_cache_bytes: match a.kv_cache_mb {
            Some(mb) => mb << 20,
            None => {
                let max_tokens = a.max_batched_tokens.unwrap_or(defaults.max_batched_tokens);
                let max_rows = a.max_seqs.unwrap_or(defaults.max_seqs);
                model
                    .backend
                    .kv_memory_budget(a.gpu_memory_utilization, max_tokens, max_rows)
                    .context("sizing the KV cache")?
                    .unwrap_or(defaults.kv_cache_bytes)
            }
        },
        max_queue: a.max_queue.unwrap_or(defaults.max_queue),
        ..defaults
    };
    let name = model_name(&a.model.model, &model.dir);
    let handle = RuntimeHandle::start(model, name, cfg).context("starting the engine runtime")?;
    // The server proves to itself what it will claim before it accepts work.
    let attestor = match Attestor::new(collectors, handle.model_info(), &attestation) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            handle.shutdown(Duration::ZERO);
            return Err(e.context("attestation"));
        }
    };
    let own_key_id = hex::encode(attestor.session_key().key_id());
    let replicas = registry.listing(a.replica_name.as_deref(), &own_key_id)?;
    let server_cfg = ServerConfig {
        listen: a.listen,
        replicas,
        replica_name: a.replica_name.unwrap_or_default(),
        metrics_listen: a.metrics_listen,
        limits: Limits {
            max_request_bytes: a.max_request_bytes,
            max_batch_items: a.max_batch_items,
        },
        shutdown_grace: Duration::from_secs_f64(a.shutdown_grace),
        plaintext: match a.plaintext {
            PlaintextRpcs::Auto => !attestor.confidential(),
            PlaintextRpcs::On => true,
            PlaintextRpcs::Off => false,
        },
        attestor,
        sealed: SealedConfig {
            window_secs: a.seal_window,
            replay_capacity: a.replay_cache,
        },
    };
    if server_cfg.plaintext && server_cfg.attestor.confidential() {
        tracing::warn!(
            "--plaintext on: the plaintext Generate RPCs are on; the operator can read those calls"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("veil-server")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(crate::server::serve(handle.clone(), server_cfg));
    // Make sure the engine thread is gone even when serving failed.
    handle.shutdown(Duration::ZERO);
    result
}
