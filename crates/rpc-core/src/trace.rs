//! Distributed tracing: a [`tracing`] span per call, on either side, joined across processes by
//! W3C Trace Context (the [`TRACEPARENT`] metadata key).
//!
//! [`TraceLayer`] on a server continues the caller's trace (or starts one) in an `rpc.server` span;
//! calls its handler makes carry that span as their parent. On a client it opens an
//! `rpc.client` span and sends it as the server's parent. Spans carry OpenTelemetry's RPC
//! attribute names (`rpc.service`, `rpc.method`, `rpc.response.status_code`...) and the ids as
//! `trace_id`, `span_id` and `parent_id`, so a log line written inside a handler names its trace
//! in any subscriber's output, JSON lines included.

use crate::{
    client::Request, client::Response, layer::ReplySize, server::ServerRequest, server::ServerResponse, Status,
    TRACEPARENT,
};
use pin_project_lite::pin_project;
use std::{
    cell::Cell,
    fmt,
    future::Future,
    hash::{BuildHasher, Hasher},
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};
use tower::{Layer, Service};
use tracing::{field::Empty, Span};

/// Where a call is in a distributed trace: a W3C `traceparent` header, parsed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

impl TraceContext {
    /// The first span of a new trace, sampled.
    pub fn root() -> TraceContext {
        let trace_id = (u128::from(random()) << 64) | u128::from(random());
        TraceContext { trace_id: trace_id.max(1), span_id: random().max(1), flags: 1 }
    }

    /// A new span in the same trace, whose parent is `self`.
    pub fn child(&self) -> TraceContext {
        TraceContext { span_id: random().max(1), ..*self }
    }

    /// Parses a `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`). Later versions are
    /// read as the spec says (their first four fields, and what follows ignored); anything
    /// malformed, or an all-zero id, is `None` and the call starts a new trace.
    pub fn parse(header: &str) -> Option<TraceContext> {
        let bytes = header.as_bytes();
        if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let version = hex(&header[0..2])?;
        if version == 0xff
            || (version == 0 && bytes.len() != 55)
            || (version != 0 && bytes.len() > 55 && bytes[55] != b'-')
        {
            return None;
        }
        let trace_id = hex(&header[3..35])?;
        let span_id = u64::try_from(hex(&header[36..52])?).ok()?;
        let flags = u8::try_from(hex(&header[53..55])?).ok()?;
        (trace_id != 0 && span_id != 0).then_some(TraceContext { trace_id, span_id, flags })
    }

    /// The trace's id.
    pub fn trace_id(&self) -> u128 {
        self.trace_id
    }

    /// This span's id.
    pub fn span_id(&self) -> u64 {
        self.span_id
    }

    /// Whether the trace's first caller chose to record it.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// Lowercase hex only, as the header requires.
fn hex(s: &str) -> Option<u128> {
    if !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

/// The `traceparent` header.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({self})")
    }
}

/// A random id from a per-thread SplitMix64, seeded by the standard library's random hasher
/// keys: ids must not collide across processes, and they need no cryptographic strength.
fn random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(std::collections::hash_map::RandomState::new().build_hasher().finish());
    }
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// Opens a span per call through the service it wraps and carries the trace across the wire,
/// on either side: `Server::builder().layer(TraceLayer::new())`, or in a client stack
/// (`ServiceBuilder::new().layer(TraceLayer::new()).service(channel)`).
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceLayer;

impl TraceLayer {
    /// Traces the calls of the service it wraps: `rpc.server` spans on a server, `rpc.client`
    /// spans on a client.
    pub fn new() -> TraceLayer {
        TraceLayer
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced { inner }
    }
}

/// The service of [`TraceLayer`].
#[derive(Clone, Debug)]
pub struct Traced<S> {
    inner: S,
}

/// Which end of a call a span describes.
#[derive(Clone, Copy)]
enum Side {
    Server,
    Client,
}

/// An id in the header's lowercase hex, written only if a subscriber records it.
struct Hex<T>(T);

impl fmt::Display for Hex<u128> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for Hex<u64> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Opens the span of a call that continues `parent` (a new trace if there is none).
fn open(side: Side, service: &str, method: &str, parent: Option<TraceContext>) -> (Span, TraceContext) {
    let trace = parent.map_or_else(TraceContext::root, |p| p.child());
    let parent_id = parent.map(|p| tracing::field::display(Hex(p.span_id)));
    let ids = (Hex(trace.trace_id), Hex(trace.span_id));
    let span = match side {
        Side::Server => tracing::info_span!(
            "rpc.server",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "rpc",
            rpc.service = service,
            rpc.method = method,
            rpc.codec = Empty,
            client.address = Empty,
            rpc.request.size = Empty,
            rpc.response.size = Empty,
            rpc.response.status_code = Empty,
            trace_id = %ids.0,
            span_id = %ids.1,
            parent_id,
        ),
        Side::Client => tracing::info_span!(
            "rpc.client",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "client",
            rpc.system = "rpc",
            rpc.service = service,
            rpc.method = method,
            rpc.response.size = Empty,
            rpc.response.status_code = Empty,
            trace_id = %ids.0,
            span_id = %ids.1,
            parent_id,
        ),
    };
    (span, trace)
}

impl<S> Service<ServerRequest> for Traced<S>
where
    S: Service<ServerRequest, Response = ServerResponse, Error = Status>,
{
    type Response = ServerResponse;
    type Error = Status;
    type Future = TracedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ServerRequest) -> Self::Future {
        let context = request.context();
        let parent = context.metadata().get(TRACEPARENT).and_then(TraceContext::parse);
        let (span, trace) = open(Side::Server, request.service(), request.method(), parent);
        if !span.is_disabled() {
            span.record("rpc.codec", tracing::field::display(request.codec));
            span.record("rpc.request.size", request.body.len());
            if let Some(peer) = context.peer() {
                span.record("client.address", tracing::field::display(peer));
            }
        }
        // Calls the handler makes are this span's children.
        context.set_trace(trace);
        let inner = span.in_scope(|| self.inner.call(request));
        TracedFuture::new(inner, span)
    }
}

impl<S> Service<Request> for Traced<S>
where
    S: Service<Request, Response = Response, Error = Status>,
{
    type Response = Response;
    type Error = Status;
    type Future = TracedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let parent = match request.options.metadata.get(TRACEPARENT) {
            Some(header) => TraceContext::parse(header),
            None => crate::Context::inherited_trace(),
        };
        let (span, trace) = open(Side::Client, &request.service, &request.method, parent);
        request.options.metadata.insert(TRACEPARENT, trace.to_string());
        let inner = span.in_scope(|| self.inner.call(request));
        TracedFuture::new(inner, span)
    }
}

pin_project! {
    /// The future of [`Traced`]: the call runs inside its span, which records how it ended.
    pub struct TracedFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        // Read only for a span some subscriber records: the clock costs more than the rest.
        started: Option<Instant>,
    }
}

impl<F> TracedFuture<F> {
    fn new(inner: F, span: Span) -> Self {
        let started = (!span.is_disabled()).then(Instant::now);
        TracedFuture { inner, span, started }
    }
}

impl<F, T> Future for TracedFuture<F>
where
    F: Future<Output = Result<T, Status>>,
    T: ReplySize,
{
    type Output = Result<T, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let outcome = std::task::ready!(this.inner.poll(cx));
        let Some(started) = this.started else { return Poll::Ready(outcome) };
        let duration_ms = started.elapsed().as_secs_f64() * 1e3;
        match &outcome {
            Ok(reply) => {
                this.span.record("rpc.response.status_code", "OK");
                this.span.record("rpc.response.size", reply.reply_size());
                tracing::debug!(duration_ms, "call finished");
            }
            Err(status) => {
                this.span.record("rpc.response.status_code", status.code().name());
                tracing::info!(duration_ms, error = %status, "call failed");
            }
        }
        Poll::Ready(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_reads_back_as_written() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = TraceContext::parse(header).unwrap();
        assert_eq!(trace.trace_id(), 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(trace.span_id(), 0x00f067aa0ba902b7);
        assert!(trace.sampled());
        assert_eq!(trace.to_string(), header);
        let child = trace.child();
        assert_eq!(child.trace_id(), trace.trace_id());
        assert_ne!(child.span_id(), trace.span_id());
    }

    #[test]
    fn malformed_headers_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        // A later version may append fields.
        assert!(TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").is_some());
    }

    #[test]
    fn new_traces_do_not_repeat_ids() {
        let ids: std::collections::HashSet<u128> = (0..1000).map(|_| TraceContext::root().trace_id()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
