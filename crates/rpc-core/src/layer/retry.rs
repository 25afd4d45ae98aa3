//! [`RetryLayer`]: re-sends calls that failed in a way known to be safe to repeat.
//!
//! A call is retried only when it never reached a handler ([`Status::not_started`]), or when its
//! method is idempotent and the failure is one of the policy's retryable codes (default
//! `Unavailable`). Waits grow exponentially with full jitter, so clients that failed together do
//! not retry together, and a [`RetryBudget`] caps retries to a share of the traffic: during an
//! outage retries add at most that share of load instead of multiplying it. Retries stop when the
//! call's deadline would pass during the wait.

use super::{CallInfo, LayerFuture};
use crate::{client::Request, Code, Status};
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tower::{Layer, Service, ServiceExt};

/// Exponential backoff with full jitter (the wait is uniform in `[0, min(max, initial·2^n))`).
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// Upper bound of the first wait.
    pub initial: Duration,
    /// Largest upper bound of any wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(25), max: Duration::from_secs(1) }
    }
}

impl Backoff {
    /// The wait before retry number `retry` (0 for the first), given `unit`, a random number in
    /// `[0, 1)`.
    pub fn wait(&self, retry: u32, unit: f64) -> Duration {
        let ceiling = self.initial.saturating_mul(1u32 << retry.min(20)).min(self.max);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// Limits retries to a share of calls, plus a small reserve so rare failures are still retried.
///
/// Every call deposits `ratio` tokens and every retry withdraws one; the reserve refills at
/// `min_per_second` and the balance never exceeds `cap`. Sans-IO: time is passed in.
#[derive(Clone, Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: f64,
    cap: f64,
    balance: f64,
    last: Option<Instant>,
}

impl Default for RetryBudget {
    /// 20% of calls plus 10 retries per second, as Finagle's default budget.
    fn default() -> Self {
        RetryBudget::new(0.2, 10.0)
    }
}

impl RetryBudget {
    /// A budget allowing retries for `ratio` of calls plus `min_per_second`; it starts full.
    pub fn new(ratio: f64, min_per_second: f64) -> RetryBudget {
        let cap = (min_per_second * 10.0).max(1.0);
        RetryBudget { ratio: ratio.max(0.0), min_per_second: min_per_second.max(0.0), cap, balance: cap, last: None }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.balance = (self.balance + elapsed * self.min_per_second).min(self.cap);
        }
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
    }

    /// Records a call (not a retry).
    pub fn deposit(&mut self, now: Instant) {
        self.refill(now);
        self.balance = (self.balance + self.ratio).min(self.cap);
    }

    /// Takes one retry out of the budget; false when it is spent.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        self.refill(now);
        // Deposits of a ratio like 0.1 do not add up to exactly 1.0 in binary floating point.
        if self.balance >= 1.0 - 1e-9 {
            self.balance = (self.balance - 1.0).max(0.0);
            true
        } else {
            false
        }
    }
}

/// What to retry, how often and how long to wait.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (default 3).
    pub max_attempts: u32,
    /// Waits between attempts.
    pub backoff: Backoff,
    /// Codes retried for idempotent methods (default: `Unavailable`).
    pub retry_on: Vec<Code>,
    /// Share of calls that may be retried.
    pub budget: RetryBudget,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::default(),
            retry_on: vec![Code::Unavailable],
            budget: RetryBudget::default(),
        }
    }
}

impl RetryPolicy {
    /// True when `status`, the result of `request`, may be retried at all.
    pub fn retryable(&self, request: &Request, status: &Status) -> bool {
        status.not_started() || (request.options.idempotent && self.retry_on.contains(&status.code()))
    }
}

/// Wraps a client service in [`Retry`].
#[derive(Clone, Debug)]
pub struct RetryLayer {
    policy: RetryPolicy,
}

impl RetryLayer {
    /// A layer with `policy`.
    pub fn new(policy: RetryPolicy) -> RetryLayer {
        RetryLayer { policy }
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        RetryLayer::new(RetryPolicy::default())
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            shared: Arc::new(Shared {
                budget: Mutex::new(self.policy.budget.clone()),
                policy: self.policy.clone(),
                seed: AtomicU64::new(seed()),
            }),
        }
    }
}

/// A client service that retries failed calls within a policy and budget. Clones share the budget.
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    policy: RetryPolicy,
    budget: Mutex<RetryBudget>,
    seed: AtomicU64,
}

impl Shared {
    fn budget(&self) -> std::sync::MutexGuard<'_, RetryBudget> {
        self.budget.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A number in `[0, 1)` from splitmix64 over an atomic counter: lock-free and good enough
    /// for jitter.
    fn unit(&self) -> f64 {
        let mut z = self.seed.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0u64)
}

impl<S> Service<Request> for Retry<S>
where
    S: Service<Request, Response = crate::Response, Error = Status> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = crate::Response;
    type Error = Status;
    type Future = LayerFuture<crate::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        // Each attempt waits for readiness of its own clone of the inner service.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let inner = self.inner.clone();
        let shared = self.shared.clone();
        Box::pin(async move {
            let deadline = request.deadline();
            shared.budget().deposit(Instant::now());
            let mut attempt = 1;
            loop {
                let mut this_try = request.clone();
                if let Some(deadline) = deadline {
                    this_try.options.timeout = Some(deadline.saturating_duration_since(tokio::time::Instant::now()));
                }
                let status = match inner.clone().oneshot(this_try).await {
                    Ok(response) => return Ok(response),
                    Err(status) => status,
                };
                let policy = &shared.policy;
                if attempt >= policy.max_attempts || !policy.retryable(&request, &status) {
                    return Err(status);
                }
                let wait = policy.backoff.wait(attempt - 1, shared.unit());
                if deadline.is_some_and(|d| tokio::time::Instant::now() + wait >= d) {
                    return Err(status);
                }
                if !shared.budget().try_withdraw(Instant::now()) {
                    tracing::debug!(%status, "retry budget spent; not retrying");
                    return Err(status);
                }
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap_and_jitters_below_it() {
        let b = Backoff { initial: Duration::from_millis(10), max: Duration::from_millis(100) };
        assert_eq!(b.wait(0, 0.999_999).as_millis(), 9);
        assert_eq!(b.wait(2, 0.5), Duration::from_millis(20));
        assert_eq!(b.wait(10, 0.5), Duration::from_millis(50));
        assert_eq!(b.wait(3, 0.0), Duration::ZERO);
    }

    #[test]
    fn budget_limits_retries_to_the_ratio_once_the_reserve_is_spent() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(0.1, 0.0);
        assert!(budget.try_withdraw(t0), "starts with its cap");
        assert!(!budget.try_withdraw(t0), "cap of 1 without a reserve");
        let mut retried = 0;
        for _ in 0..1000 {
            budget.deposit(t0);
            if budget.try_withdraw(t0) {
                retried += 1;
            }
        }
        assert!((95..=100).contains(&retried), "about 10% of 1000 calls retried, got {retried}");
    }

    #[test]
    fn budget_reserve_refills_with_time() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(0.0, 10.0);
        let spent = (0..200).take_while(|_| budget.try_withdraw(t0)).count();
        assert_eq!(spent, 100, "cap is ten seconds of reserve");
        assert!(!budget.try_withdraw(t0));
        let later = t0 + Duration::from_millis(500);
        assert_eq!((0..20).take_while(|_| budget.try_withdraw(later)).count(), 5);
    }

    #[test]
    fn only_not_started_or_idempotent_retryable_failures_are_retried() {
        let policy = RetryPolicy::default();
        let mut request = Request::new("S", "m", ());
        assert!(!policy.retryable(&request, &Status::unavailable("down")));
        assert!(policy.retryable(&request, &Status::unavailable("refused").with_not_started()));
        request.options.idempotent = true;
        assert!(policy.retryable(&request, &Status::unavailable("down")));
        assert!(!policy.retryable(&request, &Status::internal("bug")));
    }
}
