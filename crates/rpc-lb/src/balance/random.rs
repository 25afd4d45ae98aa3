//! [`Random`]: uniform choice.

use super::{Balancer, Candidate};
use crate::rng::Rng;
use std::time::Instant;

/// Picks uniformly at random; ignores weights, load and keys.
#[derive(Debug)]
pub struct Random {
    rng: Rng,
}

impl Random {
    /// A balancer seeded from the process's randomness.
    pub fn new() -> Random {
        Random { rng: Rng::from_entropy() }
    }

    /// A balancer with a fixed seed, for reproducible tests.
    pub fn with_seed(seed: u64) -> Random {
        Random { rng: Rng::new(seed) }
    }
}

impl Default for Random {
    fn default() -> Self {
        Random::new()
    }
}

impl Balancer for Random {
    fn pick(&self, candidates: &[Candidate], _: Option<&[u8]>, _: Instant) -> Option<usize> {
        (!candidates.is_empty()).then(|| self.rng.below(candidates.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn spreads_uniformly() {
        let counts = histogram(&Random::with_seed(7), &candidates(5), 50_000);
        // 4 degrees of freedom: 18.47 is the 0.999 quantile.
        assert!(chi_square(&counts, &[1.0; 5]) < 18.47, "{counts:?}");
    }
}
