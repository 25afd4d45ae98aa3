//! [`Load`]: what an endpoint is carrying now, for least-load balancing.
//!
//! Two signals, as Finagle and Linkerd use: calls in flight, and a peak-EWMA of latency (an
//! average that jumps up to any slower observation at once and decays back slowly, so a host
//! that turns slow is avoided at once and trusted again gradually). Both are atomics, so
//! balancers read load without locking; time is passed in.

use std::{
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

/// Score of an endpoint that has calls in flight but no latency measured yet: high, so a new
/// endpoint gets one probe call at a time until its latency is known.
const UNMEASURED_PENALTY: f64 = 1e9;

/// The load of one endpoint.
#[derive(Debug)]
pub struct Load {
    in_flight: AtomicUsize,
    /// Peak-EWMA latency in nanoseconds, as `f64` bits.
    cost: AtomicU64,
    /// When `cost` was last updated, in nanoseconds since `epoch`.
    stamp: AtomicU64,
    epoch: Instant,
    decay_ns: f64,
}

impl Load {
    /// An idle endpoint whose latency average decays with time constant `decay` (Finagle and
    /// Linkerd use 10 s).
    pub fn new(decay: Duration, now: Instant) -> Load {
        Load {
            in_flight: AtomicUsize::new(0),
            cost: AtomicU64::new(0f64.to_bits()),
            stamp: AtomicU64::new(0),
            epoch: now,
            decay_ns: decay.as_nanos().max(1) as f64,
        }
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A call starts.
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A call ends; `rtt` is its latency if it produced an answer worth measuring.
    pub fn end(&self, now: Instant, rtt: Option<Duration>) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(rtt) = rtt {
            self.observe(now, rtt);
        }
    }

    /// Folds a latency observation into the peak-EWMA.
    pub fn observe(&self, now: Instant, rtt: Duration) {
        // Not `as_nanos() as f64`: converting a u128 to a float is a library call, per call.
        let rtt = rtt.as_secs_f64() * 1e9;
        let now = self.nanos(now);
        let (cost, at) = self.read_at(now);
        let next = if rtt > cost {
            rtt
        } else {
            let w = (-(at as f64) / self.decay_ns).exp();
            cost * w + rtt * (1.0 - w)
        };
        // Two racing updates may lose one observation; the average does not need more.
        self.cost.store(next.to_bits(), Ordering::Relaxed);
        self.stamp.store(now, Ordering::Relaxed);
    }

    /// The latency estimate at `now`, decayed since the last observation.
    pub fn latency(&self, now: Instant) -> Duration {
        let (cost, elapsed) = self.read(now);
        Duration::from_nanos((cost * (-(elapsed as f64) / self.decay_ns).exp()) as u64)
    }

    /// The balancing score at `now` (lower is better): latency × (in-flight + 1).
    pub fn cost(&self, now: Instant) -> f64 {
        let pending = self.in_flight() as f64;
        let latency = self.latency(now).as_nanos() as f64;
        if latency == 0.0 && pending > 0.0 {
            return UNMEASURED_PENALTY + pending;
        }
        latency * (pending + 1.0)
    }

    /// The cost and the nanoseconds since it was stamped.
    fn read(&self, now: Instant) -> (f64, u64) {
        self.read_at(self.nanos(now))
    }

    /// The cost and how long ago it was measured, at `now` nanoseconds after the epoch.
    fn read_at(&self, now: u64) -> (f64, u64) {
        let cost = f64::from_bits(self.cost.load(Ordering::Relaxed));
        let stamp = self.stamp.load(Ordering::Relaxed);
        (cost, now.saturating_sub(stamp))
    }

    fn nanos(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.epoch);
        elapsed.as_secs().saturating_mul(1_000_000_000).saturating_add(u64::from(elapsed.subsec_nanos()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn peak_ewma_jumps_to_a_slow_observation_and_decays_back() {
        let t0 = Instant::now();
        let load = Load::new(Duration::from_secs(10), t0);
        load.observe(t0, MS);
        load.observe(t0 + MS, 100 * MS);
        assert_eq!(load.latency(t0 + MS), 100 * MS, "peak is taken at once");
        let later = load.latency(t0 + Duration::from_secs(10) + MS);
        assert!(later < 40 * MS && later > 30 * MS, "decays by 1/e per time constant: {later:?}");
        load.observe(t0 + 2 * MS, MS);
        assert!(load.latency(t0 + 2 * MS) > 99 * MS, "a fast answer lowers the average slowly");
    }

    #[test]
    fn cost_grows_with_calls_in_flight_and_penalises_unmeasured_busy_endpoints() {
        let t0 = Instant::now();
        let load = Load::new(Duration::from_secs(10), t0);
        assert_eq!(load.cost(t0), 0.0);
        load.start();
        assert!(load.cost(t0) >= UNMEASURED_PENALTY);
        load.end(t0, Some(MS));
        let idle = load.cost(t0);
        load.start();
        load.start();
        assert!((load.cost(t0) / idle - 3.0).abs() < 1e-9);
    }
}
