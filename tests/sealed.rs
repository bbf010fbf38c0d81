//! Sealed calls end to end: the real `veil serve` (simulated attestation, f32) and the
//! `veil-client` library over gRPC.
//!
//! - `sealed_calls`: ModelInfo and plaintext RPCs turned off; the strict policy refuses
//!   simulated evidence; sealed `Generate` gives the reference greedy tokens with a receipt
//!   over the attested model and bundle; sealed `GenerateBatch` equals solo calls; errors travel
//!   sealed; concurrent sessions do not mix; every tampered request field, a wrong key id (with
//!   the `veil-error: unknown-key-id` marker), a `veil-key-id` header naming another key, a
//!   request sealed for the other RPC, a replay and stale timestamps are refused by the server;
//!   tampered, reordered, dropped, duplicated, spliced, truncated and extended response streams
//!   are refused by the client; `veil generate --server` and `veil chat --server` show what was
//!   verified; `veil attest receipt` checks a saved receipt and refuses a forged one.
//! - `marker_never_leaks`: the server at the most verbose log level, a recording TCP proxy in
//!   front of it; sealed requests carrying a unique marker (prompt, system message, stop string,
//!   an invalid role that the error message quotes, a batch) and completions asked to repeat
//!   it. The marker appears in no log line, no metric, no frame on the wire in either
//!   direction, and no completion text crosses the wire in plaintext; the same marker sent
//!   through the plaintext RPC is found on the wire (the check can fail).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use common::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;
use tonic::transport::Channel;
use veil_client::{Attested, Client, ClientError, OpenedChunk, Policy, ResponseOpener, SealedRpc};
use veil_proto::v1::generate_request::Input;
use veil_proto::v1::generate_response::Event;
use veil_proto::v1::sealed_payload::Body;
use veil_proto::v1::{
    self, GenerateBatchRequest, GenerateRequest, GenerationParams, ModelInfoRequest, SealedRequest,
};
use veil_seal::SealError;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn lenient() -> Policy {
    Policy {
        allow_simulated: true,
        ..Policy::default()
    }
}

fn greedy(max_tokens: u32) -> Option<GenerationParams> {
    Some(GenerationParams {
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..Default::default()
    })
}

fn tokens_request(ids: &[u32], max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        input: Some(Input::Tokens(v1::TokenInput {
            token_ids: ids.to_vec(),
        })),
        params: greedy(max_tokens),
    }
}

fn chat_request(messages: &[(&str, &str)], params: Option<GenerationParams>) -> GenerateRequest {
    GenerateRequest {
        input: Some(Input::Chat(v1::ChatInput {
            messages: messages
                .iter()
                .map(|(role, content)| v1::ChatMessage {
                    role: (*role).into(),
                    content: (*content).into(),
                })
                .collect(),
        })),
        params,
    }
}

/// A sealed generation's token ids and text.
#[derive(Debug, Clone, PartialEq)]
struct Completion {
    ids: Vec<u32>,
    text: String,
}

async fn sealed_generate(client: &mut Client, req: &GenerateRequest) -> Result<Completion, ClientError> {
    let mut stream = client.generate(req).await?;
    let mut c = Completion {
        ids: Vec::new(),
        text: String::new(),
    };
    let mut finished = false;
    while let Some(msg) = stream.message().await? {
        match msg.event {
            Some(Event::Delta(d)) => {
                c.ids.extend(d.tokens.iter().map(|t| t.id));
                c.text.push_str(&d.text);
            }
            Some(Event::Finished(_)) => finished = true,
            None => panic!("empty event"),
        }
    }
    assert!(finished, "no final message");
    let receipt = stream.receipt().expect("a receipt after the stream");
    receipt.verify().expect("the receipt verifies");
    Ok(c)
}

/// Seals `req` for `rpc` by hand (at `timestamp`) and returns the wire message and its opener.
fn seal(attested: &Attested, rpc: SealedRpc, req: &[u8], timestamp: i64) -> (SealedRequest, ResponseOpener) {
    attested.seal(rpc, req, timestamp).unwrap()
}

/// Sends a sealed request and collects its raw chunks.
async fn chunks(
    client: &mut Client,
    rpc: SealedRpc,
    wire: SealedRequest,
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let mut stream = client.send_sealed(rpc, wire).await?;
    let mut out = Vec::new();
    while let Some(c) = stream.message().await? {
        out.push(c.chunk);
    }
    Ok(out)
}

/// Opens chunks in order with `opener`: the payloads, or the first error; `Ok` only when the
/// final chunk (with a valid receipt) was opened and nothing followed it.
fn open_all(opener: &mut ResponseOpener, chunks: &[Vec<u8>]) -> Result<Vec<Body>, ClientError> {
    let mut bodies = Vec::new();
    for c in chunks {
        match opener.open(c)? {
            OpenedChunk::Payload(b) => bodies.push(b),
            OpenedChunk::End(receipt) => receipt.verify()?,
        }
    }
    opener.finish()?;
    Ok(bodies)
}

fn sealed_err(r: Result<Vec<Body>, ClientError>) -> SealError {
    match r {
        Err(ClientError::Sealed(e)) => e,
        other => panic!("expected a sealed-stream rejection, got {other:?}"),
    }
}

async fn check_plaintext_off_and_policy(server: &Server) {
    let mut raw = server.client().await;
    let info = raw.model_info(ModelInfoRequest {}).await.unwrap().into_inner();
    assert!(!info.plaintext_enabled && info.sealed_enabled);
    assert!(!info.confidential);
    let s = raw
        .generate(tokens_request(&[1, 2, 3], 2))
        .await
        .expect_err("plaintext Generate is off");
    assert_eq!(s.code(), Code::Unimplemented, "{s:?}");
    assert!(s.message().contains("SealedGenerate"), "{}", s.message());
    let s = raw
        .generate_batch(GenerateBatchRequest {
            items: vec![tokens_request(&[1, 2], 2)],
            params: None,
        })
        .await
        .expect_err("plaintext GenerateBatch is off");
    assert_eq!(s.code(), Code::Unimplemented);

    let mut strict = Client::with_channel(server.channel().await, Policy::default());
    match strict.attest().await {
        Err(ClientError::Attestation(veil_attest::Error::SimulatedNotAllowed(_))) => {}
        other => panic!("the strict policy must refuse simulated evidence: {other:?}"),
    }
    // Nothing is sent without a verified pin.
    assert!(strict.generate(&tokens_request(&[1, 2], 2)).await.is_err());
}

async fn check_round_trip_and_receipt(server: &Server) {
    let mut client = Client::with_channel(server.channel().await, lenient());
    let digest = {
        let info = client.model_info().await.unwrap();
        info.digest
    };
    let attested = client.attest().await.unwrap().clone();
    assert!(!attested.confidential());
    assert_eq!(hex::encode(attested.model_digest()), digest);
    let lines = attested.describe().join("\n");
    assert!(
        lines.contains("NOT CONFIDENTIAL") && lines.contains(&digest),
        "{lines}"
    );

    for case in common::cases() {
        let n = case.greedy_new_ids.len() as u32;
        let mut stream = client
            .generate(&tokens_request(&case.input_ids, n))
            .await
            .unwrap();
        let mut ids = Vec::new();
        while let Some(msg) = stream.message().await.unwrap() {
            if let Some(Event::Delta(d)) = msg.event {
                ids.extend(d.tokens.iter().map(|t| t.id));
            }
        }
        assert_eq!(
            ids, case.greedy_new_ids,
            "sealed greedy tokens of {:?}",
            case.prompt
        );
        let r = stream.receipt().unwrap();
        r.verify().unwrap();
        assert_eq!(r.claims.model_digest, attested.model_digest());
        assert_eq!(r.claims.bundle_digest, attested.bundle_digest());
        assert_eq!(r.public_key, attested.receipt_key());
    }

    // An error after opening travels sealed: the call's status is OK, the client reports it.
    let bad = GenerateRequest {
        params: Some(GenerationParams {
            top_p: Some(2.0),
            ..Default::default()
        }),
        ..tokens_request(&[1, 2, 3], 2)
    };
    match sealed_generate(&mut client, &bad).await {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, Code::InvalidArgument);
            assert!(message.starts_with("params.top_p"), "{message}");
        }
        other => panic!("expected a sealed INVALID_ARGUMENT: {other:?}"),
    }
    // The raw stream: one error payload, then the receipt.
    let (wire, mut opener) = seal(
        &attested,
        SealedRpc::Generate,
        &prost::Message::encode_to_vec(&bad),
        now(),
    );
    let raw = chunks(&mut client, SealedRpc::Generate, wire).await.unwrap();
    let bodies = open_all(&mut opener, &raw).unwrap();
    assert!(matches!(bodies.as_slice(), [Body::Error(e)] if e.code == Code::InvalidArgument as i32));
}

async fn check_batch_and_concurrency(server: &Server) {
    let mut client = Client::with_channel(server.channel().await, lenient());
    let prompts = [
        "Tell me about the moon.",
        "What is two plus two?",
        "Name a color.",
        "Write a haiku about rain.",
        "Say hello in French.",
        "Why is the sky blue?",
    ];
    let reqs: Vec<_> = prompts
        .iter()
        .map(|p| chat_request(&[("user", p)], greedy(12)))
        .collect();
    let mut solo = Vec::new();
    for r in &reqs {
        solo.push(sealed_generate(&mut client, r).await.unwrap());
    }
    // Concurrent sealed sessions on one channel and on separate clients: nothing mixes.
    let mut tasks = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let mut c = if i % 2 == 0 {
            client.clone()
        } else {
            Client::with_channel(server.channel().await, lenient())
        };
        let r = r.clone();
        tasks.push(tokio::spawn(
            async move { sealed_generate(&mut c, &r).await.unwrap() },
        ));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), solo[i], "concurrent sealed session {i}");
    }

    // A sealed batch gives each item's solo result.
    let batch = GenerateBatchRequest {
        items: reqs[..3].to_vec(),
        params: None,
    };
    let mut stream = client.generate_batch(&batch).await.unwrap();
    let mut got = vec![None; 3];
    while let Some(item) = stream.message().await.unwrap() {
        let i = item.index as usize;
        got[i] = Some(item.tokens.iter().map(|t| t.id).collect::<Vec<_>>());
    }
    stream.receipt().unwrap().verify().unwrap();
    for i in 0..3 {
        assert_eq!(got[i].as_ref(), Some(&solo[i].ids), "batch item {i}");
    }
}

async fn check_request_attacks(server: &Server) {
    let mut client = Client::with_channel(server.channel().await, lenient());
    let attested = client.attest().await.unwrap().clone();
    let req = prost::Message::encode_to_vec(&tokens_request(&[1, 2, 3], 2));
    let refused = |r: Result<Vec<Vec<u8>>, tonic::Status>| r.expect_err("the server must refuse it");

    // Tampering with each field of the request.
    let (good, _) = seal(&attested, SealedRpc::Generate, &req, now());
    let mut t = good.clone();
    t.key_id[0] ^= 1;
    let s = refused(chunks(&mut client, SealedRpc::Generate, t).await);
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("fresh attestation"), "{}", s.message());
    // Marked as the one status that makes clients re-attest and re-seal.
    assert!(veil_client::routing::is_unknown_key_id(&s), "{s:?}");

    // The routing header must name the request's own key (send_sealed sets it right).
    for (header, why) in [
        ("0000000000000000", "names key 0000000000000000"),
        ("xyz", "hex digits"),
        ("00", "hex digits"),
    ] {
        let mut call = tonic::Request::new(good.clone());
        call.metadata_mut().insert("veil-key-id", header.parse().unwrap());
        let s = client.rpc().sealed_generate(call).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{header}: {s:?}");
        assert!(s.message().starts_with("veil-key-id: "), "{}", s.message());
        assert!(s.message().contains(why), "{}", s.message());
    }
    for field in ["encapsulated_key", "ciphertext", "bundle_digest"] {
        let mut t = good.clone();
        match field {
            "encapsulated_key" => t.encapsulated_key[5] ^= 1,
            "ciphertext" => {
                let n = t.ciphertext.len();
                t.ciphertext[n / 2] ^= 1;
            }
            _ => t.bundle_digest[0] ^= 1,
        }
        let s = refused(chunks(&mut client, SealedRpc::Generate, t).await);
        assert_eq!(s.code(), Code::InvalidArgument, "{field}: {s:?}");
    }
    let mut t = good.clone();
    t.encapsulated_key.pop();
    let s = refused(chunks(&mut client, SealedRpc::Generate, t).await);
    assert_eq!(s.code(), Code::InvalidArgument);
    let mut t = good.clone();
    t.key_id.push(0);
    let s = refused(chunks(&mut client, SealedRpc::Generate, t).await);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().starts_with("key_id"), "{}", s.message());
    let mut t = good.clone();
    t.bundle_digest.truncate(31);
    let s = refused(chunks(&mut client, SealedRpc::Generate, t).await);
    assert!(s.message().starts_with("bundle_digest"), "{}", s.message());
    // None of the tampered copies was remembered: the original still opens, once.
    chunks(&mut client, SealedRpc::Generate, good.clone())
        .await
        .unwrap();
    let s = refused(chunks(&mut client, SealedRpc::Generate, good).await);
    assert_eq!(s.code(), Code::AlreadyExists, "replay: {s:?}");

    // A request sealed for SealedGenerate does not open as SealedGenerateBatch.
    let (wire, _) = seal(&attested, SealedRpc::Generate, &req, now());
    let s = refused(chunks(&mut client, SealedRpc::GenerateBatch, wire).await);
    assert_eq!(s.code(), Code::InvalidArgument);

    // Sealed to another key, named by its own id: not this server's key.
    let other = veil_seal::SessionKeyPair::generate();
    let (parts, _) = veil_seal::seal_request(
        &other.public_key_bytes(),
        other.key_id(),
        &req,
        now(),
        &SealedRpc::Generate.info(&attested.bundle_digest()),
    )
    .unwrap();
    let wire = SealedRequest {
        key_id: parts.key_id.to_vec(),
        encapsulated_key: parts.encapsulated_key,
        ciphertext: parts.ciphertext,
        bundle_digest: attested.bundle_digest().to_vec(),
    };
    let s = refused(chunks(&mut client, SealedRpc::Generate, wire).await);
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(veil_client::routing::is_unknown_key_id(&s), "{s:?}");

    // Stale and future timestamps (the server runs with --seal-window 30).
    for ts in [now() - 40, now() + 40] {
        let (wire, _) = seal(&attested, SealedRpc::Generate, &req, ts);
        let s = refused(chunks(&mut client, SealedRpc::Generate, wire).await);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("timestamp"), "{}", s.message());
    }
    // Garbage that is not a GenerateRequest opens, then fails sealed (not as a plain status).
    let (wire, mut opener) = seal(&attested, SealedRpc::Generate, b"\xff\xff\xff", now());
    let raw = chunks(&mut client, SealedRpc::Generate, wire).await.unwrap();
    let bodies = open_all(&mut opener, &raw).unwrap();
    assert!(matches!(bodies.as_slice(), [Body::Error(e)] if e.code == Code::InvalidArgument as i32));
}

async fn check_stream_attacks(server: &Server) {
    let mut client = Client::with_channel(server.channel().await, lenient());
    let attested = client.attest().await.unwrap().clone();
    let req = prost::Message::encode_to_vec(&tokens_request(&[1, 2, 3, 4], 4));
    // A fresh call's raw chunks and opener.
    let mut fresh = async || {
        let (wire, opener) = seal(&attested, SealedRpc::Generate, &req, now());
        let raw = chunks(&mut client, SealedRpc::Generate, wire).await.unwrap();
        assert!(raw.len() >= 3, "deltas, final message and receipt");
        (raw, opener)
    };
    let (raw, mut opener) = fresh().await;
    let bodies = open_all(&mut opener, &raw).unwrap();
    assert!(matches!(bodies.last(), Some(Body::Response(_))));
    // Every chunk is one padding bucket long: lengths say nothing about the tokens.
    assert!(
        raw.iter().all(|c| c.len() == 256 + 16),
        "{:?}",
        raw.iter().map(Vec::len).collect::<Vec<_>>()
    );

    let (mut raw, mut opener) = fresh().await;
    raw[1][10] ^= 0x20;
    assert_eq!(
        sealed_err(open_all(&mut opener, &raw)),
        SealError::Open,
        "tampered"
    );
    let (mut raw, mut opener) = fresh().await;
    raw.swap(0, 1);
    assert_eq!(
        sealed_err(open_all(&mut opener, &raw)),
        SealError::Open,
        "reordered"
    );
    let (mut raw, mut opener) = fresh().await;
    raw.remove(1);
    assert_eq!(
        sealed_err(open_all(&mut opener, &raw)),
        SealError::Open,
        "dropped"
    );
    let (mut raw, mut opener) = fresh().await;
    raw.insert(1, raw[0].clone());
    assert_eq!(
        sealed_err(open_all(&mut opener, &raw)),
        SealError::Open,
        "duplicated"
    );
    let (mut raw, mut opener) = fresh().await;
    raw.pop();
    assert_eq!(
        sealed_err(open_all(&mut opener, &raw)),
        SealError::Truncated,
        "truncated"
    );
    let (mut raw, mut opener) = fresh().await;
    let last = raw.last().unwrap().clone();
    raw.push(last);
    assert_eq!(
        sealed_err(open_all(&mut opener, &raw)),
        SealError::AfterFinal,
        "extended"
    );
    let (mut raw, mut opener) = fresh().await;
    let (other, _) = fresh().await;
    raw[0].clone_from(&other[0]);
    assert_eq!(
        sealed_err(open_all(&mut opener, &raw)),
        SealError::Open,
        "spliced"
    );
}

fn check_cli(server: &Server, dir: &std::path::Path) {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, "allow_simulated = true\n").unwrap();
    let receipt = dir.join("receipt.json");
    let out = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["generate", "--server", &server.addr, "--policy"])
        .arg(&policy)
        .args([
            "--prompt",
            "The capital of France is",
            "--max-tokens",
            "8",
            "--receipt",
        ])
        .arg(&receipt)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!out.stdout.is_empty());
    assert!(stderr.contains("attested: NOT CONFIDENTIAL"), "{stderr}");
    assert!(stderr.contains("CPU TEE: none"), "{stderr}");
    assert!(stderr.contains("receipt verified"), "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&receipt).unwrap()).unwrap();
    for k in [
        "request_digest",
        "response_digest",
        "model_digest",
        "bundle_digest",
        "signature",
        "bundle",
    ] {
        assert!(doc[k].as_str().is_some_and(|v| !v.is_empty()), "{k} in {doc}");
    }

    // The saved receipt checks out later against its bundle (and the bundle against the
    // policy); a receipt with a changed digest does not.
    let check = |path: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_veil"))
            .args(["attest", "receipt"])
            .arg(path)
            .arg("--policy")
            .arg(&policy)
            .output()
            .unwrap()
    };
    let out = check(&receipt);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("receipt OK"));
    let mut forged = doc.clone();
    let d = forged["response_digest"].as_str().unwrap().to_owned();
    forged["response_digest"] = serde_json::json!(format!(
        "{}{}",
        if d.starts_with('0') { "1" } else { "0" },
        &d[1..]
    ));
    let forged_path = dir.join("forged.json");
    std::fs::write(&forged_path, forged.to_string()).unwrap();
    let out = check(&forged_path);
    assert!(!out.status.success(), "a forged receipt must not check out");
    // Without a policy, the strict one applies: simulated evidence behind a receipt is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["attest", "receipt"])
        .arg(&receipt)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not verify"));

    // Without a policy the strict default refuses simulated evidence, with the way out named.
    let out = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args([
            "generate",
            "--server",
            &server.addr,
            "--prompt",
            "x",
            "--max-tokens",
            "2",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("allow_simulated = true"), "{stderr}");

    // `veil chat` with piped stdin: the verification is shown before the first reply.
    let mut child = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args([
            "chat",
            "--server",
            &server.addr,
            "--max-tokens",
            "6",
            "--temperature",
            "0",
            "--policy",
        ])
        .arg(&policy)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(b"Hello!\n/exit\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("attested: GPU 0"), "{stderr}");
    assert!(stderr.contains("NOT CONFIDENTIAL"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_calls() {
    let server = Server::start(&[
        "--attestation",
        "simulated",
        "--plaintext",
        "off",
        "--seal-window",
        "30",
    ]);
    check_plaintext_off_and_policy(&server).await;
    check_round_trip_and_receipt(&server).await;
    check_batch_and_concurrency(&server).await;
    check_request_attacks(&server).await;
    check_stream_attacks(&server).await;
    let dir = tempfile::tempdir().unwrap();
    check_cli(&server, dir.path());
}

/// A TCP proxy that records every byte in both directions.
async fn recording_proxy(upstream: String) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let wire = Arc::new(Mutex::new(Vec::new()));
    let w = wire.clone();
    tokio::spawn(async move {
        loop {
            let Ok((down, _)) = listener.accept().await else {
                return;
            };
            let Ok(up) = TcpStream::connect(&upstream).await else {
                return;
            };
            let (dr, dw) = down.into_split();
            let (ur, uw) = up.into_split();
            for (mut r, mut wr, rec) in [
                (
                    Box::new(dr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                    Box::new(uw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    w.clone(),
                ),
                (Box::new(ur), Box::new(dw), w.clone()),
            ] {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    loop {
                        let n = match r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        rec.lock().unwrap().extend_from_slice(&buf[..n]);
                        if wr.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = wr.shutdown().await;
                });
            }
        }
    });
    (addr, wire)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marker_never_leaks() {
    let mut server = Server::try_spawn_logging(
        &[
            "--attestation",
            "simulated",
            "--metrics-listen",
            "127.0.0.1:0",
            "--dtype",
            "f32",
            "--threads",
            "2",
            "--kv-cache-mb",
            "256",
        ]
        .map(String::from),
        "trace",
    )
    .unwrap();
    let marker = format!("VeilMarker{:016x}", rand_marker());
    let (proxy, wire) = recording_proxy(server.addr.clone()).await;
    let channel = Channel::from_shared(format!("http://{proxy}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = Client::with_channel(channel.clone(), lenient());
    client.attest().await.unwrap();

    let repeat = format!("Repeat exactly, three times: {marker}");
    let reqs = [
        chat_request(&[("user", &repeat)], greedy(48)),
        chat_request(
            &[("system", &marker), ("user", "Say your system prompt.")],
            greedy(24),
        ),
        GenerateRequest {
            input: Some(Input::Prompt(format!("{marker} {marker}"))),
            params: Some(GenerationParams {
                stop: vec![marker.clone()],
                ..greedy(16).unwrap()
            }),
        },
    ];
    let mut completions = Vec::new();
    for r in &reqs {
        completions.push(sealed_generate(&mut client, r).await.unwrap().text);
    }
    // An error whose message quotes the request: sealed too.
    match sealed_generate(&mut client, &chat_request(&[(&marker, "hi")], greedy(4))).await {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, Code::InvalidArgument);
            assert!(
                message.contains(&marker),
                "the sealed error quotes the role: {message}"
            );
        }
        other => panic!("expected a sealed error: {other:?}"),
    }
    let mut stream = client
        .generate_batch(&GenerateBatchRequest {
            items: vec![chat_request(&[("user", &repeat)], None)],
            params: greedy(16),
        })
        .await
        .unwrap();
    while let Some(item) = stream.message().await.unwrap() {
        completions.push(item.text);
    }
    // The completions (the model echoes parts of the marker) are checked on the wire too.
    assert!(
        completions.iter().filter(|c| c.len() >= 12).count() >= 3,
        "long enough completions to look for: {completions:?}"
    );

    let metrics = server.metrics();
    let sealed_wire = wire.lock().unwrap().clone();
    let needles = [marker.as_bytes().to_vec(), hex::encode(&marker).into_bytes()];
    for n in &needles {
        assert!(
            !contains(&sealed_wire, n),
            "the marker crossed the wire in plaintext"
        );
        assert!(!contains(metrics.as_bytes(), n), "the marker is in the metrics");
    }
    for c in completions.iter().filter(|c| c.len() >= 12) {
        assert!(
            !contains(&sealed_wire, c.as_bytes()),
            "a completion crossed the wire in plaintext"
        );
    }

    // The control: the same marker through the plaintext RPC is visible on the wire.
    let before = sealed_wire.len();
    let mut raw = veil_proto::v1::inference_client::InferenceClient::new(channel);
    let mut s = raw
        .generate(chat_request(&[("user", &marker)], greedy(2)))
        .await
        .unwrap()
        .into_inner();
    while s.message().await.unwrap().is_some() {}
    assert!(
        contains(&wire.lock().unwrap()[before..], marker.as_bytes()),
        "the wire check can see plaintext"
    );

    server.terminate();
    assert!(server.wait_exit(std::time::Duration::from_secs(60)).success());
    let log = server.log();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the server logged at the most verbose level"
    );
    for n in &needles {
        assert!(!contains(log.as_bytes(), n), "the marker is in the server's log");
    }
}

fn rand_marker() -> u64 {
    let mut b = [0u8; 8];
    getrandom(&mut b);
    u64::from_le_bytes(b)
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(buf)
        .unwrap();
}
