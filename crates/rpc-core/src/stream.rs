//! Streams: sequences of items in either direction of a call, under per-stream flow control.
//!
//! The receiver of a stream grants its peer bytes of credit: the opening frame carries the
//! client's window, the server's acceptance carries its own, and each side grants more as its
//! consumer takes items. A sender sends while it has credit left (the last item may overdraw, so
//! an item larger than the window still goes) and waits at zero, so a slow consumer bounds what
//! it can be made to buffer to one window plus one item, and never holds up other calls on the
//! connection. This module owns that bookkeeping and the typed ends users see ([`Streaming`],
//! [`RpcStream`]); the client and server connections move the frames.

use crate::{Codec, Message, Metadata, Status};
use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    task::{ready, Context, Poll, Waker},
};
use tokio::{
    sync::{mpsc, Notify},
    time::{Instant, Sleep},
};

/// Default bytes of items a receiver lets its peer send ahead of what it consumed: 256 KiB.
pub const DEFAULT_STREAM_WINDOW: u32 = 256 * 1024;
/// Default largest stream item: 4 MiB.
pub const DEFAULT_MAX_ITEM_SIZE: usize = 4 * 1024 * 1024;
/// Default most streams open at once on one connection.
pub const DEFAULT_MAX_STREAMS: usize = 256;

/// Bytes of items a sender may still send on one stream.
pub(crate) struct SendCredit {
    state: Mutex<CreditState>,
    changed: Notify,
}

struct CreditState {
    available: i64,
    closed: Option<Status>,
}

impl SendCredit {
    pub(crate) fn new(initial: u32) -> SendCredit {
        SendCredit {
            state: Mutex::new(CreditState { available: i64::from(initial), closed: None }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CreditState> {
        // Every update is a single assignment: a panic cannot leave the state torn.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The receiver consumed items: `bytes` more may be sent.
    pub(crate) fn grant(&self, bytes: u32) {
        self.lock().available += i64::from(bytes);
        self.changed.notify_waiters();
    }

    /// The stream ended: senders stop with `status` (the first one given).
    pub(crate) fn close(&self, status: Status) {
        self.lock().closed.get_or_insert(status);
        self.changed.notify_waiters();
    }

    /// Takes `len` bytes if credit is left; `Ok(false)` if none is.
    pub(crate) fn try_take(&self, len: usize) -> Result<bool, Status> {
        let mut state = self.lock();
        if let Some(status) = &state.closed {
            return Err(status.clone());
        }
        if state.available > 0 {
            state.available -= i64::try_from(len).unwrap_or(i64::MAX);
            return Ok(true);
        }
        Ok(false)
    }

    /// Waits until credit is left, then takes `len` bytes of it.
    pub(crate) async fn take(&self, len: usize) -> Result<(), Status> {
        // With credit left (the common case), no waiter is registered.
        if self.try_take(len)? {
            return Ok(());
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.try_take(len)? {
                return Ok(());
            }
            changed.await;
        }
    }
}

/// What the connection hands to the consumer of a stream.
pub(crate) enum Delivery {
    /// One encoded item.
    Item(Bytes),
    /// The stream ended: trailing metadata, or why it failed.
    End(Result<Metadata, Status>),
}

/// Sends a `Credit` frame for `bytes` on the stream; never waits.
pub(crate) type Grant = Box<dyn Fn(u32) + Send + Sync>;

/// Deliveries on their way from the connection to a stream's consumer. A lock and a queue rather
/// than a channel: the consumer takes everything waiting under one lock, so a busy stream costs
/// the connection's reader one uncontended lock per item and its consumer one per batch. Credit
/// bounds the queue to one window plus one item, and the end.
#[derive(Default)]
struct Mailbox {
    state: Mutex<MailboxState>,
}

#[derive(Default)]
struct MailboxState {
    queue: VecDeque<Delivery>,
    /// The consumer, waiting for a delivery.
    waker: Option<Waker>,
    /// The connection's end is gone: no delivery follows what is queued.
    sender_gone: bool,
    /// The consumer's end is gone: deliveries are dropped on arrival.
    receiver_gone: bool,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, MailboxState> {
        // Every update is a push, a swap or a flag: a panic cannot leave the state torn.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deliver(&self, delivery: Delivery) {
        let mut state = self.lock();
        if state.receiver_gone {
            return;
        }
        state.queue.push_back(delivery);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The connection's end of a stream's incoming items: holds the peer to the credit granted.
pub(crate) struct InboxSender {
    mailbox: Arc<Mailbox>,
    received: u64,
    granted: Arc<AtomicU64>,
    max_item: usize,
}

impl InboxSender {
    /// Delivers one item, or says how the peer broke the stream's limits.
    pub(crate) fn push(&mut self, item: Bytes) -> Result<(), Status> {
        if item.len() > self.max_item {
            return Err(Status::resource_exhausted(format!(
                "a stream item of {} bytes exceeds the limit of {} bytes; raise max_item_size on both ends or send smaller items",
                item.len(),
                self.max_item
            )));
        }
        if self.received >= self.granted.load(Ordering::Acquire) {
            return Err(Status::protocol(format!(
                "the peer sent stream items past the {} bytes of credit it was granted",
                self.granted.load(Ordering::Acquire)
            )));
        }
        self.received += item.len() as u64;
        self.mailbox.deliver(Delivery::Item(item));
        Ok(())
    }

    /// Delivers a value outside the item window: a client stream's single reply.
    pub(crate) fn push_reply(&self, body: Bytes) {
        self.mailbox.deliver(Delivery::Item(body));
    }

    /// Ends the stream.
    pub(crate) fn finish(self, outcome: Result<Metadata, Status>) {
        self.mailbox.deliver(Delivery::End(outcome));
    }
}

impl Drop for InboxSender {
    fn drop(&mut self) {
        let mut state = self.mailbox.lock();
        state.sender_gone = true;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The consumer's end of a stream's incoming items: grants credit back as it takes them.
pub(crate) struct Inbox {
    mailbox: Arc<Mailbox>,
    /// Deliveries taken from the mailbox in one go, handed out one at a time.
    taken: VecDeque<Delivery>,
    granted: Arc<AtomicU64>,
    window: u32,
    consumed: u64,
    grant: Grant,
}

/// A stream's incoming side: `window` bytes granted up front, items up to `max_item` bytes,
/// more credit sent through `grant` as items are consumed.
pub(crate) fn inbox(window: u32, max_item: usize, grant: Grant) -> (InboxSender, Inbox) {
    let mailbox = Arc::new(Mailbox::default());
    let granted = Arc::new(AtomicU64::new(u64::from(window)));
    (
        InboxSender { mailbox: mailbox.clone(), received: 0, granted: granted.clone(), max_item },
        Inbox { mailbox, taken: VecDeque::new(), granted, window, consumed: 0, grant },
    )
}

impl Inbox {
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let delivery = ready!(self.poll_take(cx));
        if let Some(Delivery::Item(item)) = &delivery {
            self.consumed += item.len() as u64;
            // Half a window at a time: few credit frames, and the peer never runs dry while
            // the consumer keeps up.
            if self.consumed >= u64::from(self.window / 2).max(1) {
                let bytes = u32::try_from(self.consumed).unwrap_or(u32::MAX);
                self.consumed -= u64::from(bytes);
                // Counted before the frame leaves, so items sent in answer are never taken for
                // a breach of the window.
                self.granted.fetch_add(u64::from(bytes), Ordering::AcqRel);
                (self.grant)(bytes);
            }
        }
        Poll::Ready(delivery)
    }

    fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        if let Some(delivery) = self.taken.pop_front() {
            return Poll::Ready(Some(delivery));
        }
        let mut state = self.mailbox.lock();
        std::mem::swap(&mut self.taken, &mut state.queue);
        if let Some(delivery) = self.taken.pop_front() {
            return Poll::Ready(Some(delivery));
        }
        if state.sender_gone {
            return Poll::Ready(None);
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut state = self.mailbox.lock();
        state.receiver_gone = true;
        // A consumer that dropped its end no longer wants items: they are freed now.
        state.queue.clear();
    }
}

/// The receiving end of a stream before its item type is known; [`Streaming::new`] types it.
pub struct Inbound {
    pub(crate) inbox: Inbox,
    pub(crate) codec: Codec,
    pub(crate) deadline: Option<Instant>,
    /// Dropped with the stream: tells the peer to stop if the stream has not ended.
    pub(crate) guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl fmt::Debug for Inbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbound").field("codec", &self.codec).field("deadline", &self.deadline).finish()
    }
}

impl Inbound {
    /// The first delivery, decoded as a method's result: a client stream's reply.
    pub(crate) async fn reply<T: Message>(mut self) -> Result<T, Status> {
        let deadline = self.deadline;
        let first = std::future::poll_fn(|cx| self.inbox.poll_recv(cx));
        let first = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, first).await.map_err(|_| deadline_passed())?,
            None => first.await,
        };
        match first {
            Some(Delivery::Item(body)) => self.codec.decode_reply(&body).map_err(|e| {
                Status::internal(format!(
                    "the reply could not be decoded as {}: {e}; client and server may disagree on the method's type",
                    std::any::type_name::<T>()
                ))
            }),
            Some(Delivery::End(Err(status))) => Err(status),
            Some(Delivery::End(Ok(_))) | None => {
                Err(Status::internal("the stream ended without a reply; client and server may disagree on the method"))
            }
        }
    }
}

fn deadline_passed() -> Status {
    Status::deadline_exceeded("the stream's deadline passed; the peer was told to stop")
}

/// Items arriving on a stream: a [`Stream`] of `Result<T, Status>`.
///
/// A handler receives one for a `Streaming<T>` argument; a client receives one from a method
/// that returns `RpcStream<T>`. Read it with `StreamExt::next`. An `Err` item ends the stream:
/// the peer failed it, the connection broke (`UNAVAILABLE`), its deadline passed, or an item
/// could not be decoded. Dropping a client's `Streaming` cancels the call on the server.
pub struct Streaming<T> {
    inbound: Inbound,
    deadline: Option<Pin<Box<Sleep>>>,
    trailers: Option<Metadata>,
    done: bool,
    _item: PhantomData<fn() -> T>,
}

impl<T> Streaming<T> {
    /// Items of `inbound`, decoded as `T`.
    pub fn new(inbound: Inbound) -> Streaming<T> {
        let deadline = inbound.deadline.map(|at| Box::pin(tokio::time::sleep_until(at)));
        Streaming { inbound, deadline, trailers: None, done: false, _item: PhantomData }
    }

    /// Metadata the server sent with the end of the stream, once it ended successfully.
    pub fn trailers(&self) -> Option<&Metadata> {
        self.trailers.as_ref()
    }

    fn end(&mut self, item: Option<Result<T, Status>>) -> Poll<Option<Result<T, Status>>> {
        self.done = true;
        // Ended on our side: the guard tells the peer to stop.
        self.inbound.guard = None;
        Poll::Ready(item)
    }
}

impl<T: Message> Stream for Streaming<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match this.inbound.inbox.poll_recv(cx) {
            Poll::Ready(Some(Delivery::Item(body))) => match this.inbound.codec.decode(&body) {
                Ok(item) => Poll::Ready(Some(Ok(item))),
                Err(e) => this.end(Some(Err(Status::invalid_argument(format!(
                    "a stream item could not be decoded as {}: {e}; both ends may disagree on the method's type",
                    std::any::type_name::<T>()
                ))))),
            },
            Poll::Ready(Some(Delivery::End(Ok(trailers)))) => {
                this.trailers = Some(trailers);
                this.end(None)
            }
            Poll::Ready(Some(Delivery::End(Err(status)))) => this.end(Some(Err(status))),
            Poll::Ready(None) => this.end(Some(Err(Status::unavailable("the stream's connection closed")))),
            Poll::Pending => {
                let expired = this.deadline.as_mut().is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
                match expired {
                    true => this.end(Some(Err(deadline_passed()))),
                    false => Poll::Pending,
                }
            }
        }
    }
}

impl<T> fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streaming").field("item", &std::any::type_name::<T>()).field("done", &self.done).finish()
    }
}

/// Items a handler sends: what a streaming method returns.
///
/// Build one from any `Stream` of items ([`RpcStream::new`]), of results whose first `Err` ends
/// the stream with that status ([`RpcStream::try_new`]), from an iterator, or from the receiving
/// end of a tokio channel. The server pulls items only as fast as the client's credit allows.
pub struct RpcStream<T> {
    inner: Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>,
}

impl<T: Send + 'static> RpcStream<T> {
    /// Sends the items of `stream`, then ends successfully.
    pub fn new(stream: impl Stream<Item = T> + Send + 'static) -> RpcStream<T> {
        RpcStream::try_new(futures_util::StreamExt::map(stream, Ok))
    }

    /// Sends the items of `stream` until it ends (success) or yields an `Err` (the stream fails
    /// with that status).
    pub fn try_new(stream: impl Stream<Item = Result<T, Status>> + Send + 'static) -> RpcStream<T> {
        RpcStream { inner: Box::pin(stream) }
    }

    /// Sends the items of `iter`.
    pub fn iter(iter: impl IntoIterator<Item = T, IntoIter: Send + 'static>) -> RpcStream<T> {
        RpcStream::new(futures_util::stream::iter(iter))
    }
}

impl<T: Send + 'static> From<mpsc::Receiver<T>> for RpcStream<T> {
    /// Sends what the channel receives until every sender is dropped.
    fn from(rx: mpsc::Receiver<T>) -> RpcStream<T> {
        RpcStream::new(from_receiver(rx))
    }
}

/// What a tokio channel receives, as a `Stream` that ends once every sender is dropped: the
/// items a client sends on a stream while it reads the replies.
pub fn from_receiver<T>(mut rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send
where
    T: Send,
{
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl<T> Stream for RpcStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl<T> fmt::Debug for RpcStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcStream").field("item", &std::any::type_name::<T>()).finish()
    }
}

/// The items one side sends on a stream, encoded as they are sent, with the codec of the call.
///
/// A client passes them to a method that takes a `Streaming<T>` (a generated client builds them
/// from any `Stream`); a server's handler returns them as an [`RpcStream`].
pub struct Items {
    inner: Pin<Box<dyn EncodeItems>>,
}

trait EncodeItems: Send {
    fn poll_encode(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        codec: Codec,
        buf: &mut BytesMut,
    ) -> Poll<Option<Result<(), Status>>>;
}

struct Encoded<S>(Pin<Box<S>>);

impl<S, T> EncodeItems for Encoded<S>
where
    S: Stream<Item = Result<T, Status>> + Send,
    T: Message,
{
    fn poll_encode(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        codec: Codec,
        buf: &mut BytesMut,
    ) -> Poll<Option<Result<(), Status>>> {
        let item = ready!(self.0.as_mut().poll_next(cx));
        Poll::Ready(
            item.map(|item| {
                codec.encode(&item?, buf).map_err(|e| Status::invalid_argument(format!("stream item {e}")))
            }),
        )
    }
}

impl Items {
    /// The items of `stream`.
    pub fn new<T: Message>(stream: impl Stream<Item = T> + Send + 'static) -> Items {
        Items::try_new(futures_util::StreamExt::map(stream, Ok))
    }

    /// The items of `stream` until it yields an `Err`, which fails the stream with that status.
    pub fn try_new<T: Message>(stream: impl Stream<Item = Result<T, Status>> + Send + 'static) -> Items {
        Items { inner: Box::pin(Encoded(Box::pin(stream))) }
    }

    /// Appends the next item, encoded with `codec`, to `buf`; `None` once the items ran out.
    /// Nothing is appended unless an item is ready.
    pub(crate) fn poll_next_into(
        &mut self,
        cx: &mut Context<'_>,
        codec: Codec,
        buf: &mut BytesMut,
    ) -> Poll<Option<Result<(), Status>>> {
        self.inner.as_mut().poll_encode(cx, codec, buf)
    }

    /// [`Items::poll_next_into`], waiting for the item.
    pub(crate) async fn next_into(&mut self, codec: Codec, buf: &mut BytesMut) -> Option<Result<(), Status>> {
        std::future::poll_fn(|cx| self.poll_next_into(cx, codec, buf)).await
    }
}

impl fmt::Debug for Items {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Items")
    }
}

/// Limits of the streams on one connection, set on the channel or server builder.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamConfig {
    pub(crate) window: u32,
    pub(crate) max_item: usize,
    pub(crate) max_streams: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            window: DEFAULT_STREAM_WINDOW,
            max_item: DEFAULT_MAX_ITEM_SIZE,
            max_streams: DEFAULT_MAX_STREAMS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[tokio::test]
    async fn credit_waits_at_zero_and_lets_the_last_item_overdraw() {
        let credit = Arc::new(SendCredit::new(10));
        credit.take(25).await.unwrap();
        let waiting = tokio::spawn({
            let credit = credit.clone();
            async move { credit.take(1).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no credit left after an overdraw");
        credit.grant(15);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "15 bytes only pay the overdraw back to zero");
        credit.grant(1);
        waiting.await.unwrap().unwrap();
        credit.close(Status::unavailable("gone"));
        assert_eq!(credit.take(1).await.unwrap_err().code(), crate::Code::Unavailable);
    }

    #[tokio::test]
    async fn an_inbox_grants_back_what_is_consumed_and_refuses_overdrafts() {
        let granted = Arc::new(AtomicU32::new(0));
        let (mut tx, mut rx) = inbox(100, 1000, {
            let granted = granted.clone();
            Box::new(move |bytes| {
                granted.fetch_add(bytes, Ordering::SeqCst);
            })
        });
        for _ in 0..4 {
            tx.push(Bytes::from_static(&[0; 30])).unwrap();
        }
        let err = tx.push(Bytes::from_static(&[0; 30])).unwrap_err();
        assert_eq!(err.code(), crate::Code::Protocol, "120 bytes received of 100 granted: {err}");
        let mut rx_items = 0;
        while rx_items < 2 {
            std::future::poll_fn(|cx| rx.poll_recv(cx)).await.unwrap();
            rx_items += 1;
        }
        assert_eq!(granted.load(Ordering::SeqCst), 60, "half a window consumed is granted back");
        tx.push(Bytes::from_static(&[0; 30])).unwrap();
        assert!(tx.push(Bytes::from_static(&[0; 1001])).is_err(), "item over the size limit");
    }
}
