//! configfs-tsm flow against a temporary directory that mimics configfs, provider mapping, and
//! the SNP certificate table parser on good and hostile input.
#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

/// A temporary directory behaving like configfs-tsm: `mkdir` makes the attribute files,
/// writing `inblob` bumps `generation` by `bump` (1 in the kernel; more simulates a concurrent
/// writer), reading `outblob` returns `quote_prefix || inblob`, `rmdir` removes the entry.
#[derive(Debug)]
struct FakeConfigfs {
    provider: &'static str,
    quote_prefix: &'static [u8],
    auxblob: Option<Vec<u8>>,
    bump: u64,
    mkdir_error: Option<io::ErrorKind>,
}

impl FakeConfigfs {
    fn new(provider: &'static str) -> Self {
        Self {
            provider,
            quote_prefix: b"QUOTE:",
            auxblob: None,
            bump: 1,
            mkdir_error: None,
        }
    }
}

impl ConfigFs for FakeConfigfs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        if let Some(kind) = self.mkdir_error {
            return Err(io::Error::from(kind));
        }
        std::fs::create_dir(path)?;
        std::fs::write(path.join("provider"), format!("{}\n", self.provider))?;
        std::fs::write(path.join("generation"), "0\n")?;
        std::fs::write(path.join("inblob"), b"")?;
        std::fs::write(path.join("outblob"), b"")?;
        if let Some(aux) = &self.auxblob {
            std::fs::write(path.join("auxblob"), aux)?;
        }
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        // configfs removes an entry with its attributes; a plain directory needs remove_dir_all.
        std::fs::remove_dir_all(path)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        if path.file_name().is_some_and(|n| n == "outblob") {
            let inblob = std::fs::read(path.with_file_name("inblob"))?;
            return Ok([self.quote_prefix, &inblob].concat());
        }
        std::fs::read(path)
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        std::fs::write(path, data)?;
        if path.file_name().is_some_and(|n| n == "inblob") {
            let gen_path = path.with_file_name("generation");
            let g: u64 = std::fs::read_to_string(&gen_path)?.trim().parse().unwrap();
            std::fs::write(gen_path, format!("{}\n", g + self.bump))?;
        }
        Ok(())
    }
}

fn open(dir: &tempfile::TempDir, fake: FakeConfigfs) -> Result<TsmCollector> {
    TsmCollector::open(dir.path().to_path_buf(), Box::new(fake))
}

fn entries(dir: &tempfile::TempDir) -> usize {
    std::fs::read_dir(dir.path()).unwrap().count()
}

fn table(entries: &[([u8; 16], &[u8])]) -> Vec<u8> {
    let header = (entries.len() + 1) * CERT_TABLE_ENTRY_LEN;
    let mut head = Vec::new();
    let mut body = Vec::new();
    for (guid, data) in entries {
        head.extend_from_slice(guid);
        head.extend_from_slice(&((header + body.len()) as u32).to_le_bytes());
        head.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
    }
    head.extend_from_slice(&[0; CERT_TABLE_ENTRY_LEN]);
    head.extend_from_slice(&body);
    head
}

fn report_data() -> [u8; 64] {
    std::array::from_fn(|i| i as u8 ^ 0xA5)
}

#[test]
fn tdx_flow() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(&dir, FakeConfigfs::new("tdx_guest")).unwrap();
    assert_eq!(c.kind(), EvidenceKind::TdxQuote);
    assert_eq!(c.root(), dir.path());
    assert_eq!(entries(&dir), 0, "the probe entry is removed");
    let rd = report_data();
    let ev = c.evidence(&rd).unwrap();
    assert_eq!(ev.kind, EvidenceKind::TdxQuote);
    assert_eq!(ev.quote, [b"QUOTE:".as_slice(), &rd].concat());
    assert!(ev.certs.is_empty());
    assert_eq!(entries(&dir), 0, "the report entry is removed");
    // Twice in a row: fresh entries each time.
    c.evidence(&[0; 64]).unwrap();
    assert_eq!(entries(&dir), 0);
}

#[test]
fn snp_flow_takes_the_vcek_from_auxblob() {
    let dir = tempfile::tempdir().unwrap();
    let vcek = b"vcek der bytes".as_slice();
    let mut fake = FakeConfigfs::new("sev_guest");
    fake.auxblob = Some(table(&[
        (ASK_GUID, b"ask"),
        (VCEK_GUID, vcek),
        (ARK_GUID, b"ark"),
    ]));
    let c = open(&dir, fake).unwrap();
    assert_eq!(c.kind(), EvidenceKind::SnpReport);
    let rd = report_data();
    let ev = c.evidence(&rd).unwrap();
    assert_eq!(ev.kind, EvidenceKind::SnpReport);
    assert_eq!(ev.quote, [b"QUOTE:".as_slice(), &rd].concat());
    assert_eq!(ev.certs, vcek);
    assert_eq!(entries(&dir), 0);

    // No auxblob, or a table without a VCEK: no certificates.
    let c = open(&dir, FakeConfigfs::new("sev_guest")).unwrap();
    assert!(c.evidence(&rd).unwrap().certs.is_empty());
    let mut fake = FakeConfigfs::new("sev_guest");
    fake.auxblob = Some(table(&[(VLEK_GUID, b"vlek")]));
    assert!(open(&dir, fake).unwrap().evidence(&rd).unwrap().certs.is_empty());
    // A hostile table is an error.
    let mut fake = FakeConfigfs::new("sev_guest");
    fake.auxblob = Some(vec![1; 30]);
    assert!(matches!(
        open(&dir, fake).unwrap().evidence(&rd),
        Err(Error::Malformed { .. })
    ));
    assert_eq!(entries(&dir), 0);
}

#[test]
fn a_concurrent_writer_is_detected() {
    for bump in [0, 2, 7] {
        let dir = tempfile::tempdir().unwrap();
        let mut fake = FakeConfigfs::new("tdx_guest");
        fake.bump = bump;
        let c = open(&dir, fake).unwrap();
        let e = c.evidence(&report_data()).unwrap_err();
        assert!(
            matches!(&e, Error::Collect(m) if m.contains("generation")),
            "{bump}: {e:?}"
        );
        assert_eq!(entries(&dir), 0, "removed on failure too");
    }
}

#[test]
fn absence_and_errors_are_reported_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // No configfs-tsm.
    let missing = dir.path().join("no-such-dir");
    assert!(matches!(
        TsmCollector::with_root(&missing),
        Err(Error::NotAvailable(m)) if m.contains("configfs-tsm")
    ));
    // An unknown provider.
    assert!(matches!(
        open(&dir, FakeConfigfs::new("arm_cca_guest")),
        Err(Error::Unsupported { .. })
    ));
    // Entries cannot be made: no provider (NotAvailable) or no permission (Collect).
    let mut fake = FakeConfigfs::new("tdx_guest");
    fake.mkdir_error = Some(io::ErrorKind::Unsupported);
    assert!(matches!(open(&dir, fake), Err(Error::NotAvailable(_))));
    let mut fake = FakeConfigfs::new("tdx_guest");
    fake.mkdir_error = Some(io::ErrorKind::PermissionDenied);
    assert!(matches!(open(&dir, fake), Err(Error::Collect(m)) if m.contains("CAP_SYS_ADMIN")));
    // A plain directory (no kernel behind it): the probe finds no provider.
    assert!(matches!(
        TsmCollector::with_root(dir.path()),
        Err(Error::NotAvailable(_))
    ));
    assert_eq!(entries(&dir), 0);
    // This machine: whatever it has, detection does not panic; without configfs-tsm it says
    // NotAvailable.
    let r = crate::collect::detect_cpu();
    if !Path::new(TSM_REPORT_ROOT).exists() {
        assert!(matches!(r, Err(Error::NotAvailable(_))), "{r:?}");
    }
}

#[test]
fn provider_mapping() {
    assert_eq!(kind_for_provider("tdx_guest\n").unwrap(), EvidenceKind::TdxQuote);
    assert_eq!(kind_for_provider("sev_guest").unwrap(), EvidenceKind::SnpReport);
    assert!(matches!(
        kind_for_provider("sev_guest_x"),
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(kind_for_provider(""), Err(Error::Unsupported { .. })));
    assert!(matches!(
        kind_for_provider(" tdx_guest"),
        Err(Error::Unsupported { .. })
    ));
}

#[test]
fn guid_constants_match_their_text() {
    assert_eq!(guid_string(&VCEK_GUID), "63da758d-e664-4564-adc5-f4b93be8accd");
    assert_eq!(guid_string(&VLEK_GUID), "a8074bc2-a25a-483e-aae6-39c045a0b8a1");
    assert_eq!(guid_string(&ASK_GUID), "4ab7b379-bbac-4fe4-a02f-05aef327c782");
    assert_eq!(guid_string(&ARK_GUID), "c0b406a4-a803-4952-9743-3fb6014cd0ae");
}

#[test]
fn cert_table_good_input() {
    let real_vcek = std::fs::read(format!(
        "{}/testdata/sev-snp/virtee_milan_vcek.der",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let t = table(&[(VCEK_GUID, &real_vcek), (ASK_GUID, b"ask"), (ARK_GUID, b"")]);
    let e = parse_cert_table(&t).unwrap();
    assert_eq!(e.len(), 3);
    assert_eq!((e[0].guid, e[0].data), (VCEK_GUID, real_vcek.as_slice()));
    assert_eq!((e[1].guid, e[1].data), (ASK_GUID, b"ask".as_slice()));
    assert_eq!((e[2].guid, e[2].data), (ARK_GUID, b"".as_slice()));
    let vcek = vcek_from_cert_table(&t).unwrap().unwrap();
    assert_eq!(vcek, real_vcek);
    crate::x509::parse_der(&vcek).unwrap();
    // Empty table, terminator only, trailing padding after the data (page-sized buffers).
    assert!(parse_cert_table(&[]).unwrap().is_empty());
    assert!(parse_cert_table(&[0; 24]).unwrap().is_empty());
    assert_eq!(vcek_from_cert_table(&[0; 24]).unwrap(), None);
    let mut padded = t.clone();
    padded.resize(4096, 0);
    assert_eq!(parse_cert_table(&padded).unwrap(), e);
}

#[test]
fn cert_table_hostile_input() {
    let malformed = |t: &[u8]| matches!(parse_cert_table(t), Err(Error::Malformed { .. }));
    let good = table(&[(VCEK_GUID, b"vcek"), (ASK_GUID, b"ask")]);
    // Every truncation that cuts the header or the data.
    for cut in 1..good.len() {
        assert!(malformed(&good[..cut]), "cut at {cut}");
    }
    let set = |at: usize, bytes: &[u8]| {
        let mut t = good.clone();
        t[at..at + bytes.len()].copy_from_slice(bytes);
        t
    };
    // Offset or length past the end; offset + length overflowing u32 and usize arithmetic.
    assert!(malformed(&set(16, &(good.len() as u32).to_le_bytes())));
    assert!(malformed(&set(20, &100u32.to_le_bytes())));
    assert!(malformed(&set(16, &u32::MAX.to_le_bytes())));
    assert!(malformed(&set(20, &u32::MAX.to_le_bytes())));
    // Offset into the header.
    assert!(malformed(&set(16, &0u32.to_le_bytes())));
    assert!(malformed(&set(16, &71u32.to_le_bytes())));
    // A zero GUID with a range; a GUID twice.
    assert!(malformed(&set(0, &[0; 16])));
    assert!(malformed(&set(24, &VCEK_GUID)));
    // No terminator: the third header slot holds an entry, then the data does not fit one.
    let mut t = good.clone();
    t[48..72].fill(0xCD);
    assert!(malformed(&t));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn cert_table_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_cert_table(&bytes);
        let _ = vcek_from_cert_table(&bytes);
    }

    #[test]
    fn mutated_cert_tables_never_panic(edits in proptest::collection::vec((0usize..200, any::<u8>()), 1..6)) {
        let mut t = table(&[(VCEK_GUID, b"vcek-bytes"), (ASK_GUID, b"ask"), (ARK_GUID, b"ark")]);
        for (pos, val) in edits {
            let n = t.len();
            t[pos % n] = val;
        }
        if let Ok(entries) = parse_cert_table(&t) {
            for e in entries {
                prop_assert!(e.data.len() <= t.len());
            }
        }
    }
}
