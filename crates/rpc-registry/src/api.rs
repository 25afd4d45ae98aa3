//! The registry's data types, as they travel: one `#[message]` type per request and reply, so
//! every codec carries them and the CLI can call the registry with JSON.
//!
//! The model is etcd v3's: a key's value changes at a cluster-wide revision, one revision per
//! write transaction; each key keeps the revision that created it, the one that last changed it,
//! a version counting its changes since creation, and the lease it is bound to (0 for none).

/// Where a reply was produced: which cluster and member, at what revision and Raft term.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The cluster, fixed when it was first started.
    pub cluster_id: u64,
    /// The member that answered.
    pub member_id: u64,
    /// The store's revision when the reply was produced.
    pub revision: u64,
    /// The member's Raft term.
    pub raft_term: u64,
}

/// A key and its value with their revisions.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty in a keys-only range).
    pub value: Vec<u8>,
    /// The revision of the write that created the key.
    pub create_revision: u64,
    /// The revision of the write that last changed it.
    pub mod_revision: u64,
    /// Changes since creation: 1 after the creating write.
    pub version: u64,
    /// The lease the key is bound to; 0 for none.
    pub lease: u64,
}

/// Keys to read: `key` alone when `range_end` is empty, every key in `[key, range_end)`
/// otherwise; `range_end = [0]` means every key from `key` on. [`prefix_end`] gives the
/// `range_end` of a prefix.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// The first key.
    pub key: Vec<u8>,
    /// The end of the interval, exclusive (see the type's doc).
    pub range_end: Vec<u8>,
    /// At most this many keys; 0 for no limit.
    pub limit: u64,
    /// Read at this past revision; 0 for the latest.
    pub revision: u64,
    /// Leave values out.
    pub keys_only: bool,
    /// Only count the keys.
    pub count_only: bool,
    /// Read the answering member's state without confirming it is current (faster, may be stale).
    pub serializable: bool,
}

/// The keys a range found.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    /// Where and when it was read.
    pub header: Header,
    /// The keys, in key order (none for `count_only`).
    pub kvs: Vec<KeyValue>,
    /// Whether the limit left keys out.
    pub more: bool,
    /// How many keys are in the range, limit aside.
    pub count: u64,
}

/// Sets a key's value.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutRequest {
    /// The key.
    pub key: Vec<u8>,
    /// The new value.
    pub value: Vec<u8>,
    /// Binds the key to this lease (0 for none); the key is deleted when the lease ends.
    pub lease: u64,
    /// Return the key as it was before.
    pub prev_kv: bool,
}

/// What a put did.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    /// Where and when it was written.
    pub header: Header,
    /// The key before the put, if asked for and it existed.
    pub prev_kv: Option<KeyValue>,
}

/// Deletes a key or an interval of keys (see [`RangeRequest`] for `range_end`).
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeRequest {
    /// The first key.
    pub key: Vec<u8>,
    /// The end of the interval, exclusive.
    pub range_end: Vec<u8>,
    /// Return the deleted keys.
    pub prev_kv: bool,
}

/// What a delete did.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeResponse {
    /// Where and when it was written.
    pub header: Header,
    /// How many keys were deleted.
    pub deleted: u64,
    /// The deleted keys, if asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// What a [`Compare`] looks at.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's version (0 if it does not exist).
    Version(u64),
    /// The revision that created it (0 if it does not exist).
    CreateRevision(u64),
    /// The revision that last changed it (0 if it does not exist).
    ModRevision(u64),
    /// Its value (a missing key compares as no value: every comparison fails but `NotEqual`).
    Value(Vec<u8>),
    /// Its lease (0 if none or if it does not exist).
    Lease(u64),
}

/// How a [`Compare`] compares.
#[rpc_core::message]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompareResult {
    /// Equal to the target.
    #[default]
    Equal,
    /// Greater than the target.
    Greater,
    /// Less than the target.
    Less,
    /// Not equal to the target.
    NotEqual,
}

/// One condition of a transaction, on one key.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// The key.
    pub key: Vec<u8>,
    /// How to compare.
    pub result: CompareResult,
    /// What to compare, and with what.
    pub target: CompareTarget,
}

/// One operation of a transaction.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOp {
    /// A read, at the transaction's revision.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
}

/// The result of one [`RequestOp`].
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseOp {
    /// What a read found.
    Range(RangeResponse),
    /// What a put did.
    Put(PutResponse),
    /// What a delete did.
    DeleteRange(DeleteRangeResponse),
}

/// If every comparison holds, runs `success`, else `failure`; all at one revision. A key may be
/// written at most once per transaction.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRequest {
    /// The conditions, all of which must hold.
    pub compare: Vec<Compare>,
    /// Run when they hold.
    pub success: Vec<RequestOp>,
    /// Run when one does not.
    pub failure: Vec<RequestOp>,
}

/// What a transaction did.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResponse {
    /// Where and when it ran.
    pub header: Header,
    /// Whether the comparisons held (so `success` ran).
    pub succeeded: bool,
    /// One result per operation run.
    pub responses: Vec<ResponseOp>,
}

/// Whether an event is a put or a delete.
#[rpc_core::message]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or changed.
    #[default]
    Put,
    /// The key was deleted (its `mod_revision` is the deleting revision).
    Delete,
}

/// One change of one key.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change (for a delete: the key, its deleting revision, no value).
    pub kv: KeyValue,
    /// The key before the change, if the watch asked for it and it existed.
    pub prev_kv: Option<KeyValue>,
}

/// Starts a watch on a key or an interval of keys.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchCreate {
    /// The first key.
    pub key: Vec<u8>,
    /// The end of the interval, exclusive (see [`RangeRequest`]).
    pub range_end: Vec<u8>,
    /// The first revision to report, inclusive; 0 for changes after the current revision.
    pub start_revision: u64,
    /// Report each key as it was before the change too.
    pub prev_kv: bool,
    /// Leave out puts.
    pub no_put: bool,
    /// Leave out deletes.
    pub no_delete: bool,
    /// Send a progress notification when no event came for a while, so the watcher knows how
    /// far it has seen.
    pub progress_notify: bool,
    /// The id the caller gives this watch, unique on its stream; replies carry it.
    pub watch_id: u64,
}

/// What a watcher sends on its stream.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchRequest {
    /// Start a watch.
    Create(WatchCreate),
    /// Stop the watch with this id.
    Cancel(u64),
    /// Ask every watch of the stream for a progress notification now.
    Progress(bool),
}

/// What a watch stream sends: events, or news about one watch.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchResponse {
    /// The revision of the store when sent: a watcher has seen every change up to it once
    /// this response is a progress notification (no events) or its events end there.
    pub header: Header,
    /// The watch this concerns.
    pub watch_id: u64,
    /// The watch was started (sent once, before its events).
    pub created: bool,
    /// The watch ended; `cancel_reason` says why.
    pub canceled: bool,
    /// Set when the start revision was compacted away: the oldest revision still available is
    /// this plus one. The watch is canceled; resume from a later revision after reading afresh.
    pub compact_revision: u64,
    /// Why the watch ended, for a person.
    pub cancel_reason: String,
    /// Changes, in revision order; all changes of one revision are in one response.
    pub events: Vec<Event>,
}

/// A granted lease.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseGrantResponse {
    /// Where and when it was granted.
    pub header: Header,
    /// The lease.
    pub id: u64,
    /// Its time to live in seconds (raised to the registry's minimum if asked for less).
    pub ttl: u64,
}

/// A lease's remaining time, in answer to a keep-alive or a query.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseStatus {
    /// Where and when it was answered.
    pub header: Header,
    /// The lease.
    pub id: u64,
    /// Milliseconds it has left; 0 if it no longer exists.
    pub remaining_ms: u64,
    /// The time to live it was granted, in seconds.
    pub granted_ttl: u64,
    /// Keys bound to it, when asked for.
    pub keys: Vec<Vec<u8>>,
}

/// A member of the cluster.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    /// Its Raft id.
    pub id: u64,
    /// Its name (`--name`).
    pub name: String,
    /// The address it serves on, for clients and peers.
    pub addr: String,
    /// A learner replicates but does not vote; the leader promotes it once it has caught up.
    pub learner: bool,
}

/// A member's view of the cluster.
#[rpc_core::message]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusResponse {
    /// The answering member, its revision and term.
    pub header: Header,
    /// The members of the cluster.
    pub members: Vec<Member>,
    /// The leader as this member knows it; 0 if none.
    pub leader: u64,
    /// The last index in its Raft log.
    pub raft_index: u64,
    /// Its commit index.
    pub commit_index: u64,
    /// Its applied index.
    pub applied_index: u64,
    /// The revision compacted up to.
    pub compact_revision: u64,
    /// Bytes of keys and values held, all revisions counted.
    pub db_size: u64,
    /// Leases alive.
    pub leases: u64,
    /// Watches open on this member.
    pub watchers: u64,
}

/// The `range_end` that selects every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xFF (or the prefix was empty): every key from `prefix` on.
    vec![0]
}

/// Whether `key` is selected by `key_start` and `range_end` (see [`RangeRequest`]).
pub fn in_range(key: &[u8], key_start: &[u8], range_end: &[u8]) -> bool {
    match range_end {
        [] => key == key_start,
        [0] => key >= key_start,
        end => key >= key_start && key < end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"svc/"), b"svc0");
        assert_eq!(prefix_end(b"a\xFF"), b"b");
        assert_eq!(prefix_end(b"\xFF\xFF"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
        assert!(in_range(b"svc/x", b"svc/", &prefix_end(b"svc/")));
        assert!(!in_range(b"svc0", b"svc/", &prefix_end(b"svc/")));
        assert!(in_range(b"zzz", b"a", &[0]));
        assert!(in_range(b"k", b"k", b""));
        assert!(!in_range(b"k2", b"k", b""));
    }
}
