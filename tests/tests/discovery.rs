//! Discovery, locks and elections on a registry over real sockets: instances registered by
//! servers and followed by balanced channels, a registry that goes away and comes back, and
//! contenders for a lock and a leadership.

mod lb_support;

use futures_util::StreamExt;
use lb_support::*;
use rpc_core::Status;
use rpc_lb::LbChannel;
use rpc_registry::{Instance, MemberConfig, RegistryClient, RunningMember};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use tests::TempDir;

async fn registry_on(dir: &TempDir, listen: &str) -> RunningMember {
    let mut config = MemberConfig::new("solo", dir.0.join("solo"), listen);
    config.fsync = false;
    RunningMember::start(config).await.unwrap()
}

/// A registry a test runs on: one member of ours in this process, or one etcd process. Tests
/// written with [`on_both!`] run on each, since `RegistryClient` speaks to both.
struct Backend {
    dir: TempDir,
    listen: String,
    etcd_peer: String,
    running: Option<Running>,
}

enum Running {
    Ours(RunningMember),
    Etcd(tokio::process::Child),
}

fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

impl Backend {
    async fn ours(tag: &str) -> Backend {
        let mut backend =
            Backend { dir: TempDir::new(tag), listen: free_port(), etcd_peer: String::new(), running: None };
        backend.start().await;
        backend
    }

    /// One etcd member, if etcd is installed; without it, fail under CI and skip elsewhere.
    async fn etcd(tag: &str) -> Option<Backend> {
        if !std::process::Command::new("etcd").arg("--version").output().is_ok_and(|o| o.status.success()) {
            let message = "etcd is not installed (Debian: apt install etcd-server)";
            assert!(std::env::var_os("CI").is_none(), "{message}");
            println!("SKIPPED: {message}");
            return None;
        }
        let mut backend =
            Backend { dir: TempDir::new(tag), listen: free_port(), etcd_peer: free_port(), running: None };
        backend.start().await;
        Some(backend)
    }

    fn client(&self) -> RegistryClient {
        match self.etcd_peer.is_empty() {
            true => RegistryClient::connect([self.listen.clone()]),
            false => RegistryClient::etcd([self.listen.clone()]),
        }
    }

    /// Starts the registry on its address and data, again after `stop`; returns once it serves.
    async fn start(&mut self) {
        if self.etcd_peer.is_empty() {
            self.running = Some(Running::Ours(registry_on(&self.dir, &self.listen).await));
            return;
        }
        let (client, peer) = (format!("http://{}", self.listen), format!("http://{}", self.etcd_peer));
        let child = tokio::process::Command::new("etcd")
            .args(["--name", "solo", "--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("solo={peer}"), "--log-level", "error", "--logger", "zap"])
            .arg("--data-dir")
            .arg(self.dir.0.join("etcd"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("etcd starts");
        self.running = Some(Running::Etcd(child));
        let client = self.client();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while client.status().await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "etcd did not serve within 30 s");
        }
    }

    /// Stops the registry: ours shuts down, etcd is killed.
    async fn stop(&mut self) {
        match self.running.take() {
            Some(Running::Ours(member)) => member.shutdown(Duration::from_secs(1)).await.unwrap(),
            Some(Running::Etcd(mut child)) => {
                child.kill().await.unwrap();
            }
            None => {}
        }
    }
}

/// Runs the test `$name(backend)` on our registry and on etcd, as `$name::on_our_registry` and
/// `$name::on_etcd`.
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_our_registry() {
                super::$name(Backend::ours(stringify!($name)).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_etcd() {
                if let Some(backend) = Backend::etcd(stringify!($name)).await {
                    super::$name(backend).await;
                }
            }
        }
    };
}

fn addrs(channel: &LbChannel) -> Vec<String> {
    let mut addrs: Vec<String> = channel.endpoints().into_iter().map(|s| s.endpoint.addr.clone()).collect();
    addrs.sort();
    addrs
}

/// Calls `work` until `stop`; returns the failures.
fn load(client: NodeClient<LbChannel>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, Vec<Status>)> {
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, Vec::new());
        while !stop.load(Ordering::SeqCst) {
            match client.work(0).await {
                Ok(_) => ok += 1,
                Err(status) => failed.push(status),
            }
        }
        (ok, failed)
    })
}

on_both!(registered_instances_are_discovered_and_a_graceful_leave_fails_no_call);
async fn registered_instances_are_discovered_and_a_graceful_leave_fails_no_call(backend: Backend) {
    let client = backend.client();
    let (servers, ctls, server_addrs) = start_nodes(2).await;
    let mut registrations = Vec::new();
    for (i, addr) in server_addrs.iter().enumerate() {
        let instance = Instance::new("node", addr).weight(10).zone("a").version("1.4.2").tag("canary");
        registrations.push(client.register(instance.metadata("index", i.to_string())).await.unwrap());
    }
    let listed = client.instances(Some("node")).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        (listed[0].weight, listed[0].zone.as_str(), listed[0].tags.clone()),
        (10, "a", vec!["canary".to_owned()])
    );

    let channel = LbChannel::builder(client.discover("node")).connect().await.unwrap();
    let mut expected = server_addrs.clone();
    expected.sort();
    assert_eq!(addrs(&channel), expected, "the channel starts with both registered instances");
    let endpoint = &channel.endpoints()[0].endpoint;
    assert_eq!((endpoint.weight, endpoint.zone.as_deref()), (10, Some("a")));
    assert_eq!(endpoint.metadata.get("version").map(String::as_str), Some("1.4.2"));

    let stop = Arc::new(AtomicBool::new(false));
    let calls = load(NodeClient::new(channel.clone()), stop.clone());
    eventually("both instances serve", || ctls.iter().all(|c| c.served() > 20)).await;

    // The first instance leaves gracefully: deregistered before its server drains.
    let mut servers = servers.into_iter();
    let leaving = servers.next().unwrap();
    registrations.remove(0).deregister().await;
    leaving.shutdown(Duration::from_secs(5)).await.unwrap();
    eventually("the channel drops the instance that left", || addrs(&channel) == [server_addrs[1].clone()]).await;
    let before = ctls[1].served();
    eventually("the other instance takes the calls", || ctls[1].served() > before + 100).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = calls.await.unwrap();
    assert!(ok > 100);
    assert!(failed.is_empty(), "a graceful leave failed calls: {failed:?}");

    // A third instance joins and is picked up live.
    let (joining, joining_ctl) = start_node(2).await;
    let joined = client.register(Instance::new("node", joining.local_addr())).await.unwrap();
    eventually("the channel adds the new instance", || addrs(&channel).len() == 2).await;
    let node = NodeClient::new(channel.clone());
    for _ in 0..50 {
        node.work(0).await.unwrap();
    }
    assert!(joining_ctl.served() > 0, "the new instance takes calls");
    joined.deregister().await;
    assert_eq!(client.instances(Some("node")).await.unwrap().len(), 1, "deregistering deletes the key");
}

on_both!(an_instance_the_registry_loses_is_registered_again);
async fn an_instance_the_registry_loses_is_registered_again(backend: Backend) {
    let client = backend.client();
    let registration = client.register(Instance::new("orders", "10.0.0.1:7001")).await.unwrap();
    let key = registration.instance().key();
    let first = client.get(&key).await.unwrap().expect("registered");
    // The registry loses it: its lease is revoked from elsewhere, deleting the key.
    let mut watch = client.watch(rpc_registry::api::WatchCreate {
        key: key.clone().into_bytes(),
        start_revision: first.mod_revision + 1,
        ..Default::default()
    });
    client.lease_revoke(first.lease).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let response =
            tokio::time::timeout(Duration::from_secs(10), watch.next()).await.expect("re-registered in time");
        kinds.extend(response.unwrap().unwrap().events.into_iter().map(|e| (e.kind, e.kv.lease)));
    }
    assert_eq!(kinds[0].0, rpc_registry::api::EventKind::Delete);
    assert_eq!(kinds[1].0, rpc_registry::api::EventKind::Put, "the instance came back");
    assert_ne!(kinds[1].1, first.lease, "under a new lease");
    drop(registration);
}

on_both!(discovery_keeps_its_instances_while_the_registry_is_down_and_follows_it_back);
async fn discovery_keeps_its_instances_while_the_registry_is_down_and_follows_it_back(mut backend: Backend) {
    let client = backend.client();
    let (_servers, _ctls, server_addrs) = start_nodes(2).await;
    let first = client.register_with_ttl(Instance::new("node", &server_addrs[0]), 30).await.unwrap();
    let channel = LbChannel::builder(client.discover("node")).connect().await.unwrap();
    assert_eq!(addrs(&channel), [server_addrs[0].clone()]);

    backend.stop().await;
    let node = NodeClient::new(channel.clone());
    for _ in 0..20 {
        node.work(0).await.expect("calls go on with the last known instances while the registry is down");
    }
    assert_eq!(addrs(&channel), [server_addrs[0].clone()]);

    backend.start().await;
    let second = client.register(Instance::new("node", &server_addrs[1])).await.unwrap();
    let mut both = server_addrs.clone();
    both.sort();
    eventually("the channel follows the registry once it is back", || addrs(&channel) == both).await;
    drop((first, second));
}

on_both!(a_lock_goes_to_one_holder_at_a_time_first_come_first_served_with_rising_tokens);
async fn a_lock_goes_to_one_holder_at_a_time_first_come_first_served_with_rising_tokens(backend: Backend) {
    let client = backend.client();
    let first = client.lock("jobs/compaction").await.unwrap();
    // A waiter that gives up does not hold up those behind it.
    assert!(tokio::time::timeout(Duration::from_millis(300), client.lock("jobs/compaction")).await.is_err());
    let queued = |n: u64| {
        let client = client.clone();
        async move {
            let prefix = b"locks/jobs/compaction/".to_vec();
            let range = rpc_registry::api::RangeRequest {
                range_end: rpc_registry::api::prefix_end(&prefix),
                key: prefix,
                count_only: true,
                ..Default::default()
            };
            let queue = || client.range(range.clone());
            for _ in 0..1000 {
                if queue().await.unwrap().count == n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the lock's queue never held {n} contenders");
        }
    };
    // The waiter that gave up leaves the queue.
    queued(1).await;
    let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
    let mut waiters = Vec::new();
    for (n, name) in [(2, "second"), (3, "third")] {
        let (client, tx) = (client.clone(), tx.clone());
        waiters.push(tokio::spawn(async move {
            let guard = client.lock("jobs/compaction").await.unwrap();
            tx.send((name, guard.token())).unwrap();
            // Hold it until told: the third must not get it meanwhile.
            guard
        }));
        // Join the queue in this order.
        queued(n).await;
    }
    assert!(order.try_recv().is_err(), "nobody else holds the lock while the first does");
    let first_token = first.token();
    first.unlock().await.unwrap();
    let (name, second_token) = order.recv().await.unwrap();
    assert_eq!(name, "second", "waiters are served in the order they came");
    assert!(second_token > first_token, "fencing tokens rise");
    assert!(order.try_recv().is_err(), "the third waits while the second holds it");
    let second = waiters.remove(0).await.unwrap();
    drop(second);
    let (name, third_token) = order.recv().await.unwrap();
    assert_eq!(name, "third", "dropping a guard releases the lock");
    assert!(third_token > second_token);
    drop(waiters);
}

on_both!(an_election_has_one_leader_observed_by_all_and_the_next_takes_over_on_resign);
async fn an_election_has_one_leader_observed_by_all_and_the_next_takes_over_on_resign(backend: Backend) {
    let client = backend.client();
    let election = client.election("scheduler");
    let mut observed = Box::pin(election.observe());
    assert_eq!(observed.next().await.unwrap().unwrap(), None, "nobody leads at first");
    let a = election.campaign("a:7001").await.unwrap();
    assert_eq!(observed.next().await.unwrap().unwrap().as_deref(), Some(&b"a:7001"[..]));
    let b = tokio::spawn({
        let election = election.clone();
        async move { election.campaign("b:7001").await.unwrap() }
    });
    a.proclaim("a:7002").await.unwrap();
    assert_eq!(observed.next().await.unwrap().unwrap().as_deref(), Some(&b"a:7002"[..]), "a proclaimed value is seen");
    assert!(!b.is_finished(), "b waits while a leads");
    let a_token = a.token();
    a.resign().await.unwrap();
    let b = tokio::time::timeout(Duration::from_secs(10), b).await.expect("b takes over").unwrap();
    assert!(b.token() > a_token);
    assert_eq!(observed.next().await.unwrap().unwrap().as_deref(), Some(&b"b:7001"[..]));
    assert!(!b.is_lost());
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Limits {
    max_in_flight: u32,
    burst: u32,
}

on_both!(a_config_follows_changes_keeps_the_last_good_value_and_rolls_back);
async fn a_config_follows_changes_keeps_the_last_good_value_and_rolls_back(backend: Backend) {
    let client = backend.client();
    let missing = client.config::<Limits>("orders/limits").await.unwrap_err();
    assert!(missing.to_string().contains("rpc config set"), "{missing}");

    let first = client.set_config("orders/limits", &Limits { max_in_flight: 100, burst: 10 }).await.unwrap();
    let mut limits = client.config::<Limits>("orders/limits").await.unwrap();
    assert_eq!(*limits.get(), Limits { max_in_flight: 100, burst: 10 });
    assert_eq!(limits.revision(), first);

    let second = client.set_config("orders/limits", &Limits { max_in_flight: 200, burst: 20 }).await.unwrap();
    assert_eq!(*limits.changed().await, Limits { max_in_flight: 200, burst: 20 }, "a change reaches the process");
    assert_eq!(limits.revision(), second);

    let bad = client.put("config/orders/limits", r#"{"max_in_flight": "lots"}"#).await.unwrap().header.revision;
    assert_eq!(*limits.changed().await, Limits { max_in_flight: 200, burst: 20 }, "a bad value is not taken");
    let error = limits.error().expect("the refusal is reported");
    assert!(error.contains(&format!("revision {bad}")) && error.contains("not valid"), "{error}");

    let history = client.config_history("orders/limits").await.unwrap();
    let revisions: Vec<u64> = history.iter().map(|r| r.revision).collect();
    assert_eq!(revisions, [first, second, bad]);
    assert_eq!(history[0].json, r#"{"max_in_flight":100,"burst":10}"#);

    let rolled = client.rollback_config("orders/limits", first).await.unwrap();
    assert_eq!(*limits.changed().await, Limits { max_in_flight: 100, burst: 10 }, "rolled back to the first value");
    assert_eq!((limits.revision(), limits.error()), (rolled, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_started_while_the_registry_is_down_calls_once_it_comes_up() {
    let dir = TempDir::new("late");
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let client = RegistryClient::connect([listen.clone()]);
    let registry = registry_on(&dir, &listen).await;
    let (server, ctl) = start_node(0).await;
    let _registration = client.register_with_ttl(Instance::new("node", server.local_addr()), 30).await.unwrap();
    registry.shutdown(Duration::from_secs(1)).await.unwrap();

    let channel = LbChannel::builder(client.discover("node")).discovery_wait(Duration::from_secs(30)).connect_lazy();
    let first_call = tokio::spawn({
        let node = NodeClient::new(channel.clone());
        async move { node.work(0).await }
    });
    // The call waits on discovery, which cannot reach the registry yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!first_call.is_finished(), "the call waits for discovery instead of failing");

    let _registry = registry_on(&dir, &listen).await;
    first_call.await.unwrap().expect("the waiting call goes through once the registry is back");
    assert_eq!(ctl.served(), 1);
}

on_both!(a_lookaside_balancer_places_calls_on_the_instances_the_registry_lists);
async fn a_lookaside_balancer_places_calls_on_the_instances_the_registry_lists(backend: Backend) {
    use rpc_lb::lookaside::{LookasideBalancer, LookasideChannel, LookasideClient, LookasideServer};
    let client = backend.client();
    let (_servers, ctls, server_addrs) = start_nodes(2).await;
    let mut registrations = Vec::new();
    for addr in &server_addrs {
        registrations.push(client.register(Instance::new("Node", addr)).await.unwrap());
    }
    let balancer = LookasideBalancer::new();
    let _following = balancer.follow("Node", client.discover("Node"));
    let lookaside =
        rpc_core::Server::builder().add_service(LookasideServer::new(balancer)).start("127.0.0.1:0").await.unwrap();
    let to_balancer = rpc_core::Channel::connect(lookaside.local_addr().to_string()).await.unwrap();
    let node = NodeClient::new(LookasideChannel::new(LookasideClient::new(to_balancer)));
    let mut placed = 0;
    while ctls.iter().any(|c| c.served() == 0) {
        if node.work(0).await.is_ok() {
            placed += 1;
        }
        assert!(placed < 500, "calls never reached both registered instances");
    }
    registrations.remove(0).deregister().await;
    // Once the balancer has followed the deregistration, every call goes to the other instance.
    let mut streak = 0;
    for _ in 0..2000 {
        let before = ctls[0].served();
        node.work(0).await.unwrap();
        streak = if ctls[0].served() == before { streak + 1 } else { 0 };
        if streak == 50 {
            return;
        }
    }
    panic!("the balancer kept placing calls on the deregistered instance");
}

on_both!(a_server_built_with_an_announcer_registers_on_start_and_deregisters_on_shutdown);
async fn a_server_built_with_an_announcer_registers_on_start_and_deregisters_on_shutdown(backend: Backend) {
    let client = backend.client();
    let ctl = Arc::new(Ctl::default());
    let server = rpc_core::Server::builder()
        .add_service(NodeServer::new(lb_support::Instance(ctl)))
        .announce(client.announce(Instance::new("node", "").zone("a")))
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let listed = client.instances(Some("node")).await.unwrap();
    assert_eq!(listed.len(), 1, "registered by the time start returns");
    assert_eq!((listed[0].addr.clone(), listed[0].zone.as_str()), (server.local_addr().to_string(), "a"));
    server.shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(client.instances(Some("node")).await.unwrap().is_empty(), "deregistered on shutdown");

    let unreachable = rpc_core::Server::builder()
        .add_service(NodeServer::new(lb_support::Instance(Arc::new(Ctl::default()))))
        .announce(client.announce(Instance::new("node", "")))
        .start("0.0.0.0:0")
        .await
        .unwrap_err();
    assert!(unreachable.to_string().contains("clients cannot dial"), "{unreachable}");
}
