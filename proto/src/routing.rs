//! The gRPC metadata that routes calls to replicas through untrusted gateways, and the marker of
//! the status a replica gives a request sealed to a key it does not hold
//! (docs/protocol.md §6, docs/scale-out.md §2).
//!
//! - [`KEY_ID_HEADER`] (`veil-key-id`): on `SealedGenerate`/`SealedGenerateBatch`, the 16 hex
//!   digits of `SealedRequest.key_id`. A gateway routes the call to the replica that owns that
//!   key; the replica checks that the header, when present, names the same key as the request.
//! - [`REPLICA_HEADER`] (`veil-replica`): the name of the replica a call is meant for
//!   (`GetAttestation` during discovery; sealed calls as a fallback when the gateway's key map is
//!   stale). Replicas ignore it.
//! - [`ERROR_HEADER`] = [`UNKNOWN_KEY_ID`] (`veil-error: unknown-key-id`): set on the
//!   FAILED_PRECONDITION status of a sealed request whose key id is not the replica's session
//!   key. It is the one signal that tells a client to fetch attestation again and re-seal; no
//!   other FAILED_PRECONDITION means that.

use tonic::Status;
use tonic::metadata::{MetadataMap, MetadataValue};

/// Metadata naming the session key a sealed request is sealed to (16 lower-case hex digits).
pub const KEY_ID_HEADER: &str = "veil-key-id";
/// Metadata naming the replica a call is meant for.
pub const REPLICA_HEADER: &str = "veil-replica";
/// Metadata carrying a machine-readable error marker on a status.
pub const ERROR_HEADER: &str = "veil-error";
/// The [`ERROR_HEADER`] value of a sealed request sealed to a key this replica does not hold.
pub const UNKNOWN_KEY_ID: &str = "unknown-key-id";

/// The FAILED_PRECONDITION status of a request sealed to a key this replica does not hold,
/// marked with `veil-error: unknown-key-id`.
pub fn unknown_key_id_status(message: impl Into<String>) -> Status {
    let mut md = MetadataMap::new();
    md.insert(ERROR_HEADER, MetadataValue::from_static(UNKNOWN_KEY_ID));
    Status::with_metadata(tonic::Code::FailedPrecondition, message, md)
}

/// Whether `status` is the unknown-key-id status: FAILED_PRECONDITION with the marker.
pub fn is_unknown_key_id(status: &Status) -> bool {
    status.code() == tonic::Code::FailedPrecondition
        && status
            .metadata()
            .get(ERROR_HEADER)
            .is_some_and(|v| v.as_bytes() == UNKNOWN_KEY_ID.as_bytes())
}

/// Whether `name` may name a replica: 1 to 63 of `A-Z a-z 0-9 . _ -`, starting with a letter or
/// digit. Such names are safe as metadata values and inside gateway configurations.
pub fn valid_replica_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trip() {
        let s = unknown_key_id_status("not ours");
        assert!(is_unknown_key_id(&s));
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        // Only the marker counts, not the code alone.
        assert!(!is_unknown_key_id(&Status::failed_precondition("not ours")));
        let mut md = MetadataMap::new();
        md.insert(ERROR_HEADER, MetadataValue::from_static("something-else"));
        let other = Status::with_metadata(tonic::Code::FailedPrecondition, "x", md);
        assert!(!is_unknown_key_id(&other));
        let mut md = MetadataMap::new();
        md.insert(ERROR_HEADER, MetadataValue::from_static(UNKNOWN_KEY_ID));
        let wrong_code = Status::with_metadata(tonic::Code::Unavailable, "x", md);
        assert!(!is_unknown_key_id(&wrong_code));
    }

    #[test]
    fn replica_names() {
        for ok in ["r0", "veil-0", "a.b_c-d", "0", &"x".repeat(63)] {
            assert!(valid_replica_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "a b",
            "a;b",
            "a{",
            "a}",
            "a\"",
            "a'",
            "a\n",
            "a$b",
            "a#b",
            "é",
            "a/b",
            &"x".repeat(64),
        ] {
            assert!(!valid_replica_name(bad), "{bad:?}");
        }
    }
}
