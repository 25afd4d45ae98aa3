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
