//! [`ConcurrencyLimitLayer`]: at most `max` calls run at once, at most `queue` wait for a slot,
//! and calls beyond that are shed at once with `ResourceExhausted`, before any work is done.
//!
//! Shedding instead of queueing without bound keeps the latency of admitted calls steady under
//! overload: a call that would wait longer than its caller cares to is refused while the caller
//! can still go elsewhere.

use super::{refused, CallInfo, LayerFuture};
use crate::{Code, Status};
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};
use tokio::sync::Semaphore;
use tower::{Layer, Service};

/// Wraps a service in [`ConcurrencyLimit`].
#[derive(Clone, Copy, Debug)]
pub struct ConcurrencyLimitLayer {
    max: usize,
    queue: usize,
}

impl ConcurrencyLimitLayer {
    /// At most `max` calls at once; no queue (set one with [`ConcurrencyLimitLayer::queue`]).
    pub fn new(max: usize) -> ConcurrencyLimitLayer {
        ConcurrencyLimitLayer { max: max.max(1), queue: 0 }
    }

    /// Lets up to `calls` wait for a slot before new calls are shed.
    pub fn queue(mut self, calls: usize) -> Self {
        self.queue = calls;
        self
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> ConcurrencyLimit<S> {
        ConcurrencyLimit {
            inner,
            shared: Arc::new(Slots {
                running: Arc::new(Semaphore::new(self.max)),
                waiting: AtomicUsize::new(0),
                max: self.max,
                queue: self.queue,
            }),
        }
    }
}

/// A service that runs a bounded number of calls at once. Clones share the bound.
#[derive(Clone, Debug)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    shared: Arc<Slots>,
}

#[derive(Debug)]
struct Slots {
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
    max: usize,
    queue: usize,
}

impl<S> ConcurrencyLimit<S> {
    /// Calls running now.
    pub fn running(&self) -> usize {
        self.shared.max - self.shared.running.available_permits()
    }
}

impl<S, R> Service<R> for ConcurrencyLimit<S>
where
    R: CallInfo,
    S: Service<R, Error = Status>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = Status;
    type Future = LayerFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let shared = &self.shared;
        if let Ok(permit) = shared.running.clone().try_acquire_owned() {
            let fut = self.inner.call(request);
            return Box::pin(async move {
                let result = fut.await;
                drop(permit);
                result
            });
        }
        if shared.waiting.fetch_add(1, Ordering::AcqRel) >= shared.queue {
            shared.waiting.fetch_sub(1, Ordering::AcqRel);
            let status = refused(
                Code::ResourceExhausted,
                format!(
                    "{}.{} shed: {} calls running and {} waiting; retry later or elsewhere",
                    request.service(),
                    request.method(),
                    shared.max,
                    shared.queue
                ),
            );
            return Box::pin(std::future::ready(Err(status)));
        }
        // The call is made now (services are called in order) but only polled once a slot frees.
        let fut = self.inner.call(request);
        let waiting = Waiting(shared.clone());
        Box::pin(async move {
            let permit = waiting.0.running.clone().acquire_owned().await;
            drop(waiting);
            let _permit = permit.map_err(|_| Status::unavailable("concurrency limit closed"))?;
            fut.await
        })
    }
}

/// Counts a queued call until it gets a slot or its caller gives up.
struct Waiting(Arc<Slots>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}
