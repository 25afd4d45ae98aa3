//! [`RoundRobin`]: each candidate in turn.

use super::{Balancer, Candidate};
use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

/// Picks candidates in turn; ignores weights, load and keys.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A balancer starting at the first candidate.
    pub fn new() -> RoundRobin {
        RoundRobin::default()
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, candidates: &[Candidate], _: Option<&[u8]>, _: Instant) -> Option<usize> {
        (!candidates.is_empty()).then(|| self.next.fetch_add(1, Ordering::Relaxed) % candidates.len())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn visits_each_candidate_in_turn() {
        let c = candidates(3);
        let rr = RoundRobin::new();
        let now = Instant::now();
        let picks: Vec<_> = (0..6).map(|_| rr.pick(&c, None, now).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(histogram(&rr, &c, 3000), [1000; 3]);
    }
}
