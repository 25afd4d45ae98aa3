//! The baseline: a hand-written multiplexed service on tokio doing the same work per call.
//!
//! It does what any multiplexed client and server must and nothing more: a table of waiting
//! calls, a writer task that coalesces frames the way the framework's does, a reader task, and
//! the same codec encoding the request and decoding the reply on the client, decoding the
//! request and encoding the reply on the server. No header beyond an id, no metadata, no
//! handler task, no dispatch. Frames are `u32 length | u64 id | payload`.

use super::rpc::BenchRequest;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use rpc_core::Codec;
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>>;

/// A multiplexed connection to the raw server.
pub(crate) struct RawClient {
    tx: mpsc::Sender<Bytes>,
    waiting: Waiting,
    next: AtomicU64,
    codec: Codec,
}

impl RawClient {
    pub(crate) async fn connect(addr: SocketAddr, codec: Codec) -> std::io::Result<RawClient> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut read, mut write) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
        let waiting: Waiting = Arc::default();
        let writer_waiting = waiting.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(256);
            let mut buf = BytesMut::with_capacity(16 * 1024);
            while rx.recv_many(&mut batch, 256).await > 0 {
                // The framework's gathering: with other calls in flight, give the callers their
                // replies woke two scheduler passes to add their next frames to this write.
                let in_flight = writer_waiting.lock().unwrap_or_else(|e| e.into_inner()).len();
                if in_flight > batch.len() || batch.len() > 1 {
                    tokio::task::yield_now().await;
                    tokio::task::yield_now().await;
                    while batch.len() < 256 {
                        let Ok(frame) = rx.try_recv() else { break };
                        batch.push(frame);
                    }
                }
                for frame in batch.drain(..) {
                    buf.extend_from_slice(&frame);
                }
                if write.write_all_buf(&mut buf).await.is_err() {
                    break;
                }
            }
        });
        let reader_waiting = waiting.clone();
        tokio::spawn(async move {
            let mut frames = LengthDelimitedCodec::new();
            let mut buf = BytesMut::with_capacity(16 * 1024);
            loop {
                while let Ok(Some(mut frame)) = frames.decode(&mut buf) {
                    let id = frame.get_u64();
                    let tx = reader_waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    if let Some(tx) = tx {
                        let _ = tx.send(frame.freeze());
                    }
                }
                match read.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        });
        Ok(RawClient { tx, waiting, next: AtomicU64::new(0), codec })
    }

    /// Sends `request` and decodes the reply.
    pub(crate) async fn call(&self, request: &BenchRequest) -> Option<BenchRequest> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut frame = BytesMut::with_capacity(256);
        frame.put_u32(0);
        frame.put_u64(id);
        self.codec.encode(request, &mut frame).ok()?;
        let len = frame.len() as u32 - 4;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        self.tx.send(frame.freeze()).await.ok()?;
        self.codec.decode(&rx.await.ok()?).ok()
    }
}

/// Answers every request on the connection it came from with the request, decoded and
/// encoded again in `codec`.
pub(crate) async fn serve(listener: TcpListener, codec: Codec) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let (mut read, mut write) = stream.into_split();
            let mut frames = LengthDelimitedCodec::new();
            let mut inbuf = BytesMut::with_capacity(16 * 1024);
            let mut outbuf = BytesMut::with_capacity(16 * 1024);
            loop {
                while let Ok(Some(mut frame)) = frames.decode(&mut inbuf) {
                    let id = frame.get_u64();
                    let Ok(request) = codec.decode::<BenchRequest>(&frame) else { return };
                    let start = outbuf.len();
                    outbuf.put_u32(0);
                    outbuf.put_u64(id);
                    if codec.encode(&request, &mut outbuf).is_err() {
                        return;
                    }
                    let len = (outbuf.len() - start - 4) as u32;
                    outbuf[start..start + 4].copy_from_slice(&len.to_be_bytes());
                }
                if !outbuf.is_empty() && write.write_all_buf(&mut outbuf).await.is_err() {
                    break;
                }
                match read.read_buf(&mut inbuf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        });
    }
}
