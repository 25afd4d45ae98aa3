//! [`RegistryClient`]: calls any member of a registry, follows its leader, and moves on from a
//! member that is down.

use crate::{
    api::{
        DeleteRangeRequest, DeleteRangeResponse, KeyValue, LeaseGrantResponse, LeaseStatus, Member, PutRequest,
        PutResponse, RangeRequest, RangeResponse, RequestOp, StatusResponse, TxnRequest, TxnResponse, WatchCreate,
        WatchRequest, WatchResponse,
    },
    service::{ErrorCode, RegistryApiClient, RegistryError},
};
use futures_util::{stream::BoxStream, Stream, StreamExt};
use rpc_core::{Channel, Code, Status};
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, RwLock,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::sync::mpsc;

/// Tries per call across members before giving up.
const ATTEMPTS: usize = 12;
/// Pause between rounds over all members, doubling up to 1 s.
const BACKOFF: Duration = Duration::from_millis(50);
/// How long one attempt of a unary call may take: a little over a member's own request timeout,
/// so the member's `Timeout` answer normally arrives first.
const CALL_TIMEOUT: Duration = Duration::from_secs(6);

/// Why a registry call failed: the registry refused it, or no member could be reached.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientError {
    /// The registry answered with an error.
    Registry(RegistryError),
    /// No member answered.
    Unreachable(Status),
    /// A member refused this client: its credentials (`UNAUTHENTICATED`, `PERMISSION_DENIED`)
    /// or how it connects (`FAILED_PRECONDITION`, e.g. plain TCP to a member that wants TLS).
    Refused(Status),
    /// The call is part of our registry's own API, which an etcd cluster does not serve.
    Unsupported(&'static str),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Registry(e) => e.fmt(f),
            ClientError::Unreachable(status) => write!(f, "no registry member answered: {status}"),
            ClientError::Refused(status) => write!(f, "the registry refused this client: {status}"),
            ClientError::Unsupported(call) => write!(f, "{call} is not served by etcd; it needs our registry"),
        }
    }
}

impl std::error::Error for ClientError {}

/// What one call to a member gives: the registry's answer, or a transport failure.
pub(crate) type Answer<T> = Result<Result<T, RegistryError>, Status>;

/// A member as the client speaks to it: our registry over our RPC, or an etcd member.
#[derive(Clone)]
pub(crate) enum Endpoint {
    Registry(RegistryApiClient<Channel>),
    #[cfg(feature = "etcd")]
    Etcd(crate::etcd::EtcdMember),
}

/// Every call the client's typed API makes, on either kind of member.
impl Endpoint {
    async fn range(&self, request: RangeRequest) -> Answer<RangeResponse> {
        match self {
            Endpoint::Registry(c) => c.range(request).await,
            #[cfg(feature = "etcd")]
            Endpoint::Etcd(e) => e.range(request).await,
        }
    }

    async fn put(&self, request: PutRequest) -> Answer<PutResponse> {
        match self {
            Endpoint::Registry(c) => c.put(request).await,
            #[cfg(feature = "etcd")]
            Endpoint::Etcd(e) => e.put(request).await,
        }
    }

    pub(crate) async fn delete_range(&self, request: DeleteRangeRequest) -> Answer<DeleteRangeResponse> {
        match self {
            Endpoint::Registry(c) => c.delete_range(request).await,
            #[cfg(feature = "etcd")]
            Endpoint::Etcd(e) => e.delete_range(request).await,
        }
    }

    async fn txn(&self, request: TxnRequest) -> Answer<TxnResponse> {
        match self {
            Endpoint::Registry(c) => c.txn(request).await,
            #[cfg(feature = "etcd")]
            Endpoint::Etcd(e) => e.txn(request).await,
        }
    }

    pub(crate) async fn lease_grant(&self, ttl: u64) -> Answer<LeaseGrantResponse> {
        match self {
            Endpoint::Registry(c) => c.lease_grant(ttl, 0).await,
            #[cfg(feature = "etcd")]
            Endpoint::Etcd(e) => e.lease_grant(ttl).await,
        }
    }

    async fn lease_revoke(&self, id: u64) -> Answer<()> {
        match self {
            Endpoint::Registry(c) => c.lease_revoke(id).await.map(|r| r.map(drop)),
            #[cfg(feature = "etcd")]
            Endpoint::Etcd(e) => e.lease_revoke(id).await,
        }
    }

    async fn status(&self) -> Answer<StatusResponse> {
        match self {
            Endpoint::Registry(c) => c.status().await.map(Ok),
            #[cfg(feature = "etcd")]
            Endpoint::Etcd(e) => e.status().await,
        }
    }

    /// Renews the lease each id names, answering each with the lease's status.
    pub(crate) async fn lease_keep_alive(
        &self,
        ids: BoxStream<'static, u64>,
    ) -> Result<BoxStream<'static, Answer<LeaseStatus>>, Status> {
        match self {
            Endpoint::Registry(c) => Ok(c.lease_keep_alive(ids).await?.boxed()),
            #[cfg(feature = "etcd")]
            Endpoint::Etcd(e) => e.lease_keep_alive(ids).await,
        }
    }

    /// Opens one watch on this member; yields its responses, `created` first.
    async fn watch(&self, spec: WatchCreate) -> Result<BoxStream<'static, Result<WatchResponse, Status>>, Status> {
        match self {
            Endpoint::Registry(c) => {
                let (requests, rx) = mpsc::channel(1);
                // Cannot fail: the receiver is right here.
                let _ = requests.send(WatchRequest::Create(spec)).await;
                let responses = c.watch(rpc_core::stream::from_receiver(rx)).await?;
                // The member ends a watch whose requests end: the sender lives as long as the stream.
                Ok(responses
                    .map(move |response| {
                        let _requests = &requests;
                        response
                    })
                    .boxed())
            }
            #[cfg(feature = "etcd")]
            Endpoint::Etcd(e) => e.watch(spec).await,
        }
    }
}

/// A member as the client knows it: its address and how to call it.
type Known = (String, Endpoint);

/// How the client reaches members of our registry: credentials and TLS.
#[derive(Clone, Default)]
struct Options {
    token: Option<String>,
    #[cfg(feature = "tls")]
    tls: Option<rpc_core::tls::ClientTls>,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a secret: say whether there is one, not what it is.
        let mut debug = f.debug_struct("Options");
        debug.field("token", &self.token.as_ref().map(|_| "<redacted>"));
        #[cfg(feature = "tls")]
        debug.field("tls", &self.tls);
        debug.finish()
    }
}

impl Options {
    fn known(&self, addr: String) -> Known {
        // No channel-wide deadline: it would also end watch and keep-alive streams. Unary calls
        // get theirs in `call`.
        let builder = Channel::builder(addr.clone()).connect_timeout(Duration::from_millis(500));
        let builder = match &self.token {
            Some(token) => builder.bearer_token(token),
            None => builder,
        };
        #[cfg(feature = "tls")]
        let builder = match &self.tls {
            Some(tls) => builder.tls(tls.clone()),
            None => builder,
        };
        (addr, Endpoint::Registry(RegistryApiClient::new(builder.connect_lazy())))
    }
}

/// Builds a [`RegistryClient`] with credentials or TLS: `RegistryClient::builder(addrs)`.
#[derive(Debug)]
pub struct RegistryClientBuilder {
    addrs: Vec<String>,
    options: Options,
}

impl RegistryClientBuilder {
    /// Authenticates as the user this bearer token names (see [`crate::auth`]).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.options.token = Some(token.into());
        self
    }

    /// Speaks TLS to the members (and presents the settings' certificate, if they have one).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: rpc_core::tls::ClientTls) -> Self {
        self.options.tls = Some(tls);
        self
    }

    /// The client; it connects on first use.
    pub fn build(self) -> RegistryClient {
        let members = self.addrs.iter().map(|addr| self.options.known(addr.clone())).collect();
        RegistryClient::with(members, self.options)
    }
}

/// A client of a registry cluster. Cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    /// The members known, by address: those given to `connect`, or the cluster's after
    /// [`RegistryClient::sync_members`].
    members: Arc<RwLock<Arc<Vec<Known>>>>,
    options: Arc<Options>,
    /// The member calls go to first: the leader, once known.
    current: Arc<AtomicUsize>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let members = self.members();
        let addrs: Vec<&str> = members.iter().map(|(addr, _)| addr.as_str()).collect();
        f.debug_struct("RegistryClient").field("members", &addrs).finish()
    }
}

impl RegistryClient {
    /// A client of the members at `addrs`; connects on first use, so members may still be
    /// starting.
    pub fn connect<I, A>(addrs: I) -> RegistryClient
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        RegistryClient::builder(addrs).build()
    }

    /// A client of the members at `addrs`, with the credentials and TLS the builder is given.
    pub fn builder<I, A>(addrs: I) -> RegistryClientBuilder
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        RegistryClientBuilder { addrs: addrs.into_iter().map(Into::into).collect(), options: Options::default() }
    }

    /// A client of the etcd v3 cluster serving clients at `addrs` (`host:port`, plain
    /// HTTP/2): sessions, registration, discovery, config, locks and elections work on it as
    /// on our registry. Membership, leader moves and the raw API of [`RegistryClient::call`]
    /// and [`RegistryClient::current`] are ours alone.
    #[cfg(feature = "etcd")]
    pub fn etcd<I, A>(addrs: I) -> RegistryClient
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        let members = addrs
            .into_iter()
            .map(|addr| {
                let addr = addr.into();
                (addr.clone(), Endpoint::Etcd(crate::etcd::EtcdMember::new(addr)))
            })
            .collect();
        RegistryClient::with(members, Options::default())
    }

    fn with(members: Vec<Known>, options: Options) -> RegistryClient {
        RegistryClient {
            members: Arc::new(RwLock::new(Arc::new(members))),
            options: Arc::new(options),
            current: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The addresses of the members this client knows.
    pub fn member_addrs(&self) -> Vec<String> {
        self.members().iter().map(|(addr, _)| addr.clone()).collect()
    }

    /// The members known now.
    fn members(&self) -> Arc<Vec<Known>> {
        self.members.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The index of the member at `addr`, if it is known.
    fn position(&self, addr: &str) -> Option<usize> {
        self.members().iter().position(|(known, _)| known == addr)
    }

    /// Replaces the members known with the cluster's, as the member calls go to reports them
    /// (etcd's endpoint sync): call it after members were added or removed.
    pub async fn sync_members(&self) -> Result<(), ClientError> {
        let status = self.status().await?;
        let addrs: Vec<String> = status.members.into_iter().map(|m| m.addr).filter(|a| !a.is_empty()).collect();
        if addrs.is_empty() {
            return Ok(());
        }
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        let synced: Vec<Known> = addrs
            .into_iter()
            .map(|addr| {
                members.iter().find(|(known, _)| *known == addr).cloned().unwrap_or_else(|| self.options.known(addr))
            })
            .collect();
        *members = Arc::new(synced);
        Ok(())
    }

    /// Calls `call` with the RPC client of the current member, moving to the leader it names,
    /// or to the next member when it is unreachable or has no leader, until one answers. A call
    /// that may have reached a member before failing is tried again only if `idempotent`. For
    /// calls this type does not wrap; fails with [`ClientError::Unsupported`] on etcd.
    pub async fn call<T, F, Fut>(&self, idempotent: bool, call: F) -> Result<T, ClientError>
    where
        F: Fn(RegistryApiClient<Channel>) -> Fut,
        Fut: Future<Output = Answer<T>>,
    {
        self.route(idempotent, |endpoint| {
            let call = match endpoint {
                Endpoint::Registry(c) => Ok(call(c)),
                #[cfg(feature = "etcd")]
                Endpoint::Etcd(_) => Err(ClientError::Unsupported("this call")),
            };
            async move { Ok(call?.await) }
        })
        .await
    }

    /// Calls `call` on the current member, as [`RegistryClient::call`] says; `call` may refuse
    /// a kind of member with an error that is returned as is.
    pub(crate) async fn route<T, F, Fut>(&self, idempotent: bool, call: F) -> Result<T, ClientError>
    where
        F: Fn(Endpoint) -> Fut,
        Fut: Future<Output = Result<Answer<T>, ClientError>>,
    {
        let mut backoff = BACKOFF;
        let mut last = ClientError::Unreachable(Status::unavailable("no member was tried"));
        let rounds = self.members().len().max(1);
        for attempt in 0..ATTEMPTS * rounds {
            let members = self.members();
            let index = self.current.load(Ordering::Relaxed) % members.len();
            let (addr, client) = members[index].clone();
            let answer = match tokio::time::timeout(CALL_TIMEOUT, call(client)).await {
                Ok(answer) => answer?,
                Err(_) => Err(Status::deadline_exceeded(format!("no answer from {addr} in {CALL_TIMEOUT:?}"))),
            };
            let next = match answer {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) if e.code == ErrorCode::NotLeader && !e.leader.is_empty() => {
                    // Only members the caller listed (or synced) are tried: an address a member
                    // names may not be reachable from here.
                    let leader = self.position(&e.leader);
                    last = ClientError::Registry(e);
                    leader.unwrap_or(index + 1)
                }
                Ok(Err(e)) if e.not_started() => {
                    last = ClientError::Registry(e);
                    index + 1
                }
                Ok(Err(e)) => return Err(ClientError::Registry(e)),
                // Every member would say the same about these credentials, or this transport.
                Err(status)
                    if matches!(
                        status.code(),
                        Code::Unauthenticated | Code::PermissionDenied | Code::FailedPrecondition
                    ) =>
                {
                    return Err(ClientError::Refused(status))
                }
                Err(status) if status.not_started() || (idempotent && retryable(&status)) => {
                    last = ClientError::Unreachable(status);
                    index + 1
                }
                Err(status) => return Err(ClientError::Unreachable(status)),
            };
            let len = self.members().len();
            self.current.store(next % len, Ordering::Relaxed);
            if (attempt + 1) % len == 0 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
        Err(last)
    }

    /// The value of `key`, read linearizably.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<KeyValue>, ClientError> {
        let request = RangeRequest { key: key.as_ref().to_vec(), ..RangeRequest::default() };
        Ok(self.range(request).await?.kvs.into_iter().next())
    }

    /// Reads keys.
    pub async fn range(&self, request: RangeRequest) -> Result<RangeResponse, ClientError> {
        self.route(true, |c| {
            let request = request.clone();
            async move { Ok(c.range(request).await) }
        })
        .await
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<PutResponse, ClientError> {
        let request =
            PutRequest { key: key.as_ref().to_vec(), value: value.as_ref().to_vec(), ..PutRequest::default() };
        self.put_with(request).await
    }

    /// Sets a key with every option of [`PutRequest`].
    pub async fn put_with(&self, request: PutRequest) -> Result<PutResponse, ClientError> {
        self.route(false, |c| {
            let request = request.clone();
            async move { Ok(c.put(request).await) }
        })
        .await
    }

    /// Runs a transaction. One that only reads is retried like a read; one that writes is not
    /// retried once it may have reached a member, like a put.
    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, ClientError> {
        let reads_only = request.success.iter().chain(&request.failure).all(|op| matches!(op, RequestOp::Range(_)));
        self.route(reads_only, |c| {
            let request = request.clone();
            async move { Ok(c.txn(request).await) }
        })
        .await
    }

    /// Deletes `key`; answers how many keys were deleted (0 or 1).
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<u64, ClientError> {
        let request = DeleteRangeRequest { key: key.as_ref().to_vec(), ..DeleteRangeRequest::default() };
        Ok(self.delete_range(request).await?.deleted)
    }

    /// Deletes a key or an interval of keys with every option of [`DeleteRangeRequest`].
    pub async fn delete_range(&self, request: DeleteRangeRequest) -> Result<DeleteRangeResponse, ClientError> {
        self.route(false, |c| {
            let request = request.clone();
            async move { Ok(c.delete_range(request).await) }
        })
        .await
    }

    /// Grants a lease of `ttl` seconds; answers its id.
    pub async fn lease_grant(&self, ttl: u64) -> Result<u64, ClientError> {
        Ok(self.grant(ttl).await?.id)
    }

    /// Grants a lease of `ttl` seconds; answers it with the TTL the registry gave it.
    pub(crate) async fn grant(&self, ttl: u64) -> Result<LeaseGrantResponse, ClientError> {
        self.route(false, |c| async move { Ok(c.lease_grant(ttl).await) }).await
    }

    /// Revokes lease `id`, deleting its keys.
    pub async fn lease_revoke(&self, id: u64) -> Result<(), ClientError> {
        self.route(true, |c| async move { Ok(c.lease_revoke(id).await) }).await
    }

    /// Hands leadership to member `to` (see [`crate::member_id`]); returns once the transfer
    /// has started.
    pub async fn move_leader(&self, to: u64) -> Result<(), ClientError> {
        self.call(true, |c| async move { c.move_leader(to).await }).await
    }

    /// Adds the member `name` serving on `addr` as a learner (promoted to voter once it has
    /// caught up) and returns the members. Start it with [`MemberConfig::join`](crate::MemberConfig::join).
    pub async fn member_add(&self, name: &str, addr: &str) -> Result<Vec<Member>, ClientError> {
        let (name, addr) = (name.to_owned(), addr.to_owned());
        self.call(false, |c| {
            let (name, addr) = (name.clone(), addr.clone());
            async move { c.member_add(name, addr).await }
        })
        .await
    }

    /// Removes member `id` (see [`crate::member_id`]) and returns the members left.
    pub async fn member_remove(&self, id: u64) -> Result<Vec<Member>, ClientError> {
        self.call(false, |c| async move { c.member_remove(id).await }).await
    }

    /// The status of the member calls go to first. From etcd, without the members.
    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        self.route(true, |c| async move { Ok(c.status().await) }).await
    }

    /// Watches the keys `spec` selects, from `spec.start_revision` (0: from now), across
    /// member failures: when its member dies the watch resumes on another from the revision
    /// after the last it delivered, so every event arrives once, in order. Yields responses
    /// with events, and progress notifications; ends with an error if the history it needs was
    /// compacted. Dropping the stream ends the watch.
    pub fn watch(&self, spec: WatchCreate) -> Watch {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(follow(self.clone(), spec, tx));
        Watch { rx }
    }

    /// Sends later calls to the member at `leader` if it is one of ours, else to the next
    /// member: what a stream does when its member refuses it or goes away.
    pub(crate) fn move_on(&self, leader: &str) {
        let next = self.position(leader).unwrap_or(self.current.load(Ordering::Relaxed) + 1);
        self.current.store(next % self.members().len(), Ordering::Relaxed);
    }

    /// The RPC client of the member calls go to first, for calls this type does not wrap
    /// (raw watch and keep-alive streams); `None` on etcd.
    pub fn current(&self) -> Option<RegistryApiClient<Channel>> {
        match self.endpoint() {
            Endpoint::Registry(c) => Some(c),
            #[cfg(feature = "etcd")]
            Endpoint::Etcd(_) => None,
        }
    }

    /// The member calls go to first.
    pub(crate) fn endpoint(&self) -> Endpoint {
        let members = self.members();
        members[self.current.load(Ordering::Relaxed) % members.len()].1.clone()
    }
}

/// A watch that survives member failures; see [`RegistryClient::watch`].
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::Receiver<Result<WatchResponse, ClientError>>,
}

impl Stream for Watch {
    type Item = Result<WatchResponse, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// Keeps one watch open on some member, resuming after the last revision delivered.
async fn follow(client: RegistryClient, mut spec: WatchCreate, out: mpsc::Sender<Result<WatchResponse, ClientError>>) {
    let mut backoff = BACKOFF;
    loop {
        let opened = client.endpoint().watch(spec.clone()).await;
        if let Ok(mut responses) = opened {
            loop {
                // Ends with the caller's interest, not only with the next event: a watch on a
                // key that never changes again must not outlive its `Watch`.
                let response = tokio::select! {
                    next = responses.next() => match next {
                        Some(Ok(response)) => response,
                        _ => break,
                    },
                    () = out.closed() => return,
                };
                backoff = BACKOFF;
                if response.canceled {
                    let code = match response.compact_revision {
                        _ if response.cancel_reason.starts_with(crate::auth::PERMISSION_DENIED) => {
                            ErrorCode::PermissionDenied
                        }
                        0 => ErrorCode::InvalidRequest,
                        _ => ErrorCode::Compacted,
                    };
                    let mut error = RegistryError::new(code, response.cancel_reason.clone());
                    error.compact_revision = response.compact_revision;
                    let _ = out.send(Err(ClientError::Registry(error))).await;
                    return;
                }
                // Where to resume: after the last event, or after what a progress
                // notification vouches for; a watch from now starts after its creation.
                let seen = match response.events.last() {
                    Some(event) => Some(event.kv.mod_revision),
                    None if response.created => (spec.start_revision == 0).then_some(response.header.revision),
                    None => Some(response.header.revision),
                };
                if let Some(seen) = seen {
                    spec.start_revision = spec.start_revision.max(seen + 1);
                }
                if response.created {
                    continue;
                }
                if out.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        }
        if out.is_closed() {
            return;
        }
        // The member failed or went away: try the next one.
        client.move_on("");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Whether a transport failure of a call that may have reached a member means another member
/// may do better.
fn retryable(status: &Status) -> bool {
    status.not_started() || matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled)
}
