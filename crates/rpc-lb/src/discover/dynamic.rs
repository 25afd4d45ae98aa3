//! [`DynamicList`]: endpoints changed at run time through a handle, for tests and for users
//! who feed discovery from their own source.

use super::{diff, Change, Discover, Endpoint};
use rpc_core::Status;
use std::{collections::BTreeMap, sync::Arc};
use tokio::sync::watch;

type Set = Arc<BTreeMap<String, Endpoint>>;

/// A discovery source whose endpoints are set through a [`DynamicHandle`].
///
/// Changes made in quick succession may reach the channel as one batch; the channel always ends
/// up with the latest set. When every handle is dropped the channel keeps the last set.
#[derive(Debug)]
pub struct DynamicList {
    rx: watch::Receiver<Set>,
    seen: Set,
    first: bool,
}

/// Changes the endpoints of the [`DynamicList`]s made from it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DynamicHandle {
    tx: Arc<watch::Sender<Set>>,
}

impl DynamicList {
    /// A list starting with `endpoints`, and the handle that changes it.
    pub fn new<E: Into<Endpoint>>(endpoints: impl IntoIterator<Item = E>) -> (DynamicList, DynamicHandle) {
        let set: BTreeMap<_, _> = endpoints
            .into_iter()
            .map(|e| {
                let e: Endpoint = e.into();
                (e.addr.clone(), e)
            })
            .collect();
        let (tx, rx) = watch::channel(Arc::new(set));
        (DynamicList { rx, seen: Arc::default(), first: true }, DynamicHandle { tx: Arc::new(tx) })
    }
}

impl DynamicHandle {
    /// Adds `endpoint`, or updates the endpoint with its address.
    pub fn insert(&self, endpoint: impl Into<Endpoint>) {
        let endpoint = endpoint.into();
        self.tx.send_modify(|set| {
            Arc::make_mut(set).insert(endpoint.addr.clone(), endpoint);
        });
    }

    /// Removes the endpoint at `addr`.
    pub fn remove(&self, addr: &str) {
        self.tx.send_modify(|set| {
            Arc::make_mut(set).remove(addr);
        });
    }

    /// Replaces the whole set.
    pub fn set<E: Into<Endpoint>>(&self, endpoints: impl IntoIterator<Item = E>) {
        let set = endpoints.into_iter().map(|e| {
            let e: Endpoint = e.into();
            (e.addr.clone(), e)
        });
        self.tx.send_replace(Arc::new(set.collect()));
    }

    /// A new [`DynamicList`] following this handle.
    pub fn subscribe(&self) -> DynamicList {
        DynamicList { rx: self.tx.subscribe(), seen: Arc::default(), first: true }
    }
}

impl Discover for DynamicList {
    async fn next_changes(&mut self) -> Result<Vec<Change>, Status> {
        loop {
            if !std::mem::take(&mut self.first) && self.rx.changed().await.is_err() {
                // Every handle is gone: the set can no longer change.
                return std::future::pending().await;
            }
            let current = self.rx.borrow_and_update().clone();
            let changes = diff(&self.seen, &current);
            self.seen = current;
            if !changes.is_empty() || self.seen.is_empty() {
                return Ok(changes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn yields_the_initial_set_then_each_change() {
        let (mut list, handle) = DynamicList::new(["a:1"]);
        assert_eq!(list.next_changes().await.unwrap(), vec![Change::Added(Endpoint::new("a:1"))]);
        handle.insert("b:1");
        handle.remove("a:1");
        let changes = list.next_changes().await.unwrap();
        assert_eq!(changes, vec![Change::Added(Endpoint::new("b:1")), Change::Removed("a:1".into())]);
        handle.insert(Endpoint::new("b:1").weight(5));
        assert_eq!(list.next_changes().await.unwrap(), vec![Change::Updated(Endpoint::new("b:1").weight(5))]);
    }
}
