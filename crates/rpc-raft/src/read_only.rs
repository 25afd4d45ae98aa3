//! Bookkeeping for linearizable reads that do not go through the log.
//!
//! ReadIndex: the leader records its commit index for a request, then a heartbeat round
//! numbered `seq`; once a quorum of voters answered a round `>= seq`, the leader was
//! still leader when the request arrived, and the read may be served after applying
//! the recorded index. The same acknowledged rounds give the leader lease (the tick at
//! which the newest quorum-acknowledged round was sent). This module only counts; the
//! core decides when to use it.

use std::collections::{BTreeMap, VecDeque};

use crate::message::NodeId;
use crate::progress::quorum_value;

/// A read waiting for its heartbeat round to be acknowledged by a quorum.
#[derive(Debug, Clone)]
pub(crate) struct PendingRead {
    pub(crate) ctx: Vec<u8>,
    pub(crate) from: NodeId,
    pub(crate) index: u64,
    pub(crate) seq: u64,
}

/// Pending reads and heartbeat-round acknowledgements of the current term.
#[derive(Debug, Default)]
pub(crate) struct ReadOnly {
    pending: VecDeque<PendingRead>,
    acked: BTreeMap<NodeId, u64>,
    /// Last round number handed out.
    seq: u64,
    /// (round, tick it was sent) for rounds not yet known quorum-acknowledged.
    sent: VecDeque<(u64, u64)>,
    /// Tick at which the newest quorum-acknowledged round was sent.
    lease_start: Option<u64>,
}

impl ReadOnly {
    /// Starts a heartbeat round at `now`; returns its number.
    pub(crate) fn new_round(&mut self, now: u64) -> u64 {
        self.seq += 1;
        self.sent.push_back((self.seq, now));
        self.seq
    }

    pub(crate) fn add(&mut self, read: PendingRead) {
        self.pending.push_back(read);
    }

    /// Records that `from` answered round `seq`; returns the reads now confirmed.
    pub(crate) fn ack(&mut self, me: NodeId, voters: &[NodeId], from: NodeId, seq: u64) -> Vec<PendingRead> {
        let e = self.acked.entry(from).or_insert(0);
        *e = (*e).max(seq);
        let my_seq = self.seq;
        let q = quorum_value(voters, |id| if id == me { my_seq } else { self.acked.get(&id).copied().unwrap_or(0) });
        while self.sent.front().is_some_and(|&(s, _)| s <= q) {
            let (_, tick) = self.sent.pop_front().unwrap_or_default();
            self.lease_start = Some(tick);
        }
        let mut done = Vec::new();
        while self.pending.front().is_some_and(|r| r.seq <= q) {
            done.extend(self.pending.pop_front());
        }
        done
    }

    /// Tick at which the newest quorum-acknowledged round was sent.
    pub(crate) fn lease_start(&self) -> Option<u64> {
        self.lease_start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(seq: u64) -> PendingRead {
        PendingRead { ctx: vec![seq as u8], from: 1, index: 10, seq }
    }

    #[test]
    fn reads_confirm_only_with_quorum_of_later_rounds() {
        let voters = [1, 2, 3, 4, 5];
        let mut ro = ReadOnly::default();
        let s1 = ro.new_round(100);
        ro.add(read(s1));
        let s2 = ro.new_round(105);
        ro.add(read(s2));
        // Acks of an older round do not confirm anything.
        assert!(ro.ack(1, &voters, 2, 0).is_empty());
        assert!(ro.ack(1, &voters, 2, s1).is_empty());
        assert_eq!(ro.lease_start(), None);
        let done = ro.ack(1, &voters, 3, s1);
        assert_eq!(done.len(), 1);
        assert_eq!(ro.lease_start(), Some(100));
        assert!(ro.ack(1, &voters, 4, s2).is_empty());
        assert_eq!(ro.ack(1, &voters, 5, s2).len(), 1);
        assert_eq!(ro.lease_start(), Some(105));
        assert!(ro.pending.is_empty());
    }

    #[test]
    fn single_voter_confirms_immediately() {
        let mut ro = ReadOnly::default();
        let s = ro.new_round(1);
        ro.add(read(s));
        assert_eq!(ro.ack(1, &[1], 1, s).len(), 1);
    }
}
