//! Metrics and the admin port over real sockets: what Prometheus would scrape after real calls,
//! and health and readiness through a shutdown.

mod common;

use common::*;
use rpc_core::{Codec, Server};
use std::{net::SocketAddr, time::Duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` on the admin port: the status line and the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

/// The value of the sample `name{labels}` in a Prometheus text body.
fn sample(body: &str, name_and_labels: &str) -> Option<f64> {
    body.lines().find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test]
async fn the_admin_port_serves_call_metrics_health_and_readiness() {
    let lab = LabImpl::default();
    let mut events = lab.events.subscribe();
    let server =
        Server::builder().add_service(LabServer::new(lab)).admin("127.0.0.1:0").start("127.0.0.1:0").await.unwrap();
    let admin = server.admin_addr().expect("an admin port");
    let client = lab_client(&server, Codec::MsgPack).await;
    for i in 0..3 {
        assert_eq!(client.sleep_then(i, 0).await.unwrap(), i);
    }
    client.explode().await.unwrap_err();

    let (status, body) = get(admin, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let method = |m: &str| format!(r#"rpc_system="rpc",rpc_service="Lab",rpc_method="{m}""#);
    let sleep = method("sleep_then");
    assert_eq!(sample(&body, &format!("rpc_server_calls_started_total{{{sleep}}}")), Some(3.0), "{body}");
    assert_eq!(sample(&body, &format!("rpc_server_calls_in_flight{{{sleep}}}")), Some(0.0), "{body}");
    let ok = format!(r#"{sleep},rpc_response_status_code="OK""#);
    assert_eq!(sample(&body, &format!("rpc_server_call_duration_seconds_count{{{ok}}}")), Some(3.0), "{body}");
    assert_eq!(sample(&body, &format!(r#"rpc_server_call_duration_seconds_bucket{{{ok},le="+Inf"}}"#)), Some(3.0));
    let sizes = format!("rpc_server_request_size_bytes_count{{{sleep}}}");
    assert_eq!(sample(&body, &sizes), Some(3.0), "{body}");
    let replies = format!("rpc_server_response_size_bytes_bucket{{{sleep},le=\"64\"}}");
    assert_eq!(sample(&body, &replies), Some(3.0), "small replies in the smallest bucket: {body}");
    let failed = format!(r#"{},rpc_response_status_code="INTERNAL""#, method("explode"));
    assert_eq!(sample(&body, &format!("rpc_server_call_duration_seconds_count{{{failed}}}")), Some(1.0), "{body}");

    assert_eq!(get(admin, "/health").await.0, "HTTP/1.1 200 OK");
    assert_eq!(get(admin, "/ready").await.0, "HTTP/1.1 200 OK");
    assert_eq!(get(admin, "/nope").await.0, "HTTP/1.1 404 Not Found");

    // A call holds the shutdown in its grace period; meanwhile the server is not ready.
    let hanging = tokio::spawn({
        let client = client.clone();
        async move { client.hang("held".into()).await }
    });
    expect_event(&mut events, "hanging:held").await;
    let in_flight = format!("rpc_server_calls_in_flight{{{}}}", method("hang"));
    assert_eq!(sample(&get(admin, "/metrics").await.1, &in_flight), Some(1.0), "a running call is in flight");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let shutdown = tokio::spawn(server.shutdown(Duration::from_secs(2)));
    while get(admin, "/ready").await.0 != "HTTP/1.1 503 Service Unavailable" {
        assert!(tokio::time::Instant::now() < deadline, "the server never said it was not ready");
    }
    assert_eq!(get(admin, "/health").await.0, "HTTP/1.1 200 OK", "alive while draining");
    // Dropping the call cancels it on the server, which then finishes draining.
    hanging.abort();
    shutdown.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_admin_port_serves_a_live_page_of_the_servers_own_calls() {
    let (server, _lab) = start_lab_with(|builder| builder.admin("127.0.0.1:0")).await;
    let admin = server.admin_addr().unwrap();
    let (status, page) = get(admin, "/").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(page.contains("<title>rpc dashboard</title>"), "{page}");

    let client = lab_client(&server, Codec::MsgPack).await;
    let calling = tokio::spawn(async move {
        for i in 0.. {
            client.sleep_then(i, 0).await.unwrap();
        }
    });
    // The page's data follows the calls once the dashboard has read the metrics twice.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state: serde_json::Value = serde_json::from_str(&get(admin, "/api/state").await.1).unwrap();
        let method = state["methods"].as_array().unwrap().iter().find(|m| m["method"] == "sleep_then").cloned();
        let busy = method.as_ref().and_then(|m| m["points"].as_array()?.last()?["rate"].as_f64()).unwrap_or(0.0);
        if busy > 0.0 {
            let method = method.unwrap();
            assert_eq!((&method["service"], &method["side"]), (&"Lab".into(), &"server".into()));
            assert_eq!(method["points"].as_array().unwrap().last().unwrap()["success"], 1.0);
            assert!(state["registry"].is_null(), "a lone server knows no registry");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no calls on the page: {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    calling.abort();
}

#[tokio::test]
async fn a_registry_members_admin_port_reports_its_raft_state_and_disk_writes() {
    let dir = tests::TempDir::new("member-metrics");
    let mut config = rpc_registry::MemberConfig::new("solo", dir.0.join("solo"), "127.0.0.1:0");
    config.admin = Some("127.0.0.1:0".into());
    let member = rpc_registry::RunningMember::start(config).await.unwrap();
    let admin = member.admin_addr().expect("an admin port");
    let client = rpc_registry::RegistryClient::connect([member.local_addr().to_string()]);
    let revision = client.put("config/limit", "1").await.unwrap().header.revision;

    let body = get(admin, "/metrics").await.1;
    let line =
        |name: &str| body.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {body}"));
    let value = |name: &str| line(name).rsplit(' ').next().unwrap().parse::<f64>().unwrap();
    assert!(line("registry_raft_term{").contains("name=\"solo\""), "samples name the member");
    assert!(value("registry_raft_term{") >= 1.0);
    assert_eq!(value("registry_raft_is_leader{"), 1.0, "a lone member leads");
    assert!(value("registry_revision{") >= revision as f64);
    assert!(value("registry_raft_applied_index{") >= 1.0);
    // The put's entry was written (and synced) before the put was acknowledged.
    assert!(value("registry_raft_persist_duration_seconds_count{") >= 1.0, "{body}");
    assert!(value("registry_raft_persist_duration_seconds_sum{") > 0.0);
    let put_calls =
        "rpc_server_call_duration_seconds_count{rpc_system=\"rpc\",rpc_service=\"RegistryApi\",rpc_method=\"put\"";
    assert!(body.contains(put_calls), "registry calls are measured like any other service's: {body}");
}
