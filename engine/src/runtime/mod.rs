//! The serving runtime: a continuous-batching engine loop on its own thread.
//!
//! Callers (gRPC handlers) [`RuntimeHandle::submit`] requests; each gets a [`RequestStream`] of
//! [`Event`]s. Validation and tokenization happen on the caller's thread; the engine thread
//! owns the backend and the [`scheduler`], and every step spends a token budget across the
//! running sequences (decode tokens first, then chunked prefill of newcomers). Dropping a
//! stream cancels its request; the engine frees its KV blocks at the next step.
//!
//! If the engine thread fails (a panic in a backend or in the scheduler), the runtime does not
//! hang: the panic is caught, every waiting and running request's stream ends without a
//! `Finished` event, later submissions are refused with [`SubmitError::EngineFailed`], and
//! [`RuntimeHandle::failure`] / [`RuntimeHandle::failed`] report it (the server turns that into
//! NOT_SERVING on its health service).

mod scheduler;
mod sequence;
mod validate;
mod worker;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
pub use crate::generate::TokenEvent;
use crate::model::LoadedModel;
pub use crate::output::FinishReason;
use crate::output::StopConditions;
use crate::sampling::SamplingParams;
use crate::tokenizer::{ChatMessage, Tokenizer};

/// Whether this build can inject faults (`VEIL_FAULT_PANIC_AFTER_STEPS`; the test-only cargo
/// feature `fault-injection`). Servers log a warning when it is on.
pub const FAULT_INJECTION: bool = cfg!(feature = "fault-injection");

/// Operator limits of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Tokens one step may process across all sequences (decode tokens + prefill chunks).
    pub max_batched_tokens: usize,
    /// Sequences running at once.
    pub max_seqs: usize,
    /// KV cache memory budget in bytes.
    pub kv_cache_bytes: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// Requests waiting beyond the running ones; more are refused.
    pub max_queue: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_batched_tokens: 512,
            max_seqs: 64,
            kv_cache_bytes: 1 << 30,
            block_size: 16,
            max_queue: 256,
        }
    }
}

/// The input of a request.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Plain text, tokenized as is.
    Text(String),
    /// Chat messages, rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
    /// Token ids.
    Tokens(Vec<u32>),
}

/// One generation request. Its prompt is wiped from memory when it is dropped, its stop strings
/// when [`RuntimeHandle::submit`] is done with it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The input.
    pub prompt: Prompt,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Stop conditions (the model's end-of-sequence ids are added).
    pub stop: StopConditions,
    /// Report each token's log-probability.
    pub logprobs: bool,
    /// Also report this many most likely alternatives per token.
    pub top_logprobs: usize,
    /// Give up after this instant.
    pub deadline: Option<Instant>,
}

impl Drop for Prompt {
    /// Wipes the text or token ids.
    fn drop(&mut self) {
        use zeroize::Zeroize;
        match self {
            Prompt::Text(text) => text.zeroize(),
            Prompt::Chat(messages) => {
                for m in messages.iter_mut() {
                    m.role.zeroize();
                    m.content.zeroize();
                }
            }
            Prompt::Tokens(ids) => ids.zeroize(),
        }
    }
}

/// Timing and counts of a finished request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// From submission to the first generated token.
    pub time_to_first_token: Option<Duration>,
    /// Mean time between later tokens.
    pub time_per_output_token: Option<Duration>,
}

/// The end of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// Why it ended.
    pub reason: FinishReason,
    /// What failed, when `reason` is `Error`.
    pub error: Option<String>,
    /// Counts and timing.
    pub usage: Usage,
}

/// What a request's stream carries.
#[derive(Debug, Clone)]
pub enum Event {
    /// A generated token.
    Token(TokenEvent),
    /// The last event of every stream.
    Finished(Finished),
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// A field has an invalid value.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The API field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The request can never fit (context or KV budget).
    #[error("{field} too large: {message}")]
    TooLarge {
        /// The API field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The waiting queue is full.
    #[error("server busy: {0}")]
    QueueFull(String),
    /// The runtime is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The engine thread failed; this runtime can no longer generate.
    #[error("the inference engine failed; this server can no longer generate")]
    EngineFailed,
}

/// What the runtime serves, for clients and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Model name.
    pub name: String,
    /// Architecture (HF class name).
    pub architecture: String,
    /// Model digest (hex SHA-256).
    pub digest: String,
    /// Longest sequence (prompt + output).
    pub context_length: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Weight precision.
    pub dtype: String,
    /// Backend name.
    pub backend: String,
    /// Token budget per step.
    pub max_batched_tokens: usize,
    /// Running sequences at most.
    pub max_seqs: usize,
    /// Waiting requests at most.
    pub max_queue: usize,
    /// KV blocks in the cache.
    pub kv_cache_blocks: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// Tokens that end a generation (end of sequence / end of turn).
    pub eos_token_ids: Vec<u32>,
    /// How the model was loaded: transfer mode, time, weight transfer rate.
    pub load: crate::model::LoadReport,
}

/// A snapshot of the runtime's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Requests waiting.
    pub queued: usize,
    /// Sequences running.
    pub running: usize,
    /// KV blocks in use.
    pub kv_blocks_used: usize,
    /// KV blocks in the cache.
    pub kv_blocks_total: usize,
    /// Prompt tokens accepted so far.
    pub prompt_tokens_total: u64,
    /// Tokens generated so far.
    pub generated_tokens_total: u64,
    /// Sequences preempted (to be recomputed) so far.
    pub preemptions_total: u64,
    /// Engine steps so far.
    pub steps_total: u64,
}

/// Counters the engine thread updates and handles read.
#[derive(Debug, Default)]
struct SharedStats {
    queued: AtomicUsize,
    /// Of `queued`: requests queued beyond the limit (`submit_beyond_limit`) not yet admitted.
    /// They do not count against the limit for others.
    queued_beyond: AtomicUsize,
    running: AtomicUsize,
    kv_blocks_used: AtomicUsize,
    prompt_tokens_total: AtomicU64,
    generated_tokens_total: AtomicU64,
    preemptions_total: AtomicU64,
    steps_total: AtomicU64,
}

/// Messages to the engine thread.
enum Control {
    Submit(Box<sequence::Sequence>),
    Shutdown { grace: Duration },
}

/// Set once, when the engine thread fails: what failed (for logs; never request content).
pub(crate) type FailureCell = tokio::sync::watch::Sender<Option<String>>;

/// Records the engine's failure (the first one wins).
pub(crate) fn record_failure(cell: &FailureCell, what: String) {
    cell.send_if_modified(|f| {
        if f.is_some() {
            return false;
        }
        *f = Some(what);
        true
    });
}

/// Marks the engine as failed if the engine thread unwinds past the worker's own panic handling.
struct FailureGuard(Arc<FailureCell>);

impl Drop for FailureGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            record_failure(&self.0, "the engine thread panicked".into());
        }
    }
}

struct Inner {
    tx: Mutex<mpsc::Sender<Control>>,
    tokenizer: Arc<Tokenizer>,
    info: ModelInfo,
    cfg: RuntimeConfig,
    stats: Arc<SharedStats>,
    admitting: AtomicBool,
    next_id: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    failure: Arc<FailureCell>,
}

/// A cloneable handle to the engine thread.
#[derive(Clone)]
pub struct RuntimeHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeHandle")
            .field("model", &self.inner.info.name)
            .finish()
    }
}

impl RuntimeHandle {
    /// Sizes the KV cache from the memory budget and starts the engine thread.
    pub fn start(mut model: LoadedModel, name: String, cfg: RuntimeConfig) -> Result<Self> {
        if cfg.block_size == 0 || cfg.max_seqs == 0 || cfg.max_batched_tokens == 0 {
            return Err(Error::InvalidRequest(
                "block size, max seqs and max batched tokens must be positive".into(),
            ));
        }
        let block_bytes = model.backend.kv_block_bytes(cfg.block_size);
        let num_blocks = cfg.kv_cache_bytes / block_bytes.max(1);
        let ctx = model.config.max_position_embeddings;
        if num_blocks == 0 {
            return Err(Error::InvalidRequest(format!(
                "a KV budget of {} bytes holds no block ({block_bytes} bytes each)",
                cfg.kv_cache_bytes
            )));
        }
        model.backend.init_kv_cache(num_blocks, cfg.block_size)?;
        let mut eos_token_ids = model.tokenizer.eos_token_ids().to_vec();
        for &id in &model.config.eos_token_ids {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
        let info = ModelInfo {
            name,
            architecture: model.config.architecture.hf_name().into(),
            digest: model.digest.to_string(),
            context_length: ctx,
            vocab_size: model.config.vocab_size,
            dtype: model.backend.dtype().name().into(),
            backend: model.backend.name().into(),
            max_batched_tokens: cfg.max_batched_tokens,
            max_seqs: cfg.max_seqs,
            max_queue: cfg.max_queue,
            kv_cache_blocks: num_blocks,
            block_size: cfg.block_size,
            eos_token_ids,
            load: model.load,
        };
        let stats = Arc::new(SharedStats::default());
        let (tx, rx) = mpsc::channel();
        let tokenizer = model.tokenizer.clone();
        let failure = Arc::new(FailureCell::new(None));
        let worker = worker::Worker::new(model, cfg.clone(), num_blocks, stats.clone(), rx, failure.clone());
        let guard = FailureGuard(failure.clone());
        let thread = std::thread::Builder::new()
            .name("veil-engine".into())
            .spawn(move || {
                let _guard = guard;
                worker.run();
            })
            .map_err(|e| Error::Backend {
                backend: "runtime",
                reason: format!("spawning the engine thread: {e}"),
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                tx: Mutex::new(tx),
                tokenizer,
                info,
                cfg,
                stats,
                admitting: AtomicBool::new(true),
                next_id: AtomicU64::new(1),
                thread: Mutex::new(Some(thread)),
                failure,
            }),
        })
    }

    /// Validates and tokenizes a request and queues it. The request's content is wiped from
    /// memory afterwards (the engine keeps its own copy while it runs).
    pub fn submit(&self, mut req: Request) -> std::result::Result<RequestStream, SubmitError> {
        let submitted = self.submit_ref(&req, true);
        use zeroize::Zeroize;
        req.stop.stop_strings.iter_mut().for_each(Zeroize::zeroize);
        submitted
    }

    /// As [`submit`](Self::submit), but queued even when the waiting queue is full: for a caller
    /// that holds accepted work and has nothing else in the engine, so that it cannot starve
    /// behind new arrivals (`GenerateBatch` keeps one item going this way). Such a caller must
    /// keep at most one request waiting beyond the limit. Requests queued this way do not count
    /// against the limit for others.
    pub fn submit_beyond_limit(&self, mut req: Request) -> std::result::Result<RequestStream, SubmitError> {
        let submitted = self.submit_ref(&req, false);
        use zeroize::Zeroize;
        req.stop.stop_strings.iter_mut().for_each(Zeroize::zeroize);
        submitted
    }

    fn submit_ref(&self, req: &Request, limit: bool) -> std::result::Result<RequestStream, SubmitError> {
        let inner = &self.inner;
        if inner.failure.borrow().is_some() {
            return Err(SubmitError::EngineFailed);
        }
        if !inner.admitting.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        let prepared = validate::prepare(req, &inner.tokenizer, &inner.info)?;
        // Reserve a queue slot; refuse beyond the bound.
        let queued = inner.stats.queued.fetch_add(1, Ordering::AcqRel);
        let beyond = inner.stats.queued_beyond.load(Ordering::Acquire);
        let queued = queued.saturating_sub(beyond);
        if limit && queued >= inner.cfg.max_queue {
            inner.stats.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::QueueFull(format!(
                "{queued} requests are waiting (limit {}); retry later",
                inner.cfg.max_queue
            )));
        }
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut seq = sequence::Sequence::new(id, prepared, req, events_tx, cancel.clone());
        if !limit {
            seq.beyond_limit = true;
            inner.stats.queued_beyond.fetch_add(1, Ordering::AcqRel);
        }
        let sent = inner
            .tx
            .lock()
            .map_err(|_| SubmitError::ShuttingDown)
            .and_then(|tx| {
                tx.send(Control::Submit(Box::new(seq)))
                    .map_err(|_| SubmitError::ShuttingDown)
            });
        if let Err(e) = sent {
            inner.stats.queued.fetch_sub(1, Ordering::AcqRel);
            if !limit {
                inner.stats.queued_beyond.fetch_sub(1, Ordering::AcqRel);
            }
            // The engine thread is gone: because it failed, or because the runtime shut down.
            if inner.failure.borrow().is_some() {
                return Err(SubmitError::EngineFailed);
            }
            return Err(e);
        }
        Ok(RequestStream {
            rx: events_rx,
            cancel,
        })
    }

    /// Whether the waiting queue has room now (a hint: [`submit`](Self::submit) decides). Lets
    /// a caller that retries skip validating and tokenizing a request the queue would refuse.
    pub fn queue_has_room(&self) -> bool {
        let s = &self.inner.stats;
        let beyond = s.queued_beyond.load(Ordering::Acquire);
        s.queued.load(Ordering::Acquire).saturating_sub(beyond) < self.inner.cfg.max_queue
    }

    /// What is served.
    pub fn model_info(&self) -> &ModelInfo {
        &self.inner.info
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    /// A snapshot of queue, batch and KV usage and the counters.
    pub fn stats(&self) -> RuntimeStats {
        let s = &self.inner.stats;
        RuntimeStats {
            queued: s.queued.load(Ordering::Relaxed),
            running: s.running.load(Ordering::Relaxed),
            kv_blocks_used: s.kv_blocks_used.load(Ordering::Relaxed),
            kv_blocks_total: self.inner.info.kv_cache_blocks,
            prompt_tokens_total: s.prompt_tokens_total.load(Ordering::Relaxed),
            generated_tokens_total: s.generated_tokens_total.load(Ordering::Relaxed),
            preemptions_total: s.preemptions_total.load(Ordering::Relaxed),
            steps_total: s.steps_total.load(Ordering::Relaxed),
        }
    }

    /// What made the engine thread fail, once it has (`None` while it is healthy).
    pub fn failure(&self) -> Option<String> {
        self.inner.failure.borrow().clone()
    }

    /// Resolves when the engine thread fails, with what failed; pending forever while it is
    /// healthy.
    pub fn failed(&self) -> impl Future<Output = String> + Send + 'static {
        let mut rx = self.inner.failure.subscribe();
        async move {
            loop {
                if let Some(what) = rx.borrow_and_update().clone() {
                    return what;
                }
                if rx.changed().await.is_err() {
                    // The runtime is gone without failing.
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// Refuses new requests from now on.
    pub fn stop_admitting(&self) {
        self.inner.admitting.store(false, Ordering::Release);
    }

    /// Stops admitting, lets in-flight requests finish for up to `grace`, cancels the rest and
    /// joins the engine thread. Blocks; idempotent.
    pub fn shutdown(&self, grace: Duration) {
        self.stop_admitting();
        if let Ok(tx) = self.inner.tx.lock() {
            let _ = tx.send(Control::Shutdown { grace });
        }
        let thread = self.inner.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// The events of one request. Dropping it cancels the request.
#[derive(Debug)]
pub struct RequestStream {
    rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
    cancel: Arc<AtomicBool>,
}

impl RequestStream {
    /// The next event; `None` after the `Finished` event.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event, blocking the thread (not for async contexts).
    pub fn blocking_recv(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }

    /// Asks the engine to stop this request; a `Finished` event with `Cancelled` follows.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        self.cancel();
    }
}
