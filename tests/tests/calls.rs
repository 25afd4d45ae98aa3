//! Calls over real sockets: multiplexing, codecs, errors, deadlines, cancellation, metadata.

mod common;

use common::*;
use rpc_core::{Channel, Code, Codec, Server};
use std::time::Duration;

#[tokio::test]
async fn thousand_concurrent_calls_on_one_connection_complete_out_of_order() {
    let (server, lab) = start_lab().await;
    let client = lab_client(&server, Codec::MsgPack).await;
    let calls = (0..1000u64).map(|i| {
        let client = client.clone();
        // Later calls sleep less, so replies overtake the calls sent before them.
        async move { (i, client.sleep_then(i, 200 - i / 5).await) }
    });
    let results = futures_join_all(calls).await;
    for (i, result) in results {
        assert_eq!(result.unwrap(), i, "each reply pairs with its own call");
    }
    let finished = lab.events.finished.lock().unwrap().clone();
    assert_eq!(finished.len(), 1000);
    assert_ne!(finished, (0..1000).collect::<Vec<_>>(), "handlers finished in call order");
}

/// Awaits futures concurrently on the current task (keeps the test crate free of extra deps).
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn every_codec_round_trips_and_one_server_answers_them_all() {
    let (server, _lab) = start_lab().await;
    let item = Item { id: 42, name: "naïve ☃".into(), data: (0..=255).collect() };
    for &codec in Codec::ALL {
        let client = lab_client(&server, codec).await;
        assert_eq!(client.echo(item.clone()).await.unwrap(), item, "{codec}");
        assert_eq!(client.get(2).await.unwrap().unwrap().name, "item-2", "{codec}");
        assert_eq!(client.get(3).await.unwrap(), Err(NotFound { id: 3 }), "{codec}");
        client.nothing().await.unwrap();
        assert_eq!(client.blob(100_000).await.unwrap().len(), 100_000, "{codec}");
    }
}

#[tokio::test]
async fn application_errors_are_values_and_transport_errors_are_statuses() {
    let (server, _lab) = start_lab().await;
    let client = lab_client(&server, Codec::Json).await;
    let reply: Result<Result<Item, NotFound>, rpc_core::Status> = client.get(7).await;
    assert_eq!(reply, Ok(Err(NotFound { id: 7 })));
}

#[tokio::test]
async fn deadline_expiry_cancels_the_handler() {
    let (server, lab) = start_lab().await;
    let mut events = lab.events.subscribe();
    let client = lab_client(&server, Codec::MsgPack).await;
    let err = client.hang("deadline".into()).timeout(Duration::from_millis(100)).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    expect_event(&mut events, "cancelled:deadline").await;
}

#[tokio::test]
async fn the_deadline_reaches_the_handler() {
    let (server, _lab) = start_lab().await;
    let client = lab_client(&server, Codec::MsgPack).await;
    assert_eq!(client.remaining_ms().await.unwrap(), None);
    let left = client.remaining_ms().timeout(Duration::from_secs(3)).await.unwrap().unwrap();
    assert!((2000..=3000).contains(&left), "handler saw {left} ms left of 3000");
}

#[tokio::test]
async fn dropping_a_call_cancels_it_on_the_server() {
    let (server, lab) = start_lab().await;
    let mut events = lab.events.subscribe();
    let client = lab_client(&server, Codec::MsgPack).await;
    let caller = client.clone();
    let call = tokio::spawn(async move { caller.hang("dropped".into()).await });
    expect_event(&mut events, "hanging:dropped").await;
    call.abort();
    // The channel lives on in `client`: only the call's own cancel frame can stop the handler.
    expect_event(&mut events, "cancelled:dropped").await;
    assert_eq!(client.get(2).await.unwrap().unwrap().id, 2, "the connection still serves");
}

#[tokio::test]
async fn cancelling_a_call_cancels_the_calls_its_handler_makes() {
    let (front, _front_lab) = start_lab().await;
    let (back, back_lab) = start_lab().await;
    let mut events = back_lab.events.subscribe();
    let client = lab_client(&front, Codec::MsgPack).await;
    let caller = client.clone();
    let back_addr = back.local_addr().to_string();
    let call = tokio::spawn(async move { caller.relay_hang(back_addr, "cascade".into()).await });
    expect_event(&mut events, "hanging:cascade").await;
    call.abort();
    // The front server keeps its connection to the back one open, and the call had no deadline.
    expect_event(&mut events, "cancelled:cascade").await;
}

#[tokio::test]
async fn deadlines_cascade_to_the_calls_a_handler_makes() {
    let (front, _front_lab) = start_lab().await;
    let (back, back_lab) = start_lab().await;
    let mut events = back_lab.events.subscribe();
    let client = lab_client(&front, Codec::MsgPack).await;
    let back_addr = back.local_addr().to_string();
    assert_eq!(client.relay_remaining_ms(back_addr.clone()).await.unwrap(), None, "no deadline, none passed on");
    let left = client.relay_remaining_ms(back_addr.clone()).timeout(Duration::from_secs(3)).await.unwrap();
    assert!(left.is_some_and(|ms| ms <= 3000), "the back handler saw {left:?} ms of the caller's 3000");

    let reply = client.relay_hang(back_addr, "deadline".into()).timeout(Duration::from_millis(200)).await;
    assert_eq!(reply.unwrap_err().code(), Code::DeadlineExceeded);
    expect_event(&mut events, "cancelled:deadline").await;
}

#[tokio::test]
async fn unknown_method_and_service_are_unimplemented() {
    let (server, _lab) = start_lab().await;
    let channel = Channel::connect(server.local_addr().to_string()).await.unwrap();
    let call = |service: &'static str, method: &'static str| {
        rpc_core::Call::<_, serde_json::Value>::new(
            channel.clone(),
            rpc_core::Request::new(service, method, serde_json::json!({})),
        )
    };
    let err = call("Lab", "no_such_method").await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("no_such_method") && err.message().contains("echo"), "{err}");
    let err = call("NoSuchService", "echo").await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("Lab"), "lists the services served: {err}");
}

#[tokio::test]
async fn undecodable_arguments_are_invalid_argument() {
    let (server, _lab) = start_lab().await;
    let channel = Channel::connect(server.local_addr().to_string()).await.unwrap();
    // `echo` wants an Item; send a string.
    let err = rpc_core::Call::<_, serde_json::Value>::new(
        channel,
        rpc_core::Request::new("Lab", "echo", "not an item".to_string()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
}

#[tokio::test]
async fn a_panicking_handler_fails_only_its_call() {
    let (server, _lab) = start_lab().await;
    let client = lab_client(&server, Codec::MsgPack).await;
    let err = client.explode().await.unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert!(err.message().contains("blew up on purpose"), "{err}");
    assert_eq!(client.sleep_then(5, 0).await.unwrap(), 5, "the server keeps serving");
}

#[tokio::test]
async fn metadata_travels_both_ways_with_the_caller_name() {
    let (server, _lab) = start_lab().await;
    let channel = Channel::builder(server.local_addr().to_string()).caller("order-service").connect().await.unwrap();
    let client = LabClient::new(channel);
    let seen = client.whoami().metadata("tenant", "acme").await.unwrap();
    assert!(seen.contains(&("tenant".into(), "acme".into())), "{seen:?}");
    assert!(seen.contains(&(rpc_core::CALLER.into(), "order-service".into())), "{seen:?}");
}

#[tokio::test]
async fn trace_context_follows_a_call_through_a_handler_to_the_next_service() {
    let (front, _front_lab) = start_lab().await;
    let (back, _back_lab) = start_lab().await;
    let client = lab_client(&front, Codec::MsgPack).await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let seen = client
        .relay_whoami(back.local_addr().to_string())
        .metadata(rpc_core::TRACEPARENT, trace)
        .metadata("tenant", "acme")
        .await
        .unwrap();
    assert!(seen.contains(&(rpc_core::TRACEPARENT.into(), trace.into())), "{seen:?}");
    assert!(seen.contains(&(rpc_core::CALLER.into(), "lab-relay".into())), "{seen:?}");
    assert!(!seen.iter().any(|(k, _)| k == "tenant"), "other metadata is not forwarded: {seen:?}");
}

#[tokio::test]
async fn reply_metadata_reaches_a_tower_layer_on_the_client() {
    use tower::ServiceExt;
    let (server, _lab) = start_lab().await;
    let channel = Channel::connect(server.local_addr().to_string()).await.unwrap();
    let request = rpc_core::Request::new("Lab", "whoami", serde_json::json!({}));
    let response = channel.oneshot(request).await.unwrap();
    assert_eq!(response.metadata.get("served-by"), Some("lab"));
}

#[tokio::test]
async fn a_typed_client_reads_reply_metadata_with_the_value() {
    let (server, _lab) = start_lab().await;
    let client = lab_client(&server, Codec::Protobuf).await;
    let (seen, metadata) = client.whoami().metadata("tenant", "acme").with_metadata().await.unwrap();
    assert!(seen.contains(&("tenant".into(), "acme".into())), "{seen:?}");
    assert_eq!(metadata.get("served-by"), Some("lab"));
}

#[tokio::test]
async fn oneway_calls_return_at_once_and_run() {
    let (server, lab) = start_lab().await;
    let mut events = lab.events.subscribe();
    let client = lab_client(&server, Codec::Json).await;
    client.notify("hello".into()).await.unwrap();
    expect_event(&mut events, "note:hello").await;
}

#[tokio::test]
async fn method_table_describes_the_service() {
    let info = LabClient::<Channel>::INFO;
    assert_eq!(info.name, "Lab");
    let notify = info.method("notify").unwrap();
    assert!(notify.oneway && !notify.idempotent);
    let remaining = info.method("remaining_ms").unwrap();
    assert!(remaining.idempotent);
    assert_eq!(remaining.returns, "Option<u64>");
    let sleep = info.method("sleep_then").unwrap();
    assert_eq!(sleep.args, &[("id", "u64"), ("millis", "u64")]);
    assert_eq!(sleep.doc, "Reports `started:id`, sleeps, then returns `id`.");
}

/// A second service, to serve two on one listener.
#[rpc_core::service(name = "shop.Counter")]
pub trait Counter {
    /// Adds one.
    async fn incr(&self, n: i64) -> i64;
}

struct PlusOne;

impl Counter for PlusOne {
    async fn incr(&self, n: i64) -> i64 {
        n + 1
    }
}

#[tokio::test]
async fn several_services_share_one_listener() {
    let server = Server::builder()
        .add_service(LabServer::new(LabImpl::default()))
        .add_service(CounterServer::new(PlusOne))
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let channel = Channel::connect(server.local_addr().to_string()).await.unwrap();
    assert_eq!(CounterClient::new(channel.clone()).incr(41).await.unwrap(), 42);
    assert_eq!(LabClient::new(channel).sleep_then(1, 0).await.unwrap(), 1);
}

#[tokio::test]
async fn a_pool_of_connections_spreads_calls() {
    let (server, _lab) = start_lab().await;
    let channel = Channel::builder(server.local_addr().to_string()).connections(3).connect().await.unwrap();
    let client = LabClient::new(channel.clone());
    let calls = (0..30u64).map(|i| {
        let client = client.clone();
        async move { client.sleep_then(i, 10).await.unwrap() }
    });
    let results = futures_join_all(calls).await;
    assert_eq!(results, (0..30).collect::<Vec<_>>());
    let debug = format!("{channel:?}");
    assert_eq!(debug.matches("127.0.0.1").count(), 4, "address plus three connections: {debug}");
    assert!(channel.ping().await.unwrap() < Duration::from_secs(1));
}

/// A server that reads calls and never answers: only the client's own deadline handling can end
/// them. Returns the ids of the cancel frames it received once it has seen `cancels` of them,
/// then closes the connection.
async fn black_hole(listener: tokio::net::TcpListener, cancels: usize) -> Vec<u32> {
    use tokio::io::AsyncReadExt;
    use tokio_util::codec::Decoder;
    let (mut stream, _) = listener.accept().await.unwrap();
    let mut buf = bytes::BytesMut::new();
    while buf.len() < 8 {
        stream.read_buf(&mut buf).await.unwrap();
    }
    let _preface = buf.split_to(8);
    let mut codec = rpc_core::transport::FrameCodec::default();
    let mut cancelled = Vec::new();
    loop {
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            if matches!(frame.head, rpc_core::transport::Head::Cancel) {
                cancelled.push(frame.id);
            }
        }
        if cancelled.len() >= cancels || stream.read_buf(&mut buf).await.unwrap() == 0 {
            return cancelled;
        }
    }
}

#[tokio::test]
async fn deadlines_expire_on_the_client_even_when_the_server_never_answers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(black_hole(listener, 3));
    let client = LabClient::new(Channel::connect(addr.to_string()).await.unwrap());
    let patient = tokio::spawn({
        let client = client.clone();
        async move { client.sleep_then(0, 0).await }
    });
    // The later deadline is registered first: the earlier ones must move the connection's timer.
    let finished = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let calls = [300u64, 50, 150].map(|ms| {
        let (client, finished) = (client.clone(), finished.clone());
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let outcome = client.sleep_then(ms, 0).timeout(Duration::from_millis(ms)).await;
            finished.lock().unwrap().push(ms);
            (ms, started.elapsed(), outcome)
        })
    });
    for call in calls {
        let (ms, elapsed, outcome) = call.await.unwrap();
        let err = outcome.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
        assert!(elapsed >= Duration::from_millis(ms), "a {ms} ms deadline fired after {elapsed:?}");
    }
    assert_eq!(*finished.lock().unwrap(), [50, 150, 300], "each call expires at its own deadline");
    let mut cancelled = tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
    let sent = cancelled.len();
    cancelled.sort_unstable();
    cancelled.dedup();
    assert_eq!((sent, cancelled.len()), (3, 3), "the server is told to cancel each expired call once");
    // The call without a deadline waited until the server went away.
    let err = patient.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
}

#[tokio::test]
async fn a_request_larger_than_the_socket_buffer_goes_out_whole_beside_small_calls() {
    let (server, _lab) = start_lab().await;
    let client = lab_client(&server, Codec::MsgPack).await;
    // Alone on the connection, the caller writes its frame itself; the kernel takes only part of
    // 8 MiB at once and the writer task must finish it before any other frame goes out.
    let big = Item { id: 1, name: "big".into(), data: (0..8 << 20).map(|i| i as u8).collect() };
    let big_call = tokio::spawn({
        let client = client.clone();
        let big = big.clone();
        async move { client.echo(big).await }
    });
    let small: Vec<_> = (0..50u64)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.sleep_then(i, 0).await })
        })
        .collect();
    assert_eq!(big_call.await.unwrap().unwrap(), big);
    for (i, call) in small.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), i as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_call_reaches_the_server_before_the_next_call_of_its_task() {
    let (server, lab) = start_lab().await;
    let client = lab_client(&server, Codec::Protobuf).await;
    // Tasks on two threads keep the connection between "alone" (callers write themselves) and
    // busy (the writer task coalesces), so both paths and their hand-over are exercised.
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let (client, lab) = (client.clone(), lab.clone());
            tokio::spawn(async move {
                for i in 0..200u64 {
                    let note = format!("t{task}-{i}");
                    client.notify(note.clone()).await.unwrap();
                    assert_eq!(client.sleep_then(i, 0).await.unwrap(), i);
                    assert!(lab.events.notes.lock().unwrap().contains(&note), "{note} was overtaken by a later call");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(lab.events.notes.lock().unwrap().len(), 1600);
}

#[tokio::test]
async fn dropping_the_last_channel_clone_closes_its_connection() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let channel = Channel::connect(addr.to_string()).await.unwrap();
    let (mut stream, _) = listener.accept().await.unwrap();
    let clone = channel.clone();
    drop(channel);
    let mut buf = vec![0; 64];
    let first = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(first, 8, "the preface, and the connection stays open while a clone lives");
    assert!(tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await.is_err());
    drop(clone);
    let end = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
    assert!(matches!(end, Ok(Ok(0))), "the server sees the end of the stream: {end:?}");
}

#[tokio::test]
async fn a_dropped_channel_closes_its_socket_even_if_the_server_keeps_its_side_open() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::codec::Encoder;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let channel = Channel::connect(addr.to_string()).await.unwrap();
    let (mut stream, _) = listener.accept().await.unwrap();
    drop(channel);
    let mut buf = vec![0; 64];
    while tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap() > 0 {}
    // This server never closes. It keeps sending well-formed frames, which a client still
    // reading would accept, until the client's socket is gone.
    let pong = rpc_core::transport::Frame {
        id: 1,
        codec: 0,
        head: rpc_core::transport::Head::Pong,
        body: bytes::Bytes::new(),
    };
    let mut frame = bytes::BytesMut::new();
    rpc_core::transport::FrameCodec::default().encode(&pong, &mut frame).unwrap();
    let gone = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if stream.write_all(&frame).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the client kept its socket open after the channel was dropped");
}

/// Methods named with Rust keywords, as raw identifiers.
#[rpc_core::service]
pub trait Keywords {
    /// Answers `n + 1`.
    async fn r#yield(&self, n: u32) -> u32;
    /// Answers whether `r#type` is empty.
    async fn r#match(&self, r#type: String) -> bool;
}

struct Keyworded;

impl Keywords for Keyworded {
    async fn r#yield(&self, n: u32) -> u32 {
        n + 1
    }

    async fn r#match(&self, r#type: String) -> bool {
        r#type.is_empty()
    }
}

#[tokio::test]
async fn methods_named_with_raw_identifiers_are_served_under_their_plain_names() {
    let server = Server::builder().add_service(KeywordsServer::new(Keyworded)).start("127.0.0.1:0").await.unwrap();
    // A SocketAddr is an address as it stands.
    let channel = Channel::connect(server.local_addr()).await.unwrap();
    let client = KeywordsClient::new(channel.clone());
    assert_eq!(client.r#yield(41).await.unwrap(), 42);
    assert!(client.r#match(String::new()).await.unwrap());
    // The wire name is the plain word, as other languages' generated clients call it.
    let request = rpc_core::Request::new("Keywords", "yield", serde_json::json!({"n": 1}));
    let reply: serde_json::Value = rpc_core::Call::new(channel, request).await.unwrap();
    assert_eq!(reply, serde_json::json!(2));
}

/// Work a handler hands to a task of its own.
#[rpc_core::service]
pub trait Background {
    /// The remaining time of the call's deadline, in milliseconds, as a spawned task sees it.
    async fn remaining_in_task(&self) -> Option<u64>;
}

struct Spawner;

impl Background for Spawner {
    async fn remaining_in_task(&self) -> Option<u64> {
        let context = rpc_core::Context::current().expect("handlers run inside a context");
        let task =
            tokio::spawn(context.scope(async {
                rpc_core::Context::current().and_then(|c| c.remaining()).map(|r| r.as_millis() as u64)
            }));
        task.await.unwrap()
    }
}

#[tokio::test]
async fn a_task_a_handler_spawns_in_its_context_keeps_the_calls_deadline() {
    let server = Server::builder().add_service(BackgroundServer::new(Spawner)).start("127.0.0.1:0").await.unwrap();
    let channel = Channel::builder(server.local_addr()).timeout(Duration::from_secs(30)).connect_lazy();
    let remaining = BackgroundClient::new(channel).remaining_in_task().await.unwrap();
    assert!(remaining.is_some_and(|ms| ms > 20_000 && ms <= 30_000), "{remaining:?}");
}
