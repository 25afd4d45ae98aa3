//! Streaming calls over real sockets: server, client and bidirectional streams with every codec,
//! flow control, cancellation from either side, deadlines, panics, limits and connection loss.

use futures_util::{stream, StreamExt};
use rpc_core::{Channel, Code, Codec, Context, RpcStream, Server, Status, Streaming};
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

#[rpc_core::message]
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub seq: u64,
    pub text: String,
}

#[rpc_core::message]
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub last: u64,
}

#[rpc_core::message]
#[derive(Debug, Clone, PartialEq)]
pub struct Oops {
    pub at: u64,
}

#[rpc_core::service]
pub trait Logs {
    /// Lines `from .. from + count`, each with `width` bytes of text.
    async fn tail(&self, from: u64, count: u64, width: u32) -> RpcStream<Line>;
    /// Lines without end, as fast as the client takes them; reports `cancelled:TAG` when dropped.
    async fn follow(&self, tag: String) -> RpcStream<Line>;
    /// `count` items, the one at `fail_at` a typed error.
    async fn checked(&self, count: u64, fail_at: u64) -> RpcStream<Result<Line, Oops>>;
    /// `after` lines, then a panic.
    async fn explode_after(&self, after: u64) -> RpcStream<Line>;
    /// `after` lines, then the stream fails with `ABORTED`.
    async fn abort_after(&self, after: u64) -> RpcStream<Line>;
    /// Counts the lines the client sends.
    async fn upload(&self, lines: Streaming<Line>) -> Summary;
    /// Sends each line back with its sequence number doubled.
    async fn chat(&self, lines: Streaming<Line>) -> RpcStream<Line>;
    /// Reads the client's lines and reports how their stream ended (`input:CODE`).
    async fn drain(&self, lines: Streaming<Line>) -> Summary;
    /// One line whose text is the request's `tenant` metadata; `rows` in the trailers.
    async fn meta(&self, rows: String) -> RpcStream<Line>;
}

struct Shelf {
    /// Lines `follow` produced.
    produced: Arc<AtomicU64>,
    events: mpsc::UnboundedSender<String>,
}

/// Reports `cancelled:TAG` when the stream holding it is dropped.
struct OnDrop(String, mpsc::UnboundedSender<String>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        let _ = self.1.send(format!("cancelled:{}", self.0));
    }
}

fn line(seq: u64, width: usize) -> Line {
    Line { seq, text: "x".repeat(width) }
}

impl Logs for Shelf {
    async fn tail(&self, from: u64, count: u64, width: u32) -> RpcStream<Line> {
        RpcStream::iter((from..from + count).map(move |seq| line(seq, width as usize)))
    }

    async fn follow(&self, tag: String) -> RpcStream<Line> {
        let guard = OnDrop(tag, self.events.clone());
        let produced = self.produced.clone();
        RpcStream::new(stream::iter(0..).map(move |seq| {
            let _hold = &guard;
            produced.fetch_add(1, Ordering::SeqCst);
            line(seq, 100)
        }))
    }

    async fn checked(&self, count: u64, fail_at: u64) -> RpcStream<Result<Line, Oops>> {
        RpcStream::iter(
            (0..count).map(move |seq| if seq == fail_at { Err(Oops { at: seq }) } else { Ok(line(seq, 4)) }),
        )
    }

    async fn explode_after(&self, after: u64) -> RpcStream<Line> {
        RpcStream::new(stream::iter(0..).map(move |seq| {
            assert!(seq < after, "exploded at {seq}");
            line(seq, 4)
        }))
    }

    async fn abort_after(&self, after: u64) -> RpcStream<Line> {
        RpcStream::try_new(stream::iter(0..).map(move |seq| match seq < after {
            true => Ok(line(seq, 4)),
            false => Err(Status::aborted("the log was rotated")),
        }))
    }

    async fn upload(&self, mut lines: Streaming<Line>) -> Summary {
        let mut summary = Summary { count: 0, last: 0 };
        while let Some(Ok(line)) = lines.next().await {
            summary.count += 1;
            summary.last = line.seq;
        }
        summary
    }

    async fn chat(&self, lines: Streaming<Line>) -> RpcStream<Line> {
        RpcStream::try_new(lines.map(|line| line.map(|l| Line { seq: l.seq * 2, text: l.text })))
    }

    async fn drain(&self, mut lines: Streaming<Line>) -> Summary {
        let mut count = 0;
        let end = loop {
            match lines.next().await {
                Some(Ok(_)) => {
                    if count == 0 {
                        let _ = self.events.send("reading".to_owned());
                    }
                    count += 1;
                }
                Some(Err(status)) => break status.code().name().to_owned(),
                None => break "OK".to_owned(),
            }
        };
        let _ = self.events.send(format!("input:{end}"));
        Summary { count, last: 0 }
    }

    async fn meta(&self, rows: String) -> RpcStream<Line> {
        let context = Context::current().expect("a handler has a context");
        context.set_reply_metadata("rows", &rows);
        let tenant = context.metadata().get("tenant").unwrap_or_default().to_owned();
        RpcStream::iter([Line { seq: 0, text: tenant }])
    }
}

struct Fixture {
    addr: String,
    produced: Arc<AtomicU64>,
    events: mpsc::UnboundedReceiver<String>,
    _server: rpc_core::server::RunningServer,
}

async fn serve_with(builder: rpc_core::ServerBuilder) -> Fixture {
    let (tx, events) = mpsc::unbounded_channel();
    let produced = Arc::new(AtomicU64::new(0));
    let server = builder
        .add_service(LogsServer::new(Shelf { produced: produced.clone(), events: tx }))
        .start("127.0.0.1:0")
        .await
        .unwrap();
    Fixture { addr: server.local_addr().to_string(), produced, events, _server: server }
}

async fn serve() -> Fixture {
    serve_with(Server::builder()).await
}

impl Fixture {
    async fn client(&self, codec: Codec) -> LogsClient {
        LogsClient::new(Channel::builder(self.addr.clone()).codec(codec).connect().await.unwrap())
    }

    /// The next event the service reported, failing after a generous bound.
    async fn event(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(10), self.events.recv()).await.expect("no event").unwrap()
    }
}

const CODECS: [Codec; 5] = [Codec::Protobuf, Codec::ThriftBinary, Codec::ThriftCompact, Codec::Json, Codec::MsgPack];

#[tokio::test]
async fn a_server_stream_of_100k_items_arrives_in_order_with_none_lost() {
    let fixture = serve().await;
    let client = fixture.client(Codec::Protobuf).await;
    let mut lines = client.tail(7, 100_000, 16).await.unwrap();
    let mut expected = 7;
    while let Some(line) = lines.next().await {
        assert_eq!(line.unwrap().seq, expected);
        expected += 1;
    }
    assert_eq!(expected, 100_007);
}

#[tokio::test]
async fn server_client_and_bidi_streams_work_with_every_codec() {
    let fixture = serve().await;
    for codec in CODECS {
        let client = fixture.client(codec).await;
        let lines: Vec<u64> = client.tail(0, 500, 8).await.unwrap().map(|l| l.unwrap().seq).collect().await;
        assert_eq!(lines, (0..500).collect::<Vec<_>>(), "{codec:?}");

        let summary = client.upload(stream::iter((0..700).map(|seq| line(seq, 8)))).await.unwrap();
        assert_eq!(summary, Summary { count: 700, last: 699 }, "{codec:?}");

        let doubled: Vec<u64> = client
            .chat(stream::iter((0..300).map(|seq| line(seq, 8))))
            .await
            .unwrap()
            .map(|l| l.unwrap().seq)
            .collect()
            .await;
        assert_eq!(doubled, (0..300).map(|s| s * 2).collect::<Vec<_>>(), "{codec:?}");
    }
}

#[tokio::test]
async fn bidi_replies_arrive_while_the_client_is_still_sending() {
    let fixture = serve().await;
    let client = fixture.client(Codec::Protobuf).await;
    let (tx, rx) = mpsc::channel(1);
    let mut replies = client.chat(rpc_core::stream::from_receiver(rx)).await.unwrap();
    for seq in 0..50 {
        tx.send(line(seq, 8)).await.unwrap();
        // The reply to each line comes back before the next one is sent: a real conversation.
        assert_eq!(replies.next().await.unwrap().unwrap().seq, seq * 2);
    }
    drop(tx);
    assert!(replies.next().await.is_none(), "the server ends the stream after the client half-closes");
}

#[tokio::test]
async fn typed_errors_arrive_as_items_and_statuses_end_the_stream() {
    let fixture = serve().await;
    let client = fixture.client(Codec::Protobuf).await;
    let items: Vec<Result<Line, Oops>> = client.checked(4, 2).await.unwrap().map(Result::unwrap).collect().await;
    assert_eq!(items, vec![Ok(line(0, 4)), Ok(line(1, 4)), Err(Oops { at: 2 }), Ok(line(3, 4))]);

    let mut lines = client.abort_after(3).await.unwrap();
    for seq in 0..3 {
        assert_eq!(lines.next().await.unwrap().unwrap().seq, seq);
    }
    let failed = lines.next().await.unwrap().unwrap_err();
    assert_eq!((failed.code(), failed.message()), (Code::Aborted, "the log was rotated"));
    assert!(lines.next().await.is_none());
}

#[tokio::test]
async fn dropping_the_client_stream_cancels_the_handler() {
    let mut fixture = serve().await;
    let client = fixture.client(Codec::Protobuf).await;
    let mut lines = client.follow("dropped".into()).await.unwrap();
    for _ in 0..3 {
        lines.next().await.unwrap().unwrap();
    }
    drop(lines);
    assert_eq!(fixture.event().await, "cancelled:dropped");
}

#[tokio::test]
async fn the_deadline_covers_the_whole_stream_on_both_ends() {
    let mut fixture = serve().await;
    let client = fixture.client(Codec::Protobuf).await;
    let mut lines = client.follow("late".into()).timeout(Duration::from_millis(300)).await.unwrap();
    let mut received = 0u64;
    let failed = loop {
        match lines.next().await.expect("the stream ends with an error, not silently") {
            Ok(_) => received += 1,
            Err(status) => break status,
        }
    };
    assert_eq!(failed.code(), Code::DeadlineExceeded, "{failed}");
    assert!(received > 0, "items flowed before the deadline");
    assert_eq!(fixture.event().await, "cancelled:late", "the server cancelled its handler too");
}

#[tokio::test]
async fn a_panic_mid_stream_fails_that_stream_only() {
    let fixture = serve().await;
    let client = fixture.client(Codec::Protobuf).await;
    let mut healthy = client.tail(0, 1000, 8).await.unwrap();
    let mut exploding = client.explode_after(5).await.unwrap();
    for seq in 0..5 {
        assert_eq!(exploding.next().await.unwrap().unwrap().seq, seq);
    }
    let failed = exploding.next().await.unwrap().unwrap_err();
    assert_eq!(failed.code(), Code::Internal);
    assert!(failed.message().contains("exploded at 5"), "{failed}");
    let mut count = 0;
    while let Some(line) = healthy.next().await {
        line.unwrap();
        count += 1;
    }
    assert_eq!(count, 1000, "the other stream on the connection is untouched");
    assert_eq!(client.tail(0, 1, 1).await.unwrap().count().await, 1, "the connection still opens streams");
}

#[tokio::test]
async fn a_slow_consumer_holds_a_fast_producer_to_its_window() {
    let fixture = serve().await;
    // Items of 100 bytes of text, about 105 encoded; a window of 1 KiB holds about ten.
    let window = 1024u64;
    let channel = Channel::builder(fixture.addr.clone()).stream_window(window as u32).connect().await.unwrap();
    let client = LogsClient::new(channel);
    let mut lines = client.follow("slow".into()).await.unwrap();
    let mut consumed = 0u64;
    for _ in 0..10 {
        // A consumer slower than any producer: one item per 50 ms.
        tokio::time::sleep(Duration::from_millis(50)).await;
        lines.next().await.unwrap().unwrap();
        consumed += 1;
        let produced = fixture.produced.load(Ordering::SeqCst);
        // In flight at most: one window, the item that overdraws it, the one the server holds.
        let bound = consumed + window / 100 + 2;
        assert!(produced <= bound, "{produced} items produced for {consumed} consumed (bound {bound})");
    }
}

#[tokio::test]
async fn many_streams_share_a_connection_with_unary_traffic() {
    let fixture = serve().await;
    let client = fixture.client(Codec::Protobuf).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40u64 {
        let tailing = client.clone();
        tasks.spawn(async move {
            let seqs: Vec<u64> = tailing.tail(i, 300, 32).await.unwrap().map(|l| l.unwrap().seq).collect().await;
            assert_eq!(seqs, (i..i + 300).collect::<Vec<_>>());
        });
        let uploading = client.clone();
        tasks.spawn(async move {
            let summary = uploading.upload(stream::iter((0..200).map(|seq| line(seq, 32)))).await.unwrap();
            assert_eq!(summary.count, 200);
        });
    }
    let channel = client.inner().clone();
    for i in 0..400u64 {
        let channel = channel.clone();
        tasks.spawn(async move {
            // A plain unary request beside the streams: an unknown method answers at once.
            let request = rpc_core::Request::new("Logs", "missing", i);
            let status = tower::ServiceExt::oneshot(channel, request).await.unwrap_err();
            assert_eq!(status.code(), Code::Unimplemented);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

#[tokio::test]
async fn metadata_goes_with_the_opening_and_trailers_with_the_end() {
    let fixture = serve().await;
    let client = fixture.client(Codec::Protobuf).await;
    let mut lines = client.meta("1".into()).metadata("tenant", "acme").await.unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap().text, "acme");
    assert!(lines.next().await.is_none());
    assert_eq!(lines.trailers().and_then(|t| t.get("rows")), Some("1"));
}

#[tokio::test]
async fn trailers_the_wire_cannot_carry_fail_their_stream_alone() {
    let fixture = serve().await;
    let client = fixture.client(Codec::Protobuf).await;
    let mut bystander = client.follow("bystander".into()).await.unwrap();
    bystander.next().await.unwrap().unwrap();

    let mut lines = client.meta("x".repeat(70_000)).await.unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap().seq, 0, "items before the end are delivered");
    let failed = lines.next().await.expect("the stream ends with an error").unwrap_err();
    assert_eq!(failed.code(), Code::Internal, "{failed}");
    assert!(failed.message().contains("metadata"), "{failed}");

    bystander.next().await.unwrap().expect("the other stream on the connection still flows");
    let mut fine = client.meta("1".into()).await.unwrap();
    while fine.next().await.is_some() {}
    assert_eq!(fine.trailers().and_then(|t| t.get("rows")), Some("1"));
}

#[tokio::test]
async fn streams_past_the_limit_are_refused_and_items_past_the_size_limit_fail_their_stream() {
    let fixture = serve_with(Server::builder().max_streams_per_connection(2)).await;
    let client = fixture.client(Codec::Protobuf).await;
    let _a = client.follow("a".into()).await.unwrap();
    let _b = client.follow("b".into()).await.unwrap();
    let refused = client.follow("c".into()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    assert!(refused.not_started(), "a refused stream never started, so it may be retried: {refused}");

    let small = Channel::builder(fixture.addr.clone()).max_item_size(64).connect().await.unwrap();
    let mut lines = LogsClient::new(small).tail(0, 2, 1000).await.unwrap();
    let failed = lines.next().await.unwrap().unwrap_err();
    assert_eq!(failed.code(), Code::ResourceExhausted, "{failed}");
}

#[tokio::test]
async fn a_streaming_method_called_as_unary_says_how_to_call_it() {
    let fixture = serve().await;
    let client = fixture.client(Codec::MsgPack).await;
    let request = rpc_core::Request::new("Logs", "follow", serde_json::json!({"tag": "x"}));
    let status = tower::ServiceExt::oneshot(client.inner().clone(), request).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
    assert!(status.message().contains("streaming method"), "{status}");
}

/// Forwards one connection to `target` until the returned sender is dropped or fires.
async fn cuttable_proxy(target: String) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (cut, cut_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut inbound, _) = listener.accept().await.unwrap();
        let mut outbound = TcpStream::connect(target).await.unwrap();
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            _ = cut_rx => {}
        }
    });
    (addr, cut)
}

#[tokio::test]
async fn losing_the_connection_ends_the_stream_with_unavailable_on_both_ends() {
    let mut fixture = serve().await;
    let (proxy, cut) = cuttable_proxy(fixture.addr.clone()).await;
    let client = LogsClient::new(Channel::connect(proxy).await.unwrap());

    let (tx, rx) = mpsc::channel(1);
    tx.send(line(0, 8)).await.unwrap();
    let drained = tokio::spawn({
        let client = client.clone();
        async move { client.drain(rpc_core::stream::from_receiver(rx)).await }
    });
    assert_eq!(fixture.event().await, "reading", "the server took the first item");
    let mut lines = client.follow("lost".into()).await.unwrap();
    lines.next().await.unwrap().unwrap();

    cut.send(()).unwrap();
    let failed = loop {
        match lines.next().await.expect("the stream ends with an error") {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    assert_eq!(failed.code(), Code::Unavailable, "client side: {failed}");
    assert_eq!(drained.await.unwrap().unwrap_err().code(), Code::Unavailable);
    let mut seen = vec![fixture.event().await, fixture.event().await];
    seen.sort();
    assert_eq!(seen, ["cancelled:lost", "input:UNAVAILABLE"], "server side");
    drop(tx);
}
