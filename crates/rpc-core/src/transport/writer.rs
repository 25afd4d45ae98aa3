//! Moving frames between a socket and the tasks of a connection.
//!
//! Writes coalesce: every frame queued while the previous write was in progress goes out in the
//! next single `write`, so a connection under load makes one syscall for many frames.

use super::{expects_answer, Frame, FrameCodec, FrameError};
use bytes::BytesMut;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};
use tokio_util::codec::{Decoder, Encoder};

/// Most frames taken from a queue per wake-up.
pub(crate) const BATCH: usize = 256;
/// Bytes gathered before a write even if more frames are waiting, to bound the buffer.
const FLUSH_AT: usize = 256 * 1024;

/// Encodes frames into one buffer and writes it with as few syscalls as possible.
pub(crate) struct FrameWriter<W> {
    io: W,
    codec: FrameCodec,
    buf: BytesMut,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) fn new(io: W, codec: FrameCodec) -> Self {
        FrameWriter { io, codec, buf: BytesMut::with_capacity(16 * 1024) }
    }

    /// Queues `frame`; writes right away only once the buffer is large.
    pub(crate) async fn push(&mut self, frame: Frame) -> Result<(), FrameError> {
        self.codec.encode(frame, &mut self.buf)?;
        if self.buf.len() >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }

    /// Queues bytes that are already a frame, or the client's preface.
    pub(crate) fn push_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Writes everything queued.
    pub(crate) async fn flush(&mut self) -> Result<(), FrameError> {
        while !self.buf.is_empty() {
            self.io.write_all_buf(&mut self.buf).await?;
        }
        Ok(())
    }

    /// Flushes, then closes the write side.
    pub(crate) async fn shutdown(&mut self) -> Result<(), FrameError> {
        self.flush().await?;
        self.io.shutdown().await?;
        Ok(())
    }
}

/// Writes queued, already encoded frames to `io` until every sender is gone, then shuts the
/// write side down. `first` is written before any frame (the client's preface).
///
/// `calls_finished` counts calls that got their reply or were abandoned; with the calls this
/// loop wrote, it tells whether other calls are in flight.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    io: W,
    mut rx: mpsc::Receiver<BytesMut>,
    codec: FrameCodec,
    first: &[u8],
    calls_finished: &AtomicU64,
) -> Result<(), FrameError> {
    let mut writer = FrameWriter::new(io, codec);
    writer.push_raw(first);
    let mut batch = Vec::with_capacity(BATCH);
    let mut calls_written = 0u64;
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // Calls in flight come back in batches, and their callers send the next calls moments
        // apart. Yielding once lets those calls join this write: one syscall, and one wake-up
        // of the server, instead of many. A lone caller is never delayed.
        let others_in_flight = calls_written.wrapping_sub(calls_finished.load(Ordering::Relaxed)) as i64 > 0;
        if others_in_flight || batch.len() > 1 {
            tokio::task::yield_now().await;
            while batch.len() < BATCH {
                let Ok(frame) = rx.try_recv() else { break };
                batch.push(frame);
            }
        }
        for frame in batch.drain(..) {
            calls_written += u64::from(expects_answer(&frame));
            writer.push_raw(&frame);
            if writer.buf.len() >= FLUSH_AT {
                writer.flush().await?;
            }
        }
        writer.flush().await?;
    }
    writer.shutdown().await
}

/// Reads frames from a socket through [`FrameCodec`].
pub(crate) struct FrameReader<R> {
    io: R,
    codec: FrameCodec,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, codec: FrameCodec) -> Self {
        FrameReader { io, codec, buf: BytesMut::with_capacity(16 * 1024) }
    }

    /// The next frame; `None` on a clean end of stream between frames.
    ///
    /// Cancel safe: a frame partly read stays buffered for the next call.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return match self.buf.len() {
                    0 => Ok(None),
                    n => Err(FrameError::Malformed(format!("connection closed inside a frame ({n} bytes pending)"))),
                };
            }
        }
    }

    /// A frame already buffered, without reading from the socket.
    pub(crate) fn try_next(&mut self) -> Result<Option<Frame>, FrameError> {
        self.codec.decode(&mut self.buf)
    }

    /// The socket and the bytes read from it but not yet decoded, to hand the connection to
    /// another protocol (Apache Thrift).
    pub(crate) fn into_parts(self) -> (R, BytesMut) {
        (self.io, self.buf)
    }

    /// The connection's first eight bytes.
    pub(crate) async fn preface(&mut self) -> Result<[u8; 8], FrameError> {
        while self.buf.len() < 8 {
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(FrameError::BadPreface(format!("connection closed after {} bytes", self.buf.len())));
            }
        }
        let mut preface = [0; 8];
        preface.copy_from_slice(&self.buf.split_to(8));
        Ok(preface)
    }
}
