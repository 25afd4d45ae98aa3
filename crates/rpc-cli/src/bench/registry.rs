//! `rpc bench registry`: a three-process registry against a three-process etcd on this machine,
//! the same load on both in the same run.
//!
//! Each side gets its native client over one connection to its leader (ours: `RegistryClient`
//! over our RPC; etcd: gRPC over one HTTP/2 connection), fsync on, the same keys and 256-byte
//! values, the same concurrency. `ratio` is how many times better than etcd a row is: calls/s
//! divided by etcd's, or etcd's latency or memory divided by ours.

use super::report::quantile;
use crate::CliResult;
use clap::Args;
use futures_util::StreamExt;
use rpc_registry::etcd::{frame, proto as etcd, Connection as Etcd, GrpcStream};
use rpc_registry::{
    api::{prefix_end, PutRequest, RangeRequest, WatchCreate},
    RegistryClient,
};
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};
use tokio::process::{Child, Command};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Flags of `rpc bench registry`.
#[derive(Args)]
pub(crate) struct RegistryBenchArgs {
    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds each throughput scenario runs per subject.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Puts whose watch delivery is timed.
    #[arg(long, default_value_t = 2000)]
    watch_puts: usize,
    /// Skip etcd even if it is installed.
    #[arg(long)]
    no_etcd: bool,
}

const VALUE: [u8; 256] = [b'v'; 256];

/// One row of the table: a figure for each subject.
struct Row {
    scenario: &'static str,
    unit: &'static str,
    ours: f64,
    etcd: Option<f64>,
    /// Whether more is better (throughput) or less (latency, memory).
    higher_is_better: bool,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        let etcd = self.etcd?;
        Some(if self.higher_is_better { self.ours / etcd } else { etcd / self.ours })
    }
}

pub(crate) async fn run(args: RegistryBenchArgs) -> CliResult {
    let dir = TempDir::new()?;
    let etcd_installed = !args.no_etcd && which("etcd");
    if !etcd_installed && !args.no_etcd {
        eprintln!("etcd is not installed (Debian: apt install etcd-server); measuring the registry alone");
    }
    let seconds = Duration::from_secs_f64(args.seconds);

    progress("starting three registry members");
    let ours = OurCluster::start(&dir.0.join("rpc")).await?;
    let etcd = match etcd_installed {
        true => {
            progress("starting three etcd members");
            Some(EtcdCluster::start(&dir.0.join("etcd")).await?)
        }
        false => None,
    };

    let mut rows = Vec::new();
    for (scenario, concurrency) in [("put, 1 client", 1), ("put, 256 clients", 256)] {
        progress(scenario);
        let mine = ours.puts(concurrency, seconds).await?;
        let theirs = match &etcd {
            Some(etcd) => Some(etcd.puts(concurrency, seconds).await?),
            None => None,
        };
        rows.push(Row { scenario, unit: "calls/s", ours: mine, etcd: theirs, higher_is_better: true });
    }
    progress("linearizable get, 256 clients");
    let mine = ours.gets(256, seconds).await?;
    let theirs = match &etcd {
        Some(etcd) => Some(etcd.gets(256, seconds).await?),
        None => None,
    };
    rows.push(Row {
        scenario: "linearizable get, 256 clients",
        unit: "calls/s",
        ours: mine,
        etcd: theirs,
        higher_is_better: true,
    });

    progress("watch delivery");
    let mut mine = ours.watch_latencies(args.watch_puts).await?;
    let mut theirs = match &etcd {
        Some(etcd) => Some(etcd.watch_latencies(args.watch_puts).await?),
        None => None,
    };
    for (scenario, q) in [("watch delivery p50", 0.5), ("watch delivery p99", 0.99)] {
        let etcd = theirs.as_mut().map(|t| quantile(t, q) as f64);
        rows.push(Row { scenario, unit: "µs", ours: quantile(&mut mine, q) as f64, etcd, higher_is_better: false });
    }

    progress("lease keep-alives");
    let mine = ours.keep_alives(seconds).await?;
    let theirs = match &etcd {
        Some(etcd) => Some(etcd.keep_alives(seconds).await?),
        None => None,
    };
    rows.push(Row {
        scenario: "lease keep-alives, 1 stream",
        unit: "calls/s",
        ours: mine,
        etcd: theirs,
        higher_is_better: true,
    });

    let etcd_memory = etcd.as_ref().map(|e| rss_mib(&e.children.iter().collect::<Vec<_>>()));
    rows.push(Row {
        scenario: "memory per member",
        unit: "MiB",
        ours: rss_mib(&ours.members.children()),
        etcd: etcd_memory,
        higher_is_better: false,
    });
    print(&rows, args.json);
    Ok(())
}

/// Tells the person waiting what is being measured; stderr keeps `--json` output clean.
fn progress(what: &str) {
    eprintln!("measuring: {what}");
}

fn print(rows: &[Row], json: bool) {
    if !json {
        println!("{:<32} {:>12} {:>12} {:>8}  unit", "scenario", "rpc", "etcd", "ratio");
    }
    for row in rows {
        let etcd = row.etcd.map_or("-".to_owned(), |e| format!("{e:.0}"));
        let ratio = row.ratio().map_or("-".to_owned(), |r| format!("{r:.2}"));
        match json {
            true => println!(
                "{}",
                serde_json::json!({
                    "scenario": row.scenario, "unit": row.unit, "rpc": row.ours, "etcd": row.etcd, "ratio": row.ratio(),
                })
            ),
            false => println!("{:<32} {:>12.0} {:>12} {:>8}  {}", row.scenario, row.ours, etcd, ratio, row.unit),
        }
    }
}

/// Runs `op` from `concurrency` tasks for `duration`; answers completed calls per second.
async fn drive<F, Fut>(concurrency: usize, duration: Duration, op: F) -> Result<f64, BoxError>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency as u64)
        .map(|task| {
            let (op, stop, done) = (op.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = task;
                while !stop.load(Ordering::Relaxed) {
                    op(i).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += concurrency as u64;
                }
                Ok::<(), BoxError>(())
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let calls = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    for task in tasks {
        task.await??;
    }
    Ok(calls as f64 / elapsed.as_secs_f64())
}

fn key(i: u64) -> Vec<u8> {
    format!("bench/{:06}", i % 10_000).into_bytes()
}

/// `rpc registry serve` processes forming one cluster, each with its data directory under
/// `dir`; a member can be killed and started again on the same directory.
pub(super) struct Members {
    dir: PathBuf,
    addrs: Vec<String>,
    fsync: bool,
    /// `None` while killed.
    children: Vec<Option<Child>>,
}

impl Members {
    pub(super) fn start(dir: &Path, nodes: usize, fsync: bool) -> Result<Members, BoxError> {
        let mut members = Members {
            dir: dir.to_owned(),
            addrs: free_ports(nodes)?,
            fsync,
            children: (0..nodes).map(|_| None).collect(),
        };
        for i in 0..nodes {
            members.restart(i)?;
        }
        Ok(members)
    }

    pub(super) fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// Starts member `i` (again, on its data directory).
    pub(super) fn restart(&mut self, i: usize) -> Result<(), BoxError> {
        let peers: Vec<String> = self.addrs.iter().enumerate().map(|(i, a)| format!("n{i}={a}")).collect();
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args([
                "registry",
                "serve",
                "--name",
                &format!("n{i}"),
                "--listen",
                &self.addrs[i],
                "--peers",
                &peers.join(","),
            ])
            .arg("--data-dir")
            .arg(self.dir.join(format!("n{i}")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if !self.fsync {
            command.arg("--no-fsync");
        }
        self.children[i] = Some(command.spawn()?);
        Ok(())
    }

    /// Kills member `i` with SIGKILL and waits for it to be gone.
    pub(super) async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill().await;
        }
    }

    fn children(&self) -> Vec<&Child> {
        self.children.iter().flatten().collect()
    }
}

struct OurCluster {
    members: Members,
    client: RegistryClient,
}

impl OurCluster {
    async fn start(dir: &Path) -> Result<OurCluster, BoxError> {
        let members = Members::start(dir, 3, true)?;
        let client = RegistryClient::connect(members.addrs().to_vec());
        // The first write finds the leader; the client stays with it.
        client.put("bench/ready", "1").await?;
        Ok(OurCluster { members, client })
    }

    async fn puts(&self, concurrency: usize, duration: Duration) -> Result<f64, BoxError> {
        let client = self.client.clone();
        drive(concurrency, duration, move |i| {
            let client = client.clone();
            async move {
                let request = PutRequest { key: key(i), value: VALUE.to_vec(), ..PutRequest::default() };
                client.put_with(request).await?;
                Ok(())
            }
        })
        .await
    }

    async fn gets(&self, concurrency: usize, duration: Duration) -> Result<f64, BoxError> {
        let client = self.client.clone();
        drive(concurrency, duration, move |i| {
            let client = client.clone();
            async move {
                client.range(RangeRequest { key: key(i), ..RangeRequest::default() }).await?;
                Ok(())
            }
        })
        .await
    }

    async fn watch_latencies(&self, puts: usize) -> Result<Vec<u32>, BoxError> {
        // The watch starts at a put made before it, so it is established once that event arrives.
        let ready = self.client.put("watch/ready", "1").await?;
        let spec = WatchCreate {
            key: b"watch/".to_vec(),
            range_end: prefix_end(b"watch/"),
            start_revision: ready.header.revision,
            ..WatchCreate::default()
        };
        let mut watch = self.client.watch(spec);
        watch.next().await.ok_or("the watch ended")??;
        let mut latencies = Vec::with_capacity(puts);
        for i in 0..puts {
            let started = Instant::now();
            self.client.put(format!("watch/{i}"), VALUE).await?;
            watch.next().await.ok_or("the watch ended")??;
            latencies.push(started.elapsed().as_micros() as u32);
        }
        Ok(latencies)
    }

    async fn keep_alives(&self, duration: Duration) -> Result<f64, BoxError> {
        let lease = self.client.lease_grant(60).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(128);
        for _ in 0..64 {
            tx.send(lease).await?;
        }
        let mut answers = self
            .client
            .current()
            .ok_or("not our registry")?
            .lease_keep_alive(rpc_core::stream::from_receiver(rx))
            .await?;
        let started = Instant::now();
        let mut count = 0u64;
        while started.elapsed() < duration {
            answers.next().await.ok_or("the keep-alive stream ended")???;
            count += 1;
            tx.send(lease).await?;
        }
        Ok(count as f64 / started.elapsed().as_secs_f64())
    }
}

struct EtcdCluster {
    children: Vec<Child>,
    leader: Etcd,
}

impl EtcdCluster {
    async fn start(dir: &Path) -> Result<EtcdCluster, BoxError> {
        let clients = free_ports(3)?;
        let peers = free_ports(3)?;
        let initial: Vec<String> = peers.iter().enumerate().map(|(i, p)| format!("e{i}=http://{p}")).collect();
        let mut children = Vec::new();
        for i in 0..3 {
            let child = Command::new("etcd")
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("e{i}")))
                .args(["--listen-client-urls", &format!("http://{}", clients[i])])
                .args(["--advertise-client-urls", &format!("http://{}", clients[i])])
                .args(["--listen-peer-urls", &format!("http://{}", peers[i])])
                .args(["--initial-advertise-peer-urls", &format!("http://{}", peers[i])])
                .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "rpc-bench", "--logger", "zap", "--log-level", "error"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()?;
            children.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for addr in &clients {
                let Ok(etcd) = Etcd::connect(addr).await else { continue };
                let Ok(status) =
                    etcd.call::<_, etcd::StatusResponse>("/etcdserverpb.Maintenance/Status", &etcd::Empty {}).await
                else {
                    continue;
                };
                if status.leader != 0 && status.header.as_ref().is_some_and(|h| h.member_id == status.leader) {
                    return Ok(EtcdCluster { children, leader: etcd });
                }
            }
            if Instant::now() > deadline {
                return Err("etcd elected no leader within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn puts(&self, concurrency: usize, duration: Duration) -> Result<f64, BoxError> {
        let etcd = self.leader.clone();
        drive(concurrency, duration, move |i| {
            let etcd = etcd.clone();
            async move {
                let request = etcd::PutRequest { key: key(i), value: VALUE.to_vec(), ..Default::default() };
                etcd.call::<_, etcd::PutResponse>("/etcdserverpb.KV/Put", &request).await?;
                Ok(())
            }
        })
        .await
    }

    async fn gets(&self, concurrency: usize, duration: Duration) -> Result<f64, BoxError> {
        let etcd = self.leader.clone();
        drive(concurrency, duration, move |i| {
            let etcd = etcd.clone();
            async move {
                let request = etcd::RangeRequest { key: key(i), ..Default::default() };
                etcd.call::<_, etcd::RangeResponse>("/etcdserverpb.KV/Range", &request).await?;
                Ok(())
            }
        })
        .await
    }

    async fn watch_latencies(&self, puts: usize) -> Result<Vec<u32>, BoxError> {
        let create = etcd::WatchCreateRequest {
            key: b"watch/".to_vec(),
            range_end: prefix_end(b"watch/"),
            ..Default::default()
        };
        let (_requests, mut responses) =
            self.leader.stream("/etcdserverpb.Watch/Watch", &etcd::WatchRequest { create: Some(create) }).await?;
        let put = |key: String| etcd::PutRequest { key: key.into_bytes(), value: VALUE.to_vec(), ..Default::default() };
        // The first response confirms the watch; a put before timing proves events flow.
        responses.next::<etcd::WatchResponse>().await?.ok_or("etcd ended the watch")?;
        self.leader.call::<_, etcd::PutResponse>("/etcdserverpb.KV/Put", &put("watch/ready".into())).await?;
        next_event(&mut responses).await?;
        let mut latencies = Vec::with_capacity(puts);
        for i in 0..puts {
            let started = Instant::now();
            self.leader.call::<_, etcd::PutResponse>("/etcdserverpb.KV/Put", &put(format!("watch/{i}"))).await?;
            next_event(&mut responses).await?;
            latencies.push(started.elapsed().as_micros() as u32);
        }
        Ok(latencies)
    }

    async fn keep_alives(&self, duration: Duration) -> Result<f64, BoxError> {
        let granted: etcd::LeaseGrantResponse =
            self.leader.call("/etcdserverpb.Lease/LeaseGrant", &etcd::LeaseGrantRequest { ttl: 60, id: 0 }).await?;
        let ping = etcd::LeaseId { id: granted.id };
        let (mut requests, mut answers) = self.leader.stream("/etcdserverpb.Lease/LeaseKeepAlive", &ping).await?;
        let ping = frame(&ping);
        for _ in 1..64 {
            requests.send_data(ping.clone(), false)?;
        }
        let started = Instant::now();
        let mut count = 0u64;
        while started.elapsed() < duration {
            let answer: etcd::LeaseKeepAliveResponse =
                answers.next().await?.ok_or("etcd ended the keep-alive stream")?;
            if answer.ttl <= 0 {
                return Err("etcd lost the lease".into());
            }
            count += 1;
            requests.send_data(ping.clone(), false)?;
        }
        Ok(count as f64 / started.elapsed().as_secs_f64())
    }
}

/// Waits for a watch response that carries events.
async fn next_event(responses: &mut GrpcStream) -> Result<(), BoxError> {
    loop {
        let response: etcd::WatchResponse = responses.next().await?.ok_or("etcd ended the watch")?;
        if !response.events.is_empty() {
            return Ok(());
        }
    }
}

/// Mean resident memory of the processes, in MiB.
fn rss_mib(children: &[&Child]) -> f64 {
    let kib: Vec<f64> = children
        .iter()
        .filter_map(|c| c.id())
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .collect();
    kib.iter().sum::<f64>() / kib.len().max(1) as f64 / 1024.0
}

fn free_ports(n: usize) -> std::io::Result<Vec<String>> {
    let listeners = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<Vec<_>, _>>()?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.to_string())).collect()
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new() -> std::io::Result<TempDir> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("rpc-bench-registry-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir is harmless.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
