//! The `rpc` command: a demo, benchmarks and a generic client.

mod bench;
mod call;
mod cert;
mod dashboard;
mod demo;
mod discovery;
mod idl;
mod logging;
mod registry;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "rpc", version, about = "RPC framework demo, benchmarks and tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How logs on stderr are written: `pretty` for people, `json` (one object per line, with
    /// trace and span ids) for a log shipper. Filter them with RUST_LOG, e.g.
    /// `RUST_LOG=info,rpc_core::trace=debug` to log every call.
    #[arg(long, global = true, value_enum, default_value_t)]
    log_format: logging::LogFormat,
    /// Also send every call's span to an OpenTelemetry collector over OTLP/HTTP, e.g.
    /// `http://127.0.0.1:4318` (spans are exported whatever RUST_LOG says).
    #[arg(long, global = true, value_name = "URL")]
    otlp_endpoint: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run two services that call each other and print what happens; with --dashboard, run a
    /// live system and its dashboard until Ctrl-C.
    Demo {
        /// Instead of the narrated tour, run a registry, three instances (one broken), a
        /// balanced client and steady traffic, and serve the dashboard on --dashboard-addr.
        #[arg(long)]
        dashboard: bool,
        /// Where --dashboard serves its page.
        #[arg(long, default_value = "127.0.0.1:9000", requires = "dashboard")]
        dashboard_addr: String,
    },
    /// Measure the framework against a baseline in the same run.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
    /// Call a method with JSON arguments and print the JSON result.
    Call(call::CallArgs),
    /// Make certificates for trying TLS locally.
    Cert {
        #[command(subcommand)]
        command: cert::CertCommand,
    },
    /// Print an example service's schema as .proto or .thrift.
    Idl(idl::IdlArgs),
    /// Serve a live web page of services, their golden metrics, circuits, topology and
    /// alerts, from the registry and the admin ports it lists.
    Dashboard(dashboard::DashboardArgs),
    /// Run a registry member, or ask one for the cluster's status.
    Registry {
        #[command(subcommand)]
        command: registry::RegistryCommand,
    },
    /// Read, write and watch registry keys.
    Kv {
        #[command(subcommand)]
        command: registry::KvCommand,
    },
    /// Grant, keep alive, revoke and list registry leases.
    Lease {
        #[command(subcommand)]
        command: registry::LeaseCommand,
    },
    /// List registered services and their instances.
    Ls(discovery::LsArgs),
    /// Read, set, and roll back configuration values.
    Config {
        #[command(subcommand)]
        command: discovery::ConfigCommand,
    },
    /// Take a lock, run a command while holding it, and release it.
    Lock(discovery::LockArgs),
    /// Campaign in an election, run a command while leading, resign when it ends.
    Elect(discovery::ElectArgs),
    /// Serve one products instance of `rpc demo --dashboard` (started by it).
    #[command(hide = true, name = "__demo-instance")]
    DemoInstance {
        /// The instance's name.
        #[arg(long)]
        name: String,
        /// Registry members, comma-separated.
        #[arg(long, value_delimiter = ',')]
        registry: Vec<String>,
        /// Hang on every call.
        #[arg(long)]
        broken: bool,
    },
    /// Serve the benchmark service in this process (started by `rpc bench`).
    #[command(hide = true, name = "__bench-server")]
    BenchServer {
        /// `rpc` or `raw`.
        kind: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Named threads tell the benchmark's processes apart in a profiler.
    let thread_name = match &cli.command {
        Command::BenchServer { kind } => format!("{kind}-server"),
        _ => "rpc-worker".to_owned(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name(thread_name).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporter runs on the runtime.
    if let Err(e) = runtime.block_on(async { logging::init(cli.log_format, cli.otlp_endpoint.as_deref()) }) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo { dashboard: false, .. } => demo::run().await,
            Command::Demo { dashboard: true, dashboard_addr } => demo::live::run(&dashboard_addr).await,
            Command::DemoInstance { name, registry, broken } => demo::live::instance(name, registry, broken).await,
            Command::Bench { what } => bench::run(what).await,
            Command::Call(args) => call::run(args).await,
            Command::Idl(args) => idl::run(args),
            Command::Cert { command } => cert::run(command),
            Command::Dashboard(args) => dashboard::run(args).await,
            Command::Registry { command } => registry::run_registry(command).await,
            Command::Kv { command } => registry::run_kv(command).await,
            Command::Lease { command } => registry::run_lease(command).await,
            Command::Ls(args) => discovery::ls(args).await,
            Command::Config { command } => discovery::config(command).await,
            Command::Lock(args) => discovery::lock(args).await,
            Command::Elect(args) => discovery::elect(args).await,
            Command::BenchServer { kind } => bench::rpc::serve_child(&kind).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The error type of every subcommand: a message for the user.
type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_line_definition_is_consistent() {
        // Clap checks clashing names and bad defaults only when a command is parsed; this
        // checks every subcommand at once.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
