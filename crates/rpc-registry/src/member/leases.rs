//! When leases expire: the leader's clock, and the checkpoints that let the next leader keep it.
//!
//! Only the leader expires leases, by proposing their revocation. Keep-alives renew a lease in
//! the leader's memory only (a write per keep-alive would cost a disk sync each); every
//! `checkpoint` interval the leader replicates the remaining time of the leases renewed since the
//! last checkpoint. Every member notes when it applied a lease's grant or last checkpoint, so a
//! new leader computes each deadline as that moment plus the recorded remaining time, plus one
//! checkpoint interval for a renewal it may not have heard of. A lease's expiry therefore moves
//! by at most one checkpoint interval (one minimum election timeout) per change of leader, where
//! etcd restarts every lease's full TTL.

use crate::{
    command::{Checkpoints, Command, LeaseCheckpoint},
    service::{ErrorCode, RegistryError},
    store::Store,
};
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

/// Ask again for a revocation that has not been applied after this long.
const REVOKE_RETRY: Duration = Duration::from_secs(1);

pub(super) struct LeaseClock {
    checkpoint: Duration,
    /// When this member applied each lease's grant or last checkpoint.
    recorded: HashMap<u64, Instant>,
    /// The leader's deadlines; empty on other members.
    deadlines: HashMap<u64, Instant>,
    /// Leases renewed since the last checkpoint.
    renewed: HashSet<u64>,
    last_checkpoint: Option<Instant>,
    /// Revocations proposed and not yet applied, with when they were proposed.
    revoking: HashMap<u64, Instant>,
}

impl LeaseClock {
    pub(super) fn new(checkpoint: Duration) -> LeaseClock {
        LeaseClock {
            checkpoint,
            recorded: HashMap::new(),
            deadlines: HashMap::new(),
            renewed: HashSet::new(),
            last_checkpoint: None,
            revoking: HashMap::new(),
        }
    }

    /// Notes what an applied command did to leases.
    pub(super) fn applied(&mut self, command: &Command, store: &Store, now: Instant) {
        match command {
            Command::LeaseGrant(grant) if store.lease(grant.id).is_some() => {
                self.recorded.insert(grant.id, now);
                if self.is_leading() {
                    self.deadlines.insert(grant.id, now + Duration::from_secs(grant.ttl));
                }
            }
            Command::LeaseCheckpoint(checkpoints) => {
                for c in &checkpoints.leases {
                    self.recorded.insert(c.id, now);
                }
            }
            Command::LeaseRevoke(id) => {
                self.recorded.remove(id);
                self.deadlines.remove(id);
                self.renewed.remove(id);
                self.revoking.remove(id);
            }
            _ => {}
        }
    }

    /// The store was replaced by a snapshot: every lease's time counts from now.
    pub(super) fn restored(&mut self, store: &Store, now: Instant) {
        self.recorded = store.leases().map(|lease| (lease.id, now)).collect();
    }

    fn is_leading(&self) -> bool {
        self.last_checkpoint.is_some()
    }

    /// This member became the leader: it takes over every lease's deadline.
    pub(super) fn elected(&mut self, store: &Store, now: Instant) {
        self.deadlines = store
            .leases()
            .map(|lease| {
                let since = self.recorded.get(&lease.id).copied().unwrap_or(now);
                (lease.id, since + Duration::from_millis(lease.remaining_ms) + self.checkpoint)
            })
            .collect();
        self.last_checkpoint = Some(now);
    }

    /// This member is no longer the leader.
    pub(super) fn deposed(&mut self) {
        self.deadlines.clear();
        self.renewed.clear();
        self.revoking.clear();
        self.last_checkpoint = None;
    }

    /// Renews lease `id` for its full TTL; answers the milliseconds it now has.
    pub(super) fn renew(&mut self, id: u64, store: &Store, now: Instant) -> Result<u64, RegistryError> {
        let lease = store.lease(id).ok_or_else(|| not_found(id))?;
        if self.revoking.contains_key(&id) {
            return Err(not_found(id));
        }
        let ttl = Duration::from_secs(lease.ttl);
        self.deadlines.insert(id, now + ttl);
        self.renewed.insert(id);
        Ok(ttl.as_millis() as u64)
    }

    /// The milliseconds lease `id` has left, as the leader counts.
    pub(super) fn remaining(&self, id: u64, now: Instant) -> Result<u64, RegistryError> {
        let deadline = self.deadlines.get(&id).ok_or_else(|| not_found(id))?;
        Ok(deadline.saturating_duration_since(now).as_millis() as u64)
    }

    /// What the leader must propose now: revocations of expired leases, and a checkpoint of
    /// the leases renewed since the last one when it is time.
    pub(super) fn due(&mut self, store: &Store, now: Instant) -> Vec<Command> {
        let mut commands = Vec::new();
        for (&id, &deadline) in &self.deadlines {
            let retry = self.revoking.get(&id).is_none_or(|&at| now >= at + REVOKE_RETRY);
            if deadline <= now && retry && store.lease(id).is_some() {
                self.revoking.insert(id, now);
                commands.push(Command::LeaseRevoke(id));
            }
        }
        let checkpoint_due = self.last_checkpoint.is_some_and(|at| now >= at + self.checkpoint);
        if checkpoint_due && !self.renewed.is_empty() {
            let mut checkpoints: Vec<LeaseCheckpoint> = self
                .renewed
                .drain()
                .filter_map(|id| {
                    let deadline = self.deadlines.get(&id)?;
                    Some(LeaseCheckpoint {
                        id,
                        remaining_ms: deadline.saturating_duration_since(now).as_millis() as u64,
                    })
                })
                .collect();
            checkpoints.sort_by_key(|c| c.id);
            commands.push(Command::LeaseCheckpoint(Checkpoints { leases: checkpoints }));
        }
        if checkpoint_due {
            self.last_checkpoint = Some(now);
        }
        commands
    }
}

fn not_found(id: u64) -> RegistryError {
    RegistryError::new(
        ErrorCode::LeaseNotFound,
        format!("lease {id:x} does not exist (it expired or was revoked); grant a new one"),
    )
}
