//! Table-driven and scenario tests of the protocol rules, through the public API.

use std::collections::BTreeMap;

use rpc_raft::codec::decode_conf_entry;
use rpc_raft::transport::{InMemoryNetwork, Transport};
use rpc_raft::{
    ConfChange, ConfState, Config, Entry, EntryKind, HardState, MemStorage, Message, MessageBody, NodeId, ProposeError,
    RawNode, ReadOnlyOption, ReadState, Role, Storage,
};

fn config(id: NodeId) -> Config {
    let mut c = Config::new(id);
    c.seed = 42;
    c
}

fn ent(index: u64, term: u64) -> Entry {
    Entry { term, index, kind: EntryKind::Normal, data: vec![index as u8].into() }
}

/// A storage holding `terms` as the log (entry i+1 has term terms[i]) and `hs`.
fn storage(voters: &[NodeId], terms: &[u64], hs: HardState) -> MemStorage {
    let mut s = MemStorage::new_with_conf(ConfState::with_voters(voters.iter().copied()));
    let ents: Vec<Entry> = terms.iter().enumerate().map(|(i, t)| ent(i as u64 + 1, *t)).collect();
    s.persist(Some(&hs), None, &ents).unwrap();
    s
}

/// Drains a node's ready, persisting it; returns its messages.
fn flush(n: &mut RawNode<MemStorage>) -> Vec<Message> {
    let mut out = Vec::new();
    while n.has_ready() {
        let rd = n.ready();
        n.persist_ready(&rd).unwrap();
        out.extend(rd.messages);
        n.advance();
    }
    out
}

struct Cluster {
    nodes: BTreeMap<NodeId, RawNode<MemStorage>>,
    net: InMemoryNetwork,
    applied: BTreeMap<NodeId, Vec<Entry>>,
    reads: BTreeMap<NodeId, Vec<ReadState>>,
    /// The data of the last snapshot each node installed.
    installed: BTreeMap<NodeId, Vec<u8>>,
}

impl Cluster {
    fn new(n: u64, tweak: impl Fn(&mut Config)) -> Self {
        let ids: Vec<NodeId> = (1..=n).collect();
        let mut nodes = BTreeMap::new();
        for &id in &ids {
            let mut c = config(id);
            c.seed = id;
            tweak(&mut c);
            let s = MemStorage::new_with_conf(ConfState::with_voters(ids.clone()));
            nodes.insert(id, RawNode::new(c, s).unwrap());
        }
        Cluster {
            nodes,
            net: InMemoryNetwork::new(ids),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            installed: BTreeMap::new(),
        }
    }

    /// Starts an empty node that a membership change will add.
    fn add_node(&mut self, id: NodeId) {
        let n = RawNode::new(config(id), MemStorage::new()).unwrap();
        self.nodes.insert(id, n);
        self.net.add(id);
    }

    fn node(&mut self, id: NodeId) -> &mut RawNode<MemStorage> {
        self.nodes.get_mut(&id).unwrap()
    }

    fn process(&mut self, id: NodeId) {
        let mut t = self.net.transport(id);
        let n = self.nodes.get_mut(&id).unwrap();
        while n.has_ready() {
            let rd = n.ready();
            n.persist_ready(&rd).unwrap();
            for m in rd.messages {
                t.send(m).unwrap();
            }
            self.applied.entry(id).or_default().extend(rd.committed_entries);
            self.reads.entry(id).or_default().extend(rd.read_states);
            if let Some(snapshot) = rd.snapshot {
                self.installed.insert(id, snapshot.data);
            }
            n.advance();
        }
    }

    /// Delivers messages until the cluster is quiet.
    fn stabilize(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        loop {
            for &id in &ids {
                self.process(id);
            }
            if self.net.is_idle() {
                return;
            }
            for &id in &ids {
                for m in self.net.drain(id) {
                    self.node(id).step(m);
                }
            }
        }
    }

    fn tick_all(&mut self, ticks: u64) {
        for _ in 0..ticks {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.node(id).tick();
            }
            self.stabilize();
        }
    }

    fn elect(&mut self, id: NodeId) {
        self.node(id).campaign();
        self.stabilize();
        assert_eq!(self.node(id).role(), Role::Leader, "node {id} failed to get elected");
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes.values().filter(|n| n.role() == Role::Leader).max_by_key(|n| n.term()).map(|n| n.id())
    }
}

#[test]
fn vote_granting_rules() {
    // (voter log terms, voter hard state, candidate (term, last_index, last_term), granted)
    let hs = |term, vote| HardState { term, vote, commit: 0 };
    type Case = (Vec<u64>, HardState, (u64, u64, u64), bool);
    let cases: Vec<Case> = vec![
        (vec![1, 1], hs(1, None), (2, 2, 1), true),
        (vec![1, 1], hs(1, None), (2, 3, 1), true),
        (vec![1, 1], hs(1, None), (2, 1, 1), false), // shorter log, same last term
        (vec![1, 2], hs(2, None), (3, 5, 1), false), // older last term loses despite length
        (vec![1, 2], hs(2, None), (3, 1, 3), true),  // newer last term wins despite length
        (vec![1], hs(2, Some(3)), (2, 1, 1), false), // already voted for 3 in term 2
        (vec![1], hs(2, Some(2)), (2, 1, 1), true),  // same candidate may ask again
        (vec![1], hs(3, None), (2, 1, 1), false),    // stale term
    ];
    for (i, (terms, h, (term, li, lt), want)) in cases.into_iter().enumerate() {
        let mut c = config(1);
        c.check_quorum = false;
        let mut n = RawNode::new(c, storage(&[1, 2, 3], &terms, h)).unwrap();
        n.step(Message {
            from: 2,
            to: 1,
            term,
            body: MessageBody::Vote { last_index: li, last_term: lt, transfer: false },
        });
        let msgs = flush(&mut n);
        let granted = msgs.iter().any(|m| m.body == MessageBody::VoteResponse { reject: false });
        assert_eq!(granted, want, "case {i}");
        if want {
            assert_eq!(n.storage().hard_state().vote, Some(2), "case {i}: vote persisted");
        }
    }
}

#[test]
fn vote_is_persisted_in_the_same_ready_as_the_reply() {
    let mut n = RawNode::new(config(1), storage(&[1, 2, 3], &[], HardState::default())).unwrap();
    n.step(Message {
        from: 2,
        to: 1,
        term: 1,
        body: MessageBody::Vote { last_index: 0, last_term: 0, transfer: false },
    });
    let rd = n.ready();
    assert_eq!(rd.hard_state.as_ref().and_then(|h| h.vote), Some(2));
    assert_eq!(rd.messages.len(), 1);
}

#[test]
fn only_a_leader_with_a_durable_term_sends_before_persisting() {
    let mut c = Cluster::new(3, |_| {});
    c.node(1).campaign();
    let rd = c.node(1).ready();
    assert!(!rd.send_before_persist, "a candidate's votes must wait for its vote to be durable");
    c.node(1).persist_ready(&rd).unwrap();
    let mut transport = c.net.transport(1);
    for m in rd.messages.iter().cloned() {
        transport.send(m).unwrap();
    }
    c.node(1).advance();
    c.stabilize();
    assert_eq!(c.node(1).role(), Role::Leader);

    c.node(1).propose(b"x".to_vec()).unwrap();
    let rd = c.node(1).ready();
    assert!(!rd.entries.is_empty() && !rd.messages.is_empty());
    assert!(rd.send_before_persist, "the leader's appends may overlap its own write");
    let mut transport = c.net.transport(1);
    for m in rd.messages.iter().cloned() {
        transport.send(m).unwrap();
    }
    c.node(1).persist_ready(&rd).unwrap();
    c.node(1).advance();
    c.stabilize();

    c.node(1).propose(b"z".to_vec()).unwrap();
    c.process(1);
    let delivered = c.net.drain(2);
    assert!(!delivered.is_empty());
    for m in delivered {
        c.node(2).step(m);
    }
    let rd = c.node(2).ready();
    assert!(!rd.entries.is_empty(), "the follower appends the leader's entry: {rd:?}");
    assert!(!rd.send_before_persist, "a follower's acknowledgement must wait for its write");
}

#[test]
fn pre_vote_does_not_change_terms() {
    let mut c = Cluster::new(3, |_| {});
    c.net.isolate(3);
    c.node(3).campaign();
    c.stabilize();
    assert_eq!(c.node(3).role(), Role::PreCandidate);
    assert_eq!(c.node(3).term(), 0, "pre-candidate keeps its term");
    c.net.heal();
    c.elect(1);
    assert_eq!(c.node(1).term(), 1);
}

#[test]
fn rejoining_node_does_not_depose_a_healthy_leader() {
    // Regression: a node cut off for a long time used to come back with a higher
    // term and force an election. With pre-vote it cannot raise its term alone.
    let mut c = Cluster::new(3, |_| {});
    c.elect(1);
    let term = c.node(1).term();
    c.net.isolate(3);
    c.tick_all(200);
    assert_eq!(c.node(3).term(), term, "isolated node did not inflate its term");
    c.net.heal();
    c.tick_all(50);
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.node(1).term(), term);
}

#[test]
fn without_pre_vote_a_rejoining_node_disrupts() {
    // The contrast case, showing what pre-vote buys.
    let mut c = Cluster::new(3, |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
    });
    c.elect(1);
    let term = c.node(1).term();
    c.net.isolate(3);
    c.tick_all(200);
    assert!(c.node(3).term() > term);
    c.net.heal();
    c.tick_all(50);
    assert!(c.node(1).term() > term, "leader was deposed by the higher term");
}

#[test]
fn check_quorum_leader_steps_down_without_majority() {
    let mut c = Cluster::new(3, |_| {});
    c.elect(1);
    c.net.isolate(1);
    c.tick_all(35);
    assert_ne!(c.node(1).role(), Role::Leader);
    assert!(matches!(c.node(1).propose(vec![1]), Err(ProposeError::NotLeader { .. })));
}

#[test]
fn followers_in_lease_ignore_votes() {
    let mut c = Cluster::new(3, |_| {});
    c.elect(1);
    // Node 2 asks for votes while node 3 still hears from the leader.
    let last = c.node(2).status().last_index;
    c.node(3).step(Message {
        from: 2,
        to: 3,
        term: 5,
        body: MessageBody::Vote { last_index: last, last_term: 1, transfer: false },
    });
    assert!(flush(c.node(3)).is_empty());
    assert_eq!(c.node(3).term(), 1, "ignored request did not bump the term");
}

#[test]
fn leader_commits_previous_term_entries_only_through_its_own() {
    // Figure 8 of the Raft paper: counting replicas of an old-term entry is not enough.
    let s = storage(&[1, 2, 3], &[1, 2], HardState { term: 2, vote: None, commit: 1 });
    let mut c = config(1);
    c.check_quorum = false;
    c.pre_vote = false;
    let mut n = RawNode::new(c, s).unwrap();
    n.campaign();
    flush(&mut n);
    n.step(Message { from: 2, to: 1, term: 3, body: MessageBody::VoteResponse { reject: false } });
    flush(&mut n);
    assert_eq!(n.role(), Role::Leader);
    // Follower 2 holds entry 2 (term 2) but not yet the leader's no-op at 3.
    let ack = |index| Message {
        from: 2,
        to: 1,
        term: 3,
        body: MessageBody::AppendResponse { index, reject: false, reject_hint: 0, hint_term: 0 },
    };
    n.step(ack(2));
    flush(&mut n);
    assert_eq!(n.status().commit, 1, "term-2 entry on a majority is not committed");
    n.step(ack(3));
    flush(&mut n);
    assert_eq!(n.status().commit, 3, "committing the term-3 no-op commits entry 2 too");
}

#[test]
fn follower_log_consistency_table() {
    // (follower terms, committed, append (prev_index, prev_term, entry terms),
    //  expected (reject, response index), expected follower terms)
    type Case = (Vec<u64>, u64, (u64, u64, Vec<u64>), (bool, u64), Vec<u64>);
    let cases: Vec<Case> = vec![
        (vec![1, 1], 0, (2, 1, vec![1]), (false, 3), vec![1, 1, 1]),
        (vec![1, 1], 0, (3, 1, vec![1]), (true, 3), vec![1, 1]), // gap
        (vec![1, 1], 0, (2, 2, vec![2]), (true, 2), vec![1, 1]), // prev term mismatch
        (vec![1, 1, 1], 0, (1, 1, vec![2]), (false, 2), vec![1, 2]), // conflict truncates
        (vec![1, 1, 1], 0, (1, 1, vec![1]), (false, 2), vec![1, 1, 1]), // stale, no truncation
        (vec![1, 1, 2], 2, (1, 1, vec![1]), (false, 2), vec![1, 1, 2]), // below commit
        (vec![1, 2, 2], 0, (0, 0, vec![1, 3, 3, 3]), (false, 4), vec![1, 3, 3, 3]),
    ];
    for (i, (terms, commit, (pi, pt, ents), (want_reject, want_index), want_terms)) in cases.into_iter().enumerate() {
        let hs = HardState { term: 3, vote: None, commit };
        let mut n = RawNode::new(config(1), storage(&[1, 2, 3], &terms, hs)).unwrap();
        let entries: Vec<Entry> = ents.iter().enumerate().map(|(k, t)| ent(pi + 1 + k as u64, *t)).collect();
        n.step(Message {
            from: 2,
            to: 1,
            term: 3,
            body: MessageBody::Append { prev_index: pi, prev_term: pt, entries, commit: 0 },
        });
        let msgs = flush(&mut n);
        let (reject, index) = msgs
            .iter()
            .find_map(|m| match m.body {
                MessageBody::AppendResponse { reject, index, .. } => Some((reject, index)),
                _ => None,
            })
            .expect("a response");
        assert_eq!((reject, index), (want_reject, want_index), "case {i}");
        let s = n.storage();
        let got: Vec<u64> = (1..=s.last_index()).map(|i| s.term(i).unwrap()).collect();
        assert_eq!(got, want_terms, "case {i}");
    }
}

#[test]
fn reject_hint_skips_a_whole_conflicting_term() {
    // Follower has many entries of term 2 the leader never had; one round trip must
    // move the leader's probe past all of them.
    let hs = HardState { term: 3, vote: None, commit: 1 };
    let mut f = RawNode::new(config(2), storage(&[1, 2, 3], &[1, 2, 2, 2, 2, 2, 2], hs)).unwrap();
    f.step(Message {
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::Append { prev_index: 7, prev_term: 3, entries: vec![], commit: 1 },
    });
    let msgs = flush(&mut f);
    let hint = msgs
        .iter()
        .find_map(|m| match m.body {
            MessageBody::AppendResponse { reject: true, reject_hint, hint_term, .. } => Some((reject_hint, hint_term)),
            _ => None,
        })
        .unwrap();
    assert_eq!(hint, (7, 2), "largest index with term <= 3, and its term");
    // The leader (log: 1, 1, 3...) maps term 2 to its own log: last index with term <= 2 is 2.
}

#[test]
fn replication_batches_and_pipelines() {
    let mut c = Cluster::new(3, |cfg| {
        cfg.max_entries_per_msg = 10;
        cfg.max_inflight_msgs = 3;
    });
    c.elect(1);
    for i in 0..100u8 {
        c.node(1).propose(vec![i]).unwrap();
    }
    c.process(1);
    let to2: Vec<Message> = c.net.drain(2);
    let appends: Vec<usize> = to2
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::Append { entries, .. } => Some(entries.len()),
            _ => None,
        })
        .collect();
    assert_eq!(appends, vec![10, 10, 10], "three batches of 10 in flight, then paused");
    for m in to2 {
        c.node(2).step(m);
    }
    c.stabilize();
    let commit = c.node(1).status().commit;
    assert_eq!(commit, c.node(1).status().last_index);
    assert_eq!(c.applied[&2].len() as u64, commit);
}

#[test]
fn read_index_needs_a_heartbeat_quorum() {
    let mut c = Cluster::new(3, |_| {});
    c.elect(1);
    c.node(1).read_index(b"r1".to_vec()).unwrap();
    c.process(1);
    assert!(c.reads.get(&1).is_none_or(|r| r.is_empty()), "not before the quorum answers");
    c.stabilize();
    let commit = c.node(1).status().commit;
    assert_eq!(c.reads[&1], vec![ReadState { index: commit, ctx: b"r1".to_vec() }]);
    // Followers forward to the leader.
    c.node(3).read_index(b"r3".to_vec()).unwrap();
    c.stabilize();
    assert_eq!(c.reads[&3], vec![ReadState { index: commit, ctx: b"r3".to_vec() }]);
}

#[test]
fn deposed_leader_cannot_confirm_reads() {
    // Regression: a leader cut off by a partition must not answer ReadIndex from its
    // stale commit index while a new leader accepts writes.
    let mut c = Cluster::new(3, |cfg| cfg.check_quorum = false);
    c.elect(1);
    c.net.isolate(1);
    c.elect(2);
    c.node(2).propose(b"new".to_vec()).unwrap();
    c.stabilize();
    assert_eq!(c.node(1).role(), Role::Leader, "old leader does not know yet");
    c.node(1).read_index(b"stale?".to_vec()).unwrap();
    c.tick_all(20);
    assert!(c.reads.get(&1).is_none_or(|r| r.is_empty()));
}

#[test]
fn lease_reads_skip_the_round_trip_only_while_the_lease_holds() {
    let mut c = Cluster::new(3, |cfg| cfg.read_only_option = ReadOnlyOption::LeaseBased);
    c.elect(1);
    c.tick_all(5); // one heartbeat round acknowledged: lease established
    c.node(1).read_index(b"fast".to_vec()).unwrap();
    c.process(1);
    assert_eq!(c.reads[&1].len(), 1, "served from the lease without messages");
    c.net.isolate(1);
    c.tick_all(15);
    c.node(1).read_index(b"slow".to_vec()).unwrap();
    c.process(1);
    assert_eq!(c.reads[&1].len(), 1, "lease expired: needs a quorum it cannot get");
}

#[test]
fn leadership_transfer() {
    let mut c = Cluster::new(3, |_| {});
    c.elect(1);
    c.node(1).propose(b"x".to_vec()).unwrap();
    c.stabilize();
    c.node(1).transfer_leader(3).unwrap();
    c.stabilize();
    assert_eq!(c.leader(), Some(3));
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(3).transfer_leader(7), Err(ProposeError::UnknownTransferTarget(7)));
}

#[test]
fn membership_rules_and_learners() {
    let mut c = Cluster::new(3, |_| {});
    // A fresh leader may not change membership before committing in its term.
    c.node(1).campaign();
    while c.node(1).role() != Role::Leader {
        for id in 1..=3 {
            c.process(id);
        }
        for id in 1..=3 {
            for m in c.net.drain(id) {
                // Hold back append acknowledgements so the no-op stays uncommitted.
                if !matches!(m.body, MessageBody::AppendResponse { .. }) {
                    c.node(id).step(m);
                }
            }
        }
    }
    assert_eq!(c.node(1).propose_conf_change(ConfChange::AddLearner(4)), Err(ProposeError::LeaderNotReady));
    c.stabilize();
    c.add_node(4);
    let index = c.node(1).propose_conf_change_with(ConfChange::AddLearner(4), b"n4@addr".to_vec()).unwrap();
    assert_eq!(c.node(1).propose_conf_change(ConfChange::AddVoter(5)), Err(ProposeError::ConfChangePending));
    c.stabilize();
    let conf = c.node(1).status().conf;
    assert_eq!(conf.learners, vec![4]);
    let entry = c.node(4).storage().entries(index, index + 1, u64::MAX).unwrap().remove(0);
    assert_eq!(decode_conf_entry(&entry.data), Ok((conf.clone(), b"n4@addr".to_vec())), "the context travels");
    assert_eq!(c.node(1).match_index(4), Some(c.node(1).status().last_index), "the leader sees the learner caught up");
    assert_eq!(c.node(2).match_index(4), None, "only the leader tracks progress");
    assert_eq!(conf.voters, vec![1, 2, 3]);
    assert_eq!(
        c.node(1).propose_conf_change(ConfChange::AddLearner(4)),
        Err(ProposeError::InvalidConfChange("already a learner"))
    );
    assert_eq!(c.node(4).status().commit, c.node(1).status().commit, "learner replicates");
    assert_eq!(c.node(4).role(), Role::Follower);
    c.node(1).propose_conf_change(ConfChange::AddVoter(4)).unwrap();
    c.stabilize();
    c.node(1).propose_conf_change(ConfChange::RemoveNode(3)).unwrap();
    c.stabilize();
    assert_eq!(c.node(2).status().conf.voters, vec![1, 2, 4]);
    // The leader removes itself: it steps down once that is committed.
    c.node(1).propose_conf_change(ConfChange::RemoveNode(1)).unwrap();
    c.stabilize();
    c.tick_all(40);
    let leader = c.leader().unwrap();
    assert!(leader == 2 || leader == 4, "a remaining voter leads, got {leader}");
    assert_eq!(c.node(leader).status().conf.voters, vec![2, 4]);
}

#[test]
fn lagging_follower_catches_up_through_chunked_snapshot() {
    let mut c = Cluster::new(3, |cfg| cfg.max_snapshot_chunk = 7);
    c.elect(1);
    c.net.isolate(3);
    for i in 0..30u8 {
        c.node(1).propose(vec![i; 5]).unwrap();
        c.stabilize();
    }
    let image = b"state machine image bigger than one chunk".to_vec();
    c.node(1).compact(image.clone()).unwrap();
    assert!(c.node(1).storage().first_index() > 2);
    c.net.heal();
    c.tick_all(10);
    assert_eq!(c.installed[&3], image, "snapshot reassembled from chunks");
    assert_eq!(c.node(3).status().commit, c.node(1).status().commit);
    c.node(1).propose(b"after".to_vec()).unwrap();
    c.stabilize();
    assert_eq!(c.applied[&3].last().unwrap().data[..], b"after"[..], "replication resumed");
}

#[test]
fn follower_crash_before_fsync_does_not_lose_a_committed_write() {
    // Regression: a follower that acknowledged an entry it had not yet fsynced, then
    // lost it in a crash, let the leader count a replica that did not exist. Here the
    // acknowledgement is part of the Ready whose persist fails, so it is never sent.
    use rpc_raft::storage::{DurableOptions, DurableStorage, FaultFs};
    let conf = ConfState::with_voters([1, 2, 3]);
    let opts = DurableOptions::default();
    let fs = FaultFs::new();
    let open = |fs: &FaultFs| {
        let s = DurableStorage::open(fs.clone(), "n2", opts.clone(), conf.clone()).unwrap();
        RawNode::new(config(2), s).unwrap()
    };
    let mut leader = RawNode::new(config(1), MemStorage::new_with_conf(conf.clone())).unwrap();
    let mut follower = open(&fs);
    let to = |msgs: Vec<Message>, id: NodeId| -> Vec<Message> { msgs.into_iter().filter(|m| m.to == id).collect() };
    let pump = |leader: &mut RawNode<MemStorage>, follower: &mut RawNode<DurableStorage<FaultFs>>| {
        let mut inbox = flush(leader);
        for _ in 0..20 {
            let mut out = Vec::new();
            for m in to(std::mem::take(&mut inbox), 2) {
                follower.step(m);
            }
            while follower.has_ready() {
                let rd = follower.ready();
                follower.persist_ready(&rd).unwrap();
                out.extend(rd.messages);
                follower.advance();
            }
            for m in out {
                leader.step(m);
            }
            inbox = flush(leader);
        }
    };
    leader.campaign();
    pump(&mut leader, &mut follower);
    assert_eq!(leader.role(), Role::Leader);
    let index = leader.propose(b"precious".to_vec()).unwrap();
    let appends = to(flush(&mut leader), 2);
    for m in appends {
        follower.step(m);
    }
    let rd = follower.ready();
    assert!(rd.entries.iter().any(|e| e.index == index));
    fs.crash_after(1);
    assert!(follower.persist_ready(&rd).is_err(), "power fails mid-persist");
    // The Ready's acknowledgement is never sent; the follower reboots from disk.
    drop(rd);
    drop(follower);
    fs.power_loss(7);
    let mut follower = open(&fs);
    assert!(follower.storage().last_index() < index, "the unsynced entry is gone");
    assert!(leader.status().commit < index, "leader did not count the lost replica");
    for _ in 0..5 {
        leader.tick();
    }
    pump(&mut leader, &mut follower);
    assert!(leader.status().commit >= index, "committed once really replicated");
    drop(follower);
    fs.power_loss(8);
    let follower = open(&fs);
    let got = follower.storage().entries(index, index + 1, u64::MAX).unwrap();
    assert_eq!(got[0].data[..], b"precious"[..], "acknowledged entry survives power loss");
}

#[test]
fn garbage_messages_do_not_panic() {
    // Structurally valid but semantically absurd messages, in every role.
    for seed in 0..30 {
        garbage_round(seed);
    }
}

fn garbage_round(seed: u64) {
    use rpc_raft::codec::{decode_message, encode_message};
    use rpc_raft::rng::Rng;
    let mut rng = Rng::new(seed);
    let mut c = Cluster::new(3, |_| {});
    c.elect(1);
    for round in 0..500u64 {
        let to = 1 + round % 3;
        let n = |rng: &mut Rng| match rng.range(0, 20) {
            0 => u64::MAX,
            1 => u64::MAX - 1,
            _ => rng.range(0, 12),
        };
        let body = match rng.range(0, 9) {
            0 => MessageBody::Append {
                prev_index: n(&mut rng),
                prev_term: n(&mut rng),
                entries: (0..rng.range(0, 5)).map(|_| ent(n(&mut rng), n(&mut rng))).collect(),
                commit: n(&mut rng),
            },
            1 => MessageBody::AppendResponse {
                index: n(&mut rng).saturating_mul(1000),
                reject: rng.chance(0.5),
                reject_hint: n(&mut rng),
                hint_term: n(&mut rng),
            },
            2 => MessageBody::Heartbeat { commit: n(&mut rng), seq: n(&mut rng) },
            3 => MessageBody::HeartbeatResponse { seq: n(&mut rng) },
            4 => MessageBody::SnapshotResponse { index: n(&mut rng), next_offset: n(&mut rng).saturating_mul(1000) },
            7 => MessageBody::InstallSnapshot {
                meta: rpc_raft::SnapshotMeta {
                    index: n(&mut rng),
                    term: n(&mut rng),
                    conf: ConfState::with_voters([1, 2, 3]),
                },
                offset: n(&mut rng),
                data: vec![1, 2, 3],
                done: rng.chance(0.5),
            },
            5 => MessageBody::ReadIndexResponse { ctx: vec![1], index: n(&mut rng) },
            6 => MessageBody::Vote { last_index: n(&mut rng), last_term: n(&mut rng), transfer: rng.chance(0.1) },
            _ => MessageBody::PreVote { last_index: n(&mut rng), last_term: n(&mut rng) },
        };
        let m = Message { from: 1 + rng.range(0, 3), to, term: c.node(to).term() + rng.range(0, 2), body };
        let m = decode_message(&encode_message(&m)).unwrap();
        c.node(to).step(m);
        c.process(to);
        if round % 50 == 0 {
            c.stabilize();
        }
    }
}
