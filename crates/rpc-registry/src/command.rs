//! What the registry replicates through Raft: one [`Proposal`] per log entry.
//!
//! Everything a command does follows from the command and the store it is applied to, so every
//! member computes the same result. What depends on a member (its clock, a random lease id, the
//! minimum TTL) is decided by the member that proposes, before proposing.

use crate::api::{DeleteRangeRequest, PutRequest, TxnRequest};

/// One log entry: a command and the id its proposer waits on.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// The member that proposed it: it answers its caller when it applies the entry.
    pub member: u64,
    /// The proposer's sequence number, unique while it runs.
    pub seq: u64,
    /// What to do.
    pub command: Command,
}

/// A state change of the registry.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Sets a key.
    Put(PutRequest),
    /// Deletes keys.
    DeleteRange(DeleteRangeRequest),
    /// A transaction.
    Txn(TxnRequest),
    /// Forgets the history before this revision.
    Compact(u64),
    /// Creates a lease.
    LeaseGrant(LeaseGrant),
    /// Ends a lease and deletes its keys, in one revision.
    LeaseRevoke(u64),
    /// Records leases' remaining time, so a new leader expires them on time.
    LeaseCheckpoint(Checkpoints),
}

/// A new lease.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Its id, chosen by the proposer, non-zero.
    pub id: u64,
    /// Its time to live in seconds, already raised to the registry's minimum.
    pub ttl: u64,
}

/// Leases' remaining times, recorded together.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoints {
    /// One per lease.
    pub leases: Vec<LeaseCheckpoint>,
}

/// A lease's remaining time when the leader recorded it.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseCheckpoint {
    /// The lease.
    pub id: u64,
    /// Milliseconds it had left.
    pub remaining_ms: u64,
}
