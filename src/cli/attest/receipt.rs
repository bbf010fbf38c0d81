//! `veil attest receipt FILE`: checks a receipt saved by `veil generate --server --receipt FILE`
//! against the attestation bundle saved with it, and the bundle against a policy (the strict one
//! by default): a receipt means something only if its bundle's evidence verifies.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use veil_attest::bundle::{decode_bundle, verify_bundle};
use veil_client::{Receipt, ReceiptClaims, check_receipt};

use super::{parse_time, print_verdict};
use crate::cli::remote::{load_policy, rejection};

/// Arguments of `veil attest receipt`.
#[derive(Debug, Args)]
pub(crate) struct ReceiptArgs {
    /// The receipt (JSON written by `veil generate --server --receipt FILE`).
    receipt: PathBuf,
    /// The policy the bundle must satisfy (TOML) [default: strict: hardware evidence only].
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Verify the bundle as of this time: Unix seconds or RFC 3339 [default: the time the
    /// bundle was made, so that an old receipt can still be checked].
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
}

/// A field of the receipt file: exactly `N` bytes of hex.
fn field<const N: usize>(doc: &serde_json::Value, name: &str) -> anyhow::Result<[u8; N]> {
    let text = doc[name]
        .as_str()
        .with_context(|| format!("the receipt has no string field {name:?}"))?;
    hex::decode(text)
        .ok()
        .and_then(|b| <[u8; N]>::try_from(b.as_slice()).ok())
        .with_context(|| format!("{name}: want {} hex digits", 2 * N))
}

pub(super) fn run(a: ReceiptArgs) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&a.receipt).with_context(|| format!("reading {}", a.receipt.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", a.receipt.display()))?;
    let receipt = Receipt {
        claims: ReceiptClaims {
            request_digest: field(&doc, "request_digest")?,
            response_digest: field(&doc, "response_digest")?,
            model_digest: field(&doc, "model_digest")?,
            bundle_digest: field(&doc, "bundle_digest")?,
        },
        signature: field(&doc, "signature")?,
        public_key: field(&doc, "receipt_public_key")?,
    };
    let bundle_bytes = doc["bundle"]
        .as_str()
        .and_then(|h| hex::decode(h).ok())
        .context("bundle: want the bundle's bytes in hex")?;
    let bundle = decode_bundle(&bundle_bytes).context("bundle")?;
    check_receipt(&receipt, &bundle).context("the receipt does not check out")?;
    {
        let policy = match &a.policy {
            Some(path) => load_policy(path)?,
            None => veil_attest::policy::Policy::default(),
        };
        let at = match &a.at {
            Some(t) => parse_time(t)?,
            None => {
                let claims: veil_proto::v1::AttestationClaims =
                    prost::Message::decode(bundle.claims.as_slice()).context("the bundle's claims")?;
                u64::try_from(claims.server_time_unix).unwrap_or(0)
            }
        };
        match verify_bundle(&bundle, None, &policy, at) {
            Ok(v) => print_verdict(&v)?,
            Err(e) => anyhow::bail!(
                "the receipt's signature matches its bundle, but the bundle does not verify: {}",
                rejection(&e)
            ),
        }
    }
    eprintln!(
        "receipt OK: signed by {} for model {} under bundle {}",
        hex::encode(receipt.public_key),
        hex::encode(receipt.claims.model_digest),
        hex::encode(receipt.claims.bundle_digest)
    );
    Ok(())
}
