//! X.509 certificate parsing and chain checking shared by the NVIDIA, TDX and SEV-SNP verifiers.
//!
//! Only what attestation needs, done strictly:
//! - [`parse_der`], [`parse_pem_bundle`] (concatenated PEM, leaf first, text between blocks
//!   ignored) and [`parse_certs`] (either) turn hostile bytes into [`Certificate`]s or an
//!   [`Error::Malformed`], never a panic;
//! - [`verify_issued_by`] checks that `issuer` signed `child` (ECDSA P-256/P-384 with SHA-256/384/512,
//!   RSA PKCS#1 v1.5 with SHA-256/384/512, RSASSA-PSS with the hash, MGF1 hash and salt length
//!   taken from the signature algorithm's parameters) and that the names chain;
//! - [`verify_chain`] walks leaf → ... → pinned root with validity windows and CA constraints;
//! - helpers: [`p384_verifying_key`], [`p256_verifying_key`], [`subject_string`],
//!   [`extension`], [`fingerprint_sha256`].
//!
//! Signature failures on certificates are [`Error::CertificateChain`] (a certificate that does
//! not chain), algorithms outside the list above are [`Error::Unsupported`].
//!
//! Not checked (documented limits): name constraints, policies, unknown critical extensions,
//! revocation (OCSP/CRL are the callers' business).

use const_oid::ObjectIdentifier;
use der::{Decode, Encode};
use sha2::{Digest, Sha256, Sha384, Sha512};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};
use x509_cert::name::Name;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use crate::{Error, Result};

pub use x509_cert::Certificate;

const FMT: &str = "X.509";

/// Object identifiers used by this module (public so callers can name them in tests and policy).
pub mod oids {
    use const_oid::ObjectIdentifier;

    /// ecdsa-with-SHA256.
    pub const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
    /// ecdsa-with-SHA384.
    pub const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
    /// ecdsa-with-SHA512.
    pub const ECDSA_WITH_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");
    /// sha256WithRSAEncryption.
    pub const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
    /// sha384WithRSAEncryption.
    pub const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
    /// sha512WithRSAEncryption.
    pub const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
    /// id-RSASSA-PSS.
    pub const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
    /// id-mgf1.
    pub const MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
    /// rsaEncryption (SubjectPublicKeyInfo algorithm).
    pub const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    /// id-ecPublicKey (SubjectPublicKeyInfo algorithm).
    pub const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    /// secp256r1 / P-256 named curve.
    pub const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    /// secp384r1 / P-384 named curve.
    pub const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
    /// SHA-256.
    pub const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
    /// SHA-384.
    pub const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
    /// SHA-512.
    pub const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
    /// basicConstraints.
    pub const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
    /// keyUsage.
    pub const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
    /// TCG DICE TcbInfo (tcg-dice-TcbInfo), used by NVIDIA device certificates.
    pub const TCG_DICE_TCB_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.5.4.1");
}

/// A hash function named by a signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlg {
    /// The hash of `msg`.
    pub fn digest(self, msg: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => Sha256::digest(msg).to_vec(),
            Self::Sha384 => Sha384::digest(msg).to_vec(),
            Self::Sha512 => Sha512::digest(msg).to_vec(),
        }
    }

    /// The hash algorithm named by a digest OID (SHA-256/384/512), if any.
    pub fn from_oid(oid: &ObjectIdentifier) -> Option<Self> {
        if *oid == oids::SHA256 {
            Some(Self::Sha256)
        } else if *oid == oids::SHA384 {
            Some(Self::Sha384)
        } else if *oid == oids::SHA512 {
            Some(Self::Sha512)
        } else {
            None
        }
    }

    fn output_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }
}

/// A signature scheme as named by an X.509 `AlgorithmIdentifier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureScheme {
    /// ECDSA with the given hash; the signature is a DER `ECDSA-Sig-Value`.
    Ecdsa(HashAlg),
    /// RSASSA-PKCS1-v1_5 with the given hash.
    RsaPkcs1v15(HashAlg),
    /// RSASSA-PSS with the given hash (also the MGF1 hash) and salt length.
    RsaPss {
        /// Message and MGF1 hash.
        hash: HashAlg,
        /// Salt length in bytes.
        salt_len: usize,
    },
}

impl SignatureScheme {
    /// Reads a signature `AlgorithmIdentifier` (PSS parameters included).
    pub fn from_algorithm(alg: &AlgorithmIdentifierOwned) -> Result<Self> {
        let oid = alg.oid;
        let simple = [
            (oids::ECDSA_WITH_SHA256, Self::Ecdsa(HashAlg::Sha256)),
            (oids::ECDSA_WITH_SHA384, Self::Ecdsa(HashAlg::Sha384)),
            (oids::ECDSA_WITH_SHA512, Self::Ecdsa(HashAlg::Sha512)),
            (oids::SHA256_WITH_RSA, Self::RsaPkcs1v15(HashAlg::Sha256)),
            (oids::SHA384_WITH_RSA, Self::RsaPkcs1v15(HashAlg::Sha384)),
            (oids::SHA512_WITH_RSA, Self::RsaPkcs1v15(HashAlg::Sha512)),
        ];
        if let Some((_, s)) = simple.iter().find(|(o, _)| *o == oid) {
            return Ok(*s);
        }
        if oid == oids::RSASSA_PSS {
            return parse_pss_params(alg);
        }
        Err(Error::Unsupported {
            what: "X.509 signature algorithm",
            value: oid.to_string(),
        })
    }
}

fn parse_pss_params(alg: &AlgorithmIdentifierOwned) -> Result<SignatureScheme> {
    let params = alg
        .parameters
        .as_ref()
        .ok_or_else(|| Error::malformed(FMT, "RSASSA-PSS without parameters"))?;
    let der = params
        .to_der()
        .map_err(|e| Error::malformed(FMT, format!("PSS parameters: {e}")))?;
    let p = rsa::pkcs1::RsaPssParams::from_der(&der)
        .map_err(|e| Error::malformed(FMT, format!("PSS parameters: {e}")))?;
    let hash = HashAlg::from_oid(&p.hash.oid).ok_or_else(|| Error::Unsupported {
        what: "RSASSA-PSS hash",
        value: p.hash.oid.to_string(),
    })?;
    if p.mask_gen.oid != oids::MGF1 {
        return Err(Error::Unsupported {
            what: "RSASSA-PSS mask generation",
            value: p.mask_gen.oid.to_string(),
        });
    }
    let mgf_hash = p
        .mask_gen
        .parameters
        .as_ref()
        .and_then(|h| HashAlg::from_oid(&h.oid))
        .ok_or_else(|| Error::Unsupported {
            what: "RSASSA-PSS MGF1 hash",
            value: "absent/unknown".into(),
        })?;
    if mgf_hash != hash {
        return Err(Error::Unsupported {
            what: "RSASSA-PSS MGF1 hash",
            value: format!("{mgf_hash:?} differs from message hash {hash:?}"),
        });
    }
    if p.trailer_field != rsa::pkcs1::TrailerField::BC {
        return Err(Error::Unsupported {
            what: "RSASSA-PSS trailer field",
            value: "not 1".into(),
        });
    }
    Ok(SignatureScheme::RsaPss {
        hash,
        salt_len: usize::from(p.salt_len),
    })
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// Parses one DER certificate (strict DER; trailing bytes are an error).
pub fn parse_der(der: &[u8]) -> Result<Certificate> {
    Certificate::from_der(der).map_err(|e| Error::malformed(FMT, format!("certificate DER: {e}")))
}

/// Parses every `-----BEGIN CERTIFICATE-----` block of a PEM bundle, in order (leaf first for
/// the chains attestation APIs return). Text outside the blocks (and trailing NULs) is ignored;
/// a bundle without any certificate is an error.
pub fn parse_pem_bundle(pem: &[u8]) -> Result<Vec<Certificate>> {
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    const END: &[u8] = b"-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = find(rest, BEGIN) {
        let after = &rest[start..];
        let end = find(after, END)
            .ok_or_else(|| Error::malformed(FMT, "PEM block without END line"))?
            .checked_add(END.len())
            .ok_or_else(|| Error::malformed(FMT, "PEM length"))?;
        let block = &after[..end];
        let (label, der) = der::pem::decode_vec(block)
            .map_err(|e| Error::malformed(FMT, format!("PEM block {}: {e}", out.len())))?;
        if label != "CERTIFICATE" {
            return Err(Error::malformed(FMT, format!("PEM label {label:?}")));
        }
        out.push(parse_der(&der)?);
        rest = &after[end..];
    }
    if out.is_empty() {
        return Err(Error::malformed(FMT, "no PEM certificate found"));
    }
    Ok(out)
}

/// Parses a single PEM certificate (exactly one block).
pub fn parse_pem(pem: &[u8]) -> Result<Certificate> {
    let mut certs = parse_pem_bundle(pem)?;
    if certs.len() != 1 {
        return Err(Error::malformed(
            FMT,
            format!("expected one PEM certificate, found {}", certs.len()),
        ));
    }
    Ok(certs.remove(0))
}

/// Parses either a PEM bundle (if the bytes contain a PEM header) or one DER certificate.
pub fn parse_certs(bytes: &[u8]) -> Result<Vec<Certificate>> {
    if find(bytes, b"-----BEGIN").is_some() {
        parse_pem_bundle(bytes)
    } else {
        Ok(vec![parse_der(bytes)?])
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The DER encoding of a certificate.
pub fn to_der(cert: &Certificate) -> Result<Vec<u8>> {
    cert.to_der()
        .map_err(|e| Error::malformed(FMT, format!("encode certificate: {e}")))
}

/// SHA-256 of the certificate's DER encoding (the usual "fingerprint").
pub fn fingerprint_sha256(cert: &Certificate) -> Result<[u8; 32]> {
    Ok(Sha256::digest(to_der(cert)?).into())
}

// ---------------------------------------------------------------------------------------------
// Names and extensions

/// The subject as an RFC 4514 string, formatted like Python `cryptography`'s
/// `Name.rfc4514_string()` (last RDN first; CN, L, ST, O, OU, C, STREET, DC, UID by short name,
/// other attributes as dotted OIDs), e.g.
/// `CN=GH100 A01 GSP FMC LF,O=NVIDIA Corporation,C=US,2.5.4.5=53C2...`.
pub fn subject_string(cert: &Certificate) -> String {
    name_string(&cert.tbs_certificate.subject)
}

/// The issuer, formatted like [`subject_string`].
pub fn issuer_string(cert: &Certificate) -> String {
    name_string(&cert.tbs_certificate.issuer)
}

/// An X.509 name formatted as in [`subject_string`].
pub fn name_string(name: &Name) -> String {
    let mut rdns = Vec::new();
    for rdn in name.0.iter().rev() {
        let atvs: Vec<String> = rdn
            .0
            .iter()
            .map(|atv| format!("{}={}", attr_short_name(&atv.oid), attr_value_string(&atv.value)))
            .collect();
        rdns.push(atvs.join("+"));
    }
    rdns.join(",")
}

fn attr_short_name(oid: &ObjectIdentifier) -> String {
    let known = [
        ("2.5.4.3", "CN"),
        ("2.5.4.7", "L"),
        ("2.5.4.8", "ST"),
        ("2.5.4.10", "O"),
        ("2.5.4.11", "OU"),
        ("2.5.4.6", "C"),
        ("2.5.4.9", "STREET"),
        ("0.9.2342.19200300.100.1.25", "DC"),
        ("0.9.2342.19200300.100.1.1", "UID"),
    ];
    let s = oid.to_string();
    known
        .iter()
        .find(|(o, _)| *o == s)
        .map(|(_, n)| (*n).to_string())
        .unwrap_or(s)
}

fn attr_value_string(value: &der::Any) -> String {
    use der::{Tag, Tagged};
    let text = match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::TeletexString | Tag::VisibleString => {
            std::str::from_utf8(value.value()).ok().map(str::to_owned)
        }
        _ => None,
    };
    match text {
        Some(t) => rfc4514_escape(&t),
        None => format!("#{}", hex::encode(value.to_der().unwrap_or_default())),
    }
}

fn rfc4514_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let n = s.chars().count();
    for (i, c) in s.chars().enumerate() {
        match c {
            '\\' | '"' | '+' | ',' | ';' | '<' | '>' => {
                out.push('\\');
                out.push(c);
            }
            '\0' => out.push_str("\\00"),
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i + 1 == n => out.push_str("\\ "),
            _ => out.push(c),
        }
    }
    out
}

/// The extension with this OID, if present (the first one; duplicates are not expected).
pub fn extension<'a>(cert: &'a Certificate, oid: &ObjectIdentifier) -> Option<&'a Extension> {
    cert.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id == *oid)
}

/// The DER value (content of `extnValue`) of the extension with this OID, if present.
pub fn extension_value<'a>(cert: &'a Certificate, oid: &ObjectIdentifier) -> Option<&'a [u8]> {
    extension(cert, oid).map(|e| e.extn_value.as_bytes())
}

/// The certificate's basicConstraints, if it has the extension.
pub fn basic_constraints(cert: &Certificate) -> Result<Option<BasicConstraints>> {
    extension_value(cert, &oids::BASIC_CONSTRAINTS)
        .map(|v| {
            BasicConstraints::from_der(v).map_err(|e| Error::malformed(FMT, format!("basicConstraints: {e}")))
        })
        .transpose()
}

// ---------------------------------------------------------------------------------------------
// Public keys

/// A verifying key taken from a SubjectPublicKeyInfo.
#[derive(Debug, Clone)]
pub enum PublicKey {
    /// ECDSA P-256.
    P256(p256::ecdsa::VerifyingKey),
    /// ECDSA P-384.
    P384(p384::ecdsa::VerifyingKey),
    /// RSA.
    Rsa(rsa::RsaPublicKey),
}

impl PublicKey {
    /// Reads the key of a SubjectPublicKeyInfo (id-ecPublicKey on P-256/P-384, rsaEncryption or
    /// id-RSASSA-PSS).
    pub fn from_spki(spki: &SubjectPublicKeyInfoOwned) -> Result<Self> {
        let key_bytes = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| Error::malformed(FMT, "public key bit string has unused bits"))?;
        let alg = spki.algorithm.oid;
        if alg == oids::EC_PUBLIC_KEY {
            let curve: ObjectIdentifier = spki
                .algorithm
                .parameters
                .as_ref()
                .ok_or_else(|| Error::malformed(FMT, "EC key without named curve"))?
                .decode_as()
                .map_err(|e| Error::malformed(FMT, format!("EC named curve: {e}")))?;
            if curve == oids::SECP384R1 {
                p384::ecdsa::VerifyingKey::from_sec1_bytes(key_bytes)
                    .map(Self::P384)
                    .map_err(|_| Error::malformed(FMT, "P-384 public key is not a curve point"))
            } else if curve == oids::SECP256R1 {
                p256::ecdsa::VerifyingKey::from_sec1_bytes(key_bytes)
                    .map(Self::P256)
                    .map_err(|_| Error::malformed(FMT, "P-256 public key is not a curve point"))
            } else {
                Err(Error::Unsupported {
                    what: "EC curve",
                    value: curve.to_string(),
                })
            }
        } else if alg == oids::RSA_ENCRYPTION || alg == oids::RSASSA_PSS {
            use rsa::pkcs1::DecodeRsaPublicKey;
            rsa::RsaPublicKey::from_pkcs1_der(key_bytes)
                .map(Self::Rsa)
                .map_err(|e| Error::malformed(FMT, format!("RSA public key: {e}")))
        } else {
            Err(Error::Unsupported {
                what: "public key algorithm",
                value: alg.to_string(),
            })
        }
    }

    /// Verifies `signature` over `msg` under `scheme` with this key. A signature that does not
    /// verify is [`Error::BadSignature`]; a scheme that does not fit the key is
    /// [`Error::Unsupported`].
    pub fn verify(&self, scheme: SignatureScheme, msg: &[u8], signature: &[u8]) -> Result<()> {
        let bad = |what: &str| Error::BadSignature(what.to_string());
        match (self, scheme) {
            (Self::P384(k), SignatureScheme::Ecdsa(h)) => {
                use p384::ecdsa::signature::hazmat::PrehashVerifier;
                let sig =
                    p384::ecdsa::Signature::from_der(signature).map_err(|_| bad("ECDSA DER signature"))?;
                k.verify_prehash(&h.digest(msg), &sig)
                    .map_err(|_| bad("ECDSA P-384 signature does not verify"))
            }
            (Self::P256(k), SignatureScheme::Ecdsa(h)) => {
                use p256::ecdsa::signature::hazmat::PrehashVerifier;
                let sig =
                    p256::ecdsa::Signature::from_der(signature).map_err(|_| bad("ECDSA DER signature"))?;
                k.verify_prehash(&h.digest(msg), &sig)
                    .map_err(|_| bad("ECDSA P-256 signature does not verify"))
            }
            (Self::Rsa(k), SignatureScheme::RsaPkcs1v15(h)) => {
                check_rsa_size(k)?;
                let padding = match h {
                    HashAlg::Sha256 => rsa::Pkcs1v15Sign::new::<Sha256>(),
                    HashAlg::Sha384 => rsa::Pkcs1v15Sign::new::<Sha384>(),
                    HashAlg::Sha512 => rsa::Pkcs1v15Sign::new::<Sha512>(),
                };
                k.verify(padding, &h.digest(msg), signature)
                    .map_err(|_| bad("RSA PKCS#1 v1.5 signature does not verify"))
            }
            (Self::Rsa(k), SignatureScheme::RsaPss { hash, salt_len }) => {
                check_rsa_size(k)?;
                if salt_len > hash.output_len() * 2 {
                    return Err(Error::Unsupported {
                        what: "RSASSA-PSS salt length",
                        value: salt_len.to_string(),
                    });
                }
                let padding = match hash {
                    HashAlg::Sha256 => rsa::Pss::new_with_salt::<Sha256>(salt_len),
                    HashAlg::Sha384 => rsa::Pss::new_with_salt::<Sha384>(salt_len),
                    HashAlg::Sha512 => rsa::Pss::new_with_salt::<Sha512>(salt_len),
                };
                k.verify(padding, &hash.digest(msg), signature)
                    .map_err(|_| bad("RSASSA-PSS signature does not verify"))
            }
            (key, scheme) => Err(Error::Unsupported {
                what: "signature scheme for key",
                value: format!("{scheme:?} with {}", key.kind()),
            }),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::P256(_) => "P-256",
            Self::P384(_) => "P-384",
            Self::Rsa(_) => "RSA",
        }
    }
}

fn check_rsa_size(k: &rsa::RsaPublicKey) -> Result<()> {
    use rsa::traits::PublicKeyParts;
    let bits = k.n().bits();
    if bits < 2048 {
        return Err(Error::Unsupported {
            what: "RSA key size",
            value: bits.to_string(),
        });
    }
    Ok(())
}

/// The certificate's public key.
pub fn public_key(cert: &Certificate) -> Result<PublicKey> {
    PublicKey::from_spki(&cert.tbs_certificate.subject_public_key_info)
}

/// The certificate's P-384 ECDSA verifying key (an error for any other key type).
pub fn p384_verifying_key(cert: &Certificate) -> Result<p384::ecdsa::VerifyingKey> {
    match public_key(cert)? {
        PublicKey::P384(k) => Ok(k),
        other => Err(Error::Unsupported {
            what: "public key (want P-384)",
            value: other.kind().into(),
        }),
    }
}

/// The certificate's P-256 ECDSA verifying key (an error for any other key type).
pub fn p256_verifying_key(cert: &Certificate) -> Result<p256::ecdsa::VerifyingKey> {
    match public_key(cert)? {
        PublicKey::P256(k) => Ok(k),
        other => Err(Error::Unsupported {
            what: "public key (want P-256)",
            value: other.kind().into(),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Signatures and chains

/// Checks that `issuer` issued `child`: `child.issuer` equals `issuer.subject` (DER-equal) and
/// `child`'s signature verifies under `issuer`'s key with the algorithm `child` names (which must
/// equal the algorithm inside its TBS). Errors: [`Error::CertificateChain`] for a name mismatch or
/// a signature that does not verify, [`Error::Unsupported`] / [`Error::Malformed`] otherwise.
/// CA flags and validity are [`verify_chain`]'s business.
pub fn verify_issued_by(child: &Certificate, issuer: &Certificate) -> Result<()> {
    let child_issuer = child
        .tbs_certificate
        .issuer
        .to_der()
        .map_err(|e| Error::malformed(FMT, e.to_string()))?;
    let issuer_subject = issuer
        .tbs_certificate
        .subject
        .to_der()
        .map_err(|e| Error::malformed(FMT, e.to_string()))?;
    if child_issuer != issuer_subject {
        return Err(Error::CertificateChain(format!(
            "issuer of '{}' is '{}', not '{}'",
            subject_string(child),
            issuer_string(child),
            subject_string(issuer)
        )));
    }
    if child.signature_algorithm != child.tbs_certificate.signature {
        return Err(Error::CertificateChain(format!(
            "'{}': outer and TBS signature algorithms differ",
            subject_string(child)
        )));
    }
    let scheme = SignatureScheme::from_algorithm(&child.signature_algorithm)?;
    let tbs = child
        .tbs_certificate
        .to_der()
        .map_err(|e| Error::malformed(FMT, e.to_string()))?;
    let sig = child
        .signature
        .as_bytes()
        .ok_or_else(|| Error::malformed(FMT, "signature bit string has unused bits"))?;
    public_key(issuer)?
        .verify(scheme, &tbs, sig)
        .map_err(|e| match e {
            Error::BadSignature(why) => Error::CertificateChain(format!(
                "'{}' not signed by '{}': {why}",
                subject_string(child),
                subject_string(issuer)
            )),
            other => other,
        })
}

/// Checks the validity window of `cert` at `at` (seconds since the Unix epoch).
pub fn check_validity(cert: &Certificate, at: u64) -> Result<()> {
    let v = &cert.tbs_certificate.validity;
    let nb = v.not_before.to_unix_duration().as_secs();
    let na = v.not_after.to_unix_duration().as_secs();
    if at < nb {
        return Err(Error::CertificateChain(format!(
            "'{}' not valid before {nb} (at {at})",
            subject_string(cert)
        )));
    }
    if at > na {
        return Err(Error::CertificateChain(format!(
            "'{}' expired at {na} (at {at})",
            subject_string(cert)
        )));
    }
    Ok(())
}

/// Checks that `cert` may issue certificates, with `below` CA certificates between it and the
/// leaf: basicConstraints cA = TRUE, pathLenConstraint (if any) >= `below`, and keyUsage (if
/// present) includes keyCertSign. Version 1 certificates (no extensions) are refused.
fn check_ca(cert: &Certificate, below: usize) -> Result<()> {
    let bc = basic_constraints(cert)?.ok_or_else(|| {
        Error::CertificateChain(format!(
            "issuer '{}' has no basicConstraints",
            subject_string(cert)
        ))
    })?;
    if !bc.ca {
        return Err(Error::CertificateChain(format!(
            "issuer '{}' is not a CA",
            subject_string(cert)
        )));
    }
    if let Some(len) = bc.path_len_constraint
        && below > usize::from(len)
    {
        return Err(Error::CertificateChain(format!(
            "issuer '{}' path length {len} < {below} intermediate CAs below it",
            subject_string(cert)
        )));
    }
    if let Some(v) = extension_value(cert, &oids::KEY_USAGE) {
        let ku = KeyUsage::from_der(v).map_err(|e| Error::malformed(FMT, format!("keyUsage: {e}")))?;
        if !ku.key_cert_sign() {
            return Err(Error::CertificateChain(format!(
                "issuer '{}' lacks keyCertSign",
                subject_string(cert)
            )));
        }
    }
    Ok(())
}

/// Verifies a chain, leaf first, up to `pinned_root`:
/// - `chain[i]` is issued by `chain[i + 1]` ([`verify_issued_by`]);
/// - the last certificate is the pinned root itself (DER-equal; so a device-supplied copy of
///   the root is accepted) or is issued by it;
/// - every issuer (all but the leaf, and the pinned root) is a CA (basicConstraints, path length,
///   keyUsage keyCertSign when present);
/// - with `at` (Unix seconds), every certificate, the root included, is within its validity
///   window.
///
/// An empty chain is an error. Failures are [`Error::CertificateChain`] unless the input is
/// malformed or uses an unsupported algorithm.
pub fn verify_chain(
    chain_leaf_first: &[Certificate],
    pinned_root: &Certificate,
    at: Option<u64>,
) -> Result<()> {
    if chain_leaf_first.is_empty() {
        return Err(Error::CertificateChain("empty certificate chain".into()));
    }
    let root_der = to_der(pinned_root)?;
    // The path is the chain, plus the pinned root unless the chain already ends with it.
    let mut path: Vec<&Certificate> = chain_leaf_first.iter().collect();
    let ends_with_root = match chain_leaf_first.last() {
        Some(last) => to_der(last)? == root_der,
        None => false,
    };
    if !ends_with_root {
        path.push(pinned_root);
    }
    // A copy of the root in the middle of the chain would be odd but harmless; a root anywhere
    // else than last is simply checked like any other issuer.
    for (i, pair) in path.windows(2).enumerate() {
        let (child, issuer) = (pair[0], pair[1]);
        verify_issued_by(child, issuer)?;
        check_ca(issuer, i)?;
    }
    if path.len() == 1 {
        // The chain is just the pinned root: it must at least be a CA and self-signed.
        verify_issued_by(pinned_root, pinned_root)?;
    }
    if let Some(at) = at {
        for cert in &path {
            check_validity(cert, at)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn data(path: &str) -> Vec<u8> {
        std::fs::read(format!("{}/testdata/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn nvidia_root() -> Certificate {
        parse_pem(&data("nvidia/nvidia_device_identity_root.pem")).unwrap()
    }

    const NV_CHAINS: [&str; 3] = [
        "nvidia/nvtrust_hopper_certchain.pem",
        "nvidia/sdk_hopper_570_certchain.pem",
        "nvidia/sdk_hopper_590_certchain.pem",
    ];

    /// 2025-07-01T00:00:00Z.
    const AT_2025: u64 = 1_751_328_000;

    #[test]
    fn nvidia_chains_verify_to_pinned_root() {
        let root = nvidia_root();
        for f in NV_CHAINS {
            let chain = parse_pem_bundle(&data(f)).unwrap();
            assert_eq!(chain.len(), 5, "{f}");
            verify_chain(&chain, &root, Some(AT_2025)).unwrap();
            verify_chain(&chain, &root, None).unwrap();
            // Without the device-supplied root copy, too.
            verify_chain(&chain[..4], &root, Some(AT_2025)).unwrap();
            assert!(
                subject_string(&chain[0])
                    .starts_with("CN=GH100 A01 GSP FMC LF,O=NVIDIA Corporation,C=US,2.5.4.5=")
            );
            assert_eq!(
                subject_string(&chain[1]).split(',').next().unwrap(),
                "CN=GH100 A01 GSP BROM"
            );
            assert_eq!(subject_string(&chain[4]), "O=NVIDIA,CN=NVIDIA Device Identity CA");
            p384_verifying_key(&chain[0]).unwrap();
            assert!(p256_verifying_key(&chain[0]).is_err());
            assert!(extension(&chain[0], &oids::TCG_DICE_TCB_INFO).is_some());
        }
    }

    #[test]
    fn nvidia_root_fingerprint_matches_notes() {
        let fp = fingerprint_sha256(&nvidia_root()).unwrap();
        assert_eq!(
            hex::encode_upper(fp),
            "102BF659D5419614C9D8E6AECEBC80454EB26B1DF6A769AC720B9A690B167B48"
        );
    }

    #[test]
    fn nvidia_chain_rejections() {
        let root = nvidia_root();
        let chain = parse_pem_bundle(&data(NV_CHAINS[0])).unwrap();
        // Out of order.
        let mut swapped = chain.clone();
        swapped.swap(1, 2);
        assert!(matches!(
            verify_chain(&swapped, &root, None),
            Err(Error::CertificateChain(_))
        ));
        // Before the leaf's notBefore (2020-10-17) / intermediates' (2022).
        assert!(matches!(
            verify_chain(&chain, &root, Some(1_600_000_000)),
            Err(Error::CertificateChain(_))
        ));
        // Wrong root (the CoRIM signing root).
        let other = parse_pem(&data("nvidia/nvidia_corim_signing_root.pem")).unwrap();
        assert!(matches!(
            verify_chain(&chain, &other, None),
            Err(Error::CertificateChain(_))
        ));
        // A leaf is not a CA: a chain whose second element is the leaf of another chain fails.
        let chain2 = parse_pem_bundle(&data(NV_CHAINS[1])).unwrap();
        assert!(verify_issued_by(&chain[0], &chain2[1]).is_err());
        assert!(matches!(
            verify_chain(&[], &root, None),
            Err(Error::CertificateChain(_))
        ));
    }

    #[test]
    fn flipped_signature_bits_are_rejected() {
        let root = nvidia_root();
        let pem = data(NV_CHAINS[0]);
        let chain = parse_pem_bundle(&pem).unwrap();
        for i in 0..4 {
            let mut der = to_der(&chain[i]).unwrap();
            // The signature BIT STRING is at the end of the certificate.
            let n = der.len();
            der[n - 10] ^= 0x01;
            let bad = parse_der(&der).unwrap();
            let mut tampered = chain.clone();
            tampered[i] = bad;
            let err = verify_chain(&tampered, &root, None).unwrap_err();
            assert!(matches!(err, Error::CertificateChain(_)), "{i}: {err:?}");
        }
        // A bit in the TBS (inside the leaf's public key) also breaks the chain.
        let mut der = to_der(&chain[0]).unwrap();
        let spki = chain[0].tbs_certificate.subject_public_key_info.to_der().unwrap();
        let pos = der
            .windows(spki.len())
            .position(|w| w == spki.as_slice())
            .unwrap();
        der[pos + spki.len() - 1] ^= 0x01;
        let bad = parse_der(&der).unwrap();
        let mut tampered = chain.clone();
        tampered[0] = bad;
        assert!(matches!(
            verify_chain(&tampered, &root, None),
            Err(Error::CertificateChain(_))
        ));
    }

    #[test]
    fn amd_ask_ark_rsa_pss() {
        for f in ["sev-snp/amd_milan_ask_ark.pem", "sev-snp/amd_genoa_ask_ark.pem"] {
            let certs = parse_pem_bundle(&data(f)).unwrap();
            assert_eq!(certs.len(), 2);
            let (ask, ark) = (&certs[0], &certs[1]);
            let scheme = SignatureScheme::from_algorithm(&ark.signature_algorithm).unwrap();
            assert_eq!(
                scheme,
                SignatureScheme::RsaPss {
                    hash: HashAlg::Sha384,
                    salt_len: 48
                }
            );
            verify_issued_by(ark, ark).unwrap();
            verify_issued_by(ask, ark).unwrap();
            verify_chain(std::slice::from_ref(ask), ark, Some(AT_2025)).unwrap();
            verify_chain(&certs, ark, Some(AT_2025)).unwrap();
            assert!(matches!(
                verify_issued_by(ark, ask),
                Err(Error::CertificateChain(_))
            ));
            // Flip a signature bit of the ASK.
            let mut der = to_der(ask).unwrap();
            let n = der.len();
            der[n - 1] ^= 0x80;
            let bad = parse_der(&der).unwrap();
            assert!(matches!(
                verify_issued_by(&bad, ark),
                Err(Error::CertificateChain(_))
            ));
        }
        let milan = parse_pem_bundle(&data("sev-snp/amd_milan_ask_ark.pem")).unwrap();
        let genoa = parse_pem_bundle(&data("sev-snp/amd_genoa_ask_ark.pem")).unwrap();
        assert!(verify_chain(&milan[..1], &genoa[1], None).is_err());
    }

    #[test]
    fn vcek_signed_by_milan_ask() {
        let certs = parse_pem_bundle(&data("sev-snp/amd_milan_ask_ark.pem")).unwrap();
        for f in [
            "sev-snp/virtee_milan_vcek.der",
            "sev-snp/gosev_milan_debug_vcek.der",
        ] {
            let vcek = parse_der(&data(f)).unwrap();
            assert!(
                subject_string(&vcek).contains("CN=SEV-VCEK"),
                "{}",
                subject_string(&vcek)
            );
            verify_issued_by(&vcek, &certs[0]).unwrap();
            verify_chain(&[vcek.clone(), certs[0].clone()], &certs[1], Some(AT_2025)).unwrap();
            p384_verifying_key(&vcek).unwrap();
            assert_eq!(parse_certs(&data(f)).unwrap().len(), 1);
        }
    }

    #[test]
    fn intel_root_is_self_signed_p256() {
        let root = parse_pem(&data("tdx/intel_sgx_root_ca.pem")).unwrap();
        verify_issued_by(&root, &root).unwrap();
        verify_chain(std::slice::from_ref(&root), &root, Some(AT_2025)).unwrap();
        p256_verifying_key(&root).unwrap();
        assert_eq!(
            hex::encode_upper(fingerprint_sha256(&root).unwrap()),
            "44A0196B2B99F889B8E149E95B807A350E7424964399E885A7CBB8CCFAB674D3"
        );
    }

    #[test]
    fn rsa_pkcs1_and_p384_sha256_chain() {
        let root = parse_pem(&data("x509/openssl_rsa2048_root.pem")).unwrap();
        let chain = parse_pem_bundle(&data("x509/openssl_p256_leaf_p384_ca_chain.pem")).unwrap();
        let scheme = |c: &Certificate| SignatureScheme::from_algorithm(&c.signature_algorithm).unwrap();
        assert_eq!(scheme(&root), SignatureScheme::RsaPkcs1v15(HashAlg::Sha256));
        assert_eq!(scheme(&chain[1]), SignatureScheme::RsaPkcs1v15(HashAlg::Sha384));
        // The leaf is signed by a P-384 key with SHA-256.
        assert_eq!(scheme(&chain[0]), SignatureScheme::Ecdsa(HashAlg::Sha256));
        p384_verifying_key(&chain[1]).unwrap();
        p256_verifying_key(&chain[0]).unwrap();
        verify_issued_by(&root, &root).unwrap();
        // Made on 2026-11-29, valid 100 years.
        verify_chain(&chain, &root, Some(2_000_000_000)).unwrap();
        assert!(verify_chain(&chain, &root, Some(AT_2025)).is_err());
        // A leaf pinned as its own root is not self-signed.
        assert!(matches!(
            verify_chain(&chain[..1], &chain[0], None),
            Err(Error::CertificateChain(_))
        ));
        for i in 0..2 {
            let mut der = to_der(&chain[i]).unwrap();
            let n = der.len();
            der[n - 3] ^= 0x04;
            let mut t = chain.clone();
            t[i] = parse_der(&der).unwrap();
            assert!(
                matches!(verify_chain(&t, &root, None), Err(Error::CertificateChain(_))),
                "{i}"
            );
        }
        // An RSA key cannot verify an ECDSA signature: unsupported, not a silent pass.
        assert!(matches!(
            verify_issued_by(&chain[0], &root),
            Err(Error::CertificateChain(_))
        ));
        let key = public_key(&root).unwrap();
        assert!(matches!(
            key.verify(SignatureScheme::Ecdsa(HashAlg::Sha256), b"x", b"y"),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn hostile_input_is_an_error() {
        assert!(parse_der(&[]).is_err());
        assert!(parse_der(&[0x30, 0x82, 0xff, 0xff]).is_err());
        assert!(parse_pem_bundle(b"").is_err());
        assert!(parse_pem_bundle(b"-----BEGIN CERTIFICATE-----\nAAAA").is_err());
        assert!(parse_pem_bundle(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").is_err());
        let der = to_der(&nvidia_root()).unwrap();
        for cut in 0..der.len() {
            assert!(parse_der(&der[..cut]).is_err());
        }
        let mut with_trailing = der.clone();
        with_trailing.push(0);
        assert!(parse_der(&with_trailing).is_err());
        // Trailing NULs and text around PEM blocks are fine.
        let mut pem = b"junk\n".to_vec();
        pem.extend_from_slice(&data(NV_CHAINS[0]));
        pem.extend_from_slice(&[0u8; 16]);
        assert_eq!(parse_pem_bundle(&pem).unwrap().len(), 5);
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = parse_der(&bytes);
            let _ = parse_certs(&bytes);
        }

        #[test]
        fn mutated_certificates_never_panic(pos in 0usize..2000, val in proptest::prelude::any::<u8>()) {
            let root = nvidia_root();
            let mut der = to_der(&root).unwrap();
            let p = pos % der.len();
            der[p] = val;
            if let Ok(c) = parse_der(&der) {
                let _ = verify_chain(std::slice::from_ref(&c), &root, Some(AT_2025));
                let _ = verify_issued_by(&c, &c);
                let _ = subject_string(&c);
            }
        }
    }
}
