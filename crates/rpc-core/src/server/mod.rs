//! The server side: a listener, per-connection tasks, a router over services, and the request
//! and response types that server layers and generated dispatchers share.
//!
//! Between the socket and a handler sits a tower `Service<ServerRequest>`: the [`Router`]
//! wrapped in whatever layers the [`ServerBuilder`] was given, so rate limits, concurrency
//! limits and metrics apply to every service on the listener.

pub mod admin;
mod budget;
mod builder;
mod catch_unwind;
mod connection;
mod dispatch;
mod router;
mod stream;
mod thrift;

pub use builder::{Announce, AnnounceFuture, Listening, RunningServer, Server, ServerBuilder};
pub use dispatch::{Dispatch, Handlers, IncomingStream, MethodInfo, ServerRequest, ServerResponse, ServiceInfo};
pub use router::Router;
