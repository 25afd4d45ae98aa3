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
    bucket: Duration,
    /// (bucket number since `origin`, counts); a slot is reused when its number is stale.
    slots: Vec<(u64, Counts)>,
}

impl Window {
    /// A window of `span` split into `buckets` slots (so it slides in steps of span / buckets).
    pub(crate) fn new(span: Duration, buckets: u32, now: Instant) -> Window {
        let buckets = buckets.max(1);
        Window {
            origin: now,
            bucket: (span / buckets).max(Duration::from_millis(1)),
            slots: vec![(u64::MAX, Counts::default()); buckets as usize],
        }
    }

    fn number(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.origin).as_nanos() / self.bucket.as_nanos()) as u64
    }

    pub(crate) fn record(&mut self, now: Instant, failure: bool, slow: bool) {
        let n = self.number(now);
        let len = self.slots.len() as u64;
        let slot = &mut self.slots[(n % len) as usize];
        if slot.0 != n {
            *slot = (n, Counts::default());
        }
        slot.1.calls += 1;
        slot.1.failures += u32::from(failure);
        slot.1.slow += u32::from(slow);
    }

    pub(crate) fn counts(&self, now: Instant) -> Counts {
        let n = self.number(now);
        let len = self.slots.len() as u64;
        let mut total = Counts::default();
        for (number, c) in &self.slots {
            if *number <= n && n - number < len {
                total.calls += c.calls;
                total.failures += c.failures;
                total.slow += c.slow;
            }
        }
        total
    }

    pub(crate) fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = (u64::MAX, Counts::default()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_buckets_slide_out() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(10), 10, t0);
        w.record(t0, true, false);
        w.record(t0 + Duration::from_secs(5), false, true);
        assert_eq!(w.counts(t0 + Duration::from_secs(5)), Counts { calls: 2, failures: 1, slow: 1 });
        assert_eq!(w.counts(t0 + Duration::from_millis(10_500)), Counts { calls: 1, failures: 0, slow: 1 });
        assert_eq!(w.counts(t0 + Duration::from_secs(30)), Counts::default());
    }
}
