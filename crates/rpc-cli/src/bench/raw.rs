//! The baseline: tokio and a length-delimited echo of the same bytes, multiplexed by id.
//!
//! It does what any multiplexed client must (a table of waiting calls, a writer task that
//! coalesces frames, a reader task) and nothing more: no codec, no header, no handler task.
//! Frames are `u32 length | u64 id | payload`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
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

/// A multiplexed connection to the raw echo server.
pub(crate) struct RawClient {
    tx: mpsc::Sender<Bytes>,
    waiting: Waiting,
    next: AtomicU64,
}

impl RawClient {
    pub(crate) async fn connect(addr: SocketAddr) -> std::io::Result<RawClient> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut read, mut write) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(256);
            let mut buf = BytesMut::with_capacity(16 * 1024);
            while rx.recv_many(&mut batch, 256).await > 0 {
                for frame in batch.drain(..) {
                    buf.extend_from_slice(&frame);
                }
                if write.write_all_buf(&mut buf).await.is_err() {
                    break;
                }
            }
        });
        let waiting: Waiting = Arc::default();
        let reader_waiting = waiting.clone();
        tokio::spawn(async move {
            let mut codec = LengthDelimitedCodec::new();
            let mut buf = BytesMut::with_capacity(16 * 1024);
            loop {
                while let Ok(Some(mut frame)) = codec.decode(&mut buf) {
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
        Ok(RawClient { tx, waiting, next: AtomicU64::new(0) })
    }

    /// Sends `payload` and waits for its echo.
    pub(crate) async fn call(&self, payload: &[u8]) -> Option<Bytes> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut frame = BytesMut::with_capacity(12 + payload.len());
        frame.put_u32(8 + payload.len() as u32);
        frame.put_u64(id);
        frame.put_slice(payload);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        self.tx.send(frame.freeze()).await.ok()?;
        rx.await.ok()
    }
}

/// Echoes every frame back on the connection it came from.
pub(crate) async fn serve(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let (mut read, mut write) = stream.into_split();
            let mut codec = LengthDelimitedCodec::new();
            let mut inbuf = BytesMut::with_capacity(16 * 1024);
            let mut outbuf = BytesMut::with_capacity(16 * 1024);
            loop {
                while let Ok(Some(frame)) = codec.decode(&mut inbuf) {
                    outbuf.put_u32(frame.len() as u32);
                    outbuf.put_slice(&frame);
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
