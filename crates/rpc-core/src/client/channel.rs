//! [`Channel`]: calls to one server address over a small pool of multiplexed connections.
//!
//! A channel connects lazily, reconnects by itself after a connection fails or the server sends a
//! go-away (with a capped exponential back-off between failed attempts), and encodes each request
//! body with its codec. Choosing among several servers is `rpc-lb`'s job.

use super::{
    call::OpenStream,
    connection::{Connection, ConnectionConfig, ReplyFuture, Started},
    pending::Reply,
    Request, Response,
};
use crate::{
    layer::auth::{Secret, AUTHORIZATION},
    stream::StreamConfig,
    transport::{check_call_head, FrameBuilder, Head, DEFAULT_MAX_FRAME_SIZE},
    Codec, Context, Inbound, Items, Status, CALLER, TRACEPARENT,
};
use bytes::{Bytes, BytesMut};
use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, RwLock,
    },
    task::{ready, Context as TaskContext, Poll},
    time::Duration,
};
use tokio::time::Instant;

/// First wait after a failed connect; doubles per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Builds a [`Channel`]; every setting has a default that suits most services.
#[derive(Clone, Debug)]
pub struct ChannelBuilder {
    addr: String,
    codec: Codec,
    connections: usize,
    timeout: Option<Duration>,
    caller: Option<String>,
    bearer: Option<Secret>,
    config: ConnectionConfig,
}

impl ChannelBuilder {
    fn new(addr: String) -> Self {
        ChannelBuilder {
            addr,
            codec: Codec::default(),
            connections: 1,
            timeout: None,
            caller: None,
            bearer: None,
            config: ConnectionConfig {
                max_frame_size: DEFAULT_MAX_FRAME_SIZE,
                max_in_flight: 10_000,
                write_queue: 1024,
                connect_timeout: Duration::from_secs(5),
                streams: StreamConfig::default(),
                #[cfg(feature = "tls")]
                tls: None,
            },
        }
    }

    /// Codec for request bodies (default: Protobuf). The server answers in the same codec. A
    /// body without a schema (`serde_json::Value`) goes in MessagePack when this codec needs one;
    /// a reply decoded as `serde_json::Value` needs a JSON or MessagePack channel.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Connections to open to the server (default 1); calls spread over them round robin.
    pub fn connections(mut self, n: usize) -> Self {
        self.connections = n.max(1);
        self
    }

    /// Default timeout of every call (default: none); a call's own timeout wins.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends `token` with every call as `authorization: Bearer <token>` metadata, for a server's
    /// [`BearerTokens`](crate::layer::auth::BearerTokens).
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer = Some(Secret(format!("Bearer {}", token.into())));
        self
    }

    /// Name sent with every call as the `rpc-caller` metadata, for the server's logs and limits.
    pub fn caller(mut self, name: impl Into<String>) -> Self {
        self.caller = Some(name.into());
        self
    }

    /// Largest frame this side accepts (default 16 MiB).
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.max_frame_size = bytes;
        self
    }

    /// Most calls waiting for a reply on one connection (default 10 000); more fail with
    /// `ResourceExhausted` instead of queueing without bound.
    pub fn max_in_flight(mut self, calls: usize) -> Self {
        self.config.max_in_flight = calls.max(1);
        self
    }

    /// Bytes of items a server may send on one stream before the caller consumes them (default
    /// 256 KiB): what one slow consumer can make the client buffer, plus one item.
    pub fn stream_window(mut self, bytes: u32) -> Self {
        self.config.streams.window = bytes.max(1);
        self
    }

    /// Largest stream item, sent or received (default 4 MiB); a larger one fails its stream
    /// with `ResourceExhausted`.
    pub fn max_item_size(mut self, bytes: usize) -> Self {
        self.config.streams.max_item = bytes;
        self
    }

    /// Speaks TLS 1.3 to the server, verifying its certificate against the settings' CA and,
    /// unless they name another, the host this channel dials.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::tls::ClientTls) -> Self {
        self.config.tls = Some(Arc::new(crate::tls::Dial::new(&tls, &self.addr)));
        self
    }

    /// How long to wait for a TCP connection, and then for a TLS handshake (default 5 s each).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Builds the channel and opens its first connection, failing if the server is unreachable.
    pub async fn connect(self) -> Result<Channel, Status> {
        let channel = self.connect_lazy();
        channel.connection(&channel.inner.slots[0]).await?;
        Ok(channel)
    }

    /// Builds the channel without connecting; the first call connects.
    pub fn connect_lazy(self) -> Channel {
        let slots = (0..self.connections).map(|_| Slot::default()).collect();
        Channel {
            inner: Arc::new(Inner {
                addr: self.addr,
                codec: self.codec,
                timeout: self.timeout,
                caller: self.caller,
                bearer: self.bearer,
                config: self.config,
                slots,
                next: AtomicUsize::new(0),
            }),
        }
    }
}

/// Calls to one server address. Cheap to clone; clones share connections.
///
/// `Channel` is a tower `Service<Request>`: wrap it in layers, then hand it to a generated client.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Inner>,
}

struct Inner {
    addr: String,
    codec: Codec,
    timeout: Option<Duration>,
    caller: Option<String>,
    /// `Bearer <token>`, sent as `authorization` metadata.
    bearer: Option<Secret>,
    config: ConnectionConfig,
    slots: Box<[Slot]>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Slot {
    /// Read on every call, written only when a connection is opened or dropped.
    live: RwLock<Option<Arc<Connection>>>,
    /// Held while connecting, so concurrent callers wait for one attempt instead of racing.
    connecting: tokio::sync::Mutex<Backoff>,
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<Status>,
}

impl Channel {
    /// A builder for a channel to `addr`: anything that prints as `host:port` (a `&str`, a
    /// `String`, a `SocketAddr` such as `server.local_addr()`).
    pub fn builder(addr: impl std::fmt::Display) -> ChannelBuilder {
        ChannelBuilder::new(addr.to_string())
    }

    /// A channel to `addr` (as [`Channel::builder`] takes it) with default settings, connected.
    pub async fn connect(addr: impl std::fmt::Display) -> Result<Channel, Status> {
        Channel::builder(addr).connect().await
    }

    /// The server address.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// The codec request bodies are encoded with.
    pub fn codec(&self) -> Codec {
        self.inner.codec
    }

    /// Round-trip time of a ping on one of the channel's connections.
    pub async fn ping(&self) -> Result<Duration, Status> {
        self.connection(&self.inner.slots[self.pick()]).await?.ping().await
    }

    /// The slot the next call uses.
    fn pick(&self) -> usize {
        match self.inner.slots.len() {
            1 => 0,
            n => self.inner.next.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    /// A usable connection in `slot`, opening one if it has none.
    async fn connection(&self, slot: &Slot) -> Result<Arc<Connection>, Status> {
        let inner = &self.inner;
        if let Some(conn) = slot.live() {
            return Ok(conn);
        }
        let mut backoff = slot.connecting.lock().await;
        if let Some(conn) = slot.live() {
            return Ok(conn);
        }
        let now = Instant::now();
        if let (Some(retry_at), Some(err)) = (backoff.retry_at, &backoff.last_error) {
            if now < retry_at {
                return Err(Status::unavailable(format!(
                    "{}; retrying the connection in {:?}",
                    err.message(),
                    retry_at - now
                ))
                .with_not_started());
            }
        }
        match Connection::open(inner.resolve().await?, &inner.config).await {
            Ok(conn) => {
                *backoff = Backoff::default();
                *slot.live.write().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
                Ok(conn)
            }
            Err(status) => {
                backoff.failures += 1;
                let wait = MIN_BACKOFF.saturating_mul(1 << backoff.failures.min(16)).min(MAX_BACKOFF);
                backoff.retry_at = Some(now + wait);
                backoff.last_error = Some(status.clone());
                Err(status)
            }
        }
    }

    /// Sends `request`: what the tower `Service::call` does, without needing `&mut self` (or a
    /// clone) from callers that share a channel.
    pub fn send(&self, request: Request) -> ChannelFuture {
        let call = match self.prepare(request, None) {
            Ok(call) => call,
            Err(status) => return ChannelFuture(State::Done(Some(Err(status)))),
        };
        let slot = self.pick();
        let Some(conn) = self.inner.slots[slot].live() else {
            return ChannelFuture(State::Slow(Box::pin(self.clone().call_slow(slot, SlowCall::Unsent(call)))));
        };
        let (deadline, codec) = (call.deadline, call.codec);
        ChannelFuture(match conn.start(call.frame, call.oneway, deadline) {
            Ok(Started::Sent(Some(reply))) => State::Waiting(reply),
            Ok(Started::Sent(None)) => {
                State::Done(Some(Ok(Response { codec, body: Bytes::new(), metadata: Default::default() })))
            }
            Ok(Started::QueueFull(frame, reply)) => {
                let queued = SlowCall::Queued { conn, frame, reply, deadline, codec };
                State::Slow(Box::pin(self.clone().call_slow(slot, queued)))
            }
            Err(status) => State::Done(Some(Err(status))),
        })
    }

    /// Opens a stream for `request` on one of the channel's connections and waits until the
    /// server accepts it; `items` are what the caller sends, for a method that takes a stream.
    /// The call's deadline covers the whole stream.
    pub async fn open_stream(&self, request: Request, items: Option<Items>) -> Result<Inbound, Status> {
        let limits = self.inner.config.streams;
        let call = self.prepare(request, Some(limits.window))?;
        let slot = self.pick();
        let open = async {
            let conn = self.connection(&self.inner.slots[slot]).await?;
            conn.open_stream(call.frame, call.codec, call.deadline, items, limits).await
        };
        match call.deadline {
            None => open.await,
            Some(deadline) => tokio::time::timeout_at(deadline, open).await.unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "the deadline passed before {} accepted the stream; the server may be unreachable or overloaded",
                    self.inner.addr
                )))
            }),
        }
    }

    /// Everything about a call that needs no connection: metadata, deadline, the encoded frame
    /// (an `Open` with `window` for a stream).
    fn prepare(&self, request: Request, window: Option<u32>) -> Result<Prepared, Status> {
        let inner = &self.inner;
        let mut metadata = request.options.metadata;
        let (inherited_deadline, trace) = Context::inherited();
        if let Some(caller) = &inner.caller {
            metadata.insert(CALLER, caller.as_str());
        }
        if let Some(bearer) = &inner.bearer {
            if metadata.get(AUTHORIZATION).is_none() {
                metadata.insert(AUTHORIZATION, bearer.0.as_str());
            }
        }
        if let Some(trace) = trace {
            if metadata.get(TRACEPARENT).is_none() {
                metadata.insert(TRACEPARENT, trace);
            }
        }
        check_call_head(&request.service, &request.method, &metadata).map_err(Status::invalid_argument)?;
        let timeout = request.options.timeout.or(inner.timeout);
        // Reading the clock costs more than the rest of this function: once, and only if needed.
        let now = (timeout.is_some() || inherited_deadline.is_some()).then(Instant::now);
        let own = timeout.zip(now).map(|(t, now)| now + t);
        let deadline = match (own, inherited_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let (Some(deadline), Some(now)) = (deadline, now) {
            if deadline <= now {
                return Err(Status::deadline_exceeded(format!(
                    "deadline passed before {}.{} was sent",
                    request.service, request.method
                )));
            }
        }
        // A body without field numbers (a `serde_json::Value` from a generic tool) travels
        // self-described; the frame says so and the server answers in kind.
        let codec = match inner.codec.needs_schema() && !request.body.has_schema() {
            true => Codec::MsgPack,
            false => inner.codec,
        };
        let oneway = request.options.oneway;
        let (service, method, timeout) = (request.service, request.method, deadline.zip(now).map(|(d, now)| d - now));
        let head = match window {
            None => Head::Call { service, method, timeout, metadata, oneway },
            Some(window) => Head::Open { window, service, method, timeout, metadata },
        };
        let mut frame = FrameBuilder::new(codec.id(), &head, 256);
        request.body.encode(codec, frame.body_mut()).map_err(|e| Status::invalid_argument(format!("request {e}")))?;
        Ok(Prepared { frame, oneway, deadline, codec })
    }

    /// The path of a call that must wait: for a connection, or for room in the write queue.
    async fn call_slow(self, slot: usize, call: SlowCall) -> Reply {
        let (deadline, codec) = match &call {
            SlowCall::Unsent(prepared) => (prepared.deadline, prepared.codec),
            SlowCall::Queued { deadline, codec, .. } => (*deadline, *codec),
        };
        let sent = async {
            let (conn, frame, reply) = match call {
                SlowCall::Queued { conn, frame, reply, .. } => (conn, frame, reply),
                SlowCall::Unsent(call) => {
                    let conn = self.connection(&self.inner.slots[slot]).await?;
                    match conn.start(call.frame, call.oneway, call.deadline)? {
                        Started::Sent(reply) => return Ok(reply),
                        Started::QueueFull(frame, reply) => (conn, frame, reply),
                    }
                }
            };
            // A call that expired while it waited for room is not sent after its cancel.
            if reply.as_ref().is_none_or(ReplyFuture::is_waiting) {
                conn.send(frame).await?;
            }
            Ok(reply)
        };
        // The deadline bounds connecting and queueing here; the connection expires the reply.
        let reply = match deadline {
            None => sent.await?,
            Some(deadline) => tokio::time::timeout_at(deadline, sent).await.unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "the deadline passed before the call could be sent to {}; the server may be unreachable or overloaded",
                    self.inner.addr
                )))
            })?,
        };
        finish(reply, codec).await
    }
}

/// A call that must wait before it is sent.
enum SlowCall {
    /// Not yet on a connection.
    Unsent(Prepared),
    /// Registered on a connection whose write queue was full.
    Queued {
        conn: Arc<Connection>,
        frame: BytesMut,
        reply: Option<ReplyFuture>,
        deadline: Option<Instant>,
        codec: Codec,
    },
}

/// A call ready to go on a connection.
struct Prepared {
    frame: FrameBuilder,
    oneway: bool,
    deadline: Option<Instant>,
    /// The body's codec (the channel's, unless the body has no schema).
    codec: Codec,
}

/// The reply of a call, or an empty one for a one-way call.
async fn finish(reply: Option<ReplyFuture>, codec: Codec) -> Reply {
    match reply {
        Some(reply) => reply.await,
        None => Ok(Response { codec, body: Bytes::new(), metadata: Default::default() }),
    }
}

impl Inner {
    async fn resolve(&self) -> Result<SocketAddr, Status> {
        let mut addrs = tokio::net::lookup_host(&self.addr).await.map_err(|e| {
            Status::unavailable(format!("cannot resolve {:?}: {e}; expected host:port", self.addr)).with_not_started()
        })?;
        addrs
            .next()
            .ok_or_else(|| Status::unavailable(format!("{:?} resolved to no address", self.addr)).with_not_started())
    }
}

impl Slot {
    fn live(&self) -> Option<Arc<Connection>> {
        {
            let live = self.live.read().unwrap_or_else(|e| e.into_inner());
            match &*live {
                Some(conn) if conn.is_usable() => return Some(conn.clone()),
                None => return None,
                Some(_) => {}
            }
        }
        // Draining or dead: in-flight calls keep their own reference until they finish.
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        if live.as_ref().is_some_and(|c| !c.is_usable()) {
            *live = None;
        }
        None
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peers: Vec<_> = self.inner.slots.iter().filter_map(|s| s.live().map(|c| c.peer())).collect();
        f.debug_struct("Channel")
            .field("addr", &self.inner.addr)
            .field("codec", &self.inner.codec)
            .field("connected", &peers)
            .finish()
    }
}

/// The future of a [`Channel`] call.
///
/// A call on a connected channel with room in its write queue (the common case) is sent before
/// this future is first polled, which then only waits for the reply; anything else takes a
/// boxed slow path.
pub struct ChannelFuture(State);

enum State {
    Waiting(ReplyFuture),
    Done(Option<Reply>),
    Slow(Pin<Box<dyn Future<Output = Reply> + Send>>),
}

impl Future for ChannelFuture {
    type Output = Result<Response, Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            State::Waiting(reply) => {
                let outcome = ready!(Pin::new(reply).poll(cx));
                self.0 = State::Done(None);
                Poll::Ready(outcome)
            }
            State::Done(outcome) => {
                Poll::Ready(outcome.take().unwrap_or_else(|| Err(Status::internal("call polled after it completed"))))
            }
            State::Slow(fut) => fut.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for ChannelFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChannelFuture")
    }
}

impl OpenStream for Channel {
    fn open_stream(
        &self,
        request: Request,
        items: Option<Items>,
    ) -> impl Future<Output = Result<Inbound, Status>> + Send {
        Channel::open_stream(self, request, items)
    }
}

impl tower::Service<Request> for Channel {
    type Response = Response;
    type Error = Status;
    type Future = ChannelFuture;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Status>> {
        // Connections open lazily inside the call; per-connection limits apply there.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> ChannelFuture {
        self.send(request)
    }
}
