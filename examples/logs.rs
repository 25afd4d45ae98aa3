//! Streaming methods: a server stream, a client stream and a bidirectional one.
//!
//! Run with `cargo run -p examples --example logs`.

use futures_util::{stream, StreamExt};
use rpc_core::{Channel, RpcStream, Server, Streaming};

/// One line of a log.
#[rpc_core::message]
#[derive(Clone, Debug)]
pub struct Line {
    seq: u64,
    text: String,
}

/// A line the service refuses to echo.
#[rpc_core::message]
#[derive(Debug)]
pub struct Oops {
    seq: u64,
}

/// A log that can be tailed, appended to and echoed.
#[rpc_core::service]
pub trait Logs {
    /// `count` lines from `from` on.
    async fn tail(&self, from: u64, count: u64) -> RpcStream<Line>;
    /// Counts the lines the caller sends.
    async fn upload(&self, lines: Streaming<Line>) -> u64;
    /// Sends each line back as it arrives, refusing empty ones.
    async fn echo(&self, lines: Streaming<Line>) -> RpcStream<Result<Line, Oops>>;
}

struct Log;

impl Logs for Log {
    async fn tail(&self, from: u64, count: u64) -> RpcStream<Line> {
        RpcStream::iter((from..from + count).map(|seq| Line { seq, text: format!("line {seq}") }))
    }

    async fn upload(&self, lines: Streaming<Line>) -> u64 {
        lines.filter(|line| std::future::ready(line.is_ok())).count().await as u64
    }

    async fn echo(&self, lines: Streaming<Line>) -> RpcStream<Result<Line, Oops>> {
        // A transport failure ends the echo; the caller sees it as the stream's status.
        RpcStream::new(lines.take_while(|line| std::future::ready(line.is_ok())).filter_map(|line| {
            std::future::ready(line.ok().map(|line| match line.text.is_empty() {
                true => Err(Oops { seq: line.seq }),
                false => Ok(line),
            }))
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::builder().add_service(LogsServer::new(Log)).start("127.0.0.1:0").await?;
    let logs = LogsClient::new(Channel::connect(server.local_addr().to_string()).await?);

    let mut lines = logs.tail(10, 3).await?;
    while let Some(line) = lines.next().await {
        println!("tail:   {:?}", line?);
    }

    let batch: Vec<Line> = (0..1000).map(|seq| Line { seq, text: "x".into() }).collect();
    println!("upload: the server counted {} lines", logs.upload(stream::iter(batch)).await?);

    let sent = ["a", "", "c"].map(|text| Line { seq: 0, text: text.into() });
    let mut echoed = logs.echo(stream::iter(sent)).await?;
    while let Some(reply) = echoed.next().await {
        println!("echo:   {:?}", reply?);
    }

    server.shutdown(std::time::Duration::from_secs(1)).await?;
    Ok(())
}
