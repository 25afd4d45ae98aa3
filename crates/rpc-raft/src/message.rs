//! Plain data types exchanged between Raft peers and handed to the application.
//!
//! This module owns the shapes of log entries, hard state, membership, snapshots and
//! messages. It does not own their wire encoding (see [`crate::codec`]) nor any
//! behaviour: the protocol lives in [`crate::raft`].

use bytes::Bytes;

/// Identifier of a Raft peer. `0` is never a valid id.
pub type NodeId = u64;

/// What an [`Entry`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Application data (or an empty no-op appended by a new leader).
    Normal,
    /// A membership change: `data` is the encoded [`ConfState`] that takes effect as
    /// soon as the entry is appended to a log.
    ConfChange,
}

/// One record of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// Term of the leader that created the entry.
    pub term: u64,
    /// Position in the log, starting at 1.
    pub index: u64,
    /// Kind of payload.
    pub kind: EntryKind,
    /// Payload bytes, opaque to Raft for [`EntryKind::Normal`]. Cloning an entry (into a
    /// follower's message, into storage) shares them.
    pub data: Bytes,
}

impl Entry {
    /// Approximate encoded size, used for batching limits.
    pub fn size(&self) -> u64 {
        self.data.len() as u64 + 24
    }
}

/// State that must be durable before any message of the same `Ready` is sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: u64,
    /// Candidate voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// Highest log index known to be committed (recoverable, so losing it is safe).
    pub commit: u64,
}

/// Cluster membership: voters decide elections and commits, learners only replicate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConfState {
    /// Voting members, sorted and unique.
    pub voters: Vec<NodeId>,
    /// Non-voting members, sorted, unique and disjoint from `voters`.
    pub learners: Vec<NodeId>,
}

impl ConfState {
    /// A configuration made of the given voters and no learners.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        let mut voters: Vec<NodeId> = voters.into_iter().collect();
        voters.sort_unstable();
        voters.dedup();
        ConfState { voters, learners: Vec::new() }
    }

    /// Whether `id` is a voter.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok()
    }

    /// Whether `id` is a learner.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.binary_search(&id).is_ok()
    }

    /// Voters followed by learners.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }
}

/// A single-server membership change requested through `propose_conf_change`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfChange {
    /// Add a voter, or promote an existing learner to voter.
    AddVoter(NodeId),
    /// Add a non-voting learner.
    AddLearner(NodeId),
    /// Remove a voter or a learner.
    RemoveNode(NodeId),
}

/// Where a snapshot sits in the log and the membership at that point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Index of the last entry covered by the snapshot.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Membership in effect at `index`.
    pub conf: ConfState,
}

/// A state-machine image that replaces a prefix of the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Position and membership.
    pub meta: SnapshotMeta,
    /// Opaque state-machine bytes.
    pub data: Vec<u8>,
}

/// A message between two peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Recipient.
    pub to: NodeId,
    /// Sender's term (for a granted pre-vote response: the term being pre-voted).
    pub term: u64,
    /// Type-specific content.
    pub body: MessageBody,
}

/// The content of a [`Message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// Asks whether the recipient would vote in `term` without changing anyone's term.
    PreVote {
        /// Index of the candidate's last entry.
        last_index: u64,
        /// Term of the candidate's last entry.
        last_term: u64,
    },
    /// Answer to [`MessageBody::PreVote`].
    PreVoteResponse {
        /// `true` when the vote is refused.
        reject: bool,
    },
    /// Requests a vote for `term`.
    Vote {
        /// Index of the candidate's last entry.
        last_index: u64,
        /// Term of the candidate's last entry.
        last_term: u64,
        /// Set by a leadership transfer: bypasses the leader lease of the voters.
        transfer: bool,
    },
    /// Answer to [`MessageBody::Vote`].
    VoteResponse {
        /// `true` when the vote is refused.
        reject: bool,
    },
    /// Replicates entries after `(prev_index, prev_term)` and carries the commit index.
    Append {
        /// Index of the entry preceding `entries`.
        prev_index: u64,
        /// Term of that entry, for the consistency check.
        prev_term: u64,
        /// Entries to append, possibly none.
        entries: Vec<Entry>,
        /// Leader's commit index.
        commit: u64,
    },
    /// Answer to [`MessageBody::Append`] (also sent after a snapshot is installed).
    AppendResponse {
        /// On success the highest index known to match; on reject the rejected `prev_index`.
        index: u64,
        /// Whether the consistency check failed.
        reject: bool,
        /// On reject: the largest index whose term is at most `hint_term`.
        reject_hint: u64,
        /// On reject: the follower's term at `reject_hint` (0 when unknown).
        hint_term: u64,
    },
    /// Leader liveness and commit propagation; `seq` identifies the heartbeat round.
    Heartbeat {
        /// `min(follower match, leader commit)`.
        commit: u64,
        /// Round number echoed back, used by ReadIndex and leases.
        seq: u64,
    },
    /// Answer to [`MessageBody::Heartbeat`].
    HeartbeatResponse {
        /// Echoed round number.
        seq: u64,
    },
    /// One chunk of a snapshot.
    InstallSnapshot {
        /// Snapshot position and membership.
        meta: SnapshotMeta,
        /// Byte offset of `data` in the snapshot.
        offset: u64,
        /// Chunk bytes.
        data: Vec<u8>,
        /// Whether this is the last chunk.
        done: bool,
    },
    /// Acknowledges a snapshot chunk and says where to continue.
    SnapshotResponse {
        /// Index of the snapshot being transferred.
        index: u64,
        /// Offset of the next chunk wanted (0 restarts the transfer).
        next_offset: u64,
    },
    /// Tells the recipient to campaign immediately (leadership transfer).
    TimeoutNow,
    /// A follower forwarding a linearizable read to the leader.
    ReadIndex {
        /// Caller-chosen request context.
        ctx: Vec<u8>,
        /// Whether a lease read is acceptable.
        lease: bool,
    },
    /// The leader's answer to a forwarded read: serve it once `applied >= index`.
    ReadIndexResponse {
        /// Echoed request context.
        ctx: Vec<u8>,
        /// Commit index confirmed by the leader.
        index: u64,
    },
}

impl MessageBody {
    /// Short name of the message type, for traces.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "PreVote",
            MessageBody::PreVoteResponse { .. } => "PreVoteResp",
            MessageBody::Vote { .. } => "Vote",
            MessageBody::VoteResponse { .. } => "VoteResp",
            MessageBody::Append { .. } => "Append",
            MessageBody::AppendResponse { .. } => "AppendResp",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResp",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::SnapshotResponse { .. } => "SnapshotResp",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::ReadIndex { .. } => "ReadIndex",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResp",
        }
    }
}

/// A read confirmed linearizable: serve it once the state machine has applied `index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// Commit index at the time the read was confirmed.
    pub index: u64,
    /// Context passed to `read_index`.
    pub ctx: Vec<u8>,
}
