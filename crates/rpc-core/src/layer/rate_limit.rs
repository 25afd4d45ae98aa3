//! [`RateLimitLayer`]: admits calls at a sustained rate with a burst allowance, per listener or
//! client, per method and optionally per caller; the excess fails at once with
//! `ResourceExhausted`, without doing any of the work.
//!
//! The policy is [`Gcra`] (the generic cell rate algorithm, a token bucket kept as one
//! timestamp), sans-IO with time passed in.

use super::{refused, CallInfo, PassOrRefuse};
use crate::{Code, Status, CALLER};
use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, Hasher},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tower::{Layer, Service};

/// The generic cell rate algorithm: `rate` calls per second on average, `burst` at once.
#[derive(Clone, Copy, Debug)]
pub struct Gcra {
    /// Time between two calls at the sustained rate.
    interval: Duration,
    /// How far ahead of now the theoretical arrival time may run.
    tolerance: Duration,
    /// Theoretical arrival time of the next call.
    tat: Option<Instant>,
}

impl Gcra {
    /// `per_second` calls per second, up to `burst` (at least 1) back to back.
    pub fn new(per_second: f64, burst: u32) -> Gcra {
        let per_second = per_second.max(1e-9);
        let interval = Duration::from_secs_f64(1.0 / per_second);
        // From the burst and the rate directly: at very high rates the interval rounds to 0 ns.
        let tolerance = Duration::from_secs_f64(f64::from(burst.max(1)) / per_second);
        Gcra { interval, tolerance, tat: None }
    }

    /// Admits a call at `now`, or says how long until one would be admitted.
    pub fn check(&mut self, now: Instant) -> Result<(), Duration> {
        self.tat = Some(self.next(self.tat, now)?);
        Ok(())
    }

    /// The theoretical arrival time after admitting a call at `now`, or the wait until one
    /// would be admitted.
    fn next(&self, tat: Option<Instant>, now: Instant) -> Result<Instant, Duration> {
        let next = tat.map_or(now, |t| t.max(now)) + self.interval;
        let ahead = next.saturating_duration_since(now);
        if ahead <= self.tolerance {
            Ok(next)
        } else {
            Err(ahead - self.tolerance)
        }
    }

    /// True when the limiter is back to its full burst at `now`, so forgetting it changes nothing.
    fn is_idle(&self, now: Instant) -> bool {
        self.tat.is_none_or(|t| t <= now)
    }
}

/// A [`Gcra`] shared without a lock: the theoretical arrival time is one atomic, advanced by
/// compare-and-swap, so concurrent callers never wait for each other.
#[derive(Debug)]
struct SharedGcra {
    gcra: Gcra,
    epoch: Instant,
    /// Nanoseconds after `epoch`, plus one (0: no call yet).
    tat: AtomicU64,
}

impl SharedGcra {
    fn new(gcra: Gcra) -> SharedGcra {
        SharedGcra { gcra, epoch: Instant::now(), tat: AtomicU64::new(0) }
    }

    fn check(&self, now: Instant) -> Result<(), Duration> {
        let mut current = self.tat.load(Ordering::Acquire);
        loop {
            let tat = current.checked_sub(1).map(|ns| self.epoch + Duration::from_nanos(ns));
            let next = self.gcra.next(tat, now)?;
            let stored =
                u64::try_from(next.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1) + 1;
            match self.tat.compare_exchange_weak(current, stored, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }
}

/// Most keys tracked per layer; past it idle keys are forgotten, and if none is idle new keys
/// share one overflow limiter so memory stays bounded under many callers.
const MAX_KEYS: usize = 10_000;

/// Wraps a service in [`RateLimit`].
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    per_second: f64,
    burst: u32,
    per_method: bool,
    per_caller: bool,
    overrides: Vec<(String, String, f64)>,
}

impl RateLimitLayer {
    /// `n` calls per second for everything through the layer, with a burst of `n / 10` (at
    /// least 1).
    pub fn per_second(n: u32) -> RateLimitLayer {
        RateLimitLayer {
            per_second: f64::from(n),
            burst: (n / 10).max(1),
            per_method: false,
            per_caller: false,
            overrides: Vec::new(),
        }
    }

    /// Calls admitted back to back after an idle period.
    pub fn burst(mut self, calls: u32) -> Self {
        self.burst = calls.max(1);
        self
    }

    /// Gives each `service.method` its own limit of the same rate.
    pub fn per_method(mut self) -> Self {
        self.per_method = true;
        self
    }

    /// Gives each caller (the `rpc-caller` metadata) its own limit, so one noisy client cannot
    /// use up everyone's rate. Calls without a caller share one limit.
    pub fn per_caller(mut self) -> Self {
        self.per_caller = true;
        self
    }

    /// A different rate for `service.method` (implies its own limit for that method).
    pub fn method(mut self, service: impl Into<String>, method: impl Into<String>, per_second: u32) -> Self {
        self.overrides.push((service.into(), method.into(), f64::from(per_second)));
        self
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit { inner, shared: Arc::new(Limits::new(self.clone())) }
    }
}

/// A service that refuses calls beyond a rate. Clones share the limits.
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Limits>,
}

#[derive(Debug)]
struct Limits {
    config: RateLimitLayer,
    /// The one limiter when nothing is kept per method or caller: no key to hash or look up.
    global: Option<SharedGcra>,
    /// Keyed by a keyed hash of the key, so admitting a call allocates nothing and a caller
    /// cannot choose a name that lands in another caller's limiter.
    buckets: Mutex<HashMap<u64, Gcra>>,
    hasher: std::hash::RandomState,
}

impl Limits {
    fn new(config: RateLimitLayer) -> Limits {
        let keyed = config.per_method || config.per_caller || !config.overrides.is_empty();
        Limits {
            global: (!keyed).then(|| SharedGcra::new(Gcra::new(config.per_second, config.burst))),
            config,
            buckets: Mutex::new(HashMap::new()),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn admit<R: CallInfo>(&self, request: &R, now: Instant) -> Result<(), Status> {
        let config = &self.config;
        if let Some(global) = &self.global {
            let checked = global.check(now);
            return checked.map_err(|wait| {
                refused(
                    Code::ResourceExhausted,
                    format!(
                        "rate limit of {}/s exceeded calling {}.{}; retry in {wait:?} or slow down",
                        config.per_second,
                        request.service(),
                        request.method()
                    ),
                )
            });
        }
        let (service, method) = (request.service().as_bytes(), request.method().as_bytes());
        let special =
            config.overrides.iter().find(|(s, m, _)| s.as_bytes() == service && m.as_bytes() == method).map(|o| o.2);
        let mut hasher = self.hasher.build_hasher();
        if config.per_method || special.is_some() {
            (service, method).hash(&mut hasher);
        }
        let caller = if config.per_caller { request.metadata().get(CALLER) } else { None };
        caller.hash(&mut hasher);
        let key = hasher.finish();
        let per_second = special.unwrap_or(config.per_second);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(&key) {
            buckets.retain(|_, g| !g.is_idle(now));
        }
        let key = if buckets.len() >= MAX_KEYS && !buckets.contains_key(&key) { 0 } else { key };
        let gcra = buckets.entry(key).or_insert_with(|| Gcra::new(per_second, config.burst));
        gcra.check(now).map_err(|wait| {
            refused(
                Code::ResourceExhausted,
                format!(
                    "rate limit of {per_second}/s exceeded for {}.{}{}; retry in {wait:?} or slow down",
                    request.service(),
                    request.method(),
                    caller.map(|c| format!(" by caller {c:?}")).unwrap_or_default()
                ),
            )
        })
    }
}

impl<S, R> Service<R> for RateLimit<S>
where
    R: CallInfo,
    S: Service<R, Error = Status>,
{
    type Response = S::Response;
    type Error = Status;
    type Future = PassOrRefuse<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        match self.shared.admit(&request, Instant::now()) {
            Ok(()) => PassOrRefuse::pass(self.inner.call(request)),
            Err(status) => PassOrRefuse::refuse(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_admits_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut g = Gcra::new(10.0, 3);
        assert!((0..3).all(|_| g.check(t0).is_ok()), "burst of 3");
        let wait = g.check(t0).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100), "{wait:?}");
        assert!(g.check(t0 + Duration::from_millis(100)).is_ok());
        assert!(g.check(t0 + Duration::from_millis(100)).is_err());
        let admitted = (1..=1000).filter(|i| g.check(t0 + Duration::from_millis(100 + i)).is_ok()).count();
        assert_eq!(admitted, 10, "ten in the next second, at the sustained rate");
    }

    #[test]
    fn the_shared_limiter_admits_exactly_the_burst_across_threads() {
        let shared = Arc::new(SharedGcra::new(Gcra::new(10.0, 50)));
        let t0 = Instant::now();
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let shared = shared.clone();
                    s.spawn(move || (0..100).filter(|_| shared.check(t0).is_ok()).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 50, "one burst, however many threads race for it");
        assert!(shared.check(t0 + Duration::from_millis(100)).is_ok(), "then the sustained rate");
        assert!(shared.check(t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn limits_are_kept_per_caller_when_asked() {
        let limits = Limits::new(RateLimitLayer::per_second(1).burst(1).per_caller());
        let now = Instant::now();
        let mut a = crate::Request::new("S", "m", ());
        a.options.metadata.insert(CALLER, "a");
        let mut b = a.clone();
        b.options.metadata.insert(CALLER, "b");
        assert!(limits.admit(&a, now).is_ok());
        let refused = limits.admit(&a, now).unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.not_started());
        assert!(limits.admit(&b, now).is_ok(), "another caller has its own limit");
    }
}
