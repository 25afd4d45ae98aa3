//! Moving frames between a socket and the tasks of a connection.
//!
//! Writes coalesce: every frame queued while the previous write was in progress goes out in the
//! next single `write`, so a connection under load makes one syscall for many frames.

use super::{Frame, FrameCodec, FrameError};
use bytes::BytesMut;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};
use tokio_util::codec::{Decoder, Encoder};

/// Most frames taken from the queue per wake-up.
const BATCH: usize = 256;
/// Bytes gathered before a write even if more frames are waiting, to bound the buffer.
const FLUSH_AT: usize = 256 * 1024;

/// Writes queued frames to `io` until every sender is gone, then shuts the write side down.
///
/// `first` is written before any frame (the client's preface).
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    mut io: W,
    mut rx: mpsc::Receiver<Frame>,
    mut codec: FrameCodec,
    first: &[u8],
) -> Result<(), FrameError> {
    let mut batch = Vec::with_capacity(BATCH);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    buf.extend_from_slice(first);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        for frame in batch.drain(..) {
            codec.encode(frame, &mut buf)?;
            if buf.len() >= FLUSH_AT {
                io.write_all_buf(&mut buf).await?;
            }
        }
        if !buf.is_empty() {
            io.write_all_buf(&mut buf).await?;
        }
    }
    io.shutdown().await?;
    Ok(())
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
