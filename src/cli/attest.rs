//! `veil attest`: inspect evidence, verify a bundle against a policy, fetch and verify a
//! server's attestation.
//!
//! - `inspect FILE` detects what FILE is (an `AttestationBundle`, an NVIDIA SPDM report, an
//!   AMD SEV-SNP report or an Intel TDX quote), prints its parsed fields as JSON on stdout and,
//!   on stderr, one line per check: signatures, certificate chains (embedded, given with
//!   `--certs`) to the pinned roots, bindings. It judges nothing against a policy, and exits 0
//!   whenever the file parses.
//! - `verify BUNDLE --policy FILE` runs the reference verifier
//!   ([`veil_attest::bundle::verify_bundle`]) and prints the verdict as JSON; the exit status is
//!   0 only when the bundle verifies.
//! - `fetch --server URL` asks a server for a bundle with a fresh random nonce and verifies it
//!   (by default with the strict policy, which rejects simulated evidence).
//! - `receipt FILE` checks a sealed call's saved receipt against the bundle saved with it.
//!
//! Times (`--at`) are Unix seconds or RFC 3339 (`2025-07-01T12:00:00Z`).

mod inspect;
mod receipt;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use prost::Message;
use rand_core::{OsRng, RngCore};
use tonic::transport::Endpoint;
use veil_attest::bundle::{Verdict, decode_bundle, verify_bundle};
use veil_attest::policy::Policy;
use veil_proto::v1::GetAttestationRequest;
use veil_proto::v1::inference_client::InferenceClient;

use super::remote::{load_policy, rejection};

/// `veil attest` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum AttestCommand {
    /// Print what a bundle, SPDM report, SNP report or TDX quote says, and whether its
    /// signatures and certificate chains verify.
    Inspect(inspect::InspectArgs),
    /// Verify a saved bundle against a policy (exit status 0 only when it verifies).
    Verify(VerifyArgs),
    /// Ask a server for a bundle with a fresh nonce and verify it.
    Fetch(FetchArgs),
    /// Check a sealed call's receipt (saved by `veil generate --server --receipt FILE`) against
    /// the bundle saved with it, and optionally the bundle against a policy.
    Receipt(receipt::ReceiptArgs),
}

/// Arguments of `veil attest verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The bundle (protobuf `AttestationBundle` bytes, as `veil attest fetch --out` saves it).
    bundle: PathBuf,
    /// The policy (TOML, see docs/attestation.md).
    #[arg(long)]
    policy: PathBuf,
    /// Verify as of this time: Unix seconds or RFC 3339 [default: now].
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// The nonce the bundle must answer (64 hex digits) [default: not checked].
    #[arg(long, value_name = "HEX")]
    nonce: Option<String>,
}

/// Arguments of `veil attest fetch`.
#[derive(Debug, Args)]
pub(crate) struct FetchArgs {
    /// The server: URL or HOST:PORT.
    #[arg(long, default_value = "http://127.0.0.1:50051", env = "VEIL_SERVER")]
    server: String,
    /// The policy (TOML) [default: strict: hardware evidence only, GPUs in CC mode].
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Save the bundle's bytes here (also when it does not verify).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// Runs a `veil attest` subcommand.
pub(crate) fn run(c: AttestCommand) -> anyhow::Result<()> {
    match c {
        AttestCommand::Inspect(a) => inspect::run(a),
        AttestCommand::Verify(a) => verify(a),
        AttestCommand::Fetch(a) => fetch(a),
        AttestCommand::Receipt(a) => receipt::run(a),
    }
}

/// Prints a verdict: the JSON on stdout, the summary in plain words on stderr.
pub(super) fn print_verdict(v: &Verdict) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    eprintln!("{}", v.summary);
    if !v.confidential {
        eprintln!("NOT CONFIDENTIAL: do not send this server anything the operator must not read.");
    }
    Ok(())
}

fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&a.bundle).with_context(|| format!("reading {}", a.bundle.display()))?;
    let bundle = decode_bundle(&bytes).with_context(|| format!("{} is not a bundle", a.bundle.display()))?;
    let policy = load_policy(&a.policy)?;
    let nonce = a.nonce.as_deref().map(parse_nonce).transpose()?;
    let at = a.at.as_deref().map(parse_time).transpose()?.unwrap_or_else(now);
    match verify_bundle(&bundle, nonce.as_ref(), &policy, at) {
        Ok(v) => print_verdict(&v),
        Err(e) => bail!("the bundle does not verify: {}", rejection(&e)),
    }
}

fn fetch(a: FetchArgs) -> anyhow::Result<()> {
    let policy = match &a.policy {
        Some(p) => load_policy(p)?,
        None => Policy::default(),
    };
    let mut nonce = [0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    let url = if a.server.contains("://") {
        a.server.clone()
    } else {
        format!("http://{}", a.server)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let bundle = rt.block_on(async {
        let channel = Endpoint::from_shared(url.clone())
            .with_context(|| format!("invalid server address {:?}", a.server))?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .with_context(|| format!("cannot connect to the Veil server at {url}"))?;
        let mut client = InferenceClient::new(channel).max_decoding_message_size(64 << 20);
        let resp = client
            .get_attestation(GetAttestationRequest {
                nonce: nonce.to_vec(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("GetAttestation failed: {:?}: {}", s.code(), s.message()))?;
        resp.into_inner()
            .bundle
            .context("the server answered without a bundle")
    })?;
    eprintln!("nonce: {}", hex::encode(nonce));
    if let Some(out) = &a.out {
        std::fs::write(out, bundle.encode_to_vec()).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("bundle saved to {}", out.display());
    }
    match verify_bundle(&bundle, Some(&nonce), &policy, now()) {
        Ok(v) => print_verdict(&v),
        Err(e) => bail!("the server's attestation does not verify: {}", rejection(&e)),
    }
}

fn parse_nonce(s: &str) -> anyhow::Result<[u8; 32]> {
    hex::decode(s.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .with_context(|| format!("--nonce {s:?}: want 64 hex digits (32 bytes)"))
}

/// Unix seconds now.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix seconds or RFC 3339 (`2025-07-01T12:00:00Z`, `2025-07-01T14:00:00.5+02:00`).
pub(super) fn parse_time(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .with_context(|| format!("{s:?}: Unix seconds out of range"));
    }
    parse_rfc3339(s)
        .and_then(|t| u64::try_from(t).ok())
        .with_context(|| {
            format!("{s:?} is neither Unix seconds nor an RFC 3339 time like 2025-07-01T12:00:00Z")
        })
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let days_in_month = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if d < 1 || d > days_in_month || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec.min(59) - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds as RFC 3339 UTC (`2025-07-01T12:00:00Z`).
fn rfc3339(t: u64) -> String {
    let t = i64::try_from(t).unwrap_or(i64::MAX);
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_format() {
        assert_eq!(parse_time("1751328000").ok(), Some(1_751_328_000));
        assert_eq!(parse_time("2025-07-01T00:00:00Z").ok(), Some(1_751_328_000));
        assert_eq!(
            parse_time("2025-07-01T02:30:00.25+02:30").ok(),
            Some(1_751_328_000)
        );
        assert_eq!(parse_time("2000-02-29T23:59:59z").ok(), Some(951_868_799));
        assert_eq!(parse_time("1970-01-01 00:00:00Z").ok(), Some(0));
        for bad in [
            "",
            "yesterday",
            "2025-02-29T00:00:00Z",
            "2025-07-01T00:00:00",
            "2025-13-01T00:00:00Z",
            "2025-07-01T24:00:00Z",
            "1969-12-31T23:59:59Z",
            "2025-07-01T00:00:00.Z",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
        for t in [0, 951_868_799, 1_751_328_000, 4_102_444_800] {
            assert_eq!(parse_time(&rfc3339(t)).ok(), Some(t), "{}", rfc3339(t));
        }
        assert_eq!(rfc3339(1_751_328_000), "2025-07-01T00:00:00Z");
    }

    #[test]
    fn nonces_must_be_32_bytes_of_hex() {
        assert_eq!(parse_nonce(&"ab".repeat(32)).ok(), Some([0xab; 32]));
        assert!(parse_nonce("abcd").is_err());
        assert!(parse_nonce(&"zz".repeat(32)).is_err());
    }
}
