//! Locally made P-384 certificates (ecdsa-with-SHA384), for simulated evidence and tests.
//!
//! Certificates made here follow the shape of NVIDIA's device chains closely enough for the real
//! chain checker ([`x509::verify_chain`]) and FWID check ([`crate::nvidia::dice_fwids`]) to run
//! on them: X.509 v3, basicConstraints (critical), keyUsage, and on request the TCG DICE
//! extension (OID 2.23.133.5.4.1) in the composite-device-identifier form NVIDIA leaves carry,
//! `SEQUENCE { version INTEGER (1), SubjectPublicKeyInfo, FWID }` with
//! `FWID ::= SEQUENCE { hashAlg OBJECT IDENTIFIER (SHA-384), digest OCTET STRING }`.
//!
//! Nothing here panics: every failure is an [`Error::Collect`] (making evidence failed).

use std::str::FromStr;
use std::time::Duration;

use der::asn1::{AnyRef, BitString, GeneralizedTime, OctetString, OctetStringRef, UtcTime};
use der::{Encode, EncodePem, Tag};
use p384::ecdsa::signature::Signer;
use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
use rand_core::{OsRng, RngCore};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};

use crate::x509::{self, Certificate};
use crate::{Error, Result};

/// 9999-12-31T23:59:59Z, the "no expiry" date of RFC 5280 (also the NVIDIA root's notAfter).
pub(crate) const NO_EXPIRY: u64 = 253_402_300_799;

/// 2050-01-01T00:00:00Z: from here on RFC 5280 wants GeneralizedTime instead of UTCTime.
const UTC_TIME_END: u64 = 2_524_608_000;

fn err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Collect(format!("making a local certificate: {what}: {e}"))
}

/// What goes into one certificate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CertSpec<'a> {
    /// Serial number, big-endian, positive (first byte below 0x80), not empty.
    pub(crate) serial: &'a [u8],
    /// Subject as an RFC 4514 string, e.g. `CN=Veil SIMULATED GPU Root,O=Veil`.
    pub(crate) subject: &'a str,
    /// Issuer as an RFC 4514 string (equal to `subject` for a self-signed root).
    pub(crate) issuer: &'a str,
    /// A CA (basicConstraints cA, keyUsage keyCertSign + cRLSign) or an end entity (keyUsage
    /// digitalSignature).
    pub(crate) ca: bool,
    /// A DICE FWID (SHA-384 digest) to put into the TCG DICE extension.
    pub(crate) fwid: Option<&'a [u8]>,
    /// notBefore, Unix seconds.
    pub(crate) not_before: u64,
    /// notAfter, Unix seconds.
    pub(crate) not_after: u64,
}

/// A fresh P-384 key from the operating system's generator (`getrandom`).
pub(crate) fn random_key() -> Result<SigningKey> {
    // Rejection sampling: a random 48-byte string is a valid scalar except with probability
    // ~2^-190, so a few tries always suffice; `try_fill_bytes` reports a generator failure
    // instead of panicking like `SigningKey::random` would.
    for _ in 0..8 {
        let bytes: [u8; 48] = random_bytes()?;
        if let Ok(key) = SigningKey::from_slice(&bytes) {
            return Ok(key);
        }
    }
    Err(Error::Collect(
        "the random generator gave no valid P-384 scalar in 8 tries".into(),
    ))
}

/// `N` random bytes from the operating system's generator.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    OsRng
        .try_fill_bytes(&mut out)
        .map_err(|e| Error::Collect(format!("the operating system's random generator failed: {e}")))?;
    Ok(out)
}

/// A random positive 16-byte serial number.
pub(crate) fn random_serial() -> Result<[u8; 16]> {
    let mut s: [u8; 16] = random_bytes()?;
    // Positive and minimally encoded: first byte in 0x01..=0x7F.
    s[0] = (s[0] & 0x7F) | 0x01;
    Ok(s)
}

/// ECDSA P-384 / SHA-384 signature, raw `r || s` big-endian (the SPDM format).
pub(crate) fn sign_raw(key: &SigningKey, msg: &[u8]) -> Result<[u8; 96]> {
    let sig: Signature = key.try_sign(msg).map_err(|e| err("ECDSA signing", e))?;
    let mut out = [0u8; 96];
    out.copy_from_slice(&sig.to_bytes());
    Ok(out)
}

/// The SubjectPublicKeyInfo of a P-384 key (id-ecPublicKey, secp384r1, uncompressed point).
pub(crate) fn p384_spki(key: &VerifyingKey) -> Result<SubjectPublicKeyInfoOwned> {
    let point = key.to_encoded_point(false);
    Ok(SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: x509::oids::EC_PUBLIC_KEY,
            parameters: Some(der::Any::encode_from(&x509::oids::SECP384R1).map_err(|e| err("curve OID", e))?),
        },
        subject_public_key: BitString::from_bytes(point.as_bytes()).map_err(|e| err("public key", e))?,
    })
}

fn sequence(body: &[u8]) -> Result<Vec<u8>> {
    AnyRef::new(Tag::Sequence, body)
        .and_then(|a| a.to_der())
        .map_err(|e| err("SEQUENCE", e))
}

/// The value of the TCG DICE extension in NVIDIA's composite form:
/// `SEQUENCE { 1, SubjectPublicKeyInfo, SEQUENCE { id-sha384, OCTET STRING fwid } }`.
pub(crate) fn dice_extension_value(spki: &SubjectPublicKeyInfoOwned, fwid: &[u8]) -> Result<Vec<u8>> {
    let mut fw = x509::oids::SHA384.to_der().map_err(|e| err("FWID hash OID", e))?;
    fw.extend(
        OctetStringRef::new(fwid)
            .and_then(|o| o.to_der())
            .map_err(|e| err("FWID digest", e))?,
    );
    let mut body = 1u8.to_der().map_err(|e| err("DICE version", e))?;
    body.extend(spki.to_der().map_err(|e| err("DICE SPKI", e))?);
    body.extend(sequence(&fw)?);
    sequence(&body)
}

fn time(secs: u64) -> Result<Time> {
    let d = Duration::from_secs(secs);
    Ok(if secs < UTC_TIME_END {
        Time::UtcTime(UtcTime::from_unix_duration(d).map_err(|e| err("UTCTime", e))?)
    } else {
        Time::GeneralTime(GeneralizedTime::from_unix_duration(d).map_err(|e| err("GeneralizedTime", e))?)
    })
}

fn extension(oid: const_oid::ObjectIdentifier, critical: bool, value: Vec<u8>) -> Result<Extension> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value).map_err(|e| err("extension value", e))?,
    })
}

/// Makes a certificate for `subject_key`, signed by `issuer_key` (ecdsa-with-SHA384).
pub(crate) fn p384_cert(
    spec: &CertSpec<'_>,
    subject_key: &VerifyingKey,
    issuer_key: &SigningKey,
) -> Result<Certificate> {
    let spki = p384_spki(subject_key)?;
    let bc = BasicConstraints {
        ca: spec.ca,
        path_len_constraint: None,
    };
    let ku = if spec.ca {
        KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)
    } else {
        KeyUsage(KeyUsages::DigitalSignature.into())
    };
    let mut exts = vec![
        extension(
            x509::oids::BASIC_CONSTRAINTS,
            true,
            bc.to_der().map_err(|e| err("basicConstraints", e))?,
        )?,
        extension(
            x509::oids::KEY_USAGE,
            true,
            ku.to_der().map_err(|e| err("keyUsage", e))?,
        )?,
    ];
    if let Some(fwid) = spec.fwid {
        exts.push(extension(
            x509::oids::TCG_DICE_TCB_INFO,
            false,
            dice_extension_value(&spki, fwid)?,
        )?);
    }
    let alg = AlgorithmIdentifierOwned {
        oid: x509::oids::ECDSA_WITH_SHA384,
        parameters: None,
    };
    let tbs = x509_cert::TbsCertificate {
        version: x509_cert::Version::V3,
        serial_number: SerialNumber::new(spec.serial).map_err(|e| err("serial number", e))?,
        signature: alg.clone(),
        issuer: Name::from_str(spec.issuer).map_err(|e| err("issuer name", e))?,
        validity: Validity {
            not_before: time(spec.not_before)?,
            not_after: time(spec.not_after)?,
        },
        subject: Name::from_str(spec.subject).map_err(|e| err("subject name", e))?,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(exts),
    };
    let tbs_der = tbs.to_der().map_err(|e| err("TBSCertificate", e))?;
    let sig: Signature = issuer_key
        .try_sign(&tbs_der)
        .map_err(|e| err("ECDSA signing", e))?;
    Ok(Certificate {
        tbs_certificate: tbs,
        signature_algorithm: alg,
        signature: BitString::from_bytes(sig.to_der().as_bytes()).map_err(|e| err("signature", e))?,
    })
}

/// Concatenated PEM of `certs`, in the given order (LF line endings).
pub(crate) fn to_pem(certs: &[Certificate]) -> Result<Vec<u8>> {
    let mut out = String::new();
    for c in certs {
        out.push_str(&c.to_pem(der::pem::LineEnding::LF).map_err(|e| err("PEM", e))?);
    }
    Ok(out.into_bytes())
}

/// The current time in Unix seconds (0 if the clock is before 1970).
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn chain_with_fwid_verifies_and_carries_the_fwid() {
        let (rk, lk) = (random_key().unwrap(), random_key().unwrap());
        let spec = |serial: &'static [u8], subject: &'static str, issuer: &'static str, ca: bool| CertSpec {
            serial,
            subject,
            issuer,
            ca,
            fwid: None,
            not_before: 1_600_000_000,
            not_after: NO_EXPIRY,
        };
        let root = p384_cert(
            &spec(&[1], "CN=R,O=Veil", "CN=R,O=Veil", true),
            rk.verifying_key(),
            &rk,
        )
        .unwrap();
        let fwid = [7u8; 48];
        let leaf = p384_cert(
            &CertSpec {
                fwid: Some(&fwid),
                ..spec(&[2], "CN=L,O=Veil", "CN=R,O=Veil", false)
            },
            lk.verifying_key(),
            &rk,
        )
        .unwrap();
        x509::verify_chain(&[leaf.clone(), root.clone()], &root, Some(1_700_000_000)).unwrap();
        assert!(x509::verify_chain(std::slice::from_ref(&leaf), &root, Some(1_500_000_000)).is_err());
        let fwids = crate::nvidia::dice_fwids(&leaf).unwrap().unwrap();
        assert_eq!(fwids[0].digest, fwid);
        assert_eq!(fwids[0].hash_alg, x509::oids::SHA384);
        // PEM round trip, order kept.
        let pem = to_pem(&[leaf.clone(), root.clone()]).unwrap();
        assert_eq!(x509::parse_pem_bundle(&pem).unwrap(), vec![leaf.clone(), root]);
        // A leaf is no issuer.
        let other = p384_cert(&spec(&[3], "CN=X", "CN=L,O=Veil", false), rk.verifying_key(), &lk).unwrap();
        assert!(matches!(
            x509::verify_chain(&[other, leaf], &x509::parse_pem_bundle(&pem).unwrap()[1], None),
            Err(Error::CertificateChain(_))
        ));
    }

    #[test]
    fn randomness_and_raw_signatures() {
        let a = random_key().unwrap();
        let b = random_key().unwrap();
        assert_ne!(a.to_bytes(), b.to_bytes());
        let s = random_serial().unwrap();
        assert!((1..0x80).contains(&s[0]));
        let sig = sign_raw(&a, b"msg").unwrap();
        use p384::ecdsa::signature::Verifier;
        a.verifying_key()
            .verify(b"msg", &Signature::from_slice(&sig).unwrap())
            .unwrap();
        assert!(
            b.verifying_key()
                .verify(b"msg", &Signature::from_slice(&sig).unwrap())
                .is_err()
        );
    }
}
