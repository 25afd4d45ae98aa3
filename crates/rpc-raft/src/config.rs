//! Tunables of one Raft node.
//!
//! Time is measured in ticks: the core never reads a clock, the caller calls `tick()`
//! every [`Config::tick_ms`] milliseconds. With the defaults (10 ms per tick) elections
//! time out after a random 150–300 ms and heartbeats go out every 50 ms.

use std::fmt;

use crate::message::NodeId;

/// How `read_index` confirms that the leader is still the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOnlyOption {
    /// Confirm with a heartbeat round to a quorum (always safe).
    Safe,
    /// Trust the leader lease when it is valid. Safe only while clock drift between
    /// nodes stays below [`Config::lease_margin_ticks`] over an election timeout,
    /// and only with `check_quorum` enabled.
    LeaseBased,
}

/// Configuration of a node; build with [`Config::new`] and override fields.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id (non-zero).
    pub id: NodeId,
    /// Nominal duration of one tick, in milliseconds. Only used to document and
    /// convert timings; the core counts ticks.
    pub tick_ms: u64,
    /// Minimum election timeout in ticks (default 15 = 150 ms).
    pub election_tick_min: u64,
    /// Exclusive maximum election timeout in ticks (default 30 = 300 ms).
    pub election_tick_max: u64,
    /// Heartbeat interval in ticks (default 5 = 50 ms).
    pub heartbeat_tick: u64,
    /// Ask for pre-votes before bumping the term (default on).
    pub pre_vote: bool,
    /// Leader steps down without a quorum of recent contact; followers ignore
    /// vote requests while they hear from a leader (default on).
    pub check_quorum: bool,
    /// Maximum bytes of entries per append message.
    pub max_size_per_msg: u64,
    /// Maximum number of entries per append message.
    pub max_entries_per_msg: usize,
    /// Maximum appends in flight per follower in the replicate state.
    pub max_inflight_msgs: usize,
    /// Maximum bytes per snapshot chunk.
    pub max_snapshot_chunk: usize,
    /// Maximum bytes of committed entries handed out per `Ready`.
    pub max_committed_size_per_ready: u64,
    /// Default read mode of `read_index`.
    pub read_only_option: ReadOnlyOption,
    /// Ticks subtracted from the lease to absorb clock drift.
    pub lease_margin_ticks: u64,
    /// Seed of the election-timeout randomness.
    pub seed: u64,
}

impl Config {
    /// Defaults for node `id`: 10 ms ticks, 150–300 ms elections, 50 ms heartbeats,
    /// pre-vote and check-quorum on, safe reads.
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            tick_ms: 10,
            election_tick_min: 15,
            election_tick_max: 30,
            heartbeat_tick: 5,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1 << 20,
            max_entries_per_msg: 4096,
            max_inflight_msgs: 64,
            max_snapshot_chunk: 64 << 10,
            max_committed_size_per_ready: 16 << 20,
            read_only_option: ReadOnlyOption::Safe,
            lease_margin_ticks: 2,
            seed: id,
        }
    }

    /// Checks the invariants between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        if self.heartbeat_tick == 0 {
            return Err(ConfigError::ZeroHeartbeat);
        }
        if self.election_tick_min <= self.heartbeat_tick {
            return Err(ConfigError::ElectionNotAboveHeartbeat);
        }
        if self.election_tick_max <= self.election_tick_min {
            return Err(ConfigError::EmptyElectionRange);
        }
        if self.max_inflight_msgs == 0 || self.max_entries_per_msg == 0 {
            return Err(ConfigError::ZeroFlowControl);
        }
        if self.max_snapshot_chunk == 0 {
            return Err(ConfigError::ZeroSnapshotChunk);
        }
        if self.read_only_option == ReadOnlyOption::LeaseBased && !self.check_quorum {
            return Err(ConfigError::LeaseWithoutCheckQuorum);
        }
        if self.lease_margin_ticks >= self.election_tick_min {
            return Err(ConfigError::LeaseMarginTooLarge);
        }
        Ok(())
    }
}

/// An invalid [`Config`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// `id` is 0.
    ZeroId,
    /// `heartbeat_tick` is 0.
    ZeroHeartbeat,
    /// `election_tick_min` must exceed `heartbeat_tick`.
    ElectionNotAboveHeartbeat,
    /// `election_tick_max` must exceed `election_tick_min`.
    EmptyElectionRange,
    /// `max_inflight_msgs` and `max_entries_per_msg` must be positive.
    ZeroFlowControl,
    /// `max_snapshot_chunk` must be positive.
    ZeroSnapshotChunk,
    /// Lease reads rely on check-quorum.
    LeaseWithoutCheckQuorum,
    /// The drift margin must be smaller than the election timeout.
    LeaseMarginTooLarge,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigError::ZeroId => "node id must not be 0",
            ConfigError::ZeroHeartbeat => "heartbeat_tick must be positive",
            ConfigError::ElectionNotAboveHeartbeat => "election_tick_min must be greater than heartbeat_tick",
            ConfigError::EmptyElectionRange => "election_tick_max must be greater than election_tick_min",
            ConfigError::ZeroFlowControl => "max_inflight_msgs and max_entries_per_msg must be positive",
            ConfigError::ZeroSnapshotChunk => "max_snapshot_chunk must be positive",
            ConfigError::LeaseWithoutCheckQuorum => "lease-based reads require check_quorum",
            ConfigError::LeaseMarginTooLarge => "lease_margin_ticks must be smaller than election_tick_min",
        })
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_table() {
        let ok = Config::new(1);
        assert_eq!(ok.validate(), Ok(()));
        type Case = (fn(&mut Config), ConfigError);
        let cases: Vec<Case> = vec![
            (|c| c.id = 0, ConfigError::ZeroId),
            (|c| c.heartbeat_tick = 0, ConfigError::ZeroHeartbeat),
            (|c| c.election_tick_min = 5, ConfigError::ElectionNotAboveHeartbeat),
            (|c| c.election_tick_max = 15, ConfigError::EmptyElectionRange),
            (|c| c.max_inflight_msgs = 0, ConfigError::ZeroFlowControl),
            (|c| c.max_snapshot_chunk = 0, ConfigError::ZeroSnapshotChunk),
            (
                |c| {
                    c.read_only_option = ReadOnlyOption::LeaseBased;
                    c.check_quorum = false
                },
                ConfigError::LeaseWithoutCheckQuorum,
            ),
            (|c| c.lease_margin_ticks = 15, ConfigError::LeaseMarginTooLarge),
        ];
        for (mutate, want) in cases {
            let mut c = Config::new(1);
            mutate(&mut c);
            assert_eq!(c.validate(), Err(want.clone()));
            assert!(!want.to_string().is_empty());
        }
    }
}
