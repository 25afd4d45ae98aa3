//! Errors returned by the Raft core API.
//!
//! Storage, configuration and decoding errors are defined next to what produces them
//! and wrapped here.

use std::fmt;

use crate::config::ConfigError;
use crate::message::NodeId;
use crate::storage::StorageError;

/// Why a proposal, conf change, read or transfer was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// This node is not the leader; `leader` is the last known leader.
    NotLeader {
        /// Known leader, if any.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is in progress; proposals are paused.
    TransferInProgress,
    /// A previous membership change is not committed yet.
    ConfChangePending,
    /// The leader has not committed an entry of its own term yet (required before a
    /// membership change, the fix for the single-server-change bug).
    LeaderNotReady,
    /// The membership change makes no sense for the current configuration.
    InvalidConfChange(&'static str),
    /// The target of a leadership transfer is not a voter.
    UnknownTransferTarget(NodeId),
}

impl fmt::Display for ProposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposeError::NotLeader { leader: Some(l) } => {
                write!(f, "not the leader (leader is {l})")
            }
            ProposeError::NotLeader { leader: None } => {
                write!(f, "not the leader (no leader known)")
            }
            ProposeError::TransferInProgress => write!(f, "leadership transfer in progress"),
            ProposeError::ConfChangePending => {
                write!(f, "a membership change is already pending")
            }
            ProposeError::LeaderNotReady => {
                write!(f, "leader has not committed an entry of its term yet")
            }
            ProposeError::InvalidConfChange(why) => write!(f, "invalid membership change: {why}"),
            ProposeError::UnknownTransferTarget(id) => {
                write!(f, "transfer target {id} is not a voter")
            }
        }
    }
}

impl std::error::Error for ProposeError {}

/// Any error of the Raft core.
#[derive(Debug)]
pub enum Error {
    /// Invalid configuration.
    Config(ConfigError),
    /// Storage failed or returned inconsistent data.
    Storage(StorageError),
    /// A request was refused.
    Propose(ProposeError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "invalid config: {e}"),
            Error::Storage(e) => write!(f, "storage: {e}"),
            Error::Propose(e) => write!(f, "request refused: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Storage(e) => Some(e),
            Error::Propose(e) => Some(e),
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Error::Storage(e)
    }
}

impl From<ProposeError> for Error {
    fn from(e: ProposeError) -> Self {
        Error::Propose(e)
    }
}
