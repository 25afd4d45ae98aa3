//! Serving a connection that speaks Apache Thrift's framed transport instead of our protocol.
//!
//! The connection task hands over after the first bytes: calls are read one frame at a time,
//! passed through the same layers and router as ours (the codec is the Thrift protocol the
//! client speaks), and answered in order, as a Thrift client expects. A method name of the form
//! `Service:method` (Thrift's multiplexed protocol) names the service; a plain name goes to the
//! service that has that method.

use super::{builder::ServerConfig, catch_unwind::CatchUnwind, ServerRequest, ServerResponse};
use crate::transport::thrift::{self as wire, MessageHead};
use crate::transport::{
    io::{ReadIo, WriteIo},
    FrameWriter,
};
use crate::{ByteStr, Codec, Context, Metadata, PeerIdentity, Status};
use bytes::BytesMut;
use std::{net::SocketAddr, sync::Arc};
use tokio::sync::watch;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// Serves Thrift calls on a connection whose first bytes (`buffered`) were already read, until
/// it closes, breaks the protocol, stays idle past the server's idle timeout, or the server
/// shuts down.
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
    shutdown: &mut watch::Receiver<Option<Instant>>,
) where
    S: Service<ServerRequest, Response = ServerResponse, Error = Status> + Send,
    S::Future: Send,
{
    loop {
        let frame = tokio::select! {
            frame = wire::read_frame(&mut read, &mut buffered, config.max_frame_size) => frame,
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(config.idle_timeout) => {
                tracing::debug!(%peer, "idle Thrift connection closed");
                return;
            }
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
            Some((service_name, method)) => (service_name.to_owned(), method.to_owned()),
            None => (String::new(), head.name.clone()),
        };
        let (service_name, method_name) =
            (ByteStr::from(service_name), ByteStr::from(rpc_codecs::idl::from_thrift_name(&method).to_owned()));
        // Thrift carries no metadata or deadline; the context still tells handlers and layers
        // who is calling.
        let context = Context::new(
            service_name.clone(),
            method_name.clone(),
            None,
            Metadata::new(),
            Some(peer),
            identity.clone(),
        );
        let request = ServerRequest {
            service: service_name,
            method: method_name,
            codec,
            body: frame.slice(at..),
            metadata: Metadata::new(),
            deadline: None,
            peer: Some(peer),
            identity: identity.clone(),
            stream: None,
        };
        let result = match service.ready().await {
            Ok(ready) => CatchUnwind::new(context.clone().scope(context.sync_scope(|| ready.call(request))))
                .await
                .unwrap_or_else(|panic| Err(Status::internal(format!("the handler panicked: {panic}")))),
            Err(status) => Err(status),
        };
        if head.kind == wire::ONEWAY {
            continue;
        }
        // A multiplexed call ("Service:method") is answered with the bare method name, as
        // Apache Thrift's multiplexed processors do; clients check the name they called.
        let head = MessageHead { name: method, ..head };
        let reply = match result {
            Ok(response) => wire::frame(codec, &MessageHead { kind: wire::REPLY, ..head }, &response.body),
            Err(status) => {
                let body = wire::exception_body(codec, &status);
                wire::frame(codec, &MessageHead { kind: wire::EXCEPTION, ..head }, &body)
            }
        };
        writer.push_raw(&reply);
        if let Err(e) = writer.flush().await {
            tracing::debug!(%peer, error = %e, "Thrift reply not written");
            return;
        }
    }
}
