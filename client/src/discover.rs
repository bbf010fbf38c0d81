//! Replica discovery: [`Client::discover`] lists a deployment's replicas (`ListReplicas`),
//! fetches and verifies each one's bundle through the gateway (`GetAttestation` with the
//! metadata `veil-replica: NAME`) and pins every replica that verifies. Sealed calls then go to
//! the pinned replicas in turn, each sealed to its own replica's key and routed by its key id
//! (docs/scale-out.md §2).
//!
//! The listing is not trusted: it only says which names to ask for. What a sealed request is
//! sealed to always comes from a bundle that verified against the client's policy; a gateway
//! that routes an attestation call to another replica than the one named only makes the client
//! pin that other (verified) replica.

use veil_proto::routing::valid_replica_name;
use veil_proto::v1::ListReplicasRequest;

use crate::attested::Attested;
use crate::error::{ClientError, Result};
use crate::{Client, unix_now};

/// A replica whose attestation bundle verified against the client's policy.
#[derive(Debug, Clone)]
pub struct VerifiedReplica {
    name: String,
    url: String,
    attested: Attested,
}

impl VerifiedReplica {
    /// The replica's name in the deployment's registry (empty for a server that lists itself
    /// without a name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The replica's address as the registry gives it (informational: calls go through the
    /// client's connection, routed by the gateway).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The replica's verified bundle and pinned keys.
    pub fn attested(&self) -> &Attested {
        &self.attested
    }
}

/// A listed replica that discovery left out, and why (unreachable, its bundle does not verify,
/// or it holds the same key as a replica pinned before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedReplica {
    /// The replica's name.
    pub name: String,
    /// Why it was left out.
    pub reason: String,
}

/// The pinned replicas and whose turn it is.
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    pub(crate) replicas: Vec<VerifiedReplica>,
    pub(crate) skipped: Vec<SkippedReplica>,
    next: usize,
}

impl Pool {
    /// The replica whose turn it is, if its pin is still fresh at `now`; advances the turn.
    pub(crate) fn take_turn(&mut self, now: u64) -> Option<&VerifiedReplica> {
        if self.replicas.is_empty() {
            return None;
        }
        let i = self.next % self.replicas.len();
        let replica = &self.replicas[i];
        if !replica.attested.is_fresh(now) {
            return None;
        }
        self.next = i + 1;
        Some(replica)
    }
}

impl Client {
    /// Discovers the deployment's replicas and pins every one whose bundle verifies, replacing
    /// any earlier pin. Asks any replica for the registry (`ListReplicas`), then each listed
    /// replica for a bundle with a fresh nonce (`GetAttestation` with `veil-replica: NAME`,
    /// routed by the gateway), and verifies it against the policy. Replicas that cannot be
    /// reached or do not verify are left out ([`Client::skipped_replicas`]); when none verifies
    /// the call fails with [`ClientError::Protocol`] giving each replica's reason.
    ///
    /// From then on sealed calls go to the pinned replicas in turn, starting with the first
    /// listed. A replica that answers that it does not hold the key (`veil-error:
    /// unknown-key-id`) or cannot be reached (UNAVAILABLE) makes the client discover again and
    /// re-seal the call, once, to a live replica; pins older than the policy's `max_age_secs`
    /// are refreshed the same way. [`Client::attest`] returns to a single pin.
    pub async fn discover(&mut self) -> Result<&[VerifiedReplica]> {
        let req = self.request(ListReplicasRequest {});
        let listing = self
            .rpc
            .list_replicas(req)
            .await
            .map_err(ClientError::Status)?
            .into_inner()
            .replicas;
        if listing.is_empty() {
            return Err(ClientError::Protocol("ListReplicas listed no replica".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for r in &listing {
            let alone_unnamed = listing.len() == 1 && r.name.is_empty();
            if !alone_unnamed && !valid_replica_name(&r.name) {
                return Err(ClientError::Protocol(format!(
                    "ListReplicas listed an invalid replica name {:?}",
                    r.name
                )));
            }
            if !seen.insert(r.name.as_str()) {
                return Err(ClientError::Protocol(format!(
                    "ListReplicas listed {:?} twice",
                    r.name
                )));
            }
        }
        let mut replicas: Vec<VerifiedReplica> = Vec::with_capacity(listing.len());
        let mut skipped = Vec::new();
        for r in listing {
            let name = (!r.name.is_empty()).then_some(r.name.as_str());
            match self.fetch_attested(name).await {
                Ok(attested) => {
                    if let Some(twin) = replicas.iter().find(|p| p.attested.key_id() == attested.key_id()) {
                        skipped.push(SkippedReplica {
                            reason: format!("the gateway answered with {}'s key", twin.name),
                            name: r.name,
                        });
                        continue;
                    }
                    replicas.push(VerifiedReplica {
                        name: r.name,
                        url: r.url,
                        attested,
                    });
                }
                Err(e) => skipped.push(SkippedReplica {
                    name: r.name,
                    reason: e.to_string(),
                }),
            }
        }
        if replicas.is_empty() {
            let why: Vec<String> = skipped
                .iter()
                .map(|s| format!("{}: {}", s.name, s.reason))
                .collect();
            return Err(ClientError::Protocol(format!(
                "no replica verified: {}",
                why.join("; ")
            )));
        }
        self.attested = None;
        let pool = self.pool.insert(Pool {
            replicas,
            skipped,
            next: 0,
        });
        Ok(&pool.replicas)
    }

    /// The replicas pinned by the last [`Client::discover`] (empty without discovery).
    pub fn replicas(&self) -> &[VerifiedReplica] {
        self.pool.as_ref().map_or(&[], |p| p.replicas.as_slice())
    }

    /// The listed replicas the last [`Client::discover`] left out, and why.
    pub fn skipped_replicas(&self) -> &[SkippedReplica] {
        self.pool.as_ref().map_or(&[], |p| p.skipped.as_slice())
    }

    /// The next replica's pin and name, discovering again when its pin is too old.
    pub(crate) async fn next_replica(&mut self) -> Result<(Attested, String)> {
        for _ in 0..2 {
            if let Some(pool) = self.pool.as_mut()
                && let Some(r) = pool.take_turn(unix_now())
            {
                return Ok((r.attested.clone(), r.name.clone()));
            }
            self.discover().await?;
        }
        Err(ClientError::Protocol("discovery left no fresh pin".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_pool_has_no_turn() {
        let mut p = Pool {
            replicas: Vec::new(),
            skipped: Vec::new(),
            next: 0,
        };
        assert!(p.take_turn(0).is_none());
    }
}
