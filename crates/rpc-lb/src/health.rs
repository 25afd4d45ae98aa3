//! Active health checking: probe each endpoint on an interval and mark it down after a run of
//! failed probes, up again after a run of good ones.
//!
//! [`HealthState`] is the sans-IO threshold logic; [`HealthCheck`] configures the probe the
//! balanced channel runs (a protocol-level ping by default, or any call, such as a health
//! method). Endpoints start up, so a new endpoint serves before its first probe.

use rpc_core::{Channel, Status};
use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

/// A probe: given the endpoint's channel, succeeds if the endpoint is healthy.
pub type Probe = Arc<dyn Fn(Channel) -> Pin<Box<dyn Future<Output = Result<(), Status>> + Send>> + Send + Sync>;

/// What to probe and how often.
#[derive(Clone)]
pub struct HealthCheck {
    /// Time between probes of one endpoint.
    pub interval: Duration,
    /// A probe slower than this failed.
    pub timeout: Duration,
    /// Failed probes in a row that mark an endpoint down.
    pub unhealthy_threshold: u32,
    /// Good probes in a row that mark it up again.
    pub healthy_threshold: u32,
    /// The probe.
    pub probe: Probe,
}

impl HealthCheck {
    /// Pings every `interval` with a 1 s timeout; 3 failures mark down, 2 successes mark up.
    pub fn ping(interval: Duration) -> HealthCheck {
        HealthCheck {
            interval,
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            probe: Arc::new(|channel: Channel| Box::pin(async move { channel.ping().await.map(drop) })),
        }
    }

    /// Probes with `probe` (for example a call of the service's health method) instead of a ping.
    pub fn with_probe<F, Fut>(mut self, probe: F) -> HealthCheck
    where
        F: Fn(Channel) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Status>> + Send + 'static,
    {
        self.probe = Arc::new(move |channel| Box::pin(probe(channel)));
        self
    }

    /// Sets the probe timeout.
    pub fn timeout(mut self, timeout: Duration) -> HealthCheck {
        self.timeout = timeout;
        self
    }

    /// Sets the thresholds: `down` failures in a row mark down, `up` successes mark up.
    pub fn thresholds(mut self, down: u32, up: u32) -> HealthCheck {
        self.unhealthy_threshold = down.max(1);
        self.healthy_threshold = up.max(1);
        self
    }
}

impl fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthCheck")
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("unhealthy_threshold", &self.unhealthy_threshold)
            .field("healthy_threshold", &self.healthy_threshold)
            .finish_non_exhaustive()
    }
}

/// Health of one endpoint as its probes have shown it.
#[derive(Clone, Debug)]
pub struct HealthState {
    up: bool,
    streak: u32,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState { up: true, streak: 0 }
    }
}

impl HealthState {
    /// True while the endpoint is considered up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records a probe; returns the new state when it changed.
    pub fn record(&mut self, ok: bool, check: &HealthCheck) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { check.unhealthy_threshold } else { check.healthy_threshold };
        if self.streak >= needed {
            self.up = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_mark_down_and_up() {
        let check = HealthCheck::ping(Duration::from_secs(1));
        let mut h = HealthState::default();
        assert_eq!(h.record(false, &check), None);
        assert_eq!(h.record(false, &check), None);
        assert_eq!(h.record(true, &check), None, "a good probe resets the streak");
        assert_eq!(h.record(false, &check), None);
        assert_eq!(h.record(false, &check), None);
        assert_eq!(h.record(false, &check), Some(false));
        assert!(!h.is_up());
        assert_eq!(h.record(true, &check), None);
        assert_eq!(h.record(true, &check), Some(true));
        assert!(h.is_up());
    }
}
