//! The write side of a client connection, shared by the callers and a writer task.
//!
//! A caller alone on its connection writes its frame to the socket itself: no queue, no task
//! wake-up, one syscall. When other calls are in flight, callers queue their frames and the writer
//! task coalesces them: it yields once before writing, so the callers woken by the last batch of
//! replies add their next calls to the same write (one syscall and one wake-up of the server per
//! batch instead of per call).
//!
//! Every write happens under one lock, and only while `tail` (bytes that must go out first: the
//! preface, a frame a caller could only partly write, frames the writer gathered) is empty or is
//! what is being written, so frames never interleave.

use super::pending::PendingCalls;
use crate::transport::{BATCH, FLUSH_AT};
use bytes::{Buf, BytesMut};
use std::{
    io,
    sync::{Mutex, MutexGuard},
};
use tokio::{net::tcp::OwnedWriteHalf, sync::mpsc};

pub(crate) struct WriteSide {
    io: OwnedWriteHalf,
    tail: Mutex<BytesMut>,
}

/// What [`WriteSide::try_write`] did with a frame.
pub(crate) enum Direct {
    /// On the socket, whole or in part (the rest is in `tail`: wake the writer task).
    Written { whole: bool },
    /// The socket is busy or full: queue the frame for the writer task.
    Busy(BytesMut),
}

impl WriteSide {
    /// A write side that sends `first` (the preface) before anything else.
    pub(crate) fn new(io: OwnedWriteHalf, first: &[u8]) -> WriteSide {
        let mut tail = BytesMut::with_capacity(16 * 1024);
        tail.extend_from_slice(first);
        WriteSide { io, tail: Mutex::new(tail) }
    }

    fn tail(&self) -> MutexGuard<'_, BytesMut> {
        // Every update leaves the buffer whole, so a panic elsewhere cannot tear it.
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `frame` straight to the socket if nothing else is waiting to be written.
    pub(crate) fn try_write(&self, frame: BytesMut) -> io::Result<Direct> {
        let mut tail = self.tail();
        if !tail.is_empty() {
            return Ok(Direct::Busy(frame));
        }
        let n = match self.io.try_write(&frame) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Direct::Busy(frame)),
            Err(e) => return Err(e),
        };
        tail.extend_from_slice(&frame[n..]);
        Ok(Direct::Written { whole: n == frame.len() })
    }

    /// Writes everything in `tail`, waiting for the socket to take it.
    async fn flush(&self) -> io::Result<()> {
        loop {
            {
                let mut tail = self.tail();
                while !tail.is_empty() {
                    match self.io.try_write(&tail) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => tail.advance(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                if tail.is_empty() {
                    return Ok(());
                }
            }
            self.io.writable().await?;
        }
    }
}

/// Writes queued frames until every sender is gone; the write half then closes with the last
/// reference to `side`. An empty frame only asks for `tail` to be flushed.
pub(crate) async fn write_loop(
    side: &WriteSide,
    mut rx: mpsc::Receiver<BytesMut>,
    pending: &PendingCalls,
) -> io::Result<()> {
    side.flush().await?;
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // Calls in flight beyond this batch: their replies wake callers that will send more.
        if pending.in_flight() > batch.len() as u64 || batch.len() > 1 {
            tokio::task::yield_now().await;
            while batch.len() < BATCH {
                let Ok(frame) = rx.try_recv() else { break };
                batch.push(frame);
            }
        }
        let mut frames = batch.drain(..);
        loop {
            let full = {
                let mut tail = side.tail();
                for frame in frames.by_ref() {
                    tail.extend_from_slice(&frame);
                    if tail.len() >= FLUSH_AT {
                        break;
                    }
                }
                tail.len() >= FLUSH_AT
            };
            side.flush().await?;
            if !full {
                break;
            }
        }
    }
    side.flush().await
}
