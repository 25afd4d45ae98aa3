//! What a client sends and receives through a tower stack.

use crate::{ByteStr, Codec, CodecError, Message, Metadata};
use bytes::{Bytes, BytesMut};
use std::{fmt, sync::Arc, time::Duration};

/// A message body not yet encoded: the channel chooses the codec at the last moment, so layers
/// in between stay codec-agnostic and a retry can re-send it with another codec.
pub trait Body: Send + Sync + 'static {
    /// Appends the encoding of the body with `codec` to `buf`.
    fn encode(&self, codec: Codec, buf: &mut BytesMut) -> Result<(), CodecError>;
    /// Whether the body can be encoded with a codec that needs a schema (see
    /// [`Message::has_schema`]); a channel sends one that cannot in MessagePack instead.
    fn has_schema(&self) -> bool {
        true
    }
}

impl<T: Message> Body for T {
    fn encode(&self, codec: Codec, buf: &mut BytesMut) -> Result<(), CodecError> {
        codec.encode(self, buf)
    }

    fn has_schema(&self) -> bool {
        T::has_schema()
    }
}

/// Per-call settings.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// How long the caller waits; the channel's default applies when `None`.
    pub timeout: Option<Duration>,
    /// Metadata sent with the call.
    pub metadata: Metadata,
    /// The method is safe to run more than once (a retry layer may resend it).
    pub idempotent: bool,
    /// The method gets no reply.
    pub oneway: bool,
}

/// A call on its way to a server. Cloning is cheap (the body is shared), which retries rely on.
#[derive(Clone)]
pub struct Request {
    /// Service name.
    pub service: ByteStr,
    /// Method name.
    pub method: ByteStr,
    /// The arguments, encoded by the channel.
    pub body: Arc<dyn Body>,
    /// Timeout, metadata and method properties.
    pub options: CallOptions,
}

impl Request {
    /// A request for `service.method` with `body` as arguments and default options; generated
    /// clients build these for you, this is for generic tools and tests.
    pub fn new(service: impl Into<ByteStr>, method: impl Into<ByteStr>, body: impl Body) -> Request {
        Request {
            service: service.into(),
            method: method.into(),
            body: Arc::new(body),
            options: CallOptions::default(),
        }
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("service", &self.service)
            .field("method", &self.method)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A successful reply, still encoded.
#[derive(Clone, Debug)]
pub struct Response {
    /// The codec the body is encoded with.
    pub codec: Codec,
    /// The encoded result (empty for a one-way call).
    pub body: Bytes,
    /// Metadata the server sent back.
    pub metadata: Metadata,
}
