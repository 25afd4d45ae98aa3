//! The protocol: roles, terms, elections, replication, commit, reads, snapshots,
//! membership and leadership transfer, as a deterministic state machine.
//!
//! `Raft` consumes messages, ticks and requests, and produces outgoing messages,
//! read states and log changes that [`crate::node::RawNode`] packages into a `Ready`.
//! It never performs I/O, reads a clock or uses ambient randomness.
//!
//! Membership uses single-server changes (Raft thesis §4.1): a configuration takes
//! effect as soon as its entry is appended to a log, at most one change is
//! uncommitted at a time, and a leader proposes a change only after committing an
//! entry of its own term (the fix for the single-server-change bug).

use bytes::Bytes;
use std::mem;

use crate::codec::{decode_conf_entry, encode_conf_entry};
use crate::config::Config;
use crate::error::{Error, ProposeError};
use crate::log::RaftLog;
use crate::message::{
    ConfChange, ConfState, Entry, EntryKind, HardState, Message, MessageBody, NodeId, ReadState, Snapshot, SnapshotMeta,
};
use crate::progress::{ProgressState, Tracker, VoteResult};
use crate::read_only::{PendingRead, ReadOnly};
use crate::rng::Rng;
use crate::storage::{Storage, StorageError};

/// The role a node plays in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking for pre-votes; its term is unchanged.
    PreCandidate,
    /// Asking for votes in a new term.
    Candidate,
    /// Leads the current term.
    Leader,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Campaign {
    PreElection,
    Election,
    Transfer,
}

/// The protocol state of one node.
pub(crate) struct Raft<S: Storage> {
    pub(crate) id: NodeId,
    pub(crate) term: u64,
    pub(crate) vote: Option<NodeId>,
    pub(crate) log: RaftLog<S>,
    pub(crate) role: Role,
    pub(crate) lead: Option<NodeId>,
    pub(crate) tracker: Tracker,
    /// Configurations by the index of the entry that introduced them; the first one
    /// is the snapshot's. The last one is in effect.
    conf_history: Vec<(u64, ConfState)>,
    pub(crate) msgs: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    read_only: ReadOnly,
    /// Reads received before this leader committed an entry of its term.
    pending_reads: Vec<(Vec<u8>, NodeId, bool)>,
    election_elapsed: u64,
    heartbeat_elapsed: u64,
    randomized_timeout: u64,
    boot_elapsed: u64,
    now: u64,
    pub(crate) lead_transferee: Option<NodeId>,
    /// Set once a TimeoutNow went out this term: voters may now ignore our lease.
    lease_revoked: bool,
    incoming_snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    /// New entries were appended by the leader and not yet broadcast.
    needs_bcast: bool,
    rng: Rng,
    pub(crate) cfg: Config,
}

impl<S: Storage> Raft<S> {
    pub(crate) fn new(cfg: Config, storage: S) -> Result<Self, Error> {
        cfg.validate()?;
        let hs = storage.hard_state();
        let snap = storage.snapshot_meta();
        let log = RaftLog::new(storage);
        let mut conf_history = vec![(snap.index, snap.conf.clone())];
        let ents = log.slice(log.first_index(), log.last_index() + 1, u64::MAX)?;
        for e in ents.iter().filter(|e| e.kind == EntryKind::ConfChange) {
            let (conf, _) = decode_conf_entry(&e.data)
                .map_err(|d| StorageError::corrupt("log", e.index, format!("bad conf change entry: {d}")))?;
            conf_history.push((e.index, conf));
        }
        let mut r = Raft {
            id: cfg.id,
            term: hs.term,
            vote: hs.vote,
            log,
            role: Role::Follower,
            lead: None,
            tracker: Tracker::new(cfg.max_inflight_msgs),
            conf_history,
            msgs: Vec::new(),
            read_states: Vec::new(),
            read_only: ReadOnly::default(),
            pending_reads: Vec::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_timeout: cfg.election_tick_min,
            boot_elapsed: 0,
            now: 0,
            lead_transferee: None,
            lease_revoked: false,
            incoming_snapshot: None,
            needs_bcast: false,
            rng: Rng::new(cfg.seed ^ cfg.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            cfg,
        };
        r.apply_conf();
        let term = r.term;
        r.become_follower(term, None);
        if term == 0 {
            // A node that never saw a term never acknowledged a leader, so it has no
            // lease to honour after booting.
            r.boot_elapsed = r.cfg.election_tick_min;
        }
        Ok(r)
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed }
    }

    pub(crate) fn conf(&self) -> &ConfState {
        &self.tracker.conf
    }

    /// Membership in effect at `index` (which must not precede the snapshot).
    pub(crate) fn conf_at(&self, index: u64) -> ConfState {
        self.conf_history.iter().rev().find(|(i, _)| *i <= index).map(|(_, c)| c.clone()).unwrap_or_default()
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_with_term(to, self.term, body);
    }

    fn send_with_term(&mut self, to: NodeId, term: u64, body: MessageBody) {
        self.msgs.push(Message { from: self.id, to, term, body });
    }

    /// Whether this node may campaign. A voter removed by a not-yet-committed entry
    /// still may: otherwise, if it holds the longest log, nobody could be elected.
    /// It then counts votes with the new configuration, like any candidate.
    fn promotable(&self) -> bool {
        if self.log.unstable_snapshot().is_some() {
            return false;
        }
        if self.tracker.conf.is_voter(self.id) {
            return true;
        }
        let last_conf = self.conf_history.last().map_or(0, |(i, _)| *i);
        last_conf > self.log.committed && self.conf_at(self.log.committed).is_voter(self.id)
    }

    fn committed_in_term(&self) -> bool {
        self.log.term(self.log.committed) == Ok(self.term)
    }

    /// Whether this node believes a leader is alive (or has just booted and cannot
    /// know), in which case it ignores non-forced vote requests.
    fn in_lease(&self) -> bool {
        self.cfg.check_quorum
            && ((self.lead.is_some() && self.election_elapsed < self.cfg.election_tick_min)
                || self.boot_elapsed < self.cfg.election_tick_min)
    }

    /// Lease reads are only sound if followers honour the lease, i.e. with check-quorum.
    fn lease_valid(&self) -> bool {
        self.cfg.check_quorum
            && !self.lease_revoked
            && self.lead_transferee.is_none()
            && self
                .read_only
                .lease_start()
                .is_some_and(|s| self.now < s + self.cfg.election_tick_min - self.cfg.lease_margin_ticks)
    }

    // ---- role transitions ----

    fn reset(&mut self, term: u64) {
        if term != self.term {
            self.term = term;
            self.vote = None;
        }
        self.lead = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_timeout = self.rng.range(self.cfg.election_tick_min, self.cfg.election_tick_max);
        self.lead_transferee = None;
        self.tracker.votes.clear();
        let last = self.log.last_index();
        self.tracker.reset_progress(last + 1);
        if let Some(pr) = self.tracker.progress.get_mut(&self.id) {
            pr.matched = last;
        }
        self.read_only = ReadOnly::default();
        self.pending_reads.clear();
        self.lease_revoked = false;
        self.needs_bcast = false;
    }

    pub(crate) fn become_follower(&mut self, term: u64, lead: Option<NodeId>) {
        self.reset(term);
        self.role = Role::Follower;
        self.lead = lead;
    }

    fn become_pre_candidate(&mut self) {
        self.tracker.votes.clear();
        self.role = Role::PreCandidate;
        self.lead = None;
        self.randomized_timeout = self.rng.range(self.cfg.election_tick_min, self.cfg.election_tick_max);
    }

    fn become_candidate(&mut self) {
        let term = self.term + 1;
        self.reset(term);
        self.vote = Some(self.id);
        self.role = Role::Candidate;
    }

    fn become_leader(&mut self) {
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.lead = Some(self.id);
        let me = self.id;
        for (id, pr) in self.tracker.progress.iter_mut() {
            pr.recent_active = true;
            if *id == me {
                pr.become_replicate();
            }
        }
        // The no-op lets the leader commit (and so learn the commit index) in its term.
        self.append_entry(EntryKind::Normal, Bytes::new(), None);
        self.bcast_append();
    }

    fn campaign(&mut self, kind: Campaign) {
        if !self.promotable() {
            return;
        }
        let term = if kind == Campaign::PreElection {
            self.become_pre_candidate();
            self.term + 1
        } else {
            self.become_candidate();
            self.term
        };
        self.tracker.record_vote(self.id, true);
        if self.tracker.tally() == VoteResult::Won {
            if kind == Campaign::PreElection {
                self.campaign(Campaign::Election);
            } else {
                self.become_leader();
            }
            return;
        }
        let last_index = self.log.last_index();
        let last_term = self.log.last_term();
        let me = self.id;
        let voters = self.tracker.conf.voters.clone();
        for v in voters.into_iter().filter(|&v| v != me) {
            let body = if kind == Campaign::PreElection {
                MessageBody::PreVote { last_index, last_term }
            } else {
                MessageBody::Vote { last_index, last_term, transfer: kind == Campaign::Transfer }
            };
            self.send_with_term(v, term, body);
        }
    }

    /// Starts an election now (bypassing the timer), with pre-vote if configured.
    pub(crate) fn campaign_now(&mut self) {
        if self.role != Role::Leader {
            self.campaign(if self.cfg.pre_vote { Campaign::PreElection } else { Campaign::Election });
        }
    }

    // ---- ticks ----

    pub(crate) fn tick(&mut self) {
        self.now += 1;
        self.boot_elapsed = self.boot_elapsed.saturating_add(1);
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.election_elapsed += 1;
            if self.promotable() && self.election_elapsed >= self.randomized_timeout {
                self.election_elapsed = 0;
                self.campaign_now();
            }
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_tick_min {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                if !self.tracker.quorum_active(self.id) {
                    let term = self.term;
                    self.become_follower(term, None);
                    return;
                }
                let me = self.id;
                for (id, pr) in self.tracker.progress.iter_mut() {
                    if *id != me {
                        pr.recent_active = false;
                    }
                }
            }
            // A transfer that did not finish within an election timeout is abandoned.
            self.lead_transferee = None;
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            let seq = self.read_only.new_round(self.now);
            self.bcast_heartbeat(seq);
        }
    }

    // ---- message handling ----

    pub(crate) fn step(&mut self, m: Message) {
        if !plausible(&m.body) {
            return;
        }
        if m.term > self.term {
            if let MessageBody::PreVote { .. } | MessageBody::Vote { .. } = m.body {
                let forced = matches!(m.body, MessageBody::Vote { transfer: true, .. });
                if !forced && self.in_lease() {
                    return;
                }
            }
            match m.body {
                MessageBody::PreVote { .. } => {}
                MessageBody::PreVoteResponse { reject: false } => {}
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::InstallSnapshot { .. } => {
                    self.become_follower(m.term, Some(m.from))
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.body {
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    // Lets a stale leader learn the newer term and step down.
                    self.send(
                        m.from,
                        MessageBody::AppendResponse { index: 0, reject: true, reject_hint: 0, hint_term: 0 },
                    );
                }
                MessageBody::PreVote { .. } => {
                    self.send(m.from, MessageBody::PreVoteResponse { reject: true });
                }
                _ => {}
            }
            return;
        }
        match m.body {
            MessageBody::PreVote { last_index, last_term } => {
                self.handle_vote_request(m.from, m.term, last_index, last_term, true)
            }
            MessageBody::Vote { last_index, last_term, .. } => {
                self.handle_vote_request(m.from, m.term, last_index, last_term, false)
            }
            body => match self.role {
                Role::Leader => self.step_leader(m.from, body),
                Role::Candidate | Role::PreCandidate => self.step_candidate(m.from, body),
                Role::Follower => self.step_follower(m.from, body),
            },
        }
    }

    fn handle_vote_request(&mut self, from: NodeId, term: u64, last_index: u64, last_term: u64, pre: bool) {
        let can_vote =
            self.vote == Some(from) || (self.vote.is_none() && self.lead.is_none()) || (pre && term > self.term);
        let grant = can_vote && self.log.is_up_to_date(last_index, last_term);
        let body = if pre {
            MessageBody::PreVoteResponse { reject: !grant }
        } else {
            MessageBody::VoteResponse { reject: !grant }
        };
        if grant {
            // A granted pre-vote carries the term it is for; the vote itself is only
            // recorded (and persisted before this reply goes out) for real votes.
            self.send_with_term(from, term, body);
            if !pre {
                self.election_elapsed = 0;
                self.vote = Some(from);
            }
        } else {
            self.send(from, body);
        }
    }

    fn step_candidate(&mut self, from: NodeId, body: MessageBody) {
        match body {
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::InstallSnapshot { .. } => {
                let term = self.term;
                self.become_follower(term, Some(from));
                self.step_follower(from, body);
            }
            MessageBody::PreVoteResponse { reject } if self.role == Role::PreCandidate => self.poll(from, !reject),
            MessageBody::VoteResponse { reject } if self.role == Role::Candidate => self.poll(from, !reject),
            _ => {}
        }
    }

    fn poll(&mut self, from: NodeId, granted: bool) {
        self.tracker.record_vote(from, granted);
        match self.tracker.tally() {
            VoteResult::Won => {
                if self.role == Role::PreCandidate {
                    self.campaign(Campaign::Election);
                } else {
                    self.become_leader();
                }
            }
            VoteResult::Lost => {
                let term = self.term;
                self.become_follower(term, None);
            }
            VoteResult::Pending => {}
        }
    }

    fn step_follower(&mut self, from: NodeId, body: MessageBody) {
        match body {
            MessageBody::Append { prev_index, prev_term, entries, commit } => {
                self.election_elapsed = 0;
                self.lead = Some(from);
                self.handle_append(from, prev_index, prev_term, entries, commit);
            }
            MessageBody::Heartbeat { commit, seq } => {
                self.election_elapsed = 0;
                self.lead = Some(from);
                self.log.commit_to(commit);
                self.send(from, MessageBody::HeartbeatResponse { seq });
            }
            MessageBody::InstallSnapshot { meta, offset, data, done } => {
                self.election_elapsed = 0;
                self.lead = Some(from);
                self.handle_snapshot_chunk(from, meta, offset, data, done);
            }
            MessageBody::TimeoutNow if self.promotable() => self.campaign(Campaign::Transfer),
            MessageBody::ReadIndexResponse { ctx, index } => {
                self.read_states.push(ReadState { index, ctx });
            }
            _ => {}
        }
    }

    fn handle_append(&mut self, from: NodeId, prev_index: u64, prev_term: u64, entries: Vec<Entry>, commit: u64) {
        let in_range = prev_index.checked_add(entries.len() as u64).is_some();
        let contiguous = in_range
            && entries.iter().enumerate().all(|(k, e)| e.index == prev_index + 1 + k as u64 && e.term <= self.term);
        if !contiguous {
            // Malformed: entries must follow prev_index without gaps. Drop it rather
            // than trust indexes from the wire.
            return;
        }
        if prev_index < self.log.committed {
            let index = self.log.committed;
            self.send(from, MessageBody::AppendResponse { index, reject: false, reject_hint: 0, hint_term: 0 });
            return;
        }
        if self.log.match_term(prev_index, prev_term) {
            let last_new = prev_index + entries.len() as u64;
            let ci = self.log.find_conflict(&entries);
            if ci != 0 {
                if ci <= self.log.committed {
                    // Overwriting a committed entry would break safety: such a
                    // message cannot come from a correct leader, so drop it.
                    return;
                }
                let start = (ci - prev_index - 1) as usize;
                self.append_follower(&entries[start..]);
            }
            self.log.commit_to(commit.min(last_new));
            self.send(
                from,
                MessageBody::AppendResponse { index: last_new, reject: false, reject_hint: 0, hint_term: 0 },
            );
        } else {
            let hint = prev_index.min(self.log.last_index());
            let (reject_hint, hint_term) = self.log.find_conflict_by_term(hint, prev_term);
            self.send(from, MessageBody::AppendResponse { index: prev_index, reject: true, reject_hint, hint_term });
        }
    }

    /// Appends (possibly overwriting an uncommitted suffix) and tracks configurations.
    fn append_follower(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first().map(|e| e.index) else {
            return;
        };
        let mut changed = false;
        if first <= self.log.last_index() {
            while self.conf_history.len() > 1 && self.conf_history.last().is_some_and(|(i, _)| *i >= first) {
                self.conf_history.pop();
                changed = true;
            }
        }
        self.log.append(ents);
        for e in ents.iter().filter(|e| e.kind == EntryKind::ConfChange) {
            // A malformed configuration cannot come from a correct leader; ignoring it
            // keeps the previous membership.
            if let Ok((conf, _)) = decode_conf_entry(&e.data) {
                self.conf_history.push((e.index, conf));
                changed = true;
            }
        }
        if changed {
            self.apply_conf();
        }
    }

    fn apply_conf(&mut self) {
        let conf = self.conf_history.last().map(|(_, c)| c.clone()).unwrap_or_default();
        let last = self.log.last_index();
        self.tracker.set_conf(conf, last + 1);
        if let Some(pr) = self.tracker.progress.get_mut(&self.id) {
            pr.matched = last;
            pr.next = last + 1;
        }
        if let Some(t) = self.lead_transferee {
            if !self.tracker.conf.is_voter(t) {
                self.lead_transferee = None;
            }
        }
        if matches!(self.role, Role::Candidate | Role::PreCandidate) && !self.tracker.conf.is_voter(self.id) {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    fn handle_snapshot_chunk(&mut self, from: NodeId, meta: SnapshotMeta, offset: u64, data: Vec<u8>, done: bool) {
        if meta.index <= self.log.committed {
            self.incoming_snapshot = None;
            let index = self.log.committed;
            self.send(from, MessageBody::AppendResponse { index, reject: false, reject_hint: 0, hint_term: 0 });
            return;
        }
        if offset == 0 {
            self.incoming_snapshot = Some((meta.clone(), Vec::new()));
        }
        let index = meta.index;
        let buf = match &mut self.incoming_snapshot {
            Some((m, buf)) if *m == meta && buf.len() as u64 == offset => buf,
            other => {
                let next_offset = match other {
                    Some((m, buf)) if *m == meta => buf.len() as u64,
                    _ => 0,
                };
                self.send(from, MessageBody::SnapshotResponse { index, next_offset });
                return;
            }
        };
        buf.extend_from_slice(&data);
        if !done {
            let next_offset = buf.len() as u64;
            self.send(from, MessageBody::SnapshotResponse { index, next_offset });
            return;
        }
        let Some((meta, data)) = self.incoming_snapshot.take() else {
            return;
        };
        let installed = self.restore(Snapshot { meta, data });
        let index = if installed { self.log.last_index() } else { self.log.committed };
        self.send(from, MessageBody::AppendResponse { index, reject: false, reject_hint: 0, hint_term: 0 });
    }

    /// Installs `snap` unless the log already covers it; returns whether it did.
    fn restore(&mut self, snap: Snapshot) -> bool {
        let (index, term) = (snap.meta.index, snap.meta.term);
        if index <= self.log.committed {
            return false;
        }
        if self.log.match_term(index, term) {
            self.log.commit_to(index);
            return false;
        }
        self.conf_history = vec![(index, snap.meta.conf.clone())];
        self.log.restore(snap);
        self.apply_conf();
        true
    }

    fn step_leader(&mut self, from: NodeId, body: MessageBody) {
        match body {
            MessageBody::AppendResponse { index, reject, reject_hint, hint_term } => {
                self.handle_append_response(from, index, reject, reject_hint, hint_term)
            }
            MessageBody::HeartbeatResponse { seq } => self.handle_heartbeat_response(from, seq),
            MessageBody::SnapshotResponse { index, next_offset } => {
                let chunk = self.tracker.progress.get_mut(&from).and_then(|pr| {
                    pr.recent_active = true;
                    pr.transfer.as_mut()
                });
                if let Some(t) = chunk {
                    if t.snapshot.meta.index == index {
                        t.offset = next_offset.min(t.snapshot.data.len() as u64);
                        t.in_flight = false;
                        self.send_snapshot_chunk(from);
                    }
                }
            }
            MessageBody::ReadIndex { ctx, lease } => self.handle_read_index(ctx, from, lease),
            _ => {}
        }
    }

    fn handle_append_response(&mut self, from: NodeId, index: u64, reject: bool, reject_hint: u64, hint_term: u64) {
        let next_probe = if reject && hint_term > 0 {
            self.log.find_conflict_by_term(reject_hint, hint_term).0
        } else {
            reject_hint
        };
        // A correct follower never acknowledges past our log; clamp a confused one.
        let index = index.min(self.log.last_index());
        let Some(pr) = self.tracker.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if reject {
            if pr.maybe_decr_to(index, next_probe) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.send_append(from, true);
            }
            return;
        }
        let was_paused = pr.is_paused();
        if !pr.maybe_update(index) {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot if pr.matched >= pr.pending_snapshot => {
                pr.become_probe();
                pr.become_replicate();
            }
            ProgressState::Replicate => pr.inflights.free_le(index),
            ProgressState::Snapshot => {}
        }
        if self.maybe_commit() {
            self.bcast_append();
        } else if was_paused {
            self.send_append(from, false);
        }
        while self.send_append(from, false) {}
        if self.lead_transferee == Some(from)
            && self.tracker.progress.get(&from).is_some_and(|p| p.matched == self.log.last_index())
        {
            self.send_timeout_now(from);
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, seq: u64) {
        let last = self.log.last_index();
        if let Some(pr) = self.tracker.progress.get_mut(&from) {
            pr.recent_active = true;
            pr.probe_sent = false;
            if pr.state == ProgressState::Replicate && pr.inflights.full() {
                pr.inflights.free_first();
            }
            if let Some(t) = pr.transfer.as_mut() {
                // The chunk (or its answer) may have been lost: send it again.
                t.in_flight = false;
                self.send_snapshot_chunk(from);
            } else if pr.matched < last {
                // Even an empty append helps: if earlier appends were lost, its
                // consistency check fails and the follower's answer resets `next`.
                self.send_append(from, true);
            }
        }
        let voters = self.tracker.conf.voters.clone();
        for r in self.read_only.ack(self.id, &voters, from, seq) {
            self.respond_read(r.ctx, r.from, r.index);
        }
    }

    fn handle_read_index(&mut self, ctx: Vec<u8>, from: NodeId, lease: bool) {
        if !self.committed_in_term() {
            // The commit index of a new leader may be stale until its no-op commits.
            self.pending_reads.push((ctx, from, lease));
            return;
        }
        let index = self.log.committed;
        if self.tracker.conf.voters == [self.id] || (lease && self.lease_valid()) {
            self.respond_read(ctx, from, index);
            return;
        }
        let seq = self.read_only.new_round(self.now);
        self.read_only.add(PendingRead { ctx, from, index, seq });
        self.bcast_heartbeat(seq);
    }

    fn respond_read(&mut self, ctx: Vec<u8>, from: NodeId, index: u64) {
        if from == self.id {
            self.read_states.push(ReadState { index, ctx });
        } else {
            self.send(from, MessageBody::ReadIndexResponse { ctx, index });
        }
    }

    fn maybe_commit(&mut self) -> bool {
        let mci = self.tracker.committed_index();
        if !self.log.maybe_commit(mci, self.term) {
            return false;
        }
        if !self.pending_reads.is_empty() && self.committed_in_term() {
            for (ctx, from, lease) in mem::take(&mut self.pending_reads) {
                self.handle_read_index(ctx, from, lease);
            }
        }
        let last_conf = self.conf_history.last().map_or(0, |(i, _)| *i);
        if !self.tracker.conf.is_voter(self.id) && self.log.committed >= last_conf {
            // The leader was removed and its removal is committed: hand over quickly.
            let last = self.log.last_index();
            let successor = self
                .tracker
                .conf
                .voters
                .iter()
                .copied()
                .find(|v| self.tracker.progress.get(v).is_some_and(|p| p.matched == last));
            if let Some(s) = successor {
                self.send_timeout_now(s);
            }
            let term = self.term;
            self.become_follower(term, None);
            return false;
        }
        true
    }

    fn send_timeout_now(&mut self, to: NodeId) {
        self.lease_revoked = true;
        self.send(to, MessageBody::TimeoutNow);
    }

    fn bcast_heartbeat(&mut self, seq: u64) {
        let committed = self.log.committed;
        let peers: Vec<(NodeId, u64)> = self
            .tracker
            .progress
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, pr)| (*id, pr.matched.min(committed)))
            .collect();
        for (to, commit) in peers {
            self.send(to, MessageBody::Heartbeat { commit, seq });
        }
    }

    fn bcast_append(&mut self) {
        let peers: Vec<NodeId> = self.tracker.progress.keys().copied().filter(|id| *id != self.id).collect();
        for to in peers {
            self.send_append(to, true);
            while self.send_append(to, false) {}
        }
    }

    /// Sends the next append (or snapshot) to `to`; returns whether anything was sent.
    fn send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        if self.role != Role::Leader {
            return false;
        }
        let Some(pr) = self.tracker.progress.get(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let next = pr.next;
        let prev_term = self.log.term(next - 1);
        let ents = self.log.entries_from(next, self.cfg.max_size_per_msg, self.cfg.max_entries_per_msg);
        match (prev_term, ents) {
            (Ok(prev_term), Ok(entries)) => {
                if entries.is_empty() && !send_if_empty {
                    return false;
                }
                let last = entries.last().map(|e| e.index);
                if let Some(pr) = self.tracker.progress.get_mut(&to) {
                    pr.sent_entries(last);
                }
                let commit = self.log.committed;
                self.send(to, MessageBody::Append { prev_index: next - 1, prev_term, entries, commit });
                true
            }
            _ => {
                if !pr.recent_active {
                    return false;
                }
                let Ok(snapshot) = self.log.storage.snapshot() else {
                    return false;
                };
                if let Some(pr) = self.tracker.progress.get_mut(&to) {
                    pr.become_snapshot(snapshot);
                }
                self.send_snapshot_chunk(to);
                true
            }
        }
    }

    fn send_snapshot_chunk(&mut self, to: NodeId) {
        let max = self.cfg.max_snapshot_chunk as u64;
        let Some(t) = self.tracker.progress.get_mut(&to).and_then(|p| p.transfer.as_mut()) else {
            return;
        };
        if t.in_flight {
            return;
        }
        let len = t.snapshot.data.len() as u64;
        let start = t.offset.min(len);
        let end = (start + max).min(len);
        t.in_flight = true;
        let body = MessageBody::InstallSnapshot {
            meta: t.snapshot.meta.clone(),
            offset: start,
            data: t.snapshot.data[start as usize..end as usize].to_vec(),
            done: end == len,
        };
        self.send(to, body);
    }

    /// Broadcasts entries appended since the last call (batches many proposals).
    pub(crate) fn flush(&mut self) {
        if self.needs_bcast && self.role == Role::Leader {
            self.needs_bcast = false;
            self.bcast_append();
        }
    }

    fn append_entry(&mut self, kind: EntryKind, data: Bytes, conf: Option<ConfState>) -> u64 {
        let index = self.log.last_index() + 1;
        self.log.append(&[Entry { term: self.term, index, kind, data }]);
        if let Some(conf) = conf {
            self.conf_history.push((index, conf));
            self.apply_conf();
        }
        if let Some(pr) = self.tracker.progress.get_mut(&self.id) {
            pr.maybe_update(index);
        }
        self.needs_bcast = true;
        if self.maybe_commit() {
            self.needs_bcast = true;
        }
        index
    }

    // ---- requests ----

    fn check_leader(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.lead });
        }
        if self.lead_transferee.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        Ok(())
    }

    pub(crate) fn propose(&mut self, data: Bytes) -> Result<u64, ProposeError> {
        self.check_leader()?;
        Ok(self.append_entry(EntryKind::Normal, data, None))
    }

    pub(crate) fn propose_conf_change(&mut self, cc: ConfChange, context: &[u8]) -> Result<u64, ProposeError> {
        self.check_leader()?;
        if !self.committed_in_term() {
            return Err(ProposeError::LeaderNotReady);
        }
        if self.conf_history.last().is_some_and(|(i, _)| *i > self.log.committed) {
            return Err(ProposeError::ConfChangePending);
        }
        let mut conf = self.tracker.conf.clone();
        match cc {
            ConfChange::AddVoter(id) | ConfChange::AddLearner(id) | ConfChange::RemoveNode(id) if id == 0 => {
                return Err(ProposeError::InvalidConfChange("node id 0"));
            }
            ConfChange::AddVoter(id) => {
                if conf.is_voter(id) {
                    return Err(ProposeError::InvalidConfChange("already a voter"));
                }
                conf.learners.retain(|l| *l != id);
                conf.voters.push(id);
                conf.voters.sort_unstable();
            }
            ConfChange::AddLearner(id) => {
                if conf.is_voter(id) {
                    return Err(ProposeError::InvalidConfChange("already a voter"));
                }
                if conf.is_learner(id) {
                    return Err(ProposeError::InvalidConfChange("already a learner"));
                }
                conf.learners.push(id);
                conf.learners.sort_unstable();
            }
            ConfChange::RemoveNode(id) => {
                if conf.is_voter(id) {
                    if conf.voters.len() == 1 {
                        return Err(ProposeError::InvalidConfChange("cannot remove the last voter"));
                    }
                    conf.voters.retain(|v| *v != id);
                } else if conf.is_learner(id) {
                    conf.learners.retain(|l| *l != id);
                } else {
                    return Err(ProposeError::InvalidConfChange("not a member"));
                }
            }
        }
        let data = encode_conf_entry(&conf, context);
        Ok(self.append_entry(EntryKind::ConfChange, data.into(), Some(conf)))
    }

    pub(crate) fn read_index(&mut self, ctx: Vec<u8>, lease: bool) -> Result<(), ProposeError> {
        match (self.role, self.lead) {
            (Role::Leader, _) => {
                self.handle_read_index(ctx, self.id, lease);
                Ok(())
            }
            (_, Some(l)) => {
                self.send(l, MessageBody::ReadIndex { ctx, lease });
                Ok(())
            }
            (_, None) => Err(ProposeError::NotLeader { leader: None }),
        }
    }

    pub(crate) fn transfer_leader(&mut self, to: NodeId) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.lead });
        }
        if to == self.id || self.lead_transferee == Some(to) {
            return Ok(());
        }
        if !self.tracker.conf.is_voter(to) {
            return Err(ProposeError::UnknownTransferTarget(to));
        }
        self.lead_transferee = Some(to);
        self.election_elapsed = 0;
        let caught_up = self.tracker.progress.get(&to).is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.send_timeout_now(to);
        } else {
            self.send_append(to, true);
        }
        Ok(())
    }

    /// Saves a state-machine snapshot at the applied index and compacts the log.
    pub(crate) fn compact(&mut self, data: Vec<u8>) -> Result<(), Error> {
        let index = self.log.applied;
        if index <= self.log.storage.snapshot_meta().index {
            return Ok(());
        }
        let term = self.log.term(index)?;
        let conf = self.conf_at(index);
        self.log.storage.compact(Snapshot { meta: SnapshotMeta { index, term, conf }, data })?;
        let keep_from = self.conf_history.iter().rposition(|(i, _)| *i <= index).unwrap_or(0);
        self.conf_history.drain(..keep_from);
        Ok(())
    }
}

/// Largest log position or byte offset accepted from the wire. No real log gets near
/// it, and bounding inputs keeps every `+ 1` on them free of overflow.
const MAX_POSITION: u64 = u64::MAX / 4;

/// Whether the positions a message carries are small enough to be real.
fn plausible(body: &MessageBody) -> bool {
    let ok = |v: &u64| *v <= MAX_POSITION;
    match body {
        MessageBody::PreVote { last_index, .. } | MessageBody::Vote { last_index, .. } => ok(last_index),
        MessageBody::Append { prev_index, entries, commit, .. } => {
            ok(prev_index) && ok(commit) && entries.len() as u64 <= MAX_POSITION
        }
        MessageBody::AppendResponse { index, reject_hint, .. } => ok(index) && ok(reject_hint),
        MessageBody::Heartbeat { commit, .. } => ok(commit),
        MessageBody::InstallSnapshot { meta, offset, .. } => ok(&meta.index) && ok(offset),
        MessageBody::SnapshotResponse { index, next_offset } => ok(index) && ok(next_offset),
        MessageBody::ReadIndexResponse { index, .. } => ok(index),
        MessageBody::PreVoteResponse { .. }
        | MessageBody::VoteResponse { .. }
        | MessageBody::HeartbeatResponse { .. }
        | MessageBody::TimeoutNow
        | MessageBody::ReadIndex { .. } => true,
    }
}
