//! The typed call a generated client method returns.

use super::{Request, Response};
use crate::{Inbound, Items, Message, Metadata, Status, Streaming};
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

    /// Sends the call and returns the reply's metadata with its value (set last, after the
    /// other options).
    ///
    /// ```ignore
    /// let (product, metadata) = client.get(42).with_metadata().await?;
    /// let served_by = metadata.get("served-by");
    /// ```
    pub fn with_metadata(self) -> CallWithMetadata<S, T>
    where
        S: Service<Request, Response = Response, Error = Status>,
    {
        CallWithMetadata {
            oneway: self.request.options.oneway,
            inner: Oneshot::new(self.service, self.request),
            _reply: PhantomData,
        }
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
        CallFuture { inner: self.with_metadata() }
    }
}

pin_project! {
    /// The future of a [`Call`]: sends the request and decodes the reply.
    ///
    /// Dropping it before it completes cancels the call on the server.
    pub struct CallFuture<S: Service<Request>, T> {
        #[pin]
        inner: CallWithMetadata<S, T>,
    }
}

impl<S, T> Future for CallFuture<S, T>
where
    S: Service<Request, Response = Response, Error = Status>,
    T: Message,
{
    type Output = Result<T, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map(|reply| reply.map(|(value, _)| value))
    }
}

pin_project! {
    /// The future of [`Call::with_metadata`]: the reply's value and its metadata.
    ///
    /// Dropping it before it completes cancels the call on the server.
    pub struct CallWithMetadata<S: Service<Request>, T> {
        #[pin]
        inner: Oneshot<S, Request>,
        oneway: bool,
        _reply: PhantomData<fn() -> T>,
    }
}

impl<S, T> Future for CallWithMetadata<S, T>
where
    S: Service<Request, Response = Response, Error = Status>,
    T: Message,
{
    type Output = Result<(T, Metadata), Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        Poll::Ready(decode(*this.oneway, &response).map(|value| (value, response.metadata)))
    }
}

/// The value of a reply.
fn decode<T: Message>(oneway: bool, response: &Response) -> Result<T, Status> {
    if oneway {
        // One-way methods return `()`; there is no reply body to decode.
        return T::deserialize(().into_deserializer())
            .map_err(|e: serde::de::value::Error| Status::internal(format!("one-way method must return (): {e}")));
    }
    response.codec.decode_reply(&response.body).map_err(|e| {
        Status::internal(format!(
            "the reply could not be decoded as {}: {e}; client and server may disagree on the method's type",
            std::any::type_name::<T>()
        ))
    })
}

/// What a generated client's streaming methods call through; a [`Channel`](crate::Channel)
/// implements it.
pub trait OpenStream {
    /// Opens a stream for `request` and waits until the server accepts it; `items` are the
    /// items the caller sends, for a method that takes a stream.
    fn open_stream(
        &self,
        request: Request,
        items: Option<Items>,
    ) -> impl Future<Output = Result<Inbound, Status>> + Send;
}

/// Options shared by the stream calls: the request and what the caller sends.
struct Opening<S> {
    service: S,
    request: Request,
    items: Option<Items>,
}

/// A call to a method that returns a stream: set per-call options, then `.await` it for the
/// [`Streaming`] of items.
///
/// The deadline (`.timeout`) covers the whole stream, not only its opening.
#[must_use = "a stream call does nothing until it is awaited"]
pub struct StreamCall<S, T> {
    opening: Opening<S>,
    _item: PhantomData<fn() -> T>,
}

/// A call to a method that takes a stream and returns one value: `.await` it for the value.
#[must_use = "a stream call does nothing until it is awaited"]
pub struct ClientStreamCall<S, T> {
    opening: Opening<S>,
    _reply: PhantomData<fn() -> T>,
}

impl<S, T> StreamCall<S, T> {
    /// A call of `request` through `service`, sending `items` if the method takes a stream.
    pub fn new(service: S, request: Request, items: Option<Items>) -> Self {
        StreamCall { opening: Opening { service, request, items }, _item: PhantomData }
    }

    /// Ends the whole stream after `timeout`; the deadline travels to the server.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.opening.request.options.timeout = Some(timeout);
        self
    }

    /// Sends `key: value` as metadata with the stream's opening.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.opening.request.options.metadata.insert(key, value);
        self
    }
}

impl<S, T> ClientStreamCall<S, T> {
    /// A call of `request` through `service` that sends `items`.
    pub fn new(service: S, request: Request, items: Items) -> Self {
        ClientStreamCall { opening: Opening { service, request, items: Some(items) }, _reply: PhantomData }
    }

    /// Gives up after `timeout`, items and reply included; the deadline travels to the server.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.opening.request.options.timeout = Some(timeout);
        self
    }

    /// Sends `key: value` as metadata with the stream's opening.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.opening.request.options.metadata.insert(key, value);
        self
    }
}

/// The future of a stream call.
pub type StreamFuture<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;

impl<S, T> IntoFuture for StreamCall<S, T>
where
    S: OpenStream + Send + 'static,
    T: Message,
{
    type Output = Result<Streaming<T>, Status>;
    type IntoFuture = StreamFuture<Streaming<T>>;

    fn into_future(self) -> Self::IntoFuture {
        let Opening { service, request, items } = self.opening;
        Box::pin(async move { Ok(Streaming::new(service.open_stream(request, items).await?)) })
    }
}

impl<S, T> IntoFuture for ClientStreamCall<S, T>
where
    S: OpenStream + Send + 'static,
    T: Message,
{
    type Output = Result<T, Status>;
    type IntoFuture = StreamFuture<T>;

    fn into_future(self) -> Self::IntoFuture {
        let Opening { service, request, items } = self.opening;
        Box::pin(async move { service.open_stream(request, items).await?.reply().await })
    }
}
