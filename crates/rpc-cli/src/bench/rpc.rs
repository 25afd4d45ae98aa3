//! `rpc bench rpc`: unary calls over loopback between two processes, beside the raw baseline.

use super::{
    cpu::CpuUse,
    raw::{self, RawClient},
    report::{print_rpc_rows, quantile, Latencies, RoundArgs, RpcRow},
};
use crate::CliResult;
use rpc_core::{
    tls::{ClientTls, ServerTls},
    Channel, Codec, Server,
};
use std::{future::Future, net::SocketAddr, pin::Pin, process::Stdio, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    net::TcpListener,
    process::{Child, Command},
    time::Instant,
};

/// The request of the benchmark, as the issue that defines it specifies.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct BenchRequest {
    id: u64,
    name: String,
    tags: Vec<u32>,
    payload: Vec<u8>,
}

impl BenchRequest {
    pub(super) fn sample() -> BenchRequest {
        BenchRequest {
            id: 0x1234_5678_9abc,
            name: "bench-request-16".into(),
            tags: (1..=8).collect(),
            payload: (0..128u8).collect(),
        }
    }
}

/// The benchmark service: returns what it gets.
#[rpc_core::service]
pub(crate) trait Bench {
    /// Echoes the request.
    async fn echo(&self, request: BenchRequest) -> BenchRequest;
}

struct Echo;

impl Bench for Echo {
    async fn echo(&self, request: BenchRequest) -> BenchRequest {
        request
    }
}

#[derive(clap::Args)]
pub(crate) struct RpcBenchArgs {
    #[command(flatten)]
    run: RoundArgs,
    /// Codec of the RPC subject (default: a channel's default, Protobuf).
    #[arg(long, default_value = "protobuf")]
    codec: Codec,
    /// Scenarios to run: latency, pipelined, multi.
    #[arg(long, value_delimiter = ',', default_value = "latency,pipelined,multi")]
    scenarios: Vec<String>,
    /// Also measure calls over TLS 1.3 (certificates from `rpc cert dev`, in a temporary
    /// directory), against plain TCP in the same run.
    #[arg(long)]
    tls: bool,
    /// Also measure a server that records call metrics (with an admin port) and traces every
    /// call (a `TraceLayer`, its spans left to the default log filter, which drops them),
    /// against plain `rpc` in the same run.
    #[arg(long)]
    metrics: bool,
}

/// One subject's measurement of a round.
type Measure = Box<dyn Fn() -> Pin<Box<dyn Future<Output = Round>>>>;

/// A variant of the rpc server measured beside it.
struct Variant {
    subject: &'static str,
    child: Child,
    addr: SocketAddr,
    tls: Option<ClientTls>,
}

/// What one measured stretch of calls gave: calls per second, their latencies, and the CPU
/// time client and server used meanwhile (where it can be read).
pub(super) struct Round {
    qps: f64,
    latencies: Latencies,
    cpu: Option<CpuUse>,
}

/// Results of the rounds of one subject.
#[derive(Default)]
pub(super) struct Rounds {
    qps: Vec<f64>,
    latencies: Latencies,
    /// CPU time over every round, `None` once a round could not read it.
    cpu: Option<CpuUse>,
}

/// The subject the others are compared with.
pub(super) struct Baseline {
    name: &'static str,
    /// Calls per second of each round, in order.
    qps: Vec<f64>,
    cpu_per_call: Option<f64>,
}

impl Rounds {
    pub(super) fn add(&mut self, round: Round) {
        self.cpu = match (self.qps.is_empty(), self.cpu, round.cpu) {
            (true, _, cpu) => cpu,
            (false, Some(mut sum), Some(cpu)) => {
                sum.add(cpu);
                Some(sum)
            }
            (false, _, _) => None,
        };
        self.qps.push(round.qps);
        self.latencies.merge(round.latencies);
    }

    pub(super) fn median_qps(&self) -> f64 {
        quantile(&mut self.qps.clone(), 0.5)
    }

    /// The median over rounds of these calls/s over the baseline's in the same round. Subjects
    /// of a round run back to back, so a round's ratio sees one state of a shared machine;
    /// medians taken apart would compare rounds minutes apart.
    fn ratio_qps(&self, baseline: &Baseline) -> f64 {
        let ratios = self.qps.iter().zip(&baseline.qps).filter(|(_, base)| **base > 0.0).map(|(qps, base)| qps / base);
        quantile(&mut ratios.collect::<Vec<_>>(), 0.5)
    }

    /// Client and server CPU time per call, in microseconds, over all rounds.
    fn cpu_per_call(&self) -> Option<(f64, f64)> {
        let calls = self.latencies.len() as f64;
        let cpu = self.cpu.filter(|_| calls > 0.0)?;
        Some((cpu.client.as_secs_f64() * 1e6 / calls, cpu.server.as_secs_f64() * 1e6 / calls))
    }

    /// These rounds as the baseline named `name`.
    pub(super) fn baseline(&self, name: &'static str) -> Baseline {
        Baseline { name, qps: self.qps.clone(), cpu_per_call: self.cpu_per_call().map(|(c, s)| c + s) }
    }

    /// The report line of these rounds, compared with `baseline`.
    pub(super) fn row(mut self, scenario: &'static str, subject: &'static str, baseline: &Baseline) -> RpcRow {
        let qps = self.median_qps();
        let ratio_qps = self.ratio_qps(baseline);
        let cpu = self.cpu_per_call();
        let ratio_cpu = match (cpu, baseline.cpu_per_call) {
            (Some((client, server)), Some(base)) if base > 0.0 => Some((client + server) / base),
            _ => None,
        };
        RpcRow {
            scenario,
            subject,
            qps,
            p50_us: self.latencies.quantile(0.5),
            p99_us: self.latencies.quantile(0.99),
            ratio_qps,
            server_cpu_us: cpu.map(|(_, server)| server),
            client_cpu_us: cpu.map(|(client, _)| client),
            ratio_cpu,
            vs: baseline.name,
        }
    }
}

struct Scenario {
    name: &'static str,
    connections: usize,
    in_flight_per_connection: usize,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario { name: "latency", connections: 1, in_flight_per_connection: 1 },
    Scenario { name: "pipelined", connections: 1, in_flight_per_connection: 64 },
    Scenario { name: "multi", connections: 4, in_flight_per_connection: 32 },
];

pub(crate) async fn run(args: RpcBenchArgs) -> CliResult {
    for name in &args.scenarios {
        if !SCENARIOS.iter().any(|s| s.name == name) {
            return Err(format!("unknown scenario {name:?}; use latency, pipelined or multi").into());
        }
    }
    let (mut raw_child, raw_addr) = spawn_server(&format!("raw={}", args.codec)).await?;
    let (mut rpc_child, rpc_addr) = spawn_server("rpc").await?;
    // Variants of the rpc server, each measured against plain `rpc` in the same rounds.
    let mut variants = Vec::new();
    let certs = std::env::temp_dir().join(format!("rpc-bench-tls-{}", std::process::id()));
    if args.tls {
        crate::cert::write_dev(&certs, &[], "bench")?;
        let (child, addr) = spawn_server(&format!("rpc-tls={}", certs.display())).await?;
        variants.push(Variant {
            subject: "rpc-tls",
            child,
            addr,
            tls: Some(ClientTls::builder(certs.join("ca.pem")).build()?),
        });
    }
    if args.metrics {
        let (child, addr) = spawn_server("rpc-metrics").await?;
        variants.push(Variant { subject: "rpc-metrics", child, addr, tls: None });
    }
    let warmup = Duration::from_secs_f64(args.run.warmup);
    let measured = Duration::from_secs_f64(args.run.seconds);
    let request = BenchRequest::sample();

    let mut rows = Vec::new();
    for scenario in SCENARIOS.iter().filter(|s| args.scenarios.iter().any(|n| n == s.name)) {
        let mut raw_clients = Vec::new();
        let mut rpc_clients = Vec::new();
        let mut variant_clients: Vec<Vec<BenchClient<Channel>>> = variants.iter().map(|_| Vec::new()).collect();
        for _ in 0..scenario.connections {
            raw_clients.push(Arc::new(RawClient::connect(raw_addr, args.codec).await?));
            let channel = Channel::builder(rpc_addr).codec(args.codec).connect().await?;
            rpc_clients.push(BenchClient::new(channel));
            for (variant, clients) in variants.iter().zip(&mut variant_clients) {
                let builder = Channel::builder(variant.addr).codec(args.codec);
                let builder = match &variant.tls {
                    Some(tls) => builder.tls(tls.clone()),
                    None => builder,
                };
                clients.push(BenchClient::new(builder.connect().await?));
            }
        }
        let shape = Shape { per_client: scenario.in_flight_per_connection, warmup, measured };
        // Raw first, then rpc, then its variants; each measured the same way.
        let (raw_server, sample) = (raw_child.id(), request.clone());
        let mut subjects: Vec<(Measure, Rounds)> = vec![(
            Box::new(move || {
                // Each call builds its request, as a caller would (and as the rpc subjects do).
                let expected = Arc::new(sample.clone());
                Box::pin(drive(raw_clients.clone(), shape, raw_server, move |c| {
                    let expected = expected.clone();
                    async move {
                        let request = BenchRequest::clone(&expected);
                        c.call(&request).await.is_some_and(|echo| echo == *expected)
                    }
                }))
            }),
            Rounds::default(),
        )];
        let servers = std::iter::once(rpc_child.id()).chain(variants.iter().map(|v| v.child.id()));
        for (clients, server) in std::iter::once(rpc_clients).chain(variant_clients).zip(servers) {
            let sample = request.clone();
            let measure: Measure = Box::new(move || {
                let expected = Arc::new(sample.clone());
                Box::pin(drive(clients.clone(), shape, server, move |c| {
                    let expected = expected.clone();
                    async move { c.echo(BenchRequest::clone(&expected)).await.is_ok_and(|echo| echo == *expected) }
                }))
            });
            subjects.push((measure, Rounds::default()));
        }
        // Subjects run back to back, and in reverse order every other round, so neither side
        // of a ratio is always the one that runs second.
        let count = subjects.len();
        for round in 0..args.run.rounds.max(1) {
            for i in 0..count {
                let (measure, rounds) = &mut subjects[if round % 2 == 0 { i } else { count - 1 - i }];
                rounds.add(measure().await);
            }
        }
        let mut rounds = subjects.into_iter().map(|(_, rounds)| rounds);
        let (raw, rpc) = (rounds.next().unwrap_or_default(), rounds.next().unwrap_or_default());
        let (raw_base, rpc_base) = (raw.baseline("raw"), rpc.baseline("rpc"));
        rows.push(raw.row(scenario.name, "raw", &raw_base));
        rows.push(rpc.row(scenario.name, "rpc", &raw_base));
        for (variant, rounds) in variants.iter().zip(rounds) {
            rows.push(rounds.row(scenario.name, variant.subject, &rpc_base));
        }
    }
    print_rpc_rows(&rows, args.run.json);
    let _ = raw_child.kill().await;
    let _ = rpc_child.kill().await;
    for mut variant in variants {
        let _ = variant.child.kill().await;
    }
    let _ = std::fs::remove_dir_all(&certs);
    Ok(())
}

/// How a subject is driven: concurrent callers per client, warm-up and measured time.
#[derive(Clone, Copy)]
pub(super) struct Shape {
    pub(super) per_client: usize,
    pub(super) warmup: Duration,
    pub(super) measured: Duration,
}

/// Runs `shape.per_client` concurrent callers on each client for the warm-up and the measured
/// time, and returns calls per second and latencies of the calls started after the warm-up,
/// with the CPU time this process and process `server` used over the measured time. A failed
/// call is an error: a benchmark that counts failures as throughput measures nothing.
pub(super) async fn drive<C, F, Fut>(clients: Vec<C>, shape: Shape, server: Option<u32>, call: F) -> Round
where
    C: Clone + Send + 'static,
    F: Fn(C) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let Shape { per_client, warmup, measured } = shape;
    let from = Instant::now() + warmup;
    let until = from + measured;
    let mut tasks = Vec::new();
    for client in clients {
        for _ in 0..per_client {
            let (client, call) = (client.clone(), call.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Latencies::default();
                let mut failed = 0u64;
                loop {
                    let started = Instant::now();
                    if started >= until {
                        break;
                    }
                    let ok = call(client.clone()).await;
                    if started >= from {
                        if ok {
                            latencies.record(started.elapsed());
                        } else {
                            failed += 1;
                        }
                    }
                }
                (latencies, failed)
            }));
        }
    }
    tokio::time::sleep_until(from).await;
    let cpu_from = server.and_then(CpuUse::now);
    tokio::time::sleep_until(until).await;
    let cpu = cpu_from.zip(server.and_then(CpuUse::now)).map(|(from, to)| CpuUse::between(from, to));
    let mut all = Latencies::default();
    let mut failed = 0;
    for task in tasks {
        if let Ok((latencies, f)) = task.await {
            all.merge(latencies);
            failed += f;
        }
    }
    if failed > 0 {
        eprintln!("warning: {failed} calls failed and were not counted");
    }
    Round { qps: all.len() as f64 / measured.as_secs_f64(), latencies: all, cpu }
}

/// Starts `rpc __bench-server KIND` and reads the address it listens on.
pub(super) async fn spawn_server(kind: &str) -> Result<(Child, SocketAddr), Box<dyn std::error::Error + Send + Sync>> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["__bench-server", kind])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("bench server has no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).await?;
    let addr = line.trim().parse().map_err(|e| format!("bench server printed {line:?}: {e}"))?;
    Ok((child, addr))
}

/// Body of the child process: serve, print the address, stop when stdin closes.
pub(crate) async fn serve_child(kind: &str) -> CliResult {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    let server = match kind {
        raw if raw.starts_with("raw=") => {
            tokio::spawn(raw::serve(listener, raw["raw=".len()..].parse()?));
            None
        }
        "rpc" => Some(Server::builder().add_service(BenchServer::new(Echo)).start_on(listener)),
        "rpc-metrics" => {
            let server = Server::builder()
                .layer(rpc_core::trace::TraceLayer::new())
                .admin("127.0.0.1:0")
                .add_service(BenchServer::new(Echo));
            Some(server.start_on(listener))
        }
        tls if tls.starts_with("rpc-tls=") => {
            let certs = std::path::Path::new(&tls["rpc-tls=".len()..]);
            let tls = ServerTls::builder(certs.join("server.pem"), certs.join("server.key")).build()?;
            Some(Server::builder().tls(tls).add_service(BenchServer::new(Echo)).start_on(listener))
        }
        other => return Err(format!("unknown bench server {other:?}").into()),
    };
    // The parent holds our stdin; when it exits, so do we.
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    drop(server);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(qps: &[f64]) -> Rounds {
        let mut rounds = Rounds::default();
        for &qps in qps {
            rounds.add(Round { qps, latencies: Latencies::default(), cpu: None });
        }
        rounds
    }

    #[test]
    fn a_burst_of_load_in_one_round_moves_that_rounds_ratio_not_the_result() {
        // The machine ran at three speeds over three rounds; the subject kept 0.95 of the
        // baseline in two and was hit by load from elsewhere in the third.
        let baseline = rounds(&[200.0, 100.0, 300.0]).baseline("raw");
        let row = rounds(&[190.0, 95.0, 120.0]).row("pipelined", "rpc", &baseline);
        assert!((row.ratio_qps - 0.95).abs() < 1e-9, "ratio {} is not the rounds' median ratio 0.95", row.ratio_qps);
        assert_eq!(row.qps, 120.0, "calls/s is the median round");
    }
}
