//! TDX quotes and SEV-SNP reports through Linux configfs-tsm (kernel 6.7 and later,
//! `Documentation/ABI/testing/configfs-tsm-report`).
//!
//! One collection: make a fresh entry `/sys/kernel/config/tsm/report/<unique name>`; read
//! `provider` (`tdx_guest` → [`EvidenceKind::TdxQuote`], `sev_guest` →
//! [`EvidenceKind::SnpReport`]); read `generation`; write the 64 REPORTDATA bytes to `inblob`;
//! read `outblob` (the quote or report) and, for SNP, `auxblob` (the certificate table the host
//! supplied, see [`parse_cert_table`]); read `generation` again; remove the entry. Every write to
//! an entry bumps `generation` by one, so anything but exactly one more means another process
//! wrote to the same entry meanwhile, and the result is refused ([`Error::Collect`]).
//!
//! Not handled: SEV-SNP `privlevel` (the report is requested at the kernel's default VMPL) and
//! the SVSM service attributes.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::collect::CpuCollector;
use crate::evidence::{CpuEvidence, EvidenceKind};
use crate::{Error, Result};

/// Where configfs-tsm report entries live.
pub const TSM_REPORT_ROOT: &str = "/sys/kernel/config/tsm/report";

/// GUID of the VCEK in an SNP certificate table, `63da758d-e664-4564-adc5-f4b93be8accd`, as the
/// table stores it (the bytes in the order the string writes them, as `uuid_parse` produces).
pub const VCEK_GUID: [u8; 16] = [
    0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd,
];
/// GUID of the VLEK, `a8074bc2-a25a-483e-aae6-39c045a0b8a1`.
pub const VLEK_GUID: [u8; 16] = [
    0xa8, 0x07, 0x4b, 0xc2, 0xa2, 0x5a, 0x48, 0x3e, 0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8, 0xa1,
];
/// GUID of the ASK, `4ab7b379-bbac-4fe4-a02f-05aef327c782`.
pub const ASK_GUID: [u8; 16] = [
    0x4a, 0xb7, 0xb3, 0x79, 0xbb, 0xac, 0x4f, 0xe4, 0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82,
];
/// GUID of the ARK, `c0b406a4-a803-4952-9743-3fb6014cd0ae`.
pub const ARK_GUID: [u8; 16] = [
    0xc0, 0xb4, 0x06, 0xa4, 0xa8, 0x03, 0x49, 0x52, 0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae,
];

/// A GUID as text, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (bytes in table order).
pub fn guid_string(guid: &[u8; 16]) -> String {
    let h = hex::encode(guid);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The evidence kind a configfs-tsm `provider` names (trailing whitespace ignored).
pub fn kind_for_provider(provider: &str) -> Result<EvidenceKind> {
    match provider.trim_end() {
        "tdx_guest" => Ok(EvidenceKind::TdxQuote),
        "sev_guest" => Ok(EvidenceKind::SnpReport),
        other => Err(Error::Unsupported {
            what: "configfs-tsm provider",
            value: other.escape_default().to_string(),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// SNP certificate table (GHCB spec, extended guest request; configfs-tsm `auxblob`)

/// One entry of an SNP certificate table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertTableEntry<'a> {
    /// The GUID naming the certificate ([`VCEK_GUID`], [`ASK_GUID`], ...).
    pub guid: [u8; 16],
    /// The certificate bytes (DER).
    pub data: &'a [u8],
}

const CERT_TABLE_ENTRY_LEN: usize = 24;

/// Parses an SNP certificate table: entries `guid[16] | offset u32 LE | length u32 LE`,
/// terminated by an all-zero entry, with offsets from the start of the table pointing past the
/// terminator. Strict: a missing terminator, a zero GUID that is not the terminator, a range
/// outside the table or into the header, or a GUID listed twice is [`Error::Malformed`]. An
/// empty table is an empty list. The entries borrow from `table` (no copies).
pub fn parse_cert_table(table: &[u8]) -> Result<Vec<CertTableEntry<'_>>> {
    const FMT: &str = "SNP certificate table";
    if table.is_empty() {
        return Ok(Vec::new());
    }
    let mut headers = Vec::new();
    let mut pos = 0usize;
    loop {
        let raw = table
            .get(pos..pos + CERT_TABLE_ENTRY_LEN)
            .ok_or_else(|| Error::malformed(FMT, "no all-zero terminating entry"))?;
        pos += CERT_TABLE_ENTRY_LEN;
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&raw[..16]);
        let offset = u32::from_le_bytes([raw[16], raw[17], raw[18], raw[19]]);
        let length = u32::from_le_bytes([raw[20], raw[21], raw[22], raw[23]]);
        if guid == [0; 16] {
            if offset == 0 && length == 0 {
                break;
            }
            return Err(Error::malformed(FMT, "entry with a zero GUID"));
        }
        if headers.iter().any(|(g, _, _)| *g == guid) {
            return Err(Error::malformed(
                FMT,
                format!("GUID {} listed twice", guid_string(&guid)),
            ));
        }
        headers.push((guid, offset, length));
    }
    let header_end = pos;
    headers
        .into_iter()
        .map(|(guid, offset, length)| {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            let end = start.checked_add(usize::try_from(length).unwrap_or(usize::MAX));
            let data = end
                .filter(|_| start >= header_end)
                .and_then(|end| table.get(start..end))
                .ok_or_else(|| {
                    Error::malformed(
                        FMT,
                        format!(
                            "{}: bytes {offset}+{length} outside {header_end}..{}",
                            guid_string(&guid),
                            table.len()
                        ),
                    )
                })?;
            Ok(CertTableEntry { guid, data })
        })
        .collect()
}

/// The VCEK (DER) from an SNP certificate table, `None` when the table has none.
pub fn vcek_from_cert_table(table: &[u8]) -> Result<Option<Vec<u8>>> {
    Ok(parse_cert_table(table)?
        .into_iter()
        .find(|e| e.guid == VCEK_GUID)
        .map(|e| e.data.to_vec()))
}

// ---------------------------------------------------------------------------------------------
// configfs

/// The file operations the flow needs. The real one is plain `std::fs` on configfs (where the
/// kernel creates an entry's attribute files on `mkdir`, makes the report on reading `outblob`
/// and bumps `generation` on each write); tests substitute a temporary directory that mimics it.
trait ConfigFs: Send + Sync + fmt::Debug {
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()>;
}

#[derive(Debug)]
struct RealFs;

impl ConfigFs for RealFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        // The attribute exists: no create, no truncate; one write of the whole blob.
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(data)
    }
}

/// A report entry, removed when dropped.
struct Entry<'a> {
    fs: &'a dyn ConfigFs,
    dir: PathBuf,
}

impl Entry<'_> {
    fn create<'a>(fs: &'a dyn ConfigFs, root: &Path) -> io::Result<Entry<'a>> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let random = crate::certgen::random_bytes::<8>()
            .map(u64::from_ne_bytes)
            .unwrap_or_else(|_| crate::certgen::now());
        let dir = root.join(format!(
            "veil-{}-{}-{random:016x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs.create_dir(&dir)?;
        Ok(Entry { fs, dir })
    }

    fn attr(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Result<Vec<u8>> {
        self.fs
            .read(&self.attr(name))
            .map_err(|e| io_error("read", &self.attr(name), &e))
    }

    fn generation(&self) -> Result<u64> {
        let raw = self.read("generation")?;
        std::str::from_utf8(&raw)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                Error::Collect(format!(
                    "configfs-tsm: generation {:?} is not a number",
                    String::from_utf8_lossy(&raw)
                ))
            })
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        // Nothing to do about a failure here; the entry is named uniquely.
        let _ = self.fs.remove_dir(&self.dir);
    }
}

fn io_error(op: &str, path: &Path, e: &io::Error) -> Error {
    Error::Collect(format!("configfs-tsm: {op} {}: {e}", path.display()))
}

/// A TDX or SEV-SNP guest's evidence through configfs-tsm.
#[derive(Debug)]
pub struct TsmCollector {
    root: PathBuf,
    kind: EvidenceKind,
    fs: Box<dyn ConfigFs>,
}

impl TsmCollector {
    /// Detects configfs-tsm at [`TSM_REPORT_ROOT`] and its provider.
    pub fn detect() -> Result<Self> {
        Self::with_root(TSM_REPORT_ROOT)
    }

    /// Detects configfs-tsm report entries under `root` (normally [`TSM_REPORT_ROOT`]): creates
    /// one probe entry to read the provider, and removes it. [`Error::NotAvailable`] when `root`
    /// does not exist or no TEE provider answers; a permission problem is [`Error::Collect`]
    /// (the hardware is there, the process may not use it).
    pub fn with_root(root: impl Into<PathBuf>) -> Result<Self> {
        Self::open(root.into(), Box::new(RealFs))
    }

    fn open(root: PathBuf, fs: Box<dyn ConfigFs>) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::NotAvailable(format!(
                "no {}: configfs-tsm is absent (not a TDX or SEV-SNP guest, a kernel older than \
                 6.7, or configfs not mounted at /sys/kernel/config)",
                root.display()
            )));
        }
        let probe = |e: &io::Error, what: String| {
            if e.kind() == io::ErrorKind::PermissionDenied {
                Error::Collect(format!(
                    "configfs-tsm: {what}: {e} (collecting evidence needs root or CAP_SYS_ADMIN)"
                ))
            } else {
                Error::NotAvailable(format!(
                    "configfs-tsm at {} has no usable TEE provider: {what}: {e}",
                    root.display()
                ))
            }
        };
        let kind = {
            let entry = Entry::create(&*fs, &root)
                .map_err(|e| probe(&e, format!("create an entry in {}", root.display())))?;
            let provider = fs
                .read(&entry.attr("provider"))
                .map_err(|e| probe(&e, "read provider".into()))?;
            kind_for_provider(&String::from_utf8_lossy(&provider))?
        };
        Ok(Self { root, kind, fs })
    }

    /// The directory report entries are made in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn collect(&self, report_data: &[u8; 64]) -> Result<CpuEvidence> {
        let entry = Entry::create(&*self.fs, &self.root)
            .map_err(|e| io_error("create an entry in", &self.root, &e))?;
        let provider = entry.read("provider")?;
        let kind = kind_for_provider(&String::from_utf8_lossy(&provider))?;
        if kind != self.kind {
            return Err(Error::Collect(format!(
                "configfs-tsm provider changed from {} to {}",
                self.kind.name(),
                kind.name()
            )));
        }
        let before = entry.generation()?;
        self.fs
            .write(&entry.attr("inblob"), report_data)
            .map_err(|e| io_error("write", &entry.attr("inblob"), &e))?;
        let quote = entry.read("outblob")?;
        let auxblob = if kind == EvidenceKind::SnpReport {
            match self.fs.read(&entry.attr("auxblob")) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(io_error("read", &entry.attr("auxblob"), &e)),
            }
        } else {
            Vec::new()
        };
        let after = entry.generation()?;
        if before.checked_add(1) != Some(after) {
            return Err(Error::Collect(format!(
                "configfs-tsm generation went from {before} to {after} across one write: another \
                 process wrote to this report entry concurrently"
            )));
        }
        if quote.is_empty() {
            return Err(Error::Collect("configfs-tsm: empty outblob".into()));
        }
        // SNP: the VCEK from the host's certificate table; empty when the host supplies none
        // (the verifier then needs it from elsewhere, e.g. AMD KDS).
        let certs = if kind == EvidenceKind::SnpReport {
            vcek_from_cert_table(&auxblob)?.unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(CpuEvidence { kind, quote, certs })
    }
}

impl CpuCollector for TsmCollector {
    fn kind(&self) -> EvidenceKind {
        self.kind
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<CpuEvidence> {
        self.collect(report_data)
    }
}

#[cfg(test)]
mod tests;
