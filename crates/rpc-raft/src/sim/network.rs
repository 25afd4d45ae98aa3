//! The simulated network: per-message drop, duplication and delay (which reorders),
//! plus symmetric and one-way partitions. Owns only messages in flight.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};

use crate::message::{Message, NodeId};
use crate::rng::Rng;

struct InFlight {
    at: u64,
    seq: u64,
    msg: Message,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    // Reversed so the binary heap pops the earliest delivery first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// Fault parameters of the network.
#[derive(Clone, Debug)]
pub(crate) struct NetFaults {
    pub(crate) drop: f64,
    pub(crate) duplicate: f64,
    pub(crate) max_delay: u64,
}

pub(crate) struct Network {
    queue: BinaryHeap<InFlight>,
    seq: u64,
    /// Directed links that currently lose everything.
    blocked: HashSet<(NodeId, NodeId)>,
    pub(crate) faults: NetFaults,
}

impl Network {
    pub(crate) fn new(faults: NetFaults) -> Self {
        Network { queue: BinaryHeap::new(), seq: 0, blocked: HashSet::new(), faults }
    }

    pub(crate) fn send(&mut self, m: Message, now: u64, rng: &mut Rng) {
        if self.blocked.contains(&(m.from, m.to)) || rng.chance(self.faults.drop) {
            return;
        }
        if rng.chance(self.faults.duplicate) {
            self.push(m.clone(), now + rng.range(0, self.faults.max_delay + 1));
        }
        self.push(m, now + rng.range(0, self.faults.max_delay + 1));
    }

    fn push(&mut self, msg: Message, at: u64) {
        self.seq += 1;
        self.queue.push(InFlight { at, seq: self.seq, msg });
    }

    /// Next message due at or before `now` whose link is not cut.
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<Message> {
        while self.queue.peek().is_some_and(|f| f.at <= now) {
            let f = self.queue.pop()?;
            if !self.blocked.contains(&(f.msg.from, f.msg.to)) {
                return Some(f.msg);
            }
        }
        None
    }

    pub(crate) fn heal(&mut self) {
        self.blocked.clear();
    }

    pub(crate) fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    pub(crate) fn isolate(&mut self, node: NodeId, all: &[NodeId], one_way: bool) {
        for &o in all.iter().filter(|&&o| o != node) {
            self.block(node, o);
            if !one_way {
                self.block(o, node);
            }
        }
    }
}
