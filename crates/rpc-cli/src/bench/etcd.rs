//! A minimal etcd v3 client for the registry benchmark: gRPC over one HTTP/2 connection, as
//! etcd's own clients speak it, so the baseline pays no gateway or translation on the way.
//!
//! Only the fields the benchmark uses are declared; protobuf skips the rest.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use prost::Message;
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// etcd's `ResponseHeader`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ResponseHeader {
    #[prost(uint64, tag = "2")]
    pub(super) member_id: u64,
    #[prost(int64, tag = "3")]
    pub(super) revision: i64,
}

/// etcd's `PutRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub(super) key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub(super) value: Vec<u8>,
}

/// etcd's `PutResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub(super) header: Option<ResponseHeader>,
}

/// etcd's `RangeRequest` (linearizable unless `serializable`).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub(super) key: Vec<u8>,
    #[prost(bool, tag = "7")]
    pub(super) serializable: bool,
}

/// etcd's `KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub(super) key: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub(super) mod_revision: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub(super) value: Vec<u8>,
}

/// etcd's `RangeResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct RangeResponse {
    #[prost(message, optional, tag = "1")]
    pub(super) header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub(super) kvs: Vec<KeyValue>,
}

/// etcd's `LeaseGrantRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct LeaseGrantRequest {
    #[prost(int64, tag = "1")]
    pub(super) ttl: i64,
}

/// etcd's `LeaseGrantResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct LeaseGrantResponse {
    #[prost(int64, tag = "2")]
    pub(super) id: i64,
}

/// etcd's `LeaseKeepAliveRequest` and `LeaseKeepAliveResponse` (same field numbers for `ID`).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct LeaseKeepAlive {
    #[prost(int64, tag = "1")]
    pub(super) id: i64,
}

/// etcd's `LeaseKeepAliveResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct LeaseKeepAliveResponse {
    #[prost(int64, tag = "2")]
    pub(super) id: i64,
    #[prost(int64, tag = "3")]
    pub(super) ttl: i64,
}

/// etcd's `WatchRequest` holding a `WatchCreateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct WatchRequest {
    #[prost(message, optional, tag = "1")]
    pub(super) create: Option<WatchCreateRequest>,
}

/// etcd's `WatchCreateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct WatchCreateRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub(super) key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub(super) range_end: Vec<u8>,
}

/// etcd's `WatchResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct WatchResponse {
    #[prost(message, repeated, tag = "11")]
    pub(super) events: Vec<Event>,
}

/// etcd's `Event`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Event {
    #[prost(message, optional, tag = "2")]
    pub(super) kv: Option<KeyValue>,
}

/// etcd's `StatusResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    pub(super) header: Option<ResponseHeader>,
    #[prost(uint64, tag = "4")]
    pub(super) leader: u64,
}

/// etcd's `StatusRequest` (empty).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Empty {}

/// One HTTP/2 connection to an etcd member.
#[derive(Clone)]
pub(super) struct Etcd {
    send: SendRequest<Bytes>,
    authority: String,
}

impl Etcd {
    pub(super) async fn connect(addr: &str) -> Result<Etcd, BoxError> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .handshake(tcp)
            .await?;
        tokio::spawn(connection);
        Ok(Etcd { send, authority: addr.to_owned() })
    }

    fn request(&self, path: &str) -> Result<http::Request<()>, BoxError> {
        Ok(http::Request::builder()
            .method("POST")
            .uri(format!("http://{}{path}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())?)
    }

    /// A unary call.
    pub(super) async fn call<Req: Message, Resp: Message + Default>(
        &self,
        path: &str,
        request: &Req,
    ) -> Result<Resp, BoxError> {
        let mut send = self.send.clone().ready().await?;
        let (response, mut body) = send.send_request(self.request(path)?, false)?;
        body.send_data(frame(request), true)?;
        let mut stream = GrpcStream { body: response.await?.into_body(), buf: BytesMut::new() };
        let reply = stream.next().await?.ok_or("etcd answered no message")?;
        if let Some(trailers) = stream.body.trailers().await? {
            let status = trailers.get("grpc-status").and_then(|s| s.to_str().ok()).unwrap_or("0");
            if status != "0" {
                let message = trailers.get("grpc-message").and_then(|s| s.to_str().ok()).unwrap_or("");
                return Err(format!("etcd {path}: grpc-status {status}: {message}").into());
            }
        }
        Ok(reply)
    }

    /// Opens a bidirectional stream with its first request: a sender of further requests and a
    /// reader of replies. etcd sends response headers only with its first reply, so the first
    /// request must go out before waiting on them.
    pub(super) async fn stream<Req: Message>(
        &self,
        path: &str,
        first: &Req,
    ) -> Result<(h2::SendStream<Bytes>, GrpcStream), BoxError> {
        let mut send = self.send.clone().ready().await?;
        let (response, mut body) = send.send_request(self.request(path)?, false)?;
        body.send_data(frame(first), false)?;
        let response = response.await?;
        Ok((body, GrpcStream { body: response.into_body(), buf: BytesMut::new() }))
    }
}

/// A gRPC message as framed on the wire: uncompressed flag, length, bytes.
pub(super) fn frame<M: Message>(message: &M) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + message.encoded_len());
    buf.put_u8(0);
    buf.put_u32(message.encoded_len() as u32);
    message.encode(&mut buf).expect("a BytesMut grows as needed");
    buf.freeze()
}

/// The messages of a gRPC response body.
pub(super) struct GrpcStream {
    body: h2::RecvStream,
    buf: BytesMut,
}

impl GrpcStream {
    /// The next message, or `None` at the end of the body.
    pub(super) async fn next<M: Message + Default>(&mut self) -> Result<Option<M>, BoxError> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    let message = self.buf.split_to(len);
                    return Ok(Some(M::decode(message)?));
                }
            }
            match self.body.data().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                    self.buf.extend_from_slice(&chunk);
                }
                None => return Ok(None),
            }
        }
    }
}
