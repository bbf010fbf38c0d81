//! Hostile input, bounded, in the normal suite: every parser and decoder that takes outside
//! bytes gets a few hundred random byte strings and mutations of a valid sample (bit flips,
//! truncation at every prefix of small samples, byte insertions and deletions, spliced ranges,
//! length fields blown up to their extremes), from a fixed seed. Each must give a value or an
//! error, never a panic; a panic names the target and prints the input. The inputs per target
//! are printed (`cargo test --release --test hostile_input -- --nocapture`).
//!
//! The same parsers have libFuzzer targets under `fuzz/` that go deeper; this test keeps a floor
//! under them in every `cargo test`.
//!
//! Targets: GGUF, safetensors, NVIDIA SPDM reports, TDX quotes and their collateral JSON, SNP
//! reports, the SNP certificate table, X.509 (PEM and DER), attestation bundles (decoded and
//! verified), the policy TOML, a model's config.json, the tokenizer and the chat template, the
//! protobuf request messages of the API (re-encoded to a fixed point), sealed requests (opened
//! with the server's key), sealed response chunks and the client's `ResponseOpener` and
//! `check_receipt`.

#![allow(clippy::unwrap_used)]

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use prost::Message;
use veil_attest::bundle::{build_bundle, verify_bundle};
use veil_attest::collect::{CpuCollector, GpuCollector};
use veil_attest::policy::Policy;
use veil_attest::simulated::{SimulatedCpu, SimulatedGpu};
use veil_client::{Attested, OpenedChunk, check_receipt};
use veil_engine::tokenizer::{ChatMessage, IncrementalDetokenizer, Tokenizer};
use veil_proto::v1;
use veil_seal::{
    ReceiptSigner, ReplayCache, SealedRequestParts, SealedRpc, SessionKeyPair, open_request, seal_request,
};

/// A time at which the simulated evidence and the test data's certificates are valid.
const NOW: u64 = 1_900_000_000;
/// Random inputs per target.
const RANDOM: usize = 600;
/// Samples up to this long are truncated at every prefix; longer ones at `PREFIXES` points.
const SMALL: usize = 1500;
/// Prefixes of a long sample.
const PREFIXES: usize = 160;

/// SplitMix64: a small seeded generator (the inputs are the same on every run).
struct Rng(u64);

impl Rng {
    fn new(seed: &str) -> Self {
        // FNV-1a of the target's name: every target has its own stream.
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in seed.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        Self(h)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Values a length or count field is blown up to (little- and big-endian are both tried).
const BLOWUPS: [u64; 8] = [
    u64::MAX,
    i64::MAX as u64,
    u32::MAX as u64,
    0x8000_0000,
    0x7fff_ffff,
    0xffff,
    0x1_0000,
    0,
];

/// Mutations of `sample`: every prefix (or `PREFIXES` of them), then bit flips, insertions,
/// deletions, spliced ranges and blown-up length fields, `per_kind` of each.
fn mutations(sample: &[u8], rng: &mut Rng, per_kind: usize) -> Vec<Vec<u8>> {
    let n = sample.len();
    let mut out = Vec::new();
    if n <= SMALL {
        out.extend((0..n).map(|i| sample[..i].to_vec()));
    } else {
        out.extend((0..PREFIXES).map(|i| sample[..i * n / PREFIXES].to_vec()));
        out.extend((1..=16).map(|i| sample[..n - i].to_vec()));
    }
    if n == 0 {
        return out;
    }
    for _ in 0..per_kind {
        // Bit flips: one to eight.
        let mut m = sample.to_vec();
        for _ in 0..=rng.below(8) {
            let i = rng.below(n);
            m[i] ^= 1 << rng.below(8);
        }
        out.push(m);
        // Insertions of one to sixteen random bytes.
        let mut m = sample.to_vec();
        let at = rng.below(n + 1);
        let len = 1 + rng.below(16);
        let ins = rng.bytes(len);
        m.splice(at..at, ins);
        out.push(m);
        // A deleted range.
        let mut m = sample.to_vec();
        let at = rng.below(n);
        let len = 1 + rng.below((n - at).min(64));
        m.drain(at..at + len);
        out.push(m);
        // A range copied over another place.
        let mut m = sample.to_vec();
        let from = rng.below(n);
        let len = 1 + rng.below((n - from).min(64));
        let to = rng.below(n);
        let piece = m[from..from + len].to_vec();
        m.splice(to..to, piece);
        out.push(m);
        // A length field blown up: 1, 2, 4 or 8 bytes at any offset, either byte order.
        let mut m = sample.to_vec();
        let width = [1usize, 2, 4, 8][rng.below(4)];
        let at = rng.below(n);
        let v = BLOWUPS[rng.below(BLOWUPS.len())];
        let bytes = if rng.below(2) == 0 {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        };
        let end = (at + width).min(n);
        let src = if bytes[0] == 0 && v != 0 {
            &bytes[8 - (end - at)..]
        } else {
            &bytes[..end - at]
        };
        m[at..end].copy_from_slice(src);
        out.push(m);
        // A protobuf varint length blown up in place (a 10-byte varint of u64::MAX).
        let mut m = sample.to_vec();
        let at = rng.below(n);
        m.splice(
            at..(at + 1).min(n),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        );
        out.push(m);
    }
    out
}

/// Feeds `target` random strings up to `max_len` bytes and the mutations of each sample;
/// returns how many inputs it took. A panic names the target and shows the input.
fn hammer(name: &str, samples: &[Vec<u8>], max_len: usize, per_kind: usize, target: &dyn Fn(&[u8])) -> usize {
    let started = Instant::now();
    let mut rng = Rng::new(name);
    let mut inputs: Vec<Vec<u8>> = samples.to_vec();
    for _ in 0..RANDOM {
        let len = rng.below(max_len + 1);
        inputs.push(rng.bytes(len));
    }
    for s in samples {
        inputs.extend(mutations(s, &mut rng, per_kind));
    }
    for input in &inputs {
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| target(input))) {
            let shown = &input[..input.len().min(512)];
            eprintln!(
                "{name} panicked on a {}-byte input (first {} bytes): {}",
                input.len(),
                shown.len(),
                hex::encode(shown)
            );
            std::panic::resume_unwind(e);
        }
    }
    println!(
        "hostile_input: {name}: {} inputs ({} samples) in {:.2} s",
        inputs.len(),
        samples.len(),
        started.elapsed().as_secs_f64()
    );
    inputs.len()
}

fn testdata(rel: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("attest/testdata")
        .join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Model files

fn gguf_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A small GGUF v3: string, integer, float, bool and array metadata, two f32 tensors.
fn gguf_sample() -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes()); // tensors
    b.extend_from_slice(&5u64.to_le_bytes()); // key-value pairs
    gguf_string(&mut b, "general.architecture");
    b.extend_from_slice(&8u32.to_le_bytes());
    gguf_string(&mut b, "llama");
    gguf_string(&mut b, "llama.context_length");
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&2048u32.to_le_bytes());
    gguf_string(&mut b, "llama.rope.freq_base");
    b.extend_from_slice(&6u32.to_le_bytes());
    b.extend_from_slice(&10000f32.to_le_bytes());
    gguf_string(&mut b, "test.flag");
    b.extend_from_slice(&7u32.to_le_bytes());
    b.push(1);
    gguf_string(&mut b, "tokenizer.ggml.tokens");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&3u64.to_le_bytes());
    for t in ["<s>", "a", "bc"] {
        gguf_string(&mut b, t);
    }
    for (name, dims, offset) in [("a", &[3u64, 2][..], 0u64), ("b", &[5][..], 32)] {
        gguf_string(&mut b, name);
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&offset.to_le_bytes());
    }
    b.resize(b.len().div_ceil(32) * 32, 0);
    for v in 0..6 {
        b.extend_from_slice(&(v as f32).to_le_bytes());
    }
    b.resize(b.len() + 8, 0);
    for _ in 0..5 {
        b.extend_from_slice(&9f32.to_le_bytes());
    }
    b
}

/// A small safetensors file: two tensors and metadata.
fn safetensors_sample() -> Vec<u8> {
    let header = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]}}"#;
    let mut h = header.as_bytes().to_vec();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(&h);
    b.extend((0..32).map(|i| i as u8));
    b
}

#[test]
fn model_files() {
    let gguf = gguf_sample();
    veil_engine::gguf::GgufFile::parse(&gguf).expect("the GGUF sample parses");
    hammer("gguf", &[gguf], 600, 200, &|b| {
        let _ = veil_engine::gguf::GgufFile::parse(b);
    });
    let st = safetensors_sample();
    veil_engine::weights::check_safetensors(&st).expect("the safetensors sample checks");
    hammer("safetensors", &[st], 300, 200, &|b| {
        let _ = veil_engine::weights::check_safetensors(b);
    });
    let config = std::fs::read(common::model_dir().join("config.json")).unwrap();
    veil_engine::config::ModelConfig::from_json(std::str::from_utf8(&config).unwrap())
        .expect("the default model's config parses");
    hammer("model_config", &[config], 600, 120, &|b| {
        let _ = veil_engine::config::ModelConfig::from_json(&String::from_utf8_lossy(b));
    });
}

// ---------------------------------------------------------------------------------------------
// Attestation evidence

#[test]
fn evidence() {
    let spdm: Vec<Vec<u8>> = [
        "nvidia/nvtrust_hopper_report.bin",
        "nvidia/sdk_hopper_590_report.bin",
    ]
    .iter()
    .map(|p| testdata(p))
    .collect();
    for s in &spdm {
        veil_attest::nvidia::GpuReport::parse(s).expect("the SPDM sample parses");
    }
    hammer("spdm", &spdm, 5000, 120, &|b| {
        let _ = veil_attest::nvidia::GpuReport::parse(b);
    });
    let tdx: Vec<Vec<u8>> = ["tdx/dcapqvl_v4.dat", "tdx/gotdx_v5_sample.dat"]
        .iter()
        .map(|p| testdata(p))
        .collect();
    for s in &tdx {
        veil_attest::tdx::TdxQuote::parse(s).expect("the TDX sample parses");
    }
    hammer("tdx", &tdx, 6000, 120, &|b| {
        let _ = veil_attest::tdx::TdxQuote::parse(b);
    });
    let collateral = testdata("tdx/dcapqvl_v4_collateral.json");
    veil_attest::tdx::TdxCollateral::from_json(&collateral).expect("the collateral sample parses");
    hammer("tdx_collateral", &[collateral], 2000, 80, &|b| {
        let _ = veil_attest::tdx::TdxCollateral::from_json(b);
    });
    let snp = testdata("sev-snp/virtee_milan_report.bin");
    veil_attest::snp::SnpReport::parse(&snp).expect("the SNP sample parses");
    hammer("snp", &[snp], 1500, 200, &|b| {
        let _ = veil_attest::snp::SnpReport::parse(b);
    });
    // An SNP certificate table: two entries, the terminator, their data.
    let mut table = Vec::new();
    for (guid, offset, len) in [(0x11u8, 72u32, 10u32), (0x22, 82, 5)] {
        table.extend_from_slice(&[guid; 16]);
        table.extend_from_slice(&offset.to_le_bytes());
        table.extend_from_slice(&len.to_le_bytes());
    }
    table.extend_from_slice(&[0; 24]);
    table.extend((0..15).map(|i| i as u8));
    assert_eq!(
        veil_attest::collect::tsm::parse_cert_table(&table).unwrap().len(),
        2
    );
    hammer("tsm_cert_table", &[table], 300, 200, &|b| {
        let _ = veil_attest::collect::tsm::parse_cert_table(b);
    });
    let x509: Vec<Vec<u8>> = [
        "nvidia/nvtrust_hopper_certchain.pem",
        "x509/openssl_p256_leaf_p384_ca_chain.pem",
        "sev-snp/virtee_milan_vcek.der",
    ]
    .iter()
    .map(|p| testdata(p))
    .collect();
    for s in &x509 {
        veil_attest::x509::parse_certs(s).expect("the X.509 sample parses");
    }
    hammer("x509", &x509, 2000, 100, &|b| {
        let _ = veil_attest::x509::parse_certs(b);
    });
}

/// A policy with every field set.
const POLICY: &str = r#"
allow_simulated = true
max_age_secs = 600
accepted_model_digests = ["0000000000000000000000000000000000000000000000000000000000000000"]

[gpu]
require_cc = true
allowed_driver_versions = ["550.144.03"]
allowed_vbios_versions = ["96.00.9F.00.01"]
measurements = { 1 = "00ff", 7 = "abcd" }

[tdx]
allow_debug = false
allowed_mrtd = ["000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"]
rtmr = ["", "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"]
allowed_tcb_statuses = ["UpToDate"]

[snp]
allow_debug = false
allowed_measurements = ["000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"]
"#;

#[test]
fn policy_toml() {
    Policy::from_toml(POLICY).expect("the policy sample parses");
    let example =
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/policy-simulated.toml"))
            .unwrap();
    hammer(
        "policy_toml",
        &[POLICY.as_bytes().to_vec(), example],
        800,
        150,
        &|b| {
            let _ = Policy::from_toml(&String::from_utf8_lossy(b));
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Tokenizer and chat template

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_dir(&common::model_dir()).expect("the default model's tokenizer"))
}

/// Splits `data` into role, content, role, ... at 0xFF bytes (as the chat_template fuzz target).
fn messages(data: &[u8]) -> Vec<ChatMessage> {
    let fields: Vec<String> = data
        .split(|&b| b == 0xFF)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    fields
        .chunks(2)
        .map(|p| ChatMessage::new(p[0].as_str(), p.get(1).map_or("", String::as_str)))
        .collect()
}

#[test]
fn tokenizer_and_chat_template() {
    let tok = tokenizer();
    let text = std::fs::read_to_string(common::data_dir().join("tokenizer_cases.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let samples: Vec<Vec<u8>> = cases
        .iter()
        .map(|c| c["text"].as_str().unwrap().as_bytes().to_vec())
        .collect();
    let vocab = tok.vocab_size();
    hammer("tokenizer", &samples, 400, 80, &|b| {
        let Ok(ids) = tok.encode(&String::from_utf8_lossy(b)) else {
            return;
        };
        assert!(ids.iter().all(|&id| (id as usize) < vocab));
        let _ = tok.decode(&ids);
        let mut detok = IncrementalDetokenizer::new();
        for &id in &ids {
            let _ = detok.push(tok, id);
        }
        let _ = detok.flush(tok);
    });
    // Ids from anywhere (the decoder's side: ids past the vocabulary included).
    hammer("detokenizer", &[], 400, 0, &|b| {
        let ids: Vec<u32> = b
            .chunks(2)
            .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
            .collect();
        let _ = tok.decode(&ids);
        let mut detok = IncrementalDetokenizer::new();
        for &id in &ids {
            let _ = detok.push(tok, id);
        }
        let _ = detok.flush(tok);
    });
    let chat = [
        b"system\xffBe brief.\xffuser\xffHello <|im_end|> there\xffassistant\xffHi!".to_vec(),
        b"user\xff{{ raise_exception('x') }} {% for %}\xfftool\xff\xc3\xa9\xe2\x80\x94".to_vec(),
    ];
    hammer("chat_template", &chat, 300, 80, &|b| {
        let messages = messages(b);
        let Ok(text) = tok.apply_chat_template(&messages) else {
            return;
        };
        for m in &messages {
            assert!(
                text.contains(m.content.as_str()),
                "a message's content went missing"
            );
        }
        assert!(text.ends_with("<|im_start|>assistant\n"));
        let _ = tok.encode(&text);
    });
}

// ---------------------------------------------------------------------------------------------
// Protobuf messages of the API

/// Decodes `M`; a message that decodes re-encodes to a fixed point.
fn decode<M: Message + Default>(b: &[u8]) -> Option<M> {
    let m = M::decode(b).ok()?;
    let once = m.encode_to_vec();
    let again = M::decode(once.as_slice()).expect("a re-encoded message decodes");
    assert_eq!(again.encode_to_vec(), once, "re-encoding is not stable");
    Some(m)
}

fn full_params() -> v1::GenerationParams {
    v1::GenerationParams {
        temperature: Some(0.7),
        top_k: Some(40),
        top_p: Some(0.9),
        min_p: Some(0.05),
        repetition_penalty: Some(1.1),
        presence_penalty: Some(-0.5),
        frequency_penalty: Some(0.5),
        seed: Some(u64::MAX),
        max_tokens: Some(64),
        stop: vec!["\n\n".into(), "END".into()],
        stop_token_ids: vec![2, 0],
        logprobs: Some(true),
        top_logprobs: Some(5),
    }
}

/// A simulated bundle over claims with `session` and `signer`'s keys, its nonce, and the
/// claims.
struct Simulated {
    bundle: v1::AttestationBundle,
    nonce: [u8; 32],
    session: SessionKeyPair,
    signer: ReceiptSigner,
}

fn simulated() -> &'static Simulated {
    static S: OnceLock<Simulated> = OnceLock::new();
    S.get_or_init(|| {
        let session = SessionKeyPair::from_secret_bytes(&[7; 32]);
        let signer = ReceiptSigner::from_seed(&[9; 32]);
        let claims = v1::AttestationClaims {
            session_keys: vec![v1::SessionKey {
                algorithm: "x25519".into(),
                public_key: session.public_key_bytes().to_vec(),
            }],
            model_digest: vec![5; 32],
            model_name: "smollm2-135m-instruct".into(),
            engine_build_digest: vec![1; 32],
            engine_version: "test".into(),
            backend: "cpu".into(),
            cc_mode: "none".into(),
            server_time_unix: NOW as i64,
            confidential: false,
            gpus: Vec::new(),
            receipt_public_key: signer.public_key_bytes().to_vec(),
        };
        let gpu = SimulatedGpu::new(1).unwrap();
        let cpu = SimulatedCpu::new().unwrap();
        let nonce = [3; 32];
        let bundle = build_bundle(&nonce, &claims, &mut |n| gpu.evidence(n), &mut |rd| {
            cpu.evidence(rd)
        })
        .unwrap();
        Simulated {
            bundle,
            nonce,
            session,
            signer,
        }
    })
}

fn lenient() -> Policy {
    Policy {
        allow_simulated: true,
        ..Policy::default()
    }
}

#[test]
fn api_messages() {
    use v1::generate_request::Input;
    let prompt = v1::GenerateRequest {
        input: Some(Input::Prompt("Hello there".into())),
        params: Some(full_params()),
    };
    let chat = v1::GenerateRequest {
        input: Some(Input::Chat(v1::ChatInput {
            messages: vec![
                v1::ChatMessage {
                    role: "system".into(),
                    content: "Be brief.".into(),
                },
                v1::ChatMessage {
                    role: "user".into(),
                    content: "Hi".into(),
                },
            ],
        })),
        params: None,
    };
    let tokens = v1::GenerateRequest {
        input: Some(Input::Tokens(v1::TokenInput {
            token_ids: vec![1, 2, 300, 49151],
        })),
        params: Some(v1::GenerationParams {
            max_tokens: Some(1),
            ..Default::default()
        }),
    };
    let requests: Vec<Vec<u8>> = [&prompt, &chat, &tokens]
        .iter()
        .map(|r| r.encode_to_vec())
        .collect();
    hammer("GenerateRequest", &requests, 300, 120, &|b| {
        let _ = decode::<v1::GenerateRequest>(b);
    });
    let batch = v1::GenerateBatchRequest {
        items: vec![prompt.clone(), chat, tokens],
        params: Some(full_params()),
    };
    hammer("GenerateBatchRequest", &[batch.encode_to_vec()], 300, 200, &|b| {
        let _ = decode::<v1::GenerateBatchRequest>(b);
    });
    let sealed = v1::SealedRequest {
        key_id: vec![1; 8],
        encapsulated_key: vec![2; 32],
        ciphertext: vec![3; 100],
        bundle_digest: vec![4; 32],
    };
    hammer("SealedRequest", &[sealed.encode_to_vec()], 300, 200, &|b| {
        let _ = decode::<v1::SealedRequest>(b);
    });
    let payloads: Vec<Vec<u8>> = [
        v1::sealed_payload::Body::Response(v1::GenerateResponse {
            event: Some(v1::generate_response::Event::Delta(v1::Delta {
                text: "hi".into(),
                tokens: vec![v1::Token {
                    id: 5,
                    logprob: Some(-0.5),
                    top_logprobs: vec![v1::TokenLogprob { id: 6, logprob: -1.0 }],
                }],
            })),
        }),
        v1::sealed_payload::Body::BatchItem(v1::GenerateBatchResponse {
            index: 3,
            text: "done".into(),
            tokens: vec![],
            finished: Some(v1::Finished {
                reason: 1,
                error: String::new(),
                usage: Some(v1::Usage {
                    prompt_tokens: 4,
                    completion_tokens: 2,
                    time_to_first_token_seconds: Some(0.1),
                    time_per_output_token_seconds: None,
                }),
            }),
        }),
        v1::sealed_payload::Body::Error(v1::CallError {
            code: 3,
            message: "params.top_p: must be in (0, 1]".into(),
        }),
    ]
    .into_iter()
    .map(|body| v1::SealedPayload { body: Some(body) }.encode_to_vec())
    .collect();
    hammer("SealedPayload", &payloads, 300, 120, &|b| {
        let _ = decode::<v1::SealedPayload>(b);
    });
    let sim = simulated();
    let policy = lenient();
    verify_bundle(&sim.bundle, Some(&sim.nonce), &policy, NOW).expect("the simulated bundle verifies");
    hammer(
        "AttestationClaims",
        std::slice::from_ref(&sim.bundle.claims),
        300,
        120,
        &|b| {
            let _ = decode::<v1::AttestationClaims>(b);
        },
    );
    // Bundles are verified too (simulated evidence admitted, so the verifiers run).
    hammer(
        "AttestationBundle",
        &[sim.bundle.encode_to_vec()],
        300,
        40,
        &|b| {
            if let Some(bundle) = decode::<v1::AttestationBundle>(b) {
                let _ = verify_bundle(&bundle, Some(&sim.nonce), &policy, NOW);
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Sealed calls

#[test]
fn sealed_calls() {
    let sim = simulated();
    let attested = Attested::verify(sim.bundle.clone(), &sim.nonce, &lenient(), NOW).unwrap();
    let digest = attested.bundle_digest();
    let info = SealedRpc::Generate.info(&digest);

    // Sealed requests, opened with the server's key: the sample is key id || encapsulated key
    // || ciphertext.
    let (parts, _) = seal_request(
        &sim.session.public_key_bytes(),
        sim.session.key_id(),
        b"a request",
        NOW as i64,
        &info,
    )
    .unwrap();
    let mut sample = parts.key_id.to_vec();
    sample.extend_from_slice(&parts.encapsulated_key);
    sample.extend_from_slice(&parts.ciphertext);
    hammer("sealed_request", &[sample], 200, 120, &|b| {
        let key_id: [u8; 8] = b.get(..8).and_then(|k| k.try_into().ok()).unwrap_or_default();
        let rest = b.get(8..).unwrap_or_default();
        let split = rest.len().min(32);
        let parts = SealedRequestParts {
            key_id,
            encapsulated_key: rest[..split].to_vec(),
            ciphertext: rest[split..].to_vec(),
        };
        let _ = open_request(
            &sim.session,
            &parts,
            &info,
            NOW as i64,
            &mut ReplayCache::new(4),
            60,
        );
    });

    // Response chunks opened by the client: a real stream's chunks are the samples (each
    // mutated alone, opened as the stream's first chunk).
    let fresh = || {
        let (wire, opener) = attested
            .seal(SealedRpc::Generate, b"a request", NOW as i64)
            .unwrap();
        let parts = SealedRequestParts {
            key_id: wire.key_id.as_slice().try_into().unwrap(),
            encapsulated_key: wire.encapsulated_key,
            ciphertext: wire.ciphertext,
        };
        let (_, server) = open_request(
            &sim.session,
            &parts,
            &info,
            NOW as i64,
            &mut ReplayCache::new(4),
            60,
        )
        .unwrap();
        (server, opener)
    };
    let (mut server, _) = fresh();
    let body = v1::SealedPayload {
        body: Some(v1::sealed_payload::Body::Error(v1::CallError {
            code: 3,
            message: "x".into(),
        })),
    };
    let first = server.seal_chunk(&body.encode_to_vec()).unwrap();
    hammer("sealed_chunk", &[first], 600, 80, &|b| {
        let (_, mut opener) = fresh();
        let _ = opener.open(b);
        let _ = opener.finish();
    });

    // Arbitrary plaintexts sealed by the server (so they reach the SealedPayload decoder and
    // the receipt check inside the AEAD), then the receipt against the bundle, and against one
    // whose claims are the input.
    let sample = v1::SealedPayload {
        body: Some(v1::sealed_payload::Body::Response(v1::GenerateResponse {
            event: Some(v1::generate_response::Event::Finished(v1::Finished {
                reason: 2,
                error: String::new(),
                usage: None,
            })),
        })),
    }
    .encode_to_vec();
    hammer("response_opener", &[sample], 600, 80, &|b| {
        let (mut server, mut opener) = fresh();
        let chunk = server.seal_chunk(b).unwrap();
        let opened = opener.open(&chunk);
        if let Ok(OpenedChunk::Payload(body)) = &opened {
            let decoded = v1::SealedPayload::decode(b).unwrap();
            assert_eq!(decoded.body.as_ref(), Some(body));
        }
        let (last, _) = server.seal_receipt(&sim.signer, [5; 32], digest).unwrap();
        if opened.is_ok() {
            let Ok(OpenedChunk::End(receipt)) = opener.open(&last) else {
                panic!("the honest receipt did not open");
            };
            opener.finish().unwrap();
            check_receipt(&receipt, attested.bundle()).expect("an honest receipt checks");
            if b != attested.bundle().claims.as_slice() {
                let mut foreign = attested.bundle().clone();
                foreign.claims = b.to_vec();
                assert!(
                    check_receipt(&receipt, &foreign).is_err(),
                    "a receipt checked against other claims"
                );
            }
        }
    });
}
