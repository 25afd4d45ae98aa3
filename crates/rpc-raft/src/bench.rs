//! Measurement support for `rpc bench raft`: throughput of committed proposals and
//! leader failover time, for N nodes in one process.
//!
//! * [`run`] measures throughput: `nodes` [`RawNode`]s over [`DurableStorage`] in a fresh
//!   temporary directory (fsync on or off), connected by an [`InMemoryNetwork`] and
//!   driven as fast as possible in rounds (propose, persist every node's `Ready` in
//!   parallel with one fsync each, send, deliver). `proposers` closed-loop clients
//!   each keep one 64-byte proposal (by default) in flight; a proposal counts when the
//!   leader applies it. Batching comes from the core (all proposals between two
//!   `Ready`s travel in one append) and group commit from the storage.
//! * Failover is measured in simulated time: one tick is [`Config::tick_ms`]
//!   milliseconds (10 ms by default, elections 150–300 ms, heartbeats 50 ms), message
//!   delivery is instantaneous, and the clock starts when the leader is killed and
//!   stops when a new leader has committed a write of its own term. It is reported
//!   for 3 or more nodes only (`None` otherwise).
//!
//! ```no_run
//! use rpc_raft::bench::{matrix, run};
//! for cfg in matrix(std::time::Duration::from_secs(2)) {
//!     let r = run(&cfg).unwrap();
//!     println!("{}", r.to_json());
//! }
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::Error;
use crate::message::{ConfState, EntryKind, NodeId};
use crate::node::{RawNode, Ready};
use crate::raft::Role;
use crate::storage::{DurableOptions, DurableStorage, MemStorage, StdFs, StorageError};
use crate::transport::{InMemoryNetwork, Transport};

/// One benchmark configuration.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Cluster size (1, 3, 5...).
    pub nodes: usize,
    /// Whether storage fsyncs.
    pub fsync: bool,
    /// Concurrent closed-loop proposers.
    pub proposers: usize,
    /// Payload size of each proposal.
    pub entry_bytes: usize,
    /// How long to measure throughput.
    pub duration: Duration,
    /// Failover trials (0 skips the measurement).
    pub failover_trials: usize,
    /// Parent directory for the temporary data (default: the system temp dir).
    pub dir: Option<PathBuf>,
}

impl BenchConfig {
    /// 64-byte entries, 2 s of measurement, 20 failover trials.
    pub fn new(nodes: usize, fsync: bool, proposers: usize) -> Self {
        BenchConfig {
            nodes,
            fsync,
            proposers,
            entry_bytes: 64,
            duration: Duration::from_secs(2),
            failover_trials: 20,
            dir: None,
        }
    }
}

/// The standard matrix: nodes {1, 3, 5} x fsync {on, off} x proposers {1, 16, 256}.
pub fn matrix(duration: Duration) -> Vec<BenchConfig> {
    let mut out = Vec::new();
    for nodes in [1, 3, 5] {
        for fsync in [true, false] {
            for proposers in [1, 16, 256] {
                out.push(BenchConfig { duration, ..BenchConfig::new(nodes, fsync, proposers) });
            }
        }
    }
    out
}

/// Result of one configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchResult {
    /// Cluster size.
    pub nodes: usize,
    /// Whether storage fsynced.
    pub fsync: bool,
    /// Concurrent proposers.
    pub proposers: usize,
    /// Committed (leader-applied) proposals per second.
    pub proposals_per_s: f64,
    /// Median failover time in milliseconds (`None` below 3 nodes or without trials).
    pub failover_p50_ms: Option<f64>,
    /// 99th-percentile failover time in milliseconds.
    pub failover_p99_ms: Option<f64>,
}

impl BenchResult {
    /// One JSON object on one line (`null` for missing failover figures).
    pub fn to_json(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.1}"));
        format!(
            "{{\"nodes\":{},\"fsync\":{},\"proposers\":{},\"proposals_per_s\":{:.1},\"failover_p50_ms\":{},\"failover_p99_ms\":{}}}",
            self.nodes,
            self.fsync,
            self.proposers,
            self.proposals_per_s,
            opt(self.failover_p50_ms),
            opt(self.failover_p99_ms)
        )
    }
}

/// Why a benchmark could not run.
#[derive(Debug)]
pub enum BenchError {
    /// Creating or removing the temporary directory failed.
    Io(std::io::Error),
    /// Storage failed.
    Storage(StorageError),
    /// The Raft core refused to start.
    Raft(Error),
    /// No leader emerged in time.
    NoLeader,
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Io(e) => write!(f, "bench directory: {e}"),
            BenchError::Storage(e) => write!(f, "storage: {e}"),
            BenchError::Raft(e) => write!(f, "raft: {e}"),
            BenchError::NoLeader => write!(f, "no leader was elected"),
        }
    }
}

impl std::error::Error for BenchError {}

impl From<StorageError> for BenchError {
    fn from(e: StorageError) -> Self {
        BenchError::Storage(e)
    }
}

impl From<Error> for BenchError {
    fn from(e: Error) -> Self {
        BenchError::Raft(e)
    }
}

/// Runs one configuration: throughput, then failover.
pub fn run(cfg: &BenchConfig) -> Result<BenchResult, BenchError> {
    let proposals_per_s = throughput(cfg)?;
    let (failover_p50_ms, failover_p99_ms) = if cfg.nodes >= 3 && cfg.failover_trials > 0 {
        let mut times = failover_times(cfg.nodes, cfg.failover_trials)?;
        times.sort_by(f64::total_cmp);
        (Some(percentile(&times, 0.50)), Some(percentile(&times, 0.99)))
    } else {
        (None, None)
    };
    Ok(BenchResult {
        nodes: cfg.nodes,
        fsync: cfg.fsync,
        proposers: cfg.proposers,
        proposals_per_s,
        failover_p50_ms,
        failover_p99_ms,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Removes the directory when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir is harmless.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(parent: Option<&PathBuf>) -> Result<TempDir, BenchError> {
    let base = parent.cloned().unwrap_or_else(std::env::temp_dir);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = base.join(format!("rpc-raft-bench-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(BenchError::Io)?;
    Ok(TempDir(dir))
}

type DiskNode = RawNode<DurableStorage<StdFs>>;

fn throughput(cfg: &BenchConfig) -> Result<f64, BenchError> {
    let tmp = temp_dir(cfg.dir.as_ref())?;
    let ids: Vec<NodeId> = (1..=cfg.nodes as u64).collect();
    let conf = ConfState::with_voters(ids.clone());
    let opts = DurableOptions { sync: cfg.fsync, ..DurableOptions::default() };
    let mut nodes: Vec<DiskNode> = Vec::new();
    for &id in &ids {
        let dir = tmp.0.join(format!("node-{id}"));
        let storage = DurableStorage::open(StdFs::new(), &dir.to_string_lossy(), opts.clone(), conf.clone())?;
        let mut c = Config::new(id);
        c.max_inflight_msgs = 256;
        c.max_entries_per_msg = 8192;
        nodes.push(RawNode::new(c, storage)?);
    }
    let net = InMemoryNetwork::new(ids.clone());
    nodes[0].campaign();
    let mut in_flight = 0usize;
    let mut completed = 0u64;
    let payload = vec![0xABu8; cfg.entry_bytes];
    let mut started: Option<Instant> = None;
    let mut rounds = 0u64;
    loop {
        rounds += 1;
        if started.is_none() && rounds > 10_000 {
            return Err(BenchError::NoLeader);
        }
        if nodes[0].role() == Role::Leader {
            let start = *started.get_or_insert_with(Instant::now);
            if start.elapsed() >= cfg.duration {
                return Ok(completed as f64 / start.elapsed().as_secs_f64());
            }
            while in_flight < cfg.proposers && nodes[0].propose(payload.clone()).is_ok() {
                in_flight += 1;
            }
        }
        let mut readies: Vec<Option<Ready>> = nodes.iter_mut().map(|n| n.has_ready().then(|| n.ready())).collect();
        persist_all(&mut nodes, &readies, cfg.fsync)?;
        for (i, rd) in readies.iter_mut().enumerate() {
            let Some(rd) = rd.take() else { continue };
            let mut t = net.transport(ids[i]);
            for m in rd.messages {
                // Every peer has a mailbox, so sending cannot fail.
                let _ = t.send(m);
            }
            if i == 0 && started.is_some() {
                let done =
                    rd.committed_entries.iter().filter(|e| e.kind == EntryKind::Normal && !e.data.is_empty()).count();
                completed += done as u64;
                in_flight = in_flight.saturating_sub(done);
            }
            nodes[i].advance();
        }
        for (i, &id) in ids.iter().enumerate() {
            for m in net.drain(id) {
                nodes[i].step(m);
            }
        }
    }
}

/// Persists each node's Ready; with fsync on, the nodes' fsyncs run in parallel as
/// they would on separate machines.
fn persist_all(nodes: &mut [DiskNode], readies: &[Option<Ready>], parallel: bool) -> Result<(), BenchError> {
    let busy = readies.iter().filter(|r| r.as_ref().is_some_and(|r| r.must_persist())).count();
    if !parallel || busy < 2 {
        for (n, rd) in nodes.iter_mut().zip(readies) {
            if let Some(rd) = rd {
                n.persist_ready(rd)?;
            }
        }
        return Ok(());
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter_mut()
            .zip(readies)
            .filter_map(|(n, rd)| rd.as_ref().map(|rd| s.spawn(move || n.persist_ready(rd))))
            .collect();
        for h in handles {
            h.join().map_err(|_| BenchError::NoLeader)??;
        }
        Ok(())
    })
}

/// Failover durations in milliseconds of simulated time, one per trial.
pub fn failover_times(nodes: usize, trials: usize) -> Result<Vec<f64>, BenchError> {
    let mut out = Vec::with_capacity(trials);
    for trial in 0..trials {
        let ids: Vec<NodeId> = (1..=nodes as u64).collect();
        let conf = ConfState::with_voters(ids.clone());
        let mut cluster: Vec<Option<RawNode<MemStorage>>> = Vec::new();
        let mut tick_ms = 10;
        for &id in &ids {
            let mut c = Config::new(id);
            c.seed = (trial as u64 + 1).wrapping_mul(0x9E37_79B9) ^ id;
            tick_ms = c.tick_ms;
            cluster.push(Some(RawNode::new(c, MemStorage::new_with_conf(conf.clone()))?));
        }
        let net = InMemoryNetwork::new(ids.clone());
        let leader_with_write = |cluster: &mut Vec<Option<RawNode<MemStorage>>>| -> Option<usize> {
            cluster.iter().position(|n| {
                n.as_ref().is_some_and(|n| {
                    let s = n.status();
                    s.role == Role::Leader && s.commit == s.last_index && s.commit > 1
                })
            })
        };
        let mut elapsed = 0u64;
        // Warm up until some leader committed a write.
        let first = loop {
            step_cluster(&mut cluster, &ids, &net);
            if let Some(l) = leader_with_write(&mut cluster) {
                break l;
            }
            elapsed += 1;
            if elapsed > 10_000 {
                return Err(BenchError::NoLeader);
            }
        };
        cluster[first] = None;
        let mut ticks = 0u64;
        loop {
            ticks += 1;
            if ticks > 10_000 {
                return Err(BenchError::NoLeader);
            }
            step_cluster(&mut cluster, &ids, &net);
            if leader_with_write(&mut cluster).is_some() {
                break;
            }
        }
        out.push((ticks * tick_ms) as f64);
    }
    Ok(out)
}

/// One tick: every live node ticks, leaders propose a write, messages flow until quiet.
fn step_cluster(cluster: &mut [Option<RawNode<MemStorage>>], ids: &[NodeId], net: &InMemoryNetwork) {
    for n in cluster.iter_mut().flatten() {
        n.tick();
        if n.role() == Role::Leader {
            let s = n.status();
            if s.commit == s.last_index {
                // A leader refusing (e.g. during a transfer) just tries next tick.
                let _ = n.propose(b"probe".to_vec());
            }
        }
    }
    loop {
        for (i, n) in cluster.iter_mut().enumerate() {
            let Some(n) = n else { continue };
            let mut t = net.transport(ids[i]);
            while n.has_ready() {
                let rd = n.ready();
                // Memory storage cannot fail.
                let _ = n.persist_ready(&rd);
                for m in rd.messages {
                    let _ = t.send(m);
                }
                n.advance();
            }
        }
        if net.is_idle() {
            return;
        }
        for (i, &id) in ids.iter().enumerate() {
            let msgs = net.drain(id);
            if let Some(n) = cluster[i].as_mut() {
                for m in msgs {
                    n.step(m);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke() {
        let cfg =
            BenchConfig { duration: Duration::from_millis(100), failover_trials: 3, ..BenchConfig::new(3, false, 16) };
        let r = run(&cfg).unwrap();
        assert!(r.proposals_per_s > 0.0, "{r:?}");
        let p50 = r.failover_p50_ms.unwrap();
        assert!((100.0..2000.0).contains(&p50), "{r:?}");
        assert!(r.to_json().starts_with("{\"nodes\":3,"));
        assert_eq!(matrix(Duration::from_secs(1)).len(), 18);
    }

    /// Prints the whole matrix: `cargo test --release -p rpc-raft --lib bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn print_matrix() {
        for cfg in matrix(Duration::from_millis(1000)) {
            println!("{}", run(&cfg).unwrap().to_json());
        }
    }
}
