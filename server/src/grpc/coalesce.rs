//! Coalesced writes on a gRPC connection: the connection's frames are written once the tasks
//! already queued have run, so one status change sent to thousands of watchers of one
//! connection costs a handful of writes and not one per watcher.
//!
//! Why it is needed: every watch stream is a task of its own that hands its message to the
//! connection's HTTP/2 task, and tokio runs a task woken by the running one next (its "LIFO
//! slot"). So each watcher's message woke the connection task, which ran at once and wrote that
//! one small frame: one `writev` (and, with TCP_NODELAY, one TCP segment) per watcher, which was
//! most of the server's CPU when 10,000 watchers saw a change. Here the first write after a
//! flush yields once: the connection task goes to the back of the run queue, the other
//! watchers queue their frames meanwhile (waking a task already queued does nothing), and the
//! next write carries them all. A lone call pays one extra pass of the scheduler, microseconds.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// A connection whose writes are coalesced as the module docs describe.
#[derive(Debug)]
pub struct Coalescing<IO> {
    io: IO,
    /// Whether this flush cycle has already yielded once; reset when a flush completes.
    yielded: bool,
    /// Off under TLS: a TLS layer that fails the handshake writes its alert once and drops the
    /// connection, so a yielded write would lose the alert.
    enabled: bool,
}

impl<IO> Coalescing<IO> {
    /// Wraps an accepted connection; with `enabled` false, writes pass straight through.
    pub fn new(io: IO, enabled: bool) -> Coalescing<IO> {
        Coalescing {
            io,
            yielded: false,
            enabled,
        }
    }

    /// Yields once per flush cycle: asks to be polled again after the tasks already queued.
    fn yield_once(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded || !self.enabled {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Coalescing<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Coalescing<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.yield_once(cx));
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.yield_once(cx));
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = std::task::ready!(Pin::new(&mut self.io).poll_flush(cx));
        self.yielded = false;
        Poll::Ready(flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Coalescing<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn every_write_arrives_in_order_after_the_yield() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut conn = Coalescing::new(near, true);
        conn.write_all(b"first ").await.unwrap();
        conn.write_all(b"second").await.unwrap();
        conn.flush().await.unwrap();
        conn.write_all(b" third").await.unwrap();
        conn.shutdown().await.unwrap();
        let mut got = String::new();
        far.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "first second third");
    }
}
