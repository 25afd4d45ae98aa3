//! Circuit breaking: stop sending calls to something that is failing, probe it now and then,
//! and resume when it recovers.
//!
//! [`Breaker`] is the sans-IO state machine (closed → open → half-open → closed), opening when,
//! over a sliding window with at least a minimum number of calls, the share of failures or of
//! slow calls reaches a threshold. The balanced channel keeps one per endpoint and routes around
//! open ones; [`CircuitBreakerLayer`] keeps one per method, on a client or a server, and fails
//! fast with `Unavailable` (marked not started, so safe to retry elsewhere) while open.

use crate::window::Window;
use pin_project_lite::pin_project;
use rpc_core::{
    layer::{CallInfo, PassOrRefuse},
    ByteStr, Code, Status,
};
use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};
use tower::{Layer, Service};

/// When a breaker opens and how it recovers. Defaults follow Hystrix: 20 calls in a 10 s window
/// before tripping at 50% failures, 5 s open; slow-call tripping is off unless set.
#[derive(Clone, Debug)]
pub struct BreakerConfig {
    /// Span of the sliding window.
    pub window: Duration,
    /// Fewest calls in the window before the ratios are judged.
    pub min_calls: u32,
    /// Share of failed calls that opens the circuit.
    pub failure_ratio: f64,
    /// A successful call slower than this counts as slow (`None`: never).
    pub slow_call: Option<Duration>,
    /// Share of slow calls that opens the circuit.
    pub slow_ratio: f64,
    /// How long the circuit stays open before probing.
    pub open_for: Duration,
    /// Calls let through while half-open; all must succeed to close again.
    pub probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_calls: 20,
            failure_ratio: 0.5,
            slow_call: None,
            slow_ratio: 1.0,
            open_for: Duration::from_secs(5),
            probes: 3,
        }
    }
}

/// The state of a circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow; outcomes are counted.
    Closed,
    /// Calls fail fast until the open period ends.
    Open,
    /// A few probe calls decide between closing and opening again.
    HalfOpen,
}

/// How a call ended, as far as a breaker cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (application errors included: the server worked).
    Success,
    /// Failed in a way that says the server is in trouble (see [`is_failure`]).
    Failure,
    /// Ended without an outcome that says anything about the server (the caller gave up, or
    /// the request was bad); only releases a half-open probe.
    Ignored,
}

impl Outcome {
    /// The outcome of a call that returned `result`.
    pub fn of<T>(result: &Result<T, Status>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(status) if is_failure(status) => Outcome::Failure,
            Err(_) => Outcome::Ignored,
        }
    }
}

/// True for statuses that say the server (not the request) is in trouble: unavailable, too
/// slow, overloaded, broken.
pub fn is_failure(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Internal
            | Code::Unknown
            | Code::Protocol
    )
}

#[derive(Clone, Debug)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, passed: u32 },
}

/// A circuit breaker state machine; time is passed in.
#[derive(Clone, Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    window: Window,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig, now: Instant) -> Breaker {
        let window = Window::new(config.window, 10, now);
        Breaker { config, state: State::Closed, window }
    }

    /// The state at `now` (an open circuit whose period ended reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { until } if now < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Until when calls fail fast, if the circuit is open at `now`.
    pub fn open_until(&self, now: Instant) -> Option<Instant> {
        match self.state {
            State::Open { until } if now < until => Some(until),
            _ => None,
        }
    }

    /// Asks to send a call at `now`; every `true` must be followed by one [`Breaker::record`].
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        match &mut self.state {
            State::Closed => true,
            State::Open { until } if now < *until => false,
            State::Open { .. } => {
                self.state = State::HalfOpen { in_flight: 1, passed: 0 };
                true
            }
            State::HalfOpen { in_flight, passed } => {
                if *in_flight + *passed < self.config.probes {
                    *in_flight += 1;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Records the outcome of a call that `try_acquire` let through, with its latency; returns
    /// true when the state changed.
    pub fn record(&mut self, now: Instant, outcome: Outcome, latency: Duration) -> bool {
        let slow = outcome == Outcome::Success && self.config.slow_call.is_some_and(|s| latency >= s);
        match &mut self.state {
            State::Closed => {
                if outcome == Outcome::Ignored {
                    return false;
                }
                let c = self.window.record(now, outcome == Outcome::Failure, slow);
                let ratio = |n: u32| f64::from(n) / f64::from(c.calls.max(1));
                let trip = c.calls >= self.config.min_calls
                    && (ratio(c.failures) >= self.config.failure_ratio
                        || (self.config.slow_call.is_some() && ratio(c.slow) >= self.config.slow_ratio));
                if trip {
                    self.open(now);
                }
                trip
            }
            // A call acquired before the circuit opened says nothing new.
            State::Open { .. } => false,
            State::HalfOpen { in_flight, passed } => {
                *in_flight = in_flight.saturating_sub(1);
                match outcome {
                    Outcome::Failure => {
                        self.open(now);
                        true
                    }
                    Outcome::Success if slow => {
                        self.open(now);
                        true
                    }
                    Outcome::Success => {
                        *passed += 1;
                        if *passed >= self.config.probes {
                            self.state = State::Closed;
                            self.window.clear();
                            true
                        } else {
                            false
                        }
                    }
                    Outcome::Ignored => false,
                }
            }
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open { until: now + self.config.open_for };
    }
}

/// Most methods a [`CircuitBreakerLayer`] tracks separately; further methods share one breaker,
/// so a client calling unbounded method names cannot grow memory without bound.
const MAX_METHODS: usize = 1024;

/// Wraps a service in [`CircuitBreaker`]: one breaker per `service.method`.
#[derive(Clone, Debug, Default)]
pub struct CircuitBreakerLayer {
    config: BreakerConfig,
}

impl CircuitBreakerLayer {
    /// A layer whose breakers use `config`.
    pub fn new(config: BreakerConfig) -> CircuitBreakerLayer {
        CircuitBreakerLayer { config }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker { inner, config: self.config.clone(), breakers: Arc::default() }
    }
}

type Breakers = Arc<Mutex<Vec<(ByteStr, ByteStr, Breaker)>>>;

/// A service with a circuit breaker per method. Clones share the breakers.
#[derive(Clone, Debug)]
pub struct CircuitBreaker<S> {
    inner: S,
    config: BreakerConfig,
    breakers: Breakers,
}

impl<S> CircuitBreaker<S> {
    /// The state of the breaker of `service.method` at `now` (closed if never called).
    pub fn state(&self, service: &str, method: &str, now: Instant) -> BreakerState {
        let breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        breakers
            .iter()
            .find(|(s, m, _)| s == service && m == method)
            .map_or(BreakerState::Closed, |(_, _, b)| b.state(now))
    }
}

fn with_breaker<R>(
    breakers: &Breakers,
    config: &BreakerConfig,
    service: &ByteStr,
    method: &ByteStr,
    now: Instant,
    f: impl FnOnce(&mut Breaker) -> R,
) -> R {
    let mut breakers = breakers.lock().unwrap_or_else(|e| e.into_inner());
    let found =
        breakers.iter().position(|(s, m, _)| s.as_bytes() == service.as_bytes() && m.as_bytes() == method.as_bytes());
    let at = match found {
        Some(at) => at,
        None if breakers.len() < MAX_METHODS => {
            breakers.push((service.clone(), method.clone(), Breaker::new(config.clone(), now)));
            breakers.len() - 1
        }
        None => MAX_METHODS - 1,
    };
    f(&mut breakers[at].2)
}

impl<S, R> Service<R> for CircuitBreaker<S>
where
    R: CallInfo,
    S: Service<R, Error = Status>,
{
    type Response = S::Response;
    type Error = Status;
    type Future = BreakerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let (service, method) = (request.service().clone(), request.method().clone());
        let started = Instant::now();
        if !with_breaker(&self.breakers, &self.config, &service, &method, started, |b| b.try_acquire(started)) {
            let status = Status::unavailable(format!(
                "circuit open for {service}.{method}: too many recent failures; failing fast"
            ))
            .with_not_started();
            return BreakerFuture { inner: PassOrRefuse::refuse(status), probe: None };
        }
        let probe = Probe {
            breakers: self.breakers.clone(),
            config: self.config.clone(),
            service,
            method,
            started,
            done: false,
        };
        BreakerFuture { inner: PassOrRefuse::pass(self.inner.call(request)), probe: Some(probe) }
    }
}

pin_project! {
    /// The future of a [`CircuitBreaker`] call: records the call's outcome in its breaker.
    pub struct BreakerFuture<F> {
        #[pin]
        inner: PassOrRefuse<F>,
        probe: Option<Probe>,
    }
}

impl<F, T> Future for BreakerFuture<F>
where
    F: Future<Output = Result<T, Status>>,
{
    type Output = Result<T, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(probe) = this.probe.take() {
            probe.finish(Outcome::of(&result));
        }
        Poll::Ready(result)
    }
}

/// A call the breaker let through. Its outcome is recorded when it ends, or as `Ignored` if the
/// caller drops it, so a half-open probe slot is never leaked.
struct Probe {
    breakers: Breakers,
    config: BreakerConfig,
    service: ByteStr,
    method: ByteStr,
    started: Instant,
    done: bool,
}

impl Probe {
    fn finish(mut self, outcome: Outcome) {
        self.record(outcome);
    }

    fn record(&mut self, outcome: Outcome) {
        self.done = true;
        let now = Instant::now();
        let latency = now.saturating_duration_since(self.started);
        with_breaker(&self.breakers, &self.config, &self.service, &self.method, now, |b| {
            b.record(now, outcome, latency)
        });
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if !self.done {
            self.record(Outcome::Ignored);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn config() -> BreakerConfig {
        BreakerConfig { min_calls: 10, open_for: 100 * MS, probes: 2, ..BreakerConfig::default() }
    }

    #[test]
    fn needs_the_minimum_calls_before_tripping() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(), t0);
        for _ in 0..9 {
            assert!(b.try_acquire(t0));
            b.record(t0, Outcome::Failure, MS);
        }
        assert_eq!(b.state(t0), BreakerState::Closed, "9 failures are below the minimum of 10");
        assert!(b.try_acquire(t0));
        assert!(b.record(t0, Outcome::Failure, MS));
        assert_eq!(b.state(t0), BreakerState::Open);
        assert!(!b.try_acquire(t0 + 50 * MS), "fails fast while open");
    }

    #[test]
    fn opens_at_the_failure_ratio_not_below() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(), t0);
        for i in 0..20 {
            assert!(b.try_acquire(t0));
            // Every third call fails: 33% < 50%.
            b.record(t0, if i % 3 == 0 { Outcome::Failure } else { Outcome::Success }, MS);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        for _ in 0..6 {
            b.try_acquire(t0);
            b.record(t0, Outcome::Failure, MS);
        }
        assert_eq!(b.state(t0), BreakerState::Open, "13 of 26 failed");
    }

    #[test]
    fn half_open_probes_close_on_success_and_reopen_on_failure() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(), t0);
        for _ in 0..10 {
            b.try_acquire(t0);
            b.record(t0, Outcome::Failure, MS);
        }
        let t1 = t0 + 100 * MS;
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert!(b.try_acquire(t1) && b.try_acquire(t1));
        assert!(!b.try_acquire(t1), "only two probes");
        b.record(t1, Outcome::Success, MS);
        b.record(t1, Outcome::Failure, MS);
        assert_eq!(b.state(t1), BreakerState::Open, "a failed probe reopens");

        let t2 = t1 + 100 * MS;
        assert!(b.try_acquire(t2));
        b.record(t2, Outcome::Ignored, MS);
        assert!(b.try_acquire(t2) && b.try_acquire(t2), "an ignored probe frees its slot");
        b.record(t2, Outcome::Success, MS);
        assert!(b.record(t2, Outcome::Success, MS));
        assert_eq!(b.state(t2), BreakerState::Closed);
        assert!(b.try_acquire(t2));
        b.record(t2, Outcome::Failure, MS);
        assert_eq!(b.state(t2), BreakerState::Closed, "the window starts empty after closing");
    }

    #[test]
    fn slow_calls_open_when_configured() {
        let t0 = Instant::now();
        let cfg = BreakerConfig { slow_call: Some(50 * MS), slow_ratio: 0.8, ..config() };
        let mut b = Breaker::new(cfg, t0);
        for _ in 0..10 {
            b.try_acquire(t0);
            b.record(t0, Outcome::Success, 60 * MS);
        }
        assert_eq!(b.state(t0), BreakerState::Open);
    }
}
