//! The model digest: one SHA-256 that identifies a model directory's weights,
//! tokenizer and configuration, so a client can check which model it talks to.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A 32-byte model digest (see [`model_digest`] for the exact definition).
/// Displays as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelDigest([u8; 32]);

impl ModelDigest {
    /// Wraps raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out)
            .map_err(|e| Error::format("model digest", format!("{s:?} is not 64 hex digits: {e}")))?;
        Ok(Self(out))
    }
}

impl fmt::Display for ModelDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ModelDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelDigest({self})")
    }
}

impl std::str::FromStr for ModelDigest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::from_hex(s)
    }
}

/// The fixed file names (besides `*.safetensors`) that enter the digest.
pub const DIGEST_FILES: &[&str] = &[
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "config.json",
    "generation_config.json",
    "chat_template.jinja",
];

/// Whether a file called `name` (in the model directory itself) enters the digest.
pub fn is_digest_file(name: &str) -> bool {
    name.ends_with(".safetensors") || DIGEST_FILES.contains(&name)
}

/// Computes the digest of the model directory `dir`.
///
/// **Definition** (clients recompute this; it must not change):
///
/// 1. Take the regular files (symlinks followed) directly inside `dir` (not in
///    sub-directories) whose UTF-8 name is one of: any name ending in
///    `.safetensors`, `model.safetensors.index.json`, `tokenizer.json`,
///    `tokenizer_config.json`, `config.json`, `generation_config.json`,
///    `chat_template.jinja`. Every other file (e.g. `veil-model.json`,
///    `README.md`) is ignored.
/// 2. Sort them by file name, comparing the names' UTF-8 bytes.
/// 3. The digest is SHA-256 over the concatenation, for each file in that
///    order, of: the name's byte length as a little-endian `u64`, the name's
///    UTF-8 bytes, the content's byte length as a little-endian `u64`, and the
///    content bytes.
///
/// The length framing makes the encoding injective: two different sets of
/// (name, content) pairs cannot produce the same byte stream.
///
/// It is an error if `dir` contains no `*.safetensors` file. Files are read
/// in streaming fashion, so memory use does not grow with model size.
pub fn model_digest(dir: &Path) -> Result<ModelDigest> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("reading model directory", dir, e))?;
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("reading model directory", dir, e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !is_digest_file(&name) {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
        if meta.is_file() {
            names.push(name);
        }
    }
    if !names.iter().any(|n| n.ends_with(".safetensors")) {
        return Err(Error::format(
            "model directory",
            format!("no *.safetensors weight file in {}", dir.display()),
        ));
    }
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));

    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for name in &names {
        let path = dir.join(name);
        let mut f = File::open(&path).map_err(|e| Error::io("opening", &path, e))?;
        let len = f.metadata().map_err(|e| Error::io("stat", &path, e))?.len();
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(len.to_le_bytes());
        let mut read = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::io("reading", &path, e))?;
            if n == 0 {
                break;
            }
            read += n as u64;
            h.update(&buf[..n]);
        }
        if read != len {
            return Err(Error::io(
                "file changed size while hashing",
                &path,
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
    }
    Ok(ModelDigest(h.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(files: &[(&str, &[u8])]) -> String {
        let mut files = files.to_vec();
        files.sort_by(|a, b| a.0.cmp(b.0));
        let mut h = Sha256::new();
        for (n, c) in files {
            h.update((n.len() as u64).to_le_bytes());
            h.update(n.as_bytes());
            h.update((c.len() as u64).to_le_bytes());
            h.update(c);
        }
        hex::encode(h.finalize())
    }

    #[test]
    fn digest_definition() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = tmp.path();
        std::fs::write(d.join("model.safetensors"), b"weights").expect("w");
        std::fs::write(d.join("config.json"), b"{}").expect("w");
        std::fs::write(d.join("tokenizer.json"), b"tok").expect("w");
        std::fs::write(d.join("veil-model.json"), b"ignored").expect("w");
        std::fs::write(d.join("README.md"), b"ignored").expect("w");
        std::fs::create_dir(d.join("sub")).expect("mkdir");
        std::fs::write(d.join("sub").join("x.safetensors"), b"ignored").expect("w");
        let got = model_digest(d).expect("digest");
        let want = reference(&[
            ("model.safetensors", b"weights"),
            ("config.json", b"{}"),
            ("tokenizer.json", b"tok"),
        ]);
        assert_eq!(got.to_string(), want);
        assert_eq!(got.to_string().len(), 64);
        assert_eq!(ModelDigest::from_hex(&want).ok(), Some(got));
        assert_eq!(got.as_bytes().len(), 32);
        assert!(ModelDigest::from_hex("xyz").is_err());

        // Ignored files don't matter; included ones do.
        std::fs::write(d.join("veil-model.json"), b"changed").expect("w");
        assert_eq!(model_digest(d).ok(), Some(got));
        std::fs::write(d.join("generation_config.json"), b"{}").expect("w");
        assert_ne!(model_digest(d).ok(), Some(got));
    }

    #[test]
    fn framing_separates_name_and_content() {
        // Moving bytes between name and content changes the digest.
        let a = tempfile::tempdir().expect("tmp");
        std::fs::write(a.path().join("a.safetensors"), b"xy").expect("w");
        let b = tempfile::tempdir().expect("tmp");
        std::fs::write(b.path().join("a.safetensorsx"), b"y").expect("w");
        std::fs::write(b.path().join("b.safetensors"), b"").expect("w");
        assert_ne!(model_digest(a.path()).ok(), model_digest(b.path()).ok());
    }

    #[test]
    fn no_weights_is_an_error() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::write(tmp.path().join("config.json"), b"{}").expect("w");
        assert!(model_digest(tmp.path()).is_err());
        assert!(model_digest(&tmp.path().join("missing")).is_err());
    }
}
