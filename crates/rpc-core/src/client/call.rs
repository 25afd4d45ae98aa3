//! The typed call a generated client method returns.

use super::{Request, Response};
use crate::{Message, Status};
use pin_project_lite::pin_project;
use serde::de::IntoDeserializer;
use std::{
    future::{Future, IntoFuture},
    marker::PhantomData,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};
use tower::{util::Oneshot, Service};

/// A call ready to be sent: set per-call options, then `.await` it.
///
/// ```ignore
/// let product = client.get(42).timeout(Duration::from_millis(50)).metadata("tenant", "acme").await?;
/// ```
#[must_use = "a call does nothing until it is awaited"]
pub struct Call<S, T> {
    service: S,
    request: Request,
    _reply: PhantomData<fn() -> T>,
}

impl<S, T> Call<S, T> {
    /// A call of `request` through `service`, whose reply decodes as `T`.
    pub fn new(service: S, request: Request) -> Self {
        Call { service, request, _reply: PhantomData }
    }

    /// Gives up after `timeout`; the deadline travels to the server, which cancels the handler.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.request.options.timeout = Some(timeout);
        self
    }

    /// Sends `key: value` as metadata with this call.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.options.metadata.insert(key, value);
        self
    }

    /// The request as it will be sent.
    pub fn request(&self) -> &Request {
        &self.request
    }
}

impl<S, T> IntoFuture for Call<S, T>
where
    S: Service<Request, Response = Response, Error = Status>,
    T: Message,
{
    type Output = Result<T, Status>;
    type IntoFuture = CallFuture<S, T>;

    fn into_future(self) -> CallFuture<S, T> {
        CallFuture {
            oneway: self.request.options.oneway,
            inner: Oneshot::new(self.service, self.request),
            _reply: PhantomData,
        }
    }
}

pin_project! {
    /// The future of a [`Call`]: sends the request and decodes the reply.
    ///
    /// Dropping it before it completes cancels the call on the server.
    pub struct CallFuture<S: Service<Request>, T> {
        #[pin]
        inner: Oneshot<S, Request>,
        oneway: bool,
        _reply: PhantomData<fn() -> T>,
    }
}

impl<S, T> Future for CallFuture<S, T>
where
    S: Service<Request, Response = Response, Error = Status>,
    T: Message,
{
    type Output = Result<T, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        if *this.oneway {
            // One-way methods return `()`; there is no reply body to decode.
            return Poll::Ready(T::deserialize(().into_deserializer()).map_err(|e: serde::de::value::Error| {
                Status::internal(format!("one-way method must return (): {e}"))
            }));
        }
        Poll::Ready(response.codec.decode_reply(&response.body).map_err(|e| {
            Status::internal(format!(
                "the reply could not be decoded as {}: {e}; client and server may disagree on the method's type",
                std::any::type_name::<T>()
            ))
        }))
    }
}
