//! `rpc bench ...`: benchmarks that measure a subject and its baseline in the same run and
//! report ratios, since absolute figures on a shared machine mean little.

mod codecs;
mod cpu;
mod lb;
mod raft;
mod raw;
mod registry;
mod report;
pub(crate) mod rpc;
mod stream;

use crate::CliResult;
use clap::Subcommand;

#[derive(Subcommand)]
pub(crate) enum BenchCommand {
    /// Unary calls over loopback between two processes, against a raw TCP echo.
    Rpc(rpc::RpcBenchArgs),
    /// A server stream of the benchmark request, against raw length-prefixed bytes on one connection.
    Stream(stream::StreamBenchArgs),
    /// Encode and decode time and size of every codec, against the libraries called directly.
    Codecs(codecs::CodecBenchArgs),
    /// Raft throughput (1, 3 and 5 nodes in one process) and failover time (member processes).
    Raft(raft::RaftBenchArgs),
    /// A three-process registry against a three-process etcd (if installed), same load, same run.
    Registry(registry::RegistryBenchArgs),
    /// The full client stack (balancer, breakers, limiter, timeout) against a bare channel.
    Lb(lb::LbBenchArgs),
}

pub(crate) async fn run(what: BenchCommand) -> CliResult {
    match what {
        BenchCommand::Rpc(args) => rpc::run(args).await,
        BenchCommand::Lb(args) => lb::run(args).await,
        BenchCommand::Registry(args) => registry::run(args).await,
        BenchCommand::Stream(args) => stream::run(args).await,
        BenchCommand::Codecs(args) => codecs::run(args).await,
        BenchCommand::Raft(args) => raft::run_bench(args).await,
    }
}
