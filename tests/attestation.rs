//! Attestation end to end on this machine (no GPU, no TEE): `veil serve --attestation
//! simulated` makes simulated evidence in the real formats, and everything below runs the real
//! parsers and verifiers on it.
//!
//! - `get_attestation_over_grpc`: a bundle fetched with a fresh nonce verifies under a policy
//!   that allows simulated evidence (NOT confidential, the ModelInfo digest, an X25519 session
//!   key, this binary's SHA-256); a strict policy, a wrong nonce, a GPU report from another
//!   server, a changed claim, a changed model digest, an unaccepted model and an expired bundle
//!   each fail with their own error; a short nonce is INVALID_ARGUMENT naming `nonce`; calls
//!   past the burst are RESOURCE_EXHAUSTED.
//! - `attest_cli_fetch_verify_inspect`: `veil attest fetch` (lenient policy: exit 0 and NOT
//!   CONFIDENTIAL; no policy: refused as simulated), `veil attest verify` on the saved bundle
//!   (and on tampered copies, each with its own error), `veil attest inspect` on the bundle.
//! - `inspect_real_vectors`: `veil attest inspect` on the real NVIDIA, AMD and Intel evidence
//!   in attest/testdata agrees with every fact in `facts.json` and says `signature: valid`.
//! - `hardware_mode_without_a_tee_refuses_to_start`: `--attestation hardware` on a machine
//!   without configfs-tsm exits non-zero before serving, saying why.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use common::server::Server;
use prost::Message;
use rand_core::{OsRng, RngCore};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Channel;
use veil_attest::Error;
use veil_attest::bundle::verify_bundle;
use veil_attest::policy::Policy;
use veil_proto::v1::inference_client::InferenceClient;
use veil_proto::v1::{self, AttestationBundle, AttestationClaims, GetAttestationRequest};

fn veil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_veil"))
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn fresh_nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    OsRng.fill_bytes(&mut n);
    n
}

/// A simulated server on the default model, light on memory and threads.
fn simulated_server(extra: &[&str]) -> Server {
    let mut args: Vec<String> = [
        "--attestation",
        "simulated",
        "--threads",
        "1",
        "--kv-cache-mb",
        "64",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    Server::spawn(&args)
}

async fn fetch(client: &mut InferenceClient<Channel>, nonce: &[u8; 32]) -> AttestationBundle {
    client
        .get_attestation(GetAttestationRequest {
            nonce: nonce.to_vec(),
        })
        .await
        .expect("GetAttestation")
        .into_inner()
        .bundle
        .expect("a bundle")
}

/// Allows simulated evidence and accepts exactly `digest`.
fn lenient(digest: &str) -> Policy {
    Policy {
        allow_simulated: true,
        accepted_model_digests: vec![digest.to_owned()],
        ..Policy::default()
    }
}

fn claims_of(b: &AttestationBundle) -> AttestationClaims {
    AttestationClaims::decode(b.claims.as_slice()).expect("claims")
}

/// `b` with its claims edited by `edit` (and re-encoded, as an attacker would).
fn with_claims(b: &AttestationBundle, edit: impl FnOnce(&mut AttestationClaims)) -> AttestationBundle {
    let mut claims = claims_of(b);
    edit(&mut claims);
    AttestationBundle {
        claims: claims.encode_to_vec(),
        ..b.clone()
    }
}

fn sha256_file(path: &str) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read the binary")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_attestation_over_grpc() {
    let a = simulated_server(&[]);
    // A second server: its own keys and chains; a tiny rate limit for the rate-limit check.
    let b = simulated_server(&["--attestation-rate", "0.01", "--attestation-burst", "3"]);
    for s in [&a, &b] {
        assert!(s.log().contains("NOT CONFIDENTIAL"), "{}", s.log());
    }
    let mut client = a.client().await;
    let info = client
        .model_info(v1::ModelInfoRequest {})
        .await
        .expect("model info")
        .into_inner();
    assert!(!info.confidential);
    assert_eq!(info.attestation, "simulated");
    let policy = lenient(&info.digest);

    // A correct bundle verifies, as NOT confidential, with the server's facts.
    let nonce = fresh_nonce();
    let bundle = fetch(&mut client, &nonce).await;
    let v = verify_bundle(&bundle, Some(&nonce), &policy, now()).expect("the bundle verifies");
    assert!(!v.confidential && !v.claims.confidential);
    assert!(v.summary.contains("NOT CONFIDENTIAL"), "{}", v.summary);
    assert_eq!(v.claims.model_digest, info.digest);
    assert_eq!(v.claims.model_name, info.name);
    assert_eq!(v.claims.backend, "cpu");
    assert_eq!(v.claims.cc_mode, "off", "simulated GPUs report CC off");
    assert_eq!(v.gpus.len(), 1, "one simulated GPU");
    assert_eq!(v.session_keys.len(), 1);
    assert_eq!(v.session_keys[0].0, "x25519");
    assert_eq!(v.session_keys[0].1.len(), 32);
    assert_eq!(
        v.claims.engine_build_digest,
        sha256_file(env!("CARGO_BIN_EXE_veil")),
        "the claims carry the SHA-256 of the running executable"
    );
    assert!(v.claims.server_time_unix.abs_diff(now() as i64) < 120);
    let claims = claims_of(&bundle);
    assert_eq!(claims.gpus.len(), 1);
    assert!(!claims.gpus[0].cc_enabled);

    // Fresh evidence per call: the same nonce gives new reports; the session key stays.
    let again = fetch(&mut client, &nonce).await;
    assert_ne!(again.gpus[0].data, bundle.gpus[0].data);
    assert_ne!(again.cpu, bundle.cpu);
    assert_eq!(
        claims_of(&again).session_keys,
        claims.session_keys,
        "one session key per server run"
    );

    // A strict policy refuses simulated evidence.
    let strict = Policy {
        accepted_model_digests: vec![info.digest.clone()],
        ..Policy::default()
    };
    let e = verify_bundle(&bundle, Some(&nonce), &strict, now()).expect_err("strict");
    assert!(matches!(e, Error::SimulatedNotAllowed(_)), "{e:?}");

    // The bundle answers another nonce than the one the client sent.
    let e = verify_bundle(&bundle, Some(&fresh_nonce()), &policy, now()).expect_err("wrong nonce");
    assert!(matches!(e, Error::NonceMismatch(_)), "{e:?}");

    // GPU evidence from a second server, fetched with the same client nonce. Its report carries
    // B's gpu_nonce = SHA-256("veil/gpu/v1" || nonce || SHA-256(B's claims)); B's claims differ
    // from A's (B's own session key, at least), so the report fails the GPU-nonce check, which
    // comes before the CPU quote is looked at: ClaimsMismatch.
    let mut client_b = b.client().await;
    let bundle_b = fetch(&mut client_b, &nonce).await;
    assert_ne!(claims_of(&bundle_b).session_keys, claims.session_keys);
    verify_bundle(&bundle_b, Some(&nonce), &policy, now()).expect("B's own bundle verifies");
    let mut swapped = bundle.clone();
    swapped.gpus[0] = bundle_b.gpus[0].clone();
    let e = verify_bundle(&swapped, Some(&nonce), &policy, now()).expect_err("a relayed GPU report");
    assert!(matches!(e, Error::ClaimsMismatch(_)), "{e:?}");
    // Taking B's claims along makes the GPU nonce match, but A's CPU quote commits to A's
    // claims and A's GPU evidence: ReportDataMismatch.
    swapped.claims = bundle_b.claims.clone();
    let e = verify_bundle(&swapped, Some(&nonce), &policy, now()).expect_err("relayed GPU and claims");
    assert!(matches!(e, Error::ReportDataMismatch(_)), "{e:?}");

    // A changed claim: the claims digest changes, so the GPU report's nonce no longer matches.
    for (what, edited) in [
        ("confidential", with_claims(&bundle, |c| c.confidential = true)),
        (
            "session key",
            with_claims(&bundle, |c| c.session_keys[0].public_key = vec![7; 32]),
        ),
        ("cc mode", with_claims(&bundle, |c| c.cc_mode = "on".into())),
    ] {
        let e = verify_bundle(&edited, Some(&nonce), &policy, now()).expect_err(what);
        assert!(matches!(e, Error::ClaimsMismatch(_)), "{what}: {e:?}");
    }

    // A changed model digest: the binding fails whichever digest the policy accepts.
    let other_digest = "ab".repeat(32);
    let edited = with_claims(&bundle, |c| c.model_digest = vec![0xab; 32]);
    for p in [&policy, &lenient(&other_digest)] {
        let e = verify_bundle(&edited, Some(&nonce), p, now()).expect_err("edited model digest");
        assert!(matches!(e, Error::ClaimsMismatch(_)), "{e:?}");
    }
    // An honest bundle for a model the policy does not accept.
    let e = verify_bundle(&bundle, Some(&nonce), &lenient(&other_digest), now()).expect_err("model");
    assert!(matches!(e, Error::ModelNotAccepted(_)), "{e:?}");

    // Expired: verified an hour later (the policy allows 300 s), or claiming a time an hour
    // ahead of the verifier's clock.
    for at in [now() + 3600, now() - 3600] {
        let e = verify_bundle(&bundle, Some(&nonce), &policy, at).expect_err("expired");
        assert!(matches!(e, Error::Expired(_)), "{e:?}");
    }

    // The nonce must be exactly 32 bytes.
    for len in [0, 5, 33] {
        let s = client
            .get_attestation(GetAttestationRequest { nonce: vec![1; len] })
            .await
            .expect_err("short nonce");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().starts_with("nonce:"), "{}", s.message());
    }

    // B allows bursts of 3 and refills one token per 100 s: it has used one; two more pass,
    // the next is RESOURCE_EXHAUSTED.
    for i in 0..2 {
        client_b
            .get_attestation(GetAttestationRequest {
                nonce: fresh_nonce().to_vec(),
            })
            .await
            .unwrap_or_else(|s| panic!("call {i} within the burst: {s:?}"));
    }
    let s = client_b
        .get_attestation(GetAttestationRequest {
            nonce: fresh_nonce().to_vec(),
        })
        .await
        .expect_err("past the burst");
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("per second"), "{}", s.message());
    // A's limit (default 4/s, burst 8) is untouched by B's.
    fetch(&mut client, &fresh_nonce()).await;
}

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).expect("write");
    p
}

fn stdout_json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn attest_cli_fetch_verify_inspect() {
    let server = simulated_server(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let digest = veil_engine::digest::model_digest(&common::model_dir())
        .expect("model digest")
        .to_string();
    let lenient_toml = write(
        dir.path(),
        "lenient.toml",
        format!("allow_simulated = true\naccepted_model_digests = [\"{digest}\"]\n"),
    );
    let strict_toml = write(dir.path(), "strict.toml", "");
    let bundle_path = dir.path().join("bundle.bin");

    // Lenient policy: verifies, and says NOT CONFIDENTIAL in plain words.
    let o = veil()
        .args(["attest", "fetch", "--server", &server.addr, "--policy"])
        .arg(&lenient_toml)
        .arg("--out")
        .arg(&bundle_path)
        .output()
        .expect("run veil attest fetch");
    assert!(o.status.success(), "{}", text(&o));
    let verdict = stdout_json(&o);
    assert_eq!(verdict["confidential"], false);
    assert_eq!(verdict["claims"]["model_digest"], digest.as_str());
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(stderr.contains("NOT CONFIDENTIAL"), "{}", text(&o));
    let nonce = stderr
        .lines()
        .find_map(|l| l.strip_prefix("nonce: "))
        .expect("the nonce is printed")
        .to_owned();

    // No policy: the strict default refuses simulated evidence.
    let o = veil()
        .args(["attest", "fetch", "--server", &server.addr])
        .output()
        .expect("run veil attest fetch");
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("simulated evidence not allowed"),
        "{}",
        text(&o)
    );

    // The saved bundle verifies offline, with and without its nonce.
    let verify = |bundle: &Path, policy: &Path, extra: &[&str]| {
        veil()
            .args(["attest", "verify"])
            .arg(bundle)
            .arg("--policy")
            .arg(policy)
            .args(extra)
            .output()
            .expect("run veil attest verify")
    };
    for extra in [&[][..], &["--nonce", nonce.as_str()][..]] {
        let o = verify(&bundle_path, &lenient_toml, extra);
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(stdout_json(&o)["claims"]["model_digest"], digest.as_str());
    }
    // Each failure exits non-zero naming its own error.
    let later = (now() + 3600).to_string();
    let other_nonce = hex::encode(fresh_nonce());
    for (extra, policy, want) in [
        (
            vec!["--nonce", other_nonce.as_str()],
            &lenient_toml,
            "nonce mismatch",
        ),
        (vec!["--at", later.as_str()], &lenient_toml, "expired"),
        (vec![], &strict_toml, "simulated evidence not allowed"),
    ] {
        let o = verify(&bundle_path, policy, &extra);
        assert!(!o.status.success(), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(want),
            "{want}: {}",
            text(&o)
        );
    }
    let bytes = std::fs::read(&bundle_path).expect("saved bundle");
    let saved = AttestationBundle::decode(bytes.as_slice()).expect("the saved bytes are a bundle");
    let tampered = write(
        dir.path(),
        "tampered.bin",
        with_claims(&saved, |c| c.confidential = true).encode_to_vec(),
    );
    let o = verify(&tampered, &lenient_toml, &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("claims mismatch"),
        "{}",
        text(&o)
    );

    // Inspect shows the claims and which checks pass: bindings and signatures yes, the
    // simulated chains only to their own roots.
    let o = veil()
        .args(["attest", "inspect"])
        .arg(&bundle_path)
        .output()
        .expect("run veil attest inspect");
    assert!(o.status.success(), "{}", text(&o));
    let doc = stdout_json(&o);
    assert_eq!(doc["kind"], "bundle");
    assert_eq!(doc["nonce"], nonce.as_str());
    assert_eq!(doc["claims"]["model_digest"], digest.as_str());
    assert_eq!(doc["claims"]["session_keys"][0]["algorithm"], "x25519");
    assert_eq!(doc["simulated"], true);
    assert_eq!(doc["gpus"][0]["kind"], "simulated-nvidia-spdm");
    assert_eq!(doc["gpus"][0]["report"]["driver_version"], "simulated");
    assert_eq!(doc["cpu"]["kind"], "simulated-snp-report");
    let status = |check: &str| -> String {
        doc["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["check"].as_str().is_some_and(|n| n.starts_with(check)))
            .unwrap_or_else(|| panic!("no check {check:?} in {}", doc["checks"]))["status"]
            .as_str()
            .expect("status")
            .to_owned()
    };
    for check in [
        "format version",
        "gpu[0] binding",
        "gpu[0] signature",
        "gpu[0] fwid",
        "cpu binding",
        "cpu signature",
    ] {
        assert_eq!(status(check), "valid", "{check}: {}", text(&o));
    }
    assert_eq!(status("gpu[0] chain (embedded, 3 certificates)"), "invalid");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("to its own root: valid"), "{}", text(&o));
    assert!(stderr.contains("NOT CONFIDENTIAL"), "{}", text(&o));
}

fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("attest/testdata")
        .join(rel)
}

fn inspect(args: &[&Path]) -> (Value, String) {
    let o = veil()
        .args(["attest", "inspect"])
        .args(args)
        .output()
        .expect("run veil attest inspect");
    assert!(o.status.success(), "{}", text(&o));
    (stdout_json(&o), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn inspect_real_vectors() {
    let facts: Value = serde_json::from_slice(&std::fs::read(testdata("facts.json")).expect("facts.json"))
        .expect("facts JSON");
    let facts = facts.as_object().expect("an object");
    assert_eq!(facts.len(), 8, "3 SPDM reports, 3 TDX quotes, 2 SNP reports");
    for (file, f) in facts {
        let certs = f["cert_chain"].as_str().or(f["vcek"].as_str()).map(testdata);
        let path = testdata(file);
        let mut args = vec![path.as_path()];
        if let Some(c) = &certs {
            args.extend([Path::new("--certs"), c.as_path()]);
        }
        let (doc, lines) = inspect(&args);
        let want_kind = match f["kind"].as_str() {
            Some("sev-snp-report") => "snp-report",
            Some(k) => k,
            None => panic!("{file}: no kind"),
        };
        assert_eq!(doc["kind"], want_kind, "{file}");
        for (key, want) in f.as_object().expect("facts") {
            if matches!(key.as_str(), "kind" | "cert_chain" | "vcek" | "signature_valid") {
                continue;
            }
            assert_eq!(&doc[key], want, "{file}: {key}");
        }
        // Every vector's signature verifies (the TDX quotes carry their own PCK chain).
        assert!(
            lines.lines().any(|l| l.starts_with("signature: valid")),
            "{file}:\n{lines}"
        );
        assert!(
            lines
                .lines()
                .any(|l| l.starts_with("chain (") && l.contains(": valid (to the pinned")),
            "{file}:\n{lines}"
        );
        assert!(!lines.contains("INVALID"), "{file}:\n{lines}");
    }

    // TDX with collateral, as of a time inside its window: the TCB status.
    let (doc, lines) = inspect(&[
        &testdata("tdx/dcapqvl_v4.dat"),
        Path::new("--collateral"),
        &testdata("tdx/dcapqvl_v4_collateral.json"),
        Path::new("--at"),
        Path::new("2025-07-01T00:00:00Z"),
    ]);
    assert_eq!(doc["tcb"]["status"], "UpToDate");
    assert!(lines.contains("tcb: valid (UpToDate"), "{lines}");

    // A report with the wrong chain: the signature and FWID checks fail, the chain itself holds.
    let (_, lines) = inspect(&[
        &testdata("nvidia/sdk_hopper_590_report.bin"),
        Path::new("--certs"),
        &testdata("nvidia/nvtrust_hopper_certchain.pem"),
    ]);
    assert!(lines.contains("signature: INVALID"), "{lines}");
    assert!(lines.contains("fwid: INVALID"), "{lines}");
    // No certificates: the signature is not checked, and inspect says what to pass.
    let (doc, lines) = inspect(&[&testdata("sev-snp/virtee_milan_report.bin")]);
    assert_eq!(
        doc["measurement"],
        facts["sev-snp/virtee_milan_report.bin"]["measurement"]
    );
    assert!(lines.contains("signature: not checked"), "{lines}");

    // Not evidence at all.
    let o = veil()
        .args(["attest", "inspect"])
        .arg(testdata("facts.json"))
        .output()
        .expect("run");
    assert!(!o.status.success(), "{}", text(&o));
}

#[test]
fn hardware_mode_without_a_tee_refuses_to_start() {
    if Path::new("/sys/kernel/config/tsm/report").exists() {
        eprintln!("skipped: this machine has configfs-tsm (a TDX or SEV-SNP guest)");
        return;
    }
    let args = ["--attestation", "hardware"].map(String::from);
    match Server::try_spawn(&args) {
        Ok(_) => panic!("--attestation hardware served without a CPU TEE"),
        Err(log) => {
            assert!(log.contains("no CPU TEE"), "{log}");
            assert!(!log.contains("listening on"), "{log}");
        }
    }
}
