//! Where `rpc` processes write their logs: stderr, as text for people or JSON lines for a log
//! shipper, filtered like `RUST_LOG`.

use clap::ValueEnum;
use tracing_subscriber::{prelude::*, EnvFilter, Layer};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line, with the current span's fields (a call's `trace_id` and
    /// `span_id` included).
    Json,
}

/// What is logged without `RUST_LOG`: warnings, the process's own milestones (the `rpc`
/// binary, the registry, certificate reloads) and alerts. A line per call is
/// `RUST_LOG=rpc_core::trace=debug`. Targets match by prefix, so `rpc=info` would also take
/// in every `rpc_*` crate: those are set back to `warn` one by one.
const DEFAULT_FILTER: &str =
    "warn,rpc=info,rpc_core=warn,rpc_codecs=warn,rpc_lb=warn,rpc_raft=warn,rpc_registry=info,rpc_core::tls=info";

/// Installs the process's subscriber; `RUST_LOG` (directives such as `info,rpc_lb=debug`)
/// overrides the default filter of the log lines. With `otlp` (`http://host:port`), call spans
/// also go to that OpenTelemetry collector, whatever the filter says.
pub(crate) fn init(format: LogFormat, otlp: Option<&str>) -> std::io::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) => EnvFilter::try_new(&directives).unwrap_or_else(|e| {
            eprintln!("warning: ignoring RUST_LOG={directives:?} ({e}); using {DEFAULT_FILTER:?}");
            EnvFilter::new(DEFAULT_FILTER)
        }),
        Err(_) => EnvFilter::new(DEFAULT_FILTER),
    };
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Pretty => lines.with_filter(filter).boxed(),
        LogFormat::Json => lines.json().with_current_span(true).with_span_list(false).with_filter(filter).boxed(),
    };
    match otlp {
        Some(endpoint) => {
            // Its own filter: call spans are exported whatever the log filter drops, and
            // nothing else wakes the exporter.
            let spans = rpc_core::otlp::OtlpLayer::new(endpoint, "rpc")?.with_filter(rpc_core::otlp::call_spans());
            tracing_subscriber::registry().with(lines).with(spans).init();
        }
        // Without an exporter, spans nobody logs stay disabled: no cost per call.
        None => tracing_subscriber::registry().with(lines).init(),
    }
    Ok(())
}
