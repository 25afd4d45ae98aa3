//! Where a node's log, hard state and snapshot live.
//!
//! The [`Storage`] trait is both what the Raft core reads (stable entries, terms,
//! the latest snapshot) and what the application writes a `Ready` into
//! ([`Storage::persist`]) before sending the `Ready`'s messages. Two implementations:
//! [`MemStorage`] (tests, simulator) and [`DurableStorage`] (segmented checksummed log
//! on a [`FileSystem`]). The core never calls the write methods itself except
//! [`Storage::compact`] through `RawNode::compact`.

mod durable;
mod fs;
mod memory;

use std::fmt;

pub use durable::{DurableOptions, DurableStorage};
pub use fs::{FaultFs, FileSystem, StdFs};
pub use memory::MemStorage;

use crate::message::{Entry, HardState, Snapshot, SnapshotMeta};

/// A storage failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageError {
    /// The requested index is covered by the snapshot and no longer in the log.
    Compacted,
    /// The requested index is past the end of the log.
    Unavailable,
    /// A compaction asked for a snapshot older than the current one, or past the log.
    SnapshotOutOfDate,
    /// Entries handed to `persist` would leave a hole in the log.
    LogGap {
        /// Index expected next.
        expected: u64,
        /// Index received.
        got: u64,
    },
    /// An I/O operation failed.
    Io {
        /// What was being done.
        op: &'static str,
        /// File or directory concerned.
        path: String,
        /// The underlying error's kind.
        kind: std::io::ErrorKind,
        /// The underlying error's message.
        message: String,
    },
    /// Data on disk is damaged somewhere other than a torn tail; recovery refuses it.
    Corrupt {
        /// File concerned.
        path: String,
        /// Byte offset of the damage.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: &str, e: std::io::Error) -> Self {
        StorageError::Io { op, path: path.to_string(), kind: e.kind(), message: e.to_string() }
    }

    pub(crate) fn corrupt(path: &str, offset: u64, reason: impl Into<String>) -> Self {
        StorageError::Corrupt { path: path.to_string(), offset, reason: reason.into() }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Compacted => write!(f, "log index compacted into the snapshot"),
            StorageError::Unavailable => write!(f, "log index not yet available"),
            StorageError::SnapshotOutOfDate => write!(f, "snapshot is out of date"),
            StorageError::LogGap { expected, got } => {
                write!(f, "log gap: expected entry {expected}, got {got}")
            }
            StorageError::Io { op, path, message, .. } => write!(f, "{op} {path}: {message}"),
            StorageError::Corrupt { path, offset, reason } => {
                write!(f, "corrupt data in {path} at byte {offset}: {reason}")
            }
        }
    }
}

impl std::error::Error for StorageError {}

/// Durable state of one node, as read by the core and written by the application.
pub trait Storage {
    /// Hard state saved by the last `persist`.
    fn hard_state(&self) -> HardState;
    /// Entries in `lo..hi`, at least one if the range is non-empty, then stopping
    /// before `max_bytes` would be exceeded.
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError>;
    /// Term of the entry at `index` (the snapshot's index is answered from its metadata).
    fn term(&self, index: u64) -> Result<u64, StorageError>;
    /// First index still in the log (snapshot index + 1).
    fn first_index(&self) -> u64;
    /// Last index in the log (the snapshot index when the log is empty).
    fn last_index(&self) -> u64;
    /// Metadata of the latest snapshot.
    fn snapshot_meta(&self) -> SnapshotMeta;
    /// The latest snapshot, data included (a durable storage may read it from disk).
    fn snapshot(&mut self) -> Result<Snapshot, StorageError>;
    /// Makes a `Ready` durable: the snapshot (replacing the log), then the entries
    /// (truncating any conflicting suffix), then the hard state. Must not return
    /// before everything is durable; implementations batch it into one sync.
    fn persist(
        &mut self,
        hard_state: Option<&HardState>,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
    ) -> Result<(), StorageError>;
    /// Saves a snapshot taken by the state machine and discards the entries it covers.
    fn compact(&mut self, snapshot: Snapshot) -> Result<(), StorageError>;
}

/// Picks entries from `ents` while they fit in `max_bytes` (always at least one).
pub(crate) fn limit_size(ents: &mut Vec<Entry>, max_bytes: u64) {
    let mut size = 0;
    let mut keep = 0;
    for e in ents.iter() {
        size += e.size();
        if keep > 0 && size > max_bytes {
            break;
        }
        keep += 1;
    }
    ents.truncate(keep);
}
