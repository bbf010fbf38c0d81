//! The `veil.v1.Inference` service: submits requests to the engine runtime and streams its
//! events back.
//!
//! Each call's engine [`RequestStream`] is owned by a forwarding task; when the client cancels
//! or disconnects, the task notices (the response channel closes), drops the stream, and the
//! engine frees the sequence's KV blocks at its next step. Deadlines (`grpc-timeout`) go to the
//! engine with the request and are also enforced here: when one passes, the call ends with
//! status DEADLINE_EXCEEDED.
//!
//! Logs carry request ids, token counts, timings and finish reasons, never text or token ids.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use veil_engine::runtime::{self, Event, FinishReason, RequestStream, RuntimeHandle, SubmitError};
use veil_proto::v1;

use prost::Message;
use veil_proto::v1::sealed_payload::Body;
use veil_seal::SealedRpc;

use super::attestation::Attestor;
use super::convert::{self, InputKind, Site};
use super::metrics::Metrics;
use super::scrub::Wiped;
use super::sealed::{OpenedRequest, SealedCalls, SealedConfig, seal_stream};

/// Messages buffered per call between the forwarding task and the transport.
const CHANNEL_DEPTH: usize = 64;
/// How long a batch waits before retrying when the queue is full of other callers' requests.
const QUEUE_RETRY: Duration = Duration::from_millis(50);

/// The status of calls in flight when the engine thread failed.
fn engine_stopped() -> Status {
    Status::internal(
        "the inference engine stopped unexpectedly; this server no longer serves (health: \
         NOT_SERVING)",
    )
}

/// Server limits beyond the engine's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The largest request message accepted by the transport.
    pub(crate) max_request_bytes: usize,
    /// The most items in one `GenerateBatch` call.
    pub(crate) max_batch_items: usize,
}

/// What `ListReplicas` and `ModelInfo` say about the deployment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Replicas {
    /// The `ListReplicas` answer.
    pub(crate) listing: Vec<v1::Replica>,
    /// This replica's name (empty when not set).
    pub(crate) own_name: String,
}

/// The gRPC service.
#[derive(Debug)]
pub(crate) struct InferenceService {
    handle: RuntimeHandle,
    metrics: Arc<Metrics>,
    limits: Limits,
    attestor: Arc<Attestor>,
    sealed: SealedCalls,
    /// Whether the plaintext `Generate` and `GenerateBatch` are on.
    plaintext: bool,
    replicas: Replicas,
    next_id: AtomicU64,
}

/// A call's stream of messages, as the plaintext RPCs send them.
type Messages<M> = mpsc::Receiver<Result<M, Status>>;

impl InferenceService {
    /// A service over a started runtime.
    pub(crate) fn new(
        handle: RuntimeHandle,
        metrics: Arc<Metrics>,
        limits: Limits,
        attestor: Arc<Attestor>,
        sealed: SealedConfig,
        plaintext: bool,
        replicas: Replicas,
    ) -> Self {
        Self {
            handle,
            metrics,
            limits,
            attestor,
            sealed: SealedCalls::new(sealed),
            plaintext,
            replicas,
            next_id: AtomicU64::new(1),
        }
    }

    /// Refuses plaintext calls on a server that turned them off.
    fn check_plaintext(&self, rpc: &str) -> Result<(), Status> {
        if self.plaintext {
            Ok(())
        } else {
            self.metrics.record_rejected("plaintext_off");
            Err(Status::unimplemented(format!(
                "plaintext {rpc} is off on this server (ModelInfo.plaintext_enabled = false): seal \
                 the request to the attested engine with Sealed{rpc} (docs/protocol.md)"
            )))
        }
    }

    /// Opens a sealed request, or fails the call with a status that reveals nothing of it.
    fn open_sealed(
        &self,
        id: u64,
        req: &Request<v1::SealedRequest>,
        rpc: SealedRpc,
    ) -> Result<OpenedRequest, Status> {
        let opened = self
            .sealed
            .open(&self.attestor, req.metadata(), req.get_ref(), rpc);
        opened.inspect_err(|s| {
            self.metrics.record_rejected("sealed_open");
            tracing::info!(id, rpc = rpc.name(), code = ?s.code(), "sealed request refused");
        })
    }

    /// Converts and submits one request; returns its message stream.
    async fn start_generate(
        &self,
        id: u64,
        req: v1::GenerateRequest,
        timeout: Option<Duration>,
    ) -> Result<Messages<v1::GenerateResponse>, Status> {
        let deadline = timeout.map(|t| Instant::now() + t);
        // The request's content is wiped once converted (the engine wipes its own copy).
        let mut req = Wiped(req);
        let params = Wiped(req.params.take().unwrap_or_default());
        let ctx = self.handle.model_info().context_length;
        let conv = convert::to_engine(
            req.input.as_ref(),
            &params,
            Site::Single,
            ctx,
            deadline.map(Instant::into_std),
        )
        .inspect_err(|_| self.metrics.record_rejected("invalid_argument"))?;
        let kind = conv.kind;
        let stream = match self.submit(conv.request).await {
            Ok(s) => s,
            Err(e) => {
                self.metrics.record_rejected(convert::submit_error_code(&e));
                tracing::info!(id, input = kind.name(), reason = refusal(&e), "generate refused");
                return Err(convert::submit_error(&e, kind, Site::Single));
            }
        };
        tracing::debug!(
            id,
            input = kind.name(),
            timeout_ms = timeout.map(|t| t.as_millis() as u64),
            "generate admitted"
        );
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        tokio::spawn(forward_generate(
            id,
            kind,
            stream,
            tx,
            deadline,
            self.metrics.clone(),
        ));
        Ok(rx)
    }

    /// Checks and converts a batch, then runs it; returns its message stream.
    fn start_batch(
        &self,
        id: u64,
        req: v1::GenerateBatchRequest,
        timeout: Option<Duration>,
    ) -> Result<Messages<v1::GenerateBatchResponse>, Status> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let req = Wiped(req);
        let reject = |s: Status| {
            self.metrics.record_rejected("invalid_argument");
            s
        };
        if req.items.is_empty() {
            return Err(reject(convert::invalid("items", "is empty")));
        }
        if req.items.len() > self.limits.max_batch_items {
            return Err(reject(convert::invalid(
                "items",
                format!(
                    "{} items; at most {} per call",
                    req.items.len(),
                    self.limits.max_batch_items
                ),
            )));
        }
        let ctx = self.handle.model_info().context_length;
        let mut items = Vec::with_capacity(req.items.len());
        for (index, item) in req.items.iter().enumerate() {
            let params = Wiped(convert::merge_params(req.params.as_ref(), item.params.as_ref()));
            let site = Site::BatchItem {
                index,
                item_params: item.params.as_ref(),
            };
            let conv = convert::to_engine(
                item.input.as_ref(),
                &params,
                site,
                ctx,
                deadline.map(Instant::into_std),
            )
            .map_err(reject)?;
            items.push(BatchItem {
                conv,
                item_params: Wiped(item.params.clone()),
            });
        }
        tracing::debug!(id, items = items.len(), "generate_batch accepted");
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        tokio::spawn(run_batch(
            id,
            items,
            self.handle.clone(),
            tx,
            deadline,
            self.metrics.clone(),
        ));
        Ok(rx)
    }

    /// Seals the stream of a started sealed call (or the status that refused it).
    fn sealed_stream<M: Send + 'static>(
        &self,
        opened: OpenedRequest,
        inner: Result<Messages<M>, Status>,
        wrap: fn(M) -> Body,
    ) -> ReceiverStream<Result<v1::SealedResponse, Status>> {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        tokio::spawn(seal_stream(inner, wrap, opened, self.attestor.clone(), tx));
        ReceiverStream::new(rx)
    }

    /// Submits on a blocking thread (validation tokenizes the input).
    async fn submit(&self, req: runtime::Request) -> Result<RequestStream, SubmitError> {
        submit(self.handle.clone(), req).await
    }
}

/// Decodes an opened request; one that does not decode is INVALID_ARGUMENT naming the field, as
/// the transport answers a plaintext call.
fn decode_opened<Req: Message + Default>(opened: &OpenedRequest, metrics: &Metrics) -> Result<Req, Status> {
    Req::decode(opened.plaintext.as_slice()).map_err(|e| {
        metrics.record_rejected("invalid_argument");
        veil_proto::codec::request_decode_status(&e)
    })
}

/// Submits on a blocking thread (validation tokenizes the input, which may take a while).
async fn submit(handle: RuntimeHandle, req: runtime::Request) -> Result<RequestStream, SubmitError> {
    submit_to(handle, req, false).await
}

/// As [`submit`]; with `beyond_limit`, queued even when the queue is full (one batch item at a
/// time, see [`run_batch`]).
async fn submit_to(
    handle: RuntimeHandle,
    req: runtime::Request,
    beyond_limit: bool,
) -> Result<RequestStream, SubmitError> {
    let call = move || {
        if beyond_limit {
            handle.submit_beyond_limit(req)
        } else {
            handle.submit(req)
        }
    };
    match tokio::task::spawn_blocking(call).await {
        Ok(r) => r,
        // The blocking pool only fails to run the closure while the runtime shuts down.
        Err(_) => Err(SubmitError::ShuttingDown),
    }
}

/// Why a submission was refused, for logs: the field's name, never its value (error messages
/// may quote what the client sent).
fn refusal(e: &SubmitError) -> &'static str {
    match e {
        SubmitError::Invalid { field, .. } | SubmitError::TooLarge { field, .. } => field,
        SubmitError::QueueFull(_) => "queue full",
        SubmitError::ShuttingDown => "shutting down",
        SubmitError::EngineFailed => "engine failed",
    }
}

/// A far-away instant standing in for "no deadline".
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// The status of a call whose deadline passed.
fn deadline_status() -> Status {
    Status::deadline_exceeded("the call's deadline passed before generation finished")
}

#[tonic::async_trait]
impl v1::inference_server::Inference for InferenceService {
    type GenerateStream = ReceiverStream<Result<v1::GenerateResponse, Status>>;
    type GenerateBatchStream = ReceiverStream<Result<v1::GenerateBatchResponse, Status>>;
    type SealedGenerateStream = ReceiverStream<Result<v1::SealedResponse, Status>>;
    type SealedGenerateBatchStream = ReceiverStream<Result<v1::SealedResponse, Status>>;

    async fn generate(
        &self,
        request: Request<v1::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        self.check_plaintext("Generate")?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let timeout = convert::grpc_timeout(request.metadata());
        let rx = self.start_generate(id, request.into_inner(), timeout).await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn generate_batch(
        &self,
        request: Request<v1::GenerateBatchRequest>,
    ) -> Result<Response<Self::GenerateBatchStream>, Status> {
        self.check_plaintext("GenerateBatch")?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let timeout = convert::grpc_timeout(request.metadata());
        let rx = self.start_batch(id, request.into_inner(), timeout)?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn sealed_generate(
        &self,
        request: Request<v1::SealedRequest>,
    ) -> Result<Response<Self::SealedGenerateStream>, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let timeout = convert::grpc_timeout(request.metadata());
        let opened = self.open_sealed(id, &request, SealedRpc::Generate)?;
        tracing::debug!(id, "sealed generate opened");
        // Decoding and submitting run before the stream starts, as for the plaintext call.
        let inner = match decode_opened(&opened, &self.metrics) {
            Ok(req) => self.start_generate(id, req, timeout).await,
            Err(s) => Err(s),
        };
        Ok(Response::new(self.sealed_stream(opened, inner, Body::Response)))
    }

    async fn sealed_generate_batch(
        &self,
        request: Request<v1::SealedRequest>,
    ) -> Result<Response<Self::SealedGenerateBatchStream>, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let timeout = convert::grpc_timeout(request.metadata());
        let opened = self.open_sealed(id, &request, SealedRpc::GenerateBatch)?;
        tracing::debug!(id, "sealed generate_batch opened");
        let inner = decode_opened(&opened, &self.metrics).and_then(|req| self.start_batch(id, req, timeout));
        Ok(Response::new(self.sealed_stream(opened, inner, Body::BatchItem)))
    }

    async fn model_info(
        &self,
        _request: Request<v1::ModelInfoRequest>,
    ) -> Result<Response<v1::ModelInfoResponse>, Status> {
        let i = self.handle.model_info();
        let n = convert::saturate;
        Ok(Response::new(v1::ModelInfoResponse {
            name: i.name.clone(),
            architecture: i.architecture.clone(),
            digest: i.digest.clone(),
            context_length: n(i.context_length),
            vocab_size: n(i.vocab_size),
            dtype: i.dtype.clone(),
            backend: i.backend.clone(),
            limits: Some(v1::Limits {
                max_tokens: n(i.context_length),
                max_batched_tokens: n(i.max_batched_tokens),
                max_seqs: n(i.max_seqs),
                max_queue: n(i.max_queue),
                kv_cache_blocks: n(i.kv_cache_blocks),
                block_size: n(i.block_size),
                max_request_bytes: n(self.limits.max_request_bytes),
                max_batch_items: n(self.limits.max_batch_items),
            }),
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            eos_token_ids: i.eos_token_ids.clone(),
            confidential: self.attestor.confidential(),
            attestation: self.attestor.mode().to_owned(),
            plaintext_enabled: self.plaintext,
            sealed_enabled: true,
            cc_transfer: i.load.cc.as_str().to_owned(),
            model_load_seconds: i.load.seconds,
            weight_transfer_gbps: i.load.transfer_gb_per_s,
            session_key_id: hex::encode(self.attestor.session_key().key_id()),
            replica_name: self.replicas.own_name.clone(),
        }))
    }

    async fn list_replicas(
        &self,
        _request: Request<v1::ListReplicasRequest>,
    ) -> Result<Response<v1::ListReplicasResponse>, Status> {
        Ok(Response::new(v1::ListReplicasResponse {
            replicas: self.replicas.listing.clone(),
        }))
    }

    async fn get_attestation(
        &self,
        request: Request<v1::GetAttestationRequest>,
    ) -> Result<Response<v1::GetAttestationResponse>, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let req = request.into_inner();
        let nonce: [u8; 32] = req.nonce.as_slice().try_into().map_err(|_| {
            convert::invalid(
                "nonce",
                format!("must be exactly 32 bytes, got {}", req.nonce.len()),
            )
        })?;
        if !self.attestor.try_acquire() {
            let (rate, burst) = self.attestor.rate_limit();
            tracing::info!(id, "get_attestation refused: rate limit");
            return Err(Status::resource_exhausted(format!(
                "too many GetAttestation calls (at most {rate} per second, bursts of {burst}); \
                 retry later"
            )));
        }
        // Evidence collection blocks (NVML, configfs-tsm, signatures): off the async runtime.
        let attestor = self.attestor.clone();
        let started = Instant::now();
        let bundle = tokio::task::spawn_blocking(move || attestor.bundle(&nonce))
            .await
            .map_err(|_| Status::unavailable("the server is shutting down"))?
            .map_err(|e| {
                tracing::error!(id, error = %e, "collecting attestation evidence failed");
                Status::internal(format!("collecting attestation evidence failed: {e}"))
            })?;
        tracing::info!(
            id,
            gpus = bundle.gpus.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "attestation bundle issued"
        );
        Ok(Response::new(v1::GetAttestationResponse { bundle: Some(bundle) }))
    }
}

/// Logs a finished generation (counts and timings only) and records its metrics.
fn log_finished(id: u64, item: Option<usize>, kind: InputKind, f: &runtime::Finished, metrics: &Metrics) {
    metrics.record_finished(f.reason, Some(&f.usage));
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
    tracing::info!(
        id,
        item,
        input = kind.name(),
        reason = f.reason.name(),
        prompt_tokens = f.usage.prompt_tokens,
        completion_tokens = f.usage.completion_tokens,
        ttft_ms = ms(f.usage.time_to_first_token),
        tpot_ms = ms(f.usage.time_per_output_token),
        error = f.error.as_deref(),
        "generation finished"
    );
}

/// Streams one request's events to the client until it finishes, the client goes away or the
/// deadline passes.
async fn forward_generate(
    id: u64,
    kind: InputKind,
    mut stream: RequestStream,
    tx: mpsc::Sender<Result<v1::GenerateResponse, Status>>,
    deadline: Option<Instant>,
    metrics: Arc<Metrics>,
) {
    let timer = tokio::time::sleep_until(deadline.unwrap_or_else(far_future));
    tokio::pin!(timer);
    loop {
        let event = tokio::select! {
            biased;
            () = tx.closed() => {
                // Dropping `stream` (on return) cancels the sequence in the engine.
                metrics.record_finished(FinishReason::Cancelled, None);
                tracing::info!(id, input = kind.name(), "client went away; generation cancelled");
                return;
            }
            () = &mut timer => {
                metrics.record_finished(FinishReason::DeadlineExceeded, None);
                tracing::info!(id, input = kind.name(), "deadline passed; generation stopped");
                let _ = tx.send(Err(deadline_status())).await;
                return;
            }
            ev = stream.recv() => ev,
        };
        match event {
            Some(Event::Token(t)) => {
                if tx.send(Ok(convert::delta(t))).await.is_err() {
                    metrics.record_finished(FinishReason::Cancelled, None);
                    tracing::info!(id, input = kind.name(), "client went away; generation cancelled");
                    return;
                }
            }
            Some(Event::Finished(f)) => {
                log_finished(id, None, kind, &f, &metrics);
                let msg = if f.reason == FinishReason::DeadlineExceeded {
                    Err(deadline_status())
                } else {
                    Ok(v1::GenerateResponse {
                        event: Some(v1::generate_response::Event::Finished(convert::finished(&f))),
                    })
                };
                let _ = tx.send(msg).await;
                return;
            }
            None => {
                metrics.record_finished(FinishReason::Error, None);
                tracing::error!(id, "the engine dropped a request without finishing it");
                let _ = tx.send(Err(engine_stopped())).await;
                return;
            }
        }
    }
}

/// One converted batch item.
#[derive(Debug)]
struct BatchItem {
    conv: convert::Converted,
    /// The item's own parameters, to name fields in errors.
    item_params: Wiped<Option<v1::GenerationParams>>,
}

impl Drop for BatchItem {
    /// Wipes the stop strings of the item's engine request (its prompt wipes itself).
    fn drop(&mut self) {
        use zeroize::Zeroize;
        let stop = &mut self.conv.request.stop.stop_strings;
        stop.iter_mut().for_each(Zeroize::zeroize);
    }
}

/// Runs a batch: submits the items in order as the queue admits them (and one item whenever none
/// is in the engine, even beyond the queue limit, so that a batch cannot starve behind new
/// calls), collects each item's events in its own task and sends every item's result as soon as
/// it finishes.
async fn run_batch(
    id: u64,
    items: Vec<BatchItem>,
    handle: RuntimeHandle,
    tx: mpsc::Sender<Result<v1::GenerateBatchResponse, Status>>,
    deadline: Option<Instant>,
    metrics: Arc<Metrics>,
) {
    let total = items.len();
    let timer = tokio::time::sleep_until(deadline.unwrap_or_else(far_future));
    tokio::pin!(timer);
    // Dropping the set (on return) aborts the collectors, whose dropped streams cancel the rest.
    let mut running: JoinSet<Result<CollectedItem, Status>> = JoinSet::new();
    let mut pending = items.into_iter().enumerate().peekable();
    // At most as many items in the engine at once as it runs sequences: enough to keep it busy,
    // while leaving the admission queue to other callers.
    let window = handle.model_info().max_seqs.max(1);
    let mut sent = 0;
    while sent < total {
        // Submit what the queue takes.
        while let Some((index, item)) = pending.peek().filter(|_| running.len() < window) {
            // A batch with nothing in the engine always gets its next item queued, even beyond
            // the queue limit: otherwise its polling loses every freed slot to new calls and it
            // starves under sustained load. Each batch keeps at most one item beyond the limit.
            let beyond_limit = running.is_empty();
            // A full queue refuses the item after validating and tokenizing it: skip that work
            // until there is room.
            if !beyond_limit && !handle.queue_has_room() {
                break;
            }
            let kind = item.conv.kind;
            match submit_to(handle.clone(), item.conv.request.clone(), beyond_limit).await {
                Ok(stream) => {
                    let index = *index;
                    running.spawn(collect_item(index, kind, stream));
                    pending.next();
                }
                Err(SubmitError::QueueFull(_)) => break,
                Err(e) => {
                    metrics.record_rejected(convert::submit_error_code(&e));
                    tracing::info!(
                        id,
                        item = index,
                        reason = refusal(&e),
                        "generate_batch item refused"
                    );
                    let site = Site::BatchItem {
                        index: *index,
                        item_params: item.item_params.as_ref(),
                    };
                    let _ = tx.send(Err(convert::submit_error(&e, kind, site))).await;
                    return;
                }
            }
        }
        // Items are left that the queue refused (the window is not full).
        let queue_was_full = pending.peek().is_some() && running.len() < window;
        tokio::select! {
            biased;
            () = tx.closed() => {
                tracing::info!(id, done = sent, total, "client went away; batch cancelled");
                return;
            }
            () = &mut timer => {
                tracing::info!(id, done = sent, total, "deadline passed; batch stopped");
                let _ = tx.send(Err(deadline_status())).await;
                return;
            }
            joined = running.join_next(), if !running.is_empty() => {
                let Some(joined) = joined else { continue };
                let (index, kind, finished, resp) = match joined {
                    Ok(Ok(item)) => item,
                    Ok(Err(status)) => {
                        tracing::error!(id, "the engine dropped a batch item without finishing it");
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    Err(_) => {
                        let _ = tx.send(Err(Status::internal("a batch item failed"))).await;
                        return;
                    }
                };
                if finished.reason == FinishReason::DeadlineExceeded {
                    let _ = tx.send(Err(deadline_status())).await;
                    return;
                }
                log_finished(id, Some(index), kind, &finished, &metrics);
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
                sent += 1;
            }
            // The queue is full of other callers' requests: try again shortly, also while other
            // items run (waiting for one of them to finish would run the batch almost serially
            // whenever the queue is contended).
            () = tokio::time::sleep(QUEUE_RETRY), if queue_was_full => {}
        }
    }
}

/// A finished batch item: its index, input kind, end and result message.
type CollectedItem = (usize, InputKind, runtime::Finished, v1::GenerateBatchResponse);

/// Collects one batch item's events into its result; fails when the engine dropped the item
/// (the engine thread failed).
async fn collect_item(
    index: usize,
    kind: InputKind,
    mut stream: RequestStream,
) -> Result<CollectedItem, Status> {
    let mut text = String::new();
    let mut tokens = Vec::new();
    let finished = loop {
        match stream.recv().await {
            Some(Event::Token(t)) => {
                tokens.push(convert::token(&t));
                text.push_str(&t.text);
            }
            Some(Event::Finished(f)) => break f,
            None => return Err(engine_stopped()),
        }
    };
    let resp = v1::GenerateBatchResponse {
        index: convert::saturate(index),
        text,
        tokens,
        finished: Some(convert::finished(&finished)),
    };
    Ok((index, kind, finished, resp))
}
