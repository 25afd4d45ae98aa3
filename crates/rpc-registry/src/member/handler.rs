//! The RPC handlers: each checks its request, hands it to the Raft thread and waits for the
//! outcome.

use super::{
    raft::{Input, WriteReply},
    watch, Shared,
};
use crate::{
    api::{
        DeleteRangeRequest, DeleteRangeResponse, LeaseGrantResponse, LeaseStatus, Member, PutRequest, PutResponse,
        RangeRequest, RangeResponse, RequestOp, StatusResponse, TxnRequest, TxnResponse, WatchRequest, WatchResponse,
    },
    auth::Access,
    command::{Command, LeaseGrant},
    service::{ErrorCode, RaftPeer, RegistryApi, RegistryError},
    store::Output,
};
use futures_util::StreamExt;
use rpc_core::{RpcStream, Streaming};
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{SystemTime, UNIX_EPOCH},
};
use tokio::sync::oneshot;

/// The most keep-alives of one stream renewed in one trip to the Raft thread.
const KEEP_ALIVE_BATCH: usize = 256;

/// The client API of one member.
#[derive(Clone)]
pub(super) struct Api {
    shared: Arc<Shared>,
    lease_ids: Arc<AtomicU64>,
}

impl Api {
    pub(super) fn new(shared: Arc<Shared>) -> Api {
        // Lease ids: this member's id and the time it started mixed into a counter, so ids
        // chosen by different members, or by one member across restarts, do not collide.
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let seed = (shared.id.rotate_left(32) ^ nanos) & 0x7FFF_FFFF_FFFF_0000;
        Api { shared, lease_ids: Arc::new(AtomicU64::new(seed)) }
    }

    /// Replicates `command` and waits until it is applied here.
    async fn write(&self, command: Command) -> Result<Output, RegistryError> {
        let (tx, rx): (WriteReply, _) = oneshot::channel();
        self.shared.inputs.send(Input::Propose(command, tx))?;
        self.wait(rx).await?
    }

    /// Renews `ids` on the leader, answering each in order.
    async fn keep_alive(&self, ids: Vec<u64>) -> Vec<Result<LeaseStatus, RegistryError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.shared.inputs.send(Input::KeepAlive(ids.clone(), tx));
        let answers = match sent {
            Ok(()) => self.wait(rx).await,
            Err(e) => Err(e),
        };
        let answers = match answers {
            Ok(answers) => answers,
            Err(e) => return ids.iter().map(|_| Err(e.clone())).collect(),
        };
        let state = self.shared.lock();
        let header = self.shared.header(&state);
        ids.iter()
            .zip(answers)
            .map(|(&id, remaining_ms)| {
                Ok(LeaseStatus {
                    header: header.clone(),
                    id,
                    remaining_ms: remaining_ms?,
                    granted_ttl: state.store.lease(id).map_or(0, |l| l.ttl),
                    keys: Vec::new(),
                })
            })
            .collect()
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<T>) -> Result<T, RegistryError> {
        match tokio::time::timeout(self.shared.config.request_timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(RegistryError::new(ErrorCode::NoLeader, "the member stopped; ask another member")),
            Err(_) => Err(RegistryError::new(
                ErrorCode::Timeout,
                "no outcome in time (no quorum reachable?); a write may or may not have been applied",
            )),
        }
    }

    /// Waits until this member has applied everything committed before the call.
    async fn read_barrier(&self) -> Result<(), RegistryError> {
        let (tx, rx) = oneshot::channel();
        self.shared.inputs.send(Input::Read(tx))?;
        self.wait(rx).await?
    }

    fn check_size(&self, bytes: usize) -> Result<(), RegistryError> {
        let max = self.shared.config.max_request_bytes;
        match bytes > max {
            true => Err(RegistryError::new(
                ErrorCode::InvalidRequest,
                format!("the request holds {bytes} bytes, over the limit of {max}; store large values elsewhere"),
            )),
            false => Ok(()),
        }
    }
}

fn unexpected(output: Output) -> RegistryError {
    RegistryError::new(ErrorCode::Internal, format!("the store answered {output:?} to a different request"))
}

fn txn_bytes(request: &TxnRequest) -> usize {
    let op = |op: &RequestOp| match op {
        RequestOp::Range(r) => r.key.len() + r.range_end.len(),
        RequestOp::Put(p) => p.key.len() + p.value.len(),
        RequestOp::DeleteRange(d) => d.key.len() + d.range_end.len(),
    };
    let compares: usize = request.compare.iter().map(|c| c.key.len() + 16).sum();
    compares + request.success.iter().chain(&request.failure).map(op).sum::<usize>()
}

impl RegistryApi for Api {
    async fn range(&self, request: RangeRequest) -> Result<RangeResponse, RegistryError> {
        self.allow(Access::Read, &request.key, &request.range_end)?;
        if !request.serializable {
            self.read_barrier().await?;
        }
        let state = self.shared.lock();
        let mut response = state.store.range(&request)?;
        response.header = crate::api::Header { revision: response.header.revision, ..self.shared.header(&state) };
        Ok(response)
    }

    async fn put(&self, request: PutRequest) -> Result<PutResponse, RegistryError> {
        self.allow(Access::Write, &request.key, &[])?;
        self.check_size(request.key.len() + request.value.len())?;
        match self.write(Command::Put(request)).await? {
            Output::Put(mut response) => {
                response.header = crate::api::Header { revision: response.header.revision, ..self.header() };
                Ok(response)
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(&self, request: DeleteRangeRequest) -> Result<DeleteRangeResponse, RegistryError> {
        self.allow(Access::Write, &request.key, &request.range_end)?;
        self.check_size(request.key.len() + request.range_end.len())?;
        match self.write(Command::DeleteRange(request)).await? {
            Output::DeleteRange(mut response) => {
                response.header = crate::api::Header { revision: response.header.revision, ..self.header() };
                Ok(response)
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, RegistryError> {
        if let Some(guard) = &self.shared.guard {
            guard.check_txn(&request)?;
        }
        self.check_size(txn_bytes(&request))?;
        let ops = request.compare.len() + request.success.len() + request.failure.len();
        let max = self.shared.config.limits.max_txn_ops;
        if ops > max {
            // Refused here too, so an oversized transaction never takes a place in the log.
            return Err(RegistryError::new(
                ErrorCode::InvalidRequest,
                format!("the transaction has {ops} operations, over the limit of {max}; split it"),
            ));
        }
        match self.write(Command::Txn(request)).await? {
            Output::Txn(mut response) => {
                response.header = crate::api::Header { revision: response.header.revision, ..self.header() };
                Ok(response)
            }
            other => Err(unexpected(other)),
        }
    }

    async fn compact(&self, revision: u64) -> Result<u64, RegistryError> {
        self.allow_admin()?;
        match self.write(Command::Compact(revision)).await? {
            Output::Compacted => Ok(revision),
            other => Err(unexpected(other)),
        }
    }

    async fn watch(&self, requests: Streaming<WatchRequest>) -> RpcStream<WatchResponse> {
        RpcStream::from(watch::serve(self.shared.clone(), requests, crate::auth::principal()))
    }

    async fn lease_grant(&self, ttl: u64, id: u64) -> Result<LeaseGrantResponse, RegistryError> {
        let id = match id {
            0 => self.lease_ids.fetch_add(1, Ordering::Relaxed) + 1,
            id => id,
        };
        let ttl = ttl.max(min_ttl_secs());
        match self.write(Command::LeaseGrant(LeaseGrant { id, ttl })).await? {
            Output::LeaseGranted(mut response) => {
                response.header = crate::api::Header { revision: response.header.revision, ..self.header() };
                Ok(response)
            }
            other => Err(unexpected(other)),
        }
    }

    async fn lease_revoke(&self, id: u64) -> Result<u64, RegistryError> {
        // Revoking deletes the lease's keys: the caller must be allowed to delete each.
        let keys: Vec<Vec<u8>> =
            self.shared.lock().store.lease(id).map(|l| l.keys.iter().cloned().collect()).unwrap_or_default();
        for key in &keys {
            self.allow(Access::Write, key, &[])?;
        }
        match self.write(Command::LeaseRevoke(id)).await? {
            Output::LeaseRevoked => Ok(self.shared.lock().store.revision()),
            other => Err(unexpected(other)),
        }
    }

    async fn lease_keep_alive(&self, ids: Streaming<u64>) -> RpcStream<Result<LeaseStatus, RegistryError>> {
        let api = self.clone();
        // Renewals that arrive together cross to the Raft thread as one input and back as one
        // batch, so a busy stream costs one hop per batch rather than per renewal.
        let batches = ids
            .take_while(|id| std::future::ready(id.is_ok()))
            .filter_map(|id| std::future::ready(id.ok()))
            .ready_chunks(KEEP_ALIVE_BATCH);
        let answers = batches.then(move |ids| {
            let api = api.clone();
            async move { api.keep_alive(ids).await }
        });
        RpcStream::new(answers.flat_map(futures_util::stream::iter))
    }

    async fn lease_time_to_live(&self, id: u64, keys: bool) -> Result<LeaseStatus, RegistryError> {
        let (tx, rx) = oneshot::channel();
        self.shared.inputs.send(Input::TimeToLive(id, tx))?;
        let remaining_ms = self.wait(rx).await??;
        let state = self.shared.lock();
        let lease = state.store.lease(id);
        if keys {
            for key in lease.iter().flat_map(|l| l.keys.iter()) {
                self.allow(Access::Read, key, &[])?;
            }
        }
        Ok(LeaseStatus {
            header: self.shared.header(&state),
            id,
            remaining_ms,
            granted_ttl: lease.map_or(0, |l| l.ttl),
            keys: match keys {
                true => lease.map(|l| l.keys.iter().cloned().collect()).unwrap_or_default(),
                false => Vec::new(),
            },
        })
    }

    async fn lease_list(&self) -> Result<Vec<u64>, RegistryError> {
        self.allow_admin()?;
        self.read_barrier().await?;
        Ok(self.shared.lock().store.leases().map(|l| l.id).collect())
    }

    async fn move_leader(&self, to: u64) -> Result<(), RegistryError> {
        self.allow_admin()?;
        let (tx, rx) = oneshot::channel();
        self.shared.inputs.send(Input::MoveLeader(to, tx))?;
        self.wait(rx).await?
    }

    async fn member_add(&self, name: String, addr: String) -> Result<Vec<Member>, RegistryError> {
        self.allow_admin()?;
        if name.is_empty() || addr.is_empty() {
            return Err(RegistryError::new(ErrorCode::InvalidRequest, "a new member needs a name and an address"));
        }
        let id = super::member_id(&name);
        if let Some(known) = self.shared.lock().store.members().iter().find(|m| m.id == id || m.addr == addr) {
            return Err(RegistryError::new(
                ErrorCode::InvalidRequest,
                format!("{}={} is already a member; remove it first to replace it", known.name, known.addr),
            ));
        }
        let (tx, rx) = oneshot::channel();
        self.shared.inputs.send(Input::AddMember(Member { id, name, addr, learner: true }, tx))?;
        self.wait(rx).await?
    }

    async fn member_remove(&self, id: u64) -> Result<Vec<Member>, RegistryError> {
        self.allow_admin()?;
        let (tx, rx) = oneshot::channel();
        self.shared.inputs.send(Input::RemoveMember(id, tx))?;
        self.wait(rx).await?
    }

    async fn status(&self) -> StatusResponse {
        let state = self.shared.lock();
        StatusResponse {
            header: self.shared.header(&state),
            members: state.store.members().to_vec(),
            leader: state.raft.leader,
            raft_index: state.raft.last_index,
            commit_index: state.raft.commit,
            applied_index: state.raft.applied,
            compact_revision: state.store.compact_revision(),
            db_size: state.store.db_size(),
            leases: state.store.leases().count() as u64,
            watchers: state.watchers.len() as u64,
        }
    }
}

impl Api {
    /// Refuses unless the caller holds `access` on `[key, range_end)`, when the member checks.
    fn allow(&self, access: Access, key: &[u8], range_end: &[u8]) -> Result<(), RegistryError> {
        match &self.shared.guard {
            Some(guard) => guard.check(access, key, range_end),
            None => Ok(()),
        }
    }

    /// Refuses unless the caller may administer every key.
    fn allow_admin(&self) -> Result<(), RegistryError> {
        self.allow(Access::Admin, b"", &[0])
    }

    fn header(&self) -> crate::api::Header {
        let state = self.shared.lock();
        self.shared.header(&state)
    }
}

/// The shortest lease the registry grants, in seconds: one and a half maximum election
/// timeouts (rounded up), so a lease survives the election that follows its leader's death.
pub fn min_ttl_secs() -> u64 {
    let config = rpc_raft::Config::new(1);
    let ms = config.election_tick_max * config.tick_ms * 3 / 2;
    ms.div_ceil(1000)
}

/// The peer API of one member.
pub(super) struct Peer {
    shared: Arc<Shared>,
}

impl Peer {
    pub(super) fn new(shared: Arc<Shared>) -> Peer {
        Peer { shared }
    }
}

impl RaftPeer for Peer {
    async fn deliver(&self, messages: Vec<Vec<u8>>) {
        for bytes in messages {
            match rpc_raft::codec::decode_message(&bytes) {
                Ok(message) if message.to == self.shared.id => {
                    // A full queue drops the message; Raft resends what matters.
                    let _ = self.shared.inputs.send(Input::Peer(message));
                }
                Ok(message) => tracing::warn!(to = message.to, "a Raft message for another member; check --peers"),
                Err(e) => tracing::warn!(error = %e, "an unreadable Raft message from a peer"),
            }
        }
    }

    async fn removed(&self, cluster_id: u64, id: u64) {
        let ours = self.shared.lock().store.cluster_id();
        if id == self.shared.id && cluster_id == ours && ours != 0 {
            let _ = self.shared.inputs.send(Input::Removed);
        }
    }
}
