//! The registry's RPC services: [`RegistryApi`] for clients, [`RaftPeer`] between members, and the
//! typed error every registry call can fail with.

use crate::{
    api::{
        DeleteRangeRequest, DeleteRangeResponse, LeaseGrantResponse, LeaseStatus, Member, PutRequest, PutResponse,
        RangeRequest, RangeResponse, StatusResponse, TxnRequest, TxnResponse, WatchRequest, WatchResponse,
    },
    store::StoreError,
};
use rpc_core::RpcStream;

use std::fmt;

/// What kind of failure a [`RegistryError`] is.
#[rpc_core::message]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorCode {
    /// The member is not the leader: `leader` names the one to ask, if known. Nothing was done.
    #[default]
    NotLeader,
    /// No leader is known right now (an election is under way). Nothing was done; retry.
    NoLeader,
    /// The revision asked for was compacted; `compact_revision` says up to where.
    Compacted,
    /// The revision asked for is newer than the store's.
    FutureRevision,
    /// No lease with that id.
    LeaseNotFound,
    /// The request is malformed or over a limit (size, operations).
    InvalidRequest,
    /// The store is full; compact or delete keys.
    QuotaExceeded,
    /// The member did not learn the outcome in time (the write may still be applied).
    Timeout,
    /// The member's storage failed.
    Internal,
    /// The caller may not do this to these keys (see [`crate::auth`]).
    PermissionDenied,
}

/// Why a registry call failed.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryError {
    /// The kind of failure.
    pub code: ErrorCode,
    /// What happened and what to do next.
    pub message: String,
    /// For `NotLeader`: the leader's address, when known.
    pub leader: String,
    /// For `Compacted`: the revision compacted up to.
    pub compact_revision: u64,
}

impl RegistryError {
    /// An error of kind `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RegistryError {
        RegistryError { code, message: message.into(), leader: String::new(), compact_revision: 0 }
    }

    /// Whether nothing was done, so the call can go to another member.
    pub fn not_started(&self) -> bool {
        matches!(self.code, ErrorCode::NotLeader | ErrorCode::NoLeader)
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for RegistryError {}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> RegistryError {
        let code = match &e {
            StoreError::Compacted { .. } => ErrorCode::Compacted,
            StoreError::FutureRevision { .. } => ErrorCode::FutureRevision,
            StoreError::LeaseNotFound(_) => ErrorCode::LeaseNotFound,
            StoreError::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
            StoreError::Corrupt(_) => ErrorCode::Internal,
            _ => ErrorCode::InvalidRequest,
        };
        let mut error = RegistryError::new(code, e.to_string());
        if let StoreError::Compacted { compact_revision, .. } = e {
            error.compact_revision = compact_revision;
        }
        error
    }
}

/// The registry's client API: etcd v3's KV, Watch, Lease and Maintenance in one service.
#[rpc_core::service]
pub trait RegistryApi {
    /// Reads a key or an interval of keys; linearizable unless `serializable`.
    #[idempotent]
    async fn range(&self, request: RangeRequest) -> Result<RangeResponse, RegistryError>;
    /// Sets a key.
    async fn put(&self, request: PutRequest) -> Result<PutResponse, RegistryError>;
    /// Deletes a key or an interval of keys.
    async fn delete_range(&self, request: DeleteRangeRequest) -> Result<DeleteRangeResponse, RegistryError>;
    /// Runs a transaction.
    async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, RegistryError>;
    /// Forgets the history before `revision`.
    async fn compact(&self, revision: u64) -> Result<u64, RegistryError>;
    /// Watches keys: send `Create` and `Cancel` requests, receive events and news of watches.
    async fn watch(&self, requests: Streaming<WatchRequest>) -> RpcStream<WatchResponse>;
    /// Grants a lease of `ttl` seconds; `id` 0 lets the registry choose it.
    async fn lease_grant(&self, ttl: u64, id: u64) -> Result<LeaseGrantResponse, RegistryError>;
    /// Ends a lease and deletes its keys.
    async fn lease_revoke(&self, id: u64) -> Result<u64, RegistryError>;
    /// Keeps leases alive: each id sent renews that lease and is answered with its status.
    async fn lease_keep_alive(&self, ids: Streaming<u64>) -> RpcStream<Result<LeaseStatus, RegistryError>>;
    /// A lease's remaining time and, if `keys`, its keys.
    #[idempotent]
    async fn lease_time_to_live(&self, id: u64, keys: bool) -> Result<LeaseStatus, RegistryError>;
    /// Every lease alive.
    #[idempotent]
    async fn lease_list(&self) -> Result<Vec<u64>, RegistryError>;
    /// Hands leadership to member `to` (the leader answers once the transfer has started; the
    /// new leader takes over within an election timeout).
    async fn move_leader(&self, to: u64) -> Result<(), RegistryError>;
    /// Adds a member as a learner (the leader promotes it to voter once it has caught up) and
    /// answers the members. Start the new member with `join` after this, or before: it waits.
    async fn member_add(&self, name: String, addr: String) -> Result<Vec<Member>, RegistryError>;
    /// Removes member `id` and answers the members left. A removed member stops itself.
    async fn member_remove(&self, id: u64) -> Result<Vec<Member>, RegistryError>;
    /// The answering member's view of the cluster.
    #[idempotent]
    async fn status(&self) -> StatusResponse;
}

/// What members send each other: Raft messages, encoded by `rpc_raft::codec`.
#[rpc_core::service]
pub trait RaftPeer {
    /// Delivers a batch of Raft messages. Raft tolerates loss and reordering, so nothing waits
    /// for an answer.
    #[oneway]
    async fn deliver(&self, messages: Vec<Vec<u8>>);
    /// Tells member `id` of cluster `cluster_id` that it was removed. The leader sends it: a
    /// removed follower is cut off before the entry removing it reaches it.
    #[oneway]
    async fn removed(&self, cluster_id: u64, id: u64);
}
