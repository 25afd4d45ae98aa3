//! [`ConsistentHash`]: calls with the same key go to the same endpoint, and a change of
//! membership moves only the keys of the endpoint that joined or left.
//!
//! A ring of virtual nodes (`vnodes × weight` points per endpoint, placed by a stable hash of
//! its address) smooths the share each endpoint owns. With a load bound (Google's "consistent
//! hashing with bounded loads") a key walks on past endpoints already carrying more than
//! `factor ×` the average calls in flight, so a hot key cannot overload one node; the bound
//! trades some stickiness for that.

use super::{Balancer, Candidate};
use crate::rng::{stable_hash, Rng};
use std::{sync::RwLock, time::Instant};

/// Consistent hashing on the per-call key (the [`super::HASH_KEY`] metadata); calls without a
/// key are spread at random.
#[derive(Debug)]
pub struct ConsistentHash {
    vnodes: u32,
    bound: Option<f64>,
    ring: RwLock<Ring>,
    rng: Rng,
}

#[derive(Debug, Default)]
struct Ring {
    /// (point, candidate index), sorted by point.
    points: Vec<(u64, u32)>,
    /// Addresses the ring was built for, to notice a pick with another set.
    members: Vec<u64>,
}

impl Ring {
    fn build(candidates: &[Candidate], vnodes: u32) -> Ring {
        let mut points = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            let addr = c.endpoint.addr.as_bytes();
            for v in 0..vnodes.saturating_mul(c.endpoint.weight.max(1)) {
                points.push((stable_hash(&[addr, &v.to_be_bytes()]), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points, members: members(candidates) }
    }
}

fn members(candidates: &[Candidate]) -> Vec<u64> {
    candidates.iter().map(|c| stable_hash(&[c.endpoint.addr.as_bytes()])).collect()
}

impl ConsistentHash {
    /// A ring with 160 virtual nodes per unit of weight (ketama's choice) and no load bound.
    pub fn new() -> ConsistentHash {
        ConsistentHash { vnodes: 160, bound: None, ring: RwLock::default(), rng: Rng::from_entropy() }
    }

    /// Virtual nodes per unit of weight: more spread keys more evenly, at some memory.
    pub fn vnodes(mut self, vnodes: u32) -> Self {
        self.vnodes = vnodes.max(1);
        self
    }

    /// Bounds each endpoint to `factor` (> 1, for example 1.25) times the average calls in
    /// flight; keys past the bound go to the next endpoint on the ring.
    pub fn bounded(mut self, factor: f64) -> Self {
        self.bound = Some(factor.max(1.0));
        self
    }

    fn walk(&self, ring: &Ring, candidates: &[Candidate], hash: u64) -> usize {
        let points = &ring.points;
        if points.is_empty() {
            // Every candidate has weight 0: none is preferred.
            return self.rng.below(candidates.len());
        }
        let start = points.partition_point(|&(p, _)| p < hash) % points.len();
        let Some(factor) = self.bound else {
            return points[start].1 as usize;
        };
        let total: usize = candidates.iter().map(|c| c.load.in_flight()).sum();
        // The call being placed counts too, so an idle ring admits it anywhere.
        let capacity = (factor * (total + 1) as f64 / candidates.len() as f64).ceil() as usize;
        let mut seen = 0;
        for &(_, i) in points[start..].iter().chain(&points[..start]) {
            let i = i as usize;
            if candidates[i].load.in_flight() < capacity {
                return i;
            }
            seen += 1;
            if seen >= points.len() {
                break;
            }
        }
        points[start].1 as usize
    }
}

impl Default for ConsistentHash {
    fn default() -> Self {
        ConsistentHash::new()
    }
}

impl Balancer for ConsistentHash {
    fn update(&self, candidates: &[Candidate]) {
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = Ring::build(candidates, self.vnodes);
    }

    fn pick(&self, candidates: &[Candidate], key: Option<&[u8]>, _: Instant) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let Some(key) = key else {
            return Some(self.rng.below(candidates.len()));
        };
        let hash = stable_hash(&[key]);
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        if ring.members == members(candidates) {
            return Some(self.walk(&ring, candidates, hash));
        }
        drop(ring);
        // Built for exactly these candidates: the shared ring may change again meanwhile.
        let fresh = Ring::build(candidates, self.vnodes);
        let picked = self.walk(&fresh, candidates, hash);
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Some(picked)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    fn owners(b: &ConsistentHash, c: &[Candidate], keys: u32) -> Vec<String> {
        b.update(c);
        let now = Instant::now();
        (0..keys)
            .map(|k| c[b.pick(c, Some(format!("user-{k}").as_bytes()), now).unwrap()].endpoint.addr.clone())
            .collect()
    }

    #[test]
    fn same_key_same_endpoint_and_keys_spread_evenly() {
        let c = candidates(8);
        let b = ConsistentHash::new();
        let first = owners(&b, &c, 40_000);
        assert_eq!(first, owners(&b, &c, 40_000), "deterministic");
        let mut counts = vec![0usize; 8];
        for owner in &first {
            counts[c.iter().position(|x| &x.endpoint.addr == owner).unwrap()] += 1;
        }
        let (max, min) = (*counts.iter().max().unwrap(), *counts.iter().min().unwrap());
        assert!((max as f64) / (min as f64) < 1.5, "160 vnodes keep shares within 1.5x: {counts:?}");
    }

    #[test]
    fn joining_or_leaving_moves_only_that_endpoints_keys() {
        let b = ConsistentHash::new();
        let ten = candidates(10);
        let eleven = candidates(11);
        let before = owners(&b, &ten, 20_000);
        let after = owners(&b, &eleven, 20_000);
        let moved: Vec<_> = before.iter().zip(&after).filter(|(a, b)| a != b).collect();
        let share = moved.len() as f64 / before.len() as f64;
        assert!((0.05..0.14).contains(&share), "about 1/11 of keys move on a join, got {share}");
        assert!(moved.iter().all(|(_, to)| *to == &eleven[10].endpoint.addr), "only to the newcomer");

        let back = owners(&b, &ten, 20_000);
        assert_eq!(back, before, "leaving again restores every key");
    }

    #[test]
    fn bounded_load_walks_past_a_busy_endpoint() {
        let c = candidates(4);
        let b = ConsistentHash::new().bounded(1.25);
        b.update(&c);
        let now = Instant::now();
        let home = b.pick(&c, Some(b"hot"), now).unwrap();
        for _ in 0..10 {
            c[home].load.start();
        }
        let moved = b.pick(&c, Some(b"hot"), now).unwrap();
        assert_ne!(moved, home, "the hot key's home is over its bound");
        assert_eq!(ConsistentHash::new().pick(&c, Some(b"hot"), now), Some(home), "unbounded stays home");
    }

    #[test]
    fn a_ring_for_other_candidates_or_only_zero_weights_still_picks_in_range() {
        let b = ConsistentHash::new().bounded(1.25);
        let now = Instant::now();
        b.update(&candidates(5));
        // Picks may meet a ring built for another set (a rebuild in between): never out of range.
        for n in [1, 3, 8] {
            let c = candidates(n);
            let i = b.pick(&c, Some(b"key"), now).unwrap();
            assert!(i < n, "{i} of {n}");
        }
        let zero = weighted(&[0, 0]);
        b.update(&zero);
        assert!(b.pick(&zero, Some(b"key"), now).unwrap() < 2);
    }
}
