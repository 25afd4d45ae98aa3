//! `rpc registry ...` and `rpc kv ...`: running a registry member and using the registry.

use crate::CliResult;
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use rpc_core::tls::{ClientTls, ServerTls};
use rpc_registry::{
    api::{
        prefix_end, Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, PutRequest, RangeRequest,
        RequestOp, ResponseOp, TxnRequest, WatchCreate,
    },
    MemberConfig, RegistryClient, RunningMember,
};
use std::{path::PathBuf, time::Duration};

/// `rpc registry ...`
#[derive(Subcommand)]
pub(crate) enum RegistryCommand {
    /// Run a registry member until SIGTERM or Ctrl-C.
    ///
    /// With no --peers it is a one-member registry. For a cluster, start one process per
    /// member, each with its own --name and the same --peers:
    ///
    ///   rpc registry serve --name n1 --data-dir d1 --listen 127.0.0.1:2401 \
    ///       --peers n1=127.0.0.1:2401,n2=127.0.0.1:2402,n3=127.0.0.1:2403
    ///
    /// Restarting a member with the same --data-dir recovers it.
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),
    /// Print a member's view of the cluster: members, leader, term, revision, indexes, size.
    Status(EndpointArgs),
    /// List, add and remove members.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Hand leadership to the member named NAME (for maintenance of the current leader).
    MoveLeader {
        /// The member to lead.
        name: String,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
}

/// `rpc registry member ...`
#[derive(Subcommand)]
pub(crate) enum MemberCommand {
    /// Print the members: name, id, address, and whether each is a voter or a learner.
    List(EndpointArgs),
    /// Add a member. It joins as a learner and the leader promotes it to voter once it has
    /// caught up. Then start it with --join and the --peers this command prints:
    ///
    ///   rpc registry member add n4 127.0.0.1:2404 --endpoints 127.0.0.1:2401
    ///   rpc registry serve --name n4 --data-dir d4 --listen 127.0.0.1:2404 --join \
    ///       --peers n1=127.0.0.1:2401,n2=127.0.0.1:2402,n3=127.0.0.1:2403,n4=127.0.0.1:2404
    #[command(verbatim_doc_comment)]
    Add {
        /// The new member's name (its --name).
        name: String,
        /// The address it will serve on (its --listen).
        addr: String,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Remove the member named NAME; its process stops once it learns of the removal.
    Remove {
        /// The member to remove.
        name: String,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
}

/// Flags of `rpc registry serve`.
#[derive(Args)]
pub(crate) struct ServeArgs {
    /// This member's name, unique in the cluster.
    #[arg(long, default_value = "default")]
    name: String,
    /// Where the member keeps its Raft log and snapshots.
    #[arg(long)]
    data_dir: PathBuf,
    /// The address to serve clients and peers on.
    #[arg(long, default_value = "127.0.0.1:2379")]
    listen: String,
    /// Every member as NAME=ADDR, comma-separated, this one included.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Join the running cluster --peers lists (after `rpc registry member add`) instead of
    /// founding a new one.
    #[arg(long)]
    join: bool,
    /// Do not sync the log to disk (faster; acknowledged writes may be lost on power failure).
    #[arg(long)]
    no_fsync: bool,
    /// Compact the history automatically, keeping this many revisions (0 keeps all).
    #[arg(long, default_value_t = 0)]
    retain_revisions: u64,
    /// Compact the history automatically, keeping about this many seconds of it (0 keeps all).
    #[arg(long, default_value_t = 0)]
    retain_seconds: u64,
    /// Serve /metrics (Prometheus: calls per method, Raft term, leader, indexes, leases,
    /// watchers, db size), /health and /ready on this address; keep it private.
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// Users and roles (JSON; see rpc_registry::auth): callers must authenticate, and may
    /// touch only the keys their roles allow.
    #[arg(long, value_name = "FILE")]
    auth: Option<PathBuf>,
    /// Serve TLS with this certificate chain (PEM), and present it to the other members; with
    /// --tls-key and --tls-ca. `rpc cert dev` makes a set for trials.
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA that issues members' certificates (and clients', for those that use one); member
    /// traffic is accepted only with a certificate from it.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
}

/// Which registry to talk to.
#[derive(Args)]
pub(crate) struct EndpointArgs {
    /// Registry members, comma-separated; calls follow the leader.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub(crate) endpoints: Vec<String>,
    /// The endpoints are etcd v3 members (their client address, host:port): kv, watch, ls,
    /// config and lock work on etcd as on our registry.
    #[arg(long)]
    pub(crate) etcd: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Authenticate with this bearer token (or set RPC_TOKEN, which `ps` does not show).
    #[arg(long)]
    pub(crate) token: Option<String>,
    #[command(flatten)]
    pub(crate) tls: crate::cert::TlsArgs,
}

/// `rpc kv ...`
#[derive(Subcommand)]
pub(crate) enum KvCommand {
    /// Print a key's value, or every key under a prefix with --prefix.
    Get {
        /// The key (or prefix).
        key: String,
        /// Treat the key as a prefix.
        #[arg(long)]
        prefix: bool,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Set a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Bind the key to this lease (hex, as `rpc lease grant` prints it).
        #[arg(long)]
        lease: Option<String>,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Delete a key.
    Del {
        /// The key.
        key: String,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Run a transaction: if every --if holds, the --then operations, else the --else ones, all
    /// at one revision.
    ///
    /// Conditions: 'KEY = VALUE' (also !=, >, <; a missing key is only != a value), or
    /// 'KEY version|create|mod|lease OP NUMBER' (0 for a missing key; a lease in hex).
    /// Operations: 'put KEY VALUE', 'del KEY', 'get KEY'. A value runs to the end of its
    /// argument, spaces included.
    ///
    ///   rpc kv txn --if 'jobs/owner version = 0' --then 'put jobs/owner w1' --else 'get jobs/owner'
    #[command(verbatim_doc_comment)]
    Txn {
        /// A condition; all must hold.
        #[arg(long = "if", value_name = "CONDITION")]
        conditions: Vec<String>,
        /// An operation run when the conditions hold.
        #[arg(long = "then", value_name = "OPERATION")]
        success: Vec<String>,
        /// An operation run when one does not.
        #[arg(long = "else", value_name = "OPERATION")]
        failure: Vec<String>,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Print changes of a key (or every key under a prefix) as they happen, until Ctrl-C.
    Watch {
        /// The key (or prefix).
        key: String,
        /// Treat the key as a prefix.
        #[arg(long)]
        prefix: bool,
        /// Replay changes from this revision on first (inclusive).
        #[arg(long, default_value_t = 0)]
        rev: u64,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
}

/// `rpc lease ...`
#[derive(Subcommand)]
pub(crate) enum LeaseCommand {
    /// Grant a lease of TTL seconds and print its id (hex).
    Grant {
        /// Time to live in seconds (raised to the registry's minimum).
        ttl: u64,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Revoke a lease, deleting its keys.
    Revoke {
        /// The lease id (hex).
        id: String,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Keep a lease alive until Ctrl-C, printing its remaining time at each renewal.
    Keepalive {
        /// The lease id (hex).
        id: String,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// List the leases alive.
    Ls {
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
}

pub(crate) async fn run_registry(command: RegistryCommand) -> CliResult {
    match command {
        RegistryCommand::Serve(args) => serve(args).await,
        RegistryCommand::Member(command) => run_member(command).await,
        RegistryCommand::MoveLeader { name, endpoint } => {
            client(&endpoint)?.move_leader(rpc_registry::member_id(&name)).await?;
            println!("leadership is moving to {name}");
            Ok(())
        }
        RegistryCommand::Status(endpoint) => {
            let status = client(&endpoint)?.status().await?;
            match endpoint.json {
                true => println!("{}", serde_json::to_string(&status)?),
                false => {
                    let leader =
                        status.members.iter().find(|m| m.id == status.leader).map_or("none", |m| m.name.as_str());
                    let names: Vec<String> = status
                        .members
                        .iter()
                        .map(|m| format!("{}={}{}", m.name, m.addr, if m.learner { " (learner)" } else { "" }))
                        .collect();
                    println!("members   {}", names.join(","));
                    println!("leader    {leader}");
                    println!("term      {}", status.header.raft_term);
                    println!("revision  {}", status.header.revision);
                    println!(
                        "raft      index {} commit {} applied {}",
                        status.raft_index, status.commit_index, status.applied_index
                    );
                    println!("db size   {} bytes, compacted to {}", status.db_size, status.compact_revision);
                }
            }
            Ok(())
        }
    }
}

async fn run_member(command: MemberCommand) -> CliResult {
    let (members, endpoint) = match command {
        MemberCommand::List(endpoint) => (client(&endpoint)?.status().await?.members, endpoint),
        MemberCommand::Add { name, addr, endpoint } => {
            let members = client(&endpoint)?.member_add(&name, &addr).await?;
            if !endpoint.json {
                let peers: Vec<String> = members.iter().map(|m| format!("{}={}", m.name, m.addr)).collect();
                println!("added {name} as a learner; start it with:");
                println!(
                    "  rpc registry serve --name {name} --listen {addr} --join --peers {} --data-dir DIR",
                    peers.join(",")
                );
            }
            (members, endpoint)
        }
        MemberCommand::Remove { name, endpoint } => {
            let members = client(&endpoint)?.member_remove(rpc_registry::member_id(&name)).await?;
            if !endpoint.json {
                println!("removed {name}");
            }
            (members, endpoint)
        }
    };
    match endpoint.json {
        true => println!("{}", serde_json::to_string(&members)?),
        false => {
            for m in &members {
                let role = if m.learner { "learner" } else { "voter" };
                println!("{:<12} {:016x}  {:<22} {role}", m.name, m.id, m.addr);
            }
        }
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> CliResult {
    let mut peers = Vec::new();
    for peer in &args.peers {
        let (name, addr) = peer.split_once('=').ok_or_else(|| format!("--peers takes NAME=ADDR, not {peer:?}"))?;
        peers.push((name.to_owned(), addr.to_owned()));
    }
    let mut config = MemberConfig::new(args.name, args.data_dir, args.listen).peers(peers);
    config.join = args.join;
    config.fsync = !args.no_fsync;
    config.retain_revisions = args.retain_revisions;
    config.retain_for = Duration::from_secs(args.retain_seconds);
    config.admin = args.admin;
    config.auth = args.auth.as_ref().map(rpc_registry::AuthConfig::load).transpose()?;
    if let (Some(cert), Some(key), Some(ca)) = (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        config.tls = Some(rpc_registry::MemberTls {
            server: ServerTls::builder(cert, key).client_ca(ca).optional_client_cert().build()?,
            peer: ClientTls::builder(ca).identity(cert, key).build()?,
        });
    }
    let member = RunningMember::start(config).await?;
    match member.admin_addr() {
        Some(admin) => {
            println!("registry member {:x} serving on {}; admin port {admin}", member.id(), member.local_addr())
        }
        None => println!("registry member {:x} serving on {}", member.id(), member.local_addr()),
    }
    tokio::select! {
        signal = shutdown_signal() => signal?,
        () = member.removed() => eprintln!("this member was removed from the cluster"),
    }
    eprintln!("stopping: finishing running calls");
    member.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}

/// Waits for SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => Ok(()),
            signal = tokio::signal::ctrl_c() => signal,
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}

pub(crate) fn client(endpoint: &EndpointArgs) -> Result<RegistryClient, rpc_core::tls::TlsError> {
    if endpoint.etcd {
        return Ok(RegistryClient::etcd(endpoint.endpoints.clone()));
    }
    let mut builder = RegistryClient::builder(endpoint.endpoints.clone());
    if let Some(token) = endpoint.token.clone().or_else(|| std::env::var("RPC_TOKEN").ok()) {
        builder = builder.token(token);
    }
    if let Some(tls) = endpoint.tls.client()? {
        builder = builder.tls(tls);
    }
    Ok(builder.build())
}

pub(crate) async fn run_kv(command: KvCommand) -> CliResult {
    match command {
        KvCommand::Get { key, prefix, endpoint } => {
            let range_end = if prefix { prefix_end(key.as_bytes()) } else { Vec::new() };
            let request = RangeRequest { key: key.into_bytes(), range_end, ..RangeRequest::default() };
            let response = client(&endpoint)?.range(request).await?;
            for kv in &response.kvs {
                print_kv(kv, endpoint.json)?;
            }
            Ok(())
        }
        KvCommand::Put { key, value, lease, endpoint } => {
            let lease = match lease {
                Some(hex) => lease_id(&hex)?,
                None => 0,
            };
            let request = rpc_registry::api::PutRequest {
                key: key.into_bytes(),
                value: value.into_bytes(),
                lease,
                ..Default::default()
            };
            let response = client(&endpoint)?.put_with(request).await?;
            match endpoint.json {
                true => println!("{}", serde_json::to_string(&response)?),
                false => println!("OK (revision {})", response.header.revision),
            }
            Ok(())
        }
        KvCommand::Watch { key, prefix, rev, endpoint } => watch(key, prefix, rev, endpoint).await,
        KvCommand::Txn { conditions, success, failure, endpoint } => {
            let request = TxnRequest {
                compare: conditions.iter().map(|c| condition(c)).collect::<Result<_, _>>()?,
                success: success.iter().map(|o| operation(o)).collect::<Result<_, _>>()?,
                failure: failure.iter().map(|o| operation(o)).collect::<Result<_, _>>()?,
            };
            let response = client(&endpoint)?.txn(request).await?;
            if endpoint.json {
                println!("{}", serde_json::to_string(&response)?);
                return Ok(());
            }
            println!("{}", if response.succeeded { "SUCCEEDED" } else { "FAILED" });
            for op in &response.responses {
                match op {
                    ResponseOp::Range(range) => {
                        for kv in &range.kvs {
                            print_kv(kv, false)?;
                        }
                    }
                    ResponseOp::Put(put) => println!("OK (revision {})", put.header.revision),
                    ResponseOp::DeleteRange(deleted) => println!("{}", deleted.deleted),
                }
            }
            Ok(())
        }
        KvCommand::Del { key, endpoint } => {
            let deleted = client(&endpoint)?.delete(key).await?;
            match endpoint.json {
                true => println!("{{\"deleted\":{deleted}}}"),
                false => println!("{deleted}"),
            }
            Ok(())
        }
    }
}

async fn watch(key: String, prefix: bool, rev: u64, endpoint: EndpointArgs) -> CliResult {
    let range_end = if prefix { prefix_end(key.as_bytes()) } else { Vec::new() };
    let create =
        WatchCreate { key: key.into_bytes(), range_end, start_revision: rev, watch_id: 1, ..WatchCreate::default() };
    // The client's watch moves to another member when one fails, resuming where it was.
    let mut responses = client(&endpoint)?.watch(create);
    while let Some(response) = responses.next().await {
        let response = response.map_err(|e| format!("the watch ended: {e}"))?;
        for event in &response.events {
            match endpoint.json {
                true => println!("{}", serde_json::to_string(event)?),
                false => println!(
                    "{:?} {} @{}\n{}",
                    event.kind,
                    String::from_utf8_lossy(&event.kv.key),
                    event.kv.mod_revision,
                    String::from_utf8_lossy(&event.kv.value)
                ),
            }
        }
    }
    Ok(())
}

pub(crate) async fn run_lease(command: LeaseCommand) -> CliResult {
    match command {
        LeaseCommand::Grant { ttl, endpoint } => {
            let granted = client(&endpoint)?.call(false, |c| async move { c.lease_grant(ttl, 0).await }).await?;
            match endpoint.json {
                true => println!("{}", serde_json::to_string(&granted)?),
                false => println!("lease {:x} granted with TTL {}s", granted.id, granted.ttl),
            }
        }
        LeaseCommand::Revoke { id, endpoint } => {
            client(&endpoint)?.lease_revoke(lease_id(&id)?).await?;
            println!("lease {id} revoked");
        }
        LeaseCommand::Keepalive { id, endpoint } => {
            let id = lease_id(&id)?;
            let ticks = futures_util::stream::unfold(true, move |first| async move {
                if !first {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Some((id, false))
            });
            let mut renewals = client(&endpoint)?
                .current()
                .ok_or("lease keepalive needs our registry, not etcd")?
                .lease_keep_alive(ticks)
                .await?;
            while let Some(renewal) = renewals.next().await {
                let status = renewal??;
                match endpoint.json {
                    true => println!("{}", serde_json::to_string(&status)?),
                    false => println!("lease {:x} renewed: {} ms left", status.id, status.remaining_ms),
                }
            }
        }
        LeaseCommand::Ls { endpoint } => {
            let leases = client(&endpoint)?.call(true, |c| async move { c.lease_list().await }).await?;
            for id in leases {
                println!("{id:x}");
            }
        }
    }
    Ok(())
}

fn lease_id(hex: &str) -> Result<u64, String> {
    u64::from_str_radix(hex, 16).map_err(|e| format!("lease id {hex:?} is not hex: {e}"))
}

/// Parses a `rpc kv txn --if` condition.
fn condition(text: &str) -> Result<Compare, String> {
    let bad = || {
        format!("cannot read the condition {text:?}: write 'KEY = VALUE' or 'KEY version|create|mod|lease = NUMBER' (or !=, >, <)")
    };
    let result = |op: &str| match op {
        "=" | "==" => Some(CompareResult::Equal),
        "!=" => Some(CompareResult::NotEqual),
        ">" => Some(CompareResult::Greater),
        "<" => Some(CompareResult::Less),
        _ => None,
    };
    let (key, rest) = text.trim().split_once(' ').ok_or_else(bad)?;
    let rest = rest.trim_start();
    let (first, after) = rest.split_once(' ').ok_or_else(bad)?;
    let field: Option<fn(u64) -> CompareTarget> = match first {
        "version" => Some(CompareTarget::Version),
        "create" => Some(CompareTarget::CreateRevision),
        "mod" => Some(CompareTarget::ModRevision),
        "lease" => Some(CompareTarget::Lease),
        _ => None,
    };
    let (result, target) = match field {
        Some(field) => {
            let (op, number) = after.trim().split_once(' ').ok_or_else(bad)?;
            let number = number.trim();
            let number = match first {
                "lease" => lease_id(number).map_err(|_| bad())?,
                _ => number.parse().map_err(|_| bad())?,
            };
            (result(op).ok_or_else(bad)?, field(number))
        }
        None => (result(first).ok_or_else(bad)?, CompareTarget::Value(after.as_bytes().to_vec())),
    };
    Ok(Compare { key: key.as_bytes().to_vec(), result, target })
}

/// Parses a `rpc kv txn --then`/`--else` operation.
fn operation(text: &str) -> Result<RequestOp, String> {
    let bad = || format!("cannot read the operation {text:?}: write 'put KEY VALUE', 'del KEY' or 'get KEY'");
    let (verb, rest) = text.trim().split_once(' ').ok_or_else(bad)?;
    let rest = rest.trim_start();
    match verb {
        "put" => {
            let (key, value) = rest.split_once(' ').ok_or_else(bad)?;
            let put =
                PutRequest { key: key.as_bytes().to_vec(), value: value.as_bytes().to_vec(), ..PutRequest::default() };
            Ok(RequestOp::Put(put))
        }
        "del" if !rest.contains(' ') => Ok(RequestOp::DeleteRange(DeleteRangeRequest {
            key: rest.as_bytes().to_vec(),
            ..DeleteRangeRequest::default()
        })),
        "get" if !rest.contains(' ') => {
            Ok(RequestOp::Range(RangeRequest { key: rest.as_bytes().to_vec(), ..RangeRequest::default() }))
        }
        _ => Err(bad()),
    }
}

fn print_kv(kv: &KeyValue, json: bool) -> CliResult {
    match json {
        true => println!("{}", serde_json::to_string(kv)?),
        false => println!("{}\n{}", String::from_utf8_lossy(&kv.key), String::from_utf8_lossy(&kv.value)),
    }
    Ok(())
}
