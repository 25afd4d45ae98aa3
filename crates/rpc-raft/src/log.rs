//! The Raft log as the core sees it: a stable prefix in [`Storage`] and an unstable
//! suffix (plus possibly an incoming snapshot) not yet persisted.
//!
//! Owns commit/apply bookkeeping and the log queries used by the protocol
//! (consistency check, conflict search, up-to-date comparison). It does not decide
//! anything: the rules live in [`crate::raft`].

use crate::message::{Entry, Snapshot};
use crate::storage::{limit_size, Storage, StorageError};

/// Entries and snapshot received but not yet handed to storage.
#[derive(Debug, Default)]
struct Unstable {
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
    // Index of entries[0] (or where it would be).
    offset: u64,
}

impl Unstable {
    fn truncate_and_append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else { return };
        let after = first.index;
        let end = self.offset + self.entries.len() as u64;
        if after == end {
            self.entries.extend_from_slice(ents);
        } else if after <= self.offset {
            // Replaces everything unstable; the storage suffix is overwritten on persist.
            self.offset = after;
            self.entries = ents.to_vec();
        } else {
            self.entries.truncate((after - self.offset) as usize);
            self.entries.extend_from_slice(ents);
        }
    }
}

/// The log of one node.
#[derive(Debug)]
pub(crate) struct RaftLog<S> {
    pub(crate) storage: S,
    unstable: Unstable,
    /// Highest index known committed.
    pub(crate) committed: u64,
    /// Highest index the application has applied (acknowledged through `advance`).
    pub(crate) applied: u64,
    /// Highest index handed to the application in a `Ready`, not yet advanced.
    pub(crate) applying: u64,
}

impl<S: Storage> RaftLog<S> {
    pub(crate) fn new(storage: S) -> Self {
        let snap = storage.snapshot_meta();
        let last = storage.last_index();
        let hs = storage.hard_state();
        let committed = hs.commit.max(snap.index).min(last);
        RaftLog {
            unstable: Unstable { snapshot: None, entries: Vec::new(), offset: last + 1 },
            storage,
            committed,
            applied: snap.index,
            applying: snap.index,
        }
    }

    pub(crate) fn first_index(&self) -> u64 {
        match &self.unstable.snapshot {
            Some(s) => s.meta.index + 1,
            None => self.storage.first_index(),
        }
    }

    pub(crate) fn last_index(&self) -> u64 {
        if !self.unstable.entries.is_empty() {
            return self.unstable.offset + self.unstable.entries.len() as u64 - 1;
        }
        match &self.unstable.snapshot {
            Some(s) => s.meta.index,
            None => self.storage.last_index(),
        }
    }

    pub(crate) fn term(&self, i: u64) -> Result<u64, StorageError> {
        let dummy = self.first_index() - 1;
        if i < dummy {
            return Err(StorageError::Compacted);
        }
        if i > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        if i >= self.unstable.offset {
            return Ok(self.unstable.entries[(i - self.unstable.offset) as usize].term);
        }
        if let Some(s) = &self.unstable.snapshot {
            if s.meta.index == i {
                return Ok(s.meta.term);
            }
        }
        self.storage.term(i)
    }

    pub(crate) fn last_term(&self) -> u64 {
        self.term(self.last_index()).unwrap_or(0)
    }

    pub(crate) fn match_term(&self, i: u64, t: u64) -> bool {
        self.term(i) == Ok(t)
    }

    /// Whether a candidate log ending at `(last_index, term)` is at least as up to date.
    pub(crate) fn is_up_to_date(&self, last_index: u64, term: u64) -> bool {
        let my_term = self.last_term();
        term > my_term || (term == my_term && last_index >= self.last_index())
    }

    /// First index where `ents` disagrees with the log (or extends it); 0 if none.
    pub(crate) fn find_conflict(&self, ents: &[Entry]) -> u64 {
        ents.iter().find(|e| !self.match_term(e.index, e.term)).map_or(0, |e| e.index)
    }

    /// Largest index `<= index` whose term is `<= term`, with that term (0 if unknown).
    pub(crate) fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut i = index;
        loop {
            match self.term(i) {
                Ok(t) if t > term && i > 0 => i -= 1,
                Ok(t) => return (i, t),
                Err(_) => return (i, 0),
            }
        }
    }

    pub(crate) fn append(&mut self, ents: &[Entry]) {
        self.unstable.truncate_and_append(ents);
    }

    /// Entries from `lo`, bounded by count and bytes (at least one if any exist).
    pub(crate) fn entries_from(&self, lo: u64, max_bytes: u64, max_count: usize) -> Result<Vec<Entry>, StorageError> {
        let hi = (self.last_index() + 1).min(lo.saturating_add(max_count as u64));
        self.slice(lo, hi, max_bytes)
    }

    pub(crate) fn slice(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if lo < self.first_index() {
            return Err(StorageError::Compacted);
        }
        if hi > self.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        if lo >= hi {
            return Ok(Vec::new());
        }
        let off = self.unstable.offset;
        let mut out = Vec::new();
        if lo < off {
            let shi = hi.min(off);
            out = self.storage.entries(lo, shi, max_bytes)?;
            if (out.len() as u64) < shi - lo {
                return Ok(out);
            }
        }
        if hi > off {
            let from = (lo.max(off) - off) as usize;
            let to = (hi - off) as usize;
            out.extend_from_slice(&self.unstable.entries[from..to]);
            limit_size(&mut out, max_bytes);
        }
        Ok(out)
    }

    pub(crate) fn commit_to(&mut self, c: u64) {
        let c = c.min(self.last_index());
        if c > self.committed {
            self.committed = c;
        }
    }

    /// Commits `max_index` only if its entry is from `term` (the leader's current term).
    pub(crate) fn maybe_commit(&mut self, max_index: u64, term: u64) -> bool {
        if max_index > self.committed && self.term(max_index) == Ok(term) {
            self.commit_to(max_index);
            true
        } else {
            false
        }
    }

    pub(crate) fn has_next_committed(&self) -> bool {
        self.committed > self.applying.max(self.first_index() - 1)
    }

    pub(crate) fn next_committed_entries(&self, max_bytes: u64) -> Vec<Entry> {
        let lo = (self.applying + 1).max(self.first_index());
        if self.committed < lo {
            return Vec::new();
        }
        self.slice(lo, self.committed + 1, max_bytes).unwrap_or_default()
    }

    pub(crate) fn unstable_entries(&self) -> &[Entry] {
        &self.unstable.entries
    }

    pub(crate) fn unstable_snapshot(&self) -> Option<&Snapshot> {
        self.unstable.snapshot.as_ref()
    }

    pub(crate) fn stable_to(&mut self, i: u64, t: u64) {
        let u = &mut self.unstable;
        if i >= u.offset {
            let pos = (i - u.offset) as usize;
            if u.entries.get(pos).is_some_and(|e| e.term == t) {
                u.entries.drain(..=pos);
                u.offset = i + 1;
            }
        }
    }

    pub(crate) fn stable_snap_to(&mut self, i: u64) {
        if self.unstable.snapshot.as_ref().is_some_and(|s| s.meta.index == i) {
            self.unstable.snapshot = None;
        }
    }

    /// Replaces the whole log by `snap` (pending persistence).
    pub(crate) fn restore(&mut self, snap: Snapshot) {
        self.committed = snap.meta.index;
        self.unstable.entries.clear();
        self.unstable.offset = snap.meta.index + 1;
        self.unstable.snapshot = Some(snap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ConfState, EntryKind};
    use crate::storage::MemStorage;

    fn ent(index: u64, term: u64) -> Entry {
        Entry { term, index, kind: EntryKind::Normal, data: Default::default() }
    }

    fn log_with(terms: &[u64]) -> RaftLog<MemStorage> {
        let mut s = MemStorage::new_with_conf(ConfState::with_voters([1]));
        let ents: Vec<Entry> = terms.iter().enumerate().map(|(i, t)| ent(i as u64 + 1, *t)).collect();
        s.persist(None, None, &ents).unwrap();
        RaftLog::new(s)
    }

    #[test]
    fn find_conflict_table() {
        let log = log_with(&[1, 2, 3]);
        let cases: Vec<(Vec<Entry>, u64)> = vec![
            (vec![], 0),
            (vec![ent(1, 1), ent(2, 2), ent(3, 3)], 0),
            (vec![ent(2, 2), ent(3, 3), ent(4, 4)], 4),
            (vec![ent(2, 2), ent(3, 4)], 3),
            (vec![ent(1, 4)], 1),
            (vec![ent(4, 4), ent(5, 4)], 4),
        ];
        for (ents, want) in cases {
            assert_eq!(log.find_conflict(&ents), want, "{ents:?}");
        }
    }

    #[test]
    fn find_conflict_by_term_table() {
        let log = log_with(&[1, 1, 3, 3, 5, 5]);
        let cases = [
            ((6, 5), (6, 5)),
            ((6, 4), (4, 3)),
            ((6, 2), (2, 1)),
            ((6, 0), (0, 0)),
            ((3, 3), (3, 3)),
            ((9, 5), (9, 0)),
        ];
        for ((i, t), want) in cases {
            assert_eq!(log.find_conflict_by_term(i, t), want, "({i},{t})");
        }
    }

    #[test]
    fn up_to_date_table() {
        let log = log_with(&[1, 2, 2]);
        let cases = [((3, 2), true), ((2, 2), false), ((4, 2), true), ((1, 3), true), ((5, 1), false)];
        for ((i, t), want) in cases {
            assert_eq!(log.is_up_to_date(i, t), want, "({i},{t})");
        }
    }

    #[test]
    fn unstable_overwrite_and_commit_rule() {
        let mut log = log_with(&[1, 1]);
        log.append(&[ent(3, 2), ent(4, 2)]);
        assert_eq!(log.last_index(), 4);
        // Overwrite into the stable part.
        log.append(&[ent(2, 3)]);
        assert_eq!(log.last_index(), 2);
        assert_eq!(log.term(2), Ok(3));
        assert_eq!(log.term(1), Ok(1));
        // An entry of an older term is never committed by counting.
        assert!(!log.maybe_commit(1, 3));
        assert!(log.maybe_commit(2, 3));
        assert_eq!(log.committed, 2);
        assert_eq!(log.slice(1, 3, u64::MAX).unwrap().len(), 2);
    }
}
