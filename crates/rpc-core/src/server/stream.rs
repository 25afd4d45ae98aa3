//! The server's half of a stream: running a streaming handler and sending its items.
//!
//! A stream runs in its own task from the start (it outlives any single poll). The task runs the
//! handler, then pulls the items of the `RpcStream` it returned, each only once the client has
//! credit for it, and ends the stream with an `End` frame (or, for a method that streams only
//! its arguments, a `Reply`). The handler's deadline covers the whole stream, and a panic while
//! producing an item fails that stream alone.

use super::{catch_unwind::CatchUnwind, IncomingStream, ServerRequest, ServerResponse};
use crate::{
    stream::SendCredit,
    transport::{Frame, Head},
    ByteStr, Codec, Context, Metadata, Status,
};
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;
use tokio::{sync::mpsc, time::Instant};
use tower::Service;

/// What a stream's task needs besides the handler's future.
pub(super) struct StreamTask {
    pub(super) id: u32,
    pub(super) codec: Codec,
    pub(super) service: ByteStr,
    pub(super) method: ByteStr,
    pub(super) context: Context,
    pub(super) deadline: Option<Instant>,
    pub(super) incoming: IncomingStream,
    /// The client's credit for items this side sends.
    pub(super) credit: Arc<SendCredit>,
    pub(super) max_item: usize,
    pub(super) tx: mpsc::Sender<Frame>,
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
        let StreamTask { id, codec, service, method, context, deadline, incoming, credit, max_item, tx } = self;
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
            while let Some(item) = items.next().await {
                let body = item?;
                if body.len() > max_item {
                    return Err(Status::resource_exhausted(format!(
                        "{service}.{method} produced a stream item of {} bytes, over the limit of {max_item}; \
                         raise max_item_size on both ends or send smaller items",
                        body.len()
                    )));
                }
                credit.take(body.len()).await?;
                let frame = Frame { id, codec: codec.id(), head: Head::Item, body };
                tx.send(frame).await.map_err(|_| Status::unavailable("the stream's connection closed"))?;
            }
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
        let outcome = outcome.unwrap_or_else(|panic| {
            tracing::error!(service = %service, method = %method, panic = %panic, "stream handler panicked");
            Err(Status::internal(format!("the handler of {service}.{method} panicked: {panic}")))
        });
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

/// The frame that fails stream `id` with `status`.
pub(super) fn end_frame(id: u32, status: &Status) -> Frame {
    Frame {
        id,
        codec: 0,
        head: Head::End { status: Some((status.code(), status.message().to_owned())), metadata: Metadata::new() },
        body: Bytes::new(),
    }
}

/// Queues a control frame (credit) without waiting: a full queue hands it to a task, since the
/// peer may be waiting on it and the consumer that owes it must not block.
pub(super) fn send_control(tx: &mpsc::Sender<Frame>, frame: Frame) {
    if let Err(mpsc::error::TrySendError::Full(frame)) = tx.try_send(frame) {
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
