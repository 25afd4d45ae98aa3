//! [`TimeoutLayer`]: bounds how long a call may take, and makes the bound travel.
//!
//! On the client the timeout is written into the request, so the channel sends it as the call's
//! deadline, fails the call when it passes, and the server cancels the handler (whose own calls
//! inherit the deadline). A deadline already inherited from the handler being served wins when
//! it is sooner. Layers below that make several attempts (retries, failover) carry the same
//! deadline to each, so the bound covers the whole call; the channel's timer is the only one.
//! On the server the layer bounds the handler with its own timer.

use super::CallInfo;
use crate::{ByteStr, Status};
use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};
use tower::{Layer, Service};

/// Wraps a service in [`Timeout`].
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// Calls through the layer give up after `timeout` (or sooner, if their deadline is sooner).
    pub fn new(timeout: Duration) -> TimeoutLayer {
        TimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout { inner, timeout: self.timeout }
    }
}

/// A service whose calls fail with `DeadlineExceeded` after a timeout.
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, R> Service<R> for Timeout<S>
where
    R: CallInfo,
    S: Service<R, Error = Status>,
{
    type Response = S::Response;
    type Error = Status;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: R) -> Self::Future {
        request.limit_timeout(self.timeout);
        let deadline = if R::DEADLINE_ENFORCED_BELOW { None } else { request.deadline() };
        let Some(deadline) = deadline else {
            return TimeoutFuture { state: TimeoutState::Pass { fut: self.inner.call(request) } };
        };
        let (service, method, timeout) = (request.service().clone(), request.method().clone(), self.timeout);
        let fut = tokio::time::timeout_at(deadline, self.inner.call(request));
        TimeoutFuture { state: TimeoutState::Timed { fut, service, method, timeout } }
    }
}

pin_project! {
    /// The future of a [`Timeout`] call.
    pub struct TimeoutFuture<F> {
        #[pin]
        state: TimeoutState<F>,
    }
}

pin_project! {
    #[project = TimeoutProj]
    enum TimeoutState<F> {
        // The service below enforces the deadline.
        Pass {
            #[pin]
            fut: F,
        },
        // The layer keeps a timer.
        Timed {
            #[pin]
            fut: tokio::time::Timeout<F>,
            service: ByteStr,
            method: ByteStr,
            timeout: Duration,
        },
    }
}

impl<F, T> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<T, Status>>,
{
    type Output = Result<T, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            TimeoutProj::Pass { fut } => fut.poll(cx),
            TimeoutProj::Timed { fut, service, method, timeout } => {
                Poll::Ready(ready!(fut.poll(cx)).unwrap_or_else(|_| {
                    Err(Status::deadline_exceeded(format!(
                        "{service}.{method} did not complete within its deadline (layer timeout {timeout:?})"
                    )))
                }))
            }
        }
    }
}
