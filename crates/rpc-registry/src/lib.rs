//! The service registry: an etcd-like MVCC store replicated by `rpc-raft`, served over our own
//! RPC.
//!
//! - [`api`]: the data model and the request and reply types (etcd v3's).
//! - [`auth`]: users, roles and permissions on key prefixes.
//! - [`store`]: the MVCC store and leases, a deterministic state machine.
//! - [`command`]: what is replicated through Raft.
//! - [`service`]: the RPC services, for clients and between members.
//! - [`member`]: a running member: server, Raft thread, watches, lease clock.
//! - [`client`]: a client that follows the leader across members.
//! - [`session`]: a lease kept alive in the background.
//! - [`discovery`]: registering instances and discovering them for rpc-lb.
//! - [`config`]: typed configuration that follows changes.
//! - [`lock`]: locks with fencing tokens, and leader elections.
//! - `etcd` (Cargo feature `etcd`): the same client API on an etcd v3 cluster.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod client;
pub mod command;
pub mod config;
pub mod discovery;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod lock;
pub mod member;
pub mod service;
pub mod session;
pub mod store;

pub use auth::AuthConfig;
pub use client::{ClientError, RegistryClient, RegistryClientBuilder, Watch};
pub use config::Config;
pub use discovery::{Announcer, Instance, Registration, RegistryDiscover, ADMIN_METADATA};
pub use lock::{Election, Leadership, LockGuard};
#[cfg(feature = "tls")]
pub use member::MemberTls;
pub use member::{member_id, min_ttl_secs, MemberConfig, RunningMember};
pub use service::{ErrorCode, RegistryApiClient, RegistryError};
pub use session::Session;
