//! Server lifecycle: graceful shutdown, go-away, reconnects, idle connections.

mod common;

use common::*;
use rpc_core::{Channel, Code, Codec, Server};
use std::time::Duration;

#[tokio::test]
async fn graceful_shutdown_lets_running_calls_finish_and_refuses_new_ones() {
    let (server, lab) = start_lab().await;
    let mut events = lab.events.subscribe();
    let addr = server.local_addr();
    let client = lab_client(&server, Codec::MsgPack).await;
    let running = {
        let client = client.clone();
        tokio::spawn(async move { client.sleep_then(1, 300).await })
    };
    expect_event(&mut events, "started:1").await;
    let shutdown = tokio::spawn(server.shutdown(Duration::from_secs(5)));
    // Calls made before the server starts draining still run; the first refused one is the
    // point where it stopped taking calls.
    let refused = until_refused("a draining server refuses new calls", || client.sleep_then(2, 0)).await;
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    assert!(refused.not_started(), "a refused call is known not to have run: {refused}");
    assert_eq!(running.await.unwrap().unwrap(), 1, "the running call finished");
    shutdown.await.unwrap().unwrap();
    let err = Channel::connect(addr.to_string()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "the listener is closed: {err}");
}

#[tokio::test]
async fn shutdown_cancels_what_outlives_the_grace_period() {
    let (server, lab) = start_lab().await;
    let mut events = lab.events.subscribe();
    let client = lab_client(&server, Codec::MsgPack).await;
    let hanging = hanging_call(&client, &mut events, "grace").await;
    let started = tokio::time::Instant::now();
    server.shutdown(Duration::from_millis(200)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown waits no longer than its grace period");
    expect_event(&mut events, "cancelled:grace").await;
    let err = hanging.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
}

/// An announcer whose withdrawal never finishes: a registry that stopped answering.
struct StuckRegistry;

impl rpc_core::server::Announce for StuckRegistry {
    fn up(&self, _: rpc_core::server::Listening) -> rpc_core::server::AnnounceFuture<std::io::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn down(&self) -> rpc_core::server::AnnounceFuture<()> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn the_grace_period_covers_withdrawing_announcements_and_draining_together() {
    let lab = LabImpl::default();
    let mut events = lab.events.subscribe();
    let server =
        Server::builder().add_service(LabServer::new(lab)).announce(StuckRegistry).start("127.0.0.1:0").await.unwrap();
    let client = lab_client(&server, Codec::MsgPack).await;
    let hanging = hanging_call(&client, &mut events, "both").await;
    let started = tokio::time::Instant::now();
    server.shutdown(Duration::from_secs(2)).await.unwrap();
    // Withdrawing takes the whole grace here; a drain that counted its grace from then on
    // would take two more seconds.
    assert!(started.elapsed() < Duration::from_millis(3500), "shutdown took {:?} for a 2 s grace", started.elapsed());
    expect_event(&mut events, "cancelled:both").await;
    assert_eq!(hanging.await.unwrap().unwrap_err().code(), Code::Unavailable);
}

#[tokio::test]
async fn a_client_reconnects_by_itself_after_a_server_restart() {
    let (server, _lab) = start_lab().await;
    let addr = server.local_addr();
    let client = lab_client(&server, Codec::MsgPack).await;
    assert_eq!(client.sleep_then(1, 0).await.unwrap(), 1);
    server.shutdown(Duration::from_secs(1)).await.unwrap();

    let err = client.sleep_then(2, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");

    let restarted = Server::builder().add_service(LabServer::new(LabImpl::default())).start(addr).await.unwrap();
    let mut answer = None;
    for _ in 0..100 {
        match client.sleep_then(3, 0).await {
            Ok(v) => {
                answer = Some(v);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(answer, Some(3), "the same client works again once the server is back");
    drop(restarted);
}

#[tokio::test]
async fn idle_connections_are_closed_and_the_client_reconnects() {
    let (server, _lab) = start_lab_with(|builder| builder.idle_timeout(Duration::from_millis(100))).await;
    let client = lab_client(&server, Codec::MsgPack).await;
    let first = client.peer_port().await.unwrap();
    // A call that runs longer than the idle timeout keeps the connection open: it is answered.
    assert_eq!(client.sleep_then(2, 350).await.unwrap(), 2);
    // Idle for longer than two idle periods (the server checks once per period).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = client.peer_port().await.expect("the next call reconnects");
    assert_ne!(second, first, "the idle connection was closed, and the call came on a new one");
}

#[tokio::test]
async fn calls_to_a_server_that_is_down_fail_fast_and_say_so() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = LabClient::new(Channel::builder(addr.to_string()).connect_lazy());
    let started = std::time::Instant::now();
    let err = client.sleep_then(1, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.not_started());
    assert!(err.message().contains(&addr.to_string()), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn run_until_serves_until_its_signal_then_shuts_down() {
    let (server, _lab) = start_lab().await;
    let addr = server.local_addr().to_string();
    let (stop, signal) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run_until(
        async move {
            let _ = signal.await;
        },
        std::time::Duration::from_secs(1),
    ));
    let client = LabClient::new(rpc_core::Channel::builder(addr.clone()).connect_lazy());
    assert_eq!(client.sleep_then(1, 0).await.unwrap(), 1, "serving before the signal");
    assert!(!running.is_finished());
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let after = LabClient::new(rpc_core::Channel::builder(addr).connect_lazy());
    assert!(after.sleep_then(2, 0).await.is_err(), "nothing listens after the shutdown");
}

#[tokio::test]
async fn shutdown_ends_soon_after_its_grace_even_when_a_client_stops_reading() {
    use tokio::io::AsyncWriteExt;
    let (server, _lab) = start_lab().await;
    // A client that asks for large replies and never reads them: the server's writes block.
    let mut stream = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    stream.write_all(&rpc_core::transport::PREFACE).await.unwrap();
    let mut calls = bytes::BytesMut::new();
    for id in 1..=8 {
        let frame = rpc_core::transport::Frame {
            id,
            codec: Codec::Json.id(),
            head: rpc_core::transport::Head::Call {
                service: "Lab".into(),
                method: "blob".into(),
                timeout: None,
                metadata: rpc_core::Metadata::new(),
                oneway: false,
            },
            body: bytes::Bytes::from_static(br#"{"n":4000000}"#),
        };
        tokio_util::codec::Encoder::encode(&mut rpc_core::transport::FrameCodec::default(), &frame, &mut calls)
            .unwrap();
    }
    stream.write_all(&calls).await.unwrap();
    // Replies are produced (a healthy client on its own connection shows the server went on).
    let client = lab_client(&server, Codec::MsgPack).await;
    assert_eq!(client.blob(16).await.unwrap().len(), 16);
    let shutdown = tokio::time::timeout(Duration::from_secs(30), server.shutdown(Duration::from_millis(100)));
    shutdown.await.expect("the shutdown waited on a client that does not read").unwrap();
    drop(stream);
}

/// Starts `hang(tag)` through `client` and returns once its handler runs.
async fn hanging_call(
    client: &LabClient,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    tag: &str,
) -> tokio::task::JoinHandle<Result<(), rpc_core::Status>> {
    let hanging = {
        let (client, tag) = (client.clone(), tag.to_owned());
        tokio::spawn(async move { client.hang(tag).await })
    };
    expect_event(events, &format!("hanging:{tag}")).await;
    hanging
}
