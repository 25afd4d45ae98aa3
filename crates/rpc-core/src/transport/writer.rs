//! Moving frames between a socket and the tasks of a connection.
//!
//! Writes coalesce: frames are gathered in one buffer and written together, so a connection
//! under load makes one syscall for many frames.

use super::{Frame, FrameCodec, FrameError};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

/// Most frames taken from a queue per wake-up.
pub(crate) const BATCH: usize = 256;
/// Bytes gathered before a write even if more frames are waiting, to bound the buffer.
pub(crate) const FLUSH_AT: usize = 256 * 1024;

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

    /// Queues bytes that are already an encoded frame.
    pub(crate) fn push_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Queues frames that are already encoded; writes right away only once the buffer is large.
    pub(crate) async fn push_encoded(&mut self, frames: &[u8]) -> Result<(), FrameError> {
        self.buf.extend_from_slice(frames);
        if self.buf.len() >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
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

/// Reads frames from a socket through [`FrameCodec`].
pub(crate) struct FrameReader<R> {
    io: R,
    codec: FrameCodec,
    buf: BytesMut,
    /// Frames decoded so far.
    frames: u64,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, codec: FrameCodec) -> Self {
        FrameReader { io, codec, buf: BytesMut::with_capacity(16 * 1024), frames: 0 }
    }

    /// Frames decoded so far, and whether part of the next one is buffered: two readings apart
    /// in time with the same count and a part buffered in both mean one frame spanned them.
    pub(crate) fn progress(&self) -> (u64, bool) {
        (self.frames, !self.buf.is_empty())
    }

    /// The next frame; `None` on a clean end of stream between frames.
    ///
    /// Cancel safe: a frame partly read stays buffered for the next call.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf)? {
                self.frames += 1;
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
        let frame = self.codec.decode(&mut self.buf)?;
        self.frames += u64::from(frame.is_some());
        Ok(frame)
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
