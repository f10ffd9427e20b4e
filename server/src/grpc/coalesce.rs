//! Coalesced writes on a gRPC connection that carries many streams: the connection's frames
//! are written once the tasks already queued have run, so one status change sent to thousands
//! of watchers of one connection costs a handful of writes and not one per watcher.
//!
//! Why it is needed: every watch stream is a task of its own that hands its message to the
//! connection's HTTP/2 task, and tokio runs a task woken by the running one next (its "LIFO
//! slot"). So each watcher's message woke the connection task, which ran at once and wrote that
//! one small frame: one `writev` (and, with TCP_NODELAY, one TCP segment) per watcher, which was
//! most of the server's CPU when 10,000 watchers saw a change. Here the first write after a
//! flush yields once: the connection task goes to the back of the run queue, the other
//! watchers queue their frames meanwhile (waking a task already queued does nothing), and the
//! next write carries them all.
//!
//! Only a connection with [`COALESCE_FROM_STREAMS`] or more open streams yields. Unary calls
//! gain nothing from it: under ghz-style load (50 calls multiplexed on one connection) the
//! yield cost GetDownload about a fifth of its rate, as each answer waited a pass of the
//! scheduler and the connection task ran twice per write. The limits layer counts each
//! connection's open streams ([`OpenStreams`], reached through the call's connect info).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::Connected;

/// Open streams from which a connection's writes are coalesced. A few watchers gain nothing
/// from it; a thousand on one connection (as in `examples/fanout.rs`) do.
pub const COALESCE_FROM_STREAMS: usize = 16;

/// The streams open on one connection, shared by the connection and its calls.
#[derive(Clone, Debug, Default)]
pub struct OpenStreams(Arc<AtomicUsize>);

impl OpenStreams {
    /// Counts one more open stream until the returned guard is dropped.
    pub fn open(&self) -> StreamOpen {
        self.0.fetch_add(1, Ordering::Relaxed);
        StreamOpen(self.clone())
    }

    /// How many are open now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One open stream of a connection, counted until dropped.
#[derive(Debug)]
pub struct StreamOpen(OpenStreams);

impl Drop for StreamOpen {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a call knows of its connection (tonic puts it in the request's extensions): the
/// connection's open streams.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// The connection's open streams.
    pub streams: OpenStreams,
}

/// A connection whose writes are coalesced as the module docs describe.
#[derive(Debug)]
pub struct Coalescing<IO> {
    io: IO,
    /// Whether this flush cycle has already yielded once; reset when a flush completes.
    yielded: bool,
    /// Off under TLS: a TLS layer that fails the handshake writes its alert once and drops the
    /// connection, so a yielded write would lose the alert.
    enabled: bool,
    /// The connection's open streams: below [`COALESCE_FROM_STREAMS`], writes pass straight
    /// through.
    streams: OpenStreams,
    /// Whether the last write was coalesced, so a change is logged once.
    coalescing: bool,
}

impl<IO> Coalescing<IO> {
    /// Wraps an accepted connection; with `enabled` false, writes pass straight through.
    pub fn new(io: IO, enabled: bool) -> Coalescing<IO> {
        Coalescing {
            io,
            yielded: false,
            enabled,
            streams: OpenStreams::default(),
            coalescing: false,
        }
    }

    /// Yields once per flush cycle: asks to be polled again after the tasks already queued.
    fn yield_once(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded || !self.enabled {
            return Poll::Ready(());
        }
        let open = self.streams.count();
        let coalescing = open >= COALESCE_FROM_STREAMS;
        if coalescing != self.coalescing {
            self.coalescing = coalescing;
            if coalescing {
                tracing::debug!(
                    open,
                    "coalescing the writes of a connection with many streams"
                );
            } else {
                tracing::debug!(open, "writing at once on a connection with few streams");
            }
        }
        if !coalescing {
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

impl Connected for Coalescing<TcpStream> {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        ConnectionInfo {
            streams: self.streams.clone(),
        }
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
        let _open: Vec<_> = (0..COALESCE_FROM_STREAMS)
            .map(|_| conn.streams.open())
            .collect();
        conn.write_all(b"first ").await.unwrap();
        conn.write_all(b"second").await.unwrap();
        conn.flush().await.unwrap();
        conn.write_all(b" third").await.unwrap();
        conn.shutdown().await.unwrap();
        let mut got = String::new();
        far.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "first second third");
    }

    /// Whether a write on `conn` first yields (is pending once, then goes through).
    fn first_write_yields<IO: AsyncWrite + Unpin>(conn: &mut Coalescing<IO>) -> bool {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        match Pin::new(&mut *conn).poll_write(&mut cx, b"x") {
            Poll::Pending => {
                let again = Pin::new(&mut *conn).poll_write(&mut cx, b"x");
                assert!(matches!(again, Poll::Ready(Ok(1))), "{again:?}");
                true
            }
            Poll::Ready(written) => {
                assert_eq!(written.unwrap(), 1);
                false
            }
        }
    }

    /// A connection yields before writing only while it carries enough streams to gain from
    /// it, and only once per flush cycle; unary calls' answers are written at once.
    #[tokio::test]
    async fn only_a_connection_with_many_streams_yields() {
        let (near, _far) = tokio::io::duplex(1 << 16);
        let mut conn = Coalescing::new(near, true);
        assert!(
            !first_write_yields(&mut conn),
            "no streams: written at once"
        );
        let mut open: Vec<_> = (0..COALESCE_FROM_STREAMS - 1)
            .map(|_| conn.streams.open())
            .collect();
        assert!(!first_write_yields(&mut conn), "too few streams");
        open.push(conn.streams.open());
        assert_eq!(conn.streams.count(), COALESCE_FROM_STREAMS);
        assert!(first_write_yields(&mut conn), "enough streams: yields");
        assert!(!first_write_yields(&mut conn), "once per flush cycle");
        conn.flush().await.unwrap();
        assert!(first_write_yields(&mut conn), "again after a flush");
        conn.flush().await.unwrap();
        open.pop();
        assert_eq!(conn.streams.count(), COALESCE_FROM_STREAMS - 1);
        assert!(
            !first_write_yields(&mut conn),
            "a stream closed: written at once"
        );
        drop(open);
        assert_eq!(conn.streams.count(), 0);
        let (near, _far) = tokio::io::duplex(64);
        let mut off = Coalescing::new(near, false);
        let _open: Vec<_> = (0..COALESCE_FROM_STREAMS)
            .map(|_| off.streams.open())
            .collect();
        assert!(!first_write_yields(&mut off), "off (TLS): never yields");
    }
}
