//! The client side: requests, the [`Channel`] that carries them, and the typed [`Call`] a
//! generated client method returns.
//!
//! The seam between generated code and the transport is the tower
//! `Service<Request, Response = Response, Error = Status>`: a [`Channel`] is one, and so is any
//! stack of layers around it, so timeouts, retries, breakers and balancers compose freely and
//! never see which codec is used (the channel encodes the body).

mod call;
mod channel;
mod connection;
mod pending;
mod request;
mod thrift;
mod writer;

pub use call::{Call, CallFuture};
pub use channel::{Channel, ChannelBuilder, ChannelFuture};
pub use request::{Body, CallOptions, Request, Response};
pub use thrift::ThriftChannel;
