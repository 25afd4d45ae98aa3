//! The registry over real sockets: one member, and a three-member cluster in one process.

use futures_util::{stream, StreamExt};
use rpc_core::Channel;
use rpc_registry::{
    api::{prefix_end, EventKind, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreate, WatchRequest},
    ClientError, ErrorCode, MemberConfig, RegistryApiClient, RegistryClient, RunningMember,
};
use std::time::Duration;
use tokio::sync::mpsc;

use tests::TempDir;

async fn one_member(dir: &TempDir) -> RunningMember {
    let mut config = MemberConfig::new("solo", dir.0.join("solo"), "127.0.0.1:0");
    config.fsync = false;
    RunningMember::start(config).await.unwrap()
}

#[tokio::test]
async fn a_put_is_read_back_with_its_revisions_and_survives_a_restart() {
    let dir = TempDir::new("restart");
    let member = one_member(&dir).await;
    let client = RegistryClient::connect([member.local_addr().to_string()]);
    let first = client.put("svc/orders/1", "10.0.0.1:80").await.unwrap();
    let second = client.put("svc/orders/1", "10.0.0.2:80").await.unwrap();
    assert_eq!(second.header.revision, first.header.revision + 1);
    let kv = client.get("svc/orders/1").await.unwrap().expect("the key exists");
    assert_eq!(kv.value, b"10.0.0.2:80");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (first.header.revision, second.header.revision, 2));
    member.shutdown(Duration::from_secs(1)).await.unwrap();

    let member = one_member(&dir).await;
    let client = RegistryClient::connect([member.local_addr().to_string()]);
    let kv = client.get("svc/orders/1").await.unwrap().expect("the key survived the restart");
    assert_eq!(kv.value, b"10.0.0.2:80");
    assert_eq!(client.delete("svc/orders/1").await.unwrap(), 1);
    assert_eq!(client.get("svc/orders/1").await.unwrap(), None);
}

#[tokio::test]
async fn a_watch_replays_history_then_follows_live_changes_in_order() {
    let dir = TempDir::new("watch");
    let member = one_member(&dir).await;
    let client = RegistryClient::connect([member.local_addr().to_string()]);
    let start = client.put("svc/a", "1").await.unwrap().header.revision;
    client.put("svc/b", "2").await.unwrap();
    client.put("other", "x").await.unwrap();

    let api = RegistryApiClient::new(Channel::connect(member.local_addr().to_string()).await.unwrap());
    let (requests, rx) = mpsc::channel(4);
    requests
        .send(WatchRequest::Create(WatchCreate {
            key: b"svc/".to_vec(),
            range_end: prefix_end(b"svc/"),
            start_revision: start,
            prev_kv: true,
            watch_id: 7,
            ..WatchCreate::default()
        }))
        .await
        .unwrap();
    let mut watch = api.watch(rpc_core::stream::from_receiver(rx)).await.unwrap();
    let created = watch.next().await.unwrap().unwrap();
    assert!(created.created && created.watch_id == 7);
    client.delete("svc/a").await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let response = watch.next().await.unwrap().unwrap();
        seen.extend(response.events.into_iter().map(|e| (e.kind, e.kv.key, e.kv.mod_revision, e.prev_kv.is_some())));
    }
    let keys: Vec<(EventKind, &[u8])> = seen.iter().map(|(kind, key, ..)| (*kind, key.as_slice())).collect();
    assert_eq!(keys, [(EventKind::Put, &b"svc/a"[..]), (EventKind::Put, b"svc/b"), (EventKind::Delete, b"svc/a")]);
    assert!(seen.windows(2).all(|w| w[0].2 < w[1].2), "events come in revision order: {seen:?}");
    assert!(seen[2].3, "the delete carries the key as it was");
    drop(requests);
}

#[tokio::test]
async fn keys_of_an_expired_lease_are_deleted_and_keep_alive_holds_them() {
    let dir = TempDir::new("lease");
    let member = one_member(&dir).await;
    let client = RegistryClient::connect([member.local_addr().to_string()]);
    let kept = client.lease_grant(1).await.unwrap();
    let dropped = client.lease_grant(1).await.unwrap();
    for (key, lease) in [("svc/kept", kept), ("svc/dropped", dropped)] {
        let put = PutRequest { key: key.into(), value: b"x".to_vec(), lease, ..PutRequest::default() };
        client.put_with(put).await.unwrap();
    }
    let api = client.current().expect("our registry");
    let ticks = stream::unfold((), move |()| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Some((kept, ()))
    });
    let mut alive = api.lease_keep_alive(ticks).await.unwrap();
    let first = alive.next().await.unwrap().unwrap().unwrap();
    assert_eq!((first.id, first.remaining_ms), (kept, 1000));
    // Wait on the event (the expired key's deletion), polling the store, not on a fixed sleep.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.get("svc/dropped").await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the lease without keep-alives never expired");
        alive.next().await.unwrap().unwrap().unwrap();
    }
    assert!(client.get("svc/kept").await.unwrap().is_some(), "the kept-alive lease's key is still there");
}

#[tokio::test]
async fn renewals_sent_together_are_answered_in_order_and_an_unknown_lease_fails_alone() {
    let dir = TempDir::new("renewals");
    let member = one_member(&dir).await;
    let client = RegistryClient::connect([member.local_addr().to_string()]);
    let (a, b) = (client.lease_grant(30).await.unwrap(), client.lease_grant(60).await.unwrap());
    let ids: Vec<u64> = [a, b, 0xdead, a, b].into_iter().cycle().take(500).collect();
    let mut answers =
        client.current().expect("our registry").lease_keep_alive(stream::iter(ids.clone())).await.unwrap();
    for (i, &id) in ids.iter().enumerate() {
        let answer = answers.next().await.unwrap().unwrap();
        match id {
            0xdead => assert_eq!(answer.unwrap_err().code, ErrorCode::LeaseNotFound, "renewal {i}"),
            _ => {
                let status = answer.unwrap();
                assert_eq!(status.id, id, "renewal {i} answers its own lease");
                assert_eq!(status.granted_ttl, if id == a { 30 } else { 60 }, "renewal {i}");
            }
        }
    }
}

#[tokio::test]
async fn history_older_than_the_retention_period_is_compacted_and_the_present_kept() {
    let dir = TempDir::new("retain-for");
    let mut config = MemberConfig::new("solo", dir.0.join("solo"), "127.0.0.1:0");
    config.fsync = false;
    config.retain_for = Duration::from_millis(500);
    let member = RunningMember::start(config).await.unwrap();
    let client = RegistryClient::connect([member.local_addr().to_string()]);
    let first = client.put("config/limit", "1").await.unwrap().header.revision;
    let before_last = std::time::Instant::now();
    let last = client.put("config/limit", "2").await.unwrap().header.revision;
    let at_first = RangeRequest { key: b"config/limit".to_vec(), revision: first, ..RangeRequest::default() };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let compacted = loop {
        let status = client.status().await.unwrap();
        if status.compact_revision > 0 {
            break status.compact_revision;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing was compacted within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(compacted >= first && compacted <= last, "compacted to a revision of the past: {compacted}");
    // A lower bound, so a slow machine cannot fail it: a revision is kept at least the period.
    if compacted == last {
        assert!(before_last.elapsed() >= Duration::from_millis(500), "compacted before its time");
    }
    if compacted > first {
        let error = client.range(at_first).await.unwrap_err();
        assert!(matches!(&error, ClientError::Registry(e) if e.code == ErrorCode::Compacted), "{error}");
    }
    assert_eq!(client.get("config/limit").await.unwrap().unwrap().value, b"2", "the present survives");
}

#[tokio::test]
async fn bad_requests_get_typed_errors_and_lose_nothing() {
    let dir = TempDir::new("bad");
    let member = one_member(&dir).await;
    let client = member.client();
    client.put("kept", "1").await.unwrap();
    let registry_error = |e: ClientError| match e {
        ClientError::Registry(e) => e,
        other => panic!("expected a registry error, got {other}"),
    };

    let huge = client.put("huge", vec![0u8; 2 << 20]).await.unwrap_err();
    let huge = registry_error(huge);
    assert_eq!(huge.code, ErrorCode::InvalidRequest, "{huge}");
    assert!(huge.message.contains("over the limit"), "{huge}");

    let put = |i: usize| RequestOp::Put(PutRequest { key: format!("t{i}").into(), ..PutRequest::default() });
    let txn = TxnRequest { success: (0..200).map(put).collect(), ..TxnRequest::default() };
    let api = client.current().expect("our registry");
    let too_many = api.txn(txn).await.unwrap().unwrap_err();
    assert_eq!(too_many.code, ErrorCode::InvalidRequest, "{too_many}");

    let orphan = PutRequest { key: b"orphan".to_vec(), lease: 0xdead, ..PutRequest::default() };
    let orphan = registry_error(client.put_with(orphan).await.unwrap_err());
    assert_eq!(orphan.code, ErrorCode::LeaseNotFound, "{orphan}");

    let revision = client.put("kept", "2").await.unwrap().header.revision;
    client.put("kept", "3").await.unwrap();
    api.compact(revision).await.unwrap().unwrap();
    let old = RangeRequest { key: b"kept".to_vec(), revision: revision - 1, ..RangeRequest::default() };
    let compacted = registry_error(client.range(old).await.unwrap_err());
    assert_eq!((compacted.code, compacted.compact_revision), (ErrorCode::Compacted, revision), "{compacted}");

    let (requests, rx) = mpsc::channel(1);
    let create = WatchCreate { key: b"kept".to_vec(), start_revision: 1, watch_id: 1, ..WatchCreate::default() };
    requests.send(WatchRequest::Create(create)).await.unwrap();
    let mut watch = api.watch(rpc_core::stream::from_receiver(rx)).await.unwrap();
    let refused = watch.next().await.unwrap().unwrap();
    assert!(refused.canceled, "a watch from a compacted revision is refused, not silently short");
    assert_eq!(refused.compact_revision, revision);

    // Garbage on the port costs that connection only.
    let mut garbage = tokio::net::TcpStream::connect(member.local_addr()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut garbage, b"\x00\x00\x00\x10GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(client.get("kept").await.unwrap().unwrap().value, b"3", "acknowledged data is intact");
    drop(requests);
}

#[tokio::test]
async fn a_three_member_cluster_keeps_writing_after_its_leader_stops() {
    let dir = TempDir::new("cluster");
    let listeners: Vec<std::net::TcpListener> =
        (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addrs: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    drop(listeners);
    let peers: Vec<(String, String)> = addrs.iter().enumerate().map(|(i, a)| (format!("n{i}"), a.clone())).collect();
    let mut members = Vec::new();
    for (name, addr) in &peers {
        let mut config = MemberConfig::new(name.clone(), dir.0.join(name), addr.clone()).peers(peers.clone());
        config.fsync = false;
        members.push(Some(RunningMember::start(config).await.unwrap()));
    }
    let client = RegistryClient::connect(addrs.clone());
    for i in 0..20 {
        client.put(format!("k{i}"), "v").await.unwrap();
    }
    let status = client.status().await.unwrap();
    let leader = members.iter().position(|m| m.as_ref().is_some_and(|m| m.id() == status.leader));
    let leader = leader.expect("the status names a leader among the members");
    members[leader].take().unwrap().shutdown(Duration::from_millis(100)).await.unwrap();
    for i in 20..40 {
        client.put(format!("k{i}"), "v").await.unwrap();
    }
    let all = client
        .range(rpc_registry::api::RangeRequest {
            key: b"k".to_vec(),
            range_end: prefix_end(b"k"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.count, 40, "every acknowledged write is there after the leader stopped");
    let status = client.status().await.unwrap();
    assert_ne!(status.leader, 0);
    assert_ne!(status.leader, rpc_registry::member_id(&peers[leader].0), "a new leader was elected");
}

/// Three members in this process, serving on free ports.
async fn cluster(dir: &TempDir) -> (Vec<(String, String)>, Vec<RunningMember>) {
    let listeners: Vec<std::net::TcpListener> =
        (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let peers: Vec<(String, String)> =
        listeners.iter().enumerate().map(|(i, l)| (format!("n{i}"), l.local_addr().unwrap().to_string())).collect();
    drop(listeners);
    let mut members = Vec::new();
    for (name, addr) in &peers {
        let mut config = MemberConfig::new(name.clone(), dir.0.join(name), addr.clone()).peers(peers.clone());
        config.fsync = false;
        members.push(RunningMember::start(config).await.unwrap());
    }
    (peers, members)
}

#[tokio::test]
async fn a_lease_expires_on_time_across_three_leader_changes() {
    let dir = TempDir::new("lease-elections");
    let (peers, _members) = cluster(&dir).await;
    let addrs: Vec<String> = peers.iter().map(|(_, a)| a.clone()).collect();
    let client = RegistryClient::connect(addrs);
    let ttl = Duration::from_secs(4);
    let lease = client.lease_grant(ttl.as_secs()).await.unwrap();
    let granted = tokio::time::Instant::now();
    let put = PutRequest { key: b"svc/leased".to_vec(), value: b"x".to_vec(), lease, ..PutRequest::default() };
    let revision = client.put_with(put).await.unwrap().header.revision;

    // Three leader changes, a second apart, so a TTL restarted at each would end past 7 s.
    for change in 1..=3 {
        tokio::time::sleep_until(granted + Duration::from_millis(900 * change)).await;
        let old = client.status().await.unwrap().leader;
        let next = peers.iter().map(|(name, _)| rpc_registry::member_id(name)).find(|&id| id != old).unwrap();
        client.move_leader(next).await.unwrap();
        while client.status().await.unwrap().leader != next {
            tokio::task::yield_now().await;
        }
    }
    assert!(granted.elapsed() < ttl, "the leader changes took the whole TTL; the test proves nothing");

    // Wait on the delete event; its time is when the lease expired.
    let api = client.current().expect("our registry");
    let (requests, rx) = mpsc::channel(1);
    let create = WatchCreate {
        key: b"svc/leased".to_vec(),
        start_revision: revision + 1,
        watch_id: 1,
        ..WatchCreate::default()
    };
    requests.send(WatchRequest::Create(create)).await.unwrap();
    let mut watch = api.watch(rpc_core::stream::from_receiver(rx)).await.unwrap();
    let deleted = loop {
        let response = watch.next().await.unwrap().unwrap();
        if let Some(event) = response.events.first() {
            assert_eq!(event.kind, EventKind::Delete);
            break granted.elapsed();
        }
    };
    // Each change may add one checkpoint interval (150 ms) to the expiry; etcd restarts the
    // whole TTL at each election, which would put it past the last change plus 4 s (> 6.7 s).
    assert!(deleted >= ttl, "the lease expired early, after {deleted:?}");
    assert!(deleted < ttl + Duration::from_millis(3 * 150 + 500), "the lease expired after {deleted:?}");
    drop(requests);
}

#[tokio::test]
async fn a_member_that_missed_compacted_entries_catches_up_from_a_snapshot() {
    let dir = TempDir::new("snapshot");
    let listeners: Vec<std::net::TcpListener> =
        (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let peers: Vec<(String, String)> =
        listeners.iter().enumerate().map(|(i, l)| (format!("n{i}"), l.local_addr().unwrap().to_string())).collect();
    drop(listeners);
    let config = |i: usize| {
        let (name, addr) = &peers[i];
        let mut config = MemberConfig::new(name.clone(), dir.0.join(name), addr.clone()).peers(peers.clone());
        config.fsync = false;
        // Small, so the others compact their logs past what the stopped member has.
        config.snapshot_entries = 20;
        config
    };
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(Some(RunningMember::start(config(i)).await.unwrap()));
    }
    let addrs: Vec<String> = peers.iter().map(|(_, a)| a.clone()).collect();
    let client = RegistryClient::connect(addrs);
    client.put("k/first", "1").await.unwrap();
    let status = client.status().await.unwrap();
    let behind = (0..3).find(|&i| members[i].as_ref().unwrap().id() != status.leader).unwrap();
    members[behind].take().unwrap().shutdown(Duration::from_millis(100)).await.unwrap();
    for i in 0..100 {
        client.put(format!("k/{i:03}"), format!("{i}")).await.unwrap();
    }
    let revision = client.put("k/last", "done").await.unwrap().header.revision;

    let restarted = RunningMember::start(config(behind)).await.unwrap();
    let local = RegistryApiClient::new(Channel::connect(restarted.local_addr().to_string()).await.unwrap());
    let all =
        RangeRequest { key: b"k/".to_vec(), range_end: prefix_end(b"k/"), serializable: true, ..Default::default() };
    // Serializable reads show the member's own state: wait until it reached the last write.
    let mut caught_up = None;
    for _ in 0..400 {
        let response = local.range(all.clone()).await.unwrap().unwrap();
        if response.header.revision >= revision {
            caught_up = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let caught_up = caught_up.expect("the restarted member caught up within 10 s");
    assert_eq!(caught_up.count, 102);
    let status = local.status().await.unwrap();
    assert!(status.applied_index >= 100, "{status:?}");
}

#[tokio::test]
async fn a_restarted_member_keeps_its_cluster_id_whatever_its_peers_say() {
    let dir = TempDir::new("cluster-id");
    let member = one_member(&dir).await;
    let addr = member.local_addr().to_string();
    let founded = member.client().put("k", "v").await.unwrap().header.cluster_id;
    assert_ne!(founded, 0);
    member.shutdown(Duration::from_secs(1)).await.unwrap();

    // The same member, now told its peers by address: the list it would derive an id from differs.
    let mut config = MemberConfig::new("solo", dir.0.join("solo"), addr.clone()).peers(vec![("solo".into(), addr)]);
    config.fsync = false;
    let member = RunningMember::start(config).await.unwrap();
    let header = member.client().put("k", "w").await.unwrap().header;
    assert_eq!(header.cluster_id, founded, "the cluster id is kept from the founding");
}
