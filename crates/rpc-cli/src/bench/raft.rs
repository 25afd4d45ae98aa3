//! `rpc bench raft`: committed proposals per second and leader failover time of `rpc-raft`
//! clusters in one process (see `rpc_raft::bench` for the method).

use super::report::quantile;
use crate::CliResult;
use rpc_raft::bench::{failover_times, run, BenchConfig, BenchResult};
use std::time::Duration;

#[derive(clap::Args)]
pub(crate) struct RaftBenchArgs {
    /// Print one JSON object per configuration instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds of throughput measurement per configuration.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Failover trials per cluster size (3 nodes and up).
    #[arg(long, default_value_t = 100)]
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
    let json = args.json;
    // The cluster runs on this thread as fast as it can; keep it off the async workers.
    tokio::task::spawn_blocking(move || -> CliResult {
        let mut rows = Vec::new();
        for &nodes in &args.nodes {
            let failover = if nodes >= 3 && args.trials > 0 {
                let mut times = failover_times(nodes, args.trials)?;
                (Some(quantile(&mut times, 0.5)), Some(quantile(&mut times, 0.99)))
            } else {
                (None, None)
            };
            for &fsync in &fsyncs {
                for &proposers in &args.proposers {
                    let config =
                        BenchConfig { duration, failover_trials: 0, ..BenchConfig::new(nodes, fsync, proposers) };
                    let result =
                        BenchResult { failover_p50_ms: failover.0, failover_p99_ms: failover.1, ..run(&config)? };
                    if json {
                        println!("{}", result.to_json());
                    }
                    rows.push(result);
                }
            }
        }
        if !json {
            print_table(&rows);
        }
        Ok(())
    })
    .await?
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
