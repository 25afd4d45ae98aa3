//! The server's half of a stream: running a streaming handler and sending its items.
//!
//! A stream runs in its own task from the start (it outlives any single poll). The task runs the
//! handler, then pulls the items of the `RpcStream` it returned, each only once the client has
//! credit for it, and ends the stream with an `End` frame (or, for a method that streams only
//! its arguments, a `Reply`). The handler's deadline covers the whole stream, and a panic while
//! producing an item fails that stream alone.

use super::{
    budget::ReplyCharge,
    catch_unwind::{panic_message, panicked, CatchUnwind},
    IncomingStream, ServerRequest, ServerResponse,
};
use crate::{
    stream::SendCredit,
    transport::{close_frame, open_frame, Frame, Head},
    ByteStr, Codec, Context, Items, Metadata, Status,
};
use bytes::{Bytes, BytesMut};
use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::Arc,
    task::{Context as TaskContext, Poll},
};
use tokio::{sync::mpsc, time::Instant};
use tower::Service;

/// Bytes of items gathered into one message to the connection task.
const ITEM_BATCH: usize = 64 * 1024;

/// What handlers hand to their connection's task for writing.
pub(super) enum Outbound {
    /// One frame.
    Frame(Frame),
    /// Frames already encoded: a batch of stream items.
    Encoded(Bytes),
    /// A reply, counted in the server's reply budget until written.
    Reply(Frame, ReplyCharge),
}

impl From<Frame> for Outbound {
    fn from(frame: Frame) -> Outbound {
        Outbound::Frame(frame)
    }
}

/// What a stream's task needs besides the handler's future.
pub(super) struct StreamTask {
    pub(super) id: u32,
    pub(super) codec: Codec,
    pub(super) context: Context,
    pub(super) deadline: Option<Instant>,
    pub(super) incoming: IncomingStream,
    /// The client's credit for items this side sends.
    pub(super) credit: Arc<SendCredit>,
    pub(super) max_item: usize,
    pub(super) tx: mpsc::Sender<Outbound>,
}

/// How a stream ended well.
enum Finished {
    /// A method that streams only its arguments returned its one value.
    Reply(ServerResponse),
    /// Every item was sent.
    End(Metadata),
}

impl StreamTask {
    /// Runs the handler and streams its items; returns the frame that ends the stream.
    pub(super) async fn run<S>(self, call: S::Future) -> Frame
    where
        S: Service<ServerRequest, Response = ServerResponse, Error = Status>,
    {
        let StreamTask { id, codec, context, deadline, incoming, credit, max_item, tx } = self;
        let (service, method) = (context.service_name(), context.method_name());
        let work = async {
            let response = call.await?;
            let Some(mut items) = response.items else {
                if !incoming.accepted() {
                    return Err(Status::unimplemented(format!(
                        "{service}.{method} is not a streaming method; call it as a unary method"
                    )));
                }
                return Ok(Finished::Reply(response));
            };
            let sender = ItemBatches { id, codec, credit: &credit, max_item, tx: &tx, service, method };
            sender.send_all(&mut items).await?;
            Ok(Finished::End(response.metadata))
        };
        let work = context.clone().scope(CatchUnwind::new(work));
        let outcome = match deadline {
            None => work.await,
            Some(deadline) => tokio::time::timeout_at(deadline, work).await.unwrap_or_else(|_| {
                Ok(Err(Status::deadline_exceeded(format!(
                    "{service}.{method} did not finish its stream before the caller's deadline; the handler was cancelled"
                ))))
            }),
        };
        let outcome = outcome.unwrap_or_else(|panic| Err(panicked(service, method, &panic)));
        let extra = context.take_reply_metadata();
        match outcome {
            Ok(Finished::Reply(mut response)) => {
                response.metadata.extend_from(&extra);
                Frame { id, codec: codec.id(), head: Head::Reply { metadata: response.metadata }, body: response.body }
            }
            Ok(Finished::End(mut metadata)) => {
                metadata.extend_from(&extra);
                Frame { id, codec: 0, head: Head::End { status: None, metadata }, body: Bytes::new() }
            }
            Err(status) => end_frame(id, &status),
        }
    }
}

/// Sends a stream's items as encoded frames, as many to a message as are ready and have credit.
struct ItemBatches<'a> {
    id: u32,
    codec: Codec,
    credit: &'a SendCredit,
    max_item: usize,
    tx: &'a mpsc::Sender<Outbound>,
    service: &'a ByteStr,
    method: &'a ByteStr,
}

impl ItemBatches<'_> {
    async fn send_all(&self, items: &mut Items) -> Result<(), Status> {
        let mut batch = BytesMut::with_capacity(ITEM_BATCH);
        loop {
            let start = open_frame(&mut batch, self.id, self.codec.id(), &Head::Item);
            let body_at = batch.len();
            // The first item of a batch is waited for; later ones join it only if ready now.
            let polled = match start {
                0 => Poll::Ready(std::future::poll_fn(|cx| self.poll_item(items, cx, &mut batch)).await),
                _ => std::future::poll_fn(|cx| Poll::Ready(self.poll_item(items, cx, &mut batch))).await,
            };
            let outcome = match polled {
                Poll::Ready(Some(Ok(()))) => None,
                Poll::Ready(Some(Err(status))) => Some(Err(status)),
                Poll::Ready(None) => Some(Ok(())),
                Poll::Pending => {
                    batch.truncate(start);
                    self.flush(&mut batch).await?;
                    continue;
                }
            };
            if let Some(end) = outcome {
                batch.truncate(start);
                self.flush(&mut batch).await?;
                return end;
            }
            let len = batch.len() - body_at;
            if len > self.max_item {
                batch.truncate(start);
                self.flush(&mut batch).await?;
                return Err(Status::resource_exhausted(format!(
                    "{}.{} produced a stream item of {len} bytes, over the limit of {}; \
                     raise max_item_size on both ends or send smaller items",
                    self.service, self.method, self.max_item
                )));
            }
            close_frame(&mut batch, start, usize::MAX).map_err(|e| Status::internal(e.to_string()))?;
            if !self.credit.try_take(len)? {
                // Out of credit: what is gathered goes first, this item once the client grants more.
                let item = batch.split_off(start);
                self.flush(&mut batch).await?;
                batch = item;
                self.credit.take(len).await?;
            }
            if batch.len() >= ITEM_BATCH {
                self.flush(&mut batch).await?;
            }
        }
    }

    /// Encodes the next item onto `batch`. A panic while producing it fails the stream here, so
    /// the items gathered before it still reach the client.
    fn poll_item(
        &self,
        items: &mut Items,
        cx: &mut TaskContext<'_>,
        batch: &mut BytesMut,
    ) -> Poll<Option<Result<(), Status>>> {
        catch_unwind(AssertUnwindSafe(|| items.poll_next_into(cx, self.codec, batch))).unwrap_or_else(|payload| {
            Poll::Ready(Some(Err(panicked(self.service, self.method, &panic_message(payload)))))
        })
    }

    async fn flush(&self, batch: &mut BytesMut) -> Result<(), Status> {
        if batch.is_empty() {
            return Ok(());
        }
        let frames = batch.split().freeze();
        self.tx.send(Outbound::Encoded(frames)).await.map_err(|_| Status::unavailable("the stream's connection closed"))
    }
}

/// The frame that fails stream `id` with `status`.
pub(super) fn end_frame(id: u32, status: &Status) -> Frame {
    Frame {
        id,
        codec: 0,
        head: Head::End {
            status: Some((status.code(), status.message().to_owned())),
            metadata: super::connection::status_metadata(status),
        },
        body: Bytes::new(),
    }
}

/// Queues a control frame (credit) without waiting: a full queue hands it to a task, since the
/// peer may be waiting on it and the consumer that owes it must not block.
pub(super) fn send_control(tx: &mpsc::Sender<Outbound>, frame: Frame) {
    if let Err(mpsc::error::TrySendError::Full(frame)) = tx.try_send(frame.into()) {
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(frame).await;
        });
    }
}

/// A `Credit` frame granting `bytes` on stream `id`.
pub(super) fn credit_frame(id: u32, bytes: u32) -> Frame {
    Frame { id, codec: 0, head: Head::Credit { bytes }, body: Bytes::new() }
}
