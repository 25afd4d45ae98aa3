//! gRPC over one HTTP/2 connection, as etcd's own clients speak it: unary calls and
//! bidirectional streams, nothing more.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use prost::Message;
use std::fmt;
use tokio::net::TcpStream;

/// The largest message read from etcd; a larger length prefix means a broken stream.
const MAX_MESSAGE: usize = 64 << 20;

/// Why a call to etcd failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Nothing was sent: the connection could not be made or was already closed.
    NotSent(String),
    /// The connection failed while the call was under way; etcd may have acted on it.
    Broken(String),
    /// etcd answered with a gRPC error status.
    Status {
        /// The gRPC status code.
        code: u16,
        /// etcd's message, e.g. `etcdserver: requested lease not found`.
        message: String,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::NotSent(why) => write!(f, "not sent to etcd: {why}"),
            WireError::Broken(why) => write!(f, "connection to etcd broke: {why}"),
            WireError::Status { code, message } => write!(f, "etcd answered grpc-status {code}: {message}"),
        }
    }
}

impl std::error::Error for WireError {}

fn broken(e: impl fmt::Display) -> WireError {
    WireError::Broken(e.to_string())
}

/// One HTTP/2 connection to an etcd member. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct Connection {
    send: SendRequest<Bytes>,
    authority: String,
}

impl Connection {
    /// Connects to the etcd member serving clients at `addr` (`host:port`, plain HTTP/2).
    pub async fn connect(addr: &str) -> Result<Connection, WireError> {
        let not_sent = |e: &dyn fmt::Display| WireError::NotSent(format!("{addr}: {e}"));
        let tcp = TcpStream::connect(addr).await.map_err(|e| not_sent(&e))?;
        tcp.set_nodelay(true).map_err(|e| not_sent(&e))?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .handshake(tcp)
            .await
            .map_err(|e| not_sent(&e))?;
        tokio::spawn(connection);
        Ok(Connection { send, authority: addr.to_owned() })
    }

    fn request(&self, path: &str) -> http::Request<()> {
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::POST;
        // Paths are our constants and the authority was accepted by `connect`.
        *request.uri_mut() = format!("http://{}{path}", self.authority).parse().unwrap_or_default();
        let headers = request.headers_mut();
        headers.insert("content-type", http::HeaderValue::from_static("application/grpc"));
        headers.insert("te", http::HeaderValue::from_static("trailers"));
        request
    }

    /// Opens a call on `path`, sending `first` without ending the request body.
    async fn open<Req: Message>(
        &self,
        path: &str,
        first: &Req,
        end: bool,
    ) -> Result<(h2::SendStream<Bytes>, h2::client::ResponseFuture), WireError> {
        let mut send = self.send.clone().ready().await.map_err(|e| WireError::NotSent(e.to_string()))?;
        let (response, mut body) =
            send.send_request(self.request(path), false).map_err(|e| WireError::NotSent(e.to_string()))?;
        body.send_data(frame(first), end).map_err(broken)?;
        Ok((body, response))
    }

    /// A unary call.
    pub async fn call<Req: Message, Resp: Message + Default>(
        &self,
        path: &str,
        request: &Req,
    ) -> Result<Resp, WireError> {
        let (_body, response) = self.open(path, request, true).await?;
        let mut stream = GrpcStream::new(response.await.map_err(broken)?)?;
        match stream.next().await? {
            Some(reply) => {
                stream.finish().await?;
                Ok(reply)
            }
            None => Err(WireError::Broken(format!("etcd answered {path} with no message"))),
        }
    }

    /// Opens a bidirectional stream with its first request: a sender of further requests and a
    /// reader of replies. etcd sends response headers only with its first reply, so the first
    /// request goes out before waiting on them.
    pub async fn stream<Req: Message>(
        &self,
        path: &str,
        first: &Req,
    ) -> Result<(h2::SendStream<Bytes>, GrpcStream), WireError> {
        let (body, response) = self.open(path, first, false).await?;
        Ok((body, GrpcStream::new(response.await.map_err(broken)?)?))
    }
}

/// A gRPC message as framed on the wire: uncompressed flag, length, bytes.
pub fn frame<M: Message>(message: &M) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    // etcd refuses requests over 1.5 MiB by default, far below 4 GiB.
    buf.put_u32(len as u32);
    message.encode(&mut buf).expect("a BytesMut grows as needed");
    buf.freeze()
}

/// The status a gRPC response carries in `headers` (a trailers-only response) or its trailers.
fn status_of(headers: &http::HeaderMap) -> Result<(), WireError> {
    let Some(code) = headers.get("grpc-status") else { return Ok(()) };
    let code = code.to_str().ok().and_then(|c| c.parse().ok()).unwrap_or(2);
    if code == 0 {
        return Ok(());
    }
    let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or("").to_owned();
    Err(WireError::Status { code, message })
}

/// The messages of a gRPC response body.
#[derive(Debug)]
pub struct GrpcStream {
    body: h2::RecvStream,
    buf: BytesMut,
}

impl GrpcStream {
    fn new(response: http::Response<h2::RecvStream>) -> Result<GrpcStream, WireError> {
        status_of(response.headers())?;
        Ok(GrpcStream { body: response.into_body(), buf: BytesMut::new() })
    }

    /// The next message, or `None` at the end of a body that ended well.
    pub async fn next<M: Message + Default>(&mut self) -> Result<Option<M>, WireError> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                if len > MAX_MESSAGE {
                    return Err(WireError::Broken(format!("etcd sent a {len}-byte message, over {MAX_MESSAGE}")));
                }
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    let message = self.buf.split_to(len);
                    return M::decode(message).map(Some).map_err(broken);
                }
            }
            match self.body.data().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(broken)?;
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                    self.buf.extend_from_slice(&chunk);
                }
                None => {
                    self.finish().await?;
                    return Ok(None);
                }
            }
        }
    }

    /// Reads the trailers: the call's status.
    async fn finish(&mut self) -> Result<(), WireError> {
        match self.body.trailers().await.map_err(broken)? {
            Some(trailers) => status_of(&trailers),
            None => Ok(()),
        }
    }
}
