//! What a generated dispatcher implements, and what it receives and returns.

use crate::{
    stream::{Inbound, Inbox},
    ByteStr, Codec, Context, Items, Metadata, RpcStream, Status,
};
use bytes::{Bytes, BytesMut};
use rpc_codecs::{Idl, Message};
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
};
use tokio::time::Instant;

/// A call as the server's layers and dispatchers see it: the body is still encoded.
///
/// Who is called and by whom (service, method, metadata, caller) is in its [`Context`], the
/// same one the handler reads with [`Context::current`].
#[derive(Clone, Debug)]
pub struct ServerRequest {
    context: Context,
    /// The codec of the body and of the reply.
    pub codec: Codec,
    /// The encoded arguments.
    pub body: Bytes,
    /// When the caller stops waiting: the context's deadline, unless a server-side timeout
    /// layer brought it forward.
    pub deadline: Option<Instant>,
    /// The stream this call opened, if the client opened one (see [`ServerRequest::accept_stream`]).
    pub stream: Option<IncomingStream>,
}

impl ServerRequest {
    /// The call `context` describes, its arguments `body` encoded in `codec`.
    pub fn new(context: Context, codec: Codec, body: Bytes) -> ServerRequest {
        ServerRequest { deadline: context.deadline(), context, codec, body, stream: None }
    }

    /// The call's context.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Service name.
    pub fn service(&self) -> &ByteStr {
        self.context.service_name()
    }

    /// Method name.
    pub fn method(&self) -> &ByteStr {
        self.context.method_name()
    }

    /// Request metadata.
    pub fn metadata(&self) -> &Metadata {
        self.context.metadata()
    }

    /// Decodes the arguments, mapping failure to `InvalidArgument`.
    pub fn decode<T: Message>(&self) -> Result<T, Status> {
        self.codec.decode(&self.body).map_err(|e| {
            Status::invalid_argument(format!(
                "arguments of {}.{} could not be decoded: {e}; check that client and server agree on the method",
                self.service(),
                self.method()
            ))
        })
    }

    /// Encodes `value` as the reply, in the request's codec.
    pub fn reply<T: Message>(&self, value: &T) -> Result<ServerResponse, Status> {
        // Replies are usually about the size of requests; start there to avoid regrowing.
        let mut buf = BytesMut::with_capacity(self.body.len().max(64));
        self.codec
            .encode_reply(value, &mut buf)
            .map_err(|e| Status::internal(format!("reply of {}.{}: {e}", self.service(), self.method())))?;
        Ok(ServerResponse { body: buf.freeze(), metadata: Metadata::new(), items: None })
    }

    /// Accepts the stream the client opened: grants the client its first credit and returns the
    /// items it sends (none for a method that only streams its reply).
    pub fn accept_stream(&self) -> Result<Inbound, Status> {
        let opened = self.stream.as_ref().and_then(IncomingStream::take).ok_or_else(|| {
            Status::failed_precondition(format!(
                "{}.{} is a streaming method and the call opened no stream (or it was already accepted); \
                 call it through a generated client",
                self.service(),
                self.method()
            ))
        })?;
        (opened.accept)();
        Ok(Inbound { inbox: opened.inbox, codec: self.codec, deadline: self.deadline, guard: None })
    }

    /// Replies with a stream of items, encoded in the request's codec as the client's credit
    /// allows.
    pub fn reply_stream<T: Message>(&self, items: RpcStream<T>) -> Result<ServerResponse, Status> {
        Ok(ServerResponse { body: Bytes::new(), metadata: Metadata::new(), items: Some(Items::try_new(items)) })
    }
}

/// A successful reply, already encoded.
#[derive(Default)]
pub struct ServerResponse {
    /// The encoded result (empty for a stream).
    pub body: Bytes,
    /// Metadata sent back to the caller (with the end of a stream).
    pub metadata: Metadata,
    /// The items of a streamed reply.
    pub items: Option<Items>,
}

impl fmt::Debug for ServerResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerResponse")
            .field("body", &self.body)
            .field("metadata", &self.metadata)
            .field("stream", &self.items.is_some())
            .finish()
    }
}

/// The incoming side of a stream a call opened, until a handler accepts it. Clones of a
/// request share it; the first to accept takes it.
#[derive(Clone)]
pub struct IncomingStream {
    slot: Arc<Mutex<Option<Opened>>>,
}

pub(crate) struct Opened {
    pub(crate) inbox: Inbox,
    /// Sends the server's first credit, which tells the client the stream was accepted.
    pub(crate) accept: Box<dyn FnOnce() + Send>,
}

impl IncomingStream {
    pub(crate) fn new(opened: Opened) -> IncomingStream {
        IncomingStream { slot: Arc::new(Mutex::new(Some(opened))) }
    }

    fn take(&self) -> Option<Opened> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Whether a handler accepted the stream.
    pub(crate) fn accepted(&self) -> bool {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }
}

impl fmt::Debug for IncomingStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingStream").field("accepted", &self.accepted()).finish()
    }
}

/// Description of one method, generated from the trait.
#[derive(Clone, Copy, Debug)]
pub struct MethodInfo {
    /// Method name on the wire.
    pub name: &'static str,
    /// Doc comment of the method.
    pub doc: &'static str,
    /// Argument names and their Rust types.
    pub args: &'static [(&'static str, &'static str)],
    /// The Rust return type.
    pub returns: &'static str,
    /// The method gets no reply.
    pub oneway: bool,
    /// The method may safely run more than once.
    pub idempotent: bool,
    /// The method takes a stream of items (a `Streaming<T>` argument).
    pub client_stream: bool,
    /// The method returns a stream of items (`RpcStream<T>`).
    pub server_stream: bool,
}

/// Description of a service: its name and method table.
#[derive(Clone, Copy, Debug)]
pub struct ServiceInfo {
    /// Service name on the wire.
    pub name: &'static str,
    /// Doc comment of the trait.
    pub doc: &'static str,
    /// The methods, in declaration order.
    pub methods: &'static [MethodInfo],
    /// Adds the service and the types it uses to a schema (see [`ServiceInfo::idl`]).
    pub describe: fn(&mut Idl),
}

impl ServiceInfo {
    /// The service's schema, to print as `.proto` or `.thrift` for stock peers; the package is
    /// the service name in lower case.
    pub fn idl(&self) -> Idl {
        let mut idl = Idl::new(&self.name.to_lowercase());
        (self.describe)(&mut idl);
        idl
    }

    /// The method called `name`.
    pub fn method(&self, name: &str) -> Option<&'static MethodInfo> {
        self.methods.iter().find(|m| m.name == name)
    }
}

/// A service's server side: decodes a request, runs the handler, encodes its result.
///
/// `#[rpc_core::service]` implements it for the generated `FooServer<T>`.
pub trait Dispatch: Send + Sync + 'static {
    /// The service's name and methods.
    fn info(&self) -> &'static ServiceInfo;

    /// Handles one call addressed to this service.
    fn dispatch(&self, request: ServerRequest) -> Pin<Box<dyn Future<Output = Result<ServerResponse, Status>> + Send>>;
}

/// One service's handlers as a tower `Service`: what [`ServerBuilder::add_service_with`] wraps
/// in the service's own layers.
///
/// [`ServerBuilder::add_service_with`]: super::ServerBuilder::add_service_with
#[derive(Clone)]
pub struct Handlers(Arc<dyn Dispatch>);

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Handlers").field(&self.0.info().name).finish()
    }
}

impl tower::Service<ServerRequest> for Handlers {
    type Response = ServerResponse;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<ServerResponse, Status>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Status>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ServerRequest) -> Self::Future {
        self.0.dispatch(request)
    }
}

/// A service inside tower layers of its own.
pub(crate) struct Layered<S> {
    info: &'static ServiceInfo,
    service: S,
}

impl<S> Layered<S> {
    /// `service` wrapped by `layer`.
    pub(crate) fn new<L: tower::Layer<Handlers, Service = S>>(layer: L, service: impl Dispatch) -> Self {
        let info = service.info();
        Layered { info, service: layer.layer(Handlers(Arc::new(service))) }
    }
}

impl<S> Dispatch for Layered<S>
where
    S: tower::Service<ServerRequest, Response = ServerResponse> + Clone + Send + Sync + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    fn info(&self) -> &'static ServiceInfo {
        self.info
    }

    fn dispatch(&self, request: ServerRequest) -> Pin<Box<dyn Future<Output = Result<ServerResponse, Status>> + Send>> {
        let service = self.service.clone();
        Box::pin(async move {
            tower::ServiceExt::oneshot(service, request).await.map_err(|e| Status::from_box_error(e.into()))
        })
    }
}
