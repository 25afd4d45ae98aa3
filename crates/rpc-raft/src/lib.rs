//! Raft consensus as a sans-IO state machine, with durable storage, a deterministic
//! simulator and a linearizability checker.
//!
//! The core ([`RawNode`]) never touches a socket, a clock or a disk. The application
//! feeds it ticks ([`RawNode::tick`], e.g. every 10 ms), peer messages
//! ([`RawNode::step`]) and requests ([`RawNode::propose`],
//! [`RawNode::propose_conf_change`], [`RawNode::read_index`],
//! [`RawNode::transfer_leader`]); then, while [`RawNode::has_ready`], it takes a
//! [`Ready`] and, in this order: persists it ([`RawNode::persist_ready`], one fsync),
//! sends its messages (only now: a vote or an acknowledgement must be durable before
//! anyone hears of it; a leader may send first, see [`Ready::send_before_persist`]),
//! applies its committed entries (restoring its snapshot first, if any), serves its
//! read states once applied, and calls [`RawNode::advance`].
//!
//! What is implemented: pre-vote, check-quorum and leader leases; randomized
//! elections; log replication with fast conflict back-off, batching, pipelining and
//! etcd-style probe/replicate/snapshot flow control; commitment only by counting
//! replicas of current-term entries (a new leader appends a no-op); ReadIndex reads
//! (forwarded by followers) and optional lease reads; chunked snapshot transfer;
//! single-server membership changes with learners; leadership transfer.
//!
//! Around the core: [`storage`] ([`MemStorage`], and [`storage::DurableStorage`] with a
//! checksummed WAL over a pluggable, fault-injectable [`storage::FileSystem`]),
//! [`transport`], the binary [`codec`] for messages, the [`kv`] state machine, the
//! [`linearizability`] checker, the [`sim`]ulator and [`mod@bench`] support.
//!
//! ```
//! use rpc_raft::transport::{InMemoryNetwork, Transport};
//! use rpc_raft::{Config, ConfState, MemStorage, RawNode, Role};
//!
//! let ids = [1, 2, 3];
//! let net = InMemoryNetwork::new(ids);
//! let mut nodes: Vec<RawNode<MemStorage>> = ids
//!     .iter()
//!     .map(|&id| {
//!         let storage = MemStorage::new_with_conf(ConfState::with_voters(ids));
//!         RawNode::new(Config::new(id), storage).unwrap()
//!     })
//!     .collect();
//! let mut applied = Vec::new();
//! // One round of the application loop for every node, then deliver the messages.
//! let mut round = |nodes: &mut Vec<RawNode<MemStorage>>, applied: &mut Vec<Vec<u8>>| {
//!     for node in nodes.iter_mut() {
//!         let mut transport = net.transport(node.id());
//!         while node.has_ready() {
//!             let rd = node.ready();
//!             node.persist_ready(&rd).unwrap();
//!             for m in rd.messages {
//!                 transport.send(m).unwrap();
//!             }
//!             if node.id() == 1 {
//!                 applied.extend(rd.committed_entries.into_iter().map(|e| e.data.to_vec()));
//!             }
//!             node.advance();
//!         }
//!     }
//!     for node in nodes.iter_mut() {
//!         for m in net.drain(node.id()) {
//!             node.step(m);
//!         }
//!     }
//! };
//! nodes[0].campaign();
//! for _ in 0..5 {
//!     round(&mut nodes, &mut applied);
//! }
//! assert_eq!(nodes[0].role(), Role::Leader);
//! nodes[0].propose(b"hello".to_vec()).unwrap();
//! for _ in 0..5 {
//!     round(&mut nodes, &mut applied);
//! }
//! assert_eq!(applied.last().unwrap(), b"hello");
//! ```

#![forbid(unsafe_code)]

pub mod bench;
pub mod codec;
pub mod config;
mod crc32;
pub mod error;
pub mod kv;
pub mod linearizability;
mod log;
pub mod message;
pub mod node;
mod progress;
pub mod raft;
mod read_only;
pub mod rng;
pub mod sim;
pub mod storage;
pub mod transport;

pub use config::{Config, ConfigError, ReadOnlyOption};
pub use error::{Error, ProposeError};
pub use message::{
    ConfChange, ConfState, Entry, EntryKind, HardState, Message, MessageBody, NodeId, ReadState, Snapshot, SnapshotMeta,
};
pub use node::{RawNode, Ready, SoftState, Status};
pub use raft::Role;
pub use storage::{MemStorage, Storage, StorageError};
