//! A registry member: the RPC server for clients and peers, the Raft node that orders writes,
//! and the store they are applied to.
//!
//! The Raft node runs on its own thread (`raft`), which owns it alone: it takes inputs from a
//! bounded queue (peer messages, proposals, reads, keep-alives), ticks every 10 ms, persists each
//! `Ready` (one fsync), then sends, applies and answers. RPC handlers never touch the node; they
//! queue an input and wait for its answer. The store, the watchers and what status reports live
//! behind one lock that the Raft thread takes to apply a batch and handlers take to read.

mod handler;
mod leases;
mod peers;
mod raft;
mod watch;

pub use handler::min_ttl_secs;

use crate::{
    api::Member,
    auth::{AuthConfig, Guard, MemberAuthenticator},
    service::{RaftPeerServer, RegistryApiServer},
    store::{Limits, Store},
};
use rpc_core::{
    layer::auth::AuthenticateLayer,
    metrics::{Exposition, Latencies},
    server::RunningServer,
    trace::TraceLayer,
    Server,
};
use std::{
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};
use watch::Watchers;

/// How to run a member. [`MemberConfig::new`] gives a one-member registry; add peers for a
/// cluster.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    /// This member's name, unique in the cluster (`--name`).
    pub name: String,
    /// Where its Raft log and snapshots live; reusing it on restart recovers the member.
    pub data_dir: PathBuf,
    /// The address it serves clients and peers on.
    pub listen: String,
    /// Every member of the cluster as `(name, address)`, this one included; empty for a
    /// one-member registry.
    pub peers: Vec<(String, String)>,
    /// Join a running cluster (whose members `peers` lists) instead of founding one: the
    /// member starts outside the configuration and waits for a `member_add` naming it.
    pub join: bool,
    /// Sync the log to disk before acknowledging (turn off only for throwaway data).
    pub fsync: bool,
    /// Limits of the store.
    pub limits: Limits,
    /// Largest request accepted, in bytes (etcd's 1.5 MiB).
    pub max_request_bytes: usize,
    /// Take a snapshot and compact the Raft log after this many applied entries.
    pub snapshot_entries: u64,
    /// Compact the store's history automatically, keeping this many revisions; 0 keeps all.
    pub retain_revisions: u64,
    /// Compact the store's history automatically, keeping the revisions of about this long
    /// (the leader compacts, every tenth of it, to the revision that was current this long ago);
    /// zero keeps all. Combines with `retain_revisions`: whichever compacts more wins.
    pub retain_for: Duration,
    /// How long a handler waits for its write to be applied before answering `Timeout`.
    pub request_timeout: Duration,
    /// Watchers with `progress_notify` get a progress notification this often when idle.
    pub progress_interval: Duration,
    /// Users and roles; without them every caller may do anything.
    pub auth: Option<AuthConfig>,
    /// Where to serve the admin port (`/metrics`, `/health`, `/ready`), if anywhere: call
    /// metrics of every registry method, and this member's Raft state.
    pub admin: Option<String>,
    /// TLS for clients and between members; see [`MemberTls`].
    #[cfg(feature = "tls")]
    pub tls: Option<MemberTls>,
}

/// A member's TLS: what it serves with, and how it dials its peers. Serve with a client CA
/// (mutual TLS, client certificates optional for clients that use tokens) and dial with a
/// certificate from that CA: member traffic is then accepted only from such certificates
/// (etcd's peer client-certificate auth).
#[cfg(feature = "tls")]
#[derive(Clone, Debug)]
pub struct MemberTls {
    /// The member's server settings.
    pub server: rpc_core::tls::ServerTls,
    /// How it dials other members.
    pub peer: rpc_core::tls::ClientTls,
}

impl MemberConfig {
    /// A one-member registry named `name`, keeping its data in `data_dir`, serving on `listen`.
    pub fn new(name: impl Into<String>, data_dir: impl Into<PathBuf>, listen: impl Into<String>) -> MemberConfig {
        MemberConfig {
            name: name.into(),
            data_dir: data_dir.into(),
            listen: listen.into(),
            peers: Vec::new(),
            join: false,
            fsync: true,
            limits: Limits::default(),
            max_request_bytes: 3 << 19,
            snapshot_entries: 10_000,
            retain_revisions: 0,
            retain_for: Duration::ZERO,
            request_timeout: Duration::from_secs(5),
            progress_interval: Duration::from_secs(10),
            auth: None,
            admin: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The cluster's members as `(name, address)`, this one included.
    pub fn peers(mut self, peers: Vec<(String, String)>) -> MemberConfig {
        self.peers = peers;
        self
    }

    /// The members, this one included, sorted by name.
    fn members(&self) -> Vec<Member> {
        let member = |name: &str, addr: &str| Member {
            id: member_id(name),
            name: name.into(),
            addr: addr.into(),
            learner: false,
        };
        let mut members: Vec<Member> = match self.peers.is_empty() {
            true => vec![member(&self.name, &self.listen)],
            false => self.peers.iter().map(|(name, addr)| member(name, addr)).collect(),
        };
        members.sort_by(|a, b| a.name.cmp(&b.name));
        members
    }
}

/// A member's Raft id: a hash of its name, so every member derives the same ids from `--peers`.
pub fn member_id(name: &str) -> u64 {
    // FNV-1a: stable across builds and platforms, unlike the standard library's hasher.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    hash.max(1)
}

/// What the Raft thread and the handlers share.
struct Shared {
    id: u64,
    config: MemberConfig,
    state: Mutex<State>,
    inputs: raft::Inputs,
    /// Set once this member has been removed from the cluster.
    removed: tokio::sync::watch::Sender<bool>,
    /// The permissions callers hold, if the member checks them.
    guard: Option<Guard>,
    /// How long the Raft thread's writes to its log took (an fsync each, unless disabled).
    persist: Latencies,
}

/// What the lock guards: the store and everything that must change with it atomically.
struct State {
    store: Store,
    watchers: Watchers,
    raft: RaftView,
}

/// The Raft node's state as of its last `Ready`, for headers and status.
#[derive(Clone, Copy, Debug, Default)]
struct RaftView {
    term: u64,
    leader: u64,
    last_index: u64,
    commit: u64,
    applied: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update under the lock completes or is a single assignment: a panic in a
        // handler cannot leave the store half-applied (apply itself never panics).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn header(&self, state: &State) -> crate::api::Header {
        crate::api::Header {
            cluster_id: state.store.cluster_id(),
            member_id: self.id,
            revision: state.store.revision(),
            raft_term: state.raft.term,
        }
    }

    /// This member's Raft and store state, as gauges.
    fn report(&self, out: &mut Exposition<'_>) {
        let state = self.lock();
        let id = format!("{:x}", self.id);
        let member = [("member", id.as_str()), ("name", self.config.name.as_str())];
        let gauges = [
            ("registry_raft_term", "The Raft term this member is in.", state.raft.term),
            ("registry_raft_leader", "The leader's id as this member knows it (0: none).", state.raft.leader),
            ("registry_raft_is_leader", "1 if this member leads.", u64::from(state.raft.leader == self.id)),
            ("registry_raft_last_index", "The last index in this member's Raft log.", state.raft.last_index),
            ("registry_raft_commit_index", "This member's commit index.", state.raft.commit),
            ("registry_raft_applied_index", "The last index this member applied.", state.raft.applied),
            ("registry_revision", "The store's revision.", state.store.revision()),
            ("registry_db_size_bytes", "Bytes of keys and values held, all revisions counted.", state.store.db_size()),
            ("registry_leases", "Leases alive.", state.store.leases().count() as u64),
            ("registry_watchers", "Watches open on this member.", state.watchers.len() as u64),
            ("registry_members", "Members in the cluster's configuration.", state.store.members().len() as u64),
        ];
        for (name, help, value) in gauges {
            out.family(name, "gauge", help);
            out.sample(name, &member, value as f64);
        }
        let name = "registry_raft_persist_duration_seconds";
        out.family(name, "histogram", "Writes of the Raft log and state to disk, each synced unless --no-fsync.");
        out.histogram(name, &member, &self.persist);
    }

    fn addr_of(&self, id: u64) -> String {
        self.lock().store.members().iter().find(|m| m.id == id).map(|m| m.addr.clone()).unwrap_or_default()
    }
}

/// A running member; dropping it stops the server, [`RunningMember::shutdown`] stops it cleanly.
#[must_use = "dropping a RunningMember stops it"]
pub struct RunningMember {
    server: RunningServer,
    shared: Arc<Shared>,
    raft: std::thread::JoinHandle<()>,
    _stop: StopOnDrop,
}

/// Stops the Raft thread when the member is dropped.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.inputs.stop();
    }
}

impl RunningMember {
    /// Opens the data directory (recovering what it holds), joins the cluster and serves.
    pub async fn start(config: MemberConfig) -> io::Result<RunningMember> {
        let members = config.members();
        let id = member_id(&config.name);
        if !members.iter().any(|m| m.id == id) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--peers must include this member ({}); it lists {:?}", config.name, peer_names(&members)),
            ));
        }
        let (node, store) = raft::open(&config, id, &members)?;
        let (inputs, queue) = raft::inputs();
        let outbox = peers::Outbox::start(id, store.members(), peers::PeerDial::new(&config));
        let shared = Arc::new(Shared {
            id,
            config: config.clone(),
            state: Mutex::new(State { store, watchers: Watchers::default(), raft: RaftView::default() }),
            inputs,
            removed: tokio::sync::watch::Sender::new(false),
            guard: config.auth.as_ref().map(AuthConfig::guard),
            persist: Latencies::default(),
        });
        let listener = tokio::net::TcpListener::bind(&config.listen).await?;
        let raft = raft::spawn(shared.clone(), node, queue, outbox)?;
        #[cfg(feature = "tls")]
        let tls = config.tls.as_ref().map(|tls| tls.server.clone());
        #[cfg(not(feature = "tls"))]
        let tls: Option<()> = None;
        let authenticator = MemberAuthenticator {
            users: config.auth.as_ref().map(AuthConfig::authenticator),
            peers_need_certificate: tls.is_some(),
        };
        let builder = match &config.admin {
            Some(addr) => Server::builder().admin(addr.clone()),
            None => Server::builder(),
        };
        #[cfg(feature = "tls")]
        let builder = match tls {
            Some(tls) => builder.tls(tls),
            None => builder,
        };
        let server = builder
            .layer(TraceLayer::new())
            .layer(AuthenticateLayer::new(authenticator))
            // Room above the request limit, so a request somewhat over it gets a typed refusal
            // rather than a closed connection.
            .max_frame_size(2 * config.max_request_bytes + (64 << 10))
            .add_service(RegistryApiServer::new(handler::Api::new(shared.clone())))
            .add_service(RaftPeerServer::new(handler::Peer::new(shared.clone())))
            .start_on(listener);
        if let Some(metrics) = server.metrics() {
            let shared = Arc::downgrade(&shared);
            metrics.collect(move |out| {
                if let Some(shared) = shared.upgrade() {
                    shared.report(out);
                }
            });
        }
        Ok(RunningMember { server, shared: shared.clone(), raft, _stop: StopOnDrop(shared) })
    }

    /// A one-member registry in this process, keeping its data in `data_dir` and serving on
    /// a free port of 127.0.0.1: the default for development and tests.
    pub async fn embedded(data_dir: impl Into<PathBuf>) -> io::Result<RunningMember> {
        RunningMember::start(MemberConfig::new("embedded", data_dir, "127.0.0.1:0")).await
    }

    /// A client of this member.
    pub fn client(&self) -> crate::RegistryClient {
        crate::RegistryClient::connect([self.local_addr().to_string()])
    }

    /// The address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The address of its admin port, if it serves one (see [`MemberConfig::admin`]).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.server.admin_addr()
    }

    /// This member's Raft id.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Resolves once this member has been removed from the cluster (its Raft node has stopped;
    /// the server answers that it is no longer a member). A process then shuts it down.
    pub async fn removed(&self) {
        let mut removed = self.shared.removed.subscribe();
        // The sender lives in `shared`, which `self` keeps alive.
        let _ = removed.wait_for(|removed| *removed).await;
    }

    /// Stops serving (running calls get `grace` to finish), then stops the Raft node.
    pub async fn shutdown(self, grace: Duration) -> io::Result<()> {
        let served = self.server.shutdown(grace).await;
        self.shared.inputs.stop();
        let raft = self.raft;
        // The Raft thread ends within one tick of being told to stop.
        let _ = tokio::task::spawn_blocking(move || raft.join()).await;
        served
    }
}

fn peer_names(members: &[Member]) -> Vec<&str> {
    members.iter().map(|m| m.name.as_str()).collect()
}
