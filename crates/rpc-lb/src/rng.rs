//! A small lock-free random source for balancers: splitmix64 over an atomic counter.
//!
//! Seedable, so balancer tests are deterministic; not for anything that needs secrecy.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub(crate) struct Rng(AtomicU64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(AtomicU64::new(seed))
    }

    /// A generator seeded from the process's hash randomness.
    pub(crate) fn from_entropy() -> Rng {
        use std::hash::{BuildHasher, RandomState};
        Rng::new(RandomState::new().hash_one(0x5eed_u64))
    }

    pub(crate) fn next_u64(&self) -> u64 {
        mix(self.0.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed))
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift rather than modulo to avoid bias.
    pub(crate) fn below(&self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// The splitmix64 finalizer: spreads any 64-bit input over all bits.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a then [`mix`]: a stable hash (same value in every process and version), which
/// consistent hashing needs so that clients agree on where a key goes.
pub(crate) fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        // A separator keeps ("ab", "c") apart from ("a", "bc").
        h ^= 0xff;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    mix(h)
}
