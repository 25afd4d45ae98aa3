//! Distributed tracing over real sockets: a trace followed through two services into JSON log
//! lines and to an OpenTelemetry collector over OTLP/HTTP, and a trace a foreign caller started
//! continued. Alone in its test binary because the subscriber is process-wide.

use rpc_core::{
    trace::{TraceContext, TraceLayer, Traced},
    Channel, Context, Server, TRACEPARENT,
};
use std::sync::{Mutex, OnceLock};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tower::Layer;
use tracing_subscriber::prelude::*;

/// The last hop of a traced chain; logs inside its handler.
#[rpc_core::service]
trait Back {
    async fn leaf(&self) -> String;
}

/// The first hop; calls [`Back`].
#[rpc_core::service]
trait Front {
    async fn hop(&self) -> String;
}

struct BackImpl;

impl Back for BackImpl {
    async fn leaf(&self) -> String {
        tracing::info!("inside the leaf handler");
        Context::current().and_then(|c| c.trace()).map(|t| t.to_string()).unwrap_or_default()
    }
}

struct FrontImpl {
    back: BackClient<Traced<Channel>>,
}

impl Front for FrontImpl {
    async fn hop(&self) -> String {
        self.back.leaf().await.unwrap()
    }
}

/// A `Write` the test reads back: the JSON lines a log shipper would get.
#[derive(Clone, Default)]
struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn parsed(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// Everything the tests in this binary emit: JSON log lines, and the spans a collector got.
struct Sinks {
    lines: Lines,
    /// Taken by the one test that reads it.
    exported: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>>>,
}

/// Installs the process's subscriber once: JSON lines, and OTLP export to a collector this
/// test runs. Both live on a runtime of their own, which outlives every test's.
fn sinks() -> &'static Sinks {
    static SINKS: OnceLock<Sinks> = OnceLock::new();
    SINKS.get_or_init(|| {
        static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        let runtime = RUNTIME.get_or_init(|| tokio::runtime::Runtime::new().unwrap());
        let _entered = runtime.enter();
        let (collector, exported) = tokio::sync::mpsc::unbounded_channel();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        tokio::spawn(collect(tokio::net::TcpListener::from_std(listener).unwrap(), collector));
        let lines = Lines::default();
        let writer = lines.clone();
        let json = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(move || writer.clone())
            .with_filter(tracing_subscriber::filter::LevelFilter::DEBUG);
        let otlp = rpc_core::otlp::OtlpLayer::new(&endpoint, "traces-test").unwrap();
        tracing_subscriber::registry().with(json).with(otlp.with_filter(rpc_core::otlp::call_spans())).init();
        Sinks { lines, exported: Mutex::new(Some(exported)) }
    })
}

/// A collector: takes `POST /v1/traces` requests and passes on their JSON bodies.
async fn collect(listener: tokio::net::TcpListener, bodies: tokio::sync::mpsc::UnboundedSender<serde_json::Value>) {
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let mut stream = tokio::io::BufReader::new(stream);
        let mut length = 0;
        let mut request_line = String::new();
        stream.read_line(&mut request_line).await.unwrap();
        assert!(request_line.starts_with("POST /v1/traces "), "{request_line}");
        loop {
            let mut header = String::new();
            stream.read_line(&mut header).await.unwrap();
            if header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.unwrap();
        stream.get_mut().write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").await.unwrap();
        let _ = bodies.send(serde_json::from_slice(&body).unwrap());
    }
}

#[tokio::test]
async fn a_trace_follows_a_call_through_two_services_into_json_logs_and_a_collector() {
    let lines = &sinks().lines;

    let back = Server::builder()
        .layer(TraceLayer::new())
        .add_service(BackServer::new(BackImpl))
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let to_back = TraceLayer::new().layer(Channel::connect(back.local_addr()).await.unwrap());
    let front = Server::builder()
        .layer(TraceLayer::new())
        .add_service(FrontServer::new(FrontImpl { back: BackClient::new(to_back) }))
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let client = FrontClient::new(TraceLayer::new().layer(Channel::connect(front.local_addr()).await.unwrap()));
    let leaf_trace = TraceContext::parse(&client.hop().await.unwrap()).expect("the leaf handler was traced");

    // One finished-call line per span, each naming its span's ids.
    let logs = lines.parsed();
    // Other tests log here too: only this call's trace counts.
    let trace_id = format!("{:032x}", leaf_trace.trace_id());
    let spans: Vec<&serde_json::Value> = logs
        .iter()
        .filter(|l| l["fields"]["message"] == "call finished" && l["span"]["trace_id"] == trace_id.as_str())
        .map(|l| &l["span"])
        .collect();
    let by = |kind: &str, name: &str| {
        spans
            .iter()
            .find(|s| s["otel.kind"] == kind && s["otel.name"] == name)
            .unwrap_or_else(|| panic!("no {kind} span of {name} in {logs:#?}"))
    };
    let (client_hop, server_hop) = (by("client", "Front/hop"), by("server", "Front/hop"));
    let (client_leaf, server_leaf) = (by("client", "Back/leaf"), by("server", "Back/leaf"));
    for span in [client_hop, server_hop, client_leaf, server_leaf] {
        assert_eq!(span["trace_id"], trace_id.as_str(), "one trace across both services: {span}");
    }
    assert!(client_hop.get("parent_id").is_none(), "the first caller starts the trace");
    assert_eq!(server_hop["parent_id"], client_hop["span_id"]);
    assert_eq!(client_leaf["parent_id"], server_hop["span_id"]);
    assert_eq!(server_leaf["parent_id"], client_leaf["span_id"]);
    assert_eq!(server_leaf["span_id"], format!("{:016x}", leaf_trace.span_id()).as_str());
    assert_eq!(server_leaf["rpc.response.status_code"], "OK");
    assert_eq!(server_leaf["rpc.service"], "Back");

    // A line the handler logged names the span it ran in.
    let handler_line = logs
        .iter()
        .find(|l| l["fields"]["message"] == "inside the leaf handler" && l["span"]["trace_id"] == trace_id.as_str())
        .unwrap_or_else(|| panic!("the handler's line is missing from {logs:#?}"));
    assert_eq!(handler_line["span"]["span_id"], server_leaf["span_id"]);

    // The collector gets the same four spans, as OTLP says: ids in hex, kinds, parents, status.
    let mut exported: Vec<serde_json::Value> = Vec::new();
    let ours = |spans: &[serde_json::Value]| spans.iter().filter(|s| s["traceId"] == trace_id.as_str()).count();
    let mut bodies = sinks().exported.lock().unwrap().take().expect("one test reads the collector");
    while ours(&exported) < 4 {
        let body = tokio::time::timeout(std::time::Duration::from_secs(10), bodies.recv())
            .await
            .expect("the collector got every span of the trace")
            .unwrap();
        let resource = &body["resourceSpans"][0];
        assert_eq!(resource["resource"]["attributes"][0]["value"]["stringValue"], "traces-test");
        exported.extend(resource["scopeSpans"][0]["spans"].as_array().unwrap().iter().cloned());
    }
    let exported_span = |kind: u64, name: &str| {
        exported
            .iter()
            .find(|s| s["traceId"] == trace_id.as_str() && s["kind"] == kind && s["name"] == name)
            .unwrap_or_else(|| panic!("no span {name} of kind {kind} in {exported:#?}"))
    };
    let (server, client) = (exported_span(2, "Back/leaf"), exported_span(3, "Back/leaf"));
    assert_eq!(server["spanId"], server_leaf["span_id"]);
    assert_eq!(server["parentSpanId"], client["spanId"]);
    assert_eq!(client["parentSpanId"], server_hop["span_id"]);
    assert!(exported_span(3, "Front/hop").get("parentSpanId").is_none(), "the root has no parent");
    assert_eq!(server["status"]["code"], 1);
    let start: u64 = server["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u64 = server["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(start > 0 && end >= start);
    let attribute = |key: &str| {
        server["attributes"].as_array().unwrap().iter().find(|a| a["key"] == key).map(|a| a["value"].clone())
    };
    assert_eq!(attribute("rpc.service").unwrap()["stringValue"], "Back");
    assert_eq!(attribute("rpc.method").unwrap()["stringValue"], "leaf");
    assert!(attribute("rpc.response.size").unwrap()["intValue"].as_str().is_some());
}

#[tokio::test]
async fn a_server_continues_the_trace_a_foreign_caller_sent() {
    sinks();
    let back = Server::builder()
        .layer(TraceLayer::new())
        .add_service(BackServer::new(BackImpl))
        .start("127.0.0.1:0")
        .await
        .unwrap();
    // No client span: the header arrives exactly as a foreign caller wrote it.
    let client = BackClient::new(Channel::connect(back.local_addr()).await.unwrap());
    let sent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let seen = TraceContext::parse(&client.leaf().metadata(TRACEPARENT, sent).await.unwrap()).unwrap();
    assert_eq!(seen.trace_id(), 0x0af7651916cd43dd8448eb211c80319c);
    assert_ne!(seen.span_id(), 0xb7ad6b7169203331, "the server's span is a child, not the caller's span");

    // Garbage starts a new trace rather than failing the call.
    let fresh = TraceContext::parse(&client.leaf().metadata(TRACEPARENT, "00-zz").await.unwrap()).unwrap();
    assert_ne!(fresh.trace_id(), 0x0af7651916cd43dd8448eb211c80319c);
}
