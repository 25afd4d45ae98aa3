//! [`P2c`]: power of two choices over real load, the default balancer.
//!
//! Two distinct candidates are drawn at random and the one with the lower [`crate::Load::cost`]
//! (peak-EWMA latency × calls in flight) wins. Comparing two instead of all avoids herding onto
//! the single least-loaded endpoint while still steering clear of slow or busy ones.

use super::{Balancer, Candidate};
use crate::rng::Rng;
use std::time::Instant;

/// Power of two choices on peak-EWMA load; ignores weights and keys.
#[derive(Debug)]
pub struct P2c {
    rng: Rng,
}

impl P2c {
    /// A balancer seeded from the process's randomness.
    pub fn new() -> P2c {
        P2c { rng: Rng::from_entropy() }
    }

    /// A balancer with a fixed seed, for reproducible tests.
    pub fn with_seed(seed: u64) -> P2c {
        P2c { rng: Rng::new(seed) }
    }
}

impl Default for P2c {
    fn default() -> Self {
        P2c::new()
    }
}

impl Balancer for P2c {
    fn pick(&self, candidates: &[Candidate], _: Option<&[u8]>, now: Instant) -> Option<usize> {
        match candidates.len() {
            0 => None,
            1 => Some(0),
            n => {
                let a = self.rng.below(n);
                // Draw the second from the other n - 1, so the two always differ.
                let b = (a + 1 + self.rng.below(n - 1)) % n;
                let (ca, cb) = (candidates[a].load.cost(now), candidates[b].load.cost(now));
                Some(if cb < ca { b } else { a })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use std::time::Duration;

    #[test]
    fn equal_loads_spread_evenly() {
        let counts = histogram(&P2c::with_seed(1), &candidates(4), 40_000);
        assert!(chi_square(&counts, &[1.0; 4]) < 16.27, "{counts:?}");
    }

    #[test]
    fn avoids_a_slow_endpoint() {
        let c = candidates(3);
        let now = Instant::now();
        c[0].load.observe(now, Duration::from_millis(1));
        c[1].load.observe(now, Duration::from_millis(1));
        c[2].load.observe(now, Duration::from_millis(50));
        let counts = histogram(&P2c::with_seed(2), &c, 30_000);
        // The slow one wins only when drawn against itself, which P2C never does.
        assert_eq!(counts[2], 0, "{counts:?}");
    }

    #[test]
    fn avoids_a_busy_endpoint_and_simulated_traffic_shifts_away_from_a_slow_one() {
        let c = candidates(3);
        let b = P2c::with_seed(9);
        let now = Instant::now();
        for x in &c {
            x.load.observe(now, Duration::from_millis(2));
        }
        for _ in 0..5 {
            c[1].load.start();
        }
        let counts = histogram(&b, &c, 30_000);
        assert!(counts[1] < counts[0] / 10, "{counts:?}");

        // A simulated run: endpoint 2 takes 10x longer; calls complete in latency order.
        let c = candidates(3);
        let mut t = now;
        let mut served = [0usize; 3];
        for _ in 0..3000 {
            t += Duration::from_micros(100);
            let i = b.pick(&c, None, t).unwrap();
            served[i] += 1;
            let rtt = Duration::from_millis(if i == 2 { 20 } else { 2 });
            c[i].load.observe(t, rtt);
        }
        assert!(served[2] * 5 < served[0].min(served[1]), "{served:?}");
    }
}
