//! What a generated dispatcher implements, and what it receives and returns.

use crate::{ByteStr, Codec, Metadata, Status};
use bytes::{Bytes, BytesMut};
use rpc_codecs::{Idl, Message};
use std::{future::Future, net::SocketAddr, pin::Pin};
use tokio::time::Instant;

/// A call as the server's layers and dispatchers see it: the body is still encoded.
#[derive(Clone, Debug)]
pub struct ServerRequest {
    /// Service name.
    pub service: ByteStr,
    /// Method name.
    pub method: ByteStr,
    /// The codec of the body and of the reply.
    pub codec: Codec,
    /// The encoded arguments.
    pub body: Bytes,
    /// Request metadata.
    pub metadata: Metadata,
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
    /// The caller's address.
    pub peer: Option<SocketAddr>,
}

impl ServerRequest {
    /// Decodes the arguments, mapping failure to `InvalidArgument`.
    pub fn decode<T: Message>(&self) -> Result<T, Status> {
        self.codec.decode(&self.body).map_err(|e| {
            Status::invalid_argument(format!(
                "arguments of {}.{} could not be decoded: {e}; check that client and server agree on the method",
                self.service, self.method
            ))
        })
    }

    /// Encodes `value` as the reply, in the request's codec.
    pub fn reply<T: Message>(&self, value: &T) -> Result<ServerResponse, Status> {
        // Replies are usually about the size of requests; start there to avoid regrowing.
        let mut buf = BytesMut::with_capacity(self.body.len().max(64));
        self.codec
            .encode_reply(value, &mut buf)
            .map_err(|e| Status::internal(format!("reply of {}.{}: {e}", self.service, self.method)))?;
        Ok(ServerResponse { body: buf.freeze(), metadata: Metadata::new() })
    }
}

/// A successful reply, already encoded.
#[derive(Clone, Debug, Default)]
pub struct ServerResponse {
    /// The encoded result.
    pub body: Bytes,
    /// Metadata sent back to the caller.
    pub metadata: Metadata,
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
