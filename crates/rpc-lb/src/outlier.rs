//! Passive outlier ejection: take an endpoint out of rotation when its own calls say it is
//! failing, for a period that grows each time it happens again.
//!
//! Sans-IO; the balanced channel keeps one [`Outlier`] per endpoint and enforces the cap on the
//! share of endpoints ejected at once ([`may_eject`]), so a fault shared by every endpoint (or a
//! client-side problem) cannot eject them all. Defaults follow Envoy.

use crate::window::Window;
use std::time::{Duration, Instant};

/// When to eject and for how long.
#[derive(Clone, Debug)]
pub struct OutlierConfig {
    /// Consecutive failures that eject (Envoy: 5).
    pub consecutive_failures: u32,
    /// Also eject when at least this share of calls failed over `window`, with at least
    /// `min_calls` calls (Envoy's failure-percentage check; off by default).
    pub failure_ratio: Option<f64>,
    /// Fewest calls before `failure_ratio` is judged.
    pub min_calls: u32,
    /// Span over which `failure_ratio` is judged.
    pub window: Duration,
    /// Ejection time is this times the number of ejections so far (Envoy: 30 s).
    pub base_ejection: Duration,
    /// Longest ejection (Envoy: 300 s).
    pub max_ejection: Duration,
    /// Largest share of endpoints ejected at once, though one may always be (Envoy: 10%).
    pub max_ejected_share: f64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            failure_ratio: None,
            min_calls: 50,
            window: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_share: 0.1,
        }
    }
}

/// True when one more of `total` endpoints may be ejected while `ejected` already are.
pub fn may_eject(ejected: usize, total: usize, config: &OutlierConfig) -> bool {
    let allowed = ((total as f64 * config.max_ejected_share).floor() as usize).max(1);
    ejected < allowed && ejected < total
}

/// Outlier state of one endpoint.
#[derive(Clone, Debug)]
pub struct Outlier {
    consecutive: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
    window: Window,
}

impl Outlier {
    /// An endpoint in rotation with a clean record.
    pub fn new(config: &OutlierConfig, now: Instant) -> Outlier {
        Outlier { consecutive: 0, ejections: 0, ejected_until: None, window: Window::new(config.window, 10, now) }
    }

    /// Records a call's outcome; true when the endpoint should now be ejected (call
    /// [`Outlier::eject`] if [`may_eject`] allows).
    pub fn record(&mut self, now: Instant, failure: bool, config: &OutlierConfig) -> bool {
        if self.is_ejected(now) {
            return false;
        }
        self.consecutive = if failure { self.consecutive + 1 } else { 0 };
        if self.consecutive >= config.consecutive_failures {
            return true;
        }
        config.failure_ratio.is_some_and(|ratio| {
            let c = self.window.record(now, failure, false);
            c.calls >= config.min_calls && f64::from(c.failures) >= ratio * f64::from(c.calls)
        })
    }

    /// Ejects the endpoint at `now`; returns until when.
    pub fn eject(&mut self, now: Instant, config: &OutlierConfig) -> Instant {
        // Each base period spent back in rotation since the last ejection forgives one, as
        // Envoy decrements its multiplier while a host stays healthy.
        if let Some(until) = self.ejected_until {
            let calm = now.saturating_duration_since(until).as_nanos() / config.base_ejection.as_nanos().max(1);
            self.ejections = self.ejections.saturating_sub(u32::try_from(calm).unwrap_or(u32::MAX));
        }
        self.ejections += 1;
        let until = now + config.base_ejection.saturating_mul(self.ejections).min(config.max_ejection);
        self.ejected_until = Some(until);
        self.consecutive = 0;
        self.window.clear();
        until
    }

    /// Until when the endpoint is out of rotation, if it is at `now`.
    pub fn ejected_until(&self, now: Instant) -> Option<Instant> {
        self.ejected_until.filter(|&t| now < t)
    }

    /// True while the endpoint is out of rotation.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until(now).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn consecutive_failures_eject_for_a_growing_period() {
        let cfg = OutlierConfig::default();
        let t0 = Instant::now();
        let mut o = Outlier::new(&cfg, t0);
        for _ in 0..4 {
            assert!(!o.record(t0, true, &cfg));
        }
        assert!(!o.record(t0, false, &cfg), "a success resets the streak");
        for _ in 0..4 {
            assert!(!o.record(t0, true, &cfg));
        }
        assert!(o.record(t0, true, &cfg));
        assert_eq!(o.eject(t0, &cfg), t0 + 30 * S);
        assert!(o.is_ejected(t0 + 29 * S) && !o.is_ejected(t0 + 30 * S));
        let t1 = t0 + 31 * S;
        assert_eq!(o.eject(t1, &cfg), t1 + 60 * S, "second ejection soon after lasts twice as long");
        let t2 = t1 + 60 * S + 200 * S;
        assert_eq!(o.eject(t2, &cfg), t2 + 30 * S, "a long calm period forgives earlier ejections");
    }

    #[test]
    fn failure_ratio_ejects_once_enough_calls_are_seen() {
        let cfg = OutlierConfig { failure_ratio: Some(0.5), min_calls: 10, ..OutlierConfig::default() };
        let t0 = Instant::now();
        let mut o = Outlier::new(&cfg, t0);
        let verdicts: Vec<bool> = (0..10).map(|i| o.record(t0, i % 2 == 0, &cfg)).collect();
        assert_eq!(verdicts.iter().filter(|v| **v).count(), 1, "only the tenth call is judged: {verdicts:?}");
    }

    #[test]
    fn at_most_the_configured_share_is_ejected_but_always_one() {
        let cfg = OutlierConfig::default();
        assert!(may_eject(0, 3, &cfg), "one of three, although 10% of 3 rounds to 0");
        assert!(!may_eject(1, 3, &cfg));
        assert!(may_eject(1, 20, &cfg) && !may_eject(2, 20, &cfg));
        assert!(!may_eject(1, 1, &cfg), "never the last endpoint");
    }
}
