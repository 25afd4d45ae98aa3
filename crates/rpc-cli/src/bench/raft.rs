//! `rpc bench raft`: committed proposals per second of `rpc-raft` clusters in one process (see
//! `rpc_raft::bench` for the method), and leader failover of real `rpc registry serve`
//! processes over TCP, in real time, with the same storage setting.

use super::{
    registry::{Members, TempDir},
    report::quantile,
};
use crate::CliResult;
use rpc_raft::bench::{run, BenchConfig, BenchResult};
use rpc_registry::RegistryClient;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub(crate) struct RaftBenchArgs {
    /// Print one JSON object per configuration instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds of throughput measurement per configuration.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Failover trials per cluster size (3 nodes and up) and fsync setting: each kills the
    /// leader process, times the first write that commits after it, and restarts the member.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Cluster sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,3,5")]
    nodes: Vec<usize>,
    /// Concurrent proposers to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    proposers: Vec<usize>,
    /// fsync settings to measure: on, off.
    #[arg(long, value_delimiter = ',', default_value = "on,off")]
    fsync: Vec<String>,
    /// Measure throughput the way `bench/openraft` measures openraft instead: 3 nodes, each
    /// a task on this process's tokio runtime with its log in memory, messages passed over
    /// channels, and proposers as tasks that each await their write's commit and apply on
    /// the leader before the next. Takes --proposers and --seconds (after a 1 s warm-up).
    #[arg(long)]
    openraft_harness: bool,
}

pub(crate) async fn run_bench(args: RaftBenchArgs) -> CliResult {
    let fsyncs = args
        .fsync
        .iter()
        .map(|f| match f.as_str() {
            "on" => Ok(true),
            "off" => Ok(false),
            other => Err(format!("--fsync takes on or off, not {other:?}")),
        })
        .collect::<Result<Vec<bool>, _>>()?;
    let duration = Duration::from_secs_f64(args.seconds);
    if args.openraft_harness {
        return openraft_harness(&args.proposers, duration, args.json).await;
    }
    let mut rows = Vec::new();
    for &nodes in &args.nodes {
        for &fsync in &fsyncs {
            let failover = match nodes >= 3 && args.trials > 0 {
                true => {
                    let mut times = failover_times(nodes, fsync, args.trials).await?;
                    (Some(quantile(&mut times, 0.5)), Some(quantile(&mut times, 0.99)))
                }
                false => (None, None),
            };
            for &proposers in &args.proposers {
                let config = BenchConfig { duration, failover_trials: 0, ..BenchConfig::new(nodes, fsync, proposers) };
                // The cluster runs on one thread as fast as it can; keep it off the async workers.
                let result = tokio::task::spawn_blocking(move || run(&config)).await??;
                let result = BenchResult { failover_p50_ms: failover.0, failover_p99_ms: failover.1, ..result };
                if args.json {
                    println!("{}", result.to_json());
                }
                rows.push(result);
            }
        }
    }
    if !args.json {
        print_table(&rows);
    }
    Ok(())
}

/// Failover times in milliseconds of a cluster of `nodes` member processes: in each trial the
/// leader is killed with SIGKILL, and the time runs until a client's write commits on the new
/// leader; the member is then started again and caught up before the next trial.
async fn failover_times(
    nodes: usize,
    fsync: bool,
    trials: usize,
) -> Result<Vec<f64>, Box<dyn std::error::Error + Send + Sync>> {
    let dir = TempDir::new()?;
    let mut members = Members::start(&dir.0, nodes, fsync)?;
    let client = RegistryClient::connect(members.addrs().to_vec());
    retry_put(&client, "bench/failover", "ready").await?;
    let mut times = Vec::with_capacity(trials);
    for trial in 0..trials {
        let leader = leader_of(&members).await?;
        members.kill(leader).await;
        let started = Instant::now();
        let written = retry_put(&client, "bench/failover", &trial.to_string()).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        members.restart(leader)?;
        caught_up(&members.addrs()[leader], written).await?;
    }
    Ok(times)
}

/// Puts until a put commits (within 30 s); returns its revision.
async fn retry_put(
    client: &RegistryClient,
    key: &str,
    value: &str,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.put(key, value).await {
            Ok(put) => return Ok(put.header.revision),
            Err(e) if Instant::now() > deadline => return Err(format!("no write committed within 30 s: {e}").into()),
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

/// The index of the member the cluster follows.
async fn leader_of(members: &Members) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for addr in members.addrs() {
            let Ok(status) = RegistryClient::connect([addr]).status().await else { continue };
            let leader = status.members.iter().find(|m| m.id == status.leader);
            if let Some(i) = leader.and_then(|m| members.addrs().iter().position(|a| *a == m.addr)) {
                return Ok(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err("no leader within 30 s".into())
}

/// Waits until the member at `addr` has applied revision `revision` (within 30 s).
async fn caught_up(addr: &str, revision: u64) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(status) = RegistryClient::connect([addr]).status().await {
            if status.leader != 0 && status.header.revision >= revision {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("{addr} did not catch up within 30 s").into())
}

fn print_table(rows: &[BenchResult]) {
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0} ms"));
    println!(
        "{:>5} {:>5} {:>9} {:>14} {:>12} {:>12}",
        "nodes", "fsync", "proposers", "proposals/s", "failover p50", "failover p99"
    );
    for r in rows {
        println!(
            "{:>5} {:>5} {:>9} {:>14.0} {:>12} {:>12}",
            r.nodes,
            if r.fsync { "on" } else { "off" },
            r.proposers,
            r.proposals_per_s,
            ms(r.failover_p50_ms),
            ms(r.failover_p99_ms)
        );
    }
}

/// `--openraft-harness`: proposals per second for each proposer count, printed as rows.
async fn openraft_harness(proposers: &[usize], measure: Duration, json: bool) -> CliResult {
    if !json {
        println!("{:>9} {:>14}", "proposers", "proposals/s");
    }
    for &proposers in proposers {
        let rate = harness::throughput(proposers, Duration::from_secs(1), measure, 64).await?;
        match json {
            true => println!(
                "{{\"harness\":\"openraft\",\"nodes\":3,\"proposers\":{proposers},\"proposals_per_s\":{rate:.1}}}"
            ),
            false => println!("{proposers:>9} {rate:>14.0}"),
        }
    }
    Ok(())
}

/// rpc-raft driven in the shape of `bench/openraft`'s driver of openraft, so the two compare
/// like for like: async tasks on one runtime, real round trips through channels.
mod harness {
    use rpc_raft::{ConfState, Config, MemStorage, Message, RawNode, Role};
    use std::{
        collections::{HashMap, VecDeque},
        sync::{
            atomic::{AtomicBool, AtomicU64, Ordering},
            Arc,
        },
        time::Duration,
    };
    use tokio::sync::{mpsc, oneshot};

    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    /// What a node's task is asked to do.
    enum Input {
        Peer(Message),
        /// Append `data`; the sender hears once the leader applied it, or is dropped if this
        /// node cannot take proposals.
        Propose(Vec<u8>, oneshot::Sender<()>),
    }

    type Peers = Arc<HashMap<u64, mpsc::UnboundedSender<Input>>>;

    /// Committed and leader-applied writes per second of `proposers` closed-loop writers of
    /// `payload`-byte entries, counted over `measure` after `warmup`.
    pub(super) async fn throughput(
        proposers: usize,
        warmup: Duration,
        measure: Duration,
        payload: usize,
    ) -> Result<f64, BoxError> {
        let ids = [1u64, 2, 3];
        let conf = ConfState::with_voters(ids);
        let mut inputs = Vec::new();
        let mut senders = HashMap::new();
        for id in ids {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.insert(id, tx);
            inputs.push(rx);
        }
        let peers: Peers = Arc::new(senders);
        let (leader_tx, leader_rx) = oneshot::channel();
        let mut leader_tx = Some(leader_tx);
        let mut tasks = Vec::new();
        for (id, rx) in ids.into_iter().zip(inputs) {
            let mut config = Config::new(id);
            config.max_inflight_msgs = 256;
            config.max_entries_per_msg = 8192;
            let mut node = RawNode::new(config, MemStorage::new_with_conf(conf.clone()))?;
            if id == 1 {
                node.campaign();
            }
            let elected = if id == 1 { leader_tx.take() } else { None };
            tasks.push(tokio::spawn(drive(node, rx, peers.clone(), elected)));
        }
        leader_rx.await.map_err(|_| "node 1 stopped before it was elected")?;

        let (done, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let leader = peers[&1].clone();
        let mut writers = Vec::new();
        for _ in 0..proposers {
            let (leader, done, stop) = (leader.clone(), done.clone(), stop.clone());
            // True when the writer's proposal was dropped while the run went on.
            writers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let (tx, rx) = oneshot::channel();
                    if leader.send(Input::Propose(vec![0xAB; payload], tx)).is_err() || rx.await.is_err() {
                        return !stop.load(Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                false
            }));
        }
        tokio::time::sleep(warmup).await;
        let (before, started) = (done.load(Ordering::Relaxed), tokio::time::Instant::now());
        tokio::time::sleep(measure).await;
        let completed = done.load(Ordering::Relaxed) - before;
        let rate = completed as f64 / started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.abort();
        }
        let mut dropped = 0;
        for writer in writers {
            dropped += usize::from(writer.await.unwrap_or(true));
        }
        // A figure from a run that lost its leader or stalled would measure nothing.
        if dropped > 0 {
            return Err(format!(
                "node 1 dropped the proposals of {dropped} of {proposers} writers: it stopped leading during the run"
            )
            .into());
        }
        if completed == 0 {
            return Err(format!("no proposal was applied in the {measure:?} measured").into());
        }
        Ok(rate)
    }

    /// One node's task: takes every input waiting, then handles the node's readies (persist,
    /// send, apply), as openraft's core task does with its own.
    async fn drive(
        mut node: RawNode<MemStorage>,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        peers: Peers,
        mut elected: Option<oneshot::Sender<()>>,
    ) {
        let mut waiting: VecDeque<(u64, oneshot::Sender<()>)> = VecDeque::new();
        let mut ticks = tokio::time::interval(Duration::from_millis(node_tick_ms()));
        // As the registry's member loop: a node that fell behind ticks once, not once per tick
        // it missed. A burst would time out elections that heartbeats waiting in the queue keep
        // alive, and move leadership away from the node the writers propose to.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                input = inputs.recv() => {
                    let Some(input) = input else { return };
                    handle(&mut node, input, &mut waiting);
                    while let Ok(input) = inputs.try_recv() {
                        handle(&mut node, input, &mut waiting);
                    }
                }
                _ = ticks.tick() => node.tick(),
            }
            while node.has_ready() {
                let ready = node.ready();
                // Memory storage cannot fail.
                let _ = node.persist_ready(&ready);
                for message in ready.messages {
                    if let Some(peer) = peers.get(&message.to) {
                        let _ = peer.send(Input::Peer(message));
                    }
                }
                if let Some(last) = ready.committed_entries.last() {
                    while waiting.front().is_some_and(|(index, _)| *index <= last.index) {
                        if let Some((_, applied)) = waiting.pop_front() {
                            let _ = applied.send(());
                        }
                    }
                }
                node.advance();
            }
            if node.role() == Role::Leader {
                if let Some(elected) = elected.take() {
                    let _ = elected.send(());
                }
            }
        }
    }

    fn handle(node: &mut RawNode<MemStorage>, input: Input, waiting: &mut VecDeque<(u64, oneshot::Sender<()>)>) {
        match input {
            Input::Peer(message) => node.step(message),
            Input::Propose(data, applied) => {
                if let Ok(index) = node.propose(data) {
                    waiting.push_back((index, applied));
                }
            }
        }
    }

    fn node_tick_ms() -> u64 {
        Config::new(1).tick_ms
    }
}
