//! Discovery: where the instances of a service are, and how that changes.
//!
//! A [`Discover`] first yields the current endpoints (as [`Change::Added`]) and then waits for
//! and yields changes. An error means the source is unavailable for now: the balanced channel
//! keeps serving from the endpoints it knows and asks again after a back-off. This module owns
//! the seam and the sources that need nothing else: [`StaticList`], [`DynamicList`] and [`Dns`];
//! the registry plugs its watch in by implementing the trait.

mod dns;
mod dynamic;
mod static_list;

pub use dns::Dns;
pub use dynamic::{DynamicHandle, DynamicList};
pub use static_list::StaticList;

use rpc_core::Status;
use std::{collections::BTreeMap, future::Future};

/// One instance of a service.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` to connect to; identifies the endpoint.
    pub addr: String,
    /// Relative share of traffic for weighted balancers (default 1; 0 takes no weighted traffic).
    pub weight: u32,
    /// Failure domain (zone, rack), if known.
    pub zone: Option<String>,
    /// Anything else the source knows (version, tags).
    pub metadata: BTreeMap<String, String>,
}

impl Endpoint {
    /// An endpoint at `addr` with weight 1, no zone and no metadata.
    pub fn new(addr: impl Into<String>) -> Endpoint {
        Endpoint { addr: addr.into(), weight: 1, zone: None, metadata: BTreeMap::new() }
    }

    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> Endpoint {
        self.weight = weight;
        self
    }

    /// Sets the zone.
    pub fn zone(mut self, zone: impl Into<String>) -> Endpoint {
        self.zone = Some(zone.into());
        self
    }
}

impl<S: Into<String>> From<S> for Endpoint {
    fn from(addr: S) -> Endpoint {
        Endpoint::new(addr)
    }
}

/// A change to the set of endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new endpoint.
    Added(Endpoint),
    /// An endpoint's weight, zone or metadata changed (same address).
    Updated(Endpoint),
    /// The endpoint with this address left; calls already sent to it finish there.
    Removed(String),
}

/// A source of endpoints for one service.
pub trait Discover: Send + 'static {
    /// The next batch of changes: on the first call, every current endpoint as `Added`; then
    /// waits until something changes. `Err` means the source is unavailable right now; it will
    /// be asked again later. A source that will never change again may wait forever.
    fn next_changes(&mut self) -> impl Future<Output = Result<Vec<Change>, Status>> + Send;
}

/// The changes that turn `old` into `new`, both keyed by address: what a source that learns
/// whole sets (a listing, a DNS answer) reports.
pub fn diff(old: &BTreeMap<String, Endpoint>, new: &BTreeMap<String, Endpoint>) -> Vec<Change> {
    let mut changes = Vec::new();
    for (addr, endpoint) in new {
        match old.get(addr) {
            None => changes.push(Change::Added(endpoint.clone())),
            Some(before) if before != endpoint => changes.push(Change::Updated(endpoint.clone())),
            Some(_) => {}
        }
    }
    changes.extend(old.keys().filter(|a| !new.contains_key(*a)).map(|a| Change::Removed(a.clone())));
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_reports_added_updated_and_removed() {
        let old: BTreeMap<_, _> = ["a:1", "b:1"].map(|a| (a.to_owned(), Endpoint::new(a))).into();
        let mut new = old.clone();
        new.remove("a:1");
        new.insert("b:1".into(), Endpoint::new("b:1").weight(3));
        new.insert("c:1".into(), Endpoint::new("c:1"));
        let changes = diff(&old, &new);
        assert_eq!(
            changes,
            vec![
                Change::Updated(Endpoint::new("b:1").weight(3)),
                Change::Added(Endpoint::new("c:1")),
                Change::Removed("a:1".into()),
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }
}
