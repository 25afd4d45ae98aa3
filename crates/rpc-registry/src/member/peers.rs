//! Raft messages on their way to other members, over our own RPC.
//!
//! One task per peer drains a bounded queue and delivers what it holds in one oneway call.
//! When a peer is slow or down its queue fills and further messages are dropped: Raft resends
//! what matters (appends, votes, heartbeats), and the Raft thread never waits on a peer.

use super::MemberConfig;
use crate::{api::Member, service::RaftPeerClient};
use rpc_core::{Channel, ChannelBuilder};
use rpc_raft::{codec::encode_message, Message};
use std::{collections::HashMap, time::Duration};
use tokio::sync::mpsc;

/// Messages queued per peer before new ones are dropped.
const QUEUE: usize = 4096;
/// Bytes of messages per delivery call.
const BATCH_BYTES: usize = 4 << 20;

/// How a member dials its peers: plain TCP, or TLS with its own certificate.
#[derive(Clone, Debug, Default)]
pub(super) struct PeerDial {
    #[cfg(feature = "tls")]
    tls: Option<rpc_core::tls::ClientTls>,
}

impl PeerDial {
    pub(super) fn new(config: &MemberConfig) -> PeerDial {
        #[cfg(feature = "tls")]
        return PeerDial { tls: config.tls.as_ref().map(|tls| tls.peer.clone()) };
        #[cfg(not(feature = "tls"))]
        {
            let _ = config;
            PeerDial {}
        }
    }

    fn channel(&self, addr: String) -> ChannelBuilder {
        let builder = Channel::builder(addr).timeout(Duration::from_secs(5));
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            return builder.tls(tls.clone());
        }
        builder
    }
}

pub(super) struct Outbox {
    me: u64,
    dial: PeerDial,
    runtime: tokio::runtime::Handle,
    /// Per peer: the address its task delivers to, and the task's queue.
    peers: HashMap<u64, (String, mpsc::Sender<Vec<u8>>)>,
}

impl Outbox {
    /// Starts a sender task per member other than `me`. Must run inside a Tokio runtime.
    pub(super) fn start(me: u64, members: &[Member], dial: PeerDial) -> Outbox {
        let mut outbox = Outbox { me, dial, runtime: tokio::runtime::Handle::current(), peers: HashMap::new() };
        outbox.update(members);
        outbox
    }

    /// Follows a membership change: starts tasks for new members (or new addresses) and ends
    /// those of members that left (dropping a queue ends its task).
    pub(super) fn update(&mut self, members: &[Member]) {
        self.peers.retain(|id, (addr, _)| members.iter().any(|m| m.id == *id && m.addr == *addr));
        for m in members.iter().filter(|m| m.id != self.me && !m.addr.is_empty()) {
            self.peers.entry(m.id).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                self.runtime.spawn(deliver(self.dial.channel(m.addr.clone()), rx));
                (m.addr.clone(), tx)
            });
        }
    }

    /// Tells `member` it was removed from cluster `cluster_id` (one try: a member that misses
    /// it keeps running without a leader until it is stopped).
    pub(super) fn notify_removed(&self, cluster_id: u64, member: &Member) {
        let (channel, id) = (self.dial.channel(member.addr.clone()), member.id);
        self.runtime.spawn(async move {
            let channel = channel.connect_lazy();
            let _ = RaftPeerClient::new(channel).removed(cluster_id, id).await;
        });
    }

    /// Queues `messages` for their recipients, dropping those whose queue is full.
    pub(super) fn send(&self, messages: &[Message]) {
        for message in messages {
            if let Some((_, peer)) = self.peers.get(&message.to) {
                let _ = peer.try_send(encode_message(message));
            }
        }
    }
}

async fn deliver(channel: ChannelBuilder, mut rx: mpsc::Receiver<Vec<u8>>) {
    let channel = channel.connect_timeout(Duration::from_secs(1)).connect_lazy();
    let client = RaftPeerClient::new(channel);
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut bytes = first.len();
        batch.push(first);
        while bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(message) => {
                    bytes += message.len();
                    batch.push(message);
                }
                Err(_) => break,
            }
        }
        // A peer that is down loses this batch; Raft retries on its own schedule.
        let _ = client.deliver(std::mem::take(&mut batch)).await;
    }
}
