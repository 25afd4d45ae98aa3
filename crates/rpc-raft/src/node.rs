//! [`RawNode`]: the application-facing handle on the Raft core, and [`Ready`], the
//! batch of work the application must carry out.
//!
//! The loop is always: feed input (`tick`, `step`, `propose`, `read_index`, ...), then
//! while `has_ready()`: take `ready()`, persist its hard state, snapshot and entries
//! (one sync for the whole batch: [`RawNode::persist_ready`]), only then send its
//! messages, apply its committed entries (and restore its snapshot, if any), serve
//! its read states once applied, and call [`RawNode::advance`].

use crate::config::{Config, ReadOnlyOption};
use crate::error::{Error, ProposeError};
use crate::message::{ConfChange, ConfState, Entry, HardState, Message, NodeId, ReadState, Snapshot};
use crate::raft::{Raft, Role};
use crate::storage::{Storage, StorageError};

/// Volatile state worth reporting when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// Known leader.
    pub leader: Option<NodeId>,
    /// This node's role.
    pub role: Role,
}

/// Work produced by the core, to be done in field order before [`RawNode::advance`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ready {
    /// Changed leader or role, informational.
    pub soft_state: Option<SoftState>,
    /// Hard state to persist, if it changed.
    pub hard_state: Option<HardState>,
    /// Snapshot to persist and restore into the state machine.
    pub snapshot: Option<Snapshot>,
    /// Entries to append to stable storage.
    pub entries: Vec<Entry>,
    /// Messages to send, only after the above is durable.
    pub messages: Vec<Message>,
    /// Committed entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Reads to serve once the state machine has applied their index.
    pub read_states: Vec<ReadState>,
    /// Whether `messages` may be sent before persisting: the node is a leader whose term and
    /// vote are already durable, so its messages promise nothing about its own disk, and its
    /// write overlaps its followers' (Raft thesis §10.2.1). Safe only if the application steps
    /// no input into the node until [`RawNode::persist_ready`] has returned, since the leader
    /// counts its own new entries toward commitment.
    pub send_before_persist: bool,
}

impl Ready {
    /// Whether something must be made durable before sending.
    pub fn must_persist(&self) -> bool {
        self.hard_state.is_some() || self.snapshot.is_some() || !self.entries.is_empty()
    }
}

/// A point-in-time summary of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Node id.
    pub id: NodeId,
    /// Current term.
    pub term: u64,
    /// Vote in the current term.
    pub vote: Option<NodeId>,
    /// Role.
    pub role: Role,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Last log index.
    pub last_index: u64,
    /// Membership in effect.
    pub conf: ConfState,
}

struct InFlight {
    last_entry: Option<(u64, u64)>,
    snapshot_index: Option<u64>,
    last_committed: Option<u64>,
}

/// A Raft node driven by the application (sans I/O).
pub struct RawNode<S: Storage> {
    raft: Raft<S>,
    prev_hs: HardState,
    prev_ss: SoftState,
    in_flight: Option<InFlight>,
}

impl<S: Storage> RawNode<S> {
    /// Creates a node from its config and what its storage holds (a fresh storage
    /// must be bootstrapped with the initial membership, or be empty for a node that
    /// will be added to an existing cluster).
    pub fn new(cfg: Config, storage: S) -> Result<Self, Error> {
        let raft = Raft::new(cfg, storage)?;
        let prev_hs = raft.hard_state();
        let prev_ss = SoftState { leader: raft.lead, role: raft.role };
        Ok(RawNode { raft, prev_hs, prev_ss, in_flight: None })
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Handles a message from a peer. Messages addressed to another node are ignored.
    pub fn step(&mut self, m: Message) {
        if m.to == self.raft.id {
            self.raft.step(m);
        }
    }

    /// Starts an election now instead of waiting for the timeout. Like a leadership
    /// transfer, this overrides the leader lease this node may be honouring, so use
    /// it for bootstrapping and tests, not while lease reads are served elsewhere.
    pub fn campaign(&mut self) {
        self.raft.campaign_now();
    }

    /// Appends `data` to the log if this node is the leader; returns its index.
    /// Many proposals between two `ready()` calls go out in one append per follower.
    /// `data` may be a `Vec<u8>` or [`Bytes`](bytes::Bytes); either way it is not copied.
    pub fn propose(&mut self, data: impl Into<bytes::Bytes>) -> Result<u64, ProposeError> {
        self.raft.propose(data.into())
    }

    /// Proposes a single-server membership change; returns the entry's index.
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<u64, ProposeError> {
        self.raft.propose_conf_change(cc, &[])
    }

    /// Proposes a membership change carrying `context` (say, the new member's address),
    /// which every node reads back from the committed entry with
    /// [`codec::decode_conf_entry`](crate::codec::decode_conf_entry).
    pub fn propose_conf_change_with(&mut self, cc: ConfChange, context: Vec<u8>) -> Result<u64, ProposeError> {
        self.raft.propose_conf_change(cc, &context)
    }

    /// On the leader, the highest log index known to be replicated on `id`; `None` elsewhere
    /// or for a node outside the configuration. Tells when a learner has caught up.
    pub fn match_index(&self, id: NodeId) -> Option<u64> {
        match self.raft.role {
            Role::Leader => self.raft.tracker.progress.get(&id).map(|p| p.matched),
            _ => None,
        }
    }

    /// Requests a linearizable read with the configured [`ReadOnlyOption`]; the
    /// answer comes as a [`ReadState`] carrying `ctx`. Followers forward to the leader.
    pub fn read_index(&mut self, ctx: Vec<u8>) -> Result<(), ProposeError> {
        let lease = self.raft.cfg.read_only_option == ReadOnlyOption::LeaseBased;
        self.raft.read_index(ctx, lease)
    }

    /// Like [`RawNode::read_index`] with an explicit mode.
    pub fn read_index_with(&mut self, ctx: Vec<u8>, mode: ReadOnlyOption) -> Result<(), ProposeError> {
        self.raft.read_index(ctx, mode == ReadOnlyOption::LeaseBased)
    }

    /// Asks the leader to hand leadership to `to` (via TimeoutNow once caught up).
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), ProposeError> {
        self.raft.transfer_leader(to)
    }

    fn soft_state(&self) -> SoftState {
        SoftState { leader: self.raft.lead, role: self.raft.role }
    }

    /// Whether [`RawNode::ready`] has anything to hand out.
    pub fn has_ready(&mut self) -> bool {
        if self.in_flight.is_some() {
            return false;
        }
        self.raft.flush();
        let r = &self.raft;
        !r.msgs.is_empty()
            || !r.read_states.is_empty()
            || !r.log.unstable_entries().is_empty()
            || r.log.unstable_snapshot().is_some()
            || r.log.has_next_committed()
            || r.hard_state() != self.prev_hs
            || self.soft_state() != self.prev_ss
    }

    /// Takes the pending work. Call [`RawNode::advance`] before the next `ready`.
    pub fn ready(&mut self) -> Ready {
        self.raft.flush();
        let hs = self.raft.hard_state();
        let ss = self.soft_state();
        let max = self.raft.cfg.max_committed_size_per_ready;
        let log = &self.raft.log;
        let durable_term = hs.term == self.prev_hs.term && hs.vote == self.prev_hs.vote;
        let rd = Ready {
            soft_state: (ss != self.prev_ss).then_some(ss),
            hard_state: (hs != self.prev_hs).then(|| hs.clone()),
            snapshot: log.unstable_snapshot().cloned(),
            entries: log.unstable_entries().to_vec(),
            messages: std::mem::take(&mut self.raft.msgs),
            committed_entries: log.next_committed_entries(max),
            read_states: std::mem::take(&mut self.raft.read_states),
            send_before_persist: self.raft.role == Role::Leader && durable_term && log.unstable_snapshot().is_none(),
        };
        self.in_flight = Some(InFlight {
            last_entry: rd.entries.last().map(|e| (e.index, e.term)),
            snapshot_index: rd.snapshot.as_ref().map(|s| s.meta.index),
            last_committed: rd.committed_entries.last().map(|e| e.index),
        });
        if let Some(i) = rd.committed_entries.last() {
            self.raft.log.applying = i.index;
        }
        self.prev_hs = hs;
        self.prev_ss = ss;
        rd
    }

    /// Persists the durable parts of `rd` to this node's storage in one batch.
    pub fn persist_ready(&mut self, rd: &Ready) -> Result<(), StorageError> {
        if !rd.must_persist() {
            return Ok(());
        }
        self.raft.log.storage.persist(rd.hard_state.as_ref(), rd.snapshot.as_ref(), &rd.entries)
    }

    /// Acknowledges the last `Ready`: its entries and snapshot are durable and its
    /// committed entries applied.
    pub fn advance(&mut self) {
        let Some(f) = self.in_flight.take() else {
            return;
        };
        let log = &mut self.raft.log;
        if let Some((i, t)) = f.last_entry {
            log.stable_to(i, t);
        }
        if let Some(si) = f.snapshot_index {
            log.stable_snap_to(si);
            log.applied = log.applied.max(si);
        }
        if let Some(c) = f.last_committed {
            log.applied = log.applied.max(c);
        }
        log.applying = log.applying.max(log.applied);
    }

    /// Saves `data` (the state machine at the applied index) as a snapshot and
    /// compacts the log up to there.
    pub fn compact(&mut self, data: Vec<u8>) -> Result<(), Error> {
        self.raft.compact(data)
    }

    /// Current status.
    pub fn status(&self) -> Status {
        let r = &self.raft;
        Status {
            id: r.id,
            term: r.term,
            vote: r.vote,
            role: r.role,
            leader: r.lead,
            commit: r.log.committed,
            applied: r.log.applied,
            last_index: r.log.last_index(),
            conf: r.conf().clone(),
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.raft.id
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.raft.role
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.raft.term
    }

    /// Known leader.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.lead
    }

    /// Read access to the storage.
    pub fn storage(&self) -> &S {
        &self.raft.log.storage
    }

    /// Consumes the node, returning its storage (what survives a crash).
    pub fn into_storage(self) -> S {
        self.raft.log.storage
    }
}
