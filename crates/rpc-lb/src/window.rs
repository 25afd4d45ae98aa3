//! A sliding window of call outcomes in time buckets, shared by the breaker and outlier
//! detection. Sans-IO: time is passed in.

use std::time::{Duration, Instant};

/// Calls, failures and slow calls seen in the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

#[derive(Clone, Debug)]
pub(crate) struct Window {
    origin: Instant,
    /// Width of a bucket in nanoseconds (at least a millisecond).
    bucket_ns: u64,
    /// (bucket number since `origin`, counts); a slot is reused when its number is stale.
    slots: Vec<(u64, Counts)>,
    /// Sum of the slots inside the window that ends at bucket `newest`, kept as calls are
    /// recorded so that reading it costs nothing (it runs on every call).
    total: Counts,
    newest: u64,
}

impl Window {
    /// A window of `span` split into `buckets` (at least 1 ms each).
    pub(crate) fn new(span: Duration, buckets: u32, now: Instant) -> Window {
        let buckets = buckets.max(1);
        Window {
            origin: now,
            bucket_ns: u64::try_from((span / buckets).max(Duration::from_millis(1)).as_nanos()).unwrap_or(u64::MAX),
            slots: vec![(u64::MAX, Counts::default()); buckets as usize],
            total: Counts::default(),
            newest: 0,
        }
    }

    fn number(&self, now: Instant) -> u64 {
        // In u64: dividing u128s is a library call, and this runs on every call.
        let elapsed = now.saturating_duration_since(self.origin);
        let nanos = elapsed.as_secs().saturating_mul(1_000_000_000).saturating_add(u64::from(elapsed.subsec_nanos()));
        nanos / self.bucket_ns
    }

    /// Moves the window's end to bucket `n`, taking the buckets that fall out of it out of the
    /// total (each bucket leaves once, so this is constant time per call on average).
    fn advance(&mut self, n: u64) {
        if n <= self.newest {
            return;
        }
        let len = self.slots.len() as u64;
        let (from, to) = (self.newest.saturating_sub(len - 1), n.saturating_sub(len - 1));
        for b in from..to.min(from + len) {
            let slot = &mut self.slots[(b % len) as usize];
            if slot.0 == b {
                self.total.calls -= slot.1.calls;
                self.total.failures -= slot.1.failures;
                self.total.slow -= slot.1.slow;
                *slot = (u64::MAX, Counts::default());
            }
        }
        self.newest = n;
    }

    /// Records one call at `now` and returns the counts of the window ending there.
    pub(crate) fn record(&mut self, now: Instant, failure: bool, slow: bool) -> Counts {
        let n = self.number(now);
        self.advance(n);
        let len = self.slots.len() as u64;
        // A caller on another thread may pass a slightly earlier `now`: count it unless it is
        // already outside the window.
        if n + len > self.newest {
            let slot = &mut self.slots[(n % len) as usize];
            if slot.0 != n {
                // Holds a bucket that already left the window (and the total).
                *slot = (n, Counts::default());
            }
            let add = Counts { calls: 1, failures: u32::from(failure), slow: u32::from(slow) };
            slot.1.calls += add.calls;
            slot.1.failures += add.failures;
            slot.1.slow += add.slow;
            self.total.calls += add.calls;
            self.total.failures += add.failures;
            self.total.slow += add.slow;
        }
        self.total
    }

    /// Forgets everything recorded.
    pub(crate) fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = (u64::MAX, Counts::default()));
        self.total = Counts::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_buckets_slide_out() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = Window::new(s(10), 10, t0);
        assert_eq!(w.record(t0, true, false), Counts { calls: 1, failures: 1, slow: 0 });
        assert_eq!(w.record(t0 + s(5), false, true), Counts { calls: 2, failures: 1, slow: 1 });
        // The first bucket has left the window at 10.5 s.
        assert_eq!(
            w.record(t0 + Duration::from_millis(10_500), false, false),
            Counts { calls: 2, failures: 0, slow: 1 }
        );
        // A call a little in the past still counts; one older than the window does not.
        assert_eq!(w.record(t0 + s(9), true, false), Counts { calls: 3, failures: 1, slow: 1 });
        assert_eq!(w.record(t0, true, false), Counts { calls: 3, failures: 1, slow: 1 });
        // Long after, everything has slid out.
        assert_eq!(w.record(t0 + s(60), false, false), Counts { calls: 1, failures: 0, slow: 0 });
        w.clear();
        assert_eq!(w.record(t0 + s(61), false, false), Counts { calls: 1, failures: 0, slow: 0 });
    }

    #[test]
    fn totals_match_a_recount_over_a_random_walk() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(1), 10, t0);
        let mut log: Vec<(u64, bool)> = Vec::new();
        let mut t = 0u64;
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t += x % 250;
            let failure = x % 3 == 0;
            let got = w.record(t0 + Duration::from_millis(t), failure, false);
            log.push((t / 100, failure));
            let newest = t / 100;
            let inside = log.iter().filter(|(b, _)| b + 10 > newest);
            let want = inside.fold(Counts::default(), |mut c, (_, f)| {
                c.calls += 1;
                c.failures += u32::from(*f);
                c
            });
            assert_eq!(got, want, "at {t} ms");
        }
    }
}
