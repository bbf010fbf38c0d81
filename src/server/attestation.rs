//! The server's attestation: evidence collectors, claims, the session key pair and the rate
//! limit of `GetAttestation`.
//!
//! At start-up [`Collectors::detect`] picks the evidence sources (`--attestation`):
//! - `hardware`: the CPU TEE through configfs-tsm (Intel TDX or AMD SEV-SNP; required, because
//!   the CPU quote is what binds everything) and the NVIDIA GPUs through NVML (optional: a
//!   TEE without GPUs is a confidential CPU-only server). Every GPU must be in CC mode with
//!   developer tools off, unless `--allow-insecure`, which serves WITHOUT confidentiality.
//! - `simulated`: one simulated GPU and a simulated SEV-SNP guest (keys made at start-up): the
//!   real formats and verifiers, but NOT confidential.
//! - `auto`: `hardware` when a CPU TEE is present, else `simulated`.
//!
//! Then [`Attestor::new`] makes the X25519 session key pair (sealed requests are opened with it)
//! and the Ed25519 receipt key (it signs sealed calls' receipts), hashes the running executable,
//! and builds and verifies one bundle for a random nonce with
//! [`veil_attest::bundle::verify_bundle`] before the server accepts work. Every bundle after
//! that is made fresh for the client's nonce ([`Attestor::bundle`]): new GPU reports, a new
//! CPU quote. Whenever the server is not confidential it says so at start-up (a `NOT
//! CONFIDENTIAL` warning), in `ModelInfo.confidential` and in every bundle's claims.

use std::io;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use veil_attest::Error as AttestError;
use veil_attest::bundle::{build_bundle, verify_bundle};
use veil_attest::collect::{self, CpuCollector, GpuCollector};
use veil_attest::evidence::GpuCcState;
use veil_attest::policy::Policy;
use veil_attest::simulated::{SimulatedCpu, SimulatedGpu};
use veil_engine::runtime::ModelInfo;
use veil_proto::v1::{AttestationBundle, AttestationClaims, GpuState, SessionKey};
use veil_seal::{ReceiptSigner, SessionKeyPair};

/// Where the server's evidence comes from (`veil serve --attestation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AttestationMode {
    /// Hardware when a CPU TEE (configfs-tsm) is present, else simulated.
    Auto,
    /// The CPU TEE and the NVIDIA GPUs; failing to attest is fatal.
    Hardware,
    /// Simulated evidence (NOT confidential).
    Simulated,
}

/// Attestation settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttestationConfig {
    /// Where evidence comes from.
    pub(crate) mode: AttestationMode,
    /// Serve without confidentiality when the GPUs' CC mode is off or in developer-tools mode.
    pub(crate) allow_insecure: bool,
    /// `GetAttestation` calls per second, sustained (positive; `veil serve` checks it).
    pub(crate) rate: f64,
    /// `GetAttestation` calls allowed in a burst (at least 1).
    pub(crate) burst: u32,
}

/// The session key algorithm named in the claims.
pub(crate) const SESSION_KEY_ALGORITHM: &str = "x25519";

/// A token bucket: `rate` tokens per second up to `burst`.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The evidence sources chosen at start-up, before the model is loaded (so that a machine that
/// cannot attest fails fast).
#[derive(Debug)]
pub(crate) struct Collectors {
    gpu: Option<Box<dyn GpuCollector>>,
    cpu: Box<dyn CpuCollector>,
    /// Whether GPU reports go into bundles (false when a GPU's CC mode is off: there is no
    /// report to get; the claims still list the GPUs' state).
    gpu_evidence: bool,
    simulated: bool,
    /// Why the server is not confidential; `None` when it is.
    insecure: Option<String>,
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The claims' `cc_mode` for these GPUs: "none" without GPUs, "off" when any has CC off,
/// "devtools" when any is in developer-tools mode, else "on".
fn cc_mode(gpus: &[GpuCcState]) -> &'static str {
    if gpus.is_empty() {
        "none"
    } else if gpus.iter().any(|g| !g.cc_enabled) {
        "off"
    } else if gpus.iter().any(|g| g.dev_tools_mode) {
        "devtools"
    } else {
        "on"
    }
}

/// What keeps these GPUs from being confidential, if anything.
fn gpu_problems(gpus: &[GpuCcState]) -> Vec<String> {
    gpus.iter()
        .filter_map(|g| {
            if !g.cc_enabled {
                Some(format!(
                    "GPU {} ({}): confidential-computing mode is off",
                    g.index, g.name
                ))
            } else if g.dev_tools_mode {
                Some(format!(
                    "GPU {} ({}): confidential-computing developer-tools mode is on",
                    g.index, g.name
                ))
            } else {
                None
            }
        })
        .collect()
}

impl Collectors {
    /// Whether a server with these collectors is confidential (as [`Attestor::confidential`]).
    pub(crate) fn confidential(&self) -> bool {
        self.insecure.is_none()
    }

    /// Picks the evidence sources for `cfg` (see the module docs). Errors say what is missing
    /// and what to do.
    pub(crate) fn detect(cfg: &AttestationConfig) -> anyhow::Result<Self> {
        match cfg.mode {
            AttestationMode::Simulated => Self::simulated("--attestation simulated".into()),
            AttestationMode::Hardware => Self::hardware(cfg.allow_insecure),
            AttestationMode::Auto => match collect::detect_cpu() {
                Ok(cpu) => Self::hardware_with(cpu, cfg.allow_insecure),
                Err(AttestError::NotAvailable(why)) => {
                    const UNBOUND: &str = " (NVIDIA GPUs were found, but GPU evidence means \
                                           nothing without a CPU quote to bind it)";
                    let gpus = if collect::detect_gpu().is_ok() {
                        UNBOUND
                    } else {
                        ""
                    };
                    Self::simulated(format!("no CPU TEE on this machine{gpus}: {why}"))
                }
                Err(e) => Err(e).context(
                    "the CPU TEE is present but unusable (use --attestation simulated to serve \
                     WITHOUT confidentiality)",
                ),
            },
        }
    }

    fn simulated(why: String) -> anyhow::Result<Self> {
        Ok(Self {
            gpu: Some(Box::new(
                SimulatedGpu::new(1).context("making the simulated GPU")?,
            )),
            cpu: Box::new(SimulatedCpu::new().context("making the simulated CPU TEE")?),
            gpu_evidence: true,
            simulated: true,
            insecure: Some(format!(
                "simulated attestation ({why}): the evidence is signed by keys this server made \
                 at start-up and proves nothing"
            )),
        })
    }

    fn hardware(allow_insecure: bool) -> anyhow::Result<Self> {
        let cpu = match collect::detect_cpu() {
            Ok(cpu) => cpu,
            Err(AttestError::NotAvailable(why)) => {
                let gpus = if collect::detect_gpu().is_ok() {
                    "NVIDIA GPUs are present, but "
                } else {
                    ""
                };
                bail!(
                    "--attestation hardware: {gpus}no CPU TEE (Intel TDX or AMD SEV-SNP guest with \
                     configfs-tsm) to bind the evidence: {why}"
                );
            }
            Err(e) => return Err(e).context("--attestation hardware: the CPU TEE is present but unusable"),
        };
        Self::hardware_with(cpu, allow_insecure)
    }

    fn hardware_with(cpu: Box<dyn CpuCollector>, allow_insecure: bool) -> anyhow::Result<Self> {
        let gpu = match collect::detect_gpu() {
            Ok(g) => Some(g),
            Err(AttestError::NotAvailable(why)) => {
                tracing::info!(reason = %why, "no NVIDIA GPU: attesting the CPU TEE alone");
                None
            }
            Err(e) => return Err(e).context("detecting the NVIDIA GPUs"),
        };
        let states = match &gpu {
            Some(g) => g
                .gpus()
                .context("reading the GPUs' confidential-computing state")?,
            None => Vec::new(),
        };
        let problems = gpu_problems(&states);
        let insecure = if problems.is_empty() {
            None
        } else if allow_insecure {
            Some(format!("--allow-insecure: {}", problems.join("; ")))
        } else {
            bail!(
                "refusing to serve confidential traffic: {} (start with --allow-insecure to serve \
                 WITHOUT confidentiality)",
                problems.join("; ")
            );
        };
        Ok(Self {
            gpu_evidence: states.iter().all(|g| g.cc_enabled),
            gpu,
            cpu,
            simulated: false,
            insecure,
        })
    }
}

/// The server's attestation state: collectors, claims material, session key, rate limit.
#[derive(Debug)]
pub(crate) struct Attestor {
    collectors: Collectors,
    key: SessionKeyPair,
    receipts: ReceiptSigner,
    model_digest: [u8; 32],
    model_name: String,
    backend: String,
    engine_build_digest: [u8; 32],
    limiter: Mutex<TokenBucket>,
    /// One evidence collection at a time (NVML and configfs-tsm are not made for concurrency).
    collecting: Mutex<()>,
    rate: f64,
    burst: u32,
}

/// SHA-256 of the running executable.
fn executable_digest() -> io::Result<[u8; 32]> {
    let mut f = std::fs::File::open("/proc/self/exe")
        .or_else(|_| std::env::current_exe().and_then(std::fs::File::open))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h)?;
    Ok(h.finalize().into())
}

impl Attestor {
    /// Makes the session key pair, hashes the executable, then builds and verifies one bundle
    /// for a random nonce: the server must be able to prove what it claims before it serves.
    pub(crate) fn new(
        collectors: Collectors,
        info: &ModelInfo,
        cfg: &AttestationConfig,
    ) -> anyhow::Result<Self> {
        let model_digest: [u8; 32] = hex::decode(&info.digest)
            .ok()
            .and_then(|d| d.try_into().ok())
            .with_context(|| format!("the model digest {:?} is not 32 bytes of hex", info.digest))?;
        let mut collectors = collectors;
        if info.backend == "cuda" && collectors.gpu.is_none() {
            // Prompts would cross PCIe to a GPU nothing attests.
            let why = "the engine runs on CUDA but no NVIDIA GPU can be attested (NVML)";
            if cfg.allow_insecure {
                collectors
                    .insecure
                    .get_or_insert_with(|| format!("--allow-insecure: {why}"));
            } else {
                bail!(
                    "refusing to serve confidential traffic: {why} (start with --allow-insecure to \
                     serve WITHOUT confidentiality)"
                );
            }
        }
        let engine_build_digest =
            executable_digest().context("hashing the running executable (/proc/self/exe)")?;
        let attestor = Self {
            collectors,
            key: SessionKeyPair::generate(),
            receipts: ReceiptSigner::generate(),
            model_digest,
            model_name: info.name.clone(),
            backend: info.backend.clone(),
            engine_build_digest,
            limiter: Mutex::new(TokenBucket::new(cfg.rate, cfg.burst)),
            collecting: Mutex::new(()),
            rate: cfg.rate,
            burst: cfg.burst,
        };
        attestor.self_check()?;
        match &attestor.collectors.insecure {
            Some(why) => {
                tracing::warn!("NOT CONFIDENTIAL: {why}; the operator can read every request");
                if !tracing::enabled!(tracing::Level::WARN) {
                    // Logs are silenced (VEIL_LOG): say it anyway.
                    eprintln!("NOT CONFIDENTIAL: {why}");
                }
            }
            None => tracing::info!(
                cpu = attestor.collectors.cpu.kind().name(),
                "confidential: CPU TEE and GPUs in confidential-computing mode"
            ),
        }
        tracing::info!(
            mode = attestor.mode(),
            session_key_id = %hex::encode(attestor.key.key_id()),
            receipt_key = %hex::encode(attestor.receipts.public_key_bytes()),
            engine_build_digest = %hex::encode(attestor.engine_build_digest),
            "attestation ready"
        );
        Ok(attestor)
    }

    /// Builds a bundle for a random nonce and verifies it as a client would (simulated evidence
    /// allowed only in simulated mode, GPU CC required unless the server runs insecure).
    fn self_check(&self) -> anyhow::Result<()> {
        let mut nonce = [0u8; 32];
        OsRng.fill_bytes(&mut nonce);
        let bundle = self
            .bundle(&nonce)
            .context("collecting the server's own attestation evidence")?;
        let mut policy = Policy {
            allow_simulated: self.collectors.simulated,
            accepted_model_digests: vec![hex::encode(self.model_digest)],
            ..Policy::default()
        };
        policy.gpu.require_cc = self.collectors.insecure.is_none();
        let verdict = verify_bundle(&bundle, Some(&nonce), &policy, unix_now())
            .context("the server's own attestation evidence does not verify")?;
        anyhow::ensure!(
            verdict.confidential == self.confidential(),
            "the server's own attestation says confidential={}, expected {}",
            verdict.confidential,
            self.confidential()
        );
        tracing::info!(
            gpus = bundle.gpus.len(),
            cpu = bundle.cpu.as_ref().map_or("", |c| c.kind.as_str()),
            "the server's own attestation bundle verified"
        );
        Ok(())
    }

    /// Whether the server runs with confidentiality.
    pub(crate) fn confidential(&self) -> bool {
        self.collectors.insecure.is_none()
    }

    /// "hardware" or "simulated".
    pub(crate) fn mode(&self) -> &'static str {
        if self.collectors.simulated {
            "simulated"
        } else {
            "hardware"
        }
    }

    /// Takes a `GetAttestation` token; false when the rate limit is exceeded.
    pub(crate) fn try_acquire(&self) -> bool {
        self.limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_take(Instant::now())
    }

    /// The rate limit, for messages: (calls per second, burst).
    pub(crate) fn rate_limit(&self) -> (f64, u32) {
        (self.rate, self.burst)
    }

    /// The claims as of now for GPUs in these states.
    fn claims(&self, gpus: &[GpuCcState]) -> AttestationClaims {
        let confidential = self.confidential() && gpu_problems(gpus).is_empty();
        AttestationClaims {
            session_keys: vec![SessionKey {
                algorithm: SESSION_KEY_ALGORITHM.into(),
                public_key: self.key.public_key_bytes().to_vec(),
            }],
            model_digest: self.model_digest.to_vec(),
            model_name: self.model_name.clone(),
            engine_build_digest: self.engine_build_digest.to_vec(),
            engine_version: env!("CARGO_PKG_VERSION").into(),
            backend: self.backend.clone(),
            cc_mode: cc_mode(gpus).into(),
            server_time_unix: i64::try_from(unix_now()).unwrap_or(i64::MAX),
            confidential,
            gpus: gpus
                .iter()
                .map(|g| GpuState {
                    index: g.index,
                    name: g.name.clone(),
                    cc_enabled: g.cc_enabled,
                    dev_tools_mode: g.dev_tools_mode,
                    driver_version: g.driver_version.clone(),
                    vbios_version: g.vbios_version.clone(),
                })
                .collect(),
            receipt_public_key: self.receipts.public_key_bytes().to_vec(),
        }
    }

    /// The session key pair sealed requests are opened with.
    pub(crate) fn session_key(&self) -> &SessionKeyPair {
        &self.key
    }

    /// The key that signs sealed calls' receipts.
    pub(crate) fn receipt_signer(&self) -> &ReceiptSigner {
        &self.receipts
    }

    /// The served model's digest.
    pub(crate) fn model_digest(&self) -> [u8; 32] {
        self.model_digest
    }

    /// A fresh bundle for `nonce`: the GPUs' current state and new reports, a new CPU quote.
    /// Blocking (NVML and configfs-tsm calls): run it on a blocking thread.
    pub(crate) fn bundle(&self, nonce: &[u8; 32]) -> veil_attest::Result<AttestationBundle> {
        let _one_at_a_time = self.collecting.lock().unwrap_or_else(|e| e.into_inner());
        let c = &self.collectors;
        let states = match &c.gpu {
            Some(g) => g.gpus()?,
            None => Vec::new(),
        };
        let claims = self.claims(&states);
        build_bundle(
            nonce,
            &claims,
            &mut |gpu_nonce| match &c.gpu {
                Some(g) if c.gpu_evidence => g.evidence(gpu_nonce),
                _ => Ok(Vec::new()),
            },
            &mut |report_data| c.cpu.evidence(report_data),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn gpu(cc: bool, dev: bool) -> GpuCcState {
        GpuCcState {
            index: 0,
            name: "H100".into(),
            cc_enabled: cc,
            dev_tools_mode: dev,
            driver_version: "550.90.07".into(),
            vbios_version: "96.00.9F.00.01".into(),
        }
    }

    #[test]
    fn cc_mode_names_the_weakest_gpu() {
        assert_eq!(cc_mode(&[]), "none");
        assert_eq!(cc_mode(&[gpu(true, false)]), "on");
        assert_eq!(cc_mode(&[gpu(true, false), gpu(true, true)]), "devtools");
        assert_eq!(cc_mode(&[gpu(true, true), gpu(false, false)]), "off");
        assert!(gpu_problems(&[gpu(true, false)]).is_empty());
        assert!(gpu_problems(&[gpu(false, false)])[0].contains("mode is off"));
        assert!(gpu_problems(&[gpu(true, true)])[0].contains("developer-tools"));
    }

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 3);
        b.last = t0;
        assert!((0..3).all(|_| b.try_take(t0)));
        assert!(!b.try_take(t0));
        // Half a second at 2/s refills one token.
        assert!(b.try_take(t0 + Duration::from_millis(500)));
        assert!(!b.try_take(t0 + Duration::from_millis(500)));
        // Never more than the burst.
        let later = t0 + Duration::from_secs(100);
        assert!((0..3).all(|_| b.try_take(later)));
        assert!(!b.try_take(later));
    }

    #[test]
    fn simulated_collectors_are_not_confidential_and_produce_verifiable_bundles() {
        let cfg = AttestationConfig {
            mode: AttestationMode::Simulated,
            allow_insecure: false,
            rate: 4.0,
            burst: 8,
        };
        let collectors = Collectors::detect(&cfg).expect("simulated collectors");
        assert!(collectors.simulated && collectors.insecure.is_some());
        let info = ModelInfo {
            name: "m".into(),
            architecture: "LlamaForCausalLM".into(),
            digest: "ab".repeat(32),
            context_length: 8,
            vocab_size: 8,
            dtype: "f32".into(),
            backend: "cpu".into(),
            max_batched_tokens: 8,
            max_seqs: 1,
            max_queue: 1,
            kv_cache_blocks: 1,
            block_size: 16,
            eos_token_ids: vec![],
            load: Default::default(),
        };
        let a = Attestor::new(collectors, &info, &cfg).expect("attestor (self-check passes)");
        assert!(!a.confidential());
        assert_eq!(a.mode(), "simulated");
        let b = a.bundle(&[5; 32]).expect("bundle");
        assert_eq!(b.gpus.len(), 1);
        let policy = Policy {
            allow_simulated: true,
            ..Policy::default()
        };
        let v = verify_bundle(&b, Some(&[5; 32]), &policy, unix_now()).expect("verifies");
        assert!(!v.confidential && !v.claims.confidential);
        assert_eq!(v.claims.model_digest, "ab".repeat(32));
        assert_eq!(v.session_keys[0].0, "x25519");
        assert_eq!(v.session_keys[0].1, a.key.public_key_bytes().to_vec());
        assert_eq!(v.receipt_public_key, Some(a.receipts.public_key_bytes()));
        assert_eq!(v.claims.cc_mode, "off");
    }
}
