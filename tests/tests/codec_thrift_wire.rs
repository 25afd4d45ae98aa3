//! Apache Thrift framing on our port, without Python: detection, limits and hostile frames.

mod common;

use common::wait_for_series;
use rpc_core::{Codec, Server, ThriftChannel};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A note with a text.
#[rpc_core::message]
pub struct Note {
    pub text: String,
}

/// Echoes.
#[rpc_core::service]
pub trait Echo {
    /// Returns the note's text (a struct argument: Thrift has no default for it).
    async fn read(&self, note: Note) -> String;
    /// Returns its argument.
    async fn echo(&self, text: String) -> String;
    /// Fails on purpose.
    async fn boom(&self) -> u32;
    /// Answers after `millis`.
    async fn slow(&self, millis: u64) -> u64;
    /// Returns `text` `times` times over.
    async fn repeat(&self, text: String, times: u32) -> String;
}

struct MyEcho;

impl Echo for MyEcho {
    async fn read(&self, note: Note) -> String {
        note.text
    }
    async fn echo(&self, text: String) -> String {
        text
    }
    async fn boom(&self) -> u32 {
        panic!("boom")
    }
    async fn slow(&self, millis: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        millis
    }
    async fn repeat(&self, text: String, times: u32) -> String {
        text.repeat(times as usize)
    }
}

async fn closes_without_answer(addr: std::net::SocketAddr, bytes: &[u8]) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("the server closes");
    assert_eq!(n.unwrap_or(0), 0, "no answer to {bytes:?}");
}

#[tokio::test]
async fn our_thrift_channel_calls_our_server_and_hostile_frames_only_close_their_connection() {
    let server = Server::builder().add_service(EchoServer::new(MyEcho)).start("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr();
    for codec in [Codec::ThriftBinary, Codec::ThriftCompact] {
        let client = EchoClient::new(ThriftChannel::connect(addr, codec).await.unwrap());
        assert_eq!(client.echo("ünï".into()).await.unwrap(), "ünï", "{codec}");
        let err = client.boom().await.unwrap_err();
        assert_eq!(err.code(), rpc_core::Code::Internal, "{codec}: a panic is an exception, not a dead connection");
        assert!(err.message().contains("panicked"), "{err}");
        assert_eq!(client.echo(String::new()).await.unwrap(), "", "{codec}: the connection survives");
    }
    // A frame over the 16 MiB limit, a binary header whose name length lies, a compact header
    // cut short: each closes its connection.
    closes_without_answer(addr, &[0x7f, 0xff, 0xff, 0xff, 0x80, 0x01, 0x00, 0x01]).await;
    closes_without_answer(addr, &[0, 0, 0, 12, 0x80, 0x01, 0x00, 0x01, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]).await;
    closes_without_answer(addr, &[0, 0, 0, 4, 0x82, 0x21, 0xff, 0xff]).await;
    assert!(ThriftChannel::connect(addr, Codec::Json).await.is_err(), "a ThriftChannel speaks only Thrift");
    let client = EchoClient::new(rpc_core::Channel::connect(addr.to_string()).await.unwrap());
    assert_eq!(client.echo("still here".into()).await.unwrap(), "still here");
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn a_thrift_channel_reconnects_after_its_server_restarts() {
    let server = Server::builder().add_service(EchoServer::new(MyEcho)).start("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr();
    let client = EchoClient::new(ThriftChannel::connect(addr, Codec::ThriftCompact).await.unwrap());
    assert_eq!(client.echo("before".into()).await.unwrap(), "before");
    server.shutdown(Duration::from_secs(1)).await.unwrap();
    let err = client.echo("down".into()).await.unwrap_err();
    assert_eq!(err.code(), rpc_core::Code::Unavailable, "{err}");
    let server = Server::builder().add_service(EchoServer::new(MyEcho)).start(addr).await.unwrap();
    assert_eq!(client.echo("after".into()).await.unwrap(), "after", "the next call connects again");
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn a_call_dropped_before_its_reply_does_not_hand_that_reply_to_the_next_call() {
    let server = Server::builder().add_service(EchoServer::new(MyEcho)).start("127.0.0.1:0").await.unwrap();
    let client = EchoClient::new(ThriftChannel::connect(server.local_addr(), Codec::ThriftBinary).await.unwrap());
    let dropped = tokio::time::timeout(Duration::from_millis(50), client.slow(300)).await;
    assert!(dropped.is_err(), "the slow call is dropped before it answers");
    assert_eq!(client.echo("next".into()).await.unwrap(), "next");
    assert_eq!(client.slow(1).await.unwrap(), 1);
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn a_thrift_channel_reconnects_when_the_server_closed_its_idle_connection() {
    let server = Server::builder()
        .idle_timeout(Duration::from_millis(100))
        .add_service(EchoServer::new(MyEcho))
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let client = EchoClient::new(ThriftChannel::connect(server.local_addr(), Codec::ThriftBinary).await.unwrap());
    assert_eq!(client.echo("first".into()).await.unwrap(), "first");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(client.echo("after idle".into()).await.unwrap(), "after idle", "not a call lost on a closed socket");
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// Sends one framed Thrift binary call of `method` with no arguments; returns the reply's bytes.
async fn call_without_arguments(stream: &mut tokio::net::TcpStream, method: &str) -> Vec<u8> {
    let mut message = vec![0x80, 0x01, 0x00, 0x01];
    message.extend_from_slice(&(method.len() as u32).to_be_bytes());
    message.extend_from_slice(method.as_bytes());
    message.extend_from_slice(&7u32.to_be_bytes());
    message.push(0); // the arguments struct's stop field: no arguments at all
    stream.write_all(&(message.len() as u32).to_be_bytes()).await.unwrap();
    stream.write_all(&message).await.unwrap();
    let len = tokio::time::timeout(Duration::from_secs(5), stream.read_u32()).await.expect("an answer").unwrap();
    let mut reply = vec![0; len as usize];
    stream.read_exact(&mut reply).await.unwrap();
    reply
}

#[tokio::test]
async fn thrift_errors_name_the_service_method_and_argument_as_written() {
    let server = Server::builder().add_service(EchoServer::new(MyEcho)).start("127.0.0.1:0").await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();

    let reply = call_without_arguments(&mut stream, "read").await;
    assert_eq!(reply[3], 3, "a Thrift exception: {reply:?}");
    let reply = String::from_utf8_lossy(&reply).into_owned();
    assert!(reply.contains("arguments of Echo.read could not be decoded"), "{reply:?}");
    assert!(reply.contains("argument `note` is missing"), "{reply:?}");
    assert!(!reply.contains("__"), "no generated names: {reply:?}");

    let reply = String::from_utf8_lossy(&call_without_arguments(&mut stream, "nope").await).into_owned();
    assert!(reply.contains("no service here has a method \"nope\""), "{reply:?}");
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn server_layers_see_a_plain_thrift_call_under_the_service_that_has_its_method() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let server = Server::builder()
        .layer(tower::util::MapRequestLayer::new(move |request: rpc_core::ServerRequest| {
            record.lock().unwrap().push(format!("{}.{}", request.service(), request.method()));
            request
        }))
        .add_service(EchoServer::new(MyEcho))
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let mut stream = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    call_without_arguments(&mut stream, "boom").await;
    call_without_arguments(&mut stream, "nope").await;
    assert_eq!(*seen.lock().unwrap(), ["Echo.boom", ".nope"], "a method no service has keeps no service name");
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn a_thrift_reply_over_the_frame_limit_fails_only_its_call() {
    let server =
        Server::builder().add_service(EchoServer::new(MyEcho)).max_frame_size(4096).start("127.0.0.1:0").await.unwrap();
    for codec in [Codec::ThriftBinary, Codec::ThriftCompact] {
        let client = EchoClient::new(ThriftChannel::connect(server.local_addr(), codec).await.unwrap());
        let err = match client.repeat("abcd".into(), 2000).await {
            Ok(text) => panic!("{codec}: a {}-byte reply over the 4096-byte frame limit was sent", text.len()),
            Err(err) => err,
        };
        assert_eq!(err.code(), rpc_core::Code::ResourceExhausted, "{codec}: {err}");
        assert!(err.message().contains("over the server's frame limit of 4096"), "{codec}: {err}");
        assert_eq!(client.repeat("ab".into(), 3).await.unwrap(), "ababab", "{codec}: the connection carries on");
    }
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// A framed Thrift binary call of `echo` whose text is `len` bytes.
fn echo_frame(len: usize) -> Vec<u8> {
    let mut message = vec![0x80, 0x01, 0x00, 0x01];
    message.extend_from_slice(&4u32.to_be_bytes());
    message.extend_from_slice(b"echo");
    message.extend_from_slice(&1u32.to_be_bytes());
    message.push(11); // a string field
    message.extend_from_slice(&1i16.to_be_bytes());
    message.extend_from_slice(&(len as u32).to_be_bytes());
    message.resize(message.len() + len, b'x');
    message.push(0); // the arguments struct's stop field
    let mut frame = (message.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&message);
    frame
}

/// Reads one framed Thrift message and returns its message type (2: reply, 3: exception).
async fn read_message_type(stream: &mut tokio::net::TcpStream) -> u8 {
    let len = tokio::time::timeout(Duration::from_secs(10), stream.read_u32()).await.expect("an answer").unwrap();
    let mut reply = vec![0; len as usize];
    stream.read_exact(&mut reply).await.unwrap();
    reply[3]
}

#[tokio::test]
async fn large_thrift_frames_wait_for_the_servers_request_byte_budget() {
    let metrics = rpc_core::metrics::Metrics::new();
    let server = Server::builder()
        .add_service(EchoServer::new(MyEcho))
        .max_request_bytes(1 << 20)
        .metrics(metrics.clone())
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let addr = server.local_addr();
    let (mut a, mut b) =
        (tokio::net::TcpStream::connect(addr).await.unwrap(), tokio::net::TcpStream::connect(addr).await.unwrap());
    // A's frame declares about 900 KiB and arrives in part: the server takes its bytes from the budget.
    let a_frame = echo_frame(900 * 1024);
    a.write_all(&a_frame[..100 * 1024]).await.unwrap();
    wait_for_series(&metrics, "rpc_server_request_bytes", |bytes| bytes >= 900.0 * 1024.0).await;
    // B's whole 600 KiB frame does not fit beside it: B is not read until A's call is answered.
    b.write_all(&echo_frame(600 * 1024)).await.unwrap();
    wait_for_series(&metrics, "rpc_server_reads_paused", |paused| paused == 1.0).await;
    assert!(
        matches!(b.try_read(&mut [0; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "B's call was not answered while it waited"
    );

    a.write_all(&a_frame[100 * 1024..]).await.unwrap();
    assert_eq!(read_message_type(&mut a).await, 2, "A's call is answered");
    assert_eq!(read_message_type(&mut b).await, 2, "then B's");
    wait_for_series(&metrics, "rpc_server_request_bytes", |bytes| bytes == 0.0).await;
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn a_thrift_client_that_trickles_a_frame_is_cut_after_the_frame_timeout() {
    let server = Server::builder()
        .add_service(EchoServer::new(MyEcho))
        .idle_timeout(Duration::from_secs(600))
        .frame_timeout(Duration::from_millis(300))
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let (mut read, mut write) = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap().into_split();
    // A 10 000-byte frame, one byte every 20 ms: it would take over three minutes.
    let trickler = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        for byte in 10_000u32.to_be_bytes().into_iter().chain([0x80, 0x01, 0x00, 0x01]).chain(std::iter::repeat(0)) {
            ticks.tick().await;
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
        }
    });
    let closed = tokio::time::timeout(Duration::from_secs(10), read.read(&mut [0; 16]))
        .await
        .expect("a trickled Thrift frame held the connection open past its frame timeout");
    trickler.abort();
    assert_eq!(closed.unwrap_or(0), 0, "closed without an answer");
    let client = EchoClient::new(ThriftChannel::connect(server.local_addr(), Codec::ThriftBinary).await.unwrap());
    assert_eq!(client.echo("served".into()).await.unwrap(), "served", "other clients are served");
}

#[tokio::test]
async fn a_running_thrift_call_holds_a_handler_slot_and_ends_with_the_grace_period() {
    let server =
        Server::builder().add_service(EchoServer::new(MyEcho)).max_handlers(1).start("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr();
    let slow = EchoClient::new(ThriftChannel::connect(addr, Codec::ThriftBinary).await.unwrap());
    let running = tokio::spawn(async move { slow.slow(600_000).await });
    let other = EchoClient::new(ThriftChannel::connect(addr, Codec::ThriftCompact).await.unwrap());
    // Refused once the slow call holds the server's one handler slot.
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Err(status) = other.echo("x".into()).await {
                return status;
            }
        }
    })
    .await
    .expect("a running Thrift handler counts against the server's handler limit");
    assert!(refused.message().contains("1 handlers"), "{refused}");

    let shutdown = tokio::time::timeout(Duration::from_secs(10), server.shutdown(Duration::from_millis(100)));
    shutdown.await.expect("a running Thrift call does not hold the shutdown past its grace").unwrap();
    let cut = running.await.unwrap().unwrap_err();
    assert_eq!(cut.code(), rpc_core::Code::Unavailable, "{cut}");
    assert!(cut.message().contains("grace period ended"), "{cut}");
}
