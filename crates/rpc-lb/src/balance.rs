//! Balancers: which endpoint serves the next call.
//!
//! A [`Balancer`] is sans-IO: it sees only the candidates (endpoints that are healthy, not
//! ejected and whose circuit is not open) with their [`Load`], an optional per-call key, and the
//! time. The default is [`P2c`], power of two choices over real load.

mod consistent_hash;
mod p2c;
mod random;
mod round_robin;
mod weighted;

pub use consistent_hash::ConsistentHash;
pub use p2c::P2c;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted::{SmoothWeightedRoundRobin, WeightedRandom};

use crate::{Endpoint, Load};
use std::{fmt, sync::Arc, time::Instant};

/// The metadata key whose value is a call's key for [`ConsistentHash`]: calls with the same key
/// go to the same endpoint while membership does not change. Set it per call with
/// `client.method(..).metadata(HASH_KEY, "user-42")`.
pub const HASH_KEY: &str = "rpc-hash-key";

/// An endpoint a balancer may pick, with its load. Cheap to clone.
#[derive(Clone)]
pub struct Candidate {
    /// The endpoint.
    pub endpoint: Arc<Endpoint>,
    /// Its current load.
    pub load: Arc<Load>,
}

impl Candidate {
    /// A candidate for `endpoint` with `load`.
    pub fn new(endpoint: Endpoint, load: Load) -> Candidate {
        Candidate { endpoint: Arc::new(endpoint), load: Arc::new(load) }
    }
}

impl fmt::Debug for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidate")
            .field("addr", &self.endpoint.addr)
            .field("in_flight", &self.load.in_flight())
            .finish()
    }
}

/// Picks an endpoint for each call.
pub trait Balancer: Send + Sync + 'static {
    /// Called whenever the set of candidates changes, before the next `pick` with that set;
    /// balancers with precomputed state (a hash ring, prefix sums) rebuild it here.
    fn update(&self, candidates: &[Candidate]) {
        let _ = candidates;
    }

    /// The index in `candidates` of the endpoint for a call with `key`; `None` only when there
    /// is no candidate.
    fn pick(&self, candidates: &[Candidate], key: Option<&[u8]>, now: Instant) -> Option<usize>;
}

impl<B: Balancer + ?Sized> Balancer for Arc<B> {
    fn update(&self, candidates: &[Candidate]) {
        (**self).update(candidates)
    }

    fn pick(&self, candidates: &[Candidate], key: Option<&[u8]>, now: Instant) -> Option<usize> {
        (**self).pick(candidates, key, now)
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;
    use std::time::Duration;

    pub(crate) fn candidates(n: usize) -> Vec<Candidate> {
        weighted(&vec![1; n])
    }

    pub(crate) fn weighted(weights: &[u32]) -> Vec<Candidate> {
        let now = Instant::now();
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                Candidate::new(
                    Endpoint::new(format!("10.0.0.{i}:80")).weight(w),
                    Load::new(Duration::from_secs(10), now),
                )
            })
            .collect()
    }

    /// Counts picks per candidate over `n` calls without keys.
    pub(crate) fn histogram(b: &dyn Balancer, c: &[Candidate], n: usize) -> Vec<usize> {
        b.update(c);
        let now = Instant::now();
        let mut counts = vec![0; c.len()];
        for _ in 0..n {
            counts[b.pick(c, None, now).unwrap()] += 1;
        }
        counts
    }

    /// Pearson's chi-square statistic of `counts` against `expected` shares.
    pub(crate) fn chi_square(counts: &[usize], expected: &[f64]) -> f64 {
        let total: usize = counts.iter().sum();
        let sum: f64 = expected.iter().sum();
        counts
            .iter()
            .zip(expected)
            .map(|(&c, &e)| {
                let e = e / sum * total as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }
}
