//! Distributed locks and leader elections on the registry, as etcd's concurrency package does
//! them: each contender puts a key under a session's lease, and the contender whose key has the
//! lowest create revision holds the lock (or leads). Waiting means watching only the contender
//! just ahead for its deletion, so a release wakes one waiter, in FIFO order.

use crate::{
    api::{
        prefix_end, Compare, CompareResult, CompareTarget, DeleteRangeRequest, EventKind, KeyValue, PutRequest,
        RangeRequest, RequestOp, TxnRequest, WatchCreate,
    },
    session::{Session, DEFAULT_TTL},
    ClientError, ErrorCode, RegistryClient, RegistryError,
};
use futures_util::{Stream, StreamExt};

/// Where locks live in the key space.
pub const LOCKS_PREFIX: &str = "locks/";
/// Where elections live in the key space.
pub const ELECTIONS_PREFIX: &str = "elections/";

/// A contender's key in a queue: the prefix and its session's lease.
struct Contender {
    session: Session,
    key: Vec<u8>,
    revision: u64,
}

impl Contender {
    /// Joins the queue under `prefix` with `value`.
    async fn join(client: &RegistryClient, prefix: &str, value: Vec<u8>, ttl: u64) -> Result<Contender, ClientError> {
        let session = Session::new(client, ttl).await?;
        let key = format!("{prefix}{:016x}", session.lease()).into_bytes();
        let put = PutRequest { key: key.clone(), value, lease: session.lease(), ..PutRequest::default() };
        let revision = client.put_with(put).await?.header.revision;
        Ok(Contender { session, key, revision })
    }

    /// Waits until no contender joined before this one is left.
    async fn wait_turn(&self, client: &RegistryClient, prefix: &[u8]) -> Result<(), ClientError> {
        loop {
            let range = RangeRequest { key: prefix.to_vec(), range_end: prefix_end(prefix), ..RangeRequest::default() };
            let queue = client.range(range).await?;
            let ahead =
                queue.kvs.iter().filter(|kv| kv.create_revision < self.revision).max_by_key(|kv| kv.create_revision);
            let Some(ahead) = ahead else { return Ok(()) };
            let spec = WatchCreate {
                key: ahead.key.clone(),
                start_revision: queue.header.revision + 1,
                no_put: true,
                ..WatchCreate::default()
            };
            let mut watch = client.watch(spec);
            let deleted = async {
                while let Some(response) = watch.next().await {
                    if response?.events.iter().any(|e| e.kind == EventKind::Delete) {
                        return Ok(());
                    }
                }
                Err(lost("the watch on the contender ahead ended"))
            };
            tokio::select! {
                deleted = deleted => deleted?,
                () = self.session.lost() => return Err(lost("the session's lease expired while waiting")),
            }
        }
    }
}

fn lost(why: &str) -> ClientError {
    ClientError::Registry(RegistryError::new(ErrorCode::LeaseNotFound, why))
}

impl RegistryClient {
    /// Takes the lock `name`, waiting behind earlier takers (first come, first served). The
    /// guard holds it until dropped, [`LockGuard::unlock`] or the loss of its lease (a process
    /// that dies loses it within the lease's TTL). Cancel by dropping the future; put a
    /// deadline on it with `tokio::time::timeout`.
    pub async fn lock(&self, name: &str) -> Result<LockGuard, ClientError> {
        self.lock_with_ttl(name, DEFAULT_TTL).await
    }

    /// [`RegistryClient::lock`] under a lease of `ttl` seconds: how long the lock outlives a
    /// holder that dies.
    pub async fn lock_with_ttl(&self, name: &str, ttl: u64) -> Result<LockGuard, ClientError> {
        let prefix = format!("{LOCKS_PREFIX}{name}/");
        let contender = Contender::join(self, &prefix, Vec::new(), ttl).await?;
        contender.wait_turn(self, prefix.as_bytes()).await?;
        Ok(LockGuard { client: self.clone(), contender })
    }

    /// The election `name` (see [`Election`]).
    pub fn election(&self, name: &str) -> Election {
        Election { client: self.clone(), prefix: format!("{ELECTIONS_PREFIX}{name}/"), ttl: DEFAULT_TTL }
    }
}

/// A held lock; see [`RegistryClient::lock`].
#[must_use = "dropping a LockGuard releases the lock"]
pub struct LockGuard {
    client: RegistryClient,
    contender: Contender,
}

impl LockGuard {
    /// The fencing token: the lock key's create revision, larger for every later holder. A
    /// resource the lock protects should refuse writes carrying a token below the largest it
    /// has seen, so a holder that lost its lease without noticing cannot overwrite its
    /// successor.
    pub fn token(&self) -> u64 {
        self.contender.revision
    }

    /// Whether the lease under the lock is gone: the lock may be someone else's now.
    pub fn is_lost(&self) -> bool {
        self.contender.session.is_lost()
    }

    /// Resolves when the lease under the lock is gone.
    pub async fn lost(&self) {
        self.contender.session.lost().await
    }

    /// Releases the lock and waits until the registry has.
    pub async fn unlock(self) -> Result<(), ClientError> {
        let _ = self.client.delete(&self.contender.key).await;
        self.contender.session.close().await
    }
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard").field("key", &String::from_utf8_lossy(&self.contender.key)).finish()
    }
}

/// A leader election: candidates campaign with a value, the earliest live one leads, and anyone
/// can observe who leads.
#[derive(Clone, Debug)]
pub struct Election {
    client: RegistryClient,
    prefix: String,
    ttl: u64,
}

impl Election {
    /// Campaigns under leases of `ttl` seconds (raised to the registry's minimum): how long a
    /// leader that dies keeps leading. The default is [`DEFAULT_TTL`].
    pub fn ttl(mut self, ttl: u64) -> Election {
        self.ttl = ttl;
        self
    }

    /// Campaigns with `value`: waits until this candidate leads. Cancel by dropping the future.
    pub async fn campaign(&self, value: impl Into<Vec<u8>>) -> Result<Leadership, ClientError> {
        let contender = Contender::join(&self.client, &self.prefix, value.into(), self.ttl).await?;
        contender.wait_turn(&self.client, self.prefix.as_bytes()).await?;
        Ok(Leadership { client: self.client.clone(), contender })
    }

    /// The current leader's key and value, if any candidate leads.
    pub async fn leader(&self) -> Result<Option<KeyValue>, ClientError> {
        Ok(self.leader_at().await?.0)
    }

    /// The current leader and the revision the answer is current at.
    async fn leader_at(&self) -> Result<(Option<KeyValue>, u64), ClientError> {
        let prefix = self.prefix.as_bytes();
        let range = RangeRequest { key: prefix.to_vec(), range_end: prefix_end(prefix), ..RangeRequest::default() };
        let found = self.client.range(range).await?;
        Ok((found.kvs.into_iter().min_by_key(|kv| kv.create_revision), found.header.revision))
    }

    /// The leader's value each time the leader or its value changes (`None` while nobody
    /// leads), starting with the current one.
    pub fn observe(&self) -> impl Stream<Item = Result<Option<Vec<u8>>, ClientError>> + Send + 'static {
        // The state: the election, and the leader last reported as (create revision, value).
        type Seen = Option<Option<(u64, Vec<u8>)>>;
        futures_util::stream::unfold((self.clone(), None as Seen), |(election, seen)| async move {
            loop {
                let (current, revision) = match election.leader_at().await {
                    Ok(found) => found,
                    Err(e) => return Some((Err(e), (election, seen))),
                };
                let now = current.map(|kv| (kv.create_revision, kv.value));
                if seen.as_ref() != Some(&now) {
                    let value = now.as_ref().map(|(_, value)| value.clone());
                    return Some((Ok(value), (election, Some(now))));
                }
                // Wait for the next change under the prefix, then look again.
                let prefix = election.prefix.as_bytes();
                let spec = WatchCreate {
                    key: prefix.to_vec(),
                    range_end: prefix_end(prefix),
                    start_revision: revision + 1,
                    ..WatchCreate::default()
                };
                if let Some(Err(e)) = election.client.watch(spec).next().await {
                    return Some((Err(e), (election, seen)));
                }
            }
        })
    }
}

/// Leadership won by [`Election::campaign`]; dropping it resigns.
#[must_use = "dropping a Leadership resigns"]
pub struct Leadership {
    client: RegistryClient,
    contender: Contender,
}

impl Leadership {
    /// The leadership's revision: larger for every later leader, a fencing token.
    pub fn token(&self) -> u64 {
        self.contender.revision
    }

    /// Resolves when the lease under the leadership is gone: stop acting as leader.
    pub async fn lost(&self) {
        self.contender.session.lost().await
    }

    /// Whether the leadership is gone.
    pub fn is_lost(&self) -> bool {
        self.contender.session.is_lost()
    }

    /// Announces a new value while leading; fails if the leadership's key is gone (it would
    /// not be re-created, which would put this candidate at the back of the queue).
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<(), ClientError> {
        let key = self.contender.key.clone();
        let put = PutRequest {
            key: key.clone(),
            value: value.into(),
            lease: self.contender.session.lease(),
            ..PutRequest::default()
        };
        let still_ours =
            Compare { key, result: CompareResult::Equal, target: CompareTarget::CreateRevision(self.token()) };
        let request = TxnRequest { compare: vec![still_ours], success: vec![RequestOp::Put(put)], failure: Vec::new() };
        let done = self.client.txn(request).await?;
        match done.succeeded {
            true => Ok(()),
            false => Err(lost("the leadership is gone: its key was deleted")),
        }
    }

    /// Steps down, letting the next candidate lead.
    pub async fn resign(self) -> Result<(), ClientError> {
        let delete = DeleteRangeRequest { key: self.contender.key.clone(), ..DeleteRangeRequest::default() };
        let _ = self.client.delete_range(delete).await;
        self.contender.session.close().await
    }
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership").field("key", &String::from_utf8_lossy(&self.contender.key)).finish()
    }
}
