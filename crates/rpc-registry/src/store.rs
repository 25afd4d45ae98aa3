//! The registry's state machine: an MVCC key-value store with leases, as etcd v3 keeps it.
//!
//! [`Store`] owns every key's history of versions, the leases, and the revision counters, and
//! applies [`Command`]s to them. It does no I/O and has no clock and no randomness: lease expiry
//! is the member's business (the store only records checkpoints), so every member applying the
//! same log ends with byte-identical state, replies and snapshots. Watches are served from
//! [`Store::events_since`], which rebuilds past changes from the histories.

use std::collections::btree_map::{self, Entry};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Bound;

use bytes::BytesMut;
use rpc_core::Codec;

use crate::api::{
    in_range, Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event, EventKind,
    KeyValue, LeaseGrantResponse, Member, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp,
    TxnRequest, TxnResponse,
};
use crate::command::{Checkpoints, Command, LeaseGrant};

/// Bounds on what commands may do. Part of the cluster's configuration: members with different
/// limits would diverge.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest [`Store::db_size`] a command with puts may leave behind.
    pub quota_bytes: u64,
    /// Most compares and operations, all branches counted, in one transaction.
    pub max_txn_ops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { quota_bytes: 2 << 30, max_txn_ops: 128 }
    }
}

/// Why a command or a read failed. A failed command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The revision asked for is ahead of the store.
    FutureRevision {
        /// The revision asked for.
        requested: u64,
        /// The store's revision.
        current: u64,
    },
    /// The revision asked for was compacted away.
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// History is kept only after this revision.
        compact_revision: u64,
    },
    /// No lease has this id (it expired, was revoked, or never existed).
    LeaseNotFound(u64),
    /// A lease with this id exists already.
    LeaseExists(u64),
    /// Lease id 0 means "no lease" and cannot be granted.
    InvalidLeaseId,
    /// A transaction writes this key (shown lossily as UTF-8) more than once.
    DuplicateKey(String),
    /// A transaction has more operations than [`Limits::max_txn_ops`].
    TooManyOps {
        /// Compares and operations of both branches.
        ops: usize,
        /// The limit.
        max: usize,
    },
    /// The command's puts would take [`Store::db_size`] over [`Limits::quota_bytes`].
    QuotaExceeded {
        /// The size the store would have reached.
        size: u64,
        /// The quota.
        quota: u64,
    },
    /// A snapshot could not be restored.
    Corrupt(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::FutureRevision { requested, current } => write!(
                f,
                "revision {requested} is ahead of the store's revision {current}; read at revision 0 (the latest) or at most {current}"
            ),
            StoreError::Compacted { requested, compact_revision } => write!(
                f,
                "revision {requested} was compacted (history is kept after revision {compact_revision}); read the latest state, then continue from there"
            ),
            StoreError::LeaseNotFound(id) => {
                write!(f, "lease {id} does not exist (expired or revoked); grant a new lease and use its id")
            }
            StoreError::LeaseExists(id) => write!(f, "lease {id} already exists; grant with another id"),
            StoreError::InvalidLeaseId => write!(f, "lease id 0 means no lease; grant with a non-zero id"),
            StoreError::DuplicateKey(key) => write!(
                f,
                "key {key:?} is written more than once in one transaction; write each key once (a put inside a deleted range counts)"
            ),
            StoreError::TooManyOps { ops, max } => write!(
                f,
                "transaction has {ops} compares and operations, more than the limit of {max}; split it or raise max_txn_ops"
            ),
            StoreError::QuotaExceeded { size, quota } => write!(
                f,
                "the store would grow to {size} bytes, over its quota of {quota} bytes; compact and defragment, or delete keys, or raise the quota"
            ),
            StoreError::Corrupt(why) => {
                write!(f, "snapshot is corrupt: {why}; fetch a fresh snapshot from another member")
            }
        }
    }
}

impl std::error::Error for StoreError {}

/// What applying one command did.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The reply for the proposer, or why the command was refused (then nothing changed).
    pub output: Result<Output, StoreError>,
    /// The changes, all at the revision the command made, in order; empty if it made none.
    pub events: Vec<Event>,
}

/// The reply to a command that succeeded.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// A put's reply.
    Put(PutResponse),
    /// A delete's reply.
    DeleteRange(DeleteRangeResponse),
    /// A transaction's reply.
    Txn(TxnResponse),
    /// History was compacted.
    Compacted,
    /// A lease was granted.
    LeaseGranted(LeaseGrantResponse),
    /// A lease and its keys are gone.
    LeaseRevoked,
    /// Leases' remaining times were recorded.
    Checkpointed,
}

/// A lease and the keys bound to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Its id, never 0.
    pub id: u64,
    /// The time to live it was granted, in seconds.
    pub ttl: u64,
    /// Milliseconds left at the last checkpoint (`ttl * 1000` until the first).
    pub remaining_ms: u64,
    /// The keys bound to it, which its end deletes.
    pub keys: BTreeSet<Vec<u8>>,
}

/// One version of a key. A key's history is in `(revision, position)` order.
#[rpc_core::message]
#[derive(Clone, Debug)]
struct Version {
    /// The revision that wrote it.
    revision: u64,
    /// Its place among the changes of that revision, which orders their events.
    position: u64,
    /// The value; `None` marks a deletion (a tombstone).
    value: Option<Vec<u8>>,
    /// The revision that created the key; 0 in a tombstone.
    create_revision: u64,
    /// Changes since creation; 0 in a tombstone.
    version: u64,
    /// The lease the key is bound to; 0 for none, and in a tombstone.
    lease: u64,
}

impl Version {
    fn is_live(&self) -> bool {
        self.value.is_some()
    }

    /// What the version counts towards [`Store::db_size`].
    fn size(&self, key: &[u8]) -> u64 {
        (key.len() + self.value.as_ref().map_or(0, Vec::len)) as u64
    }

    fn to_kv(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: self.value.clone().unwrap_or_default(),
            create_revision: self.create_revision,
            mod_revision: self.revision,
            version: self.version,
            lease: self.lease,
        }
    }

    /// The event that wrote this version, after `prev`.
    fn to_event(&self, key: &[u8], prev: Option<&Version>) -> Event {
        Event {
            kind: if self.is_live() { EventKind::Put } else { EventKind::Delete },
            kv: self.to_kv(key),
            prev_kv: prev.filter(|p| p.is_live()).map(|p| p.to_kv(key)),
        }
    }
}

/// The version of a key visible at revision `at`, if the key existed then.
fn visible(history: &[Version], at: u64) -> Option<&Version> {
    let seen = history.partition_point(|v| v.revision <= at);
    history[..seen].last().filter(|v| v.is_live())
}

/// The current version of a key, if it exists.
fn live(history: &[Version]) -> Option<&Version> {
    history.last().filter(|v| v.is_live())
}

/// A snapshot as it is encoded. Lease bindings are not in it: the keys' versions carry them.
#[rpc_core::message]
#[derive(Debug, Default)]
struct Image {
    revision: u64,
    compact_revision: u64,
    keys: Vec<KeyImage>,
    leases: Vec<LeaseImage>,
    cluster_id: u64,
    members: Vec<Member>,
}

#[rpc_core::message]
#[derive(Debug)]
struct KeyImage {
    key: Vec<u8>,
    versions: Vec<Version>,
}

#[rpc_core::message]
#[derive(Debug)]
struct LeaseImage {
    id: u64,
    ttl: u64,
    remaining_ms: u64,
}

/// The revision a command is writing, and its changes so far: one event per write, so the
/// number of events is the next write's position.
struct Batch {
    revision: u64,
    events: Vec<Event>,
}

impl Batch {
    fn position(&self) -> u64 {
        self.events.len() as u64
    }
}

/// The registry's MVCC store: every key's versions since the last compaction, and the leases.
#[derive(Clone, Debug)]
pub struct Store {
    limits: Limits,
    revision: u64,
    compact_revision: u64,
    db_size: u64,
    keys: BTreeMap<Vec<u8>, Vec<Version>>,
    leases: BTreeMap<u64, LeaseInfo>,
    cluster_id: u64,
    members: Vec<Member>,
}

impl Store {
    /// An empty store at revision 0.
    pub fn new(limits: Limits) -> Store {
        Store {
            limits,
            revision: 0,
            compact_revision: 0,
            db_size: 0,
            keys: BTreeMap::new(),
            leases: BTreeMap::new(),
            cluster_id: 0,
            members: Vec::new(),
        }
    }

    /// The cluster this store belongs to; 0 for a member that has not yet been told.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The cluster's members, sorted by name, as of the last membership change applied.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Records the cluster's identity and members (they travel in snapshots with the data).
    pub fn set_cluster(&mut self, cluster_id: u64, mut members: Vec<Member>) {
        members.sort_by(|a, b| a.name.cmp(&b.name));
        self.cluster_id = cluster_id;
        self.members = members;
    }

    /// The revision of the last write that changed something; 0 for an empty store.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The revision history was last compacted at; 0 until then.
    pub fn compact_revision(&self) -> u64 {
        self.compact_revision
    }

    /// Bytes of keys and values over all retained versions (a tombstone counts its key).
    pub fn db_size(&self) -> u64 {
        self.db_size
    }

    /// Reads keys at the latest or a past revision. The header's revision is the store's, also
    /// for a past read, as etcd answers.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, StoreError> {
        self.check_read(req.revision)?;
        let mut response = self.read(req);
        response.header.revision = self.revision;
        Ok(response)
    }

    /// Applies one committed command. Never panics: the command comes from the log as it is.
    pub fn apply(&mut self, command: &Command) -> Applied {
        let mut batch = Batch { revision: self.revision.saturating_add(1), events: Vec::new() };
        // Every command validates before it changes anything, so an error leaves no trace.
        let mut output = match command {
            Command::Put(req) => self.check_put(req).map(|()| Output::Put(self.put(&mut batch, req))),
            Command::DeleteRange(req) => Ok(Output::DeleteRange(self.delete_range(&mut batch, req))),
            Command::Txn(req) => self.txn(&mut batch, req).map(Output::Txn),
            Command::Compact(revision) => self.compact(*revision).map(|()| Output::Compacted),
            Command::LeaseGrant(grant) => self.grant(grant).map(Output::LeaseGranted),
            Command::LeaseRevoke(id) => self.revoke(&mut batch, *id).map(|()| Output::LeaseRevoked),
            Command::LeaseCheckpoint(checkpoints) => {
                self.checkpoint(checkpoints);
                Ok(Output::Checkpointed)
            }
        };
        if !batch.events.is_empty() {
            self.revision = batch.revision;
        }
        if let Ok(output) = &mut output {
            output.stamp(self.revision);
        }
        Applied { output, events: batch.events }
    }

    /// Events on keys selected by (`key`, `range_end`) with revision >= `start`, in (revision,
    /// order within the revision) order, each with `prev_kv` filled when the key existed before.
    /// Empty for `start` 0; [`StoreError::Compacted`] when `start <= compact_revision`.
    pub fn events_since(&self, key: &[u8], range_end: &[u8], start: u64) -> Result<Vec<Event>, StoreError> {
        if start == 0 {
            return Ok(Vec::new());
        }
        if start <= self.compact_revision {
            return Err(StoreError::Compacted { requested: start, compact_revision: self.compact_revision });
        }
        let mut events = Vec::new();
        for (key, history) in self.select(key, range_end) {
            // Compaction keeps every version after the compact revision and the one before the
            // first of them (unless a tombstone, which gives no `prev_kv` anyway).
            for i in history.partition_point(|v| v.revision < start)..history.len() {
                let prev = i.checked_sub(1).and_then(|i| history.get(i));
                let version = &history[i];
                events.push(((version.revision, version.position), version.to_event(key, prev)));
            }
        }
        events.sort_by_key(|(at, _)| *at);
        Ok(events.into_iter().map(|(_, event)| event).collect())
    }

    /// The lease with this id, if it exists.
    pub fn lease(&self, id: u64) -> Option<&LeaseInfo> {
        self.leases.get(&id)
    }

    /// Every lease, in id order.
    pub fn leases(&self) -> impl Iterator<Item = &LeaseInfo> {
        self.leases.values()
    }

    /// The whole state, encoded deterministically: equal stores give equal bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        let head = Image {
            revision: self.revision,
            compact_revision: self.compact_revision,
            keys: Vec::new(),
            leases: self
                .leases
                .values()
                .map(|l| LeaseImage { id: l.id, ttl: l.ttl, remaining_ms: l.remaining_ms })
                .collect(),
            cluster_id: self.cluster_id,
            members: self.members.clone(),
        };
        // Room for the data and its framing, so the buffer is not regrown (and copied) as it fills.
        let mut bytes = BytesMut::with_capacity(self.db_size as usize + self.db_size as usize / 4 + 1024);
        // Protobuf encoding of a schema type only appends to the buffer; it has no error path.
        Codec::Protobuf.encode(&head, &mut bytes).expect("protobuf encoding cannot fail");
        // Protobuf concatenates repeated fields, so each key goes in as an image of that key
        // alone: the store is never copied whole, only one key's history at a time.
        for (key, versions) in &self.keys {
            let one =
                Image { keys: vec![KeyImage { key: key.clone(), versions: versions.clone() }], ..Image::default() };
            Codec::Protobuf.encode(&one, &mut bytes).expect("protobuf encoding cannot fail");
        }
        Vec::from(bytes)
    }

    /// Rebuilds a store from [`Store::snapshot`]'s bytes, checking what the store relies on
    /// (ordered histories, revisions in bounds, every bound lease present).
    pub fn restore(bytes: &[u8], limits: Limits) -> Result<Store, StoreError> {
        let image: Image = Codec::Protobuf.decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if image.compact_revision > image.revision {
            return Err(StoreError::Corrupt(format!(
                "compact revision {} is ahead of revision {}",
                image.compact_revision, image.revision
            )));
        }
        let mut store = Store::new(limits);
        store.revision = image.revision;
        store.compact_revision = image.compact_revision;
        store.set_cluster(image.cluster_id, image.members);
        for LeaseImage { id, ttl, remaining_ms } in image.leases {
            let lease = LeaseInfo { id, ttl, remaining_ms, keys: BTreeSet::new() };
            if id == 0 || store.leases.insert(id, lease).is_some() {
                return Err(StoreError::Corrupt(format!("lease id {id} is zero or repeated")));
            }
        }
        // Events are ordered by (revision, position): no two versions may share one.
        let mut positions = BTreeSet::new();
        for KeyImage { key, versions } in image.keys {
            let Some(last) = versions.last() else { return Err(corrupt_key(&key, "has no versions")) };
            if versions.windows(2).any(|w| (w[0].revision, w[0].position) >= (w[1].revision, w[1].position)) {
                return Err(corrupt_key(&key, "has versions out of order"));
            }
            for v in &versions {
                if v.revision == 0 || v.revision > image.revision || !positions.insert((v.revision, v.position)) {
                    return Err(corrupt_key(&key, "has a version at a bad or repeated revision"));
                }
            }
            if last.is_live() && last.lease != 0 {
                let Some(lease) = store.leases.get_mut(&last.lease) else {
                    return Err(corrupt_key(&key, "is bound to a missing lease"));
                };
                lease.keys.insert(key.clone());
            }
            store.db_size += versions.iter().map(|v| v.size(&key)).sum::<u64>();
            match store.keys.entry(key) {
                Entry::Occupied(entry) => return Err(corrupt_key(entry.key(), "is repeated")),
                Entry::Vacant(entry) => entry.insert(versions),
            };
        }
        Ok(store)
    }

    /// The histories of the keys `key` and `range_end` select (see [`RangeRequest`]).
    fn select(&self, key: &[u8], range_end: &[u8]) -> btree_map::Range<'_, Vec<u8>, Vec<Version>> {
        let end = match range_end {
            [] => Bound::Included(key),
            [0] => Bound::Unbounded,
            // An inverted interval selects nothing, and `BTreeMap::range` would panic on it.
            end if end <= key => Bound::Excluded(key),
            end => Bound::Excluded(end),
        };
        self.keys.range::<[u8], _>((Bound::Included(key), end))
    }

    fn check_read(&self, revision: u64) -> Result<(), StoreError> {
        if revision > self.revision {
            return Err(StoreError::FutureRevision { requested: revision, current: self.revision });
        }
        if revision != 0 && revision <= self.compact_revision {
            return Err(StoreError::Compacted { requested: revision, compact_revision: self.compact_revision });
        }
        Ok(())
    }

    /// Reads `req`, whose revision the caller has checked. Revision 0 reads the newest versions,
    /// so a transaction's reads see its earlier writes, which are already in the histories.
    fn read(&self, req: &RangeRequest) -> RangeResponse {
        let at = if req.revision == 0 { u64::MAX } else { req.revision };
        let mut response = RangeResponse::default();
        for (key, history) in self.select(&req.key, &req.range_end) {
            let Some(version) = visible(history, at) else { continue };
            response.count += 1;
            if req.count_only {
                continue;
            }
            if req.limit != 0 && response.kvs.len() as u64 >= req.limit {
                response.more = true;
                continue;
            }
            let mut kv = version.to_kv(key);
            if req.keys_only {
                kv.value = Vec::new();
            }
            response.kvs.push(kv);
        }
        response
    }

    fn check_lease(&self, id: u64) -> Result<(), StoreError> {
        if id != 0 && !self.leases.contains_key(&id) {
            return Err(StoreError::LeaseNotFound(id));
        }
        Ok(())
    }

    /// Refuses puts adding `added` bytes when that takes the store over its quota. Deletes never
    /// count: they are how an operator gets back under it.
    fn check_quota(&self, added: u64) -> Result<(), StoreError> {
        let size = self.db_size.saturating_add(added);
        if size > self.limits.quota_bytes {
            return Err(StoreError::QuotaExceeded { size, quota: self.limits.quota_bytes });
        }
        Ok(())
    }

    fn check_put(&self, req: &PutRequest) -> Result<(), StoreError> {
        self.check_lease(req.lease)?;
        self.check_quota(put_size(req))
    }

    fn put(&mut self, batch: &mut Batch, req: &PutRequest) -> PutResponse {
        let history = self.keys.entry(req.key.clone()).or_default();
        let prev = live(history);
        let version = Version {
            revision: batch.revision,
            position: batch.position(),
            value: Some(req.value.clone()),
            create_revision: prev.map_or(batch.revision, |p| p.create_revision),
            version: prev.map_or(1, |p| p.version.saturating_add(1)),
            lease: req.lease,
        };
        let event = version.to_event(&req.key, prev);
        history.push(version);
        self.db_size += put_size(req);
        self.rebind(&req.key, event.prev_kv.as_ref().map_or(0, |p| p.lease), req.lease);
        let prev_kv = if req.prev_kv { event.prev_kv.clone() } else { None };
        batch.events.push(event);
        PutResponse { prev_kv, ..PutResponse::default() }
    }

    fn delete_range(&mut self, batch: &mut Batch, req: &DeleteRangeRequest) -> DeleteRangeResponse {
        let keys: Vec<Vec<u8>> = self
            .select(&req.key, &req.range_end)
            .filter(|(_, history)| live(history).is_some())
            .map(|(key, _)| key.clone())
            .collect();
        let mut response = DeleteRangeResponse::default();
        for key in keys {
            if let Some(prev) = self.delete_key(batch, &key) {
                response.deleted += 1;
                if req.prev_kv {
                    response.prev_kvs.push(prev);
                }
            }
        }
        response
    }

    /// Deletes `key` if it exists, returning it as it was.
    fn delete_key(&mut self, batch: &mut Batch, key: &[u8]) -> Option<KeyValue> {
        let history = self.keys.get_mut(key)?;
        let prev = live(history)?.to_kv(key);
        let tombstone = Version {
            revision: batch.revision,
            position: batch.position(),
            value: None,
            create_revision: 0,
            version: 0,
            lease: 0,
        };
        let event = Event { kind: EventKind::Delete, kv: tombstone.to_kv(key), prev_kv: Some(prev.clone()) };
        history.push(tombstone);
        self.db_size += key.len() as u64;
        self.rebind(key, prev.lease, 0);
        batch.events.push(event);
        Some(prev)
    }

    /// Moves `key` from lease `from` to lease `to` (0: none).
    fn rebind(&mut self, key: &[u8], from: u64, to: u64) {
        if from == to {
            return;
        }
        if let Some(lease) = self.leases.get_mut(&from) {
            lease.keys.remove(key);
        }
        if let Some(lease) = self.leases.get_mut(&to) {
            lease.keys.insert(key.to_vec());
        }
    }

    fn txn(&mut self, batch: &mut Batch, req: &TxnRequest) -> Result<TxnResponse, StoreError> {
        let ops = req.compare.len() + req.success.len() + req.failure.len();
        if ops > self.limits.max_txn_ops {
            return Err(StoreError::TooManyOps { ops, max: self.limits.max_txn_ops });
        }
        let succeeded = req.compare.iter().all(|c| self.holds(c));
        let branch = if succeeded { &req.success } else { &req.failure };
        self.check_ops(branch)?;
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            responses.push(match op {
                RequestOp::Range(req) => ResponseOp::Range(self.read(req)),
                RequestOp::Put(req) => ResponseOp::Put(self.put(batch, req)),
                RequestOp::DeleteRange(req) => ResponseOp::DeleteRange(self.delete_range(batch, req)),
            });
        }
        Ok(TxnResponse { succeeded, responses, ..TxnResponse::default() })
    }

    /// Whether a compare holds on the current state.
    fn holds(&self, compare: &Compare) -> bool {
        let current = self.keys.get(&compare.key).and_then(|h| live(h));
        let number = |field: fn(&Version) -> u64| current.map_or(0, field);
        let ordering = match &compare.target {
            CompareTarget::Version(target) => number(|v| v.version).cmp(target),
            CompareTarget::CreateRevision(target) => number(|v| v.create_revision).cmp(target),
            CompareTarget::ModRevision(target) => number(|v| v.revision).cmp(target),
            CompareTarget::Lease(target) => number(|v| v.lease).cmp(target),
            CompareTarget::Value(target) => match current.and_then(|v| v.value.as_ref()) {
                Some(value) => value.cmp(target),
                // A missing key has no value to order: it only differs from every value.
                None => return compare.result == CompareResult::NotEqual,
            },
        };
        match compare.result {
            CompareResult::Equal => ordering.is_eq(),
            CompareResult::Greater => ordering.is_gt(),
            CompareResult::Less => ordering.is_lt(),
            CompareResult::NotEqual => ordering.is_ne(),
        }
    }

    /// Everything that could make a transaction's branch fail, checked before it runs.
    fn check_ops(&self, ops: &[RequestOp]) -> Result<(), StoreError> {
        let mut puts = BTreeSet::new();
        let mut added = 0u64;
        for op in ops {
            match op {
                RequestOp::Range(req) => self.check_read(req.revision)?,
                RequestOp::Put(req) => {
                    if !puts.insert(req.key.as_slice()) {
                        return Err(duplicate(&req.key));
                    }
                    self.check_lease(req.lease)?;
                    added = added.saturating_add(put_size(req));
                }
                RequestOp::DeleteRange(_) => {}
            }
        }
        // A put inside a deleted interval writes its key twice, whichever comes first, as in
        // etcd. Overlapping deletes are fine: the second finds the key already gone.
        for op in ops {
            if let RequestOp::DeleteRange(req) = op {
                if let Some(key) = puts.iter().find(|key| in_range(key, &req.key, &req.range_end)) {
                    return Err(duplicate(key));
                }
            }
        }
        if puts.is_empty() {
            return Ok(());
        }
        self.check_quota(added)
    }

    fn compact(&mut self, revision: u64) -> Result<(), StoreError> {
        if revision > self.revision {
            return Err(StoreError::FutureRevision { requested: revision, current: self.revision });
        }
        if revision <= self.compact_revision {
            return Err(StoreError::Compacted { requested: revision, compact_revision: self.compact_revision });
        }
        let mut freed = 0;
        self.keys.retain(|key, history| {
            // Keep the version visible at `revision`, unless it is a tombstone, and all later ones.
            let seen = history.partition_point(|v| v.revision <= revision);
            let keep_from = match seen.checked_sub(1).and_then(|i| history.get(i)) {
                Some(v) if v.is_live() => seen - 1,
                _ => seen,
            };
            freed += history.drain(..keep_from).map(|v| v.size(key)).sum::<u64>();
            !history.is_empty()
        });
        self.db_size = self.db_size.saturating_sub(freed);
        self.compact_revision = revision;
        Ok(())
    }

    fn grant(&mut self, grant: &LeaseGrant) -> Result<LeaseGrantResponse, StoreError> {
        if grant.id == 0 {
            return Err(StoreError::InvalidLeaseId);
        }
        match self.leases.entry(grant.id) {
            Entry::Occupied(_) => Err(StoreError::LeaseExists(grant.id)),
            Entry::Vacant(entry) => {
                let remaining_ms = grant.ttl.saturating_mul(1000);
                entry.insert(LeaseInfo { id: grant.id, ttl: grant.ttl, remaining_ms, keys: BTreeSet::new() });
                Ok(LeaseGrantResponse { id: grant.id, ttl: grant.ttl, ..LeaseGrantResponse::default() })
            }
        }
    }

    /// Ends a lease and deletes its keys, in key order, at one revision.
    fn revoke(&mut self, batch: &mut Batch, id: u64) -> Result<(), StoreError> {
        let lease = self.leases.remove(&id).ok_or(StoreError::LeaseNotFound(id))?;
        for key in &lease.keys {
            self.delete_key(batch, key);
        }
        Ok(())
    }

    fn checkpoint(&mut self, checkpoints: &Checkpoints) {
        // A lease revoked since the leader recorded it is simply gone.
        for checkpoint in &checkpoints.leases {
            if let Some(lease) = self.leases.get_mut(&checkpoint.id) {
                lease.remaining_ms = checkpoint.remaining_ms;
            }
        }
    }
}

impl Output {
    /// Sets the revision of every header in the reply; the member fills in the rest.
    fn stamp(&mut self, revision: u64) {
        match self {
            Output::Put(r) => r.header.revision = revision,
            Output::DeleteRange(r) => r.header.revision = revision,
            Output::LeaseGranted(r) => r.header.revision = revision,
            Output::Txn(r) => {
                r.header.revision = revision;
                for response in &mut r.responses {
                    match response {
                        ResponseOp::Range(r) => r.header.revision = revision,
                        ResponseOp::Put(r) => r.header.revision = revision,
                        ResponseOp::DeleteRange(r) => r.header.revision = revision,
                    }
                }
            }
            Output::Compacted | Output::LeaseRevoked | Output::Checkpointed => {}
        }
    }
}

/// What a put adds to [`Store::db_size`].
fn put_size(req: &PutRequest) -> u64 {
    (req.key.len() + req.value.len()) as u64
}

fn corrupt_key(key: &[u8], what: &str) -> StoreError {
    StoreError::Corrupt(format!("key {:?} {what}", String::from_utf8_lossy(key)))
}

fn duplicate(key: &[u8]) -> StoreError {
    StoreError::DuplicateKey(String::from_utf8_lossy(key).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{prefix_end, Compare, CompareResult, CompareTarget};
    use crate::command::LeaseCheckpoint;
    use proptest::prelude::*;

    fn put_req(key: &str, value: &str) -> PutRequest {
        PutRequest { key: key.into(), value: value.into(), ..PutRequest::default() }
    }

    fn put(store: &mut Store, key: &str, value: &str) -> Applied {
        store.apply(&Command::Put(put_req(key, value)))
    }

    fn delete_req(key: &str, range_end: &[u8]) -> DeleteRangeRequest {
        DeleteRangeRequest { key: key.into(), range_end: range_end.to_vec(), prev_kv: true }
    }

    fn range_req(key: &str, range_end: &[u8]) -> RangeRequest {
        RangeRequest { key: key.into(), range_end: range_end.to_vec(), ..RangeRequest::default() }
    }

    fn get(store: &Store, key: &str) -> Option<KeyValue> {
        store.range(&range_req(key, b"")).unwrap().kvs.pop()
    }

    fn keys(response: &RangeResponse) -> Vec<&[u8]> {
        response.kvs.iter().map(|kv| kv.key.as_slice()).collect()
    }

    fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> Command {
        Command::Txn(TxnRequest { compare, success, failure })
    }

    fn cmp(key: &str, result: CompareResult, target: CompareTarget) -> Compare {
        Compare { key: key.into(), result, target }
    }

    fn txn_response(applied: Applied) -> TxnResponse {
        match applied.output {
            Ok(Output::Txn(response)) => response,
            other => panic!("not a txn reply: {other:?}"),
        }
    }

    fn grant(store: &mut Store, id: u64, ttl: u64) -> Result<Output, StoreError> {
        store.apply(&Command::LeaseGrant(LeaseGrant { id, ttl })).output
    }

    fn leased(key: &str, lease: u64) -> Command {
        Command::Put(PutRequest { lease, ..put_req(key, "v") })
    }

    #[test]
    fn puts_count_versions_and_keep_the_creating_revision() {
        let mut store = Store::new(Limits::default());
        assert_eq!(store.revision(), 0);
        let first = put(&mut store, "a", "1");
        assert_eq!(first.output, Ok(Output::Put(PutResponse { header: header(1), prev_kv: None })));
        put(&mut store, "b", "x");
        let again = store.apply(&Command::Put(PutRequest { prev_kv: true, ..put_req("a", "2") }));
        assert_eq!(store.revision(), 3);

        let old = KeyValue {
            key: b"a".to_vec(),
            value: b"1".to_vec(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: 0,
        };
        let new = KeyValue { value: b"2".to_vec(), mod_revision: 3, version: 2, ..old.clone() };
        assert_eq!(again.output, Ok(Output::Put(PutResponse { header: header(3), prev_kv: Some(old.clone()) })));
        assert_eq!(again.events, [Event { kind: EventKind::Put, kv: new.clone(), prev_kv: Some(old) }]);
        assert_eq!(get(&store, "a"), Some(new));
        assert_eq!(get(&store, "b").map(|kv| (kv.create_revision, kv.version)), Some((2, 1)));
        assert_eq!(get(&store, "c"), None);
        assert_eq!(store.db_size(), 2 + 2 + 2);
    }

    fn header(revision: u64) -> crate::api::Header {
        crate::api::Header { revision, ..Default::default() }
    }

    #[test]
    fn range_selects_prefixes_and_honours_limit_keys_only_and_count_only() {
        let mut store = Store::new(Limits::default());
        for key in ["svc/a", "svc/b", "svc/c", "svd", "sv"] {
            put(&mut store, key, "value");
        }
        let prefix = RangeRequest { limit: 2, ..range_req("svc/", &prefix_end(b"svc/")) };
        let limited = store.range(&prefix).unwrap();
        assert_eq!(keys(&limited), [b"svc/a", b"svc/b"]);
        assert_eq!((limited.more, limited.count, limited.header.revision), (true, 3, 5));

        let keys_only = store.range(&RangeRequest { keys_only: true, limit: 0, ..prefix.clone() }).unwrap();
        assert_eq!((keys_only.kvs.len(), keys_only.more), (3, false));
        assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty() && kv.version == 1));

        let counted = store.range(&RangeRequest { count_only: true, ..prefix }).unwrap();
        assert_eq!((counted.kvs.len(), counted.count), (0, 3));

        assert_eq!(keys(&store.range(&range_req("svc/b", b"svd")).unwrap()), [b"svc/b", b"svc/c"]);
        assert_eq!(store.range(&range_req("svd", &[0])).unwrap().count, 1);
        assert_eq!(store.range(&range_req("", &[0])).unwrap().count, 5);
        // An inverted interval is empty, not a panic.
        assert_eq!(store.range(&range_req("z", b"a")).unwrap().count, 0);
    }

    #[test]
    fn range_reads_past_revisions_but_not_future_or_compacted_ones() {
        let mut store = Store::new(Limits::default());
        put(&mut store, "k", "1");
        put(&mut store, "k", "2");
        store.apply(&Command::DeleteRange(delete_req("k", b"")));
        put(&mut store, "k", "4");
        let at = |store: &Store, revision| {
            store.range(&RangeRequest { revision, ..range_req("k", b"") }).map(|r| r.kvs.first().cloned())
        };
        assert_eq!(at(&store, 1).unwrap().unwrap().value, b"1");
        assert_eq!(at(&store, 2).unwrap().unwrap().value, b"2");
        assert_eq!(at(&store, 3).unwrap(), None);
        let recreated = at(&store, 4).unwrap().unwrap();
        assert_eq!((recreated.create_revision, recreated.version), (4, 1));
        assert_eq!(at(&store, 5), Err(StoreError::FutureRevision { requested: 5, current: 4 }));

        assert_eq!(store.apply(&Command::Compact(2)).output, Ok(Output::Compacted));
        assert_eq!(at(&store, 2), Err(StoreError::Compacted { requested: 2, compact_revision: 2 }));
        assert_eq!(at(&store, 3).unwrap(), None);
        assert_eq!(at(&store, 0).unwrap().unwrap().value, b"4");
    }

    #[test]
    fn delete_range_deletes_at_one_revision_with_one_event_per_key() {
        let mut store = Store::new(Limits::default());
        put(&mut store, "a/1", "x");
        put(&mut store, "a/2", "y");
        put(&mut store, "b", "z");
        let deleted = store.apply(&Command::DeleteRange(delete_req("a/", &prefix_end(b"a/"))));
        assert_eq!(store.revision(), 4);
        let Ok(Output::DeleteRange(response)) = &deleted.output else { panic!("{deleted:?}") };
        assert_eq!((response.deleted, response.header.revision), (2, 4));
        assert_eq!(response.prev_kvs.iter().map(|kv| kv.value.as_slice()).collect::<Vec<_>>(), [b"x", b"y"]);
        assert_eq!(deleted.events.len(), 2);
        for (event, key) in deleted.events.iter().zip(["a/1", "a/2"]) {
            assert_eq!(event.kind, EventKind::Delete);
            assert_eq!(event.kv, KeyValue { key: key.into(), mod_revision: 4, ..KeyValue::default() });
            assert_eq!(event.prev_kv.as_ref().map(|kv| kv.key.as_slice()), Some(key.as_bytes()));
        }
        assert_eq!(get(&store, "a/1"), None);

        // Deleting nothing makes no revision.
        let nothing = store.apply(&Command::DeleteRange(delete_req("a/", &prefix_end(b"a/"))));
        assert!(nothing.events.is_empty());
        assert_eq!(store.revision(), 4);
        let Ok(Output::DeleteRange(response)) = nothing.output else { panic!() };
        assert_eq!((response.deleted, response.header.revision), (0, 4));
    }

    #[test]
    fn txn_compares_choose_the_branch() {
        let mut store = Store::new(Limits::default());
        store.apply(&Command::LeaseGrant(LeaseGrant { id: 7, ttl: 10 }));
        put(&mut store, "k", "b");
        store.apply(&leased("leased", 7));
        use CompareResult::*;
        use CompareTarget as T;
        let cases = [
            (cmp("k", Equal, T::Value(b"b".to_vec())), true),
            (cmp("k", Greater, T::Value(b"a".to_vec())), true),
            (cmp("k", Less, T::Value(b"a".to_vec())), false),
            (cmp("k", NotEqual, T::Value(b"b".to_vec())), false),
            (cmp("k", Equal, T::Version(1)), true),
            (cmp("k", Equal, T::CreateRevision(1)), true),
            (cmp("k", Less, T::ModRevision(3)), true),
            (cmp("k", Equal, T::Lease(0)), true),
            (cmp("leased", Equal, T::Lease(7)), true),
            // A missing key has version, revisions and lease 0, and no value.
            (cmp("missing", Equal, T::Version(0)), true),
            (cmp("missing", Equal, T::CreateRevision(0)), true),
            (cmp("missing", Equal, T::ModRevision(0)), true),
            (cmp("missing", Equal, T::Lease(0)), true),
            (cmp("missing", Equal, T::Value(Vec::new())), false),
            (cmp("missing", Less, T::Value(b"z".to_vec())), false),
            (cmp("missing", NotEqual, T::Value(Vec::new())), true),
        ];
        for (compare, holds) in cases {
            let response = txn_response(store.apply(&txn(vec![compare.clone()], vec![], vec![])));
            assert_eq!(response.succeeded, holds, "{compare:?}");
        }
        // Every compare must hold.
        let both = vec![cmp("k", Equal, T::Version(1)), cmp("k", Equal, T::Version(2))];
        let read = RequestOp::Range(range_req("k", b""));
        let response = txn_response(store.apply(&txn(both, vec![], vec![read])));
        assert!(!response.succeeded);
        let [ResponseOp::Range(found)] = response.responses.as_slice() else { panic!("{response:?}") };
        assert_eq!(found.kvs[0].value, b"b");
        // Reads and compares make no revision.
        assert_eq!(store.revision(), 2);
    }

    #[test]
    fn txn_writes_share_one_revision_and_later_reads_see_them() {
        let mut store = Store::new(Limits::default());
        put(&mut store, "old", "1");
        put(&mut store, "gone", "1");
        let ops = vec![
            RequestOp::Put(put_req("new", "2")),
            RequestOp::Range(range_req("new", b"")),
            RequestOp::DeleteRange(delete_req("gone", b"")),
            RequestOp::Put(put_req("old", "2")),
            RequestOp::Range(RangeRequest { revision: 2, ..range_req("", &[0]) }),
            RequestOp::Range(range_req("", &[0])),
        ];
        let applied = store.apply(&txn(vec![], ops, vec![]));
        assert_eq!(store.revision(), 3);
        assert_eq!(
            applied.events.iter().map(|e| (e.kind, e.kv.mod_revision)).collect::<Vec<_>>(),
            [(EventKind::Put, 3), (EventKind::Delete, 3), (EventKind::Put, 3)]
        );
        assert_eq!(store.events_since(b"", &[0], 3), Ok(applied.events.clone()));
        let response = txn_response(applied);
        assert!(response.succeeded);
        assert_eq!(response.header.revision, 3);
        let ranges: Vec<_> = response
            .responses
            .iter()
            .filter_map(|r| match r {
                ResponseOp::Range(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(keys(ranges[0]), [b"new"]);
        // A read at a past revision sees none of the transaction's writes.
        assert_eq!(keys(ranges[1]), [b"gone".as_slice(), b"old"]);
        assert_eq!(keys(ranges[2]), [b"new", b"old"]);
        assert_eq!(ranges[2].kvs[1].value, b"2");
    }

    #[test]
    fn a_refused_txn_changes_nothing() {
        let mut store = Store::new(Limits { max_txn_ops: 4, ..Limits::default() });
        put(&mut store, "a", "1");
        let before = store.snapshot();
        let p = |key: &str| RequestOp::Put(put_req(key, "x"));
        let refusals = [
            (txn(vec![], vec![p("b"), p("a"), p("b")], vec![]), StoreError::DuplicateKey("b".into())),
            (
                txn(vec![], vec![p("c"), RequestOp::DeleteRange(delete_req("a", &[0]))], vec![]),
                StoreError::DuplicateKey("c".into()),
            ),
            (
                txn(vec![], vec![RequestOp::DeleteRange(delete_req("", &[0])), p("a")], vec![]),
                StoreError::DuplicateKey("a".into()),
            ),
            (txn(vec![], vec![p("b")], vec![p("c"); 4]), StoreError::TooManyOps { ops: 5, max: 4 }),
            (
                txn(vec![], vec![p("b"), RequestOp::Put(PutRequest { lease: 9, ..put_req("c", "") })], vec![]),
                StoreError::LeaseNotFound(9),
            ),
            (
                txn(
                    vec![],
                    vec![p("b"), RequestOp::Range(RangeRequest { revision: 2, ..range_req("a", b"") })],
                    vec![],
                ),
                StoreError::FutureRevision { requested: 2, current: 1 },
            ),
        ];
        for (command, error) in refusals {
            let applied = store.apply(&command);
            assert_eq!(applied, Applied { output: Err(error), events: Vec::new() });
            assert_eq!(store.snapshot(), before);
        }
        // Overlapping deletes write each key once; the failure branch is checked, not the other.
        let deletes = vec![RequestOp::DeleteRange(delete_req("a", b"")), RequestOp::DeleteRange(delete_req("", &[0]))];
        let response = txn_response(store.apply(&txn(vec![], deletes, vec![p("a"), p("a")])));
        assert_eq!(response.responses.len(), 2);
        assert_eq!(store.revision(), 2);
    }

    #[test]
    fn quota_refuses_puts_until_space_is_freed() {
        let mut store = Store::new(Limits { quota_bytes: 20, ..Limits::default() });
        put(&mut store, "k", "123456789"); // 10 bytes
        put(&mut store, "k", "12345678"); // 19
        let refused = put(&mut store, "j", "1");
        assert_eq!(refused.output, Err(StoreError::QuotaExceeded { size: 21, quota: 20 }));
        assert!(refused.output.unwrap_err().to_string().contains("compact"));
        let puts = txn(vec![], vec![RequestOp::Put(put_req("j", "1"))], vec![]);
        assert!(matches!(store.apply(&puts).output, Err(StoreError::QuotaExceeded { .. })));
        assert_eq!(store.revision(), 2);

        // Deletes are always allowed (their tombstone counts too); compaction frees the space.
        store.apply(&Command::DeleteRange(delete_req("k", b"")));
        assert_eq!(store.db_size(), 20);
        store.apply(&Command::Compact(3));
        assert_eq!(store.db_size(), 0);
        assert!(put(&mut store, "j", "1").output.is_ok());
    }

    #[test]
    fn compaction_drops_history_before_the_compact_revision() {
        let mut store = Store::new(Limits::default());
        put(&mut store, "a", "1"); // 1
        put(&mut store, "a", "2"); // 2
        put(&mut store, "b", "1"); // 3
        store.apply(&Command::DeleteRange(delete_req("b", b""))); // 4
        put(&mut store, "a", "3"); // 5
        assert_eq!(
            store.apply(&Command::Compact(6)).output,
            Err(StoreError::FutureRevision { requested: 6, current: 5 })
        );
        assert_eq!(store.apply(&Command::Compact(4)).output, Ok(Output::Compacted));
        assert_eq!((store.compact_revision(), store.revision()), (4, 5));
        assert_eq!(
            store.apply(&Command::Compact(4)).output,
            Err(StoreError::Compacted { requested: 4, compact_revision: 4 })
        );
        // "a" keeps the version visible at 4 and the later one; "b" is gone entirely.
        assert_eq!(store.db_size(), 4);
        assert_eq!(store.events_since(b"", &[0], 4), Err(StoreError::Compacted { requested: 4, compact_revision: 4 }));
        let events = store.events_since(b"", &[0], 5).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].prev_kv.as_ref().map(|kv| kv.value.as_slice()), Some(b"2".as_slice()));
        let at_five = store.range(&RangeRequest { revision: 5, ..range_req("", &[0]) }).unwrap();
        assert_eq!(keys(&at_five), [b"a"]);
        assert_eq!(get(&store, "a").map(|kv| (kv.create_revision, kv.version)), Some((1, 3)));
    }

    #[test]
    fn leases_bind_keys_and_take_them_along_when_revoked() {
        let mut store = Store::new(Limits::default());
        assert_eq!(grant(&mut store, 0, 5), Err(StoreError::InvalidLeaseId));
        let granted = grant(&mut store, 7, 5);
        assert_eq!(granted, Ok(Output::LeaseGranted(LeaseGrantResponse { header: header(0), id: 7, ttl: 5 })));
        assert_eq!(grant(&mut store, 7, 5), Err(StoreError::LeaseExists(7)));
        grant(&mut store, 8, 5).unwrap();
        assert_eq!(store.apply(&leased("x", 9)).output, Err(StoreError::LeaseNotFound(9)));

        store.apply(&leased("b", 7));
        store.apply(&leased("a", 7));
        store.apply(&leased("moved", 7));
        store.apply(&leased("moved", 8));
        store.apply(&leased("unbound", 7));
        put(&mut store, "unbound", "v");
        let keys_of = |store: &Store, id| store.lease(id).map(|l| l.keys.iter().cloned().collect::<Vec<_>>());
        assert_eq!(keys_of(&store, 7), Some(vec![b"a".to_vec(), b"b".to_vec()]));
        assert_eq!(keys_of(&store, 8), Some(vec![b"moved".to_vec()]));
        assert_eq!(get(&store, "a").unwrap().lease, 7);

        let checkpoints =
            vec![LeaseCheckpoint { id: 7, remaining_ms: 1234 }, LeaseCheckpoint { id: 99, remaining_ms: 1 }];
        let checkpointed = store.apply(&Command::LeaseCheckpoint(Checkpoints { leases: checkpoints }));
        assert_eq!(checkpointed.output, Ok(Output::Checkpointed));
        assert_eq!(store.lease(7).unwrap().remaining_ms, 1234);
        assert_eq!(store.lease(8).unwrap().remaining_ms, 5000);

        let revision = store.revision();
        let revoked = store.apply(&Command::LeaseRevoke(7));
        assert_eq!(revoked.output, Ok(Output::LeaseRevoked));
        assert_eq!(store.revision(), revision + 1);
        let deleted: Vec<_> = revoked.events.iter().map(|e| (e.kind, e.kv.key.as_slice(), e.kv.mod_revision)).collect();
        assert_eq!(
            deleted,
            [(EventKind::Delete, b"a".as_slice(), revision + 1), (EventKind::Delete, b"b", revision + 1)]
        );
        assert_eq!((get(&store, "a"), store.lease(7)), (None, None));
        assert_eq!(store.leases().map(|l| l.id).collect::<Vec<_>>(), [8]);
        assert_eq!(store.apply(&Command::LeaseRevoke(7)).output, Err(StoreError::LeaseNotFound(7)));

        // A lease without keys ends without a revision.
        grant(&mut store, 3, 1).unwrap();
        assert!(store.apply(&Command::LeaseRevoke(3)).events.is_empty());
        assert_eq!(store.revision(), revision + 1);
    }

    #[test]
    fn restore_refuses_what_is_not_a_consistent_snapshot() {
        assert!(matches!(Store::restore(b"\xff\xff\xff", Limits::default()), Err(StoreError::Corrupt(_))));
        let mut store = Store::new(Limits::default());
        grant(&mut store, 1, 1).unwrap();
        store.apply(&leased("k", 1));
        // The key stays bound to the lease, which the image no longer has.
        let mut image: Image = Codec::Protobuf.decode(&store.snapshot()).unwrap();
        image.leases.clear();
        let encode = |image: &Image| {
            let mut bytes = BytesMut::new();
            Codec::Protobuf.encode(image, &mut bytes).unwrap();
            bytes
        };
        let missing_lease = Store::restore(&encode(&image), Limits::default()).unwrap_err();
        assert!(missing_lease.to_string().contains("missing lease"), "{missing_lease}");
        // Two versions at one revision and position.
        let versions = &mut image.keys[0].versions;
        versions.push(versions[0].clone());
        let repeated = Store::restore(&encode(&image), Limits::default()).unwrap_err();
        assert!(repeated.to_string().contains("out of order"), "{repeated}");
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        (b'a'..b'e').prop_map(|k| vec![k])
    }

    fn range_end() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![Just(Vec::new()), Just(vec![0]), key()]
    }

    fn put_strategy() -> impl Strategy<Value = PutRequest> {
        (key(), prop::collection::vec(any::<u8>(), 0..4), 0u64..4, any::<bool>())
            .prop_map(|(key, value, lease, prev_kv)| PutRequest { key, value, lease, prev_kv })
    }

    fn delete_strategy() -> impl Strategy<Value = DeleteRangeRequest> {
        (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
            key,
            range_end,
            prev_kv,
        })
    }

    fn op_strategy() -> impl Strategy<Value = RequestOp> {
        prop_oneof![
            put_strategy().prop_map(RequestOp::Put),
            delete_strategy().prop_map(RequestOp::DeleteRange),
            (key(), range_end(), 0u64..3, 0u64..2).prop_map(|(key, range_end, revision, limit)| {
                RequestOp::Range(RangeRequest { key, range_end, revision, limit, ..RangeRequest::default() })
            }),
        ]
    }

    fn compare_strategy() -> impl Strategy<Value = Compare> {
        let result = prop_oneof![
            Just(CompareResult::Equal),
            Just(CompareResult::Greater),
            Just(CompareResult::Less),
            Just(CompareResult::NotEqual)
        ];
        let target = prop_oneof![
            (0u64..3).prop_map(CompareTarget::Version),
            (0u64..8).prop_map(CompareTarget::ModRevision),
            (0u64..8).prop_map(CompareTarget::CreateRevision),
            (0u64..3).prop_map(CompareTarget::Lease),
            prop::collection::vec(any::<u8>(), 0..2).prop_map(CompareTarget::Value),
        ];
        (key(), result, target).prop_map(|(key, result, target)| Compare { key, result, target })
    }

    fn command_strategy() -> impl Strategy<Value = Command> {
        let ops = || prop::collection::vec(op_strategy(), 0..4);
        prop_oneof![
            4 => put_strategy().prop_map(Command::Put),
            2 => delete_strategy().prop_map(Command::DeleteRange),
            3 => (prop::collection::vec(compare_strategy(), 0..3), ops(), ops())
                .prop_map(|(compare, success, failure)| Command::Txn(TxnRequest { compare, success, failure })),
            1 => (0u64..40).prop_map(Command::Compact),
            2 => (0u64..4, 1u64..100).prop_map(|(id, ttl)| Command::LeaseGrant(LeaseGrant { id, ttl })),
            1 => (0u64..4).prop_map(Command::LeaseRevoke),
            1 => prop::collection::vec((0u64..4, any::<u64>()), 0..3).prop_map(|c| {
                let checkpoints = c.into_iter().map(|(id, remaining_ms)| LeaseCheckpoint { id, remaining_ms }).collect();
                Command::LeaseCheckpoint(Checkpoints { leases: checkpoints })
            }),
        ]
    }

    /// Everything a client can observe of a store.
    fn observe(store: &Store) -> impl PartialEq + fmt::Debug {
        let all = range_req("", &[0]);
        let ranges: Vec<_> = (store.compact_revision() + 1..=store.revision())
            .map(|revision| store.range(&RangeRequest { revision, ..all.clone() }).unwrap())
            .collect();
        (
            (store.revision(), store.compact_revision(), store.db_size()),
            store.range(&all).unwrap(),
            ranges,
            store.events_since(b"", &[0], store.compact_revision() + 1).unwrap(),
            store.leases().cloned().collect::<Vec<_>>(),
        )
    }

    proptest! {
        #[test]
        fn applied_events_history_and_snapshots_agree(commands in prop::collection::vec(command_strategy(), 0..40)) {
            let limits = Limits { quota_bytes: 60, max_txn_ops: 8 };
            let (mut store, mut twin) = (Store::new(limits.clone()), Store::new(limits));
            let mut recorded = Vec::new();
            for command in &commands {
                let (before, revision) = (store.snapshot(), store.revision());
                let applied = store.apply(command);
                prop_assert_eq!(&twin.apply(command), &applied, "two members disagree");
                if applied.output.is_err() {
                    prop_assert_eq!(store.snapshot(), before, "a refused command changed the store");
                }
                let made = if applied.events.is_empty() { revision } else { revision + 1 };
                prop_assert_eq!(store.revision(), made);
                prop_assert!(applied.events.iter().all(|e| e.kv.mod_revision == made));
                recorded.extend(applied.events);
            }

            // Watch history rebuilt from the versions is exactly what apply reported.
            let compacted = store.compact_revision();
            recorded.retain(|e| e.kv.mod_revision > compacted);
            prop_assert_eq!(store.events_since(b"", &[0], compacted + 1).unwrap(), recorded.clone());
            let some: Vec<_> = recorded.iter().filter(|e| in_range(&e.kv.key, b"b", b"d")).cloned().collect();
            prop_assert_eq!(store.events_since(b"b", b"d", compacted + 1).unwrap(), some);

            // Leases and the keys bound to them agree.
            for kv in store.range(&range_req("", &[0])).unwrap().kvs {
                prop_assert!(kv.lease == 0 || store.lease(kv.lease).is_some_and(|l| l.keys.contains(&kv.key)));
            }
            for lease in store.leases() {
                for key in &lease.keys {
                    prop_assert_eq!(store.range(&RangeRequest { key: key.clone(), ..range_req("", b"") }).unwrap().kvs[0].lease, lease.id);
                }
            }

            let restored = Store::restore(&store.snapshot(), store.limits.clone()).unwrap();
            prop_assert_eq!(restored.snapshot(), store.snapshot());
            prop_assert_eq!(observe(&restored), observe(&store));
        }
    }
}
