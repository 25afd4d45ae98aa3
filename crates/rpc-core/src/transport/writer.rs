//! Moving frames between a socket and the tasks of a connection.
//!
//! Writes coalesce: frames are gathered in one buffer and written together, so a connection
//! under load makes one syscall for many frames.

use super::{Frame, FrameCodec, FrameError};
use crate::Metadata;
use bytes::BytesMut;
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{OwnedSemaphorePermit, Semaphore},
};
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
        self.queue(&frame)?;
        if self.is_full() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Queues `frame` without writing; check [`FrameWriter::is_full`] after.
    pub(crate) fn queue(&mut self, frame: &Frame) -> Result<(), FrameError> {
        self.codec.encode(frame, &mut self.buf)
    }

    /// Queues a reply frame made from its parts; if it is over the frame limit, nothing is
    /// queued. Check [`FrameWriter::is_full`] after.
    pub(crate) fn put_reply(&mut self, id: u32, codec: u8, metadata: &Metadata, body: &[u8]) -> Result<(), FrameError> {
        super::put_reply(&mut self.buf, id, codec, metadata, body, self.codec.max_frame_size())
    }

    /// Whether enough is queued that it should be written before more is added.
    pub(crate) fn is_full(&self) -> bool {
        self.buf.len() >= FLUSH_AT
    }

    /// Queues bytes that are already an encoded frame.
    pub(crate) fn push_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Queues frames that are already encoded; writes right away only once the buffer is large.
    pub(crate) async fn push_encoded(&mut self, frames: &[u8]) -> Result<(), FrameError> {
        self.buf.extend_from_slice(frames);
        if self.is_full() {
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

/// Frames longer than this take their length from a reader's [`RequestBytes`] before their
/// body is read; shorter ones are bounded by the per-connection buffer and in-flight limit.
pub(crate) const LARGE_FRAME: usize = 64 * 1024;

/// A budget of bytes for large incoming frames, shared by the connections of a server: a
/// reader takes a large frame's declared length from it before reading the frame's body, and
/// gives it back when the permit it hands out with the frame is dropped (once the call that
/// frame carried is done).
#[derive(Clone)]
pub(crate) struct RequestBytes {
    permits: Arc<Semaphore>,
    max: usize,
    /// Readers waiting for bytes right now.
    waiting: Arc<AtomicUsize>,
}

impl RequestBytes {
    pub(crate) fn new(max: usize) -> Self {
        let max = max.clamp(LARGE_FRAME, Semaphore::MAX_PERMITS);
        RequestBytes { permits: Arc::new(Semaphore::new(max)), max, waiting: Arc::default() }
    }

    /// Bytes taken now.
    pub(crate) fn held(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// Readers waiting for bytes now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Takes `len` bytes (at most the whole budget, so one frame can always be read), waiting
    /// until they are free.
    pub(crate) async fn take(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(len.min(self.max)).unwrap_or(u32::MAX);
        if let Ok(permit) = self.permits.clone().try_acquire_many_owned(n) {
            return Some(permit);
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        // Counted out again even if the read is cancelled while waiting.
        let _waiting = Waiting(&self.waiting);
        self.permits.clone().acquire_many_owned(n).await.ok()
    }
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads frames from a socket through [`FrameCodec`].
pub(crate) struct FrameReader<R> {
    io: R,
    codec: FrameCodec,
    buf: BytesMut,
    /// Frames decoded so far.
    frames: u64,
    /// Where large frames take their bytes from, on a server.
    budget: Option<RequestBytes>,
    /// The bytes taken for the frame being read, and how many bytes of the buffer they cover.
    held: Option<(OwnedSemaphorePermit, usize)>,
    /// The bytes taken for the frame returned last, until its caller takes them.
    last: Option<OwnedSemaphorePermit>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, codec: FrameCodec) -> Self {
        FrameReader {
            io,
            codec,
            buf: BytesMut::with_capacity(16 * 1024),
            frames: 0,
            budget: None,
            held: None,
            last: None,
        }
    }

    /// Makes large frames wait for bytes from `budget` before their body is read.
    pub(crate) fn with_budget(mut self, budget: RequestBytes) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Frames decoded so far, and whether part of the next one is buffered: two readings apart
    /// in time with the same count and a part buffered in both mean one frame spanned them. A
    /// reader waiting for the server's byte budget has no part pending: the wait is not the
    /// peer's.
    pub(crate) fn progress(&self) -> (u64, bool) {
        (self.frames, !self.buf.is_empty() && self.awaited_len().is_none())
    }

    /// The length of the large frame whose bytes the reader must take from its budget before
    /// reading on, if it waits for that.
    fn awaited_len(&self) -> Option<usize> {
        match (&self.budget, &self.held) {
            (Some(_), None) => large_frame_len(&self.buf),
            _ => None,
        }
    }

    /// The budget bytes the frame returned last holds: keep them while its call runs.
    pub(crate) fn take_permit(&mut self) -> Option<OwnedSemaphorePermit> {
        self.last.take()
    }

    /// The next frame; `None` on a clean end of stream between frames.
    ///
    /// Cancel safe: a frame partly read stays buffered for the next call.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(frame) = self.try_next()? {
                return Ok(Some(frame));
            }
            if let (Some(budget), Some(len)) = (&self.budget, self.awaited_len()) {
                let permit = budget.take(len).await;
                self.held = permit.map(|permit| (permit, 4 + len));
            }
            // With a budget, read no further than the frame it covers, plus a step: a large
            // frame behind it must be seen whole in the buffer only after its bytes were taken.
            let limit = self.budget.as_ref().map(|_| {
                self.held.as_ref().map_or(0, |(_, covered)| covered.saturating_sub(self.buf.len())) + LARGE_FRAME
            });
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            let read = match limit {
                None => self.io.read_buf(&mut self.buf).await?,
                Some(limit) => (&mut self.io).take(limit as u64).read_buf(&mut self.buf).await?,
            };
            if read == 0 {
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
        if frame.is_some() {
            self.frames += 1;
            self.last = self.held.take().map(|(permit, _)| permit);
        }
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

/// The declared length of the frame at the front of `buf`, if it is a large one.
fn large_frame_len(buf: &[u8]) -> Option<usize> {
    let len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    (len > LARGE_FRAME).then_some(len)
}
