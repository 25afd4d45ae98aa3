//! The two halves of a connection: plain TCP, or TLS over it. An enum rather than a boxed
//! trait object, so plain TCP pays one branch per read or write and keeps its `try_write`.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
};

#[cfg(feature = "tls")]
type TlsStream = tokio_rustls::TlsStream<TcpStream>;

/// The read half of a connection.
pub(crate) enum ReadIo {
    Tcp(OwnedReadHalf),
    #[cfg(feature = "tls")]
    Tls(tokio::io::ReadHalf<TlsStream>),
}

/// The write half of a connection.
pub(crate) enum WriteIo {
    Tcp(OwnedWriteHalf),
    #[cfg(feature = "tls")]
    Tls(tokio::io::WriteHalf<TlsStream>),
}

/// Splits a plain TCP connection.
pub(crate) fn tcp(stream: TcpStream) -> (ReadIo, WriteIo) {
    let (read, write) = stream.into_split();
    (ReadIo::Tcp(read), WriteIo::Tcp(write))
}

/// Splits a TLS connection.
#[cfg(feature = "tls")]
pub(crate) fn tls(stream: impl Into<TlsStream>) -> (ReadIo, WriteIo) {
    let (read, write) = tokio::io::split(stream.into());
    (ReadIo::Tls(read), WriteIo::Tls(write))
}

impl AsyncRead for ReadIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadIo::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            ReadIo::Tls(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteIo::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            WriteIo::Tls(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteIo::Tcp(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            #[cfg(feature = "tls")]
            WriteIo::Tls(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteIo::Tcp(io) => io.is_write_vectored(),
            #[cfg(feature = "tls")]
            WriteIo::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteIo::Tcp(io) => Pin::new(io).poll_flush(cx),
            #[cfg(feature = "tls")]
            WriteIo::Tls(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteIo::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            WriteIo::Tls(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}
