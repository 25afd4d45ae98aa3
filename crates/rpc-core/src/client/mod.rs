//! The client side: requests, the [`Channel`] that carries them, and the typed [`Call`] a
//! generated client method returns.
//!
//! The seam between generated code and the transport is the tower
//! `Service<Request, Response = Response, Error = Status>`: a [`Channel`] is one, and so is any
//! stack of layers around it, so timeouts, retries, breakers and balancers compose freely and
//! never see which codec is used (the channel encodes the body).
//!
//! Streaming methods open a stream instead, through [`OpenStream`], which a [`Channel`]
//! implements: a stream is not one request and one response, so it does not pass through
//! `Service` layers.

mod call;
mod channel;
mod connection;
mod pending;
mod request;
mod stream;
mod thrift;
mod writer;

pub use call::{Call, CallFuture, CallWithMetadata, ClientStreamCall, OpenStream, StreamCall, StreamFuture};
pub use channel::{Channel, ChannelBuilder, ChannelFuture};
pub use request::{Body, CallOptions, Request, Response};
pub use thrift::ThriftChannel;
