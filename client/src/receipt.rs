//! Checking a receipt later, against the attestation bundle that carries its key.

use prost::Message;
use veil_attest::bundle::claims_digest;
use veil_proto::v1::{AttestationBundle, AttestationClaims};
use veil_seal::Receipt;

use crate::error::{ClientError, Result};

/// Checks that `receipt` was signed by the engine `bundle` attests: the bundle's claims digest
/// is the receipt's bundle digest, its claims carry the receipt's public key and model digest,
/// and the signature verifies. Verify the bundle itself (`verify_bundle`, against a policy) to
/// know what that engine was.
pub fn check_receipt(receipt: &Receipt, bundle: &AttestationBundle) -> Result<()> {
    if claims_digest(&bundle.claims) != receipt.claims.bundle_digest {
        return Err(ClientError::Protocol(
            "the receipt names another bundle (its bundle digest is not SHA-256 of these claims)".into(),
        ));
    }
    let claims = AttestationClaims::decode(bundle.claims.as_slice())
        .map_err(|e| ClientError::Protocol(format!("the bundle's claims do not decode: {e}")))?;
    if claims.receipt_public_key != receipt.public_key {
        return Err(ClientError::Protocol(
            "the receipt was not signed with the bundle's receipt key".into(),
        ));
    }
    if claims.model_digest != receipt.claims.model_digest {
        return Err(ClientError::Protocol(
            "the receipt names another model than the bundle".into(),
        ));
    }
    Ok(receipt.verify()?)
}
