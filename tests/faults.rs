//! Faults end to end: the real `veil serve` (simulated attestation, f32) with faults injected
//! from outside, and the process hardening of confidential serving.
//!
//! - `vanishing_clients`: plaintext streams dropped mid-generation, sealed streams dropped,
//!   a connection closed, and a `veil generate --server` client process killed with SIGKILL
//!   mid-stream: the server cancels exactly those sequences, frees their KV blocks (back to 0),
//!   and the clients that stayed get complete results (sealed ones with verified receipts).
//! - `sigterm_mid_load`: SIGTERM while sealed and plaintext streams and a sealed batch are in
//!   flight: health turns NOT_SERVING, new sealed calls get UNAVAILABLE (sealed), every
//!   in-flight stream ends with its final message (CANCELLED after the grace period) and, for
//!   sealed ones, a verified receipt; the process exits 0. (tests/server.rs covers one plaintext
//!   stream.)
//! - `corrupted_model_refused`: a copy of the model with one byte of its weights flipped is
//!   refused at load, naming the digest recorded at pull and the digest of the files; a
//!   `--model-digest` pin that does not match is refused likewise.
//! - `kv_exhaustion_preempts`: a KV cache of a few blocks and many concurrent long requests:
//!   sequences are preempted and recomputed, and every request completes with the tokens it
//!   gets alone (greedy). The server runs with the correct `--model-digest` pin.
//! - `engine_panic_reports_not_serving`: the engine thread panics mid-load (test-only fault
//!   injection, `VEIL_FAULT_PANIC_AFTER_STEPS`): in-flight plaintext, sealed and batch calls
//!   fail with INTERNAL instead of hanging, health turns NOT_SERVING, new calls get
//!   UNAVAILABLE, ModelInfo still answers, and the process exits non-zero on SIGTERM.
//! - `hardening`: `veil serve --harden` (what a confidential server does by itself) runs with
//!   a core-file size limit of 0 (soft and hard, from another process's view of
//!   /proc/PID/limits) and is not dumpable: another process of the same unprivileged user (the
//!   servers and probes run as `nobody` when the test runs as root) cannot open its
//!   /proc/PID/environ or /proc/PID/mem, while it can open those of a server without --harden.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::server::Server;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use veil_client::{Client, ClientError, Policy, SealedStream};
use veil_proto::v1::generate_request::Input;
use veil_proto::v1::generate_response::Event;
use veil_proto::v1::inference_client::InferenceClient;
use veil_proto::v1::{
    self, FinishReason, GenerateBatchRequest, GenerateRequest, GenerateResponse, GenerationParams,
    ModelInfoRequest,
};

fn greedy(max_tokens: u32) -> Option<GenerationParams> {
    Some(GenerationParams {
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..Default::default()
    })
}

fn chat(text: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        input: Some(Input::Chat(v1::ChatInput {
            messages: vec![v1::ChatMessage {
                role: "user".into(),
                content: text.into(),
            }],
        })),
        params: greedy(max_tokens),
    }
}

fn long_story(max_tokens: u32) -> GenerateRequest {
    chat(
        "Write a long story about a dragon who learns to cook.",
        max_tokens,
    )
}

fn lenient() -> Policy {
    Policy {
        allow_simulated: true,
        ..Policy::default()
    }
}

/// `--attestation simulated`, f32, 2 threads, metrics on, then `extra`.
fn args(extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--attestation",
        "simulated",
        "--metrics-listen",
        "127.0.0.1:0",
        "--dtype",
        "f32",
        "--threads",
        "2",
    ]
    .map(String::from)
    .to_vec();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// A whole plaintext `Generate` result: token ids and the final message.
async fn drain(
    mut stream: tonic::Streaming<GenerateResponse>,
) -> Result<(Vec<u32>, v1::Finished), tonic::Status> {
    let mut ids = Vec::new();
    while let Some(m) = stream.message().await? {
        match m.event.unwrap() {
            Event::Delta(d) => ids.extend(d.tokens.iter().map(|t| t.id)),
            Event::Finished(f) => {
                assert!(
                    stream.message().await?.is_none(),
                    "nothing after the final message"
                );
                return Ok((ids, f));
            }
        }
    }
    panic!("the stream ended without a final message");
}

/// A whole sealed `Generate` result (receipt verified), or the error.
async fn drain_sealed(
    mut stream: SealedStream<GenerateResponse>,
) -> Result<(Vec<u32>, v1::Finished), ClientError> {
    let (mut ids, mut finished) = (Vec::new(), None);
    while let Some(m) = stream.message().await? {
        match m.event.unwrap() {
            Event::Delta(d) => ids.extend(d.tokens.iter().map(|t| t.id)),
            Event::Finished(f) => finished = Some(f),
        }
    }
    stream
        .receipt()
        .expect("a receipt")
        .verify()
        .expect("the receipt verifies");
    Ok((ids, finished.expect("a final message")))
}

fn reason(f: &v1::Finished) -> FinishReason {
    FinishReason::try_from(f.reason).unwrap()
}

/// Waits until the health service reports `want` for both "" and `veil.v1.Inference`.
async fn wait_health(channel: Channel, want: ServingStatus, limit: Duration) {
    let mut health = HealthClient::new(channel);
    let t = Instant::now();
    for service in ["", "veil.v1.Inference"] {
        loop {
            let r = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("health check")
                .into_inner();
            if r.status() == want {
                break;
            }
            assert!(
                t.elapsed() < limit,
                "health of {service:?} stuck at {:?}",
                r.status()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanishing_clients() {
    let server = Server::spawn(&args(&["--kv-cache-mb", "64"]));
    let channel = server.channel().await;
    let mut rpc = InferenceClient::new(channel.clone());
    let mut sealed = Client::with_channel(channel.clone(), lenient());
    sealed.attest().await.unwrap();
    let cancelled_before = server.metric("veil_requests_total{finish_reason=\"cancelled\"}");

    // Clients that vanish: plaintext streams on the shared channel, one on its own connection,
    // sealed streams, and a client process.
    let mut gone_plain = Vec::new();
    for _ in 0..2 {
        gone_plain.push(rpc.generate(long_story(400)).await.unwrap().into_inner());
    }
    let own = server.channel().await;
    let mut own_rpc = InferenceClient::new(own.clone());
    let mut gone_conn = own_rpc.generate(long_story(400)).await.unwrap().into_inner();
    let mut gone_sealed = Vec::new();
    for _ in 0..2 {
        gone_sealed.push(sealed.generate(&long_story(400)).await.unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "allow_simulated = true\n").unwrap();
    let mut process = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["generate", "--server", &server.addr, "--policy"])
        .arg(&policy)
        .args([
            "--chat",
            "--prompt",
            "Write a long story about a lighthouse.",
            "--max-tokens",
            "400",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The vanishing ones are generating: 5 streams and the process.
    server.wait_metric("veil_running_sequences", Duration::from_secs(60), |v| v == 6.0);

    // Clients that stay: one plaintext, one sealed, one batch.
    let stay_plain = rpc
        .generate(chat("Name three colors.", 24))
        .await
        .unwrap()
        .into_inner();
    let stay_sealed = sealed.generate(&chat("What is two plus two?", 24)).await.unwrap();
    let mut stay_batch = rpc
        .generate_batch(GenerateBatchRequest {
            items: vec![chat("Say hello.", 16), chat("Count to five.", 16)],
            params: None,
        })
        .await
        .unwrap()
        .into_inner();
    for s in &mut gone_plain {
        s.message().await.unwrap().unwrap();
    }
    gone_conn.message().await.unwrap().unwrap();
    for s in &mut gone_sealed {
        s.message().await.unwrap().unwrap();
    }
    let used = server.metric("veil_kv_blocks_used");
    assert!(used > 0.0);

    // Vanish: drop streams, close a connection, SIGKILL the process.
    drop(gone_plain);
    drop(gone_sealed);
    drop(gone_conn);
    drop(own_rpc);
    drop(own);
    process.kill().unwrap();
    process.wait().unwrap();
    server.wait_metric("veil_running_sequences", Duration::from_secs(10), |v| v <= 4.0);
    server.wait_metric(
        "veil_requests_total{finish_reason=\"cancelled\"}",
        Duration::from_secs(10),
        |v| v == cancelled_before + 6.0,
    );

    // The others finish normally.
    let (ids, f) = drain(stay_plain).await.unwrap();
    assert!(matches!(reason(&f), FinishReason::Stop | FinishReason::Length) && !ids.is_empty());
    let (ids, f) = drain_sealed(stay_sealed).await.unwrap();
    assert!(matches!(reason(&f), FinishReason::Stop | FinishReason::Length) && !ids.is_empty());
    let mut items = 0;
    while let Some(item) = stay_batch.message().await.unwrap() {
        let f = item.finished.unwrap();
        assert!(matches!(reason(&f), FinishReason::Stop | FinishReason::Length));
        items += 1;
    }
    assert_eq!(items, 2);

    // Nothing is left: every KV block is free, and the server still serves.
    server.wait_metric("veil_kv_blocks_used", Duration::from_secs(10), |v| v == 0.0);
    server.wait_metric("veil_running_sequences", Duration::from_secs(10), |v| v == 0.0);
    assert_eq!(server.metric("veil_queue_depth"), 0.0);
    let (ids, _) = drain(rpc.generate(chat("Hi", 4)).await.unwrap().into_inner())
        .await
        .unwrap();
    assert_eq!(ids.len(), 4);
    assert_eq!(server.metric("veil_requests_total{finish_reason=\"error\"}"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_load() {
    let mut server = Server::spawn(&args(&["--kv-cache-mb", "64", "--shutdown-grace", "3"]));
    let channel = server.channel().await;
    let mut rpc = InferenceClient::new(channel.clone());
    let mut sealed = Client::with_channel(channel.clone(), lenient());
    sealed.attest().await.unwrap();

    let mut long_sealed = Vec::new();
    for _ in 0..3 {
        long_sealed.push(sealed.generate(&long_story(1000)).await.unwrap());
    }
    let mut long_plain = rpc.generate(long_story(1000)).await.unwrap().into_inner();
    let mut batch = sealed
        .generate_batch(&GenerateBatchRequest {
            items: vec![chat("Say hi.", 2), long_story(1000), long_story(1000)],
            params: None,
        })
        .await
        .unwrap();
    let short = sealed.generate(&chat("Name a color.", 6)).await.unwrap();
    // Every long stream has started generating.
    let mut first = Vec::new();
    for s in &mut long_sealed {
        first.push(s.message().await.unwrap().unwrap());
    }
    long_plain.message().await.unwrap().unwrap();
    server.wait_metric("veil_running_sequences", Duration::from_secs(30), |v| v >= 6.0);
    server.terminate();

    // Draining: NOT_SERVING, and a new sealed call is refused (inside the sealed stream).
    wait_health(
        server.channel().await,
        ServingStatus::NotServing,
        Duration::from_secs(2),
    )
    .await;
    match sealed.generate(&chat("Hi", 2)).await {
        Ok(s) => match drain_sealed(s).await {
            Err(ClientError::Server { code, .. }) => assert_eq!(code, Code::Unavailable),
            other => panic!("expected UNAVAILABLE, got {other:?}"),
        },
        Err(e) => assert_eq!(e.code(), Some(Code::Unavailable), "{e}"),
    }

    // In flight: every stream ends with its final message and, sealed, a verified receipt.
    let (ids, f) = drain_sealed(short).await.unwrap();
    assert!(
        matches!(reason(&f), FinishReason::Stop | FinishReason::Length),
        "{f:?}"
    );
    assert!(!ids.is_empty());
    for s in long_sealed {
        let (ids, f) = drain_sealed(s).await.unwrap();
        assert_eq!(reason(&f), FinishReason::Cancelled, "{f:?}");
        assert!(!ids.is_empty());
    }
    let (_, f) = drain(long_plain).await.unwrap();
    assert_eq!(reason(&f), FinishReason::Cancelled);
    let mut reasons = vec![None; 3];
    while let Some(item) = batch.message().await.unwrap() {
        reasons[item.index as usize] = Some(reason(&item.finished.unwrap()));
    }
    batch.receipt().unwrap().verify().unwrap();
    assert!(
        matches!(reasons[0], Some(FinishReason::Stop | FinishReason::Length)),
        "{reasons:?}"
    );
    assert_eq!(reasons[1..], [Some(FinishReason::Cancelled); 2], "{reasons:?}");

    drop((rpc, sealed, channel));
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}:\n{}", server.log());
    assert!(server.log().contains("SIGTERM: shutting down"));
}

/// Runs `veil serve` on `model` with `extra` arguments, expecting it to refuse to start; its
/// stderr.
fn refused_to_start(model: &std::path::Path, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["serve", "--listen", "127.0.0.1:0", "--model"])
        .arg(model)
        .args(args(extra))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the server started:\n{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
    stderr
}

#[test]
fn corrupted_model_refused() {
    let model = common::model_dir();
    let recorded = veil_engine::store::ModelMetadata::read(&model)
        .expect("the cached model records its digest (veil-model.json)")
        .digest;
    // A copy of the model with one byte of the weights flipped, past the header.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("corrupted");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(&model).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let weights = copy.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&weights, &bytes).unwrap();
    drop(bytes);
    let actual = veil_engine::digest::model_digest(&copy).unwrap().to_string();
    assert_ne!(actual, recorded);

    let stderr = refused_to_start(&copy, &[]);
    assert!(stderr.contains("model digest mismatch"), "{stderr}");
    assert!(stderr.contains(&recorded) && stderr.contains(&actual), "{stderr}");
    assert!(stderr.contains("veil-model.json"), "{stderr}");

    // A pin the intact model does not match is refused too, naming both digests.
    let pin = "00".repeat(32);
    let stderr = refused_to_start(&model, &["--model-digest", &pin]);
    assert!(stderr.contains("model digest mismatch"), "{stderr}");
    assert!(stderr.contains(&recorded) && stderr.contains(&pin), "{stderr}");
    assert!(stderr.contains("pinned"), "{stderr}");
    // A malformed pin is a usage error.
    let stderr = refused_to_start(&model, &["--model-digest", "xyz"]);
    assert!(stderr.contains("--model-digest"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_exhaustion_preempts() {
    let digest = veil_engine::store::ModelMetadata::read(&common::model_dir())
        .unwrap()
        .digest;
    // A handful of 16-position blocks: two of these sequences do not fit at once.
    let server = Server::spawn(&args(&["--kv-cache-mb", "4", "--model-digest", &digest]));
    let blocks = server.metric("veil_kv_blocks_total");
    assert!(blocks <= 8.0, "{blocks} blocks");
    let channel = server.channel().await;
    let mut rpc = InferenceClient::new(channel.clone());
    // Short text prompts: several fit at first (one block each), then they grow and collide.
    let prompts = [
        "Once upon a time",
        "The capital of France is",
        "My favourite food is",
    ];
    let max_tokens = 40;
    let text = |p: &str| GenerateRequest {
        input: Some(Input::Prompt(p.into())),
        params: greedy(max_tokens),
    };
    // Each prompt alone first: the reference tokens.
    let mut solo = Vec::new();
    for p in prompts {
        let (ids, f) = drain(rpc.generate(text(p)).await.unwrap().into_inner())
            .await
            .unwrap();
        assert!(matches!(reason(&f), FinishReason::Stop | FinishReason::Length));
        solo.push(ids);
    }
    assert_eq!(server.metric("veil_preemptions_total"), 0.0);

    // Then 12 at once, plaintext and sealed.
    let mut sealed = Client::with_channel(channel.clone(), lenient());
    sealed.attest().await.unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..12 {
        let req = text(prompts[i % prompts.len()]);
        if i % 2 == 0 {
            let mut c = rpc.clone();
            calls.spawn(async move {
                (
                    i,
                    drain(c.generate(req).await.unwrap().into_inner()).await.unwrap(),
                )
            });
        } else {
            let mut c = sealed.clone();
            calls.spawn(async move { (i, drain_sealed(c.generate(&req).await.unwrap()).await.unwrap()) });
        }
    }
    while let Some(r) = calls.join_next().await {
        let (i, (ids, f)) = r.unwrap();
        assert!(
            matches!(reason(&f), FinishReason::Stop | FinishReason::Length),
            "{f:?}"
        );
        assert_eq!(
            ids,
            solo[i % prompts.len()],
            "request {i} differs from its solo run"
        );
    }
    let preemptions = server.metric("veil_preemptions_total");
    assert!(preemptions > 0.0, "no preemption with {blocks} blocks");
    eprintln!(
        "kv_exhaustion_preempts: {blocks} KV blocks, 12 concurrent requests, {preemptions} preemptions"
    );
    server.wait_metric("veil_kv_blocks_used", Duration::from_secs(5), |v| v == 0.0);
    assert_eq!(server.metric("veil_requests_total{finish_reason=\"error\"}"), 0.0);
    assert!(server.log().contains(&digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_panic_reports_not_serving() {
    let steps = 80;
    let mut server = Server::try_spawn_with(&args(&["--kv-cache-mb", "64"]), "info", |cmd| {
        cmd.env("VEIL_FAULT_PANIC_AFTER_STEPS", steps.to_string());
    })
    .unwrap_or_else(|log| panic!("the server did not start:\n{log}"));
    assert!(server.log().contains("fault injection"), "{}", server.log());
    let channel = server.channel().await;
    let mut rpc = InferenceClient::new(channel.clone());
    let mut sealed = Client::with_channel(channel.clone(), lenient());
    sealed.attest().await.unwrap();
    wait_health(channel.clone(), ServingStatus::Serving, Duration::from_secs(1)).await;

    // In flight when the engine dies: plaintext, sealed and a batch, all longer than the steps.
    let plain = rpc.generate(long_story(1000)).await.unwrap().into_inner();
    let sealed_stream = sealed.generate(&long_story(1000)).await.unwrap();
    let mut batch = rpc
        .generate_batch(GenerateBatchRequest {
            items: vec![long_story(1000), long_story(1000)],
            params: None,
        })
        .await
        .unwrap()
        .into_inner();
    let limit = Duration::from_secs(60);
    let s = tokio::time::timeout(limit, drain(plain))
        .await
        .expect("no hang")
        .unwrap_err();
    assert_eq!(s.code(), Code::Internal, "{s:?}");
    assert!(s.message().contains("engine stopped unexpectedly"), "{s:?}");
    match tokio::time::timeout(limit, drain_sealed(sealed_stream))
        .await
        .expect("no hang")
    {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, Code::Internal, "{message}");
            assert!(message.contains("engine stopped unexpectedly"), "{message}");
        }
        other => panic!("expected a sealed INTERNAL, got {other:?}"),
    }
    let s = tokio::time::timeout(limit, async {
        loop {
            match batch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the batch ended without an error"),
                Err(s) => break s,
            }
        }
    })
    .await
    .expect("no hang");
    assert_eq!(s.code(), Code::Internal, "{s:?}");

    // Health says NOT_SERVING; new calls are refused with UNAVAILABLE; ModelInfo still answers.
    wait_health(channel.clone(), ServingStatus::NotServing, Duration::from_secs(5)).await;
    let s = rpc.generate(chat("Hi", 2)).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("engine failed"), "{s:?}");
    match sealed.generate(&chat("Hi", 2)).await {
        Ok(st) => match drain_sealed(st).await {
            Err(ClientError::Server { code, .. }) => assert_eq!(code, Code::Unavailable),
            other => panic!("expected UNAVAILABLE, got {other:?}"),
        },
        Err(e) => panic!("expected a sealed UNAVAILABLE, got {e}"),
    }
    let mut b = rpc
        .generate_batch(GenerateBatchRequest {
            items: vec![chat("Hi", 2)],
            params: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.message().await.unwrap_err().code(), Code::Unavailable);
    rpc.model_info(ModelInfoRequest {}).await.unwrap();
    assert_eq!(server.metric("veil_kv_blocks_used"), 0.0);
    assert_eq!(server.metric("veil_running_sequences"), 0.0);
    let log = server.log();
    assert!(
        log.contains(&format!(
            "fault injection: VEIL_FAULT_PANIC_AFTER_STEPS={steps} reached"
        )),
        "{log}"
    );
    assert!(log.contains("reporting NOT_SERVING"), "{log}");

    // Told to stop, it exits with an error status that says why.
    drop((rpc, sealed, channel));
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "exit status {status:?}");
    assert!(
        server.log().contains("the inference engine had failed"),
        "{}",
        server.log()
    );
}

/// Raises the soft core-file size limit to the hard one in a child about to exec, so that
/// the server's hardening visibly lowers it.
fn raise_core_limit(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls getrlimit and
    // setrlimit on a local struct, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_CORE, &mut lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_CORE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The soft and hard "Max core file size" of a process, from /proc/PID/limits.
fn core_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .to_owned();
    let mut f = line["Max core file size".len()..].split_whitespace();
    (f.next().unwrap().to_owned(), f.next().unwrap().to_owned())
}

/// The user the hardening test runs servers and probes as: when this test runs as root,
/// `nobody` (65534), an unprivileged user like a service account, since root reads every
/// process's /proc files whether or not it is dumpable; otherwise the current user.
fn service_user() -> Option<(u32, u32)> {
    // SAFETY: `geteuid` has no preconditions.
    (unsafe { libc::geteuid() } == 0).then_some((65534, 65534))
}

/// Whether another process of the service user can open `path` (a file in a server's /proc
/// directory) for reading.
fn same_user_can_open(path: &str) -> bool {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "exec 3< \"$1\"", "sh", path])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some((uid, gid)) = service_user() {
        cmd.uid(uid).gid(gid);
    }
    cmd.status().unwrap().success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening() {
    // The model, readable by the service user: hard links (or copies) in a world-readable
    // directory.
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for e in std::fs::read_dir(common::model_dir()).unwrap() {
        let e = e.unwrap();
        let to = model.join(e.file_name());
        if std::fs::hard_link(e.path(), &to).is_err() {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
    use std::os::unix::fs::PermissionsExt;
    for dir in [tmp.path(), &model] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let start = |extra: &[&str]| {
        Server::try_spawn_model(&model, &args(extra), "info", |cmd| {
            if let Some((uid, gid)) = service_user() {
                cmd.uid(uid).gid(gid);
            }
            raise_core_limit(cmd);
        })
        .unwrap_or_else(|log| panic!("the server did not start:\n{log}"))
    };
    let plain = start(&["--kv-cache-mb", "16"]);
    let hard = start(&["--kv-cache-mb", "16", "--harden"]);
    let log = hard.log();
    assert!(log.contains("hardened the process"), "{log}");
    assert!(plain.log().contains("process not hardened"), "{}", plain.log());

    // Core dumps: the limit the server started with, and 0/0 once hardened.
    let (soft, _) = core_limits(plain.pid());
    assert_ne!(soft, "0", "the test could not raise the core limit");
    assert_eq!(core_limits(hard.pid()), ("0".to_owned(), "0".to_owned()));

    // Not dumpable: another process of the same user cannot open its memory or environment,
    // which it can for the server without --harden.
    for file in ["environ", "mem"] {
        let of = |s: &Server| format!("/proc/{}/{file}", s.pid());
        assert!(
            same_user_can_open(&of(&plain)),
            "the control server's {file} cannot be opened"
        );
        assert!(
            !same_user_can_open(&of(&hard)),
            "the hardened server's {file} can be opened"
        );
    }

    // It still serves.
    let mut rpc = hard.client().await;
    let (ids, _) = drain(rpc.generate(chat("Hi", 3)).await.unwrap().into_inner())
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
}
