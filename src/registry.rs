//! The operator's replica registry: which replicas a deployment has and how a gateway reaches
//! them (`--replica NAME=URL`, repeatable, and `--replicas FILE`), for `veil serve` (answering
//! `ListReplicas`) and `veil gateway-config`.
//!
//! Nothing here is trusted by clients: they verify each replica's attestation themselves. The
//! registry is validated strictly anyway, because its names and addresses are written into
//! gateway configurations: a name is 1 to 63 of `A-Z a-z 0-9 . _ -` (starting with a letter or
//! digit) and an address is `HOST:PORT` or `http://HOST:PORT` with a DNS name, an IPv4 address
//! or a bracketed IPv6 address. Nothing else (paths, spaces, quotes, `;`, `{`, `$`, other
//! schemes) gets through, so no registry entry can inject configuration syntax.
//!
//! The file is TOML:
//!
//! ```toml
//! [[replica]]
//! name = "veil-0"
//! url = "http://veil-0.veil-headless.veil.svc.cluster.local:50051"
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::{Context, bail, ensure};
use veil_proto::routing::valid_replica_name;
use veil_proto::v1;

/// One replica: its name and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplicaEntry {
    /// The replica's name (validated).
    pub(crate) name: String,
    /// The host: a DNS name, an IPv4 address or a bracketed IPv6 address (validated).
    pub(crate) host: String,
    /// The port.
    pub(crate) port: u16,
}

impl ReplicaEntry {
    /// `HOST:PORT`, as gateway configurations write a server.
    pub(crate) fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// `http://HOST:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.authority())
    }
}

/// The replicas of a deployment, in the operator's order; names are unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Registry {
    entries: Vec<ReplicaEntry>,
}

/// The registry file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    replica: Vec<FileEntry>,
}

/// One `[[replica]]` of the registry file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: String,
    url: String,
}

impl Registry {
    /// The entries of `file` (if any), then those of `flags` (`NAME=URL` each), validated.
    pub(crate) fn load(flags: &[String], file: Option<&Path>) -> anyhow::Result<Self> {
        let mut registry = Self::default();
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let parsed: RegistryFile =
                toml::from_str(&text).with_context(|| format!("replica registry {}", path.display()))?;
            for (i, e) in parsed.replica.iter().enumerate() {
                registry
                    .push(&e.name, &e.url)
                    .with_context(|| format!("{}: replica[{i}]", path.display()))?;
            }
        }
        for flag in flags {
            let (name, url) = flag
                .split_once('=')
                .with_context(|| format!("--replica {flag:?}: expected NAME=URL"))?;
            registry
                .push(name, url)
                .with_context(|| format!("--replica {flag:?}"))?;
        }
        Ok(registry)
    }

    /// Adds a replica after validating its name (unique) and address.
    fn push(&mut self, name: &str, url: &str) -> anyhow::Result<()> {
        ensure!(
            valid_replica_name(name),
            "invalid replica name {name:?}: use 1 to 63 of A-Z a-z 0-9 . _ -, starting with a \
             letter or digit"
        );
        // Case-insensitively: nginx matches map keys ignoring case.
        ensure!(
            self.entries.iter().all(|e| !e.name.eq_ignore_ascii_case(name)),
            "replica name {name:?} appears twice"
        );
        let (host, port) = parse_url(url)?;
        self.entries.push(ReplicaEntry {
            name: name.to_owned(),
            host,
            port,
        });
        Ok(())
    }

    /// The replicas in order.
    pub(crate) fn entries(&self) -> &[ReplicaEntry] {
        &self.entries
    }

    /// Whether no replica is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `ListReplicas` answer of the replica named `own` (if it has a name) whose session key
    /// id is `own_key_id` (hex): the registry, with the key id in its own entry; without a
    /// registry, itself alone. A name that is not in a non-empty registry is refused.
    pub(crate) fn listing(&self, own: Option<&str>, own_key_id: &str) -> anyhow::Result<Vec<v1::Replica>> {
        if let Some(name) = own {
            ensure!(
                valid_replica_name(name),
                "invalid --replica-name {name:?}: use 1 to 63 of A-Z a-z 0-9 . _ -, starting with \
                 a letter or digit"
            );
        }
        if self.entries.is_empty() {
            return Ok(vec![v1::Replica {
                name: own.unwrap_or_default().to_owned(),
                key_id: own_key_id.to_owned(),
                url: String::new(),
            }]);
        }
        if let Some(name) = own {
            ensure!(
                self.entries.iter().any(|e| e.name == name),
                "--replica-name {name:?} is not in the replica registry ({})",
                self.names().join(", ")
            );
        }
        Ok(self
            .entries
            .iter()
            .map(|e| v1::Replica {
                name: e.name.clone(),
                key_id: if Some(e.name.as_str()) == own {
                    own_key_id.to_owned()
                } else {
                    String::new()
                },
                url: e.url(),
            })
            .collect())
    }

    /// The names in order.
    fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }
}

/// Splits `HOST:PORT` or `http://HOST:PORT` into a validated host and port.
pub(crate) fn parse_url(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => bail!(
            "replica address {url:?}: scheme {scheme:?} is not supported (use http://HOST:PORT: \
             gateways speak plaintext HTTP/2 to replicas; the requests are sealed end to end)"
        ),
        None => url,
    };
    let bad = |why: &str| anyhow::anyhow!("replica address {url:?}: {why} (expected HOST:PORT)");
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    ensure!(
        !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()),
        bad("the port is not a number")
    );
    let port: u16 = port.parse().map_err(|_| bad("the port is out of range"))?;
    ensure!(port != 0, bad("port 0"));
    ensure!(valid_host(host), bad("invalid host"));
    Ok((host.to_owned(), port))
}

/// A DNS name (labels of `A-Z a-z 0-9 -`, not starting or ending with `-`), an IPv4 address,
/// or a bracketed IPv6 address.
fn valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().is_ok();
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("replicas.toml");
        std::fs::write(
            &file,
            "[[replica]]\nname = \"veil-0\"\nurl = \"http://veil-0.veil-headless:50051\"\n",
        )
        .expect("write");
        let r = Registry::load(&flags(&["b=127.0.0.1:7", "c=http://[::1]:8"]), Some(&file)).expect("load");
        let got: Vec<(String, String)> = r.entries().iter().map(|e| (e.name.clone(), e.url())).collect();
        assert_eq!(
            got,
            [
                ("veil-0".into(), "http://veil-0.veil-headless:50051".into()),
                ("b".into(), "http://127.0.0.1:7".into()),
                ("c".into(), "http://[::1]:8".into()),
            ]
        );
    }

    #[test]
    fn refuses_what_could_inject_configuration() {
        for bad in [
            "noequals",
            "a=h",
            "a=h:",
            "a=h:0",
            "a=h:65536",
            "a=h:1x",
            "a=https://h:1",
            "a=grpc://h:1",
            "a=http://h:1/path",
            "a=h;x:1",
            "a=h x:1",
            "a=h{:1",
            "a=$host:1",
            "a=h\":1",
            "a=h\n:1",
            "a=-h:1",
            "a=[::1:1",
            "a=[zz]:1",
            "a=h..x:1",
            "a b=h:1",
            "a;b=h:1",
            "a}=h:1",
            "=h:1",
            "a\n=h:1",
        ] {
            assert!(Registry::load(&flags(&[bad]), None).is_err(), "{bad:?}");
        }
        let dup = Registry::load(&flags(&["a=h:1", "a=h:2"]), None);
        assert!(format!("{:#}", dup.expect_err("duplicate")).contains("twice"));
        assert!(Registry::load(&flags(&["a=h:1", "A=h:2"]), None).is_err(), "case");
    }

    #[test]
    fn file_errors_name_the_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("r.toml");
        std::fs::write(
            &file,
            "[[replica]]\nname = \"ok\"\nurl = \"h:1\"\n[[replica]]\nname = \"x;\"\nurl = \"h:2\"\n",
        )
        .expect("write");
        let e = format!("{:#}", Registry::load(&[], Some(&file)).expect_err("bad name"));
        assert!(e.contains("replica[1]"), "{e}");
        std::fs::write(&file, "[[replica]]\nname = \"ok\"\nurl = \"h:1\"\nport = 3\n").expect("write");
        assert!(Registry::load(&[], Some(&file)).is_err(), "unknown field");
    }

    #[test]
    fn listing_fills_in_only_the_own_key_id() {
        let r = Registry::load(&flags(&["a=h:1", "b=h:2"]), None).expect("load");
        let l = r.listing(Some("b"), "00112233aabbccdd").expect("listing");
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[0].name.as_str(), l[0].key_id.as_str(), l[0].url.as_str()),
            ("a", "", "http://h:1")
        );
        assert_eq!(l[1].key_id, "00112233aabbccdd");
        assert!(r.listing(Some("c"), "00").is_err(), "not in the registry");
        let none = r.listing(None, "00").expect("no name");
        assert!(none.iter().all(|e| e.key_id.is_empty()));
        let alone = Registry::default().listing(Some("solo"), "ff").expect("alone");
        assert_eq!(
            alone,
            [v1::Replica {
                name: "solo".into(),
                key_id: "ff".into(),
                url: String::new()
            }]
        );
        assert!(Registry::default().listing(Some("a b"), "ff").is_err());
    }
}
