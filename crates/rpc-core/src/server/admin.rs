//! The admin port of a server ([`ServerBuilder::admin`](super::ServerBuilder::admin)): plain
//! HTTP/1.1 `GET` of `/metrics` (Prometheus text), `/health` (the process serves), `/ready`
//! (it takes calls: 503 once it is shutting down), and at `/` a live [`Dashboard`] of the
//! server's own metrics.
//!
//! [`serve_get`] is its HTTP side, public for other small admin pages (`rpc dashboard` serves
//! with it): one request per connection, bounded in size, time and number of connections.

use crate::{
    dashboard::{Dashboard, Scrape},
    metrics::Metrics,
};
use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{watch, Semaphore},
    time::Instant,
};

/// The largest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a client has to send its request and take the answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once.
const MAX_CONNECTIONS: usize = 64;

/// An answer to a `GET`.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status line after the version, e.g. `200 OK`.
    pub status: &'static str,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Reply {
    /// `200 OK` with `body` as `content_type`.
    pub fn ok(content_type: &'static str, body: impl Into<String>) -> Reply {
        Reply { status: "200 OK", content_type, body: body.into() }
    }

    /// `404 Not Found`, saying what is served instead.
    pub fn not_found(hint: &str) -> Reply {
        Reply { status: "404 Not Found", content_type: "text/plain", body: format!("{hint}\n") }
    }
}

/// Answers `GET`s on `listener` with `handler(path)` (the path without its query) until `stop`
/// resolves.
pub async fn serve_get<H>(listener: TcpListener, handler: H, stop: impl Future<Output = ()>)
where
    H: Fn(&str) -> Reply + Send + Sync + 'static,
{
    let (slots, handler) = (Arc::new(Semaphore::new(MAX_CONNECTIONS)), Arc::new(handler));
    let mut stop = std::pin::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    continue;
                }
            },
            () = &mut stop => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TIMEOUT, answer(stream, &*handler)).await;
            drop(slot);
        });
    }
}

/// How often the admin port's dashboard reads the server's metrics.
const DASHBOARD_INTERVAL: Duration = Duration::from_secs(1);

/// Serves the admin port of the server on `server` until the server is gone.
pub(crate) async fn serve(
    listener: TcpListener,
    server: SocketAddr,
    metrics: Metrics,
    shutdown: watch::Receiver<Option<Instant>>,
) {
    let mut gone = shutdown.clone();
    let dashboard = Dashboard::new(crate::dashboard::default_rules());
    let handler = {
        let (dashboard, metrics) = (dashboard.clone(), metrics.clone());
        move |path: &str| match path {
            "/metrics" => Reply::ok("text/plain; version=0.0.4", metrics.render()),
            "/health" => Reply::ok("text/plain", "ok\n"),
            "/ready" if shutdown.borrow().is_none() => Reply::ok("text/plain", "ready\n"),
            "/ready" => {
                Reply { status: "503 Service Unavailable", content_type: "text/plain", body: "shutting down\n".into() }
            }
            _ => dashboard.reply(path).unwrap_or_else(|| Reply::not_found("try /, /metrics, /health or /ready")),
        }
    };
    let feed = async move {
        let mut ticker = tokio::time::interval(DASHBOARD_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let source = server.to_string();
            dashboard.observe(vec![Scrape { name: format!("server {source}"), source, text: Some(metrics.render()) }]);
        }
    };
    // The sender goes with the server.
    tokio::select! {
        () = serve_get(listener, handler, async move { while gone.changed().await.is_ok() {} }) => {}
        () = feed => {}
    }
}

async fn answer(mut stream: TcpStream, handler: &(dyn Fn(&str) -> Reply + Send + Sync)) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        if request.len() >= MAX_REQUEST {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", "request too large\n")
                .await;
        }
        let mut chunk = [0; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method != "GET" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", "only GET is served here\n").await;
    }
    let reply = handler(path.split('?').next().unwrap_or(""));
    respond(&mut stream, reply.status, reply.content_type, &reply.body).await
}

async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
