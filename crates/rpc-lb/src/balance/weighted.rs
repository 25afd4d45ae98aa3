//! Weighted balancers: [`WeightedRandom`] (prefix sums and binary search) and
//! [`SmoothWeightedRoundRobin`] (nginx's interleaving, no bursts to the heaviest endpoint).

use super::{Balancer, Candidate};
use crate::rng::Rng;
use std::{
    sync::{Mutex, RwLock},
    time::Instant,
};

/// Picks at random in proportion to weight. With every weight 0 it picks uniformly.
#[derive(Debug)]
pub struct WeightedRandom {
    rng: Rng,
    /// Running sums of weights of the last `update`.
    prefix: RwLock<Vec<u64>>,
}

impl WeightedRandom {
    /// A balancer seeded from the process's randomness.
    pub fn new() -> WeightedRandom {
        WeightedRandom::with_rng(Rng::from_entropy())
    }

    /// A balancer with a fixed seed, for reproducible tests.
    pub fn with_seed(seed: u64) -> WeightedRandom {
        WeightedRandom::with_rng(Rng::new(seed))
    }

    fn with_rng(rng: Rng) -> WeightedRandom {
        WeightedRandom { rng, prefix: RwLock::new(Vec::new()) }
    }
}

impl Default for WeightedRandom {
    fn default() -> Self {
        WeightedRandom::new()
    }
}

fn prefix_sums(candidates: &[Candidate]) -> Vec<u64> {
    candidates
        .iter()
        .scan(0u64, |sum, c| {
            *sum += u64::from(c.endpoint.weight);
            Some(*sum)
        })
        .collect()
}

impl Balancer for WeightedRandom {
    fn update(&self, candidates: &[Candidate]) {
        *self.prefix.write().unwrap_or_else(|e| e.into_inner()) = prefix_sums(candidates);
    }

    fn pick(&self, candidates: &[Candidate], _: Option<&[u8]>, _: Instant) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let cached = self.prefix.read().unwrap_or_else(|e| e.into_inner());
        let fresh;
        // Tolerate a pick with a set `update` was not told of: compute the sums for it.
        let prefix = if cached.len() == candidates.len() {
            &*cached
        } else {
            fresh = prefix_sums(candidates);
            &fresh
        };
        let total = prefix.last().copied().unwrap_or(0);
        if total == 0 {
            return Some(self.rng.below(candidates.len()));
        }
        let point = ((u128::from(self.rng.next_u64()) * u128::from(total)) >> 64) as u64;
        Some(prefix.partition_point(|&sum| sum <= point))
    }
}

/// Interleaves candidates in proportion to weight (weights 5, 1, 1 give a a b a c a a, not
/// a a a a a b c), as nginx does. With every weight 0 it falls back to plain turns.
#[derive(Debug, Default)]
pub struct SmoothWeightedRoundRobin {
    current: Mutex<Vec<i64>>,
}

impl SmoothWeightedRoundRobin {
    /// A balancer with no history.
    pub fn new() -> SmoothWeightedRoundRobin {
        SmoothWeightedRoundRobin::default()
    }
}

impl Balancer for SmoothWeightedRoundRobin {
    fn update(&self, candidates: &[Candidate]) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = vec![0; candidates.len()];
    }

    fn pick(&self, candidates: &[Candidate], _: Option<&[u8]>, _: Instant) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.resize(candidates.len(), 0);
        let all_zero = candidates.iter().all(|c| c.endpoint.weight == 0);
        let mut total = 0;
        let mut best = 0;
        for (i, c) in candidates.iter().enumerate() {
            let w = if all_zero { 1 } else { i64::from(c.endpoint.weight) };
            current[i] += w;
            total += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn weighted_random_follows_weights() {
        let weights = [1, 2, 7, 0];
        let counts = histogram(&WeightedRandom::with_seed(3), &weighted(&weights), 100_000);
        assert_eq!(counts[3], 0, "weight 0 takes no traffic");
        let expected: Vec<f64> = weights[..3].iter().map(|&w| f64::from(w)).collect();
        // 2 degrees of freedom: 13.82 is the 0.999 quantile.
        assert!(chi_square(&counts[..3], &expected) < 13.82, "{counts:?}");
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves_exactly() {
        let c = weighted(&[5, 1, 1]);
        let b = SmoothWeightedRoundRobin::new();
        b.update(&c);
        let now = Instant::now();
        let picks: Vec<_> = (0..7).map(|_| b.pick(&c, None, now).unwrap()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(histogram(&b, &c, 7000), [5000, 1000, 1000]);
    }
}
