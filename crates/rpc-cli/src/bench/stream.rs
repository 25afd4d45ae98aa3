//! `rpc bench stream`: a server stream of the benchmark request over loopback, beside a raw
//! baseline that streams the same bytes over one connection.
//!
//! Both run in this process on the same runtime and do the same work per item: the server
//! builds the item and encodes it with the codec, the client decodes it. The raw server writes
//! length-prefixed items through one buffer of up to 256 KiB per write, the raw client splits
//! them with tokio-util's length-delimited codec. So the ratio is what the framework adds:
//! frames, flow control, the hops between tasks.

use super::{report::quantile, rpc::BenchRequest};
use crate::CliResult;
use bytes::{BufMut, BytesMut};
use futures_util::StreamExt;
use rpc_core::{Channel, Codec, RpcStream, Server};
use std::net::SocketAddr;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::Instant,
};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

/// A service that streams the benchmark request.
#[rpc_core::service]
pub(crate) trait StreamBench {
    /// `count` copies of the benchmark request.
    async fn items(&self, count: u64) -> RpcStream<BenchRequest>;
}

struct Source;

impl StreamBench for Source {
    async fn items(&self, count: u64) -> RpcStream<BenchRequest> {
        RpcStream::iter(std::iter::repeat_n(BenchRequest::sample(), count as usize))
    }
}

#[derive(clap::Args)]
pub(crate) struct StreamBenchArgs {
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Items per stream and round.
    #[arg(long, default_value_t = 200_000)]
    items: u64,
    /// Rounds; each runs both subjects back to back (alternating which goes first). The median
    /// round is reported, and the median of the rounds' ratios.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Codec of the RPC subject.
    #[arg(long, default_value = "protobuf")]
    codec: Codec,
}

#[derive(serde::Serialize)]
struct Row {
    subject: &'static str,
    codec: String,
    items: u64,
    item_bytes: usize,
    items_per_sec: f64,
    mb_per_sec: f64,
    ratio_to_raw: f64,
}

pub(crate) async fn run(args: StreamBenchArgs) -> CliResult {
    let mut encoded = BytesMut::new();
    args.codec.encode(&BenchRequest::sample(), &mut encoded)?;
    let item_bytes = encoded.len();
    let raw_addr = raw_server(args.codec).await?;
    let server = Server::builder().add_service(StreamBenchServer::new(Source)).start("127.0.0.1:0").await?;
    let client =
        StreamBenchClient::new(Channel::builder(server.local_addr().to_string()).codec(args.codec).connect().await?);

    // Warm-up, then rounds that alternate which subject goes first.
    raw_round(raw_addr, args.codec, args.items / 10).await?;
    rpc_round(&client, args.items / 10).await?;
    let (mut raw, mut rpc) = (Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        if round % 2 == 0 {
            raw.push(raw_round(raw_addr, args.codec, args.items).await?);
            rpc.push(rpc_round(&client, args.items).await?);
        } else {
            rpc.push(rpc_round(&client, args.items).await?);
            raw.push(raw_round(raw_addr, args.codec, args.items).await?);
        }
    }
    let mut ratios: Vec<f64> = rpc.iter().zip(&raw).map(|(rpc, raw)| rpc / raw).collect();
    let ratio = quantile(&mut ratios, 0.5);
    let (raw, rpc) = (quantile(&mut raw, 0.5), quantile(&mut rpc, 0.5));
    let row = |subject, rate: f64, ratio_to_raw| Row {
        subject,
        codec: args.codec.to_string(),
        items: args.items,
        item_bytes,
        items_per_sec: rate,
        mb_per_sec: rate * item_bytes as f64 / 1e6,
        ratio_to_raw,
    };
    let rows = [row("raw", raw, 1.0), row("rpc", rpc, ratio)];
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        println!("{:<8} {:<10} {:>10} {:>12} {:>9} {:>7}", "subject", "codec", "item B", "items/s", "MB/s", "/raw");
        for r in &rows {
            println!(
                "{:<8} {:<10} {:>10} {:>12.0} {:>9.1} {:>7.2}",
                r.subject, r.codec, r.item_bytes, r.items_per_sec, r.mb_per_sec, r.ratio_to_raw
            );
        }
    }
    server.shutdown(std::time::Duration::from_secs(1)).await?;
    Ok(())
}

/// Items per second of one stream of `count` items.
async fn rpc_round(client: &StreamBenchClient, count: u64) -> Result<f64, Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    let mut items = client.items(count).await?;
    let mut received = 0;
    while let Some(item) = items.next().await {
        item?;
        received += 1;
    }
    assert_eq!(received, count, "the stream lost items");
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Answers a `u64` count with that many length-prefixed items, each built and encoded anew.
async fn raw_server(codec: Codec) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                while let Ok(count) = stream.read_u64().await {
                    let mut buf = BytesMut::with_capacity(256 * 1024);
                    for item in std::iter::repeat_n(BenchRequest::sample(), count as usize) {
                        let at = buf.len();
                        buf.put_u32(0);
                        if codec.encode(&item, &mut buf).is_err() {
                            return;
                        }
                        let len = (buf.len() - at - 4) as u32;
                        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
                        if buf.len() >= 256 * 1024 && stream.write_all_buf(&mut buf).await.is_err() {
                            return;
                        }
                    }
                    if stream.write_all_buf(&mut buf).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Items per second of one raw stream of `count` items.
async fn raw_round(
    addr: SocketAddr,
    codec: Codec,
    count: u64,
) -> Result<f64, Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_u64(count).await?;
    let mut frames = LengthDelimitedCodec::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut received = 0;
    while received < count {
        while let Some(frame) = frames.decode(&mut buf)? {
            std::hint::black_box(codec.decode::<BenchRequest>(&frame)?);
            received += 1;
        }
        if received < count && stream.read_buf(&mut buf).await? == 0 {
            return Err("the raw server closed the stream early".into());
        }
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}
