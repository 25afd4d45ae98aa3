//! Tower layers that belong to core and work on both sides of a call: [`timeout`] with deadline
//! propagation, [`retry`] with backoff, jitter and a budget, [`rate_limit`] (GCRA) and
//! [`concurrency`] limits with load shedding; on the server, [`auth`]entication and
//! authorization.
//!
//! Each layer wraps any `Service<R, Error = Status>` where `R` is a client [`Request`] or a
//! [`ServerRequest`] (see [`CallInfo`]), so the same type protects a client stack and a server
//! (`Server::builder().layer(..)`). Every policy is a sans-IO type with time passed in, so its
//! behaviour is tested without sleeping. Choosing among instances and circuit breaking per
//! endpoint live in `rpc-lb`.

pub mod auth;
pub mod concurrency;
pub mod rate_limit;
pub mod retry;
pub mod timeout;

pub use concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer};
pub use rate_limit::{Gcra, RateLimit, RateLimitLayer};
pub use retry::{Backoff, Retry, RetryBudget, RetryLayer, RetryPolicy};
pub use timeout::{Timeout, TimeoutFuture, TimeoutLayer};

use crate::{client::Request, server::ServerRequest, ByteStr, Metadata, Status};
use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::Instant;

/// The boxed future of layers that must wait on their own (queues, retries, balancers).
pub type LayerFuture<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;

pin_project! {
    /// The future of a layer that either passed the call on or refused it at once; unboxed, so
    /// a layer that only decides costs no allocation per call.
    pub struct PassOrRefuse<F> {
        #[pin]
        state: PassState<F>,
    }
}

pin_project! {
    #[project = PassProj]
    enum PassState<F> {
        Pass {
            #[pin]
            fut: F,
        },
        Refuse {
            status: Option<Status>,
        },
    }
}

impl<F> PassOrRefuse<F> {
    /// A call passed on as `fut`.
    pub fn pass(fut: F) -> Self {
        PassOrRefuse { state: PassState::Pass { fut } }
    }

    /// A call refused with `status`.
    pub fn refuse(status: Status) -> Self {
        PassOrRefuse { state: PassState::Refuse { status: Some(status) } }
    }
}

impl<F, T> Future for PassOrRefuse<F>
where
    F: Future<Output = Result<T, Status>>,
{
    type Output = Result<T, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            PassProj::Pass { fut } => fut.poll(cx),
            PassProj::Refuse { status } => Poll::Ready(Err(status
                .take()
                .unwrap_or_else(|| Status::internal("layer future polled after completion")))),
        }
    }
}

/// What a layer needs to know about a call, on the client ([`Request`]) or the server
/// ([`ServerRequest`]) side.
pub trait CallInfo: Send + 'static {
    /// True when the service below enforces the deadline set with
    /// [`CallInfo::limit_timeout`] itself, so a timeout layer needs no timer of its own. On the
    /// client the channel does (it sends the deadline and fails the call when it passes; every
    /// `Service<Request>` that carries calls to a server must honour `CallOptions::timeout`); on
    /// the server the deadline was fixed before the layers ran, so the layer keeps a timer.
    const DEADLINE_ENFORCED_BELOW: bool;

    /// Service name.
    fn service(&self) -> &ByteStr;
    /// Method name.
    fn method(&self) -> &ByteStr;
    /// The call's metadata (the caller's name is under [`crate::CALLER`] on the server).
    fn metadata(&self) -> &Metadata;
    /// When the caller stops waiting, as far as this side knows.
    fn deadline(&self) -> Option<Instant>;
    /// Makes the call give up after `timeout` from now, if that is sooner than its deadline.
    fn limit_timeout(&mut self, timeout: Duration);
    /// Bytes of encoded arguments, if they are encoded yet (on the server; a client encodes
    /// them in the channel, below every layer).
    fn request_size(&self) -> Option<usize>;
}

/// The size of a successful reply's encoded body, for metrics and spans.
pub trait ReplySize {
    /// Bytes of the encoded result.
    fn reply_size(&self) -> usize;
}

impl ReplySize for crate::Response {
    fn reply_size(&self) -> usize {
        self.body.len()
    }
}

impl ReplySize for crate::ServerResponse {
    fn reply_size(&self) -> usize {
        self.body.len()
    }
}

impl CallInfo for Request {
    const DEADLINE_ENFORCED_BELOW: bool = true;

    fn service(&self) -> &ByteStr {
        &self.service
    }

    fn method(&self) -> &ByteStr {
        &self.method
    }

    fn metadata(&self) -> &Metadata {
        &self.options.metadata
    }

    fn deadline(&self) -> Option<Instant> {
        let own = self.options.timeout.map(|t| Instant::now() + t);
        let inherited = crate::Context::current().and_then(|c| c.deadline());
        match (own, inherited) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn limit_timeout(&mut self, timeout: Duration) {
        self.options.timeout = Some(self.options.timeout.map_or(timeout, |t| t.min(timeout)));
    }

    fn request_size(&self) -> Option<usize> {
        None
    }
}

impl CallInfo for ServerRequest {
    const DEADLINE_ENFORCED_BELOW: bool = false;

    fn service(&self) -> &ByteStr {
        ServerRequest::service(self)
    }

    fn method(&self) -> &ByteStr {
        ServerRequest::method(self)
    }

    fn metadata(&self) -> &Metadata {
        ServerRequest::metadata(self)
    }

    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn limit_timeout(&mut self, timeout: Duration) {
        let limit = Instant::now() + timeout;
        self.deadline = Some(self.deadline.map_or(limit, |d| d.min(limit)));
    }

    fn request_size(&self) -> Option<usize> {
        Some(self.body.len())
    }
}

/// The status a layer answers with when it refuses a call before it reached a handler.
fn refused(code: crate::Code, what: String) -> Status {
    Status::new(code, what).with_not_started()
}
