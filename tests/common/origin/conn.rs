//! The origin's connections: the accept loop, and the socket wrapper ([`ConnIo`]) that counts
//! flushes and closes with RST when a body fault asks for it.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::State;
use super::http::handle;

pub(super) async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    state.connections.fetch_add(1, Ordering::SeqCst);
                    let open = state.open_connections.fetch_add(1, Ordering::SeqCst) + 1;
                    state.peak_connections.fetch_max(open, Ordering::SeqCst);
                    let state = state.clone();
                    connections.spawn(async move {
                        serve_connection(stream, state.clone()).await;
                        state.open_connections.fetch_sub(1, Ordering::SeqCst);
                    });
                }
                // Usually fd exhaustion; back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set does not grow for the life of the test.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<State>) {
    let conn = Arc::new(ConnCtl {
        addrs: stream.local_addr().ok().zip(stream.peer_addr().ok()),
        flushes: AtomicU64::new(0),
        flush_waiter: Mutex::new(None),
        reset_on_close: AtomicBool::new(false),
    });
    let io = ConnIo {
        stream,
        conn: conn.clone(),
    };
    let service = service_fn(move |req| {
        let state = state.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(&state, &conn, req)) }
    });
    // Errors here are clients going away mid-response, which tests do on purpose, and the body
    // errors that cut a connection for a fault.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Shared between one connection's socket ([`ConnIo`]) and the response bodies sent on it
/// ([`ChannelBody`]), for the faults that must know when body bytes have really reached the
/// socket and that choose how the socket closes.
pub(super) struct ConnCtl {
    /// Local and peer address, to find the connection in `/proc/net/tcp`.
    pub(super) addrs: Option<(SocketAddr, SocketAddr)>,
    /// Completed flushes of the socket. hyper flushes the socket only once its own write buffer
    /// is empty, so a flush that completes after a body piece was handed to hyper proves the
    /// piece is in the kernel: cutting the connection then loses none of it.
    pub(super) flushes: AtomicU64,
    /// The body waiting for the next flush.
    flush_waiter: Mutex<Option<Waker>>,
    /// Close with `SO_LINGER` 0, which makes the kernel send RST instead of FIN.
    pub(super) reset_on_close: AtomicBool,
}

impl ConnCtl {
    pub(super) fn wait_for_flush(&self, waker: &Waker) {
        *self.flush_waiter.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker.clone());
    }
}

/// The accepted socket as hyper sees it: passes everything through, but counts flushes and,
/// for [`Fault::ResetAfter`], closes with RST. hyper owns it, so the reset has to happen in its
/// `Drop`, which runs when hyper gives up on the connection after the body error.
struct ConnIo {
    stream: TcpStream,
    conn: Arc<ConnCtl>,
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.stream).poll_flush(cx);
        if let Poll::Ready(Ok(())) = result {
            self.conn.flushes.fetch_add(1, Ordering::SeqCst);
            let waiter = self
                .conn
                .flush_waiter
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(waker) = waiter {
                waker.wake();
            }
        }
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A FIN before the RST would show the client a clean end of stream instead of a reset.
        if self.conn.reset_on_close.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.conn.reset_on_close.load(Ordering::SeqCst) {
            // Zero linger never blocks in close (unlike other linger values); if it fails the
            // client sees a FIN, which the reset test will report.
            let _ = self.stream.set_zero_linger();
        }
    }
}
