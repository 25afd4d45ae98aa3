//! Call metrics in Prometheus' text format: per side (server, client), service, method and
//! status code, the calls started, in flight and finished, and their duration as a histogram;
//! per method, the sizes of encoded arguments (on the server) and results; all under
//! OpenTelemetry's RPC names (`rpc.server.call.duration` becomes
//! `rpc_server_call_duration_seconds`, `rpc.server.request.size` `rpc_server_request_size_bytes`).
//!
//! [`MetricsLayer`] records them around any service on either side;
//! [`ServerBuilder::admin`](crate::ServerBuilder::admin) records a server's and serves them at
//! `/metrics`. Recording a call costs one map lookup under a read lock (two if it failed) and a
//! few atomic adds;
//! `rpc bench rpc --metrics` measures it.

use crate::{
    layer::{CallInfo, ReplySize},
    ByteStr, Code, Status,
};
use pin_project_lite::pin_project;
use std::{
    collections::HashMap,
    fmt::Write as _,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc, RwLock,
    },
    task::{Context, Poll},
    time::Instant,
};
use tower::{Layer, Service};

/// Upper bounds of the duration buckets, in seconds (OpenTelemetry's advice for RPC durations,
/// from half a millisecond to ten seconds).
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 10.0];
/// Upper bounds of the message size buckets, in bytes: 64 B to 16 MiB (the default frame
/// limit), by powers of four.
const SIZE_BUCKETS: [f64; 10] =
    [64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262_144.0, 1_048_576.0, 4_194_304.0, 16_777_216.0];

/// Which end of a call a series describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Side {
    Server,
    Client,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }
}

type MethodKey = (Side, ByteStr, ByteStr);
/// A method's calls that ended with one status (`None`: success).
type StatusKey = (MethodKey, Option<Code>);

/// Calls of one method on one side, with the durations of those that succeeded: the common
/// case costs one lookup.
#[derive(Default)]
struct Calls {
    started: AtomicU64,
    in_flight: AtomicI64,
    ok: Durations,
    /// Encoded arguments, where the side knows them (the server).
    request_size: Sizes,
    /// Encoded results of calls that succeeded.
    response_size: Sizes,
}

/// FNV-1a: method names are short and chosen by the program, not by peers flooding a table,
/// so a fast hash beats SipHash's defence here.
#[derive(Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let start = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        self.0 = bytes.iter().fold(start, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
    }
}

type Map<K, V> = HashMap<K, Arc<V>, std::hash::BuildHasherDefault<Fnv>>;

/// Counts of values by bucket (not cumulative: the text format's sums are made when rendered),
/// with their sum in `1/UNIT`s of the value's unit.
struct Histogram<const N: usize, const UNIT: u64> {
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum: AtomicU64,
}

/// Durations of calls that ended with one status, in seconds (summed in nanoseconds).
type Durations = Histogram<{ BUCKETS.len() }, 1_000_000_000>;
/// Message sizes, in bytes.
type Sizes = Histogram<{ SIZE_BUCKETS.len() }, 1>;

impl<const N: usize, const UNIT: u64> Default for Histogram<N, UNIT> {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }
}

impl<const N: usize, const UNIT: u64> Histogram<N, UNIT> {
    fn record(&self, bounds: &[f64; N], value: f64) {
        if let Some(i) = bounds.iter().position(|&le| value <= le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add((value * UNIT as f64) as u64, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Writes the `_bucket`, `_sum` and `_count` samples of `name`.
    fn write(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64; N]) {
        let mut cumulative = 0;
        for (bucket, le) in self.buckets.iter().zip(bounds) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum.load(Ordering::Relaxed) as f64 / UNIT as f64;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// A set of call metrics, shared by the layers that record into it. Cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    calls: RwLock<Map<MethodKey, Calls>>,
    /// Durations of calls that failed, by status.
    failed: RwLock<Map<StatusKey, Durations>>,
    /// What else the process reports: balancers, breakers, a registry member.
    collectors: RwLock<Vec<Collector>>,
}

/// Writes series of its own at every scrape.
type Collector = Box<dyn Fn(&mut Exposition<'_>) + Send + Sync>;

/// Writes series other than call metrics into a scrape; see [`Metrics::collect`].
pub struct Exposition<'a> {
    out: &'a mut String,
}

impl Exposition<'_> {
    /// Starts a family of series: `kind` is `counter`, `gauge` or `histogram`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample; label values are escaped here.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            let _ = write!(self.out, "{{{}}}", label_list(labels));
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// The samples of a histogram of `latencies` (its family started as `histogram`).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], latencies: &Latencies) {
        latencies.0.write(self.out, name, &label_list(labels), &BUCKETS);
    }
}

/// `key="value",...`, values escaped.
fn label_list(labels: &[(&str, &str)]) -> String {
    let pairs: Vec<String> = labels.iter().map(|(key, value)| format!("{key}=\"{}\"", escape(value))).collect();
    pairs.join(",")
}

/// Durations of something other than calls that a collector reports (a disk write, say), in
/// the call duration buckets; see [`Exposition::histogram`].
#[derive(Default)]
pub struct Latencies(Durations);

impl Latencies {
    /// Records one duration.
    pub fn record(&self, duration: std::time::Duration) {
        self.0.record(&BUCKETS, duration.as_secs_f64());
    }
}

impl std::fmt::Debug for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latencies").field("count", &self.0.count()).finish()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let methods = self.inner.calls.read().map_or(0, |c| c.len());
        f.debug_struct("Metrics").field("methods", &methods).finish()
    }
}

/// Gets or inserts `key` in `map`: a read lock on the path of every call, the write lock once
/// per new series.
fn series<K: std::hash::Hash + Eq + Clone, V: Default>(map: &RwLock<Map<K, V>>, key: &K) -> Arc<V> {
    if let Some(found) = map.read().unwrap_or_else(|e| e.into_inner()).get(key) {
        return found.clone();
    }
    map.write().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone()
}

impl Metrics {
    /// No calls recorded yet.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    fn start(&self, key: &MethodKey, request_size: Option<usize>) -> Arc<Calls> {
        let calls = series(&self.inner.calls, key);
        calls.started.fetch_add(1, Ordering::Relaxed);
        calls.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Some(size) = request_size {
            calls.request_size.record(&SIZE_BUCKETS, size as f64);
        }
        calls
    }

    /// Records how a call ended: `Ok(reply size)` or the failure's code.
    fn finish(&self, key: MethodKey, calls: &Calls, outcome: Result<usize, Code>, seconds: f64) {
        calls.in_flight.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Ok(size) => {
                calls.ok.record(&BUCKETS, seconds);
                calls.response_size.record(&SIZE_BUCKETS, size as f64);
            }
            Err(code) => series(&self.inner.failed, &(key, Some(code))).record(&BUCKETS, seconds),
        }
    }

    /// Adds `collector`, called at every scrape to write series of its own after the call
    /// metrics. It lives as long as these metrics: one that reports on something dropped
    /// should hold a `Weak` and write nothing once it is gone.
    pub fn collect(&self, collector: impl Fn(&mut Exposition<'_>) + Send + Sync + 'static) {
        self.inner.collectors.write().unwrap_or_else(|e| e.into_inner()).push(Box::new(collector));
    }

    /// Every series in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut out = self.render_calls();
        for collector in self.inner.collectors.read().unwrap_or_else(|e| e.into_inner()).iter() {
            collector(&mut Exposition { out: &mut out });
        }
        out
    }

    fn render_calls(&self) -> String {
        let mut out = String::new();
        let calls = self.inner.calls.read().unwrap_or_else(|e| e.into_inner());
        let mut calls: Vec<_> = calls.iter().collect();
        calls.sort_by(|a, b| a.0.cmp_key(b.0));
        let failed = self.inner.failed.read().unwrap_or_else(|e| e.into_inner());
        let ok = calls.iter().map(|(key, c)| ((*key).clone(), None, &c.ok)).filter(|(_, _, h)| h.count() > 0);
        let mut durations: Vec<(StatusKey, &Durations)> =
            ok.map(|(key, code, h)| ((key, code), h)).chain(failed.iter().map(|(k, h)| (k.clone(), &**h))).collect();
        durations.sort_by(|a, b| a.0 .0.cmp_key(&b.0 .0).then_with(|| status(a.0 .1).cmp(status(b.0 .1))));
        for side in [Side::Server, Side::Client] {
            let name = side.name();
            let _ = writeln!(out, "# HELP rpc_{name}_calls_started_total Calls started.");
            let _ = writeln!(out, "# TYPE rpc_{name}_calls_started_total counter");
            for ((_, service, method), c) in calls.iter().filter(|(k, _)| k.0 == side) {
                let labels = labels(service, method);
                let _ =
                    writeln!(out, "rpc_{name}_calls_started_total{{{labels}}} {}", c.started.load(Ordering::Relaxed));
            }
            let _ = writeln!(out, "# HELP rpc_{name}_calls_in_flight Calls started and not yet finished.");
            let _ = writeln!(out, "# TYPE rpc_{name}_calls_in_flight gauge");
            for ((_, service, method), c) in calls.iter().filter(|(k, _)| k.0 == side) {
                let labels = labels(service, method);
                let _ = writeln!(out, "rpc_{name}_calls_in_flight{{{labels}}} {}", c.in_flight.load(Ordering::Relaxed));
            }
            let _ = writeln!(out, "# HELP rpc_{name}_call_duration_seconds Duration of finished calls, by status.");
            let _ = writeln!(out, "# TYPE rpc_{name}_call_duration_seconds histogram");
            let family = format!("rpc_{name}_call_duration_seconds");
            for (((_, service, method), code), h) in durations.iter().filter(|(k, _)| k.0 .0 == side) {
                let labels = format!("{},rpc_response_status_code=\"{}\"", labels(service, method), status(*code));
                h.write(&mut out, &family, &labels, &BUCKETS);
            }
            for (which, help, size) in [
                ("request", "Encoded arguments of calls.", (|c: &Calls| &c.request_size) as fn(&Calls) -> &Sizes),
                ("response", "Encoded results of calls that succeeded.", |c: &Calls| &c.response_size),
            ] {
                let family = format!("rpc_{name}_{which}_size_bytes");
                let mut sized = calls.iter().filter(|(k, c)| k.0 == side && size(c).count() > 0).peekable();
                if sized.peek().is_none() {
                    continue;
                }
                let _ = writeln!(out, "# HELP {family} {help}");
                let _ = writeln!(out, "# TYPE {family} histogram");
                for ((_, service, method), c) in sized {
                    size(c).write(&mut out, &family, &labels(service, method), &SIZE_BUCKETS);
                }
            }
        }
        out
    }
}

trait CmpKey {
    fn cmp_key(&self, other: &Self) -> std::cmp::Ordering;
}

impl CmpKey for MethodKey {
    fn cmp_key(&self, other: &Self) -> std::cmp::Ordering {
        (self.0 == Side::Client, &*self.1, &*self.2).cmp(&(other.0 == Side::Client, &*other.1, &*other.2))
    }
}

/// The status label: `OK`, or the code's name.
fn status(code: Option<Code>) -> &'static str {
    code.map_or("OK", Code::name)
}

fn labels(service: &str, method: &str) -> String {
    format!("rpc_system=\"rpc\",rpc_service=\"{}\",rpc_method=\"{}\"", escape(service), escape(method))
}

/// Escapes a label value as the text format requires.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Records every call through the service it wraps into a [`Metrics`]: on a server
/// (`Server::builder().layer(MetricsLayer::server(m))`) or a client stack.
#[derive(Clone, Debug)]
pub struct MetricsLayer {
    metrics: Metrics,
    side: Side,
}

impl MetricsLayer {
    /// Records the server side of calls (`rpc_server_*`).
    pub fn server(metrics: Metrics) -> MetricsLayer {
        MetricsLayer { metrics, side: Side::Server }
    }

    /// Records the client side of calls (`rpc_client_*`).
    pub fn client(metrics: Metrics) -> MetricsLayer {
        MetricsLayer { metrics, side: Side::Client }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered { inner, metrics: Some(self.metrics.clone()), side: self.side }
    }
}

/// The service of [`MetricsLayer`]; records nothing without metrics.
#[derive(Clone, Debug)]
pub struct Metered<S> {
    inner: S,
    metrics: Option<Metrics>,
    side: Side,
}

impl<S> Metered<S> {
    /// `inner`, recording a server's calls into `metrics` if there are any.
    pub(crate) fn server(inner: S, metrics: Option<Metrics>) -> Metered<S> {
        Metered { inner, metrics, side: Side::Server }
    }
}

impl<S, R, T> Service<R> for Metered<S>
where
    S: Service<R, Response = T, Error = Status>,
    R: CallInfo,
    T: ReplySize,
{
    type Response = T;
    type Error = Status;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let record = self.metrics.as_ref().map(|metrics| {
            let key = (self.side, request.service().clone(), request.method().clone());
            let calls = metrics.start(&key, request.request_size());
            Record { metrics: metrics.clone(), key: Some(key), calls, started: Instant::now() }
        });
        MeteredFuture { inner: self.inner.call(request), record }
    }
}

/// A call being recorded; records how it ended if dropped before it finished.
struct Record {
    metrics: Metrics,
    key: Option<MethodKey>,
    calls: Arc<Calls>,
    started: Instant,
}

impl Record {
    fn finish(&mut self, outcome: Result<usize, Code>) {
        if let Some(key) = self.key.take() {
            self.metrics.finish(key, &self.calls, outcome, self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        // Dropped unfinished: the caller gave up.
        self.finish(Err(Code::Cancelled));
    }
}

pin_project! {
    /// The future of [`Metered`].
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        record: Option<Record>,
    }
}

impl<F, T> Future for MeteredFuture<F>
where
    F: Future<Output = Result<T, Status>>,
    T: ReplySize,
{
    type Output = Result<T, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let inner = this.inner;
        let Some(record) = this.record else {
            return inner.poll(cx);
        };
        // A handler that panics is answered with INTERNAL further out; record it so here.
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx)));
        let outcome = match polled {
            Ok(polled) => std::task::ready!(polled),
            Err(panic) => {
                record.finish(Err(Code::Internal));
                std::panic::resume_unwind(panic)
            }
        };
        record.finish(outcome.as_ref().map(ReplySize::reply_size).map_err(Status::code));
        Poll::Ready(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_has_counters_gauges_and_cumulative_buckets_by_status() {
        let metrics = Metrics::new();
        let key = (Side::Server, ByteStr::from("Orders"), ByteStr::from("get"));
        for (outcome, seconds) in [(Ok(10), 0.0001), (Ok(5000), 0.02), (Err(Code::Unavailable), 2.0)] {
            let calls = metrics.start(&key, Some(100));
            metrics.finish(key.clone(), &calls, outcome, seconds);
        }
        metrics.start(&key, Some(100));
        let text = metrics.render();
        let labels = r#"rpc_system="rpc",rpc_service="Orders",rpc_method="get""#;
        assert!(text.contains(&format!("rpc_server_calls_started_total{{{labels}}} 4")), "{text}");
        assert!(text.contains(&format!("rpc_server_calls_in_flight{{{labels}}} 1")), "{text}");
        let ok = format!(r#"{labels},rpc_response_status_code="OK""#);
        assert!(text.contains(&format!(r#"rpc_server_call_duration_seconds_bucket{{{ok},le="0.0005"}} 1"#)), "{text}");
        assert!(text.contains(&format!(r#"rpc_server_call_duration_seconds_bucket{{{ok},le="0.025"}} 2"#)), "{text}");
        assert!(text.contains(&format!(r#"rpc_server_call_duration_seconds_count{{{ok}}} 2"#)), "{text}");
        assert!(text.contains("# TYPE rpc_client_call_duration_seconds histogram"), "{text}");
        assert!(text.contains(&format!(r#"rpc_server_request_size_bytes_bucket{{{labels},le="64"}} 0"#)), "{text}");
        assert!(text.contains(&format!(r#"rpc_server_request_size_bytes_count{{{labels}}} 4"#)), "{text}");
        assert!(text.contains(&format!(r#"rpc_server_response_size_bytes_bucket{{{labels},le="64"}} 1"#)), "{text}");
        assert!(text.contains(&format!(r#"rpc_server_response_size_bytes_sum{{{labels}}} 5010"#)), "{text}");
        assert!(!text.contains("rpc_client_request_size_bytes"), "a client does not know its encoded sizes: {text}");
    }
}
