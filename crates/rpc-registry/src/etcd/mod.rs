//! The etcd backend (Cargo feature `etcd`): [`RegistryClient::etcd`](crate::RegistryClient::etcd)
//! speaks etcd v3's gRPC API, so sessions, registration, discovery, config, locks and elections
//! work unchanged against an etcd cluster users already run.
//!
//! Our API is etcd's data model, so each call maps field for field; errors map by etcd's gRPC
//! status and message onto [`ErrorCode`]s, so the client retries and moves on from members
//! exactly as it does with our own registry.

pub mod proto;
mod wire;

pub use wire::{frame, Connection, GrpcStream, WireError};

use crate::{
    api::{
        CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event, EventKind, Header, KeyValue,
        LeaseGrantResponse, LeaseStatus, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp,
        StatusResponse, TxnRequest, TxnResponse, WatchCreate, WatchResponse,
    },
    client::Answer,
    service::{ErrorCode, RegistryError},
};
use futures_util::{stream::BoxStream, StreamExt};
use rpc_core::{Code, Status};
use std::{sync::Arc, time::Duration};
use tokio::sync::Mutex;

/// How long connecting to a member may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// One etcd member as a [`RegistryClient`](crate::RegistryClient) knows it: its address and a
/// connection made on first use and made again after it breaks.
#[derive(Clone, Debug)]
pub(crate) struct EtcdMember {
    addr: String,
    connection: Arc<Mutex<Option<Connection>>>,
}

impl EtcdMember {
    pub(crate) fn new(addr: String) -> EtcdMember {
        EtcdMember { addr, connection: Arc::new(Mutex::new(None)) }
    }

    async fn connection(&self) -> Result<Connection, WireError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = &*slot {
            return Ok(connection.clone());
        }
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&self.addr))
            .await
            .map_err(|_| WireError::NotSent(format!("{}: no connection in {CONNECT_TIMEOUT:?}", self.addr)))??;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets a connection that failed, so the next call makes a new one.
    async fn forget(&self, error: &WireError) {
        if !matches!(error, WireError::Status { .. }) {
            self.connection.lock().await.take();
        }
    }

    /// Runs `op` on the connection, forgetting the connection if it failed.
    async fn on_connection<T, F, Fut>(&self, op: F) -> Result<T, WireError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: std::future::Future<Output = Result<T, WireError>>,
    {
        let result = match self.connection().await {
            Ok(connection) => op(connection).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            self.forget(e).await;
        }
        result
    }

    async fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        path: &str,
        request: &Req,
    ) -> Result<Resp, WireError> {
        self.on_connection(|connection| async move { connection.call(path, request).await }).await
    }

    async fn stream<Req: prost::Message>(
        &self,
        path: &str,
        first: &Req,
    ) -> Result<(h2::SendStream<bytes::Bytes>, GrpcStream), WireError> {
        self.on_connection(|connection| async move { connection.stream(path, first).await }).await
    }

    pub(crate) async fn range(&self, request: RangeRequest) -> Answer<RangeResponse> {
        answer(self.call("/etcdserverpb.KV/Range", &range_request(request)).await.map(range_response))
    }

    pub(crate) async fn put(&self, request: PutRequest) -> Answer<PutResponse> {
        answer(self.call("/etcdserverpb.KV/Put", &put_request(request)).await.map(put_response))
    }

    pub(crate) async fn delete_range(&self, request: DeleteRangeRequest) -> Answer<DeleteRangeResponse> {
        answer(self.call("/etcdserverpb.KV/DeleteRange", &delete_request(request)).await.map(delete_response))
    }

    pub(crate) async fn txn(&self, request: TxnRequest) -> Answer<TxnResponse> {
        let request = proto::TxnRequest {
            compare: request.compare.into_iter().map(compare).collect(),
            success: request.success.into_iter().map(request_op).collect(),
            failure: request.failure.into_iter().map(request_op).collect(),
        };
        let response = self.call("/etcdserverpb.KV/Txn", &request).await;
        answer(response.map(|r: proto::TxnResponse| TxnResponse {
            header: header(r.header),
            succeeded: r.succeeded,
            responses: r.responses.into_iter().filter_map(|op| op.response.map(response_op)).collect(),
        }))
    }

    pub(crate) async fn lease_grant(&self, ttl: u64) -> Answer<LeaseGrantResponse> {
        let request = proto::LeaseGrantRequest { ttl: signed(ttl), id: 0 };
        match self.call::<_, proto::LeaseGrantResponse>("/etcdserverpb.Lease/LeaseGrant", &request).await {
            Ok(r) if !r.error.is_empty() => Ok(Err(RegistryError::new(ErrorCode::InvalidRequest, r.error))),
            other => answer(other.map(|r| LeaseGrantResponse {
                header: header(r.header),
                id: unsigned(r.id),
                ttl: unsigned(r.ttl),
            })),
        }
    }

    pub(crate) async fn lease_revoke(&self, id: u64) -> Answer<()> {
        let request = proto::LeaseId { id: signed(id) };
        answer(self.call::<_, proto::LeaseRevokeResponse>("/etcdserverpb.Lease/LeaseRevoke", &request).await.map(drop))
    }

    pub(crate) async fn status(&self) -> Answer<StatusResponse> {
        let response = self.call("/etcdserverpb.Maintenance/Status", &proto::Empty {}).await;
        answer(response.map(|r: proto::StatusResponse| StatusResponse {
            header: header(r.header),
            leader: r.leader,
            raft_index: r.raft_index,
            db_size: unsigned(r.db_size),
            ..StatusResponse::default()
        }))
    }

    /// Renews the lease each id from `ids` names, answering each with the lease's status.
    pub(crate) async fn lease_keep_alive(
        &self,
        mut ids: BoxStream<'static, u64>,
    ) -> Result<BoxStream<'static, Answer<LeaseStatus>>, Status> {
        let Some(first) = ids.next().await else { return Err(Status::cancelled("no lease to keep alive")) };
        let opened = self.stream("/etcdserverpb.Lease/LeaseKeepAlive", &proto::LeaseId { id: signed(first) }).await;
        let (requests, answers) = opened.map_err(transport)?;
        // One stream both sends the ids and reads the answers, so dropping it ends both.
        let state = (ids, Some(requests), answers);
        Ok(futures_util::stream::unfold(state, |(mut ids, mut requests, mut answers)| async move {
            loop {
                tokio::select! {
                    id = ids.next(), if requests.is_some() => match (id, requests.as_mut()) {
                        (Some(id), Some(sender)) => {
                            if sender.send_data(frame(&proto::LeaseId { id: signed(id) }), false).is_err() {
                                requests = None;
                            }
                        }
                        _ => requests = None,
                    },
                    next = answers.next::<proto::LeaseKeepAliveResponse>() => {
                        let answer = match next {
                            Ok(Some(a)) if a.ttl > 0 => Ok(Ok(LeaseStatus {
                                header: header(a.header),
                                id: unsigned(a.id),
                                remaining_ms: unsigned(a.ttl) * 1000,
                                ..LeaseStatus::default()
                            })),
                            Ok(Some(a)) => Ok(Err(RegistryError::new(
                                ErrorCode::LeaseNotFound,
                                format!("etcd has no lease {:x}", a.id),
                            ))),
                            Ok(None) => return None,
                            Err(e) => answer::<LeaseStatus>(Err(e)),
                        };
                        return Some((answer, (ids, requests, answers)));
                    }
                }
            }
        })
        .boxed())
    }

    /// Opens a watch as `spec` says; yields what etcd sends, `created` first.
    pub(crate) async fn watch(
        &self,
        spec: WatchCreate,
    ) -> Result<BoxStream<'static, Result<WatchResponse, Status>>, Status> {
        let mut filters = Vec::new();
        if spec.no_put {
            filters.push(0);
        }
        if spec.no_delete {
            filters.push(1);
        }
        let create = proto::WatchCreateRequest {
            key: spec.key,
            range_end: spec.range_end,
            start_revision: signed(spec.start_revision),
            progress_notify: spec.progress_notify,
            filters,
            prev_kv: spec.prev_kv,
        };
        let opened = self.stream("/etcdserverpb.Watch/Watch", &proto::WatchRequest { create: Some(create) }).await;
        // etcd ends a watch stream whose requests end: the sender lives as long as the stream.
        let (requests, responses) = opened.map_err(transport)?;
        Ok(futures_util::stream::unfold((requests, responses), |(requests, mut responses)| async move {
            let next = match responses.next::<proto::WatchResponse>().await {
                Ok(Some(r)) => Ok(watch_response(r)),
                Ok(None) => return None,
                Err(e) => Err(transport(e)),
            };
            Some((next, (requests, responses)))
        })
        .boxed())
    }
}

/// A failure as the client's retry rules understand it: a [`RegistryError`] when etcd refused
/// the call, a transport [`Status`] when it may not have reached etcd or its fate is unknown.
fn answer<T>(result: Result<T, WireError>) -> Answer<T> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(WireError::Status { code, message }) => {
            let kind = match code {
                _ if message.contains("no leader") => ErrorCode::NoLeader,
                _ if message.contains("not leader") => ErrorCode::NotLeader,
                5 if message.contains("lease not found") => ErrorCode::LeaseNotFound,
                11 if message.contains("compacted") => ErrorCode::Compacted,
                11 if message.contains("future revision") => ErrorCode::FutureRevision,
                8 if message.contains("space exceeded") => ErrorCode::QuotaExceeded,
                14 if message.contains("timed out") => ErrorCode::Timeout,
                // Cancelled, deadline exceeded, unavailable (e.g. "leader changed"): the call
                // may or may not have been applied, as for a broken connection.
                1 | 4 | 14 => return Err(Status::new(Code::from_u16(code), format!("etcd: {message}"))),
                3 | 9 | 11 => ErrorCode::InvalidRequest,
                _ => ErrorCode::Internal,
            };
            Ok(Err(RegistryError::new(kind, format!("etcd: {message}"))))
        }
        Err(e) => Err(transport(e)),
    }
}

fn transport(e: WireError) -> Status {
    match e {
        WireError::NotSent(why) => Status::unavailable(why).with_not_started(),
        WireError::Broken(why) => Status::unavailable(why),
        WireError::Status { code, message } => Status::new(Code::from_u16(code), format!("etcd: {message}")),
    }
}

/// etcd's revisions, versions, lease ids and TTLs are `int64`; ours are never negative.
fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn header(h: Option<proto::ResponseHeader>) -> Header {
    let h = h.unwrap_or_default();
    Header { cluster_id: h.cluster_id, member_id: h.member_id, revision: unsigned(h.revision), raft_term: h.raft_term }
}

fn key_value(kv: proto::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: unsigned(kv.create_revision),
        mod_revision: unsigned(kv.mod_revision),
        version: unsigned(kv.version),
        lease: unsigned(kv.lease),
    }
}

fn range_request(r: RangeRequest) -> proto::RangeRequest {
    proto::RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: signed(r.limit),
        revision: signed(r.revision),
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
    }
}

fn range_response(r: proto::RangeResponse) -> RangeResponse {
    RangeResponse {
        header: header(r.header),
        kvs: r.kvs.into_iter().map(key_value).collect(),
        more: r.more,
        count: unsigned(r.count),
    }
}

fn put_request(r: PutRequest) -> proto::PutRequest {
    proto::PutRequest { key: r.key, value: r.value, lease: signed(r.lease), prev_kv: r.prev_kv }
}

fn put_response(r: proto::PutResponse) -> PutResponse {
    PutResponse { header: header(r.header), prev_kv: r.prev_kv.map(key_value) }
}

fn delete_request(r: DeleteRangeRequest) -> proto::DeleteRangeRequest {
    proto::DeleteRangeRequest { key: r.key, range_end: r.range_end, prev_kv: r.prev_kv }
}

fn delete_response(r: proto::DeleteRangeResponse) -> DeleteRangeResponse {
    DeleteRangeResponse {
        header: header(r.header),
        deleted: unsigned(r.deleted),
        prev_kvs: r.prev_kvs.into_iter().map(key_value).collect(),
    }
}

fn compare(c: crate::api::Compare) -> proto::Compare {
    let result = match c.result {
        CompareResult::Equal => 0,
        CompareResult::Greater => 1,
        CompareResult::Less => 2,
        CompareResult::NotEqual => 3,
    };
    let (target, value) = match c.target {
        CompareTarget::Version(v) => (0, proto::TargetUnion::Version(signed(v))),
        CompareTarget::CreateRevision(v) => (1, proto::TargetUnion::CreateRevision(signed(v))),
        CompareTarget::ModRevision(v) => (2, proto::TargetUnion::ModRevision(signed(v))),
        CompareTarget::Value(v) => (3, proto::TargetUnion::Value(v)),
        CompareTarget::Lease(v) => (4, proto::TargetUnion::Lease(signed(v))),
    };
    proto::Compare { result, target, key: c.key, target_union: Some(value) }
}

fn request_op(op: RequestOp) -> proto::RequestOp {
    let request = match op {
        RequestOp::Range(r) => proto::Request::Range(range_request(r)),
        RequestOp::Put(r) => proto::Request::Put(put_request(r)),
        RequestOp::DeleteRange(r) => proto::Request::DeleteRange(delete_request(r)),
    };
    proto::RequestOp { request: Some(request) }
}

fn response_op(op: proto::Response) -> ResponseOp {
    match op {
        proto::Response::Range(r) => ResponseOp::Range(range_response(r)),
        proto::Response::Put(r) => ResponseOp::Put(put_response(r)),
        proto::Response::DeleteRange(r) => ResponseOp::DeleteRange(delete_response(r)),
    }
}

fn watch_response(r: proto::WatchResponse) -> WatchResponse {
    WatchResponse {
        header: header(r.header),
        watch_id: unsigned(r.watch_id),
        created: r.created,
        canceled: r.canceled,
        compact_revision: unsigned(r.compact_revision),
        cancel_reason: r.cancel_reason,
        events: r
            .events
            .into_iter()
            .map(|e| Event {
                kind: if e.kind == 1 { EventKind::Delete } else { EventKind::Put },
                kv: key_value(e.kv.unwrap_or_default()),
                prev_kv: e.prev_kv.map(key_value),
            })
            .collect(),
    }
}
