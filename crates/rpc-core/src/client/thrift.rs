//! A client transport that speaks Apache Thrift's framed transport, to call stock Thrift
//! servers with generated clients: `CatalogClient::new(ThriftChannel::connect(addr, codec))`.

use super::{Request, Response};
use crate::transport::thrift::{self as wire, MessageHead};
use crate::transport::DEFAULT_MAX_FRAME_SIZE;
use crate::{Codec, Metadata, Status};
use bytes::{Bytes, BytesMut};
use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::{io::AsyncWriteExt, net::TcpStream, sync::Mutex};

/// One TCP connection to an Apache Thrift server (`TFramedTransport`, binary or compact
/// protocol). Calls are sent one at a time, in order, as Thrift servers expect; clones share
/// the connection.
///
/// Metadata and deadlines do not travel (Thrift has no place for them); a call's timeout is
/// enforced locally. A call that fails on the connection, times out or is dropped before its
/// reply closes it (its reply may still arrive), and the next call connects again to the same
/// address.
#[derive(Clone, Debug)]
pub struct ThriftChannel {
    conn: Arc<Mutex<Conn>>,
    codec: Codec,
}

#[derive(Debug)]
struct Conn {
    addr: SocketAddr,
    /// `None` after a call broke the connection, until the next call reconnects.
    stream: Option<TcpStream>,
    buf: BytesMut,
    seq: i32,
}

impl ThriftChannel {
    /// Connects to `addr`, speaking `codec` (`Codec::ThriftBinary` or `Codec::ThriftCompact`).
    pub async fn connect(addr: impl tokio::net::ToSocketAddrs, codec: Codec) -> Result<ThriftChannel, Status> {
        if !matches!(codec, Codec::ThriftBinary | Codec::ThriftCompact) {
            return Err(Status::invalid_argument(format!(
                "a ThriftChannel speaks thrift-binary or thrift-compact, not {codec}"
            )));
        }
        let stream = TcpStream::connect(addr).await.map_err(|e| Status::unavailable(format!("cannot connect: {e}")))?;
        let addr = stream.peer_addr().map_err(|e| Status::unavailable(format!("cannot connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        let conn = Conn { addr, stream: Some(stream), buf: BytesMut::new(), seq: 0 };
        Ok(ThriftChannel { conn: Arc::new(Mutex::new(conn)), codec })
    }

    /// The protocol this channel speaks.
    pub fn codec(&self) -> Codec {
        self.codec
    }
}

impl tower::Service<Request> for ThriftChannel {
    type Response = Response;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Status>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let (conn, codec) = (Arc::clone(&self.conn), self.codec);
        Box::pin(async move {
            let mut body = BytesMut::new();
            request.body.encode(codec, &mut body).map_err(|e| Status::invalid_argument(e.to_string()))?;
            let mut conn = conn.lock().await;
            let exchange = exchange(&mut conn, codec, &request, &body);
            match request.options.timeout {
                Some(timeout) => tokio::time::timeout(timeout, exchange)
                    .await
                    .unwrap_or_else(|_| Err(Status::deadline_exceeded(format!("no Thrift reply within {timeout:?}")))),
                None => exchange.await,
            }
        })
    }
}

async fn exchange(conn: &mut Conn, codec: Codec, request: &Request, body: &[u8]) -> Result<Response, Status> {
    conn.seq = conn.seq.wrapping_add(1);
    let oneway = request.options.oneway;
    let head = MessageHead {
        name: rpc_codecs::idl::thrift_name(request.method.as_str()).into_owned(),
        kind: if oneway { wire::ONEWAY } else { wire::CALL },
        seq: conn.seq,
    };
    let frame = wire::frame(codec, &head, body);
    // The stream is out of `conn` until the exchange completes: a call that fails, times out
    // or is dropped half way leaves no connection behind, and the next call connects again.
    let mut stream = match conn.stream.take() {
        Some(stream) if still_open(&stream) => stream,
        _ => {
            conn.buf.clear();
            let stream = TcpStream::connect(conn.addr)
                .await
                .map_err(|e| Status::unavailable(format!("cannot reconnect to {}: {e}", conn.addr)))?;
            let _ = stream.set_nodelay(true);
            stream
        }
    };
    stream.write_all(&frame).await.map_err(|e| Status::unavailable(format!("Thrift write failed: {e}")))?;
    if oneway {
        conn.stream = Some(stream);
        return Ok(Response { codec, body: Bytes::new(), metadata: Metadata::new() });
    }
    let reply = wire::read_frame(&mut stream, &mut conn.buf, DEFAULT_MAX_FRAME_SIZE)
        .await
        .map_err(|e| Status::unavailable(format!("Thrift read failed: {e}")))?
        .ok_or_else(|| Status::unavailable("the Thrift server closed the connection"))?;
    let (reply_head, at) = wire::parse_head(codec, &reply).map_err(Status::protocol)?;
    if reply_head.seq != head.seq {
        return Err(Status::protocol(format!("reply to call {} where {} was expected", reply_head.seq, head.seq)));
    }
    // A whole reply to this call was read: the connection is in step for the next one.
    conn.stream = Some(stream);
    match reply_head.kind {
        wire::REPLY => Ok(Response { codec, body: reply.slice(at..), metadata: Metadata::new() }),
        wire::EXCEPTION => Err(wire::exception_status(codec, &reply[at..])),
        other => Err(Status::protocol(format!("Thrift message type {other} in reply to a call"))),
    }
}

/// Whether a kept connection can carry the next call: the server may have closed it while it
/// was idle (Thrift servers have idle timeouts too), and then a call sent on it is lost. Data
/// waiting on it would be a reply to no call, so that connection is dropped as well.
fn still_open(stream: &TcpStream) -> bool {
    matches!(stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
