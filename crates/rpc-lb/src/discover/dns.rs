//! [`Dns`]: the A/AAAA records of a name, re-resolved periodically.

use super::{diff, Change, Discover, Endpoint};
use rpc_core::Status;
use std::{collections::BTreeMap, time::Duration};

/// Endpoints from resolving `host:port`; each address becomes an endpoint of weight 1.
///
/// A failed lookup is reported as unavailable (the channel keeps the last known endpoints); an
/// answer with no address is also treated as a failure rather than as "no instances", since an
/// empty answer is far more often a resolver hiccup than a service with no instances.
#[derive(Debug)]
pub struct Dns {
    name: String,
    interval: Duration,
    known: BTreeMap<String, Endpoint>,
    first: bool,
}

impl Dns {
    /// Resolves `name` (`host:port`) now and every 30 s.
    pub fn new(name: impl Into<String>) -> Dns {
        Dns { name: name.into(), interval: Duration::from_secs(30), known: BTreeMap::new(), first: true }
    }

    /// Re-resolves every `interval`.
    pub fn interval(mut self, interval: Duration) -> Dns {
        self.interval = interval;
        self
    }

    async fn resolve(&self) -> Result<BTreeMap<String, Endpoint>, Status> {
        let addrs = tokio::net::lookup_host(&self.name)
            .await
            .map_err(|e| Status::unavailable(format!("cannot resolve {:?}: {e}", self.name)))?;
        let set: BTreeMap<_, _> = addrs.map(|a| (a.to_string(), Endpoint::new(a.to_string()))).collect();
        if set.is_empty() {
            return Err(Status::unavailable(format!("{:?} resolved to no address", self.name)));
        }
        Ok(set)
    }
}

impl Discover for Dns {
    async fn next_changes(&mut self) -> Result<Vec<Change>, Status> {
        loop {
            if !std::mem::take(&mut self.first) {
                tokio::time::sleep(self.interval).await;
            }
            let set = self.resolve().await?;
            let changes = diff(&self.known, &set);
            self.known = set;
            if !changes.is_empty() {
                return Ok(changes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_localhost_and_reports_a_bad_name_as_unavailable() {
        let mut dns = Dns::new("localhost:7001");
        let changes = dns.next_changes().await.unwrap();
        assert!(changes.contains(&Change::Added(Endpoint::new("127.0.0.1:7001"))), "{changes:?}");
        assert!(changes.iter().all(|c| matches!(c, Change::Added(e) if e.addr.ends_with(":7001"))), "{changes:?}");
        let err = Dns::new("no port here").next_changes().await.unwrap_err();
        assert_eq!(err.code(), rpc_core::Code::Unavailable);
    }
}
