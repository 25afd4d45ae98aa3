//! How messages leave a node: the [`Transport`] trait and an in-process implementation.
//!
//! A transport only moves [`Message`]s; it never orders, retries or persists them
//! (Raft tolerates loss, duplication and reordering). Encoding for a real network is
//! in [`crate::codec`]; a transport over the RPC framework lives elsewhere.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::message::{Message, NodeId};

/// Why a message could not be handed to the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// No route to the peer.
    UnknownPeer(NodeId),
    /// The transport is shut down or broken.
    Closed,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::UnknownPeer(id) => write!(f, "no route to peer {id}"),
            TransportError::Closed => write!(f, "transport closed"),
        }
    }
}

impl std::error::Error for TransportError {}

/// Sends messages to peers (best effort: delivery is not guaranteed).
pub trait Transport {
    /// Queues `msg` for `msg.to`.
    fn send(&mut self, msg: Message) -> Result<(), TransportError>;
}

#[derive(Debug, Default)]
struct Router {
    inboxes: HashMap<NodeId, VecDeque<Message>>,
    cut: HashSet<(NodeId, NodeId)>,
}

/// An in-process network of mailboxes; clone it to share it (thread-safe).
#[derive(Clone, Debug, Default)]
pub struct InMemoryNetwork {
    router: Arc<Mutex<Router>>,
}

impl InMemoryNetwork {
    /// A network with mailboxes for `ids`.
    pub fn new(ids: impl IntoIterator<Item = NodeId>) -> Self {
        let net = InMemoryNetwork::default();
        {
            let mut r = net.lock();
            for id in ids {
                r.inboxes.entry(id).or_default();
            }
        }
        net
    }

    /// Adds a mailbox for a new node.
    pub fn add(&self, id: NodeId) {
        self.lock().inboxes.entry(id).or_default();
    }

    fn lock(&self) -> MutexGuard<'_, Router> {
        // A panic while holding the lock cannot leave the queues inconsistent.
        self.router.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A sending endpoint for node `from`.
    pub fn transport(&self, from: NodeId) -> InMemoryTransport {
        InMemoryTransport { from, net: self.clone() }
    }

    /// Takes every message waiting for `id`.
    pub fn drain(&self, id: NodeId) -> Vec<Message> {
        self.lock().inboxes.get_mut(&id).map(|q| q.drain(..).collect()).unwrap_or_default()
    }

    /// Whether any mailbox holds a message.
    pub fn is_idle(&self) -> bool {
        self.lock().inboxes.values().all(|q| q.is_empty())
    }

    /// Drops messages from `a` to `b` and from `b` to `a` until [`InMemoryNetwork::heal`].
    pub fn cut(&self, a: NodeId, b: NodeId) {
        let mut r = self.lock();
        r.cut.insert((a, b));
        r.cut.insert((b, a));
    }

    /// Cuts every link of `id`.
    pub fn isolate(&self, id: NodeId) {
        let peers: Vec<NodeId> = self.lock().inboxes.keys().copied().collect();
        for p in peers.into_iter().filter(|p| *p != id) {
            self.cut(id, p);
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }
}

/// The sending side of [`InMemoryNetwork`] for one node.
#[derive(Clone, Debug)]
pub struct InMemoryTransport {
    from: NodeId,
    net: InMemoryNetwork,
}

impl Transport for InMemoryTransport {
    fn send(&mut self, msg: Message) -> Result<(), TransportError> {
        let mut r = self.net.lock();
        if r.cut.contains(&(self.from, msg.to)) {
            return Ok(());
        }
        let to = msg.to;
        r.inboxes.get_mut(&to).ok_or(TransportError::UnknownPeer(to))?.push_back(msg);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageBody;

    fn msg(from: NodeId, to: NodeId) -> Message {
        Message { from, to, term: 1, body: MessageBody::TimeoutNow }
    }

    #[test]
    fn delivers_cuts_and_heals() {
        let net = InMemoryNetwork::new([1, 2]);
        let mut t1 = net.transport(1);
        t1.send(msg(1, 2)).unwrap();
        assert_eq!(t1.send(msg(1, 9)), Err(TransportError::UnknownPeer(9)));
        assert_eq!(net.drain(2).len(), 1);
        net.isolate(1);
        t1.send(msg(1, 2)).unwrap();
        assert!(net.is_idle());
        net.heal();
        t1.send(msg(1, 2)).unwrap();
        assert!(!net.is_idle());
    }
}
