//! The leader's view of each follower: replication progress and flow control.
//!
//! Owns per-peer state (match/next index, probe/replicate/snapshot state, in-flight
//! window, liveness) and quorum arithmetic. It does not send anything.

use std::collections::{BTreeMap, VecDeque};

use crate::message::{ConfState, NodeId, Snapshot};

/// How the leader currently replicates to a peer (as in etcd).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    /// Next index unknown: send one append at a time and wait for the answer.
    Probe,
    /// Follower is in sync: stream appends up to the in-flight window.
    Replicate,
    /// Follower needs a snapshot, which is being transferred.
    Snapshot,
}

/// Ring of last indexes of in-flight appends.
#[derive(Debug, Clone)]
pub(crate) struct Inflights {
    buf: VecDeque<u64>,
    cap: usize,
}

impl Inflights {
    pub(crate) fn new(cap: usize) -> Self {
        Inflights { buf: VecDeque::new(), cap }
    }
    pub(crate) fn full(&self) -> bool {
        self.buf.len() >= self.cap
    }
    pub(crate) fn add(&mut self, last: u64) {
        self.buf.push_back(last);
    }
    pub(crate) fn free_le(&mut self, to: u64) {
        while self.buf.front().is_some_and(|&i| i <= to) {
            self.buf.pop_front();
        }
    }
    pub(crate) fn free_first(&mut self) {
        self.buf.pop_front();
    }
    pub(crate) fn reset(&mut self) {
        self.buf.clear();
    }
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }
}

/// An outgoing chunked snapshot transfer.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotTransfer {
    pub(crate) snapshot: Snapshot,
    pub(crate) offset: u64,
    pub(crate) in_flight: bool,
}

/// Replication state of one peer.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    pub(crate) matched: u64,
    pub(crate) next: u64,
    pub(crate) state: ProgressState,
    /// In probe state: an append is outstanding.
    pub(crate) probe_sent: bool,
    pub(crate) inflights: Inflights,
    pub(crate) pending_snapshot: u64,
    pub(crate) transfer: Option<SnapshotTransfer>,
    /// Heard from since the last check-quorum round.
    pub(crate) recent_active: bool,
}

impl Progress {
    pub(crate) fn new(next: u64, max_inflight: usize) -> Self {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::new(max_inflight),
            pending_snapshot: 0,
            transfer: None,
            recent_active: false,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.transfer = None;
        self.state = state;
        self.inflights.reset();
    }

    pub(crate) fn become_probe(&mut self) {
        let from_snapshot = self.state == ProgressState::Snapshot;
        let pending = self.pending_snapshot;
        self.reset_state(ProgressState::Probe);
        self.next = if from_snapshot { (self.matched + 1).max(pending + 1) } else { self.matched + 1 };
    }

    pub(crate) fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched + 1;
    }

    pub(crate) fn become_snapshot(&mut self, snapshot: Snapshot) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot.meta.index;
        self.transfer = Some(SnapshotTransfer { snapshot, offset: 0, in_flight: false });
    }

    /// Records a successful append up to `n`; returns whether `matched` moved.
    pub(crate) fn maybe_update(&mut self, n: u64) -> bool {
        let updated = n > self.matched;
        if updated {
            self.matched = n;
            self.probe_sent = false;
        }
        self.next = self.next.max(n + 1);
        updated
    }

    /// Handles a rejection of the append whose previous index was `rejected`.
    /// Returns false when the rejection is stale.
    pub(crate) fn maybe_decr_to(&mut self, rejected: u64, match_hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        if self.next == 0 || self.next - 1 != rejected {
            return false;
        }
        self.next = rejected.min(match_hint.saturating_add(1)).max(self.matched + 1);
        self.probe_sent = false;
        true
    }

    pub(crate) fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }

    /// Bookkeeping after sending an append whose last entry is `last` (if any).
    pub(crate) fn sent_entries(&mut self, last: Option<u64>) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last {
                    self.next = last + 1;
                    self.inflights.add(last);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {}
        }
    }
}

/// Largest value that a majority of `voters` has reached, reading each voter's value
/// through `value` (missing voters count as 0). `u64::MAX` for an empty voter set.
pub(crate) fn quorum_value(voters: &[NodeId], mut value: impl FnMut(NodeId) -> u64) -> u64 {
    if voters.is_empty() {
        return u64::MAX;
    }
    let mut vals: Vec<u64> = voters.iter().map(|&v| value(v)).collect();
    vals.sort_unstable_by(|a, b| b.cmp(a));
    vals[voters.len() / 2]
}

/// Outcome of an election tally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VoteResult {
    Won,
    Lost,
    Pending,
}

/// Progress of every member plus the current membership and election votes.
#[derive(Debug)]
pub(crate) struct Tracker {
    pub(crate) conf: ConfState,
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    pub(crate) votes: BTreeMap<NodeId, bool>,
    max_inflight: usize,
}

impl Tracker {
    pub(crate) fn new(max_inflight: usize) -> Self {
        Tracker { conf: ConfState::default(), progress: BTreeMap::new(), votes: BTreeMap::new(), max_inflight }
    }

    /// Switches to `conf`, keeping the progress of members that stay.
    pub(crate) fn set_conf(&mut self, conf: ConfState, next: u64) {
        self.progress.retain(|id, _| conf.is_voter(*id) || conf.is_learner(*id));
        for id in conf.members() {
            self.progress.entry(id).or_insert_with(|| Progress::new(next, self.max_inflight));
        }
        self.conf = conf;
    }

    pub(crate) fn reset_progress(&mut self, next: u64) {
        for pr in self.progress.values_mut() {
            *pr = Progress::new(next, self.max_inflight);
        }
    }

    pub(crate) fn committed_index(&self) -> u64 {
        quorum_value(&self.conf.voters, |id| self.progress.get(&id).map_or(0, |p| p.matched))
    }

    pub(crate) fn record_vote(&mut self, id: NodeId, granted: bool) {
        self.votes.entry(id).or_insert(granted);
    }

    pub(crate) fn tally(&self) -> VoteResult {
        let voters = &self.conf.voters;
        let granted = voters.iter().filter(|v| self.votes.get(v) == Some(&true)).count();
        let rejected = voters.iter().filter(|v| self.votes.get(v) == Some(&false)).count();
        let q = voters.len() / 2 + 1;
        if granted >= q {
            VoteResult::Won
        } else if voters.len() - rejected < q {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }

    /// Whether a quorum of voters (counting `me`) has been active recently.
    pub(crate) fn quorum_active(&self, me: NodeId) -> bool {
        let active = self
            .conf
            .voters
            .iter()
            .filter(|&&v| v == me || self.progress.get(&v).is_some_and(|p| p.recent_active))
            .count();
        active > self.conf.voters.len() / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_value_table() {
        let cases: Vec<(Vec<u64>, u64)> = vec![
            (vec![5], 5),
            (vec![5, 3], 3),
            (vec![5, 3, 1], 3),
            (vec![1, 3, 5, 7], 3),
            (vec![9, 9, 1, 1, 1], 1),
            (vec![9, 9, 9, 1, 1], 9),
        ];
        for (vals, want) in cases {
            let voters: Vec<u64> = (1..=vals.len() as u64).collect();
            assert_eq!(quorum_value(&voters, |id| vals[id as usize - 1]), want, "{vals:?}");
        }
    }

    #[test]
    fn tally_table() {
        type Case = (usize, Vec<(u64, bool)>, VoteResult);
        let cases: Vec<Case> = vec![
            (1, vec![(1, true)], VoteResult::Won),
            (3, vec![(1, true)], VoteResult::Pending),
            (3, vec![(1, true), (2, true)], VoteResult::Won),
            (3, vec![(1, true), (2, false), (3, false)], VoteResult::Lost),
            (4, vec![(1, true), (2, true)], VoteResult::Pending),
            (4, vec![(1, true), (2, false), (3, false)], VoteResult::Lost),
            (5, vec![(1, true), (2, true), (3, true)], VoteResult::Won),
        ];
        for (n, votes, want) in cases {
            let mut t = Tracker::new(4);
            t.set_conf(ConfState::with_voters(1..=n as u64), 1);
            for (id, g) in votes.clone() {
                t.record_vote(id, g);
            }
            assert_eq!(t.tally(), want, "{n} {votes:?}");
        }
    }

    #[test]
    fn flow_control() {
        let mut p = Progress::new(5, 2);
        assert!(!p.is_paused());
        p.sent_entries(Some(5));
        assert!(p.is_paused(), "probe sends one at a time");
        assert!(p.maybe_update(5));
        p.become_replicate();
        p.sent_entries(Some(6));
        p.sent_entries(Some(7));
        assert!(p.is_paused());
        assert_eq!(p.next, 8);
        p.inflights.free_le(6);
        assert_eq!(p.inflights.len(), 1);
        assert!(!p.is_paused());
        // Stale rejection in replicate is ignored; a fresh one falls back to match + 1.
        assert!(!p.maybe_decr_to(5, 0));
        assert!(p.maybe_decr_to(7, 0));
        assert_eq!(p.next, 6);
        p.become_probe();
        // Probe uses the hint but never goes below match + 1.
        p.next = 10;
        assert!(p.maybe_decr_to(9, 2));
        assert_eq!(p.next, 6);
        assert!(!p.maybe_decr_to(9, 2), "stale: next - 1 != rejected");
    }
}
