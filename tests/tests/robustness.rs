//! Bad input from the network: every case gets a typed error, and other connections keep
//! being served.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use rpc_core::{
    transport::{Frame, FrameCodec, Head, PREFACE},
    Code, Codec, Metadata,
};
use std::{net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::codec::{Decoder, Encoder};

/// Reads frames until the server closes the connection; returns them.
async fn read_until_closed(stream: &mut (impl AsyncReadExt + Unpin)) -> Vec<Frame> {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    loop {
        while let Some(frame) = codec.decode(&mut buf).expect("the server sends valid frames") {
            frames.push(frame);
        }
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_buf(&mut buf))
            .await
            .expect("the server answers bad input within 5 s instead of hanging");
        match read {
            Ok(0) | Err(_) => return frames,
            Ok(_) => {}
        }
    }
}

fn go_away_of(frames: &[Frame]) -> (Code, String) {
    frames
        .iter()
        .find_map(|f| match &f.head {
            Head::GoAway { code, message } => Some((*code, message.clone())),
            _ => None,
        })
        .expect("the server says why it closes the connection")
}

async fn raw_connection(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&PREFACE).await.unwrap();
    stream
}

fn call_frame(id: u32, codec: u8, method: &'static str, body: Bytes) -> BytesMut {
    let frame = Frame {
        id,
        codec,
        head: Head::Call {
            service: "Lab".into(),
            method: method.into(),
            timeout: None,
            metadata: Metadata::new(),
            oneway: false,
        },
        body,
    };
    let mut buf = BytesMut::new();
    FrameCodec::default().encode(&frame, &mut buf).unwrap();
    buf
}

/// Reads `n` frames (within 5 s each read), sorted by id.
async fn read_frames(stream: &mut TcpStream, n: usize) -> Vec<Frame> {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    while frames.len() < n {
        tokio::time::timeout(Duration::from_secs(5), stream.read_buf(&mut buf)).await.unwrap().unwrap();
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            frames.push(frame);
        }
    }
    frames.sort_by_key(|f| f.id);
    frames
}

/// Writes `chunks` one per `period` until they run out or the server closes the connection.
fn write_paced(
    mut write: tokio::net::tcp::OwnedWriteHalf,
    period: Duration,
    chunks: impl Iterator<Item = Bytes> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        for chunk in chunks {
            ticks.tick().await;
            if write.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
}

/// A healthy client on another connection still gets answers.
async fn assert_still_serving(server: &rpc_core::server::RunningServer) {
    let client = lab_client(server, Codec::MsgPack).await;
    assert_eq!(client.sleep_then(9, 0).await.unwrap(), 9);
}

#[tokio::test]
async fn oversized_length_prefix_is_refused_with_a_clear_error() {
    let (server, _lab) = start_lab().await;
    let healthy = lab_client(&server, Codec::MsgPack).await;
    let mut stream = raw_connection(server.local_addr()).await;
    stream.write_all(&0xFFFF_FFF0u32.to_be_bytes()).await.unwrap();
    let frames = read_until_closed(&mut stream).await;
    let (code, message) = go_away_of(&frames);
    assert_eq!(code, Code::Protocol);
    assert!(message.contains("exceeds the limit"), "{message}");
    assert_eq!(healthy.sleep_then(1, 0).await.unwrap(), 1, "an open connection is unaffected");
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn random_garbage_closes_only_that_connection() {
    let (server, _lab) = start_lab().await;
    let healthy = lab_client(&server, Codec::MsgPack).await;
    // A deterministic pseudo-random stream, after a valid preface.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut stream = raw_connection(server.local_addr()).await;
    let _ = stream.write_all(&garbage).await;
    let frames = read_until_closed(&mut stream).await;
    assert_eq!(go_away_of(&frames).0, Code::Protocol);
    assert_eq!(healthy.sleep_then(2, 0).await.unwrap(), 2);
}

#[tokio::test]
async fn garbage_instead_of_a_preface_is_refused() {
    let (server, _lab) = start_lab().await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let frames = read_until_closed(&mut stream).await;
    let (code, message) = go_away_of(&frames);
    assert_eq!(code, Code::Protocol);
    assert!(message.contains("preface"), "{message}");
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn a_truncated_frame_does_not_hang_the_server_or_others() {
    let (server, _lab) = start_lab().await;
    let healthy = lab_client(&server, Codec::MsgPack).await;
    let mut stream = raw_connection(server.local_addr()).await;
    let whole = call_frame(1, Codec::MsgPack.id(), "nothing", Bytes::from_static(&[0x80]));
    stream.write_all(&whole[..whole.len() - 3]).await.unwrap();
    stream.shutdown().await.unwrap();
    // The server sees the stream end inside a frame and closes without a reply to that call.
    let frames = read_until_closed(&mut stream).await;
    assert!(frames.iter().all(|f| !matches!(f.head, Head::Reply { .. })), "{frames:?}");
    assert_eq!(healthy.sleep_then(3, 0).await.unwrap(), 3);
}

#[tokio::test]
async fn an_undecodable_body_and_an_unknown_codec_get_typed_errors_on_a_live_connection() {
    let (server, _lab) = start_lab().await;
    let mut stream = raw_connection(server.local_addr()).await;
    let mut out = call_frame(1, Codec::MsgPack.id(), "echo", Bytes::from_static(b"\xc1\xc1\xc1"));
    out.extend_from_slice(&call_frame(2, 99, "nothing", Bytes::new()));
    out.extend_from_slice(&call_frame(3, Codec::Json.id(), "nothing", Bytes::from_static(b"{}")));
    stream.write_all(&out).await.unwrap();
    let replies = read_frames(&mut stream, 3).await;
    assert!(matches!(replies[0].head, Head::Error { code: Code::InvalidArgument, .. }), "{:?}", replies[0]);
    assert!(matches!(replies[1].head, Head::Error { code: Code::InvalidArgument, .. }), "{:?}", replies[1]);
    assert!(matches!(replies[2].head, Head::Reply { .. }), "the connection still works: {:?}", replies[2]);
}

#[tokio::test]
async fn a_reply_frame_from_a_client_is_a_protocol_error() {
    let (server, _lab) = start_lab().await;
    let mut stream = raw_connection(server.local_addr()).await;
    let frame = Frame { id: 1, codec: 0, head: Head::Reply { metadata: Metadata::new() }, body: Bytes::new() };
    let mut buf = BytesMut::new();
    FrameCodec::default().encode(&frame, &mut buf).unwrap();
    stream.write_all(&buf).await.unwrap();
    assert_eq!(go_away_of(&read_until_closed(&mut stream).await).0, Code::Protocol);
}

#[tokio::test]
async fn a_client_that_never_reads_is_throttled_not_buffered() {
    let (server, _lab) = start_lab_with(|builder| builder.max_in_flight_per_connection(64).write_queue(64)).await;
    let mut stream = raw_connection(server.local_addr()).await;
    // 2048 echo calls of 64 KiB each: 128 MiB, far more than socket buffers hold. Were the
    // server to read every call and keep the replies, all writes would complete; instead it
    // stops reading once its bounded queues are full, so our writes stall.
    let mut body = BytesMut::new();
    let item = Item { id: 1, name: "big".into(), data: vec![1; 64 * 1024] };
    Codec::MsgPack.encode(&serde_json::json!({ "item": item }), &mut body).unwrap();
    let call = call_frame(0, Codec::MsgPack.id(), "echo", body.freeze());
    let calls = 2048usize;
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        let mut batch = BytesMut::new();
        for id in 0..calls {
            let mut frame = call.clone();
            frame[7..11].copy_from_slice(&(id as u32).to_be_bytes());
            batch.put_slice(&frame);
            if batch.len() > 256 * 1024 {
                stream.write_all(&batch).await.unwrap();
                sent = id;
                batch.clear();
            }
        }
        (sent, stream)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!writer.is_finished(), "the server kept reading calls it could not answer");
    // Meanwhile another client is served normally.
    assert_still_serving(&server).await;
    writer.abort();
}

#[tokio::test]
async fn too_many_calls_in_flight_get_resource_exhausted() {
    let (server, lab) = start_lab_with(|builder| builder.max_in_flight_per_connection(4)).await;
    let client = lab_client(&server, Codec::MsgPack).await;
    let mut events = lab.events.subscribe();
    let slow: Vec<_> = (0..4)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move { c.sleep_then(i, 500).await })
        })
        .collect();
    // All four are running, in whatever order they started.
    let mut started = 0;
    while started < 4 {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("calls start").unwrap();
        started += usize::from(event.starts_with("started:"));
    }
    let err = client.sleep_then(99, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.not_started(), "the refusal says the call never ran, so it may go elsewhere");
    for call in slow {
        assert!(call.await.unwrap().is_ok());
    }
    assert_eq!(client.sleep_then(5, 0).await.unwrap(), 5, "capacity comes back");
}

#[tokio::test]
async fn connections_over_the_limit_are_told_why() {
    let (server, _lab) = start_lab_with(|builder| builder.max_connections(1)).await;
    let first = lab_client(&server, Codec::MsgPack).await;
    assert_eq!(first.sleep_then(1, 0).await.unwrap(), 1);
    let second = LabClient::new(rpc_core::Channel::builder(server.local_addr().to_string()).connect_lazy());
    let err = second.sleep_then(2, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("limit"), "{err}");
    assert_eq!(first.sleep_then(3, 0).await.unwrap(), 3, "the admitted connection is unaffected");
}

#[tokio::test]
async fn a_frame_larger_than_the_clients_limit_is_refused_before_sending() {
    let (server, _lab) = start_lab().await;
    let channel =
        rpc_core::Channel::builder(server.local_addr().to_string()).max_frame_size(1024).connect().await.unwrap();
    let client = LabClient::new(channel);
    let err = client.echo(Item { id: 1, name: String::new(), data: vec![0; 4096] }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("exceeds the limit"), "{err}");
    assert_eq!(client.sleep_then(4, 0).await.unwrap(), 4);
}

#[tokio::test]
async fn a_reply_larger_than_the_clients_limit_fails_that_connection_clearly() {
    let (server, _lab) = start_lab().await;
    let channel =
        rpc_core::Channel::builder(server.local_addr().to_string()).max_frame_size(16 * 1024).connect().await.unwrap();
    let client = LabClient::new(channel);
    let err = client.blob(1 << 20).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("exceeds the limit"), "{err}");
    // The channel reconnects for the next call.
    let mut last = None;
    for _ in 0..50 {
        match client.sleep_then(6, 0).await {
            Ok(v) => {
                last = Some(v);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(last, Some(6));
}

#[tokio::test]
async fn a_reply_the_wire_cannot_carry_fails_only_its_call() {
    let (server, _lab) = start_lab_with(|builder| builder.max_frame_size(64 * 1024)).await;
    let client = lab_client(&server, Codec::MsgPack).await;
    // A call in flight on the same connection meanwhile: a torn-down connection would fail it.
    let bystander = tokio::spawn({
        let client = client.clone();
        async move { client.sleep_then(7, 300).await }
    });
    let too_large = client.blob(1 << 20).await.unwrap_err();
    assert_eq!(too_large.code(), Code::ResourceExhausted, "{too_large}");
    assert!(too_large.message().contains("over the server's frame limit"), "{too_large}");
    let bad_metadata = client.tag_reply(Metadata::MAX_VALUE_LEN as u32 + 1).await.unwrap_err();
    assert_eq!(bad_metadata.code(), Code::Internal, "{bad_metadata}");
    assert!(bad_metadata.message().contains("reply metadata"), "{bad_metadata}");
    client.tag_reply(16).await.expect("metadata within the limits is sent");
    assert_eq!(bystander.await.unwrap().unwrap(), 7, "the other call on the connection was unaffected");
}

#[tokio::test]
async fn a_second_call_under_a_running_calls_id_is_refused_before_it_runs() {
    let (server, lab) = start_lab().await;
    let mut stream = raw_connection(server.local_addr()).await;
    let json = Codec::Json.id();
    let mut out = call_frame(5, json, "hang", Bytes::from_static(br#"{"tag":"first"}"#));
    out.extend_from_slice(&call_frame(5, json, "notify", Bytes::from_static(br#"{"note":"duplicate"}"#)));
    out.extend_from_slice(&call_frame(6, json, "nothing", Bytes::from_static(b"{}")));
    stream.write_all(&out).await.unwrap();
    let replies = read_frames(&mut stream, 2).await;
    match &replies[0].head {
        Head::Error { code: Code::InvalidArgument, message, .. } => assert!(message.contains("not run"), "{message}"),
        other => panic!("the duplicate must be refused: {other:?}"),
    }
    assert!(matches!(replies[1].head, Head::Reply { .. }), "the connection still works: {:?}", replies[1]);
    assert!(lab.events.notes.lock().unwrap().is_empty(), "the duplicate call's handler ran");
}

#[tokio::test]
async fn a_client_that_only_pings_is_closed_as_idle() {
    let (server, _lab) = start_lab_with(|builder| builder.idle_timeout(Duration::from_millis(300))).await;
    let (mut read, write) = raw_connection(server.local_addr()).await.into_split();
    let ping = Frame { id: 0, codec: 0, head: Head::Ping, body: Bytes::from_static(b"hi") };
    let mut ping_bytes = BytesMut::new();
    FrameCodec::default().encode(&ping, &mut ping_bytes).unwrap();
    // The client pings steadily, and does nothing else, until the server closes the connection.
    let pinger = write_paced(write, Duration::from_millis(50), std::iter::repeat(ping_bytes.freeze()));
    let frames = tokio::time::timeout(Duration::from_secs(10), read_until_closed(&mut read))
        .await
        .expect("pings kept the connection open past its idle timeout");
    pinger.abort();
    let go_away = go_away_of(&frames);
    assert_eq!(go_away.0, Code::Unavailable);
    assert!(go_away.1.contains("idle"), "{}", go_away.1);
}

#[tokio::test]
async fn a_client_that_trickles_a_frame_is_cut_after_the_frame_timeout() {
    let (server, _lab) = start_lab_with(|builder| {
        builder.idle_timeout(Duration::from_secs(600)).frame_timeout(Duration::from_millis(300))
    })
    .await;
    let (mut read, write) = raw_connection(server.local_addr()).await.into_split();
    let frame = call_frame(1, Codec::Json.id(), "echo", Bytes::from(vec![b' '; 10_000]));
    // One byte every 20 ms: bytes keep arriving, but the frame would take over three minutes.
    let bytes: Vec<Bytes> = frame.iter().map(|byte| Bytes::copy_from_slice(&[*byte])).collect();
    let trickler = write_paced(write, Duration::from_millis(20), bytes.into_iter());
    let frames = tokio::time::timeout(Duration::from_secs(10), read_until_closed(&mut read))
        .await
        .expect("a trickled frame held the connection open past its frame timeout");
    trickler.abort();
    let go_away = go_away_of(&frames);
    assert_eq!(go_away.0, Code::Protocol);
    assert!(go_away.1.contains("incomplete"), "{}", go_away.1);

    let client = lab_client(&server, Codec::Json).await;
    assert_eq!(client.get(2).await.unwrap().unwrap().id, 2, "other clients are served");
}

#[tokio::test]
async fn running_handlers_are_capped_across_connections_and_refusals_never_started() {
    let (server, lab) = start_lab_with(|builder| builder.max_handlers(4)).await;
    let mut events = lab.events.subscribe();
    let (a, b) = (lab_client(&server, Codec::MsgPack).await, lab_client(&server, Codec::Json).await);
    let mut hanging = Vec::new();
    for (i, client) in [&a, &a, &b, &b].into_iter().enumerate() {
        let client = client.clone();
        hanging.push(tokio::spawn(async move { client.hang(format!("h{i}")).await }));
        expect_event(&mut events, &format!("hanging:h{i}")).await;
    }

    for client in [&a, &b] {
        let refused = client.get(2).await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
        assert!(refused.not_started(), "refused before it ran, so safe to retry: {refused}");
        assert!(refused.message().contains("4 handlers"), "{refused}");
    }
    assert!(lab.events.notes.lock().unwrap().is_empty());

    hanging.remove(0).abort();
    expect_event(&mut events, "cancelled:h0").await;
    // The handler's permit goes with its task, dropped just after the event.
    let mut reply = a.get(2).await;
    for _ in 0..1000 {
        if reply.is_ok() {
            break;
        }
        tokio::task::yield_now().await;
        reply = a.get(2).await;
    }
    assert_eq!(reply.unwrap().unwrap().id, 2, "a freed handler slot serves the next call");
}

#[tokio::test]
async fn connections_past_the_per_address_limit_are_told_why_and_closed() {
    let (server, _lab) = start_lab_with(|builder| builder.max_connections_per_peer(2)).await;
    let (a, b) = (lab_client(&server, Codec::MsgPack).await, lab_client(&server, Codec::MsgPack).await);
    let mut third = raw_connection(server.local_addr()).await;
    let go_away = go_away_of(&read_until_closed(&mut third).await);
    assert_eq!(go_away.0, Code::ResourceExhausted);
    assert!(go_away.1.contains("per client address"), "{}", go_away.1);
    for client in [&a, &b] {
        assert_eq!(client.get(2).await.unwrap().unwrap().id, 2, "the first two connections are served");
    }
}

#[tokio::test]
async fn replies_clients_leave_unread_are_capped_across_the_server() {
    let (server, _lab) = start_lab_with(|builder| builder.max_reply_bytes(1 << 20)).await;
    // A client asks for 50 MiB of replies that come from handler tasks, and never reads.
    let mut stalled = raw_connection(server.local_addr()).await;
    let mut calls = BytesMut::new();
    for id in 1..=100 {
        calls.extend_from_slice(&call_frame(
            id,
            Codec::Json.id(),
            "blob_later",
            Bytes::from_static(br#"{"n":262144}"#),
        ));
    }
    stalled.write_all(&calls).await.unwrap();

    let healthy = lab_client(&server, Codec::MsgPack).await;
    let refused = until_refused("unread replies past the server's budget refuse new calls", || healthy.get(2)).await;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    assert!(refused.not_started(), "refused before it ran, so safe to retry elsewhere: {refused}");
    assert!(refused.message().contains("not read"), "{refused}");

    // Once the stalled client goes, its replies are dropped and calls are taken again.
    drop(stalled);
    let served = until_served("the budget is freed when the stalled connection closes", || healthy.get(2)).await;
    assert_eq!(served.unwrap().id, 2);
}

#[tokio::test]
async fn large_requests_wait_for_the_servers_request_byte_budget() {
    let metrics = rpc_core::metrics::Metrics::new();
    let (server, _lab) = start_lab_with(|builder| builder.max_request_bytes(1 << 20).metrics(metrics.clone())).await;
    let echo = |id: u32, name_len: usize| {
        let body = format!(r#"{{"item":{{"id":{id},"name":"{}","data":[]}}}}"#, "x".repeat(name_len));
        call_frame(id, Codec::Json.id(), "echo", Bytes::from(body))
    };
    // A's frame declares 900 KiB and arrives in part: the server takes its bytes from the budget.
    let a_frame = echo(1, 900 * 1024);
    let (mut a, mut b) = (raw_connection(server.local_addr()).await, raw_connection(server.local_addr()).await);
    a.write_all(&a_frame[..100 * 1024]).await.unwrap();
    wait_for_series(&metrics, "rpc_server_request_bytes", |bytes| bytes >= 900.0 * 1024.0).await;
    // B's whole 600 KiB frame does not fit beside it: B is not read until A's call is done.
    b.write_all(&echo(2, 600 * 1024)).await.unwrap();
    wait_for_series(&metrics, "rpc_server_reads_paused", |paused| paused == 1.0).await;
    assert!(
        matches!(b.try_read(&mut [0; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "B's call was not answered while it waited"
    );

    a.write_all(&a_frame[100 * 1024..]).await.unwrap();
    let a_reply = read_frames(&mut a, 1).await;
    assert!(matches!(a_reply[0].head, Head::Reply { .. }), "{:?}", a_reply[0].head);
    let b_reply = read_frames(&mut b, 1).await;
    assert!(matches!(b_reply[0].head, Head::Reply { .. }), "{:?}", b_reply[0].head);
    assert_eq!(b_reply[0].id, 2);
    wait_for_series(&metrics, "rpc_server_request_bytes", |bytes| bytes == 0.0).await;
}
