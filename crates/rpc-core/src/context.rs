//! The context of the call a handler is serving.
//!
//! The server sets it for the duration of each call; handlers read it with
//! [`Context::current`]. Calls a handler makes inherit its deadline and trace context, so a
//! deadline set by the first caller bounds the whole tree of calls, and cancelling a call
//! cancels the calls its handler made (their futures are dropped with the handler's).

use crate::{layer::auth::Principal, trace::TraceContext, ByteStr, Metadata, CALLER, TRACEPARENT};
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};
use tokio::time::Instant;

tokio::task_local! {
    static CURRENT: Context;
}

/// What a handler knows about the call it serves. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Context {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    service: ByteStr,
    method: ByteStr,
    deadline: Option<Instant>,
    metadata: Metadata,
    peer: Option<SocketAddr>,
    identity: Option<Arc<PeerIdentity>>,
    principal: OnceLock<Principal>,
    /// The span serving this call, once a [`TraceLayer`](crate::trace::TraceLayer) opened one.
    trace: OnceLock<TraceContext>,
    reply_metadata: Mutex<Metadata>,
}

/// Builds a [`Context`]; see [`Context::builder`].
#[derive(Debug)]
pub struct ContextBuilder {
    inner: Inner,
}

impl ContextBuilder {
    /// When the caller stops waiting.
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.inner.deadline = Some(deadline);
        self
    }

    /// The request's metadata.
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.inner.metadata = metadata;
        self
    }

    /// The caller's socket address.
    pub fn peer(mut self, peer: SocketAddr) -> Self {
        self.inner.peer = Some(peer);
        self
    }

    /// Who the caller is by its verified TLS client certificate.
    pub fn peer_identity(mut self, identity: PeerIdentity) -> Self {
        self.inner.identity = Some(Arc::new(identity));
        self
    }

    /// The context.
    pub fn build(self) -> Context {
        Context { inner: Arc::new(self.inner) }
    }
}

/// Who the caller proved to be with its TLS client certificate (mutual TLS).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The certificate subject's common name (CN), if it has one.
    pub common_name: Option<String>,
    /// The DNS names among its subject alternative names.
    pub dns_names: Vec<String>,
    /// The URIs among its subject alternative names (a SPIFFE id, for example).
    pub uris: Vec<String>,
}

impl Context {
    pub(crate) fn new(
        service: ByteStr,
        method: ByteStr,
        deadline: Option<Instant>,
        metadata: Metadata,
        peer: Option<SocketAddr>,
        identity: Option<Arc<PeerIdentity>>,
    ) -> Context {
        // Every field spelled out: filling the rest from `Inner::default()` costs this per-call
        // path about 50 instructions more.
        Context {
            inner: Arc::new(Inner {
                service,
                method,
                deadline,
                metadata,
                peer,
                identity,
                principal: OnceLock::new(),
                trace: OnceLock::new(),
                reply_metadata: Mutex::new(Metadata::new()),
            }),
        }
    }

    /// The context of the call being served by the current task, if any.
    pub fn current() -> Option<Context> {
        CURRENT.try_with(Context::clone).ok()
    }

    /// Runs `fut` with `self` as the current context: what a handler wraps a future in before
    /// spawning it, so the task keeps the call's deadline, trace context and caller:
    /// `tokio::spawn(Context::current().unwrap().scope(work))`.
    pub fn scope<F: std::future::Future>(self, fut: F) -> tokio::task::futures::TaskLocalFuture<Context, F> {
        CURRENT.scope(self, fut)
    }

    /// Runs `f` with `self` as the current context.
    pub(crate) fn sync_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self.clone(), f)
    }

    /// What a call made from the current task inherits: deadline and trace context (the
    /// handler's span if it is traced, else the caller's header passed on as it came).
    pub(crate) fn inherited() -> (Option<Instant>, Option<String>) {
        CURRENT
            .try_with(|c| {
                let trace = match c.inner.trace.get() {
                    Some(trace) => Some(trace.to_string()),
                    None => c.inner.metadata.get(TRACEPARENT).map(str::to_owned),
                };
                (c.inner.deadline, trace)
            })
            .unwrap_or_default()
    }

    /// The trace a call made from the current task continues, if any.
    pub(crate) fn inherited_trace() -> Option<TraceContext> {
        CURRENT
            .try_with(|c| match c.inner.trace.get() {
                Some(trace) => Some(*trace),
                None => c.inner.metadata.get(TRACEPARENT).and_then(TraceContext::parse),
            })
            .ok()
            .flatten()
    }

    /// The trace context of the span serving this call, if a
    /// [`TraceLayer`](crate::trace::TraceLayer) traces it.
    pub fn trace(&self) -> Option<TraceContext> {
        self.inner.trace.get().copied()
    }

    /// Records the span serving this call; the first wins.
    pub(crate) fn set_trace(&self, trace: TraceContext) {
        let _ = self.inner.trace.set(trace);
    }

    /// A context built piece by piece, for a call to `service`.`method`: what a test of a
    /// server layer makes its [`ServerRequest`](crate::ServerRequest) from.
    pub fn builder(service: impl Into<ByteStr>, method: impl Into<ByteStr>) -> ContextBuilder {
        ContextBuilder { inner: Inner { service: service.into(), method: method.into(), ..Inner::default() } }
    }

    /// The service being called.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    pub(crate) fn service_name(&self) -> &ByteStr {
        &self.inner.service
    }

    pub(crate) fn method_name(&self) -> &ByteStr {
        &self.inner.method
    }

    /// The method being called.
    pub fn method(&self) -> &str {
        &self.inner.method
    }

    /// When the caller stops waiting, if it set a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.deadline
    }

    /// Time left before the deadline (zero once it passed), if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.inner.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The request's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.inner.metadata
    }

    /// The name the caller gave itself, from the [`CALLER`] metadata key.
    pub fn caller(&self) -> Option<&str> {
        self.inner.metadata.get(CALLER)
    }

    /// The caller's socket address.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.inner.peer
    }

    /// Who the caller is by its verified TLS client certificate; `None` over plain TCP or
    /// when the client presented none.
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.inner.identity.as_deref()
    }

    /// The caller as an authentication layer established it
    /// ([`AuthenticateLayer`](crate::layer::auth::AuthenticateLayer)); `None` without one.
    pub fn principal(&self) -> Option<&Principal> {
        self.inner.principal.get()
    }

    /// Records who the caller is; the first authentication wins.
    pub(crate) fn set_principal(&self, principal: Principal) {
        let _ = self.inner.principal.set(principal);
    }

    /// Adds `key: value` to the metadata sent back with the reply.
    pub fn set_reply_metadata(&self, key: impl Into<String>, value: impl Into<String>) {
        self.lock_reply().insert(key, value);
    }

    pub(crate) fn take_reply_metadata(&self) -> Metadata {
        std::mem::take(&mut *self.lock_reply())
    }

    fn lock_reply(&self) -> std::sync::MutexGuard<'_, Metadata> {
        // A panic while holding this lock cannot leave the metadata half-written.
        self.inner.reply_metadata.lock().unwrap_or_else(|e| e.into_inner())
    }
}
