//! The client's half of streams: the open streams of a connection, by id, and the task that
//! sends a caller's items under the server's credit.

use super::writer::{Queue, WeakQueue};
use crate::{
    id_map::IdMap,
    stream::{InboxSender, SendCredit},
    transport::{FrameBuilder, Head},
    Codec, Items, Metadata, Status,
};
use bytes::Bytes;
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, Mutex, MutexGuard,
};
use tokio::sync::{mpsc::error::TrySendError, oneshot};

/// One open stream, as the connection's reader sees it.
pub(crate) struct ClientStream {
    /// Told once the server accepts the stream (its first credit) or refuses it.
    pub(crate) accepted: Option<oneshot::Sender<Result<(), Status>>>,
    pub(crate) inbox: InboxSender,
    /// The server's credit for the items this side sends.
    pub(crate) credit: Arc<SendCredit>,
}

impl ClientStream {
    fn finish(mut self, outcome: Result<Metadata, Status>) {
        if let Some(accepted) = self.accepted.take() {
            let _ = accepted.send(outcome.as_ref().map(|_| ()).map_err(Status::clone));
        }
        self.credit.close(match &outcome {
            Ok(_) => Status::cancelled("the server ended the stream"),
            Err(status) => status.clone(),
        });
        self.inbox.finish(outcome);
    }
}

/// The open streams of one connection.
#[derive(Default)]
pub(crate) struct Streams {
    table: Mutex<IdMap<ClientStream>>,
    /// Streams in the table, read without the lock on the path of every unary reply.
    open: AtomicUsize,
    /// Set under the lock once the connection closed: no stream opens after that.
    closed: Mutex<Option<Status>>,
}

impl Streams {
    fn lock(&self) -> MutexGuard<'_, IdMap<ClientStream>> {
        // Every update is a single insert or remove: a panic cannot leave the table torn.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers stream `id`; fails once the connection closed or if the id is taken.
    pub(crate) fn insert(&self, id: u32, stream: ClientStream) -> Result<(), Status> {
        let mut table = self.lock();
        if let Some(status) = &*self.closed.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(status.clone().with_not_started());
        }
        if table.contains_key(&id) {
            return Err(Status::resource_exhausted(format!(
                "stream id {id} is still in use on this connection; open fewer long-lived streams per connection"
            ))
            .with_not_started());
        }
        table.insert(id, stream);
        self.open.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Whether stream `id` is open.
    pub(crate) fn contains(&self, id: u32) -> bool {
        self.lock().contains_key(&id)
    }

    /// Whether no stream is open (no lock taken).
    pub(crate) fn is_empty(&self) -> bool {
        self.open.load(Ordering::Acquire) == 0
    }

    fn take(&self, id: u32) -> Option<ClientStream> {
        let stream = self.lock().remove(&id);
        if stream.is_some() {
            self.open.fetch_sub(1, Ordering::Release);
        }
        stream
    }

    /// The server granted `bytes` of credit; its first grant accepts the stream.
    pub(crate) fn credit(&self, id: u32, bytes: u32) {
        if let Some(stream) = self.lock().get_mut(&id) {
            if let Some(accepted) = stream.accepted.take() {
                let _ = accepted.send(Ok(()));
            }
            stream.credit.grant(bytes);
        }
    }

    /// An item arrived; `Err` if it broke the stream's limits (the stream is failed with it).
    pub(crate) fn item(&self, id: u32, body: Bytes) -> Result<(), Status> {
        let pushed = match self.lock().get_mut(&id) {
            Some(stream) => stream.inbox.push(body),
            // Ended or cancelled here while the item was on its way.
            None => return Ok(()),
        };
        if let Err(status) = &pushed {
            self.fail(id, status.clone());
        }
        pushed
    }

    /// The server ended stream `id`; false if no such stream is open.
    pub(crate) fn end(&self, id: u32, outcome: Result<Metadata, Status>) -> bool {
        match self.take(id) {
            Some(stream) => {
                stream.finish(outcome);
                true
            }
            None => false,
        }
    }

    /// The server replied to a stream that sends only items: the reply is its one delivery.
    /// Hands the reply back if `id` is not a stream.
    pub(crate) fn reply(&self, id: u32, body: Bytes, metadata: Metadata) -> Option<(Bytes, Metadata)> {
        match self.take(id) {
            Some(stream) => {
                stream.inbox.push_reply(body);
                stream.finish(Ok(metadata));
                None
            }
            None => Some((body, metadata)),
        }
    }

    /// Fails stream `id` on this side with `status`; false if it had already ended.
    pub(crate) fn fail(&self, id: u32, status: Status) -> bool {
        self.end(id, Err(status))
    }

    /// Fails every stream and refuses new ones.
    pub(crate) fn close(&self, status: &Status) {
        let drained = {
            let mut table = self.lock();
            self.closed.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| status.clone());
            std::mem::take(&mut *table)
        };
        self.open.fetch_sub(drained.len(), Ordering::Release);
        for stream in drained.into_values() {
            stream.finish(Err(status.clone()));
        }
    }
}

/// Queues a control frame without waiting; a full queue hands it to a task, since the peer may
/// be waiting on it (a credit) and the caller must not block.
pub(crate) fn send_control(queue: &WeakQueue, frame: bytes::BytesMut) {
    let Some(queue) = queue.upgrade() else { return };
    if let Err(TrySendError::Full(frame)) = queue.try_send(frame) {
        tokio::spawn(async move {
            queue.send(frame).await;
        });
    }
}

/// What a stream's items are sent with.
pub(crate) struct ItemSender {
    pub(crate) queue: Queue,
    pub(crate) streams: Arc<Streams>,
    pub(crate) id: u32,
    pub(crate) codec: Codec,
    pub(crate) credit: Arc<SendCredit>,
    pub(crate) max_item: usize,
    pub(crate) max_frame_size: usize,
}

impl ItemSender {
    /// Sends every item, each once the server has credit for it, then a half-close. A local
    /// failure (an item that cannot be encoded or is too large) fails the stream and cancels it
    /// on the server.
    pub(crate) async fn run(self, mut items: Items) {
        let failure = loop {
            let mut frame = FrameBuilder::new(self.codec.id(), &Head::Item, 64);
            match items.next_into(self.codec, frame.body_mut()).await {
                None => break None,
                Some(Err(status)) => break Some(status),
                Some(Ok(())) => {}
            }
            let len = frame.body_len();
            if len > self.max_item {
                break Some(Status::resource_exhausted(format!(
                    "a stream item of {len} bytes exceeds the limit of {} bytes; raise max_item_size on both ends or send smaller items",
                    self.max_item
                )));
            }
            // Refused credit means the stream ended; the reader already told the caller why.
            if self.credit.take(len).await.is_err() {
                return;
            }
            match frame.finish(self.id, self.max_frame_size) {
                Ok(bytes) => {
                    if !self.queue.send(bytes).await {
                        return;
                    }
                }
                Err(e) => break Some(Status::resource_exhausted(format!("stream item: {e}"))),
            }
        };
        match failure {
            None => {
                self.queue.send(super::connection::control_frame(self.id, &Head::HalfClose, Bytes::new())).await;
            }
            Some(status) => {
                if self.streams.fail(self.id, status) {
                    send_control(
                        &self.queue.downgrade(),
                        super::connection::control_frame(self.id, &Head::Cancel, Bytes::new()),
                    );
                }
            }
        }
    }
}
