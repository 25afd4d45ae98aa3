//! Minimal openraft (0.9.x) cluster throughput benchmark.
//!
//! Setup, written against the public openraft 0.9 API (storage-v2):
//! - 3 Raft nodes in one process, all on one multi-threaded tokio runtime;
//! - in-memory log store (BTreeMap) and a trivial in-memory state machine
//!   (counts applied entries/bytes; snapshot = that counter);
//! - in-memory "network": an RPC is a direct call on the target node's `Raft` handle;
//! - N client tasks, each doing closed-loop `client_write` of a 64-byte payload to
//!   the leader; throughput = completed (committed + applied on leader) writes / s,
//!   measured over a fixed window after a warm-up.
//!
//! Usage:
//!   openraft-bench [--clients 1,16,64,256] [--reps 3] [--warmup-ms 1000]
//!                  [--secs 5] [--threads 2] [--payload 64]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, Config, Entry, EntryPayload, LogId, LogState, OptionalSend, Raft, RaftLogReader,
    RaftNetwork, RaftNetworkFactory, RaftSnapshotBuilder, ServerState, Snapshot, SnapshotMeta,
    StorageError, StoredMembership, Vote,
};

/// Application request: an opaque byte payload (64 bytes in the benchmark).
#[derive(Debug, Clone)]
pub struct Req(pub Vec<u8>);

openraft::declare_raft_types!(
    pub TC:
        D = Req,
        R = (),
);

type NodeId = u64;
type SErr = StorageError<NodeId>;

// ---------------------------------------------------------------------------
// Log store
// ---------------------------------------------------------------------------

#[derive(Default)]
struct LogInner {
    log: BTreeMap<u64, Entry<TC>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

#[derive(Clone, Default)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl RaftLogReader<TC> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TC>>, SErr> {
        let g = self.inner.lock().unwrap();
        Ok(g.log.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TC> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TC>, SErr> {
        let g = self.inner.lock().unwrap();
        let last = g.log.values().next_back().map(|e| e.log_id).or(g.last_purged);
        Ok(LogState { last_purged_log_id: g.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        self.inner.lock().unwrap().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        Ok(self.inner.lock().unwrap().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        self.inner.lock().unwrap().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        Ok(self.inner.lock().unwrap().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TC>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TC>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut g = self.inner.lock().unwrap();
            for e in entries {
                g.log.insert(e.log_id.index, e);
            }
        }
        // In-memory: "durable" immediately, no fsync.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let mut g = self.inner.lock().unwrap();
        let _ = g.log.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let mut g = self.inner.lock().unwrap();
        let keep = g.log.split_off(&(log_id.index + 1));
        g.log = keep;
        g.last_purged = Some(log_id);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// State machine
// ---------------------------------------------------------------------------

#[derive(Default)]
struct SmInner {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    n_applied: u64,
    n_bytes: u64,
    snapshot_idx: u64,
    current: Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>,
}

#[derive(Clone, Default)]
pub struct StateMachine {
    inner: Arc<Mutex<SmInner>>,
}

impl RaftSnapshotBuilder<TC> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TC>, SErr> {
        let mut g = self.inner.lock().unwrap();
        g.snapshot_idx += 1;
        let mut data = Vec::with_capacity(16);
        data.extend_from_slice(&g.n_applied.to_le_bytes());
        data.extend_from_slice(&g.n_bytes.to_le_bytes());
        let meta = SnapshotMeta {
            last_log_id: g.last_applied,
            last_membership: g.membership.clone(),
            snapshot_id: format!("{:?}-{}", g.last_applied.map(|l| l.index), g.snapshot_idx),
        };
        g.current = Some((meta.clone(), data.clone()));
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TC> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), SErr> {
        let g = self.inner.lock().unwrap();
        Ok((g.last_applied, g.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, SErr>
    where
        I: IntoIterator<Item = Entry<TC>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut g = self.inner.lock().unwrap();
        let mut res = Vec::new();
        for e in entries {
            g.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(Req(d)) => {
                    g.n_applied += 1;
                    g.n_bytes += d.len() as u64;
                }
                EntryPayload::Membership(m) => {
                    g.membership = StoredMembership::new(Some(e.log_id), m);
                }
            }
            res.push(());
        }
        Ok(res)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let data = snapshot.into_inner();
        let mut g = self.inner.lock().unwrap();
        if data.len() >= 16 {
            g.n_applied = u64::from_le_bytes(data[0..8].try_into().unwrap());
            g.n_bytes = u64::from_le_bytes(data[8..16].try_into().unwrap());
        }
        g.last_applied = meta.last_log_id;
        g.membership = meta.last_membership.clone();
        g.current = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TC>>, SErr> {
        let g = self.inner.lock().unwrap();
        Ok(g.current.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}

// ---------------------------------------------------------------------------
// In-process network: an RPC is a direct call on the target's Raft handle.
// ---------------------------------------------------------------------------

#[derive(Clone, Default)]
pub struct Router {
    nodes: Arc<RwLock<BTreeMap<NodeId, Raft<TC>>>>,
}

impl Router {
    fn get(&self, id: NodeId) -> Result<Raft<TC>, Unreachable> {
        self.nodes.read().unwrap().get(&id).cloned().ok_or_else(|| {
            Unreachable::new(&std::io::Error::new(std::io::ErrorKind::NotConnected, "no such node"))
        })
    }
}

pub struct Conn {
    target: NodeId,
    router: Router,
}

impl RaftNetworkFactory<TC> for Router {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Conn {
        Conn { target, router: self.clone() }
    }
}

impl RaftNetwork<TC> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TC>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let raft = self.router.get(self.target)?;
        raft.append_entries(rpc).await.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TC>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let raft = self.router.get(self.target)?;
        raft.install_snapshot(rpc).await.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let raft = self.router.get(self.target)?;
        raft.vote(rpc).await.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

// ---------------------------------------------------------------------------
// Benchmark driver
// ---------------------------------------------------------------------------

struct Args {
    clients: Vec<usize>,
    reps: usize,
    warmup: Duration,
    measure: Duration,
    threads: usize,
    payload: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        clients: vec![1, 16, 64, 256],
        reps: 3,
        warmup: Duration::from_millis(1000),
        measure: Duration::from_secs(5),
        threads: 2,
        payload: 64,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--clients" => a.clients = v.split(',').map(|s| s.trim().parse().unwrap()).collect(),
            "--reps" => a.reps = v.parse().unwrap(),
            "--warmup-ms" => a.warmup = Duration::from_millis(v.parse().unwrap()),
            "--secs" => a.measure = Duration::from_secs_f64(v.parse().unwrap()),
            "--threads" => a.threads = v.parse().unwrap(),
            "--payload" => a.payload = v.parse().unwrap(),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

struct RunResult {
    ops_per_sec: f64,
    applied_per_sec: f64,
    leader_changed: bool,
    /// CPU used by this process / by everything else during the window, in cores.
    self_cores: f64,
    other_cores: f64,
    /// Follower applied indexes relative to the leader's after the clients stopped.
    follower_lag: Vec<i64>,
}

/// (busy jiffies of the whole machine, jiffies of this process)
fn cpu_sample() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = if f.len() >= 8 { f[0] + f[1] + f[2] + f[5] + f[6] + f[7] } else { 0 };
    let me = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = me.rsplit(')').next().unwrap_or("");
    let g: Vec<&str> = after.split_whitespace().collect();
    // fields after ')' : state(0) ... utime(11) stime(12)
    let mine = if g.len() > 12 { g[11].parse::<u64>().unwrap_or(0) + g[12].parse::<u64>().unwrap_or(0) } else { 0 };
    (busy, mine)
}

async fn new_cluster(config: Arc<Config>) -> (Router, Vec<Raft<TC>>) {
    let router = Router::default();
    let mut rafts = Vec::new();
    for id in 0..3u64 {
        let raft = Raft::new(id, config.clone(), router.clone(), LogStore::default(), StateMachine::default())
            .await
            .expect("Raft::new");
        router.nodes.write().unwrap().insert(id, raft.clone());
        rafts.push(raft);
    }
    let members: BTreeMap<NodeId, BasicNode> =
        (0..3u64).map(|id| (id, BasicNode { addr: format!("node-{id}") })).collect();
    rafts[0].initialize(members).await.expect("initialize");
    rafts[0]
        .wait(Some(Duration::from_secs(10)))
        .state(ServerState::Leader, "node 0 becomes leader")
        .await
        .expect("leader");
    for r in &rafts {
        r.wait(Some(Duration::from_secs(10))).current_leader(0, "all see leader 0").await.expect("leader seen");
    }
    (router, rafts)
}

async fn run_one(config: Arc<Config>, n_clients: usize, args: &Args) -> RunResult {
    let (_router, rafts) = new_cluster(config).await;
    let leader = rafts[0].clone();
    let term_before = leader.metrics().borrow().current_term;

    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(n_clients);
    for _ in 0..n_clients {
        let l = leader.clone();
        let done = done.clone();
        let stop = stop.clone();
        let payload = args.payload;
        handles.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                l.client_write(Req(vec![0xAB; payload])).await.expect("client_write");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    tokio::time::sleep(args.warmup).await;
    let c0 = done.load(Ordering::Relaxed);
    let a0 = leader.metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0);
    let (busy0, me0) = cpu_sample();
    let t0 = Instant::now();
    tokio::time::sleep(args.measure).await;
    let c1 = done.load(Ordering::Relaxed);
    let a1 = leader.metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0);
    let dt = t0.elapsed().as_secs_f64();
    let (busy1, me1) = cpu_sample();
    let hz = 100.0; // USER_HZ on Linux
    let self_cores = (me1 - me0) as f64 / hz / dt;
    let other_cores = ((busy1 - busy0) as f64 - (me1 - me0) as f64).max(0.0) / hz / dt;

    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.expect("client task");
    }
    let m = leader.metrics().borrow().clone();
    let leader_changed = m.current_term != term_before || m.current_leader != Some(0);
    let la = m.last_applied.map(|l| l.index).unwrap_or(0) as i64;
    // Give followers a moment to learn the final commit index (next heartbeat), then compare.
    tokio::time::sleep(Duration::from_millis(120)).await;
    let follower_lag: Vec<i64> = rafts[1..]
        .iter()
        .map(|r| r.metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0) as i64 - la)
        .collect();
    for r in &rafts {
        let _ = r.shutdown().await;
    }

    RunResult {
        ops_per_sec: (c1 - c0) as f64 / dt,
        applied_per_sec: (a1 - a0) as f64 / dt,
        leader_changed,
        self_cores,
        other_cores,
        follower_lag,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn main() {
    let args = parse_args();
    let config = Arc::new(
        Config {
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            // openraft's own cluster benchmark also batches purges; the default (1) would
            // purge the log on every apply once past the snapshot threshold.
            purge_batch_size: 1024,
            ..Default::default()
        }
        .validate()
        .expect("config"),
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .expect("runtime");

    println!(
        "openraft 0.9.25 | 3 nodes, in-memory log/SM/network | worker_threads={} payload={}B warmup={:?} window={:?} reps={}",
        args.threads, args.payload, args.warmup, args.measure, args.reps
    );

    // results[client_idx] = Vec<ops/s> per rep. Reps are interleaved across client counts
    // so slow drift in background load affects all configurations similarly.
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); args.clients.len()];
    for rep in 0..args.reps {
        for (ci, &nc) in args.clients.iter().enumerate() {
            let r = rt.block_on(run_one(config.clone(), nc, &args));
            println!(
                "rep {} clients {:>4}: {:>10.0} writes/s  (leader applied-index rate {:>10.0}/s; cpu self {:.2} other {:.2} cores; follower applied vs leader {:?}){}",
                rep + 1,
                nc,
                r.ops_per_sec,
                r.applied_per_sec,
                r.self_cores,
                r.other_cores,
                r.follower_lag,
                if r.leader_changed { "  [LEADER CHANGED]" } else { "" }
            );
            results[ci].push(r.ops_per_sec);
        }
    }

    println!();
    println!("| clients | median writes/s | runs |");
    println!("| --: | --: | --- |");
    for (ci, &nc) in args.clients.iter().enumerate() {
        let mut v = results[ci].clone();
        let runs: Vec<String> = results[ci].iter().map(|x| format!("{:.0}", x)).collect();
        println!("| {} | {:.0} | {} |", nc, median(&mut v), runs.join(", "));
    }
}
