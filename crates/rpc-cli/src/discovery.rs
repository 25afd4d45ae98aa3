//! `rpc ls`, `rpc config ...`, `rpc lock` and `rpc elect`: services, configuration, locks and
//! elections on the registry.

use crate::{
    registry::{client, EndpointArgs},
    CliResult,
};
use clap::{Args, Subcommand};
use std::future::Future;

/// Flags of `rpc ls`.
#[derive(Args)]
pub(crate) struct LsArgs {
    /// Only this service's instances.
    service: Option<String>,
    #[command(flatten)]
    endpoint: EndpointArgs,
}

/// `rpc config ...`
#[derive(Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print a configuration value (JSON).
    Get {
        /// The config's name, e.g. orders/limits.
        name: String,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Set a configuration value; it must be JSON. Processes following it pick it up live.
    Set {
        /// The config's name.
        name: String,
        /// The value, as JSON.
        value: String,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Print every revision of a configuration value still in the registry's history.
    History {
        /// The config's name.
        name: String,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Set a configuration value back to what it was at REVISION (see `history`).
    Rollback {
        /// The config's name.
        name: String,
        /// The revision to go back to.
        revision: u64,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
}

/// Flags of `rpc lock`.
#[derive(Args)]
pub(crate) struct LockArgs {
    /// The lock's name.
    name: String,
    /// The command to run while holding the lock; its environment has RPC_LOCK_TOKEN, the
    /// fencing token. Without one, the lock is held until Ctrl-C.
    #[arg(last = true)]
    command: Vec<String>,
    /// Seconds the lock outlives this process if it dies (raised to the registry's minimum).
    #[arg(long, default_value_t = rpc_registry::session::DEFAULT_TTL)]
    ttl: u64,
    #[command(flatten)]
    endpoint: EndpointArgs,
}

/// Flags of `rpc elect`.
#[derive(Args)]
pub(crate) struct ElectArgs {
    /// The election's name.
    name: String,
    /// The value this candidate leads with (e.g. its address), shown to observers.
    #[arg(long, default_value = "")]
    value: String,
    /// The command to run while leading; its environment has RPC_LEADER_TOKEN, the leadership's
    /// fencing token. Without one, this candidate leads until Ctrl-C.
    #[arg(last = true)]
    command: Vec<String>,
    /// Seconds the leadership outlives this process if it dies (raised to the registry's minimum).
    #[arg(long, default_value_t = rpc_registry::session::DEFAULT_TTL)]
    ttl: u64,
    #[command(flatten)]
    endpoint: EndpointArgs,
}

pub(crate) async fn ls(args: LsArgs) -> CliResult {
    let instances = client(&args.endpoint)?.instances(args.service.as_deref()).await?;
    if args.endpoint.json {
        println!("{}", serde_json::to_string(&instances)?);
        return Ok(());
    }
    for i in instances {
        let mut extra = Vec::new();
        if !i.zone.is_empty() {
            extra.push(format!("zone={}", i.zone));
        }
        if !i.version.is_empty() {
            extra.push(format!("version={}", i.version));
        }
        if !i.tags.is_empty() {
            extra.push(format!("tags={}", i.tags.join(",")));
        }
        extra.extend(i.metadata.iter().map(|(k, v)| format!("{k}={v}")));
        println!("{:<20} {:<22} weight={} {}", i.service, i.addr, i.weight, extra.join(" "));
    }
    Ok(())
}

pub(crate) async fn config(command: ConfigCommand) -> CliResult {
    match command {
        ConfigCommand::Get { name, endpoint } => {
            let value = client(&endpoint)?.config::<serde_json::Value>(&name).await?;
            println!("{}", value.get());
        }
        ConfigCommand::Set { name, value, endpoint } => {
            let value: serde_json::Value =
                serde_json::from_str(&value).map_err(|e| format!("the value of {name:?} is not JSON: {e}"))?;
            let revision = client(&endpoint)?.set_config(&name, &value).await?;
            println!("set {name} at revision {revision}");
        }
        ConfigCommand::History { name, endpoint } => {
            for revision in client(&endpoint)?.config_history(&name).await? {
                let json = if revision.json.is_empty() { "(deleted)" } else { revision.json.as_str() };
                println!("{:<10} {json}", revision.revision);
            }
        }
        ConfigCommand::Rollback { name, revision, endpoint } => {
            let written = client(&endpoint)?.rollback_config(&name, revision).await?;
            println!("{name} is back to revision {revision}'s value, at revision {written}");
        }
    }
    Ok(())
}

pub(crate) async fn lock(args: LockArgs) -> CliResult {
    let guard = client(&args.endpoint)?.lock_with_ttl(&args.name, args.ttl).await?;
    eprintln!("holding lock {} with token {}", args.name, guard.token());
    let ran = run_while_held(&args.command, ("RPC_LOCK_TOKEN", guard.token()), "the lock's", guard.lost()).await;
    // A lost lock has nothing left to release, and the registry may be out of reach.
    if !guard.is_lost() {
        guard.unlock().await?;
    }
    ran
}

pub(crate) async fn elect(args: ElectArgs) -> CliResult {
    let election = client(&args.endpoint)?.election(&args.name).ttl(args.ttl);
    let leadership = election.campaign(args.value).await?;
    eprintln!("leading {} with token {}", args.name, leadership.token());
    let token = ("RPC_LEADER_TOKEN", leadership.token());
    let ran = run_while_held(&args.command, token, "the leadership's", leadership.lost()).await;
    if !leadership.is_lost() {
        leadership.resign().await?;
    }
    ran
}

/// Runs `command` with `token` in its environment (or waits for Ctrl-C without one) while a
/// lock or a leadership is held, and stops it if `lost` resolves first: someone else may hold
/// it then, and the command must not overlap with theirs.
async fn run_while_held(
    command: &[String],
    token: (&str, u64),
    held: &str,
    lost: impl Future<Output = ()>,
) -> CliResult {
    let Some((program, rest)) = command.split_first() else {
        tokio::select! {
            signal = tokio::signal::ctrl_c() => return Ok(signal?),
            () = lost => return Err(format!("{held} lease was lost").into()),
        }
    };
    let mut command = tokio::process::Command::new(program);
    command.args(rest).env(token.0, token.1.to_string()).kill_on_drop(true);
    die_with_this_process(&mut command);
    let mut child = command.spawn().map_err(|e| format!("cannot run {program:?}: {e}"))?;
    let status = tokio::select! {
        status = child.wait() => status?,
        () = lost => {
            child.kill().await?;
            return Err(format!("{held} lease was lost; the command was stopped").into());
        }
    };
    match status.success() {
        true => Ok(()),
        false => Err(format!("{program} exited with {status}").into()),
    }
}

/// Has the kernel kill `command` when this process dies, however it dies: a command that
/// outlived `rpc lock` would run on after the lock passed to someone else, and a demo's
/// instances must not outlive the demo. (The signal follows
/// the thread that spawned the command, a runtime worker that lives as long as the process.)
#[cfg(target_os = "linux")]
pub(crate) fn die_with_this_process(command: &mut tokio::process::Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes two
    // async-signal-safe system calls.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the call above took effect.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("the parent exited while starting the command"));
            }
            Ok(())
        });
    }
}

/// Elsewhere the command outlives a killed `rpc lock`; fencing tokens are the defence.
#[cfg(not(target_os = "linux"))]
pub(crate) fn die_with_this_process(_command: &mut tokio::process::Command) {}
