//! The write side of a client connection, shared by the callers and a writer task.
//!
//! A caller alone on its connection writes its frame to the socket itself: no queue, no task
//! wake-up, one syscall. When other calls are in flight, or the last replies woke other callers
//! too, callers queue their frames and the writer task coalesces them: it yields before writing,
//! so the callers woken by the last batch of replies add their next calls to the same write (one
//! syscall and one wake-up of the server per batch instead of per call).
//!
//! Frames leave in the order they were handed over. Every write happens under one lock, and a
//! caller writes directly only when `tail` (bytes that must go out first: the preface, a frame a
//! caller could only partly write, frames the writer gathered) is empty and no frame is on its
//! way to it: [`Queue`] counts frames from the moment they are queued until the writer task has
//! moved them into `tail`, so a direct write can overtake neither a queued frame nor one the
//! writer task holds.

use super::pending::PendingCalls;
use crate::transport::io::WriteIo;
use crate::transport::{BATCH, FLUSH_AT};
use bytes::{Buf, BytesMut};
use std::{
    io,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, Weak,
    },
};
use tokio::{
    net::tcp::OwnedWriteHalf,
    sync::mpsc::{self, error::TrySendError},
};

/// Longest wait to write the last frames of a dropped connection.
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);
/// Scheduler passes the writer task waits for more frames before a gathered write. A second pass
/// lets callers woken on the runtime's other workers join too: with 64 calls in flight it cut
/// client and server CPU per call by about a sixth (`rpc bench rpc`, 16 interleaved runs).
const GATHER_PASSES: usize = 2;

pub(crate) struct WriteSide {
    io: Sink,
    tail: Mutex<BytesMut>,
    /// Frames queued or held by the writer task, not yet in `tail`.
    queued: AtomicUsize,
}

/// Where bytes go: a TCP socket, which callers may write to directly, or a TLS stream, which
/// only the writer task writes to (a TLS record cannot be written in part from any thread).
enum Sink {
    Tcp(OwnedWriteHalf),
    #[cfg(feature = "tls")]
    Tls(tokio::sync::Mutex<WriteIo>),
}

/// What [`WriteSide::try_write`] did with a frame.
pub(crate) enum Direct {
    /// On the socket, whole or in part (the rest is in `tail`: wake the writer task).
    Written { whole: bool },
    /// Other frames go first: queue this one for the writer task.
    Busy(BytesMut),
}

impl WriteSide {
    /// A write side that sends `first` (the preface) before anything else.
    pub(crate) fn new(io: WriteIo, first: &[u8]) -> WriteSide {
        let io = match io {
            WriteIo::Tcp(io) => Sink::Tcp(io),
            #[cfg(feature = "tls")]
            tls => Sink::Tls(tokio::sync::Mutex::new(tls)),
        };
        let mut tail = BytesMut::with_capacity(16 * 1024);
        tail.extend_from_slice(first);
        WriteSide { io, tail: Mutex::new(tail), queued: AtomicUsize::new(0) }
    }

    fn tail(&self) -> MutexGuard<'_, BytesMut> {
        // Every update leaves the buffer whole, so a panic elsewhere cannot tear it.
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `frame` straight to the socket if nothing else is waiting to be written.
    #[cfg_attr(not(feature = "tls"), allow(clippy::infallible_destructuring_match))]
    pub(crate) fn try_write(&self, frame: BytesMut) -> io::Result<Direct> {
        let mut tail = self.tail();
        if !tail.is_empty() || self.queued.load(Ordering::Acquire) > 0 {
            return Ok(Direct::Busy(frame));
        }
        let io = match &self.io {
            Sink::Tcp(io) => io,
            #[cfg(feature = "tls")]
            Sink::Tls(_) => return Ok(Direct::Busy(frame)),
        };
        let n = match io.try_write(&frame) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Direct::Busy(frame)),
            Err(e) => return Err(e),
        };
        tail.extend_from_slice(&frame[n..]);
        Ok(Direct::Written { whole: n == frame.len() })
    }

    /// Moves frames from the front of `batch` into `tail` until it holds [`FLUSH_AT`] bytes.
    fn append(&self, batch: &mut Vec<BytesMut>) {
        let mut tail = self.tail();
        let mut moved = 0;
        for frame in batch.iter() {
            if moved > 0 && tail.len() >= FLUSH_AT {
                break;
            }
            tail.extend_from_slice(frame);
            moved += 1;
        }
        batch.drain(..moved);
        self.queued.fetch_sub(moved, Ordering::AcqRel);
    }

    /// Writes all of `batch` through `tail`, [`FLUSH_AT`] bytes at a time.
    async fn write_all(&self, batch: &mut Vec<BytesMut>) -> io::Result<()> {
        loop {
            self.append(batch);
            self.flush().await?;
            if batch.is_empty() {
                return Ok(());
            }
        }
    }

    /// Writes everything in `tail`, waiting for the socket to take it.
    #[cfg_attr(not(feature = "tls"), allow(clippy::infallible_destructuring_match))]
    async fn flush(&self) -> io::Result<()> {
        let io = match &self.io {
            Sink::Tcp(io) => io,
            #[cfg(feature = "tls")]
            Sink::Tls(io) => {
                use tokio::io::AsyncWriteExt;
                // Only the writer task gets here, and callers never write to a TLS sink, so
                // taking `tail` keeps the order.
                let bytes = self.tail().split();
                let mut io = io.lock().await;
                io.write_all(&bytes).await?;
                return io.flush().await;
            }
        };
        loop {
            {
                let mut tail = self.tail();
                while !tail.is_empty() {
                    match io.try_write(&tail) {
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
            io.writable().await?;
        }
    }
}

/// The writer task's queue, counting each frame until the writer task has it in `tail`.
#[derive(Clone)]
pub(crate) struct Queue {
    tx: mpsc::Sender<BytesMut>,
    side: Arc<WriteSide>,
}

/// A [`Queue`] that keeps neither the writer task nor the socket's write half alive: once the
/// connection is dropped, the write half closes and the server sees the end of the stream.
pub(crate) struct WeakQueue {
    tx: mpsc::WeakSender<BytesMut>,
    side: Weak<WriteSide>,
}

/// Takes a frame back out of the count unless it reached the queue.
struct Counted<'a>(Option<&'a AtomicUsize>);

impl Counted<'_> {
    fn queued(mut self) {
        self.0 = None;
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if let Some(queued) = self.0 {
            queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Queue {
    /// A queue of `capacity` frames into `side`, and its receiving end for [`write_loop`].
    pub(crate) fn new(side: Arc<WriteSide>, capacity: usize) -> (Queue, mpsc::Receiver<BytesMut>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Queue { tx, side }, rx)
    }

    /// The write side the queue feeds.
    pub(crate) fn side(&self) -> &WriteSide {
        &self.side
    }

    fn count(&self) -> Counted<'_> {
        self.side.queued.fetch_add(1, Ordering::AcqRel);
        Counted(Some(&self.side.queued))
    }

    /// Queues `frame` if there is room.
    pub(crate) fn try_send(&self, frame: BytesMut) -> Result<(), TrySendError<BytesMut>> {
        let counted = self.count();
        self.tx.try_send(frame)?;
        counted.queued();
        Ok(())
    }

    /// Queues `frame`, waiting for room; false if the writer task is gone.
    pub(crate) async fn send(&self, frame: BytesMut) -> bool {
        let counted = self.count();
        let sent = self.tx.send(frame).await.is_ok();
        if sent {
            counted.queued();
        }
        sent
    }

    pub(crate) fn downgrade(&self) -> WeakQueue {
        WeakQueue { tx: self.tx.downgrade(), side: Arc::downgrade(&self.side) }
    }
}

impl WeakQueue {
    /// The queue, while the connection that owns it lives.
    pub(crate) fn upgrade(&self) -> Option<Queue> {
        Some(Queue { tx: self.tx.upgrade()?, side: self.side.upgrade()? })
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
        // Other calls in flight, or other callers woken by the replies that woke this batch's:
        // they are about to send more.
        let gather = batch.len() > 1 || !pending.alone(batch.len() as u64);
        // Into `tail` before yielding, so no direct write can overtake these frames.
        side.append(&mut batch);
        if gather {
            for _ in 0..GATHER_PASSES {
                tokio::task::yield_now().await;
            }
            while batch.len() < BATCH {
                let Ok(frame) = rx.try_recv() else { break };
                batch.push(frame);
            }
        }
        side.write_all(&mut batch).await?;
    }
    // The connection is being dropped: a server that stopped reading gets a bounded wait.
    tokio::time::timeout(FINAL_FLUSH, side.flush()).await.unwrap_or(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use tokio::{
        io::AsyncReadExt,
        net::{TcpListener, TcpStream},
    };

    fn frame(bytes: &[u8]) -> BytesMut {
        BytesMut::from(bytes)
    }

    #[tokio::test]
    async fn a_direct_write_never_overtakes_a_queued_frame() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let (_read, write) = client.into_split();
        let side = Arc::new(WriteSide::new(WriteIo::Tcp(write), b"P"));
        let (queue, rx) = Queue::new(side.clone(), 8);
        assert!(matches!(side.try_write(frame(b"x")), Ok(Direct::Busy(_))), "the preface goes first");
        side.tail().clear();
        queue.try_send(frame(b"A")).unwrap();
        // A is queued and the writer task has not run: B must queue behind it.
        let Ok(Direct::Busy(b)) = side.try_write(frame(b"B")) else { panic!("B overtook the queued A") };
        queue.try_send(b).unwrap();
        let pending = Arc::new(PendingCalls::new(8));
        let writer = tokio::spawn({
            let (side, pending) = (side.clone(), pending.clone());
            async move { write_loop(&side, rx, &pending).await }
        });
        let mut got = Vec::new();
        while got.len() < 2 {
            let mut buf = [0; 8];
            let n = server.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"AB");
        // Idle again: the next frame goes straight to the socket.
        assert!(matches!(side.try_write(frame(b"C")), Ok(Direct::Written { whole: true })));
        drop(queue);
        writer.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_first_caller_woken_by_a_batch_of_replies_waits_for_the_others() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let server = server.into_std().unwrap();
        let (_read, write) = client.into_split();
        let side = Arc::new(WriteSide::new(WriteIo::Tcp(write), b""));
        let (queue, rx) = Queue::new(side.clone(), 8);
        let pending = Arc::new(PendingCalls::new(8));
        let call = |id| pending.insert(id, tokio::sync::oneshot::channel().0, None).unwrap();
        let reply = || Err(crate::Status::internal("a reply"));
        call(1);
        call(2);
        // One read delivers both replies; the caller of 1 sends its next call first.
        pending.complete(&mut vec![(1, reply()), (2, reply())]);
        call(3);
        queue.try_send(frame(b"A")).unwrap();
        let writer = tokio::spawn({
            let (side, pending) = (side.clone(), pending.clone());
            async move { write_loop(&side, rx, &pending).await }
        });
        // The writer task takes A and yields; this task runs before it resumes, each pass.
        let mut buf = [0; 8];
        for pass in 1..=GATHER_PASSES {
            tokio::task::yield_now().await;
            let early = (&server).read(&mut buf);
            assert!(
                matches!(&early, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
                "A went out alone after {pass} scheduler passes while the caller of 2 was about to send: {early:?}"
            );
        }
        queue.try_send(frame(b"B")).unwrap();
        drop(queue);
        writer.await.unwrap().unwrap();
        let mut got = Vec::new();
        server.set_nonblocking(false).unwrap();
        while got.len() < 2 {
            let n = (&server).read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"AB");
    }
}
