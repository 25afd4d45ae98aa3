//! Exports the call spans of [`crate::trace`] to an OpenTelemetry collector, over OTLP/HTTP
//! with JSON bodies (`POST {endpoint}/v1/traces`), for users who run one (feature `otlp`).
//!
//! [`OtlpLayer`] is a `tracing-subscriber` layer: add it to the process's subscriber beside its
//! log output, with [`call_spans`] as its filter so that nothing else reaches it and the log
//! filter does not hide calls from it. It keeps only `rpc.server` and `rpc.client` spans, queues them in a bounded
//! buffer (spans beyond it are dropped and counted, never blocking a call), and a background
//! task posts them in batches. Plain `http://` only: put a local collector or agent in front of
//! anything remote.
//!
//! ```no_run
//! use tracing_subscriber::prelude::*;
//! # async fn run() -> std::io::Result<()> {
//! let otlp = rpc_core::otlp::OtlpLayer::new("http://127.0.0.1:4318", "checkout")?;
//! let logs = tracing_subscriber::fmt::layer().with_filter(tracing_subscriber::filter::LevelFilter::INFO);
//! tracing_subscriber::registry().with(otlp.with_filter(rpc_core::otlp::call_spans())).with(logs).init();
//! # Ok(()) }
//! ```

use serde_json::{json, Value};
use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};
use tracing::{
    field::{Field, Visit},
    span, Subscriber,
};
use tracing_subscriber::{layer::Context, registry::LookupSpan, Layer};

/// Spans waiting to be sent; more are dropped.
const QUEUE: usize = 8192;
/// Most spans in one request.
const BATCH: usize = 512;
/// How long a finished span may wait for its batch to fill.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// A finished call span, as OTLP carries it.
#[derive(Debug)]
struct Finished {
    name: String,
    server: bool,
    start: u64,
    end: u64,
    fields: Fields,
}

/// The fields a span recorded, by name.
#[derive(Clone, Debug, Default)]
struct Fields(Vec<(&'static str, FieldValue)>);

#[derive(Clone, Debug)]
enum FieldValue {
    Str(String),
    Int(i64),
}

impl Fields {
    fn set(&mut self, name: &'static str, value: FieldValue) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    fn str(&self, name: &str) -> Option<&str> {
        self.0.iter().find_map(|(n, v)| match v {
            FieldValue::Str(s) if *n == name => Some(s.as_str()),
            _ => None,
        })
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), FieldValue::Str(value.to_owned()));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field.name(), FieldValue::Int(i64::try_from(value).unwrap_or(i64::MAX)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), FieldValue::Int(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields arrive here, formatted with Display.
        self.set(field.name(), FieldValue::Str(format!("{value:?}")));
    }
}

/// What the layer keeps in a live span.
struct Open {
    start: u64,
    fields: Fields,
}

/// Sends `rpc.server` and `rpc.client` spans to an OpenTelemetry collector; see the
/// [module](self).
pub struct OtlpLayer {
    queue: mpsc::Sender<Finished>,
    dropped: Arc<AtomicU64>,
}

impl fmt::Debug for OtlpLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpLayer").field("dropped", &self.dropped()).finish_non_exhaustive()
    }
}

impl OtlpLayer {
    /// Exports to the collector at `endpoint` (`http://host:4318`) as `service_name`; must be
    /// called inside a Tokio runtime, which runs the exporting task.
    pub fn new(endpoint: &str, service_name: impl Into<String>) -> std::io::Result<OtlpLayer> {
        let authority = endpoint
            .strip_prefix("http://")
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{endpoint:?} is not an http:// address; OTLP export speaks plain HTTP to a local collector"
                    ),
                )
            })?
            .trim_end_matches('/')
            .to_owned();
        let (queue, spans) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(export(authority, service_name.into(), spans));
        Ok(OtlpLayer { queue, dropped })
    }

    /// Spans dropped because the queue was full (the collector is slow or down).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn is_call(name: &str) -> bool {
    name == "rpc.server" || name == "rpc.client"
}

/// A per-layer filter that lets only call spans through: [`OtlpLayer`]'s.
pub fn call_spans() -> tracing_subscriber::filter::FilterFn<fn(&tracing::Metadata<'_>) -> bool> {
    tracing_subscriber::filter::FilterFn::new(|metadata| metadata.is_span() && is_call(metadata.name()))
}

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if !is_call(attrs.metadata().name()) {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(Open { start: unix_nanos(), fields });
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(open) = extensions.get_mut::<Open>() {
            values.record(&mut open.fields);
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(open) = span.extensions_mut().remove::<Open>() else { return };
        let finished = Finished {
            name: open.fields.str("otel.name").unwrap_or(span.name()).to_owned(),
            server: span.name() == "rpc.server",
            start: open.start,
            end: unix_nanos(),
            fields: open.fields,
        };
        if self.queue.try_send(finished).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Batches finished spans and posts them until the layer is dropped.
async fn export(authority: String, service: String, mut spans: mpsc::Receiver<Finished>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = match spans.recv().await {
            Some(span) => span,
            None => return,
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let body = request(&service, &batch).to_string();
        batch.clear();
        match tokio::time::timeout(EXPORT_TIMEOUT, post(&authority, &body)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, collector = %authority, "exporting spans failed; they are dropped")
            }
            Err(_) => tracing::warn!(collector = %authority, "exporting spans timed out; they are dropped"),
        }
    }
}

/// An `ExportTraceServiceRequest` in OTLP's JSON mapping.
fn request(service: &str, batch: &[Finished]) -> Value {
    let spans: Vec<Value> = batch.iter().map(span_json).collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [attribute("service.name", &FieldValue::Str(service.to_owned()))] },
            "scopeSpans": [{ "scope": { "name": "rpc-core" }, "spans": spans }],
        }]
    })
}

fn attribute(key: &str, value: &FieldValue) -> Value {
    match value {
        FieldValue::Str(s) => json!({ "key": key, "value": { "stringValue": s } }),
        // int64 travels as a decimal string in OTLP JSON.
        FieldValue::Int(i) => json!({ "key": key, "value": { "intValue": i.to_string() } }),
    }
}

fn span_json(span: &Finished) -> Value {
    /// Fields that are the span's identity or name, not attributes.
    const STRUCTURAL: [&str; 5] = ["trace_id", "span_id", "parent_id", "otel.name", "otel.kind"];
    let attributes: Vec<Value> = span
        .fields
        .0
        .iter()
        .filter(|(name, _)| !STRUCTURAL.contains(name))
        .map(|(name, value)| attribute(name, value))
        .collect();
    // OTLP's status: 1 OK, 2 ERROR; unset while the call had not finished.
    let status = match span.fields.str("rpc.response.status_code") {
        Some("OK") => json!({ "code": 1 }),
        Some(code) => json!({ "code": 2, "message": code }),
        None => json!({}),
    };
    let mut out = json!({
        "traceId": span.fields.str("trace_id").unwrap_or_default(),
        "spanId": span.fields.str("span_id").unwrap_or_default(),
        "name": span.name,
        // SPAN_KIND_SERVER is 2, SPAN_KIND_CLIENT 3.
        "kind": if span.server { 2 } else { 3 },
        "startTimeUnixNano": span.start.to_string(),
        "endTimeUnixNano": span.end.to_string(),
        "attributes": attributes,
        "status": status,
    });
    if let Some(parent) = span.fields.str("parent_id") {
        out["parentSpanId"] = Value::from(parent);
    }
    out
}

/// `POST /v1/traces` with `body`; any 2xx is success.
async fn post(authority: &str, body: &str) -> std::io::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(authority).await?;
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    match answer.split(' ').nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        other => Err(std::io::Error::other(format!("the collector answered {}", other.unwrap_or("nothing")))),
    }
}
