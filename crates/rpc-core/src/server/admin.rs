//! The admin port of a server ([`ServerBuilder::admin`](super::ServerBuilder::admin)): plain
//! HTTP/1.1 `GET` of `/metrics` (Prometheus text), `/health` (the process serves) and `/ready`
//! (it takes calls: 503 once it is shutting down). Small on purpose: one request per
//! connection, bounded in size, time and number of connections.

use crate::metrics::Metrics;
use std::{sync::Arc, time::Duration};
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

/// Serves the admin port until the server it belongs to is gone.
pub(crate) async fn serve(listener: TcpListener, metrics: Metrics, mut shutdown: watch::Receiver<Option<Instant>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    continue;
                }
            },
            changed = shutdown.changed() => match changed {
                Ok(()) => continue,
                // The server is gone.
                Err(_) => return,
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let (metrics, ready) = (metrics.clone(), shutdown.borrow().is_none());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TIMEOUT, answer(stream, &metrics, ready)).await;
            drop(slot);
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics, ready: bool) -> std::io::Result<()> {
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
    match path.split('?').next().unwrap_or("") {
        "/metrics" => respond(&mut stream, "200 OK", "text/plain; version=0.0.4", &metrics.render()).await,
        "/health" => respond(&mut stream, "200 OK", "text/plain", "ok\n").await,
        "/ready" if ready => respond(&mut stream, "200 OK", "text/plain", "ready\n").await,
        "/ready" => respond(&mut stream, "503 Service Unavailable", "text/plain", "shutting down\n").await,
        _ => respond(&mut stream, "404 Not Found", "text/plain", "try /metrics, /health or /ready\n").await,
    }
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
