//! In-memory [`Storage`]: what the simulator and unit tests use as a node's "disk".
//!
//! Everything written through `persist` counts as durable; a simulated crash keeps
//! this object and drops only the in-memory Raft state.

use crate::message::{ConfState, Entry, HardState, Snapshot, SnapshotMeta};
use crate::storage::{Storage, StorageError};

/// A [`Storage`] kept entirely in memory.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    pub(super) hard_state: HardState,
    pub(super) snapshot: Snapshot,
    // entries[0].index == snapshot.meta.index + 1
    pub(super) entries: Vec<Entry>,
}

impl MemStorage {
    /// Empty storage with no members (for a node that will be added later).
    pub fn new() -> Self {
        Self::default()
    }

    /// Empty storage bootstrapped with the initial membership.
    pub fn new_with_conf(conf: ConfState) -> Self {
        MemStorage {
            snapshot: Snapshot { meta: SnapshotMeta { index: 0, term: 0, conf }, data: Vec::new() },
            ..Self::default()
        }
    }

    /// All entries currently in the log.
    pub fn all_entries(&self) -> &[Entry] {
        &self.entries
    }

    pub(super) fn offset(&self) -> u64 {
        self.snapshot.meta.index + 1
    }

    /// Checks that `persist` would accept `snapshot` and `entries`, without changing anything,
    /// so that a durable store can refuse them before it writes to disk.
    pub(super) fn check(&self, snapshot: Option<&Snapshot>, entries: &[Entry]) -> Result<(), StorageError> {
        let base = match snapshot {
            Some(s) if s.meta.index < self.snapshot.meta.index => return Err(StorageError::SnapshotOutOfDate),
            Some(s) => (s.meta.index, s.meta.index),
            None => (self.snapshot.meta.index, self.last_index()),
        };
        if let Some(first) = entries.first().map(|e| e.index) {
            let (snap_index, last) = base;
            if first > last + 1 || first <= snap_index {
                return Err(StorageError::LogGap { expected: last + 1, got: first });
            }
        }
        Ok(())
    }

    /// Checks that `compact` would accept `snapshot`.
    pub(super) fn check_compact(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let idx = snapshot.meta.index;
        if idx <= self.snapshot.meta.index || idx > self.last_index() {
            return Err(StorageError::SnapshotOutOfDate);
        }
        Ok(())
    }
}

impl Storage for MemStorage {
    fn hard_state(&self) -> HardState {
        self.hard_state.clone()
    }

    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if lo < self.offset() {
            return Err(StorageError::Compacted);
        }
        if hi > self.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        if lo >= hi {
            return Ok(Vec::new());
        }
        let off = self.offset();
        let mut out = Vec::new();
        let mut size = 0;
        for e in &self.entries[(lo - off) as usize..(hi - off) as usize] {
            size += e.size();
            if !out.is_empty() && size > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        let snap = &self.snapshot.meta;
        if index == snap.index {
            return Ok(snap.term);
        }
        if index < snap.index {
            return Err(StorageError::Compacted);
        }
        self.entries.get((index - self.offset()) as usize).map(|e| e.term).ok_or(StorageError::Unavailable)
    }

    fn first_index(&self) -> u64 {
        self.offset()
    }

    fn last_index(&self) -> u64 {
        self.snapshot.meta.index + self.entries.len() as u64
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.snapshot.meta.clone()
    }

    fn snapshot(&mut self) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }

    fn persist(
        &mut self,
        hard_state: Option<&HardState>,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        self.check(snapshot, entries)?;
        if let Some(s) = snapshot {
            // The core only installs a snapshot whose position its log does not
            // match, so nothing after it can be trusted.
            self.snapshot = s.clone();
            self.entries.clear();
        }
        if let Some(first) = entries.first() {
            self.entries.truncate((first.index - self.offset()) as usize);
            self.entries.extend_from_slice(entries);
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    fn compact(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.check_compact(&snapshot)?;
        let drop = (snapshot.meta.index - self.snapshot.meta.index) as usize;
        self.entries.drain(..drop);
        self.snapshot = snapshot;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::EntryKind;

    fn ent(index: u64, term: u64) -> Entry {
        Entry { term, index, kind: EntryKind::Normal, data: vec![0; 10].into() }
    }

    #[test]
    fn append_truncate_compact() {
        let mut s = MemStorage::new_with_conf(ConfState::with_voters([1]));
        s.persist(None, None, &[ent(1, 1), ent(2, 1), ent(3, 1)]).unwrap();
        assert_eq!(s.last_index(), 3);
        s.persist(None, None, &[ent(2, 2)]).unwrap();
        assert_eq!(s.last_index(), 2);
        assert_eq!(s.term(2), Ok(2));
        assert_eq!(s.persist(None, None, &[ent(5, 2)]), Err(StorageError::LogGap { expected: 3, got: 5 }));
        let snap =
            Snapshot { meta: SnapshotMeta { index: 1, term: 1, conf: ConfState::with_voters([1]) }, data: vec![] };
        s.compact(snap.clone()).unwrap();
        assert_eq!(s.first_index(), 2);
        assert_eq!(s.term(1), Ok(1));
        assert_eq!(s.term(0), Err(StorageError::Compacted));
        assert_eq!(s.entries(1, 3, u64::MAX), Err(StorageError::Compacted));
        assert_eq!(s.compact(snap), Err(StorageError::SnapshotOutOfDate));
    }

    #[test]
    fn entries_respect_max_bytes_but_return_one() {
        let mut s = MemStorage::new_with_conf(ConfState::with_voters([1]));
        s.persist(None, None, &[ent(1, 1), ent(2, 1), ent(3, 1)]).unwrap();
        assert_eq!(s.entries(1, 4, 0).unwrap().len(), 1);
        assert_eq!(s.entries(1, 4, 68).unwrap().len(), 2);
        assert_eq!(s.entries(1, 4, u64::MAX).unwrap().len(), 3);
        assert_eq!(s.entries(1, 5, u64::MAX), Err(StorageError::Unavailable));
    }
}
