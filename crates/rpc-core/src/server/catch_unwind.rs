//! Turning a handler panic into an error for that one call.

use pin_project_lite::pin_project;
use std::{
    any::Any,
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    task::{Context, Poll},
};

pin_project! {
    /// Polls `inner`, returning `Err(message)` if a poll panics.
    pub(crate) struct CatchUnwind<F> {
        #[pin]
        inner: F,
    }
}

impl<F> CatchUnwind<F> {
    pub(crate) fn new(inner: F) -> Self {
        CatchUnwind { inner }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        // The future is dropped right after a panic, so no broken state is observed again.
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Err(payload) => Poll::Ready(Err(panic_message(payload))),
        }
    }
}

/// Logs a handler's panic and returns the error its caller gets.
pub(crate) fn panicked(service: &str, method: &str, panic: &str) -> crate::Status {
    tracing::error!(service, method, panic, "handler panicked");
    crate::Status::internal(format!("the handler of {service}.{method} panicked: {panic}"))
}

pub(crate) fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast_ref::<&str>().map_or("non-string panic payload", |s| s).to_owned(),
    }
}
