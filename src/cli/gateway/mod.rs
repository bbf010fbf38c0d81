//! `veil gateway-config`: the configuration of an untrusted gateway (nginx or HAProxy) that
//! routes each sealed call to the replica owning its key (docs/scale-out.md §2).
//!
//! It asks every replica of the registry for its current session key id (`ModelInfo`, plain and
//! unauthenticated: the gateway is untrusted anyway, and a wrong entry only misroutes a call,
//! which the replica refuses with `veil-error: unknown-key-id`) and writes the exact map
//! key id → replica, the map name → replica (`veil-replica`, for attestation calls during
//! discovery and as a fallback while the key map is stale), and a group of every replica for
//! everything else. Consistent hashing would only give stickiness, not ownership: the maps are
//! exact. Key ids change whenever a replica restarts: regenerate and reload the gateway then.

mod haproxy;
mod nginx;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::Args;
use tonic::transport::Endpoint;
use veil_proto::v1::ModelInfoRequest;
use veil_proto::v1::inference_client::InferenceClient;

use crate::registry::{Registry, ReplicaEntry};

/// How long to wait for each replica.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `veil gateway-config`.
#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// The gateway: `nginx` (a complete nginx.conf; `grpc_pass` with a `map` on the key-id
    /// header) or `haproxy` (haproxy.cfg with `use_backend` on map files; needs --out).
    #[arg(long, value_enum)]
    format: Format,
    /// A replica (repeatable): NAME=URL with URL `HOST:PORT` or `http://HOST:PORT`.
    #[arg(long, value_name = "NAME=URL")]
    replica: Vec<String>,
    /// A TOML file of replicas (`[[replica]]` tables with `name` and `url`), as for `veil serve
    /// --replicas`.
    #[arg(long, value_name = "FILE")]
    replicas: Option<PathBuf>,
    /// The address the gateway listens on (plaintext HTTP/2: the calls are sealed end to end).
    #[arg(long, default_value = "0.0.0.0:50051", value_name = "ADDR")]
    listen: SocketAddr,
    /// Write the files into DIR (created if missing; `nginx.conf`, or `haproxy.cfg` with
    /// `veil-key-id.map` and `veil-replica.map`) and print their paths, instead of printing the
    /// nginx configuration.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// nginx: put the pid file, the error and access logs and the temporary files under DIR (an
    /// absolute path), e.g. to run nginx unprivileged [default: nginx's own locations].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
}

/// The gateway software.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// nginx (1.13.10 or newer, with the gRPC and HTTP/2 modules).
    Nginx,
    /// HAProxy (2.0 or newer).
    Haproxy,
}

/// A replica and the session key id it reported (none when it could not be asked).
#[derive(Debug, Clone)]
struct Routed {
    entry: ReplicaEntry,
    key_id: Option<String>,
}

/// Everything a gateway configuration is made from.
#[derive(Debug, Clone)]
struct Plan {
    listen: SocketAddr,
    replicas: Vec<Routed>,
}

impl Plan {
    /// The plan for `replicas` and the key ids they reported; refuses key ids that are not 16
    /// lower-case hex digits and a key id reported by two replicas.
    fn new(listen: SocketAddr, replicas: Vec<(ReplicaEntry, Option<String>)>) -> anyhow::Result<Self> {
        ensure!(
            !replicas.is_empty(),
            "no replica: pass --replica NAME=URL or --replicas FILE"
        );
        let mut routed: Vec<Routed> = Vec::with_capacity(replicas.len());
        for (entry, key_id) in replicas {
            if let Some(id) = &key_id {
                ensure!(
                    valid_key_id(id),
                    "replica {} reported the key id {id:?}, not 16 lower-case hex digits",
                    entry.name
                );
                if let Some(twin) = routed.iter().find(|r| r.key_id.as_ref() == Some(id)) {
                    bail!(
                        "replicas {} and {} hold the same key {id} (the same server listed twice?)",
                        twin.entry.name,
                        entry.name
                    );
                }
            }
            routed.push(Routed { entry, key_id });
        }
        Ok(Self {
            listen,
            replicas: routed,
        })
    }
}

/// The upstream (backend) name of the replica at `index` in the registry.
fn backend_name(index: usize) -> String {
    format!("veil_replica_{index}")
}

/// The group of every replica.
const ANY_BACKEND: &str = "veil_any";

/// A session key id as the configurations carry it: 16 lower-case hex digits.
fn valid_key_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `path` may be written into a configuration unquoted: absolute, of
/// `A-Z a-z 0-9 / . _ - +` only.
fn check_config_path(path: &Path, flag: &str) -> anyhow::Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("{flag} {}: not UTF-8", path.display()))?;
    ensure!(
        text.starts_with('/')
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'+')),
        "{flag} {text:?}: use an absolute path of A-Z a-z 0-9 / . _ - + only (it is written into \
         the gateway's configuration)"
    );
    Ok(text.trim_end_matches('/').to_owned())
}

pub(crate) fn run(a: GatewayArgs) -> anyhow::Result<()> {
    let registry = Registry::load(&a.replica, a.replicas.as_deref())?;
    ensure!(
        !registry.is_empty(),
        "no replica: pass --replica NAME=URL or --replicas FILE"
    );
    let run_dir = a
        .run_dir
        .as_deref()
        .map(|d| check_config_path(d, "--run-dir"))
        .transpose()?;
    if a.format == Format::Haproxy {
        ensure!(run_dir.is_none(), "--run-dir is for --format nginx");
        ensure!(
            a.out.is_some(),
            "--format haproxy needs --out DIR (HAProxy reads its maps from files)"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let key_ids = rt.block_on(fetch_key_ids(registry.entries()));
    let answered = key_ids.iter().filter(|k| k.is_some()).count();
    ensure!(answered > 0, "no replica answered; is the registry right?");
    let plan = Plan::new(
        a.listen,
        registry.entries().iter().cloned().zip(key_ids).collect(),
    )?;
    match (a.format, a.out) {
        (Format::Nginx, None) => print!("{}", nginx::render(&plan, run_dir.as_deref())),
        (Format::Nginx, Some(dir)) => {
            create_dir(&dir)?;
            write(&dir.join("nginx.conf"), &nginx::render(&plan, run_dir.as_deref()))?;
        }
        (Format::Haproxy, None) => {
            bail!("--format haproxy needs --out DIR (HAProxy reads its maps from files)")
        }
        (Format::Haproxy, Some(dir)) => {
            create_dir(&dir)?;
            let abs = std::fs::canonicalize(&dir).with_context(|| format!("resolving {}", dir.display()))?;
            let map_dir = check_config_path(&abs, "--out")?;
            let files = haproxy::render(&plan, &map_dir);
            write(&abs.join(haproxy::KEY_ID_MAP), &files.key_id_map)?;
            write(&abs.join(haproxy::REPLICA_MAP), &files.replica_map)?;
            write(&abs.join("haproxy.cfg"), &files.config)?;
        }
    }
    eprintln!(
        "{answered} of {} replicas reported a key id; regenerate and reload the gateway whenever \
         a replica restarts",
        plan.replicas.len()
    );
    Ok(())
}

/// Creates `dir` if it does not exist.
fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Writes `text` to `path` atomically (a temporary file in the same directory, then a
/// rename: a gateway that reloads meanwhile reads the old file or the new one, never half of
/// one) and prints the path.
fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    println!("{}", path.display());
    Ok(())
}

/// Each replica's session key id, asked for directly (`ModelInfo.session_key_id`); `None`, with
/// a warning on stderr, for a replica that cannot be asked.
async fn fetch_key_ids(entries: &[ReplicaEntry]) -> Vec<Option<String>> {
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        match fetch_key_id(e).await {
            Ok(id) => out.push(Some(id)),
            Err(err) => {
                eprintln!(
                    "warning: replica {} ({}): no key id ({err:#}); it is routed by name and in \
                     the group of all replicas only",
                    e.name,
                    e.url()
                );
                out.push(None);
            }
        }
    }
    out
}

/// One replica's session key id.
async fn fetch_key_id(e: &ReplicaEntry) -> anyhow::Result<String> {
    let channel = Endpoint::from_shared(e.url())?
        .connect_timeout(REPLICA_TIMEOUT)
        .timeout(REPLICA_TIMEOUT)
        .connect()
        .await
        .context("connecting")?;
    let info = InferenceClient::new(channel)
        .model_info(ModelInfoRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("ModelInfo: {}: {}", s.code(), s.message()))?
        .into_inner();
    if !info.replica_name.is_empty() && info.replica_name != e.name {
        eprintln!(
            "warning: the replica registered as {} calls itself {:?} (--replica-name)",
            e.name, info.replica_name
        );
    }
    ensure!(
        valid_key_id(&info.session_key_id),
        "it reported no valid session key id (a Veil server older than ListReplicas?)"
    );
    Ok(info.session_key_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three replicas, the second without a key id.
    pub(super) fn plan() -> Plan {
        let registry = Registry::load(
            &[
                "veil-0=http://10.0.0.1:50051".into(),
                "veil-1=veil-1.veil-headless:50051".into(),
                "veil-2=[fd00::2]:50051".into(),
            ],
            None,
        )
        .expect("registry");
        let ids = [
            Some("00112233aabbccdd".to_owned()),
            None,
            Some("ffeeddcc00000002".to_owned()),
        ];
        Plan::new(
            "127.0.0.1:8443".parse().expect("addr"),
            registry.entries().iter().cloned().zip(ids).collect(),
        )
        .expect("plan")
    }

    #[test]
    fn refuses_bad_or_shared_key_ids() {
        let registry = Registry::load(&["a=h:1".into(), "b=h:2".into()], None).expect("registry");
        let listen: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let with = |ids: [Option<&str>; 2]| {
            Plan::new(
                listen,
                registry
                    .entries()
                    .iter()
                    .cloned()
                    .zip(ids.map(|i| i.map(str::to_owned)))
                    .collect(),
            )
        };
        assert!(with([Some("00112233aabbccdd"), Some("00112233aabbccde")]).is_ok());
        for bad in [
            "00112233AABBCCDD",
            "0011",
            "00112233aabbccdd0",
            "00112233aabbcc;d",
            "",
        ] {
            assert!(with([Some(bad), None]).is_err(), "{bad:?}");
        }
        let e = with([Some("00112233aabbccdd"), Some("00112233aabbccdd")]).expect_err("shared key");
        assert!(e.to_string().contains("same key"), "{e}");
    }

    #[test]
    fn config_paths() {
        assert_eq!(
            check_config_path(Path::new("/tmp/.tmpAb12_x/"), "--run-dir").expect("ok"),
            "/tmp/.tmpAb12_x"
        );
        for bad in [
            "relative", "/a b", "/a;b", "/a{b", "/a$b", "/a\"b", "/a\nb", "/a'b", "/a#b",
        ] {
            assert!(check_config_path(Path::new(bad), "--run-dir").is_err(), "{bad:?}");
        }
    }
}
