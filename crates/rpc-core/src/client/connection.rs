//! One client connection: many calls multiplexed by request id.
//!
//! Callers register their call in the pending-call table and write the frame themselves when
//! alone, or queue it for a writer task that coalesces (see `writer`). A reader task owns the
//! read half and completes each waiting call by id; an expiry task fails calls whose deadline
//! passed.

use super::{
    pending::{PendingCalls, Reply},
    stream::{send_control, ClientStream, ItemSender, Streams},
    writer::{write_loop, Direct, Queue, WeakQueue, WriteSide},
    Response,
};
use crate::{
    stream::{self as flow, Inbound, SendCredit, StreamConfig},
    transport::{
        io::{self, ReadIo},
        FrameBuilder, FrameCodec, FrameError, FrameReader, Head, PREFACE,
    },
    Code, Codec, Items, Metadata, Status, NOT_STARTED,
};
use bytes::{Bytes, BytesMut};
use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    task::{ready, Context as TaskContext, Poll},
    time::Duration,
};
use tokio::{
    net::TcpStream,
    sync::{mpsc, oneshot, Notify},
    time::Instant,
};

/// Settings a connection needs from its channel.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionConfig {
    pub(crate) max_frame_size: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) write_queue: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) streams: StreamConfig,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Arc<crate::tls::Dial>>,
}

struct Shared {
    peer: SocketAddr,
    pending: PendingCalls,
    streams: Arc<Streams>,
    /// No new calls: the server sent a go-away or the connection failed.
    draining: AtomicBool,
    /// Signalled once the connection is closed, so the reader stops without waiting for the
    /// server to close its side.
    closed: Notify,
}

impl Shared {
    /// Fails every waiting call and refuses new ones.
    fn close(&self, status: Status) {
        self.draining.store(true, Ordering::Release);
        self.streams.close(&status);
        self.pending.close(status);
        self.closed.notify_waiters();
    }

    /// Handles a go-away: calls after `last_id` were not processed and fail as safe to retry.
    fn go_away(&self, last_id: u32, code: Code, message: &str) {
        self.draining.store(true, Ordering::Release);
        let status = Status::new(
            // Limits and refusals keep their code (the caller can act on them); the rest is a
            // server going away.
            if matches!(code, Code::ResourceExhausted | Code::FailedPrecondition) { code } else { Code::Unavailable },
            format!("server at {} is going away ({code}: {message}); the call was not started", self.peer),
        )
        .with_not_started();
        self.pending.refuse_after(last_id, status);
    }
}

/// A live connection to one server.
pub(crate) struct Connection {
    /// Frames for the writer task, and the write side a caller alone writes to directly.
    queue: Queue,
    shared: Arc<Shared>,
    /// Ids drawn so far; an id is this count's low 32 bits, so past 2^32 ids have wrapped.
    next_id: AtomicU64,
    max_frame_size: usize,
}

impl Connection {
    /// Opens a connection to `addr` and starts its writer, reader and expiry tasks.
    pub(crate) async fn open(addr: SocketAddr, config: &ConnectionConfig) -> Result<Arc<Connection>, Status> {
        let stream = match tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                return Err(Status::unavailable(format!("cannot connect to {addr}: {e}; is the server running?"))
                    .with_not_started())
            }
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "connecting to {addr} took longer than {:?}; is the address reachable?",
                    config.connect_timeout
                ))
                .with_not_started())
            }
        };
        // Calls are small and latency-bound; coalescing happens in the writer instead.
        let _ = stream.set_nodelay(true);
        #[cfg(not(feature = "tls"))]
        let (read, write) = io::tcp(stream);
        #[cfg(feature = "tls")]
        let (read, write) = match &config.tls {
            Some(dial) => {
                let handshake = tokio::time::timeout(config.connect_timeout, dial.connect(stream)).await;
                io::tls(handshake.map_err(|_| {
                    Status::unavailable(format!(
                        "the TLS handshake with {addr} took longer than {:?}",
                        config.connect_timeout
                    ))
                    .with_not_started()
                })??)
            }
            None => io::tcp(stream),
        };
        let write = Arc::new(WriteSide::new(write, &PREFACE));
        let (queue, rx) = Queue::new(write.clone(), config.write_queue);
        let shared = Arc::new(Shared {
            peer: addr,
            pending: PendingCalls::new(config.max_in_flight),
            streams: Arc::default(),
            draining: AtomicBool::new(false),
            closed: Notify::new(),
        });
        let codec = FrameCodec::new(config.max_frame_size);
        let (writer_shared, writer_side) = (shared.clone(), write.clone());
        tokio::spawn(async move {
            let status = match write_loop(&writer_side, rx, &writer_shared.pending).await {
                // Every sender is gone: the connection was dropped with no call waiting.
                Ok(()) => Status::unavailable(format!("connection to {addr} closed by this client")),
                Err(e) => Status::unavailable(format!("writing to {addr} failed: {e}")),
            };
            // Ends the reader and expiry tasks too, whether or not the server closes its side.
            writer_shared.close(status);
        });
        tokio::spawn(read_loop(FrameReader::new(read, codec), shared.clone(), queue.downgrade()));
        tokio::spawn(expire_loop(shared.clone(), queue.downgrade()));
        Ok(Arc::new(Connection { queue, shared, next_id: AtomicU64::new(1), max_frame_size: config.max_frame_size }))
    }

    /// True while new calls may use this connection.
    pub(crate) fn is_usable(&self) -> bool {
        !self.shared.draining.load(Ordering::Acquire)
    }

    /// The server's address.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.shared.peer
    }

    fn next_id(&self) -> u32 {
        let shared = &self.shared;
        take_id(&self.next_id, |id| shared.pending.contains(id) || shared.streams.contains(id))
    }

    /// Sends the call in `frame` (itself if the caller is alone on the connection, else through
    /// the writer task's queue), registered to fail with `DeadlineExceeded` once `deadline`
    /// passes. Never waits: a full queue hands the frame back.
    pub(crate) fn start(
        self: &Arc<Self>,
        frame: FrameBuilder,
        oneway: bool,
        deadline: Option<Instant>,
    ) -> Result<Started, Status> {
        let id = self.next_id();
        let frame = frame.finish(id, self.max_frame_size).map_err(|e| {
            Status::invalid_argument(format!("request to {}: {e}", self.shared.peer)).with_not_started()
        })?;
        let reply = if oneway {
            None
        } else {
            let (tx, rx) = oneshot::channel();
            // Refused here, the frame never left: safe to send elsewhere.
            self.shared.pending.insert(id, tx, deadline).map_err(Status::with_not_started)?;
            Some(ReplyFuture { rx, conn: self.clone(), id, done: false })
        };
        let mut frame = frame;
        // Alone on the connection: no batch to join.
        if self.shared.pending.alone(u64::from(reply.is_some())) {
            match self.queue.side().try_write(frame) {
                Ok(Direct::Written { whole }) => {
                    if !whole {
                        // The writer task finishes the frame; a full queue means it is awake anyway.
                        let _ = self.queue.try_send(BytesMut::new());
                    }
                    return Ok(Started::Sent(reply));
                }
                Ok(Direct::Busy(busy)) => frame = busy,
                Err(e) => {
                    // The write failed whole: nothing of this call reached the server.
                    self.shared.close(Status::unavailable(format!("writing to {} failed: {e}", self.shared.peer)));
                    return Err(self.closed_status().with_not_started());
                }
            }
        }
        match self.queue.try_send(frame) {
            Ok(()) => Ok(Started::Sent(reply)),
            Err(mpsc::error::TrySendError::Full(frame)) => Ok(Started::QueueFull(frame, reply)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(self.closed_status().with_not_started()),
        }
    }

    /// Sends a ping and waits for its pong.
    pub(crate) async fn ping(self: &Arc<Self>) -> Result<Duration, Status> {
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        self.shared.pending.insert(id, tx, None)?;
        let pong = ReplyFuture { rx, conn: self.clone(), id, done: false };
        let started = Instant::now();
        self.send(control_frame(id, &Head::Ping, Bytes::new())).await?;
        pong.await.map(|_| started.elapsed())
    }

    /// Queues `frame`, waiting for room in the write queue.
    pub(crate) async fn send(&self, frame: BytesMut) -> Result<(), Status> {
        match self.queue.send(frame).await {
            true => Ok(()),
            false => Err(self.closed_status().with_not_started()),
        }
    }

    fn closed_status(&self) -> Status {
        self.shared
            .pending
            .closed()
            .cloned()
            .unwrap_or_else(|| Status::unavailable(format!("connection to {} closed", self.shared.peer)))
    }

    /// Tells the server to stop working on call `id`.
    fn cancel(&self, id: u32) {
        send_cancel(&self.queue, id);
    }

    /// Opens a stream with the `Open` frame in `frame` and waits for the server to accept it;
    /// then sends `items`, if any, in a task of their own.
    pub(crate) async fn open_stream(
        self: &Arc<Self>,
        frame: FrameBuilder,
        codec: Codec,
        deadline: Option<Instant>,
        items: Option<Items>,
        limits: StreamConfig,
    ) -> Result<Inbound, Status> {
        let id = self.next_id();
        let frame = frame
            .finish(id, self.max_frame_size)
            .map_err(|e| Status::invalid_argument(format!("stream to {}: {e}", self.shared.peer)).with_not_started())?;
        let (accepted_tx, accepted_rx) = oneshot::channel();
        let credit = Arc::new(SendCredit::new(0));
        let queue = self.queue.downgrade();
        let (inbox_tx, inbox) = flow::inbox(
            limits.window,
            limits.max_item,
            Box::new(move |bytes| send_control(&queue, control_frame(id, &Head::Credit { bytes }, Bytes::new()))),
        );
        let stream = ClientStream { accepted: Some(accepted_tx), inbox: inbox_tx, credit: credit.clone() };
        self.shared.streams.insert(id, stream)?;
        // From here on, giving up (a dropped future, a failure) cancels the stream on the server.
        let mut guard = StreamGuard { conn: self.clone(), id, sender: None };
        self.send(frame).await?;
        match accepted_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(self.closed_status()),
        }
        if let Some(items) = items {
            let sender = ItemSender {
                queue: self.queue.clone(),
                streams: self.shared.streams.clone(),
                id,
                codec,
                credit,
                max_item: limits.max_item,
                max_frame_size: self.max_frame_size,
            };
            guard.sender = Some(tokio::spawn(sender.run(items)).abort_handle());
        }
        Ok(Inbound { inbox, codec, deadline, guard: Some(Box::new(guard)) })
    }
}

/// Held by the caller's end of a stream: dropped before the stream ended, it cancels the stream
/// on the server and stops sending items.
struct StreamGuard {
    conn: Arc<Connection>,
    id: u32,
    sender: Option<tokio::task::AbortHandle>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(sender) = &self.sender {
            sender.abort();
        }
        if self.conn.shared.streams.fail(self.id, Status::cancelled("the caller dropped the stream")) {
            self.conn.cancel(self.id);
        }
    }
}

/// Queues a cancel for call `id`. With the write queue full (a server that stops reading) it is
/// dropped rather than waited for, so abandoned calls cannot pile up tasks: the server still
/// stops the call at its deadline, or when its handler ends.
fn send_cancel(queue: &Queue, id: u32) {
    if queue.try_send(control_frame(id, &Head::Cancel, Bytes::new())).is_err() {
        tracing::debug!(id, "write queue full; cancel not sent");
    }
}

/// What [`Connection::start`] did with a call.
pub(crate) enum Started {
    /// Written or queued; the reply arrives through the future (none for a one-way call).
    Sent(Option<ReplyFuture>),
    /// The write queue is full: send the frame with [`Connection::send`], then wait.
    QueueFull(BytesMut, Option<ReplyFuture>),
}

/// The reply of one call. Dropped before the reply, it removes the call and tells the server
/// to cancel it.
pub(crate) struct ReplyFuture {
    rx: oneshot::Receiver<Reply>,
    conn: Arc<Connection>,
    id: u32,
    done: bool,
}

impl ReplyFuture {
    /// Whether the call still waits for its reply (it has not expired or failed).
    pub(crate) fn is_waiting(&self) -> bool {
        self.conn.shared.pending.contains(self.id)
    }
}

impl Future for ReplyFuture {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Reply> {
        let outcome = ready!(Pin::new(&mut self.rx).poll(cx));
        self.done = true;
        Poll::Ready(outcome.unwrap_or_else(|_| Err(self.conn.closed_status())))
    }
}

impl Drop for ReplyFuture {
    fn drop(&mut self) {
        if !self.done && self.conn.shared.pending.remove(self.id).is_some() {
            self.conn.cancel(self.id);
        }
    }
}

/// Fails calls whose deadline passed and tells the server to cancel them: one timer for the
/// whole connection, re-armed for the earliest deadline, instead of one per call.
async fn expire_loop(shared: Arc<Shared>, queue: WeakQueue) {
    let peer = shared.peer;
    // Each pass scans the whole table: at most one per millisecond, however the deadlines spread.
    let mut earliest_pass = Instant::now();
    loop {
        let changed = shared.pending.deadline_changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if shared.pending.closed().is_some() {
            return;
        }
        let Some(at) = shared.pending.next_deadline() else {
            changed.await;
            continue;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(at.max(earliest_pass)) => {}
            _ = changed => continue,
        }
        let now = Instant::now();
        earliest_pass = now + Duration::from_millis(1);
        let expired = shared.pending.expire(now, || {
            Status::deadline_exceeded(format!(
                "no reply from {peer} before the deadline; the server was told to cancel the call"
            ))
        });
        if let Some(queue) = queue.upgrade() {
            for id in expired {
                send_cancel(&queue, id);
            }
        }
    }
}

/// A frame without a codec body: cancel, ping, pong, credit, half-close.
pub(crate) fn control_frame(id: u32, head: &Head, body: Bytes) -> BytesMut {
    let mut frame = FrameBuilder::new(0, head, body.len());
    frame.body_mut().extend_from_slice(&body);
    // Control frames are a few bytes; only a peer's oversized ping could exceed the limit, and
    // its pong is then dropped by the peer's own limit check.
    frame.finish(id, usize::MAX).unwrap_or_default()
}

/// The next request id from `counter`. Ids wrap after 2^32 calls; from then on an id still in
/// use (`taken`: a call waiting for its reply, an open stream) is skipped, so a new call never
/// takes another's reply. Until then no id can be in use twice, and the check costs nothing.
fn take_id(counter: &AtomicU64, taken: impl Fn(u32) -> bool) -> u32 {
    loop {
        let drawn = counter.fetch_add(1, Ordering::Relaxed);
        let id = drawn as u32;
        let wrapped = drawn > u64::from(u32::MAX);
        if id != 0 && !(wrapped && taken(id)) {
            return id;
        }
    }
}

/// A call's or stream's failure as the server sent it, with whether it never started.
fn call_status(code: Code, message: String, metadata: &Metadata) -> Status {
    match metadata.get(NOT_STARTED) {
        Some(_) => Status::new(code, message).with_not_started(),
        None => Status::new(code, message),
    }
}

/// Why a connection failed, with what to change when the user can fix it.
fn failure(peer: SocketAddr, e: &FrameError) -> Status {
    #[cfg(feature = "tls")]
    let hint = match e {
        FrameError::Io(e) => crate::tls::hint(e),
        _ => "",
    };
    #[cfg(not(feature = "tls"))]
    let hint = "";
    Status::unavailable(format!("connection to {peer} failed: {e}{hint}"))
}

async fn read_loop(mut reader: FrameReader<ReadIo>, shared: Arc<Shared>, queue: WeakQueue) {
    let peer = shared.peer;
    let mut replies = Vec::new();
    let closed = shared.closed.notified();
    tokio::pin!(closed);
    closed.as_mut().enable();
    let reason = 'read: loop {
        if let Some(status) = shared.pending.closed() {
            break status.clone();
        }
        let next = tokio::select! {
            biased;
            next = reader.next() => next,
            _ = &mut closed => continue,
        };
        let mut frame = match next {
            Ok(Some(frame)) => frame,
            Ok(None) => break Status::unavailable(format!("server at {peer} closed the connection")),
            Err(e) => break failure(peer, &e),
        };
        // Handle every frame already buffered, then deliver their replies as one batch (also
        // when the connection failed behind them).
        let failed = loop {
            match frame.head {
                Head::Reply { metadata } => {
                    // Only a stream that sends items alone gets a reply; unary calls skip the lock.
                    let unary = match shared.streams.is_empty() {
                        true => Some((frame.body, metadata)),
                        false => shared.streams.reply(frame.id, frame.body, metadata),
                    };
                    if let Some((body, metadata)) = unary {
                        let reply = Codec::from_id(frame.codec)
                            .map(|codec| Response { codec, body, metadata })
                            .map_err(|e| Status::internal(format!("reply from {peer}: {e}")));
                        replies.push((frame.id, reply));
                    }
                }
                Head::Error { code, message, metadata } => {
                    let status = call_status(code, message, &metadata);
                    if shared.streams.is_empty() || !shared.streams.fail(frame.id, status.clone()) {
                        replies.push((frame.id, Err(status)));
                    }
                }
                Head::Item => {
                    if shared.streams.item(frame.id, frame.body).is_err() {
                        if let Some(queue) = queue.upgrade() {
                            send_cancel(&queue, frame.id);
                        }
                    }
                }
                Head::End { status, metadata } => {
                    let outcome = match status {
                        None => Ok(metadata),
                        Some((code, message)) => Err(call_status(code, message, &metadata)),
                    };
                    shared.streams.end(frame.id, outcome);
                }
                Head::Credit { bytes } => shared.streams.credit(frame.id, bytes),
                Head::Pong => replies.push((
                    frame.id,
                    Ok(Response { codec: Codec::default(), body: frame.body, metadata: Default::default() }),
                )),
                Head::Ping => {
                    // Never waits for room: replies must keep flowing while the queue is full, so
                    // a server that pings a client it does not read from gets no pong.
                    if let Some(queue) = queue.upgrade() {
                        let _ = queue.try_send(control_frame(frame.id, &Head::Pong, frame.body));
                    }
                }
                Head::GoAway { code, message } => {
                    shared.pending.complete(&mut replies);
                    shared.go_away(frame.id, code, &message);
                }
                Head::Call { .. } | Head::Cancel | Head::Open { .. } | Head::HalfClose => {
                    break Some(Status::protocol(format!(
                        "server at {peer} sent a client-only frame; closing the connection"
                    )))
                }
            }
            match reader.try_next() {
                Ok(Some(next)) => frame = next,
                Ok(None) => break None,
                Err(e) => break Some(failure(peer, &e)),
            }
        };
        shared.pending.complete(&mut replies);
        if let Some(reason) = failed {
            break 'read reason;
        }
    };
    shared.close(reason);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_ids_skip_zero_and_ids_still_in_use() {
        let counter = AtomicU64::new(u64::from(u32::MAX) - 1);
        let in_use = [1, 2, u32::MAX - 1];
        let taken = |id| in_use.contains(&id);
        // Before the wrap nothing is checked: no id can be in use twice yet.
        assert_eq!(take_id(&counter, taken), u32::MAX - 1);
        assert_eq!(take_id(&counter, taken), u32::MAX);
        assert_eq!(take_id(&counter, taken), 3, "0 is skipped, and so are 1 and 2, still waiting");
        assert_eq!(take_id(&counter, taken), 4);
    }
}
