//! The thread that owns the member's Raft node: inputs in, one `Ready` at a time out.

use super::{leases::LeaseClock, peers::Outbox, RaftView, Shared};
use crate::{
    api::Member,
    command::{Command, Proposal},
    service::{ErrorCode, RegistryError},
    store::{Output, Store},
};
use rpc_core::Codec;
use rpc_raft::{
    codec::decode_conf_entry,
    storage::{DurableOptions, DurableStorage, StdFs},
    ConfChange, ConfState, Config, Entry, EntryKind, Message, ProposeError, RawNode, Ready, Role, Storage,
};
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    io,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};
use tokio::sync::oneshot;

pub(super) type Node = RawNode<DurableStorage<StdFs>>;

/// One Raft tick.
const TICK: Duration = Duration::from_millis(10);
/// Inputs waiting for the Raft thread; past this, handlers are refused rather than queued.
const INPUT_QUEUE: usize = 64 * 1024;
/// A learner this close to the leader's commit index has caught up and is promoted to voter.
const PROMOTE_LAG: u64 = 128;
/// How long a removed member keeps its Raft node running, so a removed leader can hand over.
const REMOVED_LINGER: Duration = Duration::from_secs(1);

/// The answer to a write.
pub(super) type WriteReply = oneshot::Sender<Result<Output, RegistryError>>;
/// The answer to a membership change: the members once it is applied.
pub(super) type MembersReply = oneshot::Sender<Result<Vec<Member>, RegistryError>>;

/// The context of a conf-change entry: who asked (to answer them) and who joins or leaves.
#[rpc_core::message]
#[derive(Clone, Debug, Default)]
struct MemberChange {
    /// The member that proposed it and its sequence number there.
    proposer: u64,
    seq: u64,
    /// The cluster's id, for a joining member that does not know it yet.
    cluster_id: u64,
    /// The member added, promoted or removed.
    subject: Member,
}

/// What the Raft thread is asked to do.
pub(super) enum Input {
    /// A message from a peer.
    Peer(Message),
    /// Replicate and apply a command; answer once applied here.
    Propose(Command, WriteReply),
    /// Answer once this member has applied everything committed before now (a linearizable
    /// read barrier).
    Read(oneshot::Sender<Result<(), RegistryError>>),
    /// Renew leases (leader only); answers each one's remaining milliseconds, in order.
    KeepAlive(Vec<u64>, oneshot::Sender<Vec<Result<u64, RegistryError>>>),
    /// A lease's remaining milliseconds (leader only).
    TimeToLive(u64, oneshot::Sender<Result<u64, RegistryError>>),
    /// Hand leadership to a member (leader only).
    MoveLeader(u64, oneshot::Sender<Result<(), RegistryError>>),
    /// Add a member as a learner (leader only).
    AddMember(Member, MembersReply),
    /// Remove a member (leader only).
    RemoveMember(u64, MembersReply),
    /// The leader says this member was removed.
    Removed,
}

/// The handlers' end of the Raft thread's queue.
pub(super) struct Inputs {
    tx: mpsc::SyncSender<Input>,
    stopped: Arc<AtomicBool>,
}

impl Inputs {
    /// Queues `input`; fails if the Raft thread is overloaded or stopped.
    pub(super) fn send(&self, input: Input) -> Result<(), RegistryError> {
        self.tx.try_send(input).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => {
                RegistryError::new(ErrorCode::NoLeader, "the member is overloaded; retry shortly or ask another member")
            }
            mpsc::TrySendError::Disconnected(_) => {
                RegistryError::new(ErrorCode::NoLeader, "the member is shutting down; ask another member")
            }
        })
    }

    /// Tells the Raft thread to stop at its next wake-up.
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }
}

pub(super) struct Queue {
    rx: mpsc::Receiver<Input>,
    stopped: Arc<AtomicBool>,
}

pub(super) fn inputs() -> (Inputs, Queue) {
    let (tx, rx) = mpsc::sync_channel(INPUT_QUEUE);
    let stopped = Arc::new(AtomicBool::new(false));
    (Inputs { tx, stopped: stopped.clone() }, Queue { rx, stopped })
}

/// Opens the member's storage and recovers its store from the latest snapshot.
pub(super) fn open(config: &super::MemberConfig, id: u64, members: &[Member]) -> io::Result<(Node, Store)> {
    let dir = config.data_dir.join("raft");
    std::fs::create_dir_all(&dir)?;
    let conf = match config.join {
        true => ConfState::default(),
        false => ConfState::with_voters(members.iter().map(|m| m.id)),
    };
    let opts = DurableOptions { sync: config.fsync, ..DurableOptions::default() };
    let mut storage = DurableStorage::open(StdFs::new(), &dir.to_string_lossy(), opts, conf)
        .map_err(|e| io::Error::other(format!("{}: {e}", dir.display())))?;
    let snapshot = storage.snapshot().map_err(|e| io::Error::other(e.to_string()))?;
    let store = match snapshot.data.is_empty() {
        true => {
            let mut store = Store::new(config.limits.clone());
            store.set_cluster(founding_cluster_id(config, members)?, members.to_vec());
            store
        }
        false => Store::restore(&snapshot.data, config.limits.clone())
            .map_err(|e| io::Error::other(format!("{}: the snapshot is unreadable: {e}", dir.display())))?,
    };
    let node = RawNode::new(Config::new(id), storage).map_err(|e| io::Error::other(e.to_string()))?;
    Ok((node, store))
}

/// The cluster's id as this member founded it: derived alike by every founder from the first
/// `--peers` and kept in the data directory, so a later `--peers` (members added since) does
/// not change it. A joiner has none of its own (0) and learns it when it is added.
fn founding_cluster_id(config: &super::MemberConfig, members: &[Member]) -> io::Result<u64> {
    let path = config.data_dir.join("cluster-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => u64::from_str_radix(text.trim(), 16)
            .map_err(|e| io::Error::other(format!("{}: not a cluster id: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound && config.join => Ok(0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = members
                .iter()
                .fold(0xcbf2_9ce4_8422_2325_u64, |h, m| super::member_id(&format!("{h}/{}={}", m.name, m.addr)));
            std::fs::write(&path, format!("{id:x}\n"))?;
            Ok(id)
        }
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

pub(super) fn spawn(
    shared: Arc<Shared>,
    node: Node,
    queue: Queue,
    outbox: Outbox,
) -> io::Result<std::thread::JoinHandle<()>> {
    let name = format!("raft-{}", shared.config.name);
    std::thread::Builder::new().name(name).spawn(move || Driver::new(shared, node, outbox).run(queue))
}

/// The Raft thread's state besides the node.
struct Driver {
    shared: Arc<Shared>,
    node: Node,
    outbox: Outbox,
    /// Writes proposed here, by sequence number, awaiting their application.
    writes: HashMap<u64, WriteReply>,
    next_seq: u64,
    /// Read barriers sent to Raft, by context.
    reads: HashMap<u64, oneshot::Sender<Result<(), RegistryError>>>,
    /// Confirmed reads waiting for this member to apply up to their index.
    confirmed: BTreeMap<u64, Vec<oneshot::Sender<Result<(), RegistryError>>>>,
    /// Membership changes proposed here, by sequence number, awaiting their application.
    changes: HashMap<u64, MembersReply>,
    /// Whether the configuration applied last includes this member.
    in_conf: bool,
    /// The log index at which each learner was added: it must have replicated that far
    /// before it may be promoted.
    learners_added: HashMap<u64, u64>,
    /// When this member learned it was removed from the cluster.
    removed_at: Option<Instant>,
    leases: LeaseClock,
    role: Role,
    last_snapshot: u64,
    /// For compaction by age: the store's revision sampled every tenth of `retain_for` while
    /// leader, oldest first (about ten samples).
    revision_samples: VecDeque<(Instant, u64)>,
}

impl Driver {
    fn new(shared: Arc<Shared>, node: Node, outbox: Outbox) -> Driver {
        let snapshot = node.storage().snapshot_meta();
        let (last_snapshot, in_conf) = (snapshot.index, snapshot.conf.members().any(|id| id == shared.id));
        let checkpoint = TICK * node_election_ticks();
        Driver {
            shared,
            node,
            outbox,
            writes: HashMap::new(),
            next_seq: 1,
            reads: HashMap::new(),
            confirmed: BTreeMap::new(),
            changes: HashMap::new(),
            in_conf,
            learners_added: HashMap::new(),
            removed_at: None,
            leases: LeaseClock::new(checkpoint),
            role: Role::Follower,
            last_snapshot,
            revision_samples: VecDeque::new(),
        }
    }

    fn run(mut self, queue: Queue) {
        if self.node.status().conf.voters == [self.shared.id] {
            self.node.campaign();
        }
        let mut next_tick = Instant::now() + TICK;
        loop {
            if queue.stopped.load(Ordering::Acquire) {
                return;
            }
            if self.removed_at.is_some_and(|at| at.elapsed() >= REMOVED_LINGER) {
                tracing::info!(member = %self.shared.config.name, "removed from the cluster; stopping the member");
                self.shared.removed.send_replace(true);
                return;
            }
            let now = Instant::now();
            if now >= next_tick {
                self.node.tick();
                self.on_tick(now);
                next_tick = now + TICK;
            }
            match queue.rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                Ok(input) => {
                    self.handle(input);
                    // Take whatever else is queued, so one `Ready` carries it all.
                    while let Ok(input) = queue.rx.try_recv() {
                        self.handle(input);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if let Err(e) = self.process_ready() {
                tracing::error!(member = %self.shared.config.name, error = %e, "storage failed; stopping the member");
                return;
            }
        }
    }

    fn not_leader(&self) -> RegistryError {
        match self.node.leader() {
            Some(leader) if leader != self.shared.id => {
                let mut e = RegistryError::new(
                    ErrorCode::NotLeader,
                    format!("this member is not the leader; ask {}", self.shared.addr_of(leader)),
                );
                e.leader = self.shared.addr_of(leader);
                e
            }
            _ => RegistryError::new(ErrorCode::NoLeader, "no leader is known yet (an election is under way); retry"),
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Peer(message) => self.node.step(message),
            Input::Propose(command, reply) => {
                if let Err(e) = self.propose(command, Some(reply)) {
                    tracing::debug!(error = %e, "proposal refused");
                }
            }
            Input::Read(reply) => {
                let ctx = self.next_seq;
                self.next_seq += 1;
                match self.node.read_index(ctx.to_be_bytes().to_vec()) {
                    Ok(()) => {
                        self.reads.insert(ctx, reply);
                    }
                    Err(_) => {
                        let _ = reply.send(Err(self.not_leader()));
                    }
                }
            }
            Input::KeepAlive(ids, reply) => {
                let answers = match self.role {
                    Role::Leader => {
                        let state = self.shared.lock();
                        let now = Instant::now();
                        ids.iter().map(|&id| self.leases.renew(id, &state.store, now)).collect()
                    }
                    _ => {
                        let e = self.not_leader();
                        ids.iter().map(|_| Err(e.clone())).collect()
                    }
                };
                let _ = reply.send(answers);
            }
            Input::MoveLeader(to, reply) => {
                let answer = match self.role {
                    Role::Leader => self.node.transfer_leader(to).map_err(|e| {
                        RegistryError::new(ErrorCode::InvalidRequest, format!("cannot move leadership to {to:x}: {e}"))
                    }),
                    _ => Err(self.not_leader()),
                };
                let _ = reply.send(answer);
            }
            Input::AddMember(member, reply) => {
                let change = ConfChange::AddLearner(member.id);
                self.change_members(change, member, reply);
            }
            Input::RemoveMember(id, reply) => {
                let known = self.shared.lock().store.members().iter().find(|m| m.id == id).cloned();
                let member = known.unwrap_or(Member { id, ..Member::default() });
                self.change_members(ConfChange::RemoveNode(id), member, reply);
            }
            Input::Removed => self.removed(Instant::now()),
            Input::TimeToLive(id, reply) => {
                let answer = match self.role {
                    Role::Leader => self.leases.remaining(id, Instant::now()),
                    _ => Err(self.not_leader()),
                };
                let _ = reply.send(answer);
            }
        }
    }

    /// Proposes `command`; the reply, if any, is answered when it is applied or refused.
    fn propose(&mut self, command: Command, reply: Option<WriteReply>) -> Result<(), RegistryError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let proposal = Proposal { member: self.shared.id, seq, command };
        let mut data = bytes::BytesMut::new();
        let outcome = match Codec::Protobuf.encode(&proposal, &mut data) {
            Ok(()) => self.node.propose(data.to_vec()).map_err(|e| match e {
                ProposeError::NotLeader { .. } => self.not_leader(),
                other => RegistryError::new(ErrorCode::NoLeader, format!("{other}; retry")),
            }),
            Err(e) => Err(RegistryError::new(ErrorCode::InvalidRequest, format!("the request cannot be encoded: {e}"))),
        };
        match (outcome, reply) {
            (Ok(_), Some(reply)) => {
                self.writes.insert(seq, reply);
                Ok(())
            }
            (Ok(_), None) => Ok(()),
            (Err(e), Some(reply)) => {
                let _ = reply.send(Err(e.clone()));
                Err(e)
            }
            (Err(e), None) => Err(e),
        }
    }

    /// Proposes a membership change about `subject`; `reply` hears the members once applied.
    fn change_members(&mut self, change: ConfChange, subject: Member, reply: MembersReply) {
        if self.role != Role::Leader {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        match self.propose_change(change, subject, seq) {
            Ok(()) => {
                self.changes.insert(seq, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn propose_change(&mut self, change: ConfChange, subject: Member, seq: u64) -> Result<(), RegistryError> {
        let cluster_id = self.shared.lock().store.cluster_id();
        let context = MemberChange { proposer: self.shared.id, seq, cluster_id, subject };
        let mut data = bytes::BytesMut::new();
        Codec::Protobuf
            .encode(&context, &mut data)
            .map_err(|e| RegistryError::new(ErrorCode::InvalidRequest, format!("the change cannot be encoded: {e}")))?;
        let name = context.subject.name;
        self.node.propose_conf_change_with(change, data.to_vec()).map(drop).map_err(|e| match e {
            ProposeError::NotLeader { .. } => self.not_leader(),
            ProposeError::LeaderNotReady | ProposeError::TransferInProgress => {
                RegistryError::new(ErrorCode::NoLeader, format!("{e}; retry"))
            }
            ProposeError::ConfChangePending => RegistryError::new(
                ErrorCode::InvalidRequest,
                "another membership change is still being applied (a new learner waits to catch up before its \
                 promotion); retry once `rpc registry member list` shows it done",
            ),
            other => RegistryError::new(ErrorCode::InvalidRequest, format!("cannot change {name:?}: {other}")),
        })
    }

    /// On the leader: promotes the first learner that has caught up to voter.
    fn promote_caught_up_learner(&mut self) {
        let status = self.node.status();
        // A learner added before the last snapshot must at least have that snapshot.
        let floor = self.last_snapshot.max(1);
        let caught_up = status.conf.learners.iter().copied().find(|&id| {
            let added = self.learners_added.get(&id).copied().unwrap_or(floor);
            self.node.match_index(id).is_some_and(|matched| matched >= added && matched + PROMOTE_LAG >= status.commit)
        });
        let Some(id) = caught_up else { return };
        let known = self.shared.lock().store.members().iter().find(|m| m.id == id).cloned();
        let subject = known.unwrap_or(Member { id, ..Member::default() });
        // Refused while another change is pending; the next tick tries again.
        if self.propose_change(ConfChange::AddVoter(id), subject, 0).is_ok() {
            tracing::info!(member = %self.shared.config.name, learner = id, "promoting a caught-up learner to voter");
        }
    }

    fn on_tick(&mut self, now: Instant) {
        if self.role != Role::Leader {
            return;
        }
        self.promote_caught_up_learner();
        let (due, revision, compacted) = {
            let state = self.shared.lock();
            (self.leases.due(&state.store, now), state.store.revision(), state.store.compact_revision())
        };
        for command in due {
            // Refused only if leadership was just lost; the next leader takes over.
            let _ = self.propose(command, None);
        }
        let retain = self.shared.config.retain_revisions;
        // Compacting in steps of `retain` keeps the work per compaction bounded.
        if retain > 0 && revision > compacted + 2 * retain {
            let _ = self.propose(Command::Compact(revision - retain), None);
        }
        if let Some(to) = self.aged_revision(revision, now) {
            if to > compacted {
                let _ = self.propose(Command::Compact(to), None);
            }
        }
    }

    /// Samples `revision` for compaction by age; answers the newest revision sampled at least
    /// `retain_for` ago, once per sample that ages out.
    fn aged_revision(&mut self, revision: u64, now: Instant) -> Option<u64> {
        let retain_for = self.shared.config.retain_for;
        if retain_for.is_zero() {
            return None;
        }
        let due = self.revision_samples.back().is_none_or(|(at, _)| now.duration_since(*at) >= retain_for / 10);
        if due {
            self.revision_samples.push_back((now, revision));
        }
        let mut aged = None;
        while let Some(&(at, sampled)) = self.revision_samples.front() {
            if now.duration_since(at) < retain_for {
                break;
            }
            aged = Some(sampled);
            self.revision_samples.pop_front();
        }
        aged
    }

    fn process_ready(&mut self) -> Result<(), rpc_raft::StorageError> {
        while self.node.has_ready() {
            let ready = self.node.ready();
            // A leader's disk write overlaps its followers'; nothing is stepped until it is done.
            if ready.send_before_persist {
                self.outbox.send(&ready.messages);
            }
            let started = Instant::now();
            self.node.persist_ready(&ready)?;
            if ready.must_persist() {
                self.shared.persist.record(started.elapsed());
            }
            if !ready.send_before_persist {
                self.outbox.send(&ready.messages);
            }
            self.apply(&ready);
            self.node.advance();
        }
        self.maybe_snapshot();
        Ok(())
    }

    fn apply(&mut self, ready: &Ready) {
        let now = Instant::now();
        let status = self.node.status();
        let shared = self.shared.clone();
        let mut state = shared.lock();
        if let Some(snapshot) = &ready.snapshot {
            match Store::restore(&snapshot.data, self.shared.config.limits.clone()) {
                Ok(store) => {
                    state.store = store;
                    self.leases.restored(&state.store, now);
                    let super::State { store, watchers, .. } = &mut *state;
                    watchers.restored(store);
                }
                Err(e) => {
                    tracing::error!(error = %e, "a snapshot from the leader is unreadable; keeping the old state")
                }
            }
        }
        let mut members_changed = ready.snapshot.is_some();
        if let Some(snapshot) = &ready.snapshot {
            self.in_conf = snapshot.meta.conf.members().any(|id| id == self.shared.id);
        }
        for entry in &ready.committed_entries {
            if entry.kind == EntryKind::ConfChange {
                self.apply_conf_change(entry, &mut state.store, now);
                members_changed = true;
                continue;
            }
            if entry.data.is_empty() {
                continue;
            }
            let proposal: Proposal = match Codec::Protobuf.decode(&entry.data) {
                Ok(proposal) => proposal,
                Err(e) => {
                    tracing::error!(index = entry.index, error = %e, "a log entry is unreadable; skipped on every member");
                    continue;
                }
            };
            let applied = state.store.apply(&proposal.command);
            self.leases.applied(&proposal.command, &state.store, now);
            if !applied.events.is_empty() {
                let revision = state.store.revision();
                let header = self.shared.header(&state);
                state.watchers.notify(&header, revision, &applied.events);
            }
            if proposal.member == self.shared.id {
                if let Some(reply) = self.writes.remove(&proposal.seq) {
                    let _ = reply.send(applied.output.map_err(RegistryError::from));
                }
            }
        }
        state.raft = RaftView {
            term: status.term,
            leader: status.leader.unwrap_or(0),
            last_index: status.last_index,
            commit: status.commit,
            applied: status.applied.max(ready.committed_entries.last().map_or(0, |e| e.index)),
        };
        let applied = state.raft.applied;
        if members_changed {
            self.outbox.update(state.store.members());
        }
        drop(state);
        for read in &ready.read_states {
            let ctx = read.ctx.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0);
            if let Some(reply) = self.reads.remove(&ctx) {
                self.confirmed.entry(read.index).or_default().push(reply);
            }
        }
        while let Some(entry) = self.confirmed.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for reply in entry.remove() {
                let _ = reply.send(Ok(()));
            }
        }
        let role = self.node.role();
        if role != self.role {
            self.role_changed(role, now);
        }
    }

    /// Applies a committed membership change to the member directory; answers its proposer.
    fn apply_conf_change(&mut self, entry: &Entry, store: &mut Store, now: Instant) {
        let (conf, context) = match decode_conf_entry(&entry.data) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::error!(index = entry.index, error = %e, "a membership change is unreadable; skipped");
                return;
            }
        };
        let change: MemberChange = Codec::Protobuf.decode(&context).unwrap_or_default();
        let members = conf
            .members()
            .map(|id| {
                // A subject without an address (a promotion by a leader that lacked it) must
                // not erase the one the directory has.
                let known = match change.subject.id == id && !change.subject.addr.is_empty() {
                    true => Some(change.subject.clone()),
                    false => store.members().iter().find(|m| m.id == id).cloned(),
                };
                let member = known.unwrap_or_else(|| Member { id, name: format!("{id:x}"), ..Member::default() });
                Member { learner: conf.is_learner(id), ..member }
            })
            .collect();
        // Every change carries the id its leader holds: it settles a member that derived
        // another (a joiner restarted without --join, say).
        let cluster_id = match change.cluster_id {
            0 => store.cluster_id(),
            told => told,
        };
        store.set_cluster(cluster_id, members);
        self.learners_added.retain(|id, _| conf.is_learner(*id));
        for &id in &conf.learners {
            self.learners_added.entry(id).or_insert(entry.index);
        }
        tracing::info!(member = %self.shared.config.name, voters = ?conf.voters, learners = ?conf.learners, "membership changed");
        if change.proposer == self.shared.id {
            if let Some(reply) = self.changes.remove(&change.seq) {
                let _ = reply.send(Ok(store.members().to_vec()));
            }
        }
        let gone = !conf.members().any(|id| id == change.subject.id);
        if self.role == Role::Leader && gone && change.subject.id != self.shared.id && !change.subject.addr.is_empty() {
            self.outbox.notify_removed(cluster_id, &change.subject);
        }
        let in_conf = conf.members().any(|id| id == self.shared.id);
        if self.in_conf && !in_conf {
            self.removed(now);
        }
        self.in_conf = in_conf;
    }

    fn removed(&mut self, now: Instant) {
        if self.removed_at.is_none() {
            tracing::warn!(member = %self.shared.config.name, "this member was removed from the cluster");
            self.removed_at = Some(now);
        }
    }

    fn role_changed(&mut self, role: Role, now: Instant) {
        let was_leader = self.role == Role::Leader;
        self.role = role;
        if role == Role::Leader {
            let state = self.shared.lock();
            self.leases.elected(&state.store, now);
            tracing::info!(member = %self.shared.config.name, term = self.node.term(), "became the leader");
        } else if was_leader {
            self.leases.deposed();
            // Writes proposed here may still commit under the next leader, or be dropped:
            // the callers are told the outcome is unknown rather than left waiting.
            for (_, reply) in self.writes.drain() {
                let _ = reply.send(Err(RegistryError::new(
                    ErrorCode::Timeout,
                    "leadership changed before the write was applied; it may or may not have been; read to find out",
                )));
            }
            for (_, reply) in self.changes.drain() {
                let _ = reply.send(Err(RegistryError::new(
                    ErrorCode::Timeout,
                    "leadership changed before the membership change was applied; check `member list`",
                )));
            }
            for (_, reply) in self.reads.drain() {
                let _ = reply
                    .send(Err(RegistryError::new(ErrorCode::NoLeader, "leadership changed during the read; retry")));
            }
        }
    }

    fn maybe_snapshot(&mut self) {
        let applied = self.node.status().applied;
        if applied < self.last_snapshot + self.shared.config.snapshot_entries {
            return;
        }
        let data = self.shared.lock().store.snapshot();
        match self.node.compact(data) {
            Ok(()) => self.last_snapshot = applied,
            Err(e) => tracing::warn!(error = %e, "taking a snapshot failed; the log keeps growing until the next try"),
        }
    }
}

/// The default minimum election timeout, in ticks: leases are checkpointed this often.
fn node_election_ticks() -> u32 {
    Config::new(1).election_tick_min as u32
}
