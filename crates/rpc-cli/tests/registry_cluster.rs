//! A registry of three `rpc registry serve` processes, faulted like a database: the leader is
//! killed with SIGKILL and restarted, a member is paused with SIGSTOP and resumed, members are
//! added and removed, while clients read, write and compare-and-swap. The history they observe
//! must be linearizable, and every acknowledged write must be there at the end.

use futures_util::StreamExt;
use rpc_raft::{
    kv::{KvOp, KvOutput},
    linearizability::{check, CheckResult, KvModel, Operation},
};
use rpc_registry::{
    api::{
        prefix_end, Compare, CompareResult, CompareTarget, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreate,
    },
    ClientError, ErrorCode, RegistryClient,
};
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

struct Cluster {
    dir: PathBuf,
    /// Each member's name and the address it listens on.
    peers: Vec<(String, String)>,
    /// What each member is told of its peers: their addresses, or the proxies to them.
    views: Vec<Vec<(String, String)>>,
    /// The proxy from member `from` to member `to`, when the cluster was started with them.
    proxies: Vec<(usize, usize, Proxy)>,
    children: Vec<Option<Child>>,
}

impl Cluster {
    fn start() -> Cluster {
        let mut cluster = Cluster::new(3);
        cluster.views = vec![cluster.peers.clone(); 3];
        for i in 0..3 {
            cluster.spawn(i);
        }
        cluster
    }

    /// A cluster whose members reach each other through proxies that can be cut.
    async fn start_partitionable() -> Cluster {
        let mut cluster = Cluster::new(3);
        for from in 0..3 {
            let mut view = Vec::new();
            for to in 0..3 {
                let (name, addr) = cluster.peers[to].clone();
                if from == to {
                    view.push((name, addr));
                    continue;
                }
                let proxy = Proxy::start(addr).await;
                view.push((name, proxy.addr.clone()));
                cluster.proxies.push((from, to, proxy));
            }
            cluster.views.push(view);
        }
        for i in 0..3 {
            cluster.spawn(i);
        }
        cluster
    }

    /// Names and addresses for `n` members; none is started.
    fn new(n: usize) -> Cluster {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("rpc-registry-cluster-{}-{nanos}", std::process::id()));
        let listeners: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let peers =
            listeners.iter().enumerate().map(|(i, l)| (format!("n{i}"), l.local_addr().unwrap().to_string())).collect();
        drop(listeners);
        Cluster { dir, peers, views: Vec::new(), proxies: Vec::new(), children: (0..n).map(|_| None).collect() }
    }

    /// Cuts (or restores) every link between member `i` and the others, both ways.
    fn isolate(&self, i: usize, cut: bool) {
        for (from, to, proxy) in &self.proxies {
            if *from == i || *to == i {
                proxy.cut.send_replace(cut);
            }
        }
    }

    fn spawn(&mut self, i: usize) {
        self.spawn_with(i, &[]);
    }

    fn spawn_with(&mut self, i: usize, flags: &[&str]) {
        let peers: Vec<String> = self.views[i].iter().map(|(n, a)| format!("{n}={a}")).collect();
        let child = Command::new(env!("CARGO_BIN_EXE_rpc"))
            .args(["registry", "serve", "--name", &self.peers[i].0, "--listen", &self.peers[i].1, "--peers"])
            .arg(peers.join(","))
            .args(flags)
            .arg("--data-dir")
            .arg(self.dir.join(&self.peers[i].0))
            .stdout(Stdio::null())
            .spawn()
            .expect("the rpc binary starts");
        self.children[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        let mut child = self.children[i].take().expect("the member is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.children[i].as_ref().expect("the member is running").id().to_string();
        assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
    }

    fn addrs(&self) -> Vec<String> {
        self.peers.iter().map(|(_, a)| a.clone()).collect()
    }

    fn index_of(&self, id: u64) -> usize {
        self.peers.iter().position(|(name, _)| rpc_registry::member_id(name) == id).expect("a member of the cluster")
    }
}

/// A TCP proxy that can cut its connections and refuse new ones: a network partition.
struct Proxy {
    addr: String,
    cut: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(tokio::sync::watch::Sender::new(false));
        let state = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *state.borrow() {
                    continue;
                }
                let target = target.clone();
                let mut cut = state.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Proxy { addr, cut }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The leader's index, once one member reports one.
async fn leader(cluster: &Cluster) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for addr in cluster.addrs() {
            if let Ok(status) = RegistryClient::connect([addr]).status().await {
                if status.leader != 0 {
                    return cluster.index_of(status.leader);
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader elected within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn client_for(cluster: &Cluster) -> RegistryClient {
    RegistryClient::connect(cluster.addrs())
}

fn key(k: u64) -> Vec<u8> {
    format!("lin/{k}").into_bytes()
}

/// Runs `op` against the registry; `None` when the outcome is unknown.
async fn run(client: &RegistryClient, op: KvOp) -> Option<KvOutput> {
    let outcome: Result<KvOutput, ClientError> = match op {
        KvOp::Get { key: k } => client
            .get(key(k))
            .await
            .map(|kv| KvOutput::Value(kv.map(|kv| String::from_utf8_lossy(&kv.value).parse().unwrap()))),
        KvOp::Put { key: k, value } => client.put(key(k), value.to_string()).await.map(|_| KvOutput::Written),
        KvOp::Cas { key: k, expected, new } => {
            let compare = match expected {
                Some(v) => Compare {
                    key: key(k),
                    result: CompareResult::Equal,
                    target: CompareTarget::Value(v.to_string().into_bytes()),
                },
                None => Compare { key: key(k), result: CompareResult::Equal, target: CompareTarget::Version(0) },
            };
            let put = PutRequest { key: key(k), value: new.to_string().into_bytes(), ..PutRequest::default() };
            let request =
                TxnRequest { compare: vec![compare], success: vec![RequestOp::Put(put)], failure: Vec::new() };
            client
                .call(false, |c| {
                    let request = request.clone();
                    async move { c.txn(request).await }
                })
                .await
                .map(|r| KvOutput::Swapped(r.succeeded))
        }
    };
    match outcome {
        Ok(output) => Some(output),
        Err(ClientError::Registry(e)) if e.code == ErrorCode::InvalidRequest => {
            panic!("a valid request was refused: {e}")
        }
        // Timed out or cut off: the write may or may not have happened, so its outcome is unknown.
        Err(_) => None,
    }
}

type History = Arc<Mutex<Vec<Operation<KvOp, KvOutput>>>>;

fn acknowledged(history: &History) -> usize {
    history.lock().unwrap().iter().filter(|op| op.ret.is_some()).count()
}

/// Waits until `more` operations beyond those acknowledged now are acknowledged too.
async fn wait_for_progress(history: History, more: usize) {
    let target = acknowledged(&history) + more;
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged(&history) < target {
        assert!(Instant::now() < deadline, "the cluster made no progress for 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client that reads, writes and compares-and-swaps through every member (following the
/// leader), or, given one member, only reads through it: linearizable reads must be current
/// whichever member serves them.
async fn client_loop(id: u64, addrs: Vec<String>, history: History, epoch: Instant, until: Arc<Mutex<bool>>) {
    let reads_only = addrs.len() == 1;
    let client = RegistryClient::connect(addrs);
    let mut seed = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    while !*until.lock().unwrap() {
        let k = next() % 3;
        let op = match next() % 3 {
            _ if reads_only => KvOp::Get { key: k },
            0 => KvOp::Get { key: k },
            1 => KvOp::Put { key: k, value: next() % 1000 },
            _ => KvOp::Cas { key: k, expected: Some(next() % 1000).filter(|_| next() % 4 != 0), new: next() % 1000 },
        };
        let call = epoch.elapsed().as_nanos() as u64;
        let output = run(&client, op).await;
        let ret = output.map(|o| (epoch.elapsed().as_nanos() as u64, o));
        history.lock().unwrap().push(Operation { client: id, input: op, call, ret });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_paused_members_lose_no_acknowledged_write_and_the_history_is_linearizable() {
    let mut cluster = Cluster::start();
    let first = leader(&cluster).await;
    let history: History = Arc::default();
    let stop = Arc::new(Mutex::new(false));
    let epoch = Instant::now();
    // A watcher of every key the clients touch, across the faults: it must see each change
    // once, in order, with no gap. It starts on the member about to be killed, so it must
    // resume elsewhere.
    let mut addrs = cluster.addrs();
    addrs.rotate_left(first);
    let watcher = RegistryClient::connect(addrs);
    let spec =
        WatchCreate { key: b"lin/".to_vec(), range_end: prefix_end(b"lin/"), start_revision: 1, ..Default::default() };
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let mut watch = watcher.watch(spec.clone());
    tokio::spawn(async move {
        while let Some(Ok(response)) = watch.next().await {
            for event in response.events {
                let _ = seen_tx.send((event.kv.mod_revision, event.kv.key, event.kv.value));
            }
        }
    });
    let mut clients: Vec<_> = (1..=4)
        .map(|id| tokio::spawn(client_loop(id, cluster.addrs(), history.clone(), epoch, stop.clone())))
        .collect();
    for (i, addr) in cluster.addrs().into_iter().enumerate() {
        clients.push(tokio::spawn(client_loop(10 + i as u64, vec![addr], history.clone(), epoch, stop.clone())));
    }

    wait_for_progress(history.clone(), 100).await;
    cluster.kill(first);
    wait_for_progress(history.clone(), 100).await;
    cluster.spawn(first);

    let paused = leader(&cluster).await;
    cluster.signal(paused, "-STOP");
    wait_for_progress(history.clone(), 100).await;
    cluster.signal(paused, "-CONT");
    wait_for_progress(history.clone(), 100).await;

    *stop.lock().unwrap() = true;
    for client in clients {
        client.await.unwrap();
    }
    let ops = history.lock().unwrap().clone();
    assert!(ops.iter().filter(|op| op.ret.is_some()).count() >= 400);
    assert_eq!(check(&KvModel, &ops), CheckResult::Linearizable, "{} operations", ops.len());

    // The watcher saw exactly the store's history of those keys, as a fresh watch replays it.
    let last = client_for(&cluster).range(RangeRequest { key: b"lin/".to_vec(), ..Default::default() }).await.unwrap();
    let last = last.header.revision;
    let mut observed: Vec<(u64, Vec<u8>, Vec<u8>)> = Vec::new();
    while observed.last().is_none_or(|(revision, ..)| *revision < last) {
        let event = tokio::time::timeout(Duration::from_secs(30), seen.recv()).await;
        observed.push(event.expect("the watcher keeps up within 30 s").expect("the watcher is running"));
    }
    let mut replay = client_for(&cluster).watch(spec);
    let mut expected = Vec::new();
    while expected.len() < observed.len() {
        for event in replay.next().await.unwrap().unwrap().events {
            expected.push((event.kv.mod_revision, event.kv.key, event.kv.value));
        }
    }
    assert_eq!(observed.len(), expected.len());
    assert!(observed == expected, "the watcher's events differ from the history");

    // The last acknowledged write of each key, if no unknown write could follow it, is what
    // every member holds once they agree.
    let client = RegistryClient::connect(cluster.addrs());
    for k in 0..3 {
        let read = run(&client, KvOp::Get { key: k }).await.expect("the final read succeeds");
        let mut final_ops = ops.clone();
        final_ops.push(Operation {
            client: 99,
            input: KvOp::Get { key: k },
            call: u64::MAX - 1,
            ret: Some((u64::MAX, read)),
        });
        assert_eq!(check(&KvModel, &final_ops), CheckResult::Linearizable, "key {k}'s final value");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_serves_no_stale_reads_and_catches_up_when_healed() {
    let cluster = Cluster::start_partitionable().await;
    let old = leader(&cluster).await;
    let everyone = RegistryClient::connect(cluster.addrs());
    let first = everyone.put("lin/0", "1").await.unwrap().header.revision;
    // A watch that starts on the member about to be cut off must not stay there, silent.
    let mut order: Vec<String> = vec![cluster.peers[old].1.clone()];
    order.extend(cluster.addrs().into_iter().filter(|a| *a != cluster.peers[old].1));
    let spec = WatchCreate {
        key: b"lin/".to_vec(),
        range_end: prefix_end(b"lin/"),
        start_revision: first,
        ..WatchCreate::default()
    };
    let mut watch = RegistryClient::connect(order).watch(spec);
    let seen = watch.next().await.unwrap().unwrap();
    assert_eq!(seen.events[0].kv.value, b"1");

    cluster.isolate(old, true);
    let majority: Vec<String> =
        cluster.addrs().into_iter().enumerate().filter(|(i, _)| *i != old).map(|(_, a)| a).collect();
    RegistryClient::connect(majority).put("lin/0", "2").await.expect("the majority elects a leader and writes");

    let isolated = RegistryClient::connect([cluster.peers[old].1.clone()]).current().expect("our registry");
    let read = |serializable| RangeRequest { key: b"lin/0".to_vec(), serializable, ..RangeRequest::default() };
    let linearizable = isolated.range(read(false)).timeout(Duration::from_secs(2)).await;
    assert!(!matches!(&linearizable, Ok(Ok(_))), "the isolated member served a linearizable read: {linearizable:?}");
    let stale = isolated.range(read(true)).await.unwrap().unwrap();
    assert_eq!(stale.kvs[0].value, b"1", "a serializable read shows the member's own, stale state");
    let moved = tokio::time::timeout(Duration::from_secs(15), watch.next())
        .await
        .expect("the watch stayed on the cut-off member");
    assert_eq!(moved.unwrap().unwrap().events[0].kv.value, b"2", "the watch moved on and saw the majority's write");

    cluster.isolate(old, false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Ok(current)) = isolated.range(read(false)).timeout(Duration::from_secs(2)).await {
            assert_eq!(current.kvs[0].value, b"2", "once healed, the member reads the majority's write");
            break;
        }
        assert!(Instant::now() < deadline, "the healed member never served a linearizable read");
    }
}

/// Runs `rpc registry member ARGS --endpoints ENDPOINTS` and returns what it printed.
fn member_command(args: &[&str], endpoints: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rpc"))
        .args(["registry", "member"])
        .args(args)
        .args(["--endpoints", &endpoints.join(",")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rpc registry member {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Waits until the members `client` reports satisfy `done`.
async fn wait_for_members(client: &RegistryClient, what: &str, done: impl Fn(&[rpc_registry::api::Member]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(status) = client.status().await {
            if done(&status.members) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "within 30 s, {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for member `i`'s process to end by itself, as a removed member does.
async fn wait_for_exit(cluster: &mut Cluster, i: usize) {
    let mut child = cluster.children[i].take().expect("the member is running");
    let waited = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let status = waited.await.unwrap().expect("a removed member stops its process within 20 s");
    assert!(status.success(), "a removed member exits cleanly, got {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_added_and_removed_under_load_keep_the_history_linearizable() {
    let mut cluster = Cluster::new(4);
    let founders = cluster.peers[..3].to_vec();
    cluster.views = vec![founders.clone(), founders.clone(), founders, cluster.peers.clone()];
    for i in 0..3 {
        cluster.spawn(i);
    }
    let history: History = Arc::default();
    let stop = Arc::new(Mutex::new(false));
    let epoch = Instant::now();
    let clients: Vec<_> = (1..=3)
        .map(|id| tokio::spawn(client_loop(id, cluster.addrs(), history.clone(), epoch, stop.clone())))
        .collect();
    wait_for_progress(history.clone(), 100).await;

    // n3 joins: added as a learner, it catches up from the log and is promoted to voter.
    let founders: Vec<String> = cluster.addrs()[..3].to_vec();
    let printed = member_command(&["add", "n3", &cluster.peers[3].1], &founders);
    assert!(printed.contains("--join"), "member add tells how to start the new member: {printed}");
    cluster.spawn_with(3, &["--join"]);
    let everyone = RegistryClient::connect(cluster.addrs());
    wait_for_members(&everyone, "n3 is promoted to voter", |members| {
        members.len() == 4 && members.iter().all(|m| !m.learner)
    })
    .await;
    let newcomer = RegistryClient::connect([cluster.peers[3].1.clone()]);
    let written = everyone.put("joined", "yes").await.unwrap().header.revision;
    let read = newcomer.get("joined").await.unwrap().expect("the new member serves the key");
    assert_eq!(read.mod_revision, written, "a linearizable read through the new member is current");
    let listed = member_command(&["list"], &founders);
    assert_eq!(listed.lines().filter(|l| l.ends_with("voter")).count(), 4, "{listed}");
    // A client that knew one founder learns the cluster, and so survives that founder's removal.
    let synced = RegistryClient::connect([founders[0].clone()]);
    synced.sync_members().await.unwrap();
    let mut known = synced.member_addrs();
    known.sort();
    let mut all = cluster.addrs();
    all.sort();
    assert_eq!(known, all);
    wait_for_progress(history.clone(), 100).await;

    // The leader is removed: it hands over and its process stops by itself.
    let old = leader(&cluster).await;
    member_command(&["remove", &cluster.peers[old].0], &cluster.addrs());
    wait_for_exit(&mut cluster, old).await;
    wait_for_progress(history.clone(), 100).await;

    // A follower is removed: the leader tells it, and its process stops too.
    let now = leader(&cluster).await;
    let follower = (0..3).find(|&i| i != old && i != now).expect("a founder follows");
    member_command(&["remove", &cluster.peers[follower].0], &cluster.addrs());
    wait_for_exit(&mut cluster, follower).await;
    wait_for_members(&everyone, "two voters remain", |members| members.len() == 2).await;
    wait_for_progress(history.clone(), 100).await;

    *stop.lock().unwrap() = true;
    for client in clients {
        client.await.unwrap();
    }
    let ops = history.lock().unwrap().clone();
    assert_eq!(check(&KvModel, &ops), CheckResult::Linearizable, "{} operations", ops.len());
    let remaining = RegistryClient::connect([cluster.peers[3].1.clone()]);
    assert_eq!(remaining.get("joined").await.unwrap().unwrap().value, b"yes", "nothing acknowledged was lost");
    synced.put("synced", "still reaches the cluster").await.expect("the synced client moved past removed members");
}

/// One critical section as the holders logged it: `start TOKEN PID` ... `end TOKEN`.
fn check_mutual_exclusion(log: &str, killed: &[u64]) -> usize {
    let (mut open, mut last, mut completed) = (None::<u64>, 0, 0);
    for line in log.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let token: u64 = words[1].parse().unwrap();
        match words[0] {
            "start" => {
                if let Some(holder) = open {
                    assert!(killed.contains(&holder), "token {token} entered while {holder} held it:\n{log}");
                }
                assert!(token > last, "token {token} came after {last}: fencing tokens must rise\n{log}");
                (open, last) = (Some(token), token);
            }
            _ => {
                assert_eq!(open, Some(token), "an end without its start:\n{log}");
                (open, completed) = (None, completed + 1);
            }
        }
    }
    completed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_excludes_under_kill_9_of_its_holder_and_of_the_registry_leader() {
    excludes_under_kill_9(&["lock", "jobs"], "RPC_LOCK_TOKEN").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_has_one_leader_at_a_time_under_kill_9_of_its_leader_and_of_the_registry_leader() {
    excludes_under_kill_9(&["elect", "scheduler", "--value", "worker"], "RPC_LEADER_TOKEN").await;
}

/// Three processes loop on `rpc ARGS -- CMD` (a lock or a campaign), each CMD logging its
/// critical section with the fencing token from `$TOKEN`. A holder is killed with kill -9 inside
/// its section, then the registry's leader: the log must show no overlap, rising tokens, and
/// progress throughout.
async fn excludes_under_kill_9(args: &[&str], token: &str) {
    use std::os::unix::process::CommandExt;
    let mut cluster = Cluster::start();
    let first = leader(&cluster).await;
    let log = cluster.dir.join("critical.log");
    let endpoints = cluster.addrs().join(",");
    // The PID lets the test kill a holder's whole process group (`rpc` and its command)
    // mid-section.
    let script =
        format!("echo start ${token} $PPID >> {log}; sleep 0.05; echo end ${token} >> {log}", log = log.display());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let stop = Arc::new(Mutex::new(false));
    let holders: Vec<_> = (0..3)
        .map(|_| {
            let (script, endpoints, stop, args) = (script.clone(), endpoints.clone(), stop.clone(), args.clone());
            std::thread::spawn(move || {
                while !*stop.lock().unwrap() {
                    let status = Command::new(env!("CARGO_BIN_EXE_rpc"))
                        .args(&args)
                        .args(["--ttl", "1", "--endpoints", &endpoints, "--", "sh", "-c", &script])
                        .stderr(Stdio::null())
                        .process_group(0)
                        .status()
                        .unwrap();
                    let _ = status;
                }
            })
        })
        .collect();
    let read = |log: &PathBuf| std::fs::read_to_string(log).unwrap_or_default();
    let sections = |text: &str| text.lines().filter(|l| l.starts_with("end")).count();
    let wait_for_sections = |more: usize| {
        let log = log.clone();
        let target = sections(&read(&log)) + more;
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while sections(&read(&log)) < target {
                assert!(Instant::now() < deadline, "no holder made progress for 60 s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for_sections(10).await;

    // Kill a holder inside its critical section: the next one may enter only after its lease
    // expires, never while it runs.
    let mut killed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = read(&log);
        let last = text.lines().last().unwrap_or_default().to_owned();
        if let ["start", token, pid] = last.split_whitespace().collect::<Vec<_>>()[..] {
            // `--`: procps-ng's kill would read a bare negative number as an option.
            let _ = Command::new("kill").args(["-9", "--", &format!("-{pid}")]).status();
            killed.push(token.parse::<u64>().unwrap());
            break;
        }
        assert!(Instant::now() < deadline, "never caught a holder inside its section");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_for_sections(5).await;

    // Kill the registry's leader: holders keep their leases through the election.
    cluster.kill(first);
    wait_for_sections(10).await;
    cluster.spawn(first);
    wait_for_sections(5).await;

    *stop.lock().unwrap() = true;
    for holder in holders {
        holder.join().unwrap();
    }
    let completed = check_mutual_exclusion(&read(&log), &killed);
    assert!(completed >= 30, "{completed} critical sections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_storm_through_a_leader_kill_lists_every_instance() {
    let mut cluster = Cluster::start();
    let first = leader(&cluster).await;
    let client = client_for(&cluster);
    let register = |i: u32| {
        let client = client.clone();
        tokio::spawn(async move {
            let instance = rpc_registry::Instance::new("storm", format!("10.0.0.{i}:7001"));
            client.register(instance).await
        })
    };
    // Half of the storm is under way when the leader dies; the other half starts during the
    // election that follows.
    let mut storm: Vec<_> = (0..20).map(register).collect();
    cluster.kill(first);
    storm.extend((20..40).map(register));
    let mut registrations = Vec::new();
    for registration in storm {
        registrations.push(registration.await.unwrap().expect("every registration succeeds despite the election"));
    }
    cluster.spawn(first);
    let listed = client.instances(Some("storm")).await.unwrap();
    assert_eq!(listed.len(), 40, "every instance is listed: {listed:?}");

    // Deregistering them all empties the service.
    for registration in registrations {
        registration.deregister().await;
    }
    assert!(client.instances(Some("storm")).await.unwrap().is_empty());
}
