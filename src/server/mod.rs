//! The gRPC server behind `veil serve`.
//!
//! - [`service`] is the `veil.v1.Inference` service (`proto/veil/v1/inference.proto`) on
//!   tonic, streaming the engine runtime's events to clients.
//! - [`attestation`] holds the evidence collectors, the claims, the session and receipt keys
//!   and the rate limit behind `GetAttestation`.
//! - [`sealed`] opens sealed requests (key id, HPKE, timestamp window, replay cache) and seals
//!   their response streams, ending with a signed receipt.
//! - [`convert`] turns protocol messages into engine types and back, and engine validation
//!   errors into gRPC statuses naming the offending proto field.
//! - [`metrics`] keeps Prometheus metrics and serves them over plain HTTP at `/metrics`.
//! - [`shutdown`] waits for SIGINT or SIGTERM.
//! - [`hardening`] turns off core dumps and ptrace access for confidential serving.
//! - [`scrub`] wipes request and response content from memory once a call is done with it.
//!
//! Next to the inference service the server runs the standard gRPC health service
//! (`grpc.health.v1.Health`: SERVING for "" and `veil.v1.Inference` while up, NOT_SERVING while
//! draining) and server reflection (`grpc.reflection.v1` and `v1alpha`).
//!
//! If the engine thread fails (a panic), the health service reports NOT_SERVING from then on,
//! in-flight calls end with status INTERNAL and new ones get UNAVAILABLE; the server keeps
//! answering health checks so an orchestrator can replace it, and exits with an error status
//! once told to stop.
//!
//! Shutdown on SIGINT or SIGTERM: stop admitting (new calls get UNAVAILABLE), report
//! NOT_SERVING, let in-flight generations finish for up to the grace period, cancel the rest
//! (their streams end with a final message whose reason is CANCELLED), close the listeners and
//! return.

mod attestation;
mod convert;
mod hardening;
mod metrics;
mod scrub;
mod sealed;
mod service;
mod shutdown;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use veil_engine::runtime::RuntimeHandle;
use veil_proto::v1::inference_server::InferenceServer;

pub(crate) use attestation::{AttestationConfig, AttestationMode, Attestor, Collectors};
pub(crate) use hardening::harden;
pub(crate) use sealed::SealedConfig;
use service::InferenceService;
pub(crate) use service::Limits;

/// How long the transport may take to close connections once the engine has drained.
const TRANSPORT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Server settings.
#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    /// The gRPC address (port 0 picks a free port).
    pub(crate) listen: SocketAddr,
    /// The Prometheus metrics address, if any.
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// Limits beyond the engine's.
    pub(crate) limits: Limits,
    /// How long in-flight generations may run on after a shutdown signal.
    pub(crate) shutdown_grace: Duration,
    /// The server's attestation (verified at start-up).
    pub(crate) attestor: Arc<Attestor>,
    /// Sealed-call settings.
    pub(crate) sealed: SealedConfig,
    /// Whether the plaintext `Generate` and `GenerateBatch` are on.
    pub(crate) plaintext: bool,
    /// The `ListReplicas` answer (the operator's registry, with this replica's key id).
    pub(crate) replicas: Vec<veil_proto::v1::Replica>,
    /// This replica's name in the registry (empty when not set).
    pub(crate) replica_name: String,
}

/// Serves `handle` until SIGINT or SIGTERM, then shuts down gracefully (see the module docs).
/// Prints `listening on ADDR` (and `metrics on http://ADDR/metrics`) on stderr once ready.
pub(crate) async fn serve(handle: RuntimeHandle, cfg: ServerConfig) -> anyhow::Result<()> {
    let metrics = Arc::new(metrics::Metrics::new(handle.model_info()));
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let metrics_task = match cfg.metrics_listen {
        Some(maddr) => {
            let l = TcpListener::bind(maddr)
                .await
                .with_context(|| format!("binding the metrics address {maddr}"))?;
            let maddr = l.local_addr()?;
            let task = tokio::spawn(metrics::serve(l, handle.clone(), metrics.clone()));
            eprintln!("metrics on http://{maddr}/metrics");
            Some(task)
        }
        None => None,
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<InferenceServer<InferenceService>>().await;
    health.set_service_status("", ServingStatus::Serving).await;
    // An engine failure turns both health statuses to NOT_SERVING for good.
    let failure_task = {
        let health = health.clone();
        let failed = handle.failed();
        tokio::spawn(async move {
            let what = failed.await;
            tracing::error!(
                error = %what,
                "the inference engine failed: reporting NOT_SERVING; new calls get UNAVAILABLE"
            );
            eprintln!("the inference engine failed ({what}); reporting NOT_SERVING");
            health
                .set_not_serving::<InferenceServer<InferenceService>>()
                .await;
            health.set_service_status("", ServingStatus::NotServing).await;
        })
    };
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(veil_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(veil_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let inference = InferenceServer::new(InferenceService::new(
        handle.clone(),
        metrics,
        cfg.limits,
        cfg.attestor.clone(),
        cfg.sealed,
        cfg.plaintext,
        service::Replicas {
            listing: cfg.replicas.clone(),
            own_name: cfg.replica_name.clone(),
        },
    ))
    .max_decoding_message_size(cfg.limits.max_request_bytes);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = tokio::spawn(
        Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(inference)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            }),
    );
    let info = handle.model_info();
    tracing::info!(
        %addr,
        model = %info.name,
        digest = %info.digest,
        dtype = %info.dtype,
        backend = %info.backend,
        kv_blocks = info.kv_cache_blocks,
        attestation = cfg.attestor.mode(),
        confidential = cfg.attestor.confidential(),
        plaintext_rpcs = cfg.plaintext,
        replica = %cfg.replica_name,
        registry_replicas = cfg.replicas.len(),
        "serving veil.v1.Inference"
    );
    eprintln!("listening on {addr}");

    let signal = tokio::select! {
        s = shutdown::signal() => s.context("waiting for shutdown signals")?,
        r = &mut server => {
            // The transport stopped by itself: report why.
            r.context("the gRPC server task failed")??;
            anyhow::bail!("the gRPC server stopped unexpectedly");
        }
    };
    eprintln!("{signal}: shutting down (grace {:?})", cfg.shutdown_grace);
    tracing::info!(
        signal,
        grace_s = cfg.shutdown_grace.as_secs_f64(),
        "shutting down"
    );
    handle.stop_admitting();
    health
        .set_not_serving::<InferenceServer<InferenceService>>()
        .await;
    health.set_service_status("", ServingStatus::NotServing).await;
    let engine = handle.clone();
    let grace = cfg.shutdown_grace;
    tokio::task::spawn_blocking(move || engine.shutdown(grace))
        .await
        .context("stopping the engine")?;
    // Every in-flight call has its final message now; close the transport.
    let _ = stop_tx.send(());
    match tokio::time::timeout(TRANSPORT_CLOSE_TIMEOUT, &mut server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the gRPC server failed while closing"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the gRPC server task failed while closing"),
        Err(_) => {
            tracing::warn!("connections still open after {TRANSPORT_CLOSE_TIMEOUT:?}; closing them");
            server.abort();
        }
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    failure_task.abort();
    eprintln!("shut down");
    if let Some(what) = handle.failure() {
        anyhow::bail!("the inference engine had failed: {what}");
    }
    Ok(())
}
