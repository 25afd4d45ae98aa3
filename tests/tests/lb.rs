//! Load balancing and fault tolerance over real sockets: several instances behind one
//! `LbChannel`, with instances killed, slowed, failing, added and removed during the run.

mod lb_support;

use lb_support::*;
use rpc_core::{layer::RateLimitLayer, Code, Status};
use rpc_lb::{BreakerConfig, BreakerState, DynamicList, LbChannel, OutlierConfig, RoundRobin, StaticList};
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

/// Runs `workers` tasks calling `work(millis)` until `stop` is set; returns (ok, failed) counts.
fn spawn_load(
    client: NodeClient<LbChannel>,
    workers: usize,
    millis: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<Status>)> {
    tokio::spawn(async move {
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                let (client, stop) = (client.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut ok, mut failed) = (0, Vec::new());
                    while !stop.load(Ordering::SeqCst) {
                        match client.work(millis).await {
                            Ok(_) => ok += 1,
                            Err(status) => failed.push(status),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        let (mut ok, mut failed) = (0, Vec::new());
        for task in tasks {
            let (o, f) = task.await.unwrap();
            ok += o;
            failed.extend(f);
        }
        (ok, failed)
    })
}

#[tokio::test]
async fn killing_one_of_three_costs_at_most_the_calls_in_flight_on_it() {
    let (mut servers, ctls, addrs) = start_nodes(3).await;
    let channel = LbChannel::builder(StaticList::new(addrs.clone())).connect().await.unwrap();
    let client = NodeClient::new(channel.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let workers = 8;
    let load = spawn_load(client.clone(), workers, 1, stop.clone());
    eventually("instance 0 serving", || ctls[0].served() > 20).await;
    drop(servers.remove(0));
    let survivors = || ctls[1].served() + ctls[2].served();
    let before = survivors();
    eventually("300 more calls on the survivors", || survivors() > before + 300).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = load.await.unwrap();
    assert!(ok > 300);
    assert!(failed.len() <= workers, "at most the calls in flight on the killed instance fail: {failed:?}");
    let status = channel.endpoints();
    let dead = status.iter().find(|s| s.endpoint.addr == addrs[0]).unwrap();
    assert!(dead.ejected, "the dead instance is ejected after consecutive failures: {status:?}");
    for i in 0..10 {
        assert!(matches!(client.id().await, Ok(1 | 2)), "call {i} after the kill");
    }
}

#[tokio::test]
async fn least_load_shifts_traffic_away_from_a_slow_instance() {
    let (_servers, ctls, addrs) = start_nodes(3).await;
    ctls[2].slow_ms.store(20, Ordering::SeqCst);
    let channel = LbChannel::builder(StaticList::new(addrs)).connect().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(NodeClient::new(channel), 8, 0, stop.clone());
    eventually("600 calls", || ctls.iter().map(|c| c.served()).sum::<u64>() > 600).await;
    stop.store(true, Ordering::SeqCst);
    let (_, failed) = load.await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    let served: Vec<_> = ctls.iter().map(|c| c.served()).collect();
    // Round robin would give the slow instance a third; P2C over peak-EWMA gives it a trickle.
    assert!(served[2] * 5 < served[0].min(served[1]), "slow instance still got {served:?}");
}

#[tokio::test]
async fn round_robin_for_contrast_keeps_sending_to_the_slow_instance() {
    let (_servers, ctls, addrs) = start_nodes(3).await;
    ctls[2].slow_ms.store(5, Ordering::SeqCst);
    let channel = LbChannel::builder(StaticList::new(addrs)).balancer(RoundRobin::new()).connect().await.unwrap();
    let client = NodeClient::new(channel);
    for _ in 0..30 {
        client.id().await.unwrap();
    }
    assert_eq!(ctls.iter().map(|c| c.served()).collect::<Vec<_>>(), [10, 10, 10]);
}

#[tokio::test]
async fn breaker_opens_on_an_instance_failing_half_its_calls_and_closes_after_recovery() {
    let (_servers, ctls, addrs) = start_nodes(3).await;
    ctls[1].fail_half.store(true, Ordering::SeqCst);
    // Long enough that the 20 calls below finish while the circuit is still open.
    let open_for = Duration::from_secs(1);
    let channel = LbChannel::builder(StaticList::new(addrs.clone()))
        .balancer(RoundRobin::new())
        .breaker(BreakerConfig {
            window: Duration::from_secs(2),
            min_calls: 10,
            failure_ratio: 0.4,
            open_for,
            probes: 2,
            ..BreakerConfig::default()
        })
        .without_outlier()
        .connect()
        .await
        .unwrap();
    let client = NodeClient::new(channel.clone());
    let breaker_of_1 = |channel: &LbChannel| {
        channel.endpoints().into_iter().find(|s| s.endpoint.addr == addrs[1]).and_then(|s| s.breaker)
    };
    let mut failures = 0;
    for _ in 0..200 {
        if client.id().await.is_err() {
            failures += 1;
        }
        if breaker_of_1(&channel) == Some(BreakerState::Open) {
            break;
        }
    }
    assert_eq!(breaker_of_1(&channel), Some(BreakerState::Open), "the breaker opened");
    assert!((5..=20).contains(&failures), "about half of instance 1's calls failed before it opened: {failures}");

    let seen = ctls[1].seen.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert!(matches!(client.id().await, Ok(0 | 2)), "routed around the open circuit");
    }
    assert_eq!(ctls[1].seen.load(Ordering::SeqCst), seen, "no call reached the open instance");

    ctls[1].fail_half.store(false, Ordering::SeqCst);
    tokio::time::sleep(open_for).await;
    for _ in 0..200 {
        client.id().await.unwrap();
        if breaker_of_1(&channel) == Some(BreakerState::Closed) {
            break;
        }
    }
    assert_eq!(breaker_of_1(&channel), Some(BreakerState::Closed), "probes passed and the circuit closed");
    let served = ctls[1].served();
    for _ in 0..30 {
        client.id().await.unwrap();
    }
    assert!(ctls[1].served() >= served + 9, "instance 1 takes its share again");
}

#[tokio::test]
async fn overloading_a_rate_limited_server_refuses_the_excess_without_doing_its_work() {
    let (server, ctl) = start_node_with(0, RateLimitLayer::per_second(50).burst(10)).await;
    let channel = LbChannel::builder(StaticList::new([server.local_addr().to_string()]))
        .without_breaker()
        .without_outlier()
        .connect()
        .await
        .unwrap();
    let client = NodeClient::new(channel);
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                (client.work(0).await, started.elapsed())
            })
        })
        .collect();
    let (mut admitted, mut refused) = (0u64, 0u64);
    for call in calls {
        match call.await.unwrap() {
            (Ok(_), latency) => {
                admitted += 1;
                assert!(latency < Duration::from_secs(2), "an admitted call waited {latency:?}");
            }
            (Err(status), _) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
                refused += 1;
            }
        }
    }
    assert!(admitted >= 10 && refused >= 100, "admitted {admitted}, refused {refused}");
    assert_eq!(ctl.served(), admitted, "refused calls never ran the handler");
}

#[tokio::test]
async fn instances_added_and_drained_during_a_load_run_fail_no_call() {
    let (mut servers, ctls, addrs) = start_nodes(2).await;
    let (list, handle) = DynamicList::new(addrs.clone());
    let channel = LbChannel::builder(list).connect().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(NodeClient::new(channel.clone()), 8, 2, stop.clone());
    eventually("both serving", || ctls.iter().all(|c| c.served() > 10)).await;

    let (new_server, new_ctl) = start_node(7).await;
    handle.insert(new_server.local_addr().to_string());
    eventually("the new instance serving", || new_ctl.served() > 10).await;

    handle.remove(&addrs[0]);
    eventually("instance 0 leaving the channel", || channel.endpoints().iter().all(|s| s.endpoint.addr != addrs[0]))
        .await;
    // Graceful shutdown lets the calls still running there finish.
    servers.remove(0).shutdown(Duration::from_secs(2)).await.unwrap();
    let drained = ctls[0].served();
    let others = AtomicU64::new(new_ctl.served());
    eventually("more calls after the drain", || new_ctl.served() > others.load(Ordering::SeqCst) + 50).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = load.await.unwrap();
    assert!(failed.is_empty(), "no call failed: {failed:?}");
    assert!(ok > 100);
    assert_eq!(ctls[0].served(), drained, "nothing went to the removed instance after its drain");
    drop(new_server);
}

#[tokio::test]
async fn calls_keep_flowing_from_the_last_known_endpoints_when_discovery_goes_away() {
    let (_servers, ctls, addrs) = start_nodes(2).await;
    let (list, handle) = DynamicList::new(addrs);
    let channel = LbChannel::builder(list).connect().await.unwrap();
    drop(handle);
    let client = NodeClient::new(channel);
    for _ in 0..20 {
        client.id().await.unwrap();
    }
    assert!(ctls.iter().all(|c| c.served() > 0));
}

#[tokio::test]
async fn outlier_ejection_never_ejects_more_than_allowed() {
    let (_servers, ctls, addrs) = start_nodes(3).await;
    for ctl in &ctls {
        ctl.fail_next.store(1000, Ordering::SeqCst);
    }
    let channel = LbChannel::builder(StaticList::new(addrs))
        .without_breaker()
        .outlier(OutlierConfig { consecutive_failures: 3, ..OutlierConfig::default() })
        .connect()
        .await
        .unwrap();
    let client = NodeClient::new(channel.clone());
    for _ in 0..60 {
        assert_eq!(client.id().await.unwrap_err().code(), Code::Unavailable);
    }
    let ejected = channel.endpoints().iter().filter(|s| s.ejected).count();
    assert_eq!(ejected, 1, "with every instance failing only one (the floor of the 10% cap) is ejected");
}

#[tokio::test]
async fn lookaside_balancer_places_calls_and_a_second_replica_covers_for_a_dead_one() {
    use rpc_lb::{
        lookaside::{LookasideBalancer, LookasideChannel, LookasideClient, LookasideServer},
        Endpoint, HASH_KEY,
    };
    let (_servers, ctls, addrs) = start_nodes(3).await;
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let balancer = LookasideBalancer::new();
        balancer.set("Node", addrs.iter().map(Endpoint::new).collect());
        let server =
            rpc_core::Server::builder().add_service(LookasideServer::new(balancer)).start("127.0.0.1:0").await.unwrap();
        replicas.push(server);
    }
    let replica_addrs: Vec<_> = replicas.iter().map(|s| s.local_addr().to_string()).collect();
    let to_replicas = LbChannel::builder(StaticList::new(replica_addrs)).connect().await.unwrap();
    let placed = LookasideChannel::new(LookasideClient::new(to_replicas));
    let client = NodeClient::new(placed.clone());

    for _ in 0..60 {
        client.id().await.unwrap();
    }
    assert!(ctls.iter().all(|c| c.served() > 5), "calls without a key spread out");
    let mut owners = Vec::new();
    for _ in 0..10 {
        owners.push(client.id().metadata(HASH_KEY, "user-42").await.unwrap());
    }
    assert!(owners.windows(2).all(|w| w[0] == w[1]), "one key, one instance: {owners:?}");

    drop(replicas.remove(0));
    for i in 0..20 {
        let owner = client.id().metadata(HASH_KEY, "user-42").await;
        assert_eq!(owner.ok(), Some(owners[0]), "call {i}: the surviving replica agrees on the key's instance");
    }
    let unknown = rpc_core::Request::new("Missing", "m", ());
    let status = tower::ServiceExt::oneshot(placed, unknown).await;
    assert_eq!(status.unwrap_err().code(), Code::Unavailable);
}

#[tokio::test]
async fn active_health_checks_take_an_instance_out_and_back_in() {
    use rpc_lb::HealthCheck;
    let (_servers, ctls, addrs) = start_nodes(3).await;
    let check = HealthCheck::ping(Duration::from_millis(20))
        .thresholds(2, 1)
        .with_probe(|channel| async move { NodeClient::new(channel).id().await.map(drop) });
    let channel = LbChannel::builder(StaticList::new(addrs.clone()))
        .balancer(RoundRobin::new())
        .health_check(check)
        .connect()
        .await
        .unwrap();
    let health_of_1 =
        |channel: &LbChannel| channel.endpoints().iter().any(|s| s.endpoint.addr == addrs[1] && s.healthy);

    ctls[1].fail_next.store(u64::MAX, Ordering::SeqCst);
    eventually("instance 1 marked down", || !health_of_1(&channel)).await;
    let client = NodeClient::new(channel.clone());
    let served = ctls[1].served();
    for _ in 0..30 {
        assert!(matches!(client.work(0).await, Ok(0 | 2)));
    }
    assert_eq!(ctls[1].served(), served, "no call went to the instance marked down");

    ctls[1].fail_next.store(0, Ordering::SeqCst);
    eventually("instance 1 marked up", || health_of_1(&channel)).await;
    for _ in 0..30 {
        client.work(0).await.unwrap();
    }
    assert!(ctls[1].served() >= served + 9, "instance 1 takes its share again");
}

#[tokio::test]
async fn dns_discovery_feeds_the_channel() {
    let (_servers, ctls, addrs) = start_nodes(1).await;
    // A name, not an address: `localhost` may also resolve to ::1, where nothing listens, and
    // the channel then fails over to the address that answers.
    let port = addrs[0].rsplit(':').next().unwrap();
    let channel = LbChannel::builder(rpc_lb::Dns::new(format!("localhost:{port}"))).connect().await.unwrap();
    let client = NodeClient::new(channel);
    for _ in 0..5 {
        assert_eq!(client.id().await.unwrap(), 0);
    }
    assert_eq!(ctls[0].served(), 5);
}

#[tokio::test]
async fn consistent_hashing_sends_a_key_to_one_instance_and_spreads_keys() {
    use rpc_lb::{ConsistentHash, HASH_KEY};
    let (_servers, ctls, addrs) = start_nodes(3).await;
    let channel = LbChannel::builder(StaticList::new(addrs)).balancer(ConsistentHash::new()).connect().await.unwrap();
    let client = NodeClient::new(channel);
    let mut owners = std::collections::BTreeSet::new();
    for user in 0..30 {
        let key = format!("user-{user}");
        let first = client.id().metadata(HASH_KEY, key.clone()).await.unwrap();
        for _ in 0..3 {
            assert_eq!(client.id().metadata(HASH_KEY, key.clone()).await.unwrap(), first, "{key} moved");
        }
        owners.insert(first);
    }
    assert_eq!(owners.len(), 3, "30 keys land on every instance");
    assert_eq!(ctls.iter().map(|c| c.served()).sum::<u64>(), 120);
}

/// A health check that fails for the instances whose id is in `sick`, though they serve calls.
fn probe_fails_for(sick: Arc<std::sync::Mutex<Vec<u32>>>) -> rpc_lb::HealthCheck {
    rpc_lb::HealthCheck::ping(Duration::from_millis(20)).thresholds(1, 1).with_probe(move |channel| {
        let sick = sick.clone();
        async move {
            let id = NodeClient::new(channel).id().await?;
            match sick.lock().unwrap().contains(&id) {
                true => Err(Status::unavailable("failing its health check")),
                false => Ok(()),
            }
        }
    })
}

#[tokio::test]
async fn calls_stay_in_the_callers_zone_while_enough_of_it_is_healthy() {
    use rpc_lb::Endpoint;
    let (_servers, _, addrs) = start_nodes(3).await;
    let zones = ["a", "a", "b"];
    let endpoints: Vec<Endpoint> = addrs.iter().zip(zones).map(|(a, z)| Endpoint::new(a).zone(z)).collect();
    let sick = Arc::new(std::sync::Mutex::new(Vec::new()));
    let channel = LbChannel::builder(StaticList::new(endpoints))
        .prefer_zone("a")
        .health_check(probe_fails_for(sick.clone()))
        .connect()
        .await
        .unwrap();
    let client = NodeClient::new(channel.clone());
    let answered = |client: NodeClient<LbChannel>| async move {
        let mut ids = Vec::new();
        for _ in 0..50 {
            ids.push(client.id().await.unwrap());
        }
        ids
    };
    assert!(answered(client.clone()).await.iter().all(|&id| id != 2), "every call stays in zone a");
    // Half of zone a is still enough to keep its calls home.
    sick.lock().unwrap().push(0);
    eventually("one of zone a marked down", || channel.endpoints().iter().filter(|s| !s.healthy).count() == 1).await;
    assert!(answered(client.clone()).await.iter().all(|&id| id == 1), "half of zone a keeps the calls");
    sick.lock().unwrap().push(1);
    eventually("all of zone a marked down", || channel.endpoints().iter().filter(|s| !s.healthy).count() == 2).await;
    assert!(answered(client).await.iter().all(|&id| id == 2), "with zone a down, calls cross to zone b");
}

#[tokio::test]
async fn below_the_protect_threshold_calls_spread_over_every_instance() {
    let (_servers, _, addrs) = start_nodes(4).await;
    let sick = Arc::new(std::sync::Mutex::new(Vec::new()));
    let channel = LbChannel::builder(StaticList::new(addrs))
        .balancer(RoundRobin::new())
        .protect_threshold(0.5)
        .health_check(probe_fails_for(sick.clone()))
        .connect()
        .await
        .unwrap();
    let client = NodeClient::new(channel.clone());
    // One of four down leaves three: above the threshold, the down one gets nothing.
    sick.lock().unwrap().push(0);
    eventually("one instance marked down", || channel.endpoints().iter().filter(|s| !s.healthy).count() == 1).await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(client.id().await.unwrap());
    }
    assert!(!ids.contains(&0), "above the threshold a down instance is left out: {ids:?}");
    // Three of four down: believing the checks would put all the load on one instance.
    sick.lock().unwrap().extend([1, 2]);
    eventually("three instances marked down", || channel.endpoints().iter().filter(|s| !s.healthy).count() == 3).await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(client.id().await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids, [0, 1, 2, 3], "every instance takes calls again");
}
