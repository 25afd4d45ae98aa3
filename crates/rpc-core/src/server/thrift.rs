//! Serving a connection that speaks Apache Thrift's framed transport instead of our protocol.
//!
//! The connection task hands over after the first bytes: calls are read one frame at a time,
//! passed through the same layers and router as ours (the codec is the Thrift protocol the
//! client speaks), and answered in order, as a Thrift client expects. A method name of the form
//! `Service:method` (Thrift's multiplexed protocol) names the service; a plain name goes to the
//! service that has that method.

use super::{
    budget::Budget, builder::ServerConfig, catch_unwind::CatchUnwind, connection::reply_too_large, ServerRequest,
    ServerResponse,
};
use crate::transport::thrift::{self as wire, MessageHead};
use crate::transport::{
    io::{ReadIo, WriteIo},
    FrameWriter, LARGE_FRAME,
};
use crate::{ByteStr, Codec, Context, Metadata, PeerIdentity, Status};
use bytes::BytesMut;
use std::{net::SocketAddr, sync::Arc};
use tokio::time::Instant;
use tokio::{io::AsyncReadExt, sync::watch};
use tower::{Service, ServiceExt};

/// Serves Thrift calls on a connection whose first bytes (`buffered`) were already read, until
/// it closes, breaks the protocol, stays idle past the server's idle timeout, takes longer than
/// the frame timeout to send a frame, or the server shuts down.
///
/// Each handler counts against the server's handler budget while it runs, and one still running
/// when the shutdown's grace period ends is answered with an exception. A frame over 64 KiB
/// takes its length from the server's request byte budget before its body is read, and holds
/// it until its call is answered.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<S>(
    mut read: ReadIo,
    mut buffered: BytesMut,
    writer: &mut FrameWriter<WriteIo>,
    mut service: S,
    peer: SocketAddr,
    identity: Option<Arc<PeerIdentity>>,
    codec: Codec,
    config: &ServerConfig,
    budget: &Budget,
    shutdown: &mut watch::Receiver<Option<Instant>>,
) where
    S: Service<ServerRequest, Response = ServerResponse, Error = Status> + Send,
    S::Future: Send,
{
    loop {
        // Thrift has no go-away: a draining server closes between calls.
        if shutdown.borrow().is_some() {
            return;
        }
        if buffered.is_empty() {
            let first = tokio::select! {
                read = read.read_buf(&mut buffered) => read,
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(config.idle_timeout) => {
                    tracing::debug!(%peer, "idle Thrift connection closed");
                    return;
                }
            };
            if !matches!(first, Ok(n) if n > 0) {
                return;
            }
        }
        // From its first byte, a frame has the frame timeout to arrive whole; a wait for the
        // request byte budget is the server's, not the client's, and does not count.
        let mut deadline = Instant::now() + config.frame_timeout;
        let len = tokio::select! {
            len = tokio::time::timeout_at(deadline, wire::read_len(&mut read, &mut buffered)) => match len {
                Ok(Ok(true)) => wire::declared_len(&buffered),
                Ok(Ok(false)) => return,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "Thrift connection failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, timeout = ?config.frame_timeout, "Thrift frame length still incomplete after the frame timeout; connection closed");
                    return;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _bytes = match len.filter(|&len| len > LARGE_FRAME && len <= config.max_frame_size) {
            Some(len) => {
                let waiting_since = Instant::now();
                let bytes = tokio::select! {
                    bytes = budget.requests.take(len) => bytes,
                    _ = shutdown.changed() => return,
                };
                deadline += waiting_since.elapsed();
                bytes
            }
            None => None,
        };
        let frame = tokio::select! {
            frame = tokio::time::timeout_at(deadline, wire::read_frame(&mut read, &mut buffered, config.max_frame_size)) => match frame {
                Ok(frame) => frame,
                Err(_) => {
                    tracing::debug!(%peer, timeout = ?config.frame_timeout, "Thrift frame still incomplete after the frame timeout; connection closed");
                    return;
                }
            },
            _ = shutdown.changed() => return,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "Thrift connection failed");
                return;
            }
        };
        let (head, at) = match wire::parse_head(codec, &frame) {
            Ok(parsed) if parsed.0.kind == wire::CALL || parsed.0.kind == wire::ONEWAY => parsed,
            Ok((head, _)) => {
                tracing::debug!(%peer, kind = head.kind, "Thrift message that is not a call");
                return;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "malformed Thrift message header");
                return;
            }
        };
        let (service_name, method) = match head.name.split_once(':') {
            Some((service_name, method)) => (ByteStr::from(service_name.to_owned()), method.to_owned()),
            None => {
                let method = rpc_codecs::idl::from_thrift_name(&head.name);
                // Errors, logs and metrics then name the service the call reached.
                let service_name = config.services.service_with(method).map(ByteStr::from_static);
                (service_name.unwrap_or_default(), head.name.clone())
            }
        };
        let method_name = ByteStr::from(rpc_codecs::idl::from_thrift_name(&method).to_owned());
        // Thrift carries no metadata or deadline; the context still tells handlers and layers
        // who is calling.
        let context = Context::new(service_name, method_name, None, Metadata::new(), Some(peer), identity.clone());
        let request = ServerRequest::new(context.clone(), codec, frame.slice(at..));
        let result = match budget.check().map(|()| budget.take_handler()) {
            Ok(Some(_handler)) => match service.ready().await {
                Ok(ready) => {
                    let work = CatchUnwind::new(context.clone().scope(context.sync_scope(|| ready.call(request))));
                    tokio::select! {
                        outcome = work => outcome.unwrap_or_else(|panic| Err(Status::internal(format!("the handler panicked: {panic}")))),
                        () = grace_ended(shutdown) => Err(Status::unavailable("server shut down before the call finished (its grace period ended)")),
                    }
                }
                Err(status) => Err(status),
            },
            Ok(None) => Err(budget.handler_refusal()),
            Err(status) => Err(status),
        };
        if head.kind == wire::ONEWAY {
            continue;
        }
        // A multiplexed call ("Service:method") is answered with the bare method name, as
        // Apache Thrift's multiplexed processors do; clients check the name they called.
        let mut head = MessageHead { name: method, kind: wire::REPLY, ..head };
        let exception = |head: &mut MessageHead, status: &Status| {
            head.kind = wire::EXCEPTION;
            wire::frame(codec, head, &wire::exception_body(codec, status))
        };
        let reply = match result {
            Ok(response) => wire::frame(codec, &head, &response.body),
            Err(status) => exception(&mut head, &status),
        };
        // Too large for the frame limit: that call fails, and the connection carries on, where
        // a stock client would drop it over a frame longer than it takes.
        let reply = match reply.len() - 4 > config.max_frame_size {
            true => exception(&mut head, &reply_too_large(reply.len() - 4, config.max_frame_size)),
            false => reply,
        };
        writer.push_raw(&reply);
        if let Err(e) = writer.flush().await {
            tracing::debug!(%peer, error = %e, "Thrift reply not written");
            return;
        }
    }
}

/// Resolves when the server's shutdown grace period ends (at once if the server is dropped).
async fn grace_ended(shutdown: &mut watch::Receiver<Option<Instant>>) {
    loop {
        let deadline = *shutdown.borrow_and_update();
        if let Some(deadline) = deadline {
            return tokio::time::sleep_until(deadline).await;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}
