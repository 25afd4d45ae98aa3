//! What one server holds at once across all its connections: running handlers, bytes of large
//! requests, and bytes of replies that clients have not read yet.
//!
//! Per-connection limits bound what one client can make the server hold; these bound the sum,
//! so many clients (or one with many connections) cannot exhaust the process.

use crate::{metrics::Metrics, transport::RequestBytes, Status};
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The server-wide budgets, shared by every connection of a server.
#[derive(Clone)]
pub(crate) struct Budget {
    handlers: Arc<Semaphore>,
    max_handlers: usize,
    /// Bytes of replies produced by handlers that ran in their own task and not yet handed to
    /// the socket writer.
    replies: Arc<AtomicUsize>,
    max_reply_bytes: usize,
    pub(crate) requests: RequestBytes,
}

impl Budget {
    pub(crate) fn new(max_handlers: usize, max_request_bytes: usize, max_reply_bytes: usize) -> Self {
        Budget {
            handlers: Arc::new(Semaphore::new(max_handlers)),
            max_handlers,
            replies: Arc::default(),
            max_reply_bytes,
            requests: RequestBytes::new(max_request_bytes),
        }
    }

    pub(crate) fn handler_refusal(&self) -> Status {
        Status::resource_exhausted(format!(
            "the server is running {} handlers, its limit; retry shortly or call another instance",
            self.max_handlers
        ))
        .with_not_started()
    }

    /// Refuses a call while running handlers or unread replies are at their limit: reads, no
    /// writes, so the hot path shares no contended counter.
    pub(crate) fn check(&self) -> Result<(), Status> {
        if self.handlers.available_permits() == 0 {
            return Err(self.handler_refusal());
        }
        let replies = self.replies.load(Ordering::Relaxed);
        if replies >= self.max_reply_bytes {
            return Err(Status::resource_exhausted(format!(
                "the server holds {replies} bytes of replies its clients have not read (its limit is {}); retry shortly or call another instance",
                self.max_reply_bytes
            ))
            .with_not_started());
        }
        Ok(())
    }

    /// A permit for a handler that keeps running; `None` if another connection took the last
    /// one since [`check`](Self::check) (the documented overshoot).
    pub(crate) fn take_handler(&self) -> Option<OwnedSemaphorePermit> {
        self.handlers.clone().try_acquire_owned().ok()
    }

    /// The reply budget, for a handler task to charge its reply to.
    pub(crate) fn replies(&self) -> Replies {
        Replies(self.replies.clone())
    }

    /// Reports what the server holds with its call metrics.
    pub(crate) fn report_to(&self, metrics: &Metrics) {
        let budget = self.clone();
        metrics.collect(move |out| {
            let handlers = budget.max_handlers - budget.handlers.available_permits();
            out.family("rpc_server_handlers", "gauge", "Handlers running in tasks of their own, across connections.");
            out.sample("rpc_server_handlers", &[], handlers as f64);
            out.family(
                "rpc_server_reply_bytes",
                "gauge",
                "Bytes of replies waiting for clients to read them; at the limit new calls are refused.",
            );
            out.sample("rpc_server_reply_bytes", &[], budget.replies.load(Ordering::Relaxed) as f64);
            out.family(
                "rpc_server_request_bytes",
                "gauge",
                "Bytes of large requests being read or handled; at the limit connections wait to read more.",
            );
            out.sample("rpc_server_request_bytes", &[], budget.requests.held() as f64);
            out.family(
                "rpc_server_reads_paused",
                "gauge",
                "Connections waiting for the request byte budget before reading a large frame.",
            );
            out.sample("rpc_server_reads_paused", &[], budget.requests.waiting() as f64);
        });
    }
}

/// The server's reply budget, held by a handler task until its reply is ready.
pub(crate) struct Replies(Arc<AtomicUsize>);

impl Replies {
    /// Counts `bytes` of a reply as held until the returned charge is dropped.
    pub(crate) fn charge(self, bytes: usize) -> ReplyCharge {
        self.0.fetch_add(bytes, Ordering::Relaxed);
        ReplyCharge { replies: self.0, bytes }
    }
}

/// Bytes of one reply counted in the server's reply budget until dropped.
pub(crate) struct ReplyCharge {
    replies: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for ReplyCharge {
    fn drop(&mut self) {
        self.replies.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}
