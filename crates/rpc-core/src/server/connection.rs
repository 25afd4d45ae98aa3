//! One server connection: reads calls, runs their handlers, writes replies.
//!
//! One task owns the socket. It polls each new handler once in place: a handler that completes
//! without waiting (most do, or their first step does) is answered in the same write as its
//! neighbours, with no task spawned and no queue crossed. A handler that must wait moves to its
//! own task and sends its reply back through a bounded queue.
//!
//! Every running handler holds a permit of the connection's in-flight limit, so a client that
//! floods calls gets `ResourceExhausted`; one that stops reading replies stops being read from,
//! which bounds the memory it can make the server hold.

use super::{
    budget::Budget,
    builder::ServerConfig,
    catch_unwind::{panicked, CatchUnwind},
    dispatch::Opened,
    stream::{credit_frame, end_frame, send_control, Outbound, StreamTask},
    IncomingStream, ServerRequest, ServerResponse,
};
use crate::{
    id_map::IdMap,
    stream::{self as flow, InboxSender, SendCredit},
    transport::{
        check_metadata, check_preface,
        io::{self, ReadIo, WriteIo},
        Frame, FrameCodec, FrameError, FrameReader, FrameWriter, Head, BATCH,
    },
    ByteStr, Code, Codec, Context, Metadata, PeerIdentity, Status, NOT_STARTED,
};
use bytes::Bytes;
use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::Poll,
    time::Duration,
};
use tokio::{
    net::TcpStream,
    sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore},
    task::AbortHandle,
    time::Instant,
};
use tower::Service;

/// Longest wait to flush the last frames to a client that is not reading.
const FINAL_FLUSH: Duration = Duration::from_secs(5);
/// How long stream handlers may run on after their connection is lost, to see `UNAVAILABLE` on
/// the items they read, before they are aborted.
const STREAM_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Where a handler's future lives while it is polled. One box per connection serves every
/// handler that finishes at its first poll; a handler that must wait takes the box to its task.
type Slot<F> = Pin<Box<Option<CatchUnwind<F>>>>;

/// Calls whose handlers are running, by request id.
struct InFlight {
    handlers: Mutex<IdMap<AbortHandle>>,
    /// The open streams among them.
    streams: Mutex<IdMap<StreamPeer>>,
    permits: Arc<Semaphore>,
    limit: u32,
}

/// What the connection task keeps of an open stream: where the client's items go, and the
/// client's credit for the items this side sends.
struct StreamPeer {
    /// `None` once the client half-closed.
    inbox: Option<InboxSender>,
    credit: Arc<SendCredit>,
}

impl StreamPeer {
    fn close(self, status: &Status) {
        self.credit.close(status.clone());
        if let Some(inbox) = self.inbox {
            inbox.finish(Err(status.clone()));
        }
    }
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, IdMap<AbortHandle>> {
        self.handlers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, IdMap<StreamPeer>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, id: u32) {
        self.lock().remove(&id);
    }

    /// Removes stream `id`: its handler sees the stream end with `status`, and stops sending.
    fn close_stream(&self, id: u32, status: &Status) {
        if let Some(peer) = self.streams().remove(&id) {
            peer.close(status);
        }
    }

    /// Ends every stream with `status`; true if there were any.
    fn close_streams(&self, status: &Status) -> bool {
        let streams = std::mem::take(&mut *self.streams());
        let any = !streams.is_empty();
        for peer in streams.into_values() {
            peer.close(status);
        }
        any
    }

    /// Resolves once no handler holds a permit.
    async fn idle(&self) {
        let _all = self.permits.acquire_many(self.limit).await;
    }

    fn is_idle(&self) -> bool {
        self.permits.available_permits() == self.limit as usize
    }

    /// Aborts every running handler and returns their ids.
    fn abort_all(&self) -> Vec<u32> {
        let handlers = std::mem::take(&mut *self.lock());
        handlers
            .into_iter()
            .map(|(id, handle)| {
                handle.abort();
                id
            })
            .collect()
    }
}

struct ServerConnection<S: Service<ServerRequest>> {
    service: S,
    /// The box the next handler is polled in, kept from a handler that finished at once.
    slot: Option<Slot<S::Future>>,
    peer: SocketAddr,
    identity: Option<Arc<PeerIdentity>>,
    /// The largest frame this server sends or takes.
    max_frame_size: usize,
    writer: FrameWriter<WriteIo>,
    /// Replies of handlers that run in their own task.
    tx: mpsc::Sender<Outbound>,
    rx: mpsc::Receiver<Outbound>,
    in_flight: Arc<InFlight>,
    budget: Budget,
    /// Highest call id accepted, announced in a go-away.
    last_id: u32,
    /// Set once a go-away was sent: later calls are refused.
    draining: bool,
}

/// Serves one accepted TCP connection until it closes, fails or the server shuts down.
///
/// `admission` is the connection's slot under the server's connection limit, or why it has
/// none: then the connection is told so and closed.
pub(crate) async fn serve<S>(
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    config: Arc<ServerConfig>,
    mut shutdown: watch::Receiver<Option<Instant>>,
    admission: Result<OwnedSemaphorePermit, String>,
    budget: Budget,
) where
    S: Service<ServerRequest, Response = ServerResponse, Error = Status> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let Some(Accepted { read, write, identity, refusal }) = open(stream, peer, &config).await else {
        return;
    };
    let codec = FrameCodec::new(config.max_frame_size);
    let (tx, rx) = mpsc::channel(config.write_queue);
    let limit = u32::try_from(config.max_in_flight).unwrap_or(u32::MAX).min(Semaphore::MAX_PERMITS as u32);
    let mut conn = ServerConnection {
        service,
        slot: None,
        peer,
        identity,
        max_frame_size: config.max_frame_size,
        writer: FrameWriter::new(write, codec),
        tx,
        rx,
        in_flight: Arc::new(InFlight {
            handlers: Mutex::new(IdMap::default()),
            streams: Mutex::new(IdMap::default()),
            permits: Arc::new(Semaphore::new(limit as usize)),
            limit,
        }),
        budget,
        last_id: 0,
        draining: false,
    };
    let mut reader = FrameReader::new(read, codec).with_budget(conn.budget.requests.clone());
    if let Some(refusal) = refusal {
        conn.go_away(Code::FailedPrecondition, refusal).await;
    } else if let Err(refusal) = &admission {
        conn.go_away(Code::ResourceExhausted, refusal.clone()).await;
    } else {
        match tokio::time::timeout(config.handshake_timeout, reader.preface()).await {
            Ok(Ok(preface)) => match (check_preface(&preface), crate::transport::thrift::detect(&preface)) {
                (Ok(()), _) => {
                    conn.run(&mut reader, &config, &mut shutdown).await;
                    let lost = Status::unavailable(format!("the connection to {peer} closed"));
                    if conn.in_flight.close_streams(&lost) {
                        let _ = tokio::time::timeout(STREAM_CLOSE_GRACE, conn.in_flight.idle()).await;
                    }
                }
                // Not our preface but an Apache Thrift frame: serve it in Thrift.
                (Err(_), Some(thrift)) => {
                    let (read, rest) = reader.into_parts();
                    let mut buffered = bytes::BytesMut::from(&preface[..]);
                    buffered.extend_from_slice(&rest);
                    let (service, writer, identity) = (conn.service.clone(), &mut conn.writer, conn.identity.clone());
                    let shutdown = &mut shutdown;
                    super::thrift::serve(
                        read,
                        buffered,
                        writer,
                        service,
                        peer,
                        identity,
                        thrift,
                        &config,
                        &conn.budget,
                        shutdown,
                    )
                    .await
                }
                (Err(e), None) => conn.go_away(Code::Protocol, e.to_string()).await,
            },
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "connection closed before its preface"),
            Err(_) => conn.go_away(Code::Protocol, "no connection preface within the handshake timeout".into()).await,
        }
    }
    conn.in_flight.abort_all();
    let _ = tokio::time::timeout(FINAL_FLUSH, conn.writer.shutdown()).await;
    drop(admission);
}

/// A connection ready to carry frames: plain TCP, or TLS once its handshake is done.
struct Accepted {
    read: ReadIo,
    write: WriteIo,
    identity: Option<Arc<PeerIdentity>>,
    /// Why the connection is refused before anything else (plain TCP to a TLS-only server).
    refusal: Option<String>,
}

/// Opens an accepted connection as the server is configured: with TLS if the client starts a
/// TLS handshake (its first byte is a handshake record, 0x16) and the server serves TLS. `None`
/// if the handshake failed; the client learns why from its own TLS error.
async fn open(stream: TcpStream, peer: SocketAddr, config: &ServerConfig) -> Option<Accepted> {
    #[cfg(feature = "tls")]
    if let Some(tls) = &config.tls {
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(config.handshake_timeout, stream.peek(&mut first)).await;
        if !matches!(peeked, Ok(Ok(1))) {
            return None;
        }
        if first[0] != 0x16 {
            let (read, write) = io::tcp(stream);
            let refusal = (!tls.plaintext)
                .then(|| "this server accepts TLS only; connect with ChannelBuilder::tls (rpc: --tls-ca)".to_owned());
            return Some(Accepted { read, write, identity: None, refusal });
        }
        let accept = tokio_rustls::TlsAcceptor::from(tls.config.clone()).accept(stream);
        let stream = match tokio::time::timeout(config.handshake_timeout, accept).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "no TLS handshake within the handshake timeout");
                return None;
            }
        };
        let identity = crate::tls::peer_identity(stream.get_ref().1).map(Arc::new);
        let (read, write) = io::tls(stream);
        return Some(Accepted { read, write, identity, refusal: None });
    }
    let _ = (peer, config);
    let (read, write) = io::tcp(stream);
    Some(Accepted { read, write, identity: None, refusal: None })
}

impl<S: Service<ServerRequest>> Drop for ServerConnection<S> {
    fn drop(&mut self) {
        // Also when the connection's task is cut short (a shutdown past its grace): its
        // handlers run in tasks of their own and must not outlive it.
        self.in_flight.abort_all();
    }
}

impl<S> ServerConnection<S>
where
    S: Service<ServerRequest, Response = ServerResponse, Error = Status> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    async fn run(
        &mut self,
        reader: &mut FrameReader<ReadIo>,
        config: &ServerConfig,
        shutdown: &mut watch::Receiver<Option<Instant>>,
    ) {
        let peer = self.peer;
        // Every future of the loop below that is not a read is made once: this loop runs per
        // frame, and registering a shutdown waiter or a timer anew each time costs locks.
        let shutdown_signal = async {
            // A dropped sender means "stop now".
            let deadline = match shutdown.changed().await {
                Ok(()) => *shutdown.borrow(),
                Err(_) => None,
            };
            deadline.unwrap_or_else(Instant::now)
        };
        tokio::pin!(shutdown_signal);
        let mut shutting_down = false;
        let grace = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(grace);
        let idle = tokio::time::sleep(config.idle_timeout);
        tokio::pin!(idle);
        let mut frames_seen = 0u64;
        let mut frames_at_last_check = 0u64;
        // A timer per connection, not per read: reads stay free of timer work under load.
        let mut stall_check = tokio::time::interval_at(Instant::now() + config.frame_timeout, config.frame_timeout);
        stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut partial_at_last_check = None;
        let mut replies = Vec::with_capacity(BATCH);
        loop {
            let step = tokio::select! {
                biased;
                frame = reader.next() => match frame {
                    Ok(Some(frame)) => {
                        // Pings keep a connection measured, not busy: a client that only
                        // pings must not hold a connection slot past the idle timeout.
                        if !matches!(frame.head, Head::Ping | Head::Pong) {
                            frames_seen += 1;
                        }
                        let bytes = reader.take_permit();
                        self.handle(frame, bytes, config).await
                    }
                    Ok(None) => {
                        tracing::debug!(%peer, "client closed the connection");
                        return;
                    }
                    Err(e) => Err(e.into()),
                },
                _ = self.rx.recv_many(&mut replies, BATCH) => self.push_replies(&mut replies).await,
                deadline = &mut shutdown_signal, if !shutting_down => {
                    shutting_down = true;
                    grace.as_mut().reset(deadline);
                    self.go_away(Code::Unavailable, "server is shutting down; reconnect to another instance".into()).await;
                    Ok(())
                }
                _ = self.in_flight.idle(), if shutting_down => return,
                _ = &mut grace, if shutting_down => {
                    for id in self.in_flight.abort_all() {
                        let status = Status::unavailable("server shut down before the call finished (its grace period ended)");
                        let _ = self.writer.push(error_frame(id, &status)).await;
                    }
                    return;
                }
                _ = stall_check.tick() => {
                    // Part of a frame buffered at two checks with no frame read between: that
                    // frame has been arriving for over a period.
                    let (frames, partial) = reader.progress();
                    let stalled = partial && partial_at_last_check == Some(frames);
                    partial_at_last_check = partial.then_some(frames);
                    match stalled {
                        true => Err(FrameError::Stalled(config.frame_timeout).into()),
                        false => Ok(()),
                    }
                }
                _ = &mut idle => {
                    if frames_seen == frames_at_last_check && self.in_flight.is_idle() {
                        self.go_away(Code::Unavailable, format!("connection idle for {:?}", config.idle_timeout)).await;
                        return;
                    }
                    frames_at_last_check = frames_seen;
                    idle.as_mut().reset(Instant::now() + config.idle_timeout);
                    Ok(())
                }
            };
            // Take everything already buffered or queued, so that one write carries it all.
            let step = match step {
                Ok(()) => self.drain_ready(reader, &mut replies, config).await,
                err => err,
            };
            if let Err(e) = step {
                self.fail(e).await;
                return;
            }
        }
    }

    async fn drain_ready(
        &mut self,
        reader: &mut FrameReader<ReadIo>,
        replies: &mut Vec<Outbound>,
        config: &ServerConfig,
    ) -> Result<(), ConnectionError> {
        while let Some(frame) = reader.try_next()? {
            let bytes = reader.take_permit();
            self.handle(frame, bytes, config).await?;
        }
        while let Ok(frame) = self.rx.try_recv() {
            replies.push(frame);
        }
        self.push_replies(replies).await?;
        Ok(self.writer.flush().await?)
    }

    async fn push_replies(&mut self, replies: &mut Vec<Outbound>) -> Result<(), ConnectionError> {
        for outbound in replies.drain(..) {
            match outbound {
                Outbound::Frame(frame) => self.writer.push(frame).await?,
                Outbound::Reply(frame, charge) => {
                    // In the writer's buffer, a reply is bounded by the connection's flush.
                    self.writer.push(frame).await?;
                    drop(charge);
                }
                Outbound::Encoded(frames) => self.writer.push_encoded(&frames).await?,
            }
        }
        Ok(())
    }

    /// Ends the connection after an error: a go-away says why, unless the socket itself failed.
    async fn fail(&mut self, error: ConnectionError) {
        let peer = self.peer;
        match error {
            ConnectionError::Frame(FrameError::Io(e)) => tracing::debug!(%peer, error = %e, "connection failed"),
            ConnectionError::Frame(e) => {
                tracing::warn!(%peer, error = %e, "closing connection after a bad frame");
                self.go_away(Code::Protocol, e.to_string()).await;
            }
            ConnectionError::Protocol(status) => {
                tracing::warn!(%peer, error = %status, "closing connection after a protocol error");
                self.go_away(Code::Protocol, status.message().to_owned()).await;
            }
        }
    }

    /// Handles one frame from the client; `bytes`, the request budget its body holds, is kept
    /// while the call it starts runs.
    async fn handle(
        &mut self,
        frame: Frame,
        bytes: Option<OwnedSemaphorePermit>,
        config: &ServerConfig,
    ) -> Result<(), ConnectionError> {
        match frame.head {
            Head::Call { service, method, timeout, metadata, oneway } => {
                let call =
                    IncomingCall { id: frame.id, codec: frame.codec, service, method, timeout, metadata, oneway };
                let outcome = match self.start(call, frame.body, bytes).await {
                    Ok(Some(outcome)) => outcome,
                    Err(status) => Err(status),
                    Ok(None) => return Ok(()),
                };
                if !oneway {
                    self.answer(frame.id, frame.codec, outcome)?;
                    if self.writer.is_full() {
                        self.writer.flush().await?;
                    }
                }
            }
            Head::Cancel => {
                if let Some(handle) = self.in_flight.lock().remove(&frame.id) {
                    handle.abort();
                }
                self.in_flight.close_stream(frame.id, &Status::cancelled("the client cancelled the stream"));
            }
            Head::Open { window, service, method, timeout, metadata } => {
                let call = IncomingCall {
                    id: frame.id,
                    codec: frame.codec,
                    service,
                    method,
                    timeout,
                    metadata,
                    oneway: false,
                };
                if let Err(status) = self.open_stream(call, window, frame.body, bytes, config).await {
                    self.writer.push(end_frame(frame.id, &status)).await?;
                }
            }
            Head::Item => {
                let pushed = match self.in_flight.streams().get_mut(&frame.id).and_then(|p| p.inbox.as_mut()) {
                    Some(inbox) => inbox.push(frame.body),
                    // The stream ended or was never opened: items already on their way are dropped.
                    None => Ok(()),
                };
                if let Err(status) = pushed {
                    self.in_flight.close_stream(frame.id, &status);
                    if let Some(handle) = self.in_flight.lock().remove(&frame.id) {
                        handle.abort();
                    }
                    self.writer.push(end_frame(frame.id, &status)).await?;
                }
            }
            Head::HalfClose => {
                if let Some(inbox) = self.in_flight.streams().get_mut(&frame.id).and_then(|p| p.inbox.take()) {
                    inbox.finish(Ok(Metadata::new()));
                }
            }
            Head::Credit { bytes } => {
                if let Some(peer) = self.in_flight.streams().get(&frame.id) {
                    peer.credit.grant(bytes);
                }
            }
            Head::Ping => {
                self.writer.push(Frame { id: frame.id, codec: 0, head: Head::Pong, body: frame.body }).await?;
            }
            Head::Pong | Head::GoAway { .. } => {}
            Head::Reply { .. } | Head::Error { .. } | Head::End { .. } => {
                return Err(ConnectionError::Protocol(Status::protocol(format!(
                    "client sent a server-only frame (id {})",
                    frame.id
                ))));
            }
        }
        Ok(())
    }

    /// Queues the answer to call `id` straight into the write buffer: its reply, or an error
    /// frame for that call alone when the reply cannot be sent (see [`sendable`]). Check
    /// [`FrameWriter::is_full`] after.
    fn answer(&mut self, id: u32, codec: u8, outcome: Result<ServerResponse, Status>) -> Result<(), FrameError> {
        let status = match outcome {
            Ok(response) => {
                let queued = check_reply_metadata(&response.metadata).and_then(|()| {
                    self.writer.put_reply(id, codec, &response.metadata, &response.body).map_err(|e| match e {
                        FrameError::TooLarge { len, max } => reply_too_large(len, max),
                        other => Status::internal(other.to_string()),
                    })
                });
                match queued {
                    Ok(()) => return Ok(()),
                    Err(status) => status,
                }
            }
            Err(status) => status,
        };
        self.writer.queue(&error_frame(id, &status))
    }

    /// Notes that `call` was accepted and makes its deadline and context.
    fn accept(&mut self, call: IncomingCall) -> Context {
        // The highest id (in wrapping order), not the latest: a client may send ids out of order.
        if (call.id.wrapping_sub(self.last_id) as i32) > 0 {
            self.last_id = call.id;
        }
        let deadline = call.timeout.map(|t| Instant::now() + t);
        Context::new(call.service, call.method, deadline, call.metadata, Some(self.peer), self.identity.clone())
    }

    /// Starts the handler of one call: returns its outcome if it finished at once, or `None`
    /// once it runs in its own task.
    async fn start(
        &mut self,
        call: IncomingCall,
        body: Bytes,
        bytes: Option<OwnedSemaphorePermit>,
    ) -> Result<Option<Result<ServerResponse, Status>>, Status> {
        if self.draining {
            return Err(Status::unavailable("server is shutting down; the call was not started").with_not_started());
        }
        // Before the handler runs: a second call under a running call's id must not run at all.
        // A handler in its own task holds a permit from before it is listed until after it
        // is not, so with every permit free no id is listed and the lock can be skipped.
        if !self.in_flight.is_idle() && self.in_flight.lock().contains_key(&call.id) {
            return Err(Status::invalid_argument(format!(
                "request id {} is already in flight on this connection; the call was not run",
                call.id
            )));
        }
        // This task is the only one that takes permits, so one seen here is still there below.
        if self.in_flight.permits.available_permits() == 0 {
            return Err(Status::resource_exhausted(format!(
                "{} calls already in flight on this connection (the server's limit); wait for replies or open another connection",
                self.in_flight.limit
            ))
            .with_not_started());
        }
        self.budget.check()?;
        let codec = Codec::from_id(call.codec).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (id, oneway) = (call.id, call.oneway);
        let context = self.accept(call);
        let deadline = context.deadline();
        let request = ServerRequest::new(context.clone(), codec, body);
        std::future::poll_fn(|cx| self.service.poll_ready(cx)).await?;
        let mut slot = self.slot.take().unwrap_or_else(|| Box::pin(None));
        let mut request = Some(request);
        // Most handlers finish when first polled: then no task, no timer, and the box is kept.
        // Layers and dispatchers may read the context while building the call's future, in
        // the scope of that first poll.
        let first = std::future::poll_fn(|cx| {
            Poll::Ready(context.sync_scope(|| {
                if let Some(request) = request.take() {
                    slot.set(Some(CatchUnwind::new(self.service.call(request))));
                }
                poll_slot(slot.as_mut(), cx)
            }))
        })
        .await;
        if let Poll::Ready(outcome) = first {
            slot.set(None);
            self.slot = Some(slot);
            return Ok(Some(finish(outcome, &context)));
        }
        let permit = self
            .in_flight
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::internal("in-flight permit vanished; this is a bug in the connection task"))?;
        let server_permit = self.budget.take_handler();
        let (tx, replies) = (self.tx.clone(), self.budget.replies());
        let in_flight = self.in_flight.clone();
        let max_frame_size = self.max_frame_size;
        let mut handlers = self.in_flight.lock();
        // The task's own `finish` takes this lock, so it cannot run before the insert below.
        let task = tokio::spawn(async move {
            let outcome = run_handler(slot, context, deadline).await;
            drop(bytes);
            if !oneway {
                let frame = answer_frame(id, codec.id(), outcome, max_frame_size);
                // Counted from now until the writer takes it: a client that does not read
                // makes replies wait here, and past the server's budget new calls are refused.
                let charge = replies.charge(frame.encoded_len());
                let _ = tx.send(Outbound::Reply(frame, charge)).await;
            }
            in_flight.finish(id);
            drop((permit, server_permit));
        });
        handlers.insert(id, task.abort_handle());
        Ok(None)
    }

    /// Opens the stream of `call`: its handler runs in its own task from the start.
    async fn open_stream(
        &mut self,
        call: IncomingCall,
        window: u32,
        body: Bytes,
        bytes: Option<OwnedSemaphorePermit>,
        config: &ServerConfig,
    ) -> Result<(), Status> {
        let id = call.id;
        if self.draining {
            return Err(Status::unavailable("server is shutting down; the stream was not opened").with_not_started());
        }
        let limits = config.streams;
        if self.in_flight.streams().len() >= limits.max_streams {
            return Err(Status::resource_exhausted(format!(
                "{} streams already open on this connection (the server's limit); end some or open another connection",
                limits.max_streams
            ))
            .with_not_started());
        }
        // This task is the only one that takes permits, so one seen here is still there below.
        let permit = self.in_flight.permits.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{} calls already in flight on this connection (the server's limit); wait for replies or open another connection",
                self.in_flight.limit
            ))
            .with_not_started()
        })?;
        self.budget.check()?;
        let server_permit = self.budget.take_handler().ok_or_else(|| self.budget.handler_refusal())?;
        let codec = Codec::from_id(call.codec).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if self.in_flight.lock().contains_key(&id) {
            return Err(Status::invalid_argument(format!("request id {id} is already in flight on this connection")));
        }
        let context = self.accept(call);
        let deadline = context.deadline();
        let credit = Arc::new(SendCredit::new(window));
        let (grant_tx, accept_tx) = (self.tx.clone(), self.tx.clone());
        let (inbox_tx, inbox) = flow::inbox(
            limits.window,
            limits.max_item,
            Box::new(move |bytes| send_control(&grant_tx, credit_frame(id, bytes))),
        );
        let accept = Box::new(move || send_control(&accept_tx, credit_frame(id, limits.window)));
        let incoming = IncomingStream::new(Opened { inbox, accept });
        let mut request = ServerRequest::new(context.clone(), codec, body);
        request.stream = Some(incoming.clone());
        std::future::poll_fn(|cx| self.service.poll_ready(cx)).await?;
        let call_future = context.sync_scope(|| self.service.call(request));
        let task = StreamTask {
            id,
            codec,
            context,
            deadline,
            incoming,
            credit: credit.clone(),
            max_item: limits.max_item,
            tx: self.tx.clone(),
        };
        self.in_flight.streams().insert(id, StreamPeer { inbox: Some(inbox_tx), credit });
        let in_flight = self.in_flight.clone();
        let tx = self.tx.clone();
        let max_frame_size = self.max_frame_size;
        let mut handlers = self.in_flight.lock();
        // The task's own `finish` takes this lock, so it cannot run before the insert below.
        let task = tokio::spawn(async move {
            let last = task.run::<S>(call_future).await;
            drop(bytes);
            let last = sendable(last, max_frame_size).unwrap_or_else(|status| end_frame(id, &status));
            // Out of the table first: client frames that still arrive for it are ignored.
            in_flight.streams().remove(&id);
            let _ = tx.send(last.into()).await;
            in_flight.finish(id);
            drop((permit, server_permit));
        });
        handlers.insert(id, task.abort_handle());
        Ok(())
    }

    async fn go_away(&mut self, code: Code, message: String) {
        self.draining = true;
        let frame = Frame { id: self.last_id, codec: 0, head: Head::GoAway { code, message }, body: Bytes::new() };
        if self.writer.push(frame).await.is_ok() {
            let _ = self.writer.flush().await;
        }
    }
}

/// Why a connection ends early.
enum ConnectionError {
    Frame(FrameError),
    Protocol(Status),
}

impl From<FrameError> for ConnectionError {
    fn from(e: FrameError) -> Self {
        ConnectionError::Frame(e)
    }
}

struct IncomingCall {
    id: u32,
    codec: u8,
    service: ByteStr,
    method: ByteStr,
    timeout: Option<Duration>,
    metadata: Metadata,
    oneway: bool,
}

/// Polls the handler in `slot`; an empty slot is a handler that already finished.
fn poll_slot<F: Future>(
    slot: Pin<&mut Option<CatchUnwind<F>>>,
    cx: &mut std::task::Context<'_>,
) -> Poll<Option<Result<F::Output, String>>> {
    match slot.as_pin_mut() {
        Some(handler) => handler.poll(cx).map(Some),
        None => Poll::Ready(None),
    }
}

/// Runs the rest of a handler that did not finish at its first poll, within its deadline.
async fn run_handler<F>(
    mut slot: Slot<F>,
    context: Context,
    deadline: Option<Instant>,
) -> Result<ServerResponse, Status>
where
    F: Future<Output = Result<ServerResponse, Status>>,
{
    let work = context.clone().scope(std::future::poll_fn(|cx| poll_slot(slot.as_mut(), cx)));
    let outcome = match deadline {
        None => work.await,
        Some(deadline) => tokio::time::timeout_at(deadline, work).await.map_err(|_| {
            let (svc, method) = (context.service(), context.method());
            Status::deadline_exceeded(format!(
                "{svc}.{method} did not finish before the caller's deadline; the handler was cancelled"
            ))
        })?,
    };
    finish(outcome, &context)
}

/// What a finished handler's caller gets: its reply with the metadata it set on the context,
/// its error, or INTERNAL for a panic.
fn finish(
    outcome: Option<Result<Result<ServerResponse, Status>, String>>,
    context: &Context,
) -> Result<ServerResponse, Status> {
    match outcome {
        Some(Ok(Ok(mut response))) => {
            let extra = context.take_reply_metadata();
            if !extra.is_empty() {
                response.metadata.extend_from(&extra);
            }
            Ok(response)
        }
        Some(Ok(Err(status))) => Err(status),
        Some(Err(panic)) => Err(panicked(context.service(), context.method(), &panic)),
        None => Err(Status::internal("a handler was polled after it finished; this is a bug in the connection task")),
    }
}

/// The frame answering call `id`: its reply, or an error frame for that call alone when the
/// reply cannot be sent (over the frame limit, or metadata the wire cannot carry), so one bad
/// reply never costs the connection.
fn answer_frame(id: u32, codec: u8, outcome: Result<ServerResponse, Status>, max_frame_size: usize) -> Frame {
    outcome
        .and_then(|response| {
            let frame = Frame { id, codec, head: Head::Reply { metadata: response.metadata }, body: response.body };
            sendable(frame, max_frame_size)
        })
        .unwrap_or_else(|status| error_frame(id, &status))
}

/// `frame` if the wire can carry the handler's reply in it (its metadata within the wire's
/// limits, its length within the frame limit); otherwise the error for that call alone.
fn sendable(frame: Frame, max_frame_size: usize) -> Result<Frame, Status> {
    if let Head::Reply { metadata } | Head::End { metadata, .. } = &frame.head {
        check_reply_metadata(metadata)?;
    }
    let len = frame.encoded_len() - 4;
    if len > max_frame_size {
        return Err(reply_too_large(len, max_frame_size));
    }
    Ok(frame)
}

/// Whether the wire can carry the metadata a handler set on its reply.
fn check_reply_metadata(metadata: &Metadata) -> Result<(), Status> {
    check_metadata(metadata).map_err(|e| Status::internal(format!("the handler's reply metadata cannot be sent: {e}")))
}

/// What the caller of a handler whose reply is `len` bytes, over the frame limit, gets.
pub(super) fn reply_too_large(len: usize, max_frame_size: usize) -> Status {
    Status::resource_exhausted(format!(
        "the reply is {len} bytes, over the server's frame limit of {max_frame_size}; return less, or raise max_frame_size on server and client"
    ))
}

fn error_frame(id: u32, status: &Status) -> Frame {
    Frame {
        id,
        codec: 0,
        head: Head::Error {
            code: status.code(),
            message: status.message().to_owned(),
            metadata: status_metadata(status),
        },
        body: Bytes::new(),
    }
}

/// What a failed call's frame carries besides code and message: whether it never started, so
/// the client may retry it or try another server.
pub(super) fn status_metadata(status: &Status) -> Metadata {
    let mut metadata = Metadata::new();
    if status.not_started() {
        metadata.insert(NOT_STARTED, "1");
    }
    metadata
}
