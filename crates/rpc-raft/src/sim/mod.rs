//! A deterministic, single-threaded cluster simulator for testing Raft under faults.
//!
//! One seed fixes everything: the network (drops, duplicates, delays that reorder,
//! symmetric and one-way partitions), crashes and restarts (a restarted node keeps
//! exactly what it persisted; everything in memory is lost), random membership
//! changes and leadership transfers, and clients issuing puts, compare-and-swaps and
//! reads (ReadIndex and lease reads, sent to leaders and followers) against a
//! [`KvStore`]. After every delivery and every `Ready` the Raft safety properties are
//! checked, and at the end the client history is checked for linearizability. A run
//! ends with a fault-free phase in which the cluster must make progress again.
//!
//! A failure reports the seed; [`replay`] reruns it with a readable trace (the crate's
//! `tests/simulation.rs` exposes this as `RAFT_REPLAY=scenario:seed`, and runs
//! `RAFT_SEEDS` seeds per scenario when that variable is set). The
//! simulator owns the harness only: nodes are ordinary [`RawNode`]s over a
//! [`crate::storage::MemStorage`] or, with [`SimConfig::durable`], a
//! [`crate::storage::DurableStorage`] on a [`crate::storage::FaultFs`], where a crash
//! is a power loss that may even strike in the middle of persisting a `Ready`.
//!
//! Schedules aimed at known blind spots: every node's clock drifts
//! ([`SimConfig::clock_drift_pct`]); a leader nemesis ([`SimConfig::leader_nemesis`])
//! crashes or cuts off a leader right after it was elected, appended entries or
//! advanced its commit index, slowing its clock to the slowest allowed rate, and
//! heals after a time around an election timeout; messages from leaders can be lost
//! more often ([`SimConfig::leader_drop`]); one-entry appends
//! ([`SimConfig::max_entries_per_msg`]) make followers acknowledge old-term entries
//! before a new leader's no-op; and nodes can crash between persisting a `Ready` and
//! sending its messages, or before applying it ([`SimConfig::crash_in_ready`]).
//!
//! Mutation results (release build, scenarios of `tests/simulation.rs`, 3,000 seeds
//! each; the number is the seeds run up to and including the first failure, `-` means
//! none failed):
//!
//! | mutation | scenario | seeds to first failure |
//! |---|---|---|
//! | commit counts replicas of old-term entries (Figure 8) | figure8 | 51 |
//! | | figure8-5nodes | 9 |
//! | | all ten other scenarios | - |
//! | ReadIndex answers without a heartbeat round | wild-drift | 7 |
//! | | no-check-quorum | 11 |
//! | | drift | 141 |
//! | | 3nodes | 749 |
//! | lease 4x too long | drift | 110 |
//! | | all other scenarios | - |
//! | none: drift of 80% against a bound of 20% | drift-beyond-bound | 5 (asserted) |
//!
//! Before these schedules, the first mutation survived 20,000 seeds and the lease one
//! needed about 4,400.
//!
//! ```
//! use rpc_raft::sim::{run, SimConfig};
//! let stats = run(&SimConfig::new(7)).expect("safe");
//! assert!(stats.committed > 0);
//! ```

mod disk;
mod invariants;
mod network;

use std::collections::HashMap;
use std::fmt;

use crate::config::{Config, ReadOnlyOption};
use crate::error::ProposeError;
use crate::kv::{KvCommand, KvOp, KvOutput, KvStore};
use crate::linearizability::{check, CheckResult, KvModel, Operation};
use crate::message::{ConfChange, ConfState, EntryKind, Message, NodeId};
use crate::node::RawNode;
use crate::raft::Role;
use crate::rng::Rng;
use crate::storage::Storage;

use disk::Disk;
use invariants::Invariants;
use network::{NetFaults, Network};

/// Parameters of one simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of everything random in the run.
    pub seed: u64,
    /// Number of nodes (ids `1..=nodes`).
    pub nodes: u64,
    /// Nodes `1..=initial_voters` start as voters; the others start empty.
    pub initial_voters: u64,
    /// Ticks with faults enabled.
    pub ticks: u64,
    /// Fault-free ticks at the end, during which the cluster must make progress.
    pub heal_ticks: u64,
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Maximum delivery delay in ticks (uniform, so messages reorder).
    pub max_delay: u64,
    /// Per-tick probability of changing the partition.
    pub partition_rate: f64,
    /// Per-tick probability of crashing a node.
    pub crash_rate: f64,
    /// Number of concurrent clients.
    pub clients: u64,
    /// Number of distinct keys.
    pub keys: u64,
    /// Whether reads may use the leader lease.
    pub lease_reads: bool,
    /// Compact the log after this many applied entries (0: never).
    pub snapshot_every: u64,
    /// Whether to make random membership changes.
    pub membership: bool,
    /// Whether to make random leadership transfers.
    pub transfers: bool,
    /// Whether nodes use pre-vote.
    pub pre_vote: bool,
    /// Whether nodes use check-quorum (lease reads are only issued when on). Off,
    /// deposed leaders linger, which is what exposes unsafe read paths.
    pub check_quorum: bool,
    /// Per-node clock drift in percent: each node's clock runs at a rate drawn from
    /// `100 - clock_drift_pct ..= 100` percent of real time, redrawn when it restarts
    /// and now and then while it runs. Leader leases absorb drift only below
    /// [`SimConfig::lease_drift_bound_pct`]; beyond it lease reads are unsafe.
    pub clock_drift_pct: u64,
    /// Maximum entries per append message. Small values make followers acknowledge
    /// old-term entries before a new leader's no-op, the shape of the Raft paper's
    /// Figure 8.
    pub max_entries_per_msg: usize,
    /// Probability of striking a leader at a dangerous moment: right after it was
    /// elected, appended entries (which then reached at most a minority) or advanced
    /// its commit index. A strike crashes it or cuts it off for a time around an
    /// election timeout; repeated, this churns terms over partially replicated logs.
    pub leader_nemesis: f64,
    /// Extra probability that a message sent by a leader is lost.
    pub leader_drop: f64,
    /// Probability of crashing a node at each point inside its handling of a `Ready`:
    /// after persisting it but before sending its messages, and after sending them
    /// but before applying its entries.
    pub crash_in_ready: f64,
    /// Nodes store their log in [`crate::storage::DurableStorage`] on a fault-injecting
    /// file system; crashes are power losses, some striking mid-persist.
    pub durable: bool,
    /// Record a readable trace (slow; [`replay`] turns it on).
    pub trace: bool,
}

impl SimConfig {
    /// A 3-node run of moderate length with every fault enabled.
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            nodes: 3,
            initial_voters: 3,
            ticks: 300,
            heal_ticks: 150,
            drop: 0.05,
            duplicate: 0.03,
            max_delay: 3,
            partition_rate: 0.02,
            crash_rate: 0.01,
            clients: 3,
            keys: 3,
            lease_reads: true,
            snapshot_every: 25,
            membership: false,
            transfers: true,
            pre_vote: true,
            check_quorum: true,
            durable: false,
            clock_drift_pct: 10,
            max_entries_per_msg: 8,
            leader_nemesis: 0.0,
            leader_drop: 0.0,
            crash_in_ready: 0.0,
            trace: false,
        }
    }

    /// Largest clock drift, in percent, that leader leases tolerate: the lease lasts
    /// `election_tick_min - lease_margin_ticks` leader ticks, while followers refuse
    /// votes for `election_tick_min` of their own ticks after hearing from the leader.
    pub fn lease_drift_bound_pct(&self) -> u64 {
        let c = self.raft_config(1, 0);
        100 * c.lease_margin_ticks / c.election_tick_min
    }

    /// The Raft configuration the simulator gives node `id`.
    pub fn raft_config(&self, id: NodeId, incarnation: u64) -> Config {
        let mut c = Config::new(id);
        c.election_tick_min = 10;
        c.election_tick_max = 20;
        c.heartbeat_tick = 2;
        c.max_inflight_msgs = 4;
        c.max_entries_per_msg = self.max_entries_per_msg;
        c.max_snapshot_chunk = 48;
        c.pre_vote = self.pre_vote;
        c.check_quorum = self.check_quorum;
        c.seed = self.seed ^ (id << 32) ^ incarnation.wrapping_mul(0x9E37);
        c
    }
}

/// Counters of a successful run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Highest index known committed.
    pub committed: u64,
    /// Client operations that returned.
    pub ops_completed: u64,
    /// Client operations abandoned with an unknown outcome.
    pub ops_unknown: u64,
    /// Terms that had a leader.
    pub leaders: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Membership changes committed.
    pub conf_changes: u64,
}

/// A violated property, with the seed to reproduce it.
#[derive(Clone, Debug)]
pub struct SimFailure {
    /// Seed that fails.
    pub seed: u64,
    /// Tick of the failure.
    pub tick: u64,
    /// What went wrong.
    pub reason: String,
    /// Trace of the run (empty unless tracing was on).
    pub trace: Vec<String>,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "simulation seed {} failed at tick {}: {}", self.seed, self.tick, self.reason)?;
        let skip = self.trace.len().saturating_sub(400);
        if skip > 0 {
            writeln!(f, "... ({skip} earlier trace lines omitted)")?;
        }
        for line in &self.trace[skip..] {
            writeln!(f, "  {line}")?;
        }
        write!(f, "replay with rpc_raft::sim::replay(&SimConfig {{ seed: {}, .. }})", self.seed)
    }
}

impl std::error::Error for SimFailure {}

struct Node {
    id: NodeId,
    raw: Option<RawNode<Disk>>,
    disk: Option<Disk>,
    incarnation: u64,
    kv: KvStore,
    applied: u64,
    /// request -> client, for writes proposed here.
    writes: HashMap<u64, u64>,
    /// request -> (client, key), reads waiting for their ReadState.
    reads: HashMap<u64, (u64, u64)>,
    /// Confirmed reads waiting for the state machine: (index, request, client, key).
    ready_reads: Vec<(u64, u64, u64, u64)>,
    restart_at: u64,
    last_role: (Role, u64),
    /// Clock rate in percent of real time.
    rate: u64,
    /// Accumulated clock progress; the node ticks each time it passes 100.
    clock_acc: u64,
}

struct Client {
    id: u64,
    leader_guess: NodeId,
    /// (request, history index, deadline)
    outstanding: Option<(u64, usize, u64)>,
    next_at: u64,
}

struct Sim {
    cfg: SimConfig,
    rng: Rng,
    now: u64,
    clock: u64,
    nodes: Vec<Node>,
    ids: Vec<NodeId>,
    net: Network,
    inv: Invariants,
    clients: Vec<Client>,
    history: Vec<Operation<KvOp, KvOutput>>,
    next_request: u64,
    stats: SimStats,
    trace: Vec<String>,
    healing: bool,
    healed_completions: u64,
    /// A pending strike of the leader nemesis: (tick, leader).
    strike: Option<(u64, NodeId)>,
    /// When the leader nemesis repairs the network it cut.
    nemesis_heal_at: Option<u64>,
}

type Res = Result<(), String>;

impl Sim {
    fn new(cfg: SimConfig) -> Result<Self, String> {
        let mut rng = Rng::new(cfg.seed);
        let ids: Vec<NodeId> = (1..=cfg.nodes).collect();
        let conf = ConfState::with_voters(1..=cfg.initial_voters);
        let mut nodes = Vec::new();
        for &id in &ids {
            let member_conf = if id <= cfg.initial_voters { conf.clone() } else { ConfState::default() };
            let storage = Disk::new(cfg.durable, member_conf).map_err(|e| e.to_string())?;
            let raw = RawNode::new(cfg.raft_config(id, 0), storage).map_err(|e| e.to_string())?;
            let rate = draw_rate(&mut rng, cfg.clock_drift_pct);
            nodes.push(Node {
                id,
                raw: Some(raw),
                disk: None,
                incarnation: 0,
                kv: KvStore::new(),
                applied: 0,
                writes: HashMap::new(),
                reads: HashMap::new(),
                ready_reads: Vec::new(),
                restart_at: 0,
                last_role: (Role::Follower, 0),
                rate,
                clock_acc: 0,
            });
        }
        let clients = (0..cfg.clients)
            .map(|i| Client {
                id: i,
                leader_guess: 1 + rng.range(0, cfg.nodes),
                outstanding: None,
                next_at: rng.range(0, 20),
            })
            .collect();
        let net = Network::new(NetFaults { drop: cfg.drop, duplicate: cfg.duplicate, max_delay: cfg.max_delay });
        Ok(Sim {
            rng,
            now: 0,
            clock: 0,
            nodes,
            ids,
            net,
            inv: Invariants::new(),
            clients,
            history: Vec::new(),
            next_request: 1,
            stats: SimStats::default(),
            trace: Vec::new(),
            healing: false,
            healed_completions: 0,
            strike: None,
            nemesis_heal_at: None,
            cfg,
        })
    }

    fn log(&mut self, f: impl FnOnce() -> String) {
        if self.cfg.trace {
            let line = format!("t={} {}", self.now, f());
            self.trace.push(line);
        }
    }

    fn idx(&self, id: NodeId) -> usize {
        (id - 1) as usize
    }

    fn run(&mut self) -> Res {
        let total = self.cfg.ticks + self.cfg.heal_ticks;
        while self.now < total {
            self.now += 1;
            if self.now == self.cfg.ticks + 1 {
                self.heal()?;
            }
            if !self.healing {
                self.inject_faults()?;
            }
            self.restart_due()?;
            for i in 0..self.nodes.len() {
                let n = &mut self.nodes[i];
                n.clock_acc += n.rate;
                if n.clock_acc < 100 {
                    continue;
                }
                n.clock_acc -= 100;
                if let Some(raw) = self.nodes[i].raw.as_mut() {
                    raw.tick();
                    let id = self.nodes[i].id;
                    self.handle_ready(id)?;
                }
            }
            self.client_actions()?;
            while let Some(m) = self.net.pop_due(self.now) {
                let to = m.to;
                let i = self.idx(to);
                if self.nodes.get(i).and_then(|n| n.raw.as_ref()).is_none() {
                    continue;
                }
                if self.cfg.trace {
                    let line = format!(
                        "t={} deliver {}->{} {} term {} {:?}",
                        self.now,
                        m.from,
                        m.to,
                        m.body.name(),
                        m.term,
                        brief(&m.body)
                    );
                    self.trace.push(line);
                }
                if let Some(raw) = self.nodes[i].raw.as_mut() {
                    raw.step(m);
                }
                self.handle_ready(to)?;
                self.nemesis()?;
            }
            self.expire_clients();
        }
        if self.healed_completions == 0 {
            return Err(format!(
                "no progress: no client operation completed in the {} fault-free ticks",
                self.cfg.heal_ticks
            ));
        }
        self.check_history()
    }

    fn heal(&mut self) -> Res {
        self.healing = true;
        self.strike = None;
        self.nemesis_heal_at = None;
        self.log(|| "heal: network repaired, all nodes restarted".into());
        self.net.heal();
        self.net.faults.drop = 0.0;
        self.net.faults.duplicate = 0.0;
        self.net.faults.max_delay = self.net.faults.max_delay.min(2);
        for n in &mut self.nodes {
            n.restart_at = self.now.min(n.restart_at);
            let disk = n.raw.as_ref().map(|r| r.storage()).or(n.disk.as_ref());
            if let Some(fs) = disk.and_then(|d| d.fault_fs()) {
                fs.disarm();
            }
        }
        Ok(())
    }

    fn inject_faults(&mut self) -> Res {
        self.nemesis()?;
        if self.cfg.clock_drift_pct > 0 && self.rng.chance(0.02) {
            let i = self.rng.range(0, self.nodes.len() as u64) as usize;
            self.nodes[i].rate = draw_rate(&mut self.rng, self.cfg.clock_drift_pct);
        }
        if self.rng.chance(self.cfg.partition_rate) {
            self.net.heal();
            let ids = self.ids.clone();
            match self.rng.range(0, 5) {
                0 => self.log(|| "partition healed".into()),
                4 => {
                    // Cutting off the leader is what exposes stale reads and lost writes.
                    if let Some(l) = self.current_leader() {
                        self.net.isolate(l, &ids, false);
                        self.log(|| format!("partition: leader {l} isolated"));
                    }
                }
                1 => {
                    let n = ids[self.rng.range(0, ids.len() as u64) as usize];
                    self.net.isolate(n, &ids, false);
                    self.log(|| format!("partition: {n} isolated"));
                }
                2 => {
                    let n = ids[self.rng.range(0, ids.len() as u64) as usize];
                    self.net.isolate(n, &ids, true);
                    self.log(|| format!("partition: {n} can receive but not send"));
                }
                _ => {
                    let mut side = Vec::new();
                    for &a in &ids {
                        if self.rng.chance(0.5) {
                            side.push(a);
                        }
                    }
                    for &a in &ids {
                        for &b in &ids {
                            if side.contains(&a) != side.contains(&b) {
                                self.net.block(a, b);
                            }
                        }
                    }
                    self.log(|| format!("partition: {side:?} | rest"));
                }
            }
        }
        if self.rng.chance(self.cfg.crash_rate) {
            let i = self.rng.range(0, self.nodes.len() as u64) as usize;
            self.crash(i);
        }
        if self.cfg.durable && self.rng.chance(self.cfg.crash_rate) {
            // Arm a power loss a few file operations ahead: it may hit mid-persist.
            let i = self.rng.range(0, self.nodes.len() as u64) as usize;
            let fs = self.nodes[i].raw.as_ref().and_then(|r| r.storage().fault_fs());
            if let Some(fs) = fs {
                fs.crash_after(self.rng.range(1, 6));
            }
        }
        if self.cfg.membership && self.rng.chance(0.01) {
            if let Some(l) = self.current_leader() {
                let target = 1 + self.rng.range(0, self.cfg.nodes);
                let i = self.idx(l);
                let conf = self.nodes[i].raw.as_ref().map(|r| r.status().conf);
                if let Some(conf) = conf {
                    let cc = if conf.is_voter(target) {
                        ConfChange::RemoveNode(target)
                    } else if conf.is_learner(target) {
                        ConfChange::AddVoter(target)
                    } else {
                        ConfChange::AddLearner(target)
                    };
                    if let Some(raw) = self.nodes[i].raw.as_mut() {
                        let r = raw.propose_conf_change(cc);
                        self.log(|| format!("leader {l} propose {cc:?}: {r:?}"));
                    }
                    self.handle_ready(l)?;
                }
            }
        }
        if self.cfg.transfers && self.rng.chance(0.01) {
            if let Some(l) = self.current_leader() {
                let target = 1 + self.rng.range(0, self.cfg.nodes);
                let i = self.idx(l);
                if let Some(raw) = self.nodes[i].raw.as_mut() {
                    let r = raw.transfer_leader(target);
                    self.log(|| format!("leader {l} transfer to {target}: {r:?}"));
                }
                self.handle_ready(l)?;
            }
        }
        Ok(())
    }

    /// Carries out a due strike of the leader nemesis, and repairs the network once
    /// its cut has lasted long enough.
    fn nemesis(&mut self) -> Res {
        if self.nemesis_heal_at.is_some_and(|t| t <= self.now) {
            self.nemesis_heal_at = None;
            self.net.heal();
            self.log(|| "nemesis: network repaired".into());
        }
        let Some((at, id)) = self.strike else {
            return Ok(());
        };
        if at > self.now {
            return Ok(());
        }
        self.strike = None;
        let i = self.idx(id);
        if self.nodes[i].raw.as_ref().map(|r| r.role()) != Some(Role::Leader) {
            return Ok(());
        }
        let ids = self.ids.clone();
        match self.rng.range(0, 4) {
            0 => {
                self.log(|| format!("nemesis: crash leader {id}"));
                self.crash(i);
            }
            1 => {
                // Still hears its followers, so it may keep believing it leads.
                self.net.isolate(id, &ids, true);
                self.log(|| format!("nemesis: leader {id} can receive but not send"));
            }
            _ => {
                self.net.isolate(id, &ids, false);
                // Its clock also drops to the slowest rate allowed and the others run
                // at full speed: the deposed leader lingers as long as it can, and its
                // lease is stretched to the limit while the others elect a successor.
                for n in &mut self.nodes {
                    n.rate = if n.id == id { 100 - self.cfg.clock_drift_pct.min(99) } else { 100 };
                }
                self.log(|| format!("nemesis: leader {id} isolated, its clock slowed"));
            }
        }
        // Around an election timeout: short cuts heal before anyone else is elected,
        // long ones after, and the old leader returns with its unreplicated suffix.
        self.nemesis_heal_at = Some(self.now + self.rng.range(4, 45));
        Ok(())
    }

    /// Whether to crash a node at a point inside its handling of a `Ready`.
    fn crash_now(&mut self) -> bool {
        !self.healing && self.cfg.crash_in_ready > 0.0 && self.rng.chance(self.cfg.crash_in_ready)
    }

    fn crash(&mut self, i: usize) {
        if let Some(raw) = self.nodes[i].raw.take() {
            let n = &mut self.nodes[i];
            n.disk = Some(raw.into_storage());
            n.writes.clear();
            n.reads.clear();
            n.ready_reads.clear();
            n.restart_at = self.now + self.rng.range(1, 40);
            let id = n.id;
            self.stats.crashes += 1;
            self.log(|| format!("crash node {id}"));
        }
    }

    fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|n| n.raw.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .max_by_key(|r| r.term())
            .map(|r| r.id())
    }

    fn random_claimed_leader(&mut self) -> Option<NodeId> {
        let claimed: Vec<NodeId> = self
            .nodes
            .iter()
            .filter_map(|n| n.raw.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .map(|r| r.id())
            .collect();
        if claimed.is_empty() {
            return None;
        }
        Some(claimed[self.rng.range(0, claimed.len() as u64) as usize])
    }

    fn restart_due(&mut self) -> Res {
        for i in 0..self.nodes.len() {
            let n = &mut self.nodes[i];
            if n.raw.is_some() || n.restart_at > self.now {
                continue;
            }
            let Some(disk) = n.disk.take() else { continue };
            n.incarnation += 1;
            n.rate = draw_rate(&mut self.rng, self.cfg.clock_drift_pct);
            n.clock_acc = 0;
            let seed = self.cfg.seed ^ n.incarnation.wrapping_mul(0x5851_F42D) ^ n.id;
            let mut disk = disk.after_crash(seed).map_err(|e| format!("node {} recovery: {e}", n.id))?;
            let snap = disk.snapshot().map_err(|e| e.to_string())?;
            n.kv = KvStore::restore(&snap.data).map_err(|e| e.to_string())?;
            n.applied = snap.meta.index;
            n.last_role = (Role::Follower, 0);
            let ents = disk.entries(disk.first_index(), disk.last_index() + 1, u64::MAX).map_err(|e| e.to_string())?;
            let id = n.id;
            self.inv.on_recover(id, &snap.meta, &ents)?;
            let n = &mut self.nodes[i];
            let cfg = self.cfg.raft_config(n.id, n.incarnation);
            n.raw = Some(RawNode::new(cfg, disk).map_err(|e| e.to_string())?);
            let id = n.id;
            self.log(|| format!("restart node {id}"));
            self.handle_ready(id)?;
        }
        Ok(())
    }

    fn send_all(&mut self, role: Role, messages: Vec<Message>) {
        for m in messages {
            let from_leader = role == Role::Leader && !self.healing && self.cfg.leader_drop > 0.0;
            if from_leader && self.rng.chance(self.cfg.leader_drop) {
                continue;
            }
            self.net.send(m, self.now, &mut self.rng);
        }
    }

    fn handle_ready(&mut self, id: NodeId) -> Res {
        let i = self.idx(id);
        loop {
            let Some(raw) = self.nodes[i].raw.as_mut() else {
                return Ok(());
            };
            if !raw.has_ready() {
                return Ok(());
            }
            let mut rd = raw.ready();
            let (role, term) = (raw.role(), raw.term());
            let messages = std::mem::take(&mut rd.messages);
            let messages = match rd.send_before_persist {
                true => {
                    self.send_all(role, messages);
                    if self.crash_now() {
                        self.log(|| format!("crash leader {id} after sending, before persisting"));
                        self.crash(i);
                        return Ok(());
                    }
                    Vec::new()
                }
                false => messages,
            };
            let Some(raw) = self.nodes[i].raw.as_mut() else {
                return Ok(());
            };
            if let Err(e) = raw.persist_ready(&rd) {
                let injected = raw.storage().fault_fs().is_some_and(|f| f.has_crashed());
                if !injected {
                    return Err(format!("node {id} persist: {e}"));
                }
                // Power lost mid-persist: nothing of this Ready was acknowledged.
                self.log(|| format!("power loss at node {id} while persisting"));
                self.crash(i);
                return Ok(());
            }
            self.inv.on_persist(id, term, role == Role::Leader, rd.snapshot.as_ref().map(|s| &s.meta), &rd.entries)?;
            let mut elected = false;
            if (role, term) != self.nodes[i].last_role {
                self.nodes[i].last_role = (role, term);
                self.log(|| format!("node {id} is {role:?} in term {term}"));
                if role == Role::Leader {
                    self.inv.on_leader(id, term)?;
                    elected = true;
                }
            }
            if let Some(hs) = &rd.hard_state {
                self.inv.on_commit(id, term, hs.commit)?;
            }
            let moment = elected || !rd.entries.is_empty() || !rd.committed_entries.is_empty();
            if role == Role::Leader
                && moment
                && !self.healing
                && self.strike.is_none()
                && self.nemesis_heal_at.is_none()
                && self.cfg.leader_nemesis > 0.0
                && self.rng.chance(self.cfg.leader_nemesis)
            {
                self.strike = Some((self.now + self.rng.range(0, 3), id));
            }
            if self.crash_now() {
                self.log(|| format!("crash node {id} after persisting, before sending"));
                self.crash(i);
                return Ok(());
            }
            self.send_all(role, messages);
            if self.crash_now() {
                self.log(|| format!("crash node {id} after sending, before applying"));
                self.crash(i);
                return Ok(());
            }
            if let Some(s) = &rd.snapshot {
                let n = &mut self.nodes[i];
                n.kv = KvStore::restore(&s.data).map_err(|e| e.to_string())?;
                n.applied = s.meta.index;
                self.stats.snapshots_installed += 1;
                let idx = s.meta.index;
                self.log(|| format!("node {id} installed snapshot at {idx}"));
            }
            for e in &rd.committed_entries {
                self.inv.on_apply(id, e)?;
                self.nodes[i].applied = e.index;
                match e.kind {
                    EntryKind::ConfChange => {
                        if self.nodes[i].id == 1 {
                            self.stats.conf_changes += 1;
                        }
                    }
                    EntryKind::Normal if !e.data.is_empty() => {
                        let cmd = KvCommand::decode(&e.data).map_err(|d| d.to_string())?;
                        let out = self.nodes[i].kv.apply(&cmd.op);
                        if let Some(c) = self.nodes[i].writes.remove(&cmd.request) {
                            self.complete(c, cmd.request, out);
                        }
                    }
                    EntryKind::Normal => {}
                }
            }
            for rs in rd.read_states {
                let mut b = [0u8; 8];
                if rs.ctx.len() == 8 {
                    b.copy_from_slice(&rs.ctx);
                }
                let req = u64::from_le_bytes(b);
                if let Some((c, key)) = self.nodes[i].reads.remove(&req) {
                    self.nodes[i].ready_reads.push((rs.index, req, c, key));
                }
            }
            let Some(raw) = self.nodes[i].raw.as_mut() else {
                return Ok(());
            };
            raw.advance();
            let applied = self.nodes[i].applied;
            let mut served = Vec::new();
            self.nodes[i].ready_reads.retain(|&(idx, req, c, key)| {
                if idx <= applied {
                    served.push((req, c, key));
                    false
                } else {
                    true
                }
            });
            for (req, c, key) in served {
                let v = self.nodes[i].kv.get(key);
                self.complete(c, req, KvOutput::Value(v));
            }
            let every = self.cfg.snapshot_every;
            if every > 0 {
                let n = &mut self.nodes[i];
                if let Some(raw) = n.raw.as_mut() {
                    if n.applied >= raw.storage().first_index() + every {
                        if let Err(e) = raw.compact(n.kv.snapshot()) {
                            let injected = raw.storage().fault_fs().is_some_and(|f| f.has_crashed());
                            if !injected {
                                return Err(format!("node {id} compact: {e}"));
                            }
                            self.crash(i);
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    fn complete(&mut self, client: u64, request: u64, out: KvOutput) {
        let c = &mut self.clients[client as usize];
        if let Some((req, h, _)) = c.outstanding {
            if req == request {
                self.clock += 1;
                self.history[h].ret = Some((self.clock, out));
                c.outstanding = None;
                c.next_at = self.now + self.rng.range(0, 3);
                self.stats.ops_completed += 1;
                if self.healing {
                    self.healed_completions += 1;
                }
                if self.cfg.trace {
                    let line = format!("t={} client {client} request {request} -> {out:?}", self.now);
                    self.trace.push(line);
                }
            }
        }
    }

    fn expire_clients(&mut self) {
        for c in &mut self.clients {
            if let Some((_, _, deadline)) = c.outstanding {
                if deadline <= self.now {
                    c.outstanding = None;
                    self.stats.ops_unknown += 1;
                    c.leader_guess = 1 + self.rng.range(0, self.cfg.nodes);
                }
            }
        }
    }

    fn client_actions(&mut self) -> Res {
        for ci in 0..self.clients.len() {
            let c = &self.clients[ci];
            if c.outstanding.is_some() || c.next_at > self.now {
                continue;
            }
            let key = self.rng.range(0, self.cfg.keys);
            let request = self.next_request;
            let roll = self.rng.range(0, 100);
            let op = if roll < 35 {
                KvOp::Put { key, value: request }
            } else if roll < 55 {
                let expected = if self.rng.chance(0.2) { None } else { Some(self.rng.range(1, request.max(2))) };
                KvOp::Cas { key, expected, new: request }
            } else {
                KvOp::Get { key }
            };
            // Reads sometimes go to a random node (follower forwarding), and any request
            // may go to a node that merely claims to lead (possibly a deposed leader).
            let claimed = self.random_claimed_leader();
            let target = if matches!(op, KvOp::Get { .. }) && self.rng.chance(0.3) {
                1 + self.rng.range(0, self.cfg.nodes)
            } else if claimed.is_some() && self.rng.chance(0.3) {
                claimed.unwrap_or(1)
            } else {
                self.clients[ci].leader_guess
            };
            let ti = self.idx(target);
            let Some(raw) = self.nodes[ti].raw.as_mut() else {
                self.clients[ci].leader_guess = 1 + self.rng.range(0, self.cfg.nodes);
                self.clients[ci].next_at = self.now + 1;
                continue;
            };
            let client_id = self.clients[ci].id;
            let res = match op {
                KvOp::Get { .. } => {
                    let mode = if self.cfg.lease_reads && self.cfg.check_quorum && self.rng.chance(0.5) {
                        ReadOnlyOption::LeaseBased
                    } else {
                        ReadOnlyOption::Safe
                    };
                    raw.read_index_with(request.to_le_bytes().to_vec(), mode).map(|_| None)
                }
                _ => raw.propose(KvCommand { request, op }.encode()).map(Some),
            };
            match res {
                Ok(_) => {
                    self.next_request += 1;
                    self.clock += 1;
                    self.history.push(Operation { client: client_id, input: op, call: self.clock, ret: None });
                    let h = self.history.len() - 1;
                    let node = &mut self.nodes[ti];
                    if matches!(op, KvOp::Get { .. }) {
                        node.reads.insert(request, (client_id, key));
                    } else {
                        node.writes.insert(request, client_id);
                    }
                    self.clients[ci].outstanding = Some((request, h, self.now + 60));
                    self.log(|| format!("client {client_id} request {request} {op:?} at node {target}"));
                    self.handle_ready(target)?;
                }
                Err(ProposeError::NotLeader { leader: Some(l) }) => {
                    self.clients[ci].leader_guess = l;
                    self.clients[ci].next_at = self.now + 1;
                }
                Err(_) => {
                    self.clients[ci].leader_guess = 1 + self.rng.range(0, self.cfg.nodes);
                    self.clients[ci].next_at = self.now + 2;
                }
            }
        }
        Ok(())
    }

    fn check_history(&mut self) -> Res {
        self.stats.committed = self.inv.committed_len();
        self.stats.leaders = self.inv.leader_count() as u64;
        match check(&KvModel, &self.history) {
            CheckResult::Linearizable => Ok(()),
            CheckResult::Illegal { part } => {
                let ops: Vec<String> = part.iter().map(|&i| format!("{:?}", self.history[i])).collect();
                Err(format!("history not linearizable; operations on the failing key:\n    {}", ops.join("\n    ")))
            }
        }
    }
}

/// A clock rate in percent of real time, at most `drift_pct` below 100.
fn draw_rate(rng: &mut Rng, drift_pct: u64) -> u64 {
    100 - rng.range(0, drift_pct.min(99) + 1)
}

fn brief(b: &crate::message::MessageBody) -> String {
    use crate::message::MessageBody as B;
    match b {
        B::Append { prev_index, prev_term, entries, commit } => {
            format!("prev=({prev_index},{prev_term}) n={} commit={commit}", entries.len())
        }
        B::InstallSnapshot { meta, offset, done, .. } => {
            format!("snap=({},{}) off={offset} done={done}", meta.index, meta.term)
        }
        B::ReadIndex { lease, .. } => format!("lease={lease}"),
        B::ReadIndexResponse { index, .. } => format!("index={index}"),
        other => format!("{other:?}"),
    }
}

/// Runs one seed; `Err` describes the first violated property.
pub fn run(cfg: &SimConfig) -> Result<SimStats, SimFailure> {
    let mut sim = match Sim::new(cfg.clone()) {
        Ok(s) => s,
        Err(reason) => return Err(SimFailure { seed: cfg.seed, tick: 0, reason, trace: Vec::new() }),
    };
    match sim.run() {
        Ok(()) => Ok(sim.stats),
        Err(reason) => Err(SimFailure { seed: cfg.seed, tick: sim.now, reason, trace: std::mem::take(&mut sim.trace) }),
    }
}

/// Reruns one seed with tracing on (runs are deterministic, so it fails the same way).
pub fn replay(cfg: &SimConfig) -> Result<SimStats, SimFailure> {
    let mut cfg = cfg.clone();
    cfg.trace = true;
    run(&cfg)
}

/// Runs `template` for each seed of `seeds`; the first failure is replayed with a trace.
pub fn run_seeds(template: &SimConfig, seeds: std::ops::Range<u64>) -> Result<SimStats, Box<SimFailure>> {
    let mut total = SimStats::default();
    for seed in seeds {
        let cfg = SimConfig { seed, ..template.clone() };
        match run(&cfg) {
            Ok(s) => {
                total.committed += s.committed;
                total.ops_completed += s.ops_completed;
                total.ops_unknown += s.ops_unknown;
                total.leaders += s.leaders;
                total.crashes += s.crashes;
                total.snapshots_installed += s.snapshots_installed;
                total.conf_changes += s.conf_changes;
            }
            Err(_) => {
                return Err(Box::new(replay(&cfg).err().unwrap_or(SimFailure {
                    seed,
                    tick: 0,
                    reason: "failed once but passed on replay: nondeterminism".into(),
                    trace: Vec::new(),
                })))
            }
        }
    }
    Ok(total)
}

/// Number of seeds to run: `RAFT_SEEDS` if set, else `default`.
pub fn seed_count(default: u64) -> u64 {
    std::env::var("RAFT_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}
