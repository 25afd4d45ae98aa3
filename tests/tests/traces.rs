//! Distributed tracing over real sockets: a trace followed through two services into JSON log
//! lines, and a trace a foreign caller started continued. Alone in its test binary because the
//! log subscriber is process-wide.

use rpc_core::{
    trace::{TraceContext, TraceLayer, Traced},
    Channel, Context, Server, TRACEPARENT,
};
use std::sync::OnceLock;
use tower::Layer;

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

/// What every test in this binary logs, as JSON lines.
fn logs() -> &'static Lines {
    static LINES: OnceLock<Lines> = OnceLock::new();
    LINES.get_or_init(|| {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::DEBUG)
            .with_current_span(true)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber in this binary");
        lines
    })
}

#[tokio::test]
async fn a_trace_follows_a_call_through_two_services_into_json_logs() {
    let lines = logs();

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
}

#[tokio::test]
async fn a_server_continues_the_trace_a_foreign_caller_sent() {
    logs();
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
