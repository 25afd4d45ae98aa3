//! Raft's safety properties, checked incrementally as the simulator runs.
//!
//! Election Safety (one leader per term), Leader Append-Only (a leader never rewrites
//! its persisted log in its term), Log Matching (same index and term imply the same
//! prefix, checked with a hash chain over each node's persisted log), Leader
//! Completeness (a new leader holds every entry known committed before its term) and
//! State Machine Safety (no two nodes apply different entries at an index; committed
//! entries never change). Owns only the bookkeeping needed for those checks.

use std::collections::HashMap;

use crate::message::{Entry, NodeId, SnapshotMeta};

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) fn data_hash(data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in data {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn entry_hash(prev: u64, e: &Entry) -> u64 {
    mix(prev ^ mix(e.term ^ mix(e.index ^ data_hash(&e.data))))
}

/// Hash chain over one node's persisted log, starting at its snapshot.
#[derive(Clone, Debug)]
struct Chain {
    base: u64,
    hashes: Vec<u64>,
}

impl Chain {
    fn last(&self) -> u64 {
        self.base + self.hashes.len() as u64 - 1
    }
    fn hash(&self, i: u64) -> Option<u64> {
        if i < self.base {
            return None;
        }
        self.hashes.get((i - self.base) as usize).copied()
    }
}

struct Committed {
    hash: u64,
    /// Term of the node that first observed the commit (a term in which it was committed).
    observed_in: u64,
}

pub(crate) struct Invariants {
    leaders: HashMap<u64, NodeId>,
    by_position: HashMap<(u64, u64), u64>,
    chains: HashMap<NodeId, Chain>,
    leader_persist: HashMap<NodeId, (u64, u64)>,
    committed: Vec<Committed>,
    checked_commit: HashMap<NodeId, u64>,
    applied: Vec<(u64, u64)>,
}

impl Invariants {
    pub(crate) fn new() -> Self {
        let mut by_position = HashMap::new();
        by_position.insert((0, 0), 0);
        Invariants {
            leaders: HashMap::new(),
            by_position,
            chains: HashMap::new(),
            leader_persist: HashMap::new(),
            committed: Vec::new(),
            checked_commit: HashMap::new(),
            applied: Vec::new(),
        }
    }

    fn chain(&mut self, n: NodeId) -> &mut Chain {
        self.chains.entry(n).or_insert_with(|| Chain { base: 0, hashes: vec![0] })
    }

    pub(crate) fn leader_count(&self) -> usize {
        self.leaders.len()
    }

    /// A node persisted a snapshot and/or entries while in `(term, is_leader)`.
    pub(crate) fn on_persist(
        &mut self,
        n: NodeId,
        term: u64,
        is_leader: bool,
        snapshot: Option<&SnapshotMeta>,
        entries: &[Entry],
    ) -> Result<(), String> {
        if let Some(s) = snapshot {
            if is_leader {
                return Err(format!("Leader Append-Only: leader {n} installed a snapshot"));
            }
            let h = *self
                .by_position
                .get(&(s.index, s.term))
                .ok_or_else(|| format!("snapshot ({}, {}) at {n} matches no entry ever persisted", s.index, s.term))?;
            self.chains.insert(n, Chain { base: s.index, hashes: vec![h] });
        }
        let Some(first) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        let chain = self.chain(n);
        let last = chain.last();
        if first <= chain.base || first > last + 1 {
            return Err(format!("node {n} persisted entries from {first} onto log ({}..={last})", chain.base));
        }
        if is_leader {
            if let Some(&(t, l)) = self.leader_persist.get(&n) {
                if t == term && first <= l {
                    return Err(format!(
                        "Leader Append-Only: leader {n} of term {term} rewrote its log from {first} (had {l})"
                    ));
                }
            }
        }
        let chain = self.chain(n);
        chain.hashes.truncate((first - chain.base) as usize);
        let mut prev = *chain.hashes.last().unwrap_or(&0);
        let mut new = Vec::with_capacity(entries.len());
        for e in entries {
            prev = entry_hash(prev, e);
            new.push((e.index, e.term, prev));
        }
        chain.hashes.extend(new.iter().map(|x| x.2));
        let new_last = chain.last();
        if is_leader {
            self.leader_persist.insert(n, (term, new_last));
        } else {
            self.leader_persist.remove(&n);
        }
        for (i, t, h) in new {
            match self.by_position.get(&(i, t)) {
                Some(&old) if old != h => {
                    return Err(format!(
                        "Log Matching: node {n} has entry ({i}, term {t}) with a different prefix than another node"
                    ))
                }
                Some(_) => {}
                None => {
                    self.by_position.insert((i, t), h);
                }
            }
        }
        Ok(())
    }

    /// A node restarted with this persisted snapshot and log (a power loss may have
    /// dropped unsynced entries, or kept some of an interrupted write).
    pub(crate) fn on_recover(&mut self, n: NodeId, snapshot: &SnapshotMeta, entries: &[Entry]) -> Result<(), String> {
        self.leader_persist.remove(&n);
        self.chains.remove(&n);
        if snapshot.index > 0 {
            self.on_persist(n, 0, false, Some(snapshot), &[])?;
        }
        self.on_persist(n, 0, false, None, entries)
    }

    /// A node in `term` reports commit index `commit`.
    pub(crate) fn on_commit(&mut self, n: NodeId, term: u64, commit: u64) -> Result<(), String> {
        let from = self.checked_commit.get(&n).copied().unwrap_or(0) + 1;
        if commit < from {
            return Ok(());
        }
        let chain = self.chain(n).clone();
        if commit > chain.last() {
            return Err(format!("node {n} commit {commit} beyond its persisted log {}", chain.last()));
        }
        for i in from.max(chain.base + 1)..=commit {
            let Some(h) = chain.hash(i) else { continue };
            let idx = (i - 1) as usize;
            if idx < self.committed.len() {
                if self.committed[idx].hash != h {
                    return Err(format!("State Machine Safety: node {n} committed a different entry at {i}"));
                }
            } else if idx == self.committed.len() {
                self.committed.push(Committed { hash: h, observed_in: term });
            }
        }
        self.checked_commit.insert(n, commit);
        Ok(())
    }

    /// A node became leader of `term`.
    pub(crate) fn on_leader(&mut self, n: NodeId, term: u64) -> Result<(), String> {
        if let Some(&other) = self.leaders.get(&term) {
            if other != n {
                return Err(format!("Election Safety: nodes {other} and {n} both leader in term {term}"));
            }
            return Ok(());
        }
        self.leaders.insert(term, n);
        let Some(pos) = self.committed.iter().rposition(|c| c.observed_in < term) else {
            return Ok(());
        };
        let i = pos as u64 + 1;
        let want = self.committed[pos].hash;
        let chain = self.chain(n);
        if i <= chain.base {
            return Ok(());
        }
        match chain.hash(i) {
            Some(h) if h == want => Ok(()),
            _ => Err(format!("Leader Completeness: leader {n} of term {term} lacks committed entry {i}")),
        }
    }

    /// A node applied `e`.
    pub(crate) fn on_apply(&mut self, n: NodeId, e: &Entry) -> Result<(), String> {
        let v = (e.term, data_hash(&e.data));
        let idx = (e.index - 1) as usize;
        if idx < self.applied.len() {
            if self.applied[idx] != v {
                return Err(format!("State Machine Safety: node {n} applied a different entry at {}", e.index));
            }
        } else if idx == self.applied.len() {
            self.applied.push(v);
        }
        Ok(())
    }

    pub(crate) fn committed_len(&self) -> u64 {
        self.committed.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::EntryKind;

    fn e(index: u64, term: u64, d: u8) -> Entry {
        Entry { term, index, kind: EntryKind::Normal, data: vec![d].into() }
    }

    #[test]
    fn detects_each_violation() {
        let mut inv = Invariants::new();
        inv.on_leader(1, 1).unwrap();
        assert!(inv.on_leader(2, 1).unwrap_err().contains("Election Safety"));

        inv.on_persist(1, 1, true, None, &[e(1, 1, 0), e(2, 1, 0)]).unwrap();
        let err = inv.on_persist(1, 1, true, None, &[e(2, 1, 9)]).unwrap_err();
        assert!(err.contains("Leader Append-Only"), "{err}");

        let mut inv = Invariants::new();
        inv.on_persist(1, 1, false, None, &[e(1, 1, 0), e(2, 2, 0)]).unwrap();
        let err = inv.on_persist(2, 2, false, None, &[e(1, 1, 7), e(2, 2, 0)]).unwrap_err();
        assert!(err.contains("Log Matching"), "{err}");

        let mut inv = Invariants::new();
        inv.on_persist(1, 1, false, None, &[e(1, 1, 0)]).unwrap();
        inv.on_commit(1, 1, 1).unwrap();
        inv.on_persist(2, 2, false, None, &[e(1, 2, 0)]).unwrap();
        assert!(inv.on_commit(2, 2, 1).unwrap_err().contains("State Machine Safety"));
        assert!(inv.on_leader(2, 3).unwrap_err().contains("Leader Completeness"));

        let mut inv = Invariants::new();
        inv.on_apply(1, &e(1, 1, 0)).unwrap();
        assert!(inv.on_apply(2, &e(1, 1, 1)).unwrap_err().contains("State Machine Safety"));
    }
}
