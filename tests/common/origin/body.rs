//! Streamed response bodies: a task paces the bytes (throttle), stops at a hold until released,
//! and ends the connection the way a body fault asks (reset, truncate, stall) only once every
//! byte before the fault point has reached the socket.

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame};
use tokio::sync::{mpsc, oneshot, watch};

use super::State;
use super::conn::ConnCtl;
use super::resource::{Resource, Throttle};

/// Body piece size when no throttle is set: large enough that multi-MiB bodies are fast, small
/// enough that a hold or a disconnect is noticed promptly.
const UNTHROTTLED_CHUNK: usize = 64 * 1024;

/// Longest a [`Fault::ResetAfter`] waits for the client to acknowledge the bytes before the
/// reset; only a client that has stopped reading makes it wait that long.
const RESET_DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Poll interval while waiting for those acknowledgements.
const RESET_DRAIN_POLL: Duration = Duration::from_millis(2);

/// Error a [`ChannelBody`] returns to make hyper drop the connection mid-body.
#[derive(Debug)]
pub(super) struct CutConnection;

impl fmt::Display for CutConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("test origin cut the connection (fault injection)")
    }
}

impl std::error::Error for CutConnection {}

pub(super) type ResponseBody = BoxBody<Bytes, CutConnection>;

/// How a body fault ends a response once its bytes are out (see [`Fault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cut {
    /// Close with RST.
    Reset,
    /// Close with FIN.
    Truncate,
    /// Send nothing more and keep the connection open.
    Stall,
}

/// What [`pump`] hands to a [`ChannelBody`].
enum Piece {
    /// Body bytes.
    Data(Bytes),
    /// End the connection this way once every earlier piece has reached the socket.
    Cut(Cut),
}

/// Spawn a task that feeds `data` into the response body with the resource's pacing and hold,
/// and with `cut` (at most `data.len() - 1` bytes in) if a body fault applies.
/// The channel has room for one piece so the task never runs ahead of the socket by more than
/// that, which keeps the hold point exact and makes throttling observable on the wire.
pub(super) fn stream_body(
    state: &Arc<State>,
    conn: &Arc<ConnCtl>,
    data: Bytes,
    resource: &Resource,
    cut: Option<(u64, Cut)>,
    release: watch::Receiver<bool>,
) -> ResponseBody {
    let (tx, rx) = mpsc::channel(1);
    let guard = OpenBody::new(state.clone());
    tokio::spawn(pump(
        data,
        resource.throttle,
        resource.hold_after,
        cut,
        release,
        tx,
        guard,
    ));
    ChannelBody {
        rx,
        conn: conn.clone(),
        cutting: None,
    }
    .boxed()
}

/// A chunked body that repeats the resource's bytes until the client goes away.
pub(super) fn endless_body(
    state: &Arc<State>,
    conn: &Arc<ConnCtl>,
    resource: &Resource,
    release: watch::Receiver<bool>,
) -> ResponseBody {
    let (tx, rx) = mpsc::channel(1);
    let guard = OpenBody::new(state.clone());
    let data = if resource.body.is_empty() {
        Bytes::from_static(&[0; 4096])
    } else {
        resource.body.clone()
    };
    let throttle = resource.throttle;
    tokio::spawn(async move {
        while send_pieces(data.clone(), throttle, None, release.clone(), &tx).await {}
        drop(guard);
    });
    ChannelBody {
        rx,
        conn: conn.clone(),
        cutting: None,
    }
    .boxed()
}

/// Counts a sending task in [`Origin::open_responses`] for exactly as long as it lives.
struct OpenBody(Arc<State>);

impl OpenBody {
    fn new(state: Arc<State>) -> Self {
        let open = state.open_bodies.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak_bodies.fetch_max(open, Ordering::SeqCst);
        OpenBody(state)
    }
}

impl Drop for OpenBody {
    fn drop(&mut self) {
        self.0.open_bodies.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn pump(
    data: Bytes,
    throttle: Option<Throttle>,
    hold_after: Option<u64>,
    cut: Option<(u64, Cut)>,
    release: watch::Receiver<bool>,
    tx: mpsc::Sender<Piece>,
    guard: OpenBody,
) {
    match cut {
        None => {
            send_pieces(data, throttle, hold_after, release, &tx).await;
        }
        Some((at, cut)) => {
            let head = data.slice(..at as usize);
            if send_pieces(head, throttle, hold_after, release, &tx).await {
                if cut == Cut::Stall {
                    // Keep the body open, and counted, until hyper drops it: the client went
                    // away or the origin was dropped.
                    tx.closed().await;
                } else {
                    // Fails only if the client already went away, when there is nothing to cut.
                    let _ = tx.send(Piece::Cut(cut)).await;
                }
            }
        }
    }
    // Uncount before the body can end (which happens when `tx` drops), so a client that has seen
    // the end of a response also sees the counter down.
    drop(guard);
    drop(tx);
}

/// Sends `data` as body pieces; returns false if the client went away first.
async fn send_pieces(
    data: Bytes,
    throttle: Option<Throttle>,
    hold_after: Option<u64>,
    mut release: watch::Receiver<bool>,
    tx: &mpsc::Sender<Piece>,
) -> bool {
    let len = data.len() as u64;
    let piece = throttle.map_or(UNTHROTTLED_CHUNK, |t| t.chunk.max(1)) as u64;
    let mut sent = 0u64;
    while sent < len {
        if hold_after == Some(sent) {
            // Waiting on the hold must also end when the client hangs up (the receiver is
            // dropped), or the task would outlive the connection.
            tokio::select! {
                r = release.wait_for(|released| *released) => {
                    // The sender lives in the shared state, so this only fails if that is gone.
                    if r.is_err() {
                        return false;
                    }
                }
                _ = tx.closed() => return false,
            }
        }
        let mut end = (sent + piece).min(len);
        if let Some(hold) = hold_after {
            if sent < hold && end > hold {
                end = hold;
            }
        }
        if tx
            .send(Piece::Data(data.slice(sent as usize..end as usize)))
            .await
            .is_err()
        {
            return false;
        }
        sent = end;
        if let Some(t) = throttle {
            if sent < len && !t.delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(t.delay) => {}
                    _ = tx.closed() => return false,
                }
            }
        }
    }
    true
}

/// Response body fed by [`pump`]. Its size is unknown to hyper, which then frames it by our
/// `Content-Length` header or, without one, chunked.
struct ChannelBody {
    rx: mpsc::Receiver<Piece>,
    conn: Arc<ConnCtl>,
    /// How far a cut for a fault has got, once [`pump`] has asked for one.
    cutting: Option<Cutting>,
}

/// The waits between [`pump`] asking for a cut and the body failing.
enum Cutting {
    /// For hyper to flush the last piece to the socket; holds the flush count when the cut
    /// arrived, and any flush after that proves it.
    Flush { cut: Cut, flushes: u64 },
    /// For the client to acknowledge every byte, before a reset.
    Acked(oneshot::Receiver<()>),
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = CutConnection;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, CutConnection>>> {
        loop {
            match &mut self.cutting {
                None => {}
                Some(Cutting::Flush { cut, flushes }) => {
                    let (cut, flushes) = (*cut, *flushes);
                    // Register before checking, so a flush in between still wakes us.
                    self.conn.wait_for_flush(cx.waker());
                    // Failing the body right after its last piece would make hyper drop that
                    // piece unwritten. Pending instead lets hyper flush, and the flush wakes us.
                    if self.conn.flushes.load(Ordering::SeqCst) == flushes {
                        return Poll::Pending;
                    }
                    if cut == Cut::Truncate {
                        // The FIN queues behind the data, so nothing is lost: cut right away.
                        // hyper answers a body error by dropping the connection.
                        return Poll::Ready(Some(Err(CutConnection)));
                    }
                    let (tx, rx) = oneshot::channel();
                    tokio::spawn(signal_when_acked(self.conn.addrs, tx));
                    self.cutting = Some(Cutting::Acked(rx));
                    continue;
                }
                Some(Cutting::Acked(rx)) => {
                    // An error means the waiting task is gone, which only happens at runtime
                    // shutdown; resetting then is as good as anything.
                    let _ = std::task::ready!(Pin::new(rx).poll(cx));
                    self.conn.reset_on_close.store(true, Ordering::SeqCst);
                    return Poll::Ready(Some(Err(CutConnection)));
                }
            }
            match std::task::ready!(self.rx.poll_recv(cx)) {
                Some(Piece::Data(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                Some(Piece::Cut(cut)) => {
                    let flushes = self.conn.flushes.load(Ordering::SeqCst);
                    self.cutting = Some(Cutting::Flush { cut, flushes });
                }
                None => return Poll::Ready(None),
            }
        }
    }
}

/// Completes `done` once the client has acknowledged every byte sent on the connection
/// `addrs` (local, peer), or after [`RESET_DRAIN_LIMIT`], or at once where that cannot be
/// known (no `/proc/net/tcp`, connection gone from it). A reset throws away unacknowledged bytes,
/// including ones still in the origin's send buffer because the client's receive window was
/// full, so resetting before this would deliver fewer bytes than the fault promises.
async fn signal_when_acked(addrs: Option<(SocketAddr, SocketAddr)>, mut done: oneshot::Sender<()>) {
    let wait = async {
        let Some((SocketAddr::V4(local), SocketAddr::V4(peer))) = addrs else {
            return;
        };
        // `/proc/net/tcp` prints each address as its network-order bytes read as a native
        // integer, and the port in plain hex.
        let hex = |a: std::net::SocketAddrV4| {
            format!(
                "{:08X}:{:04X}",
                u32::from_ne_bytes(a.ip().octets()),
                a.port()
            )
        };
        let (local, peer) = (hex(local), hex(peer));
        let deadline = tokio::time::Instant::now() + RESET_DRAIN_LIMIT;
        while tokio::time::Instant::now() < deadline {
            match unacked_bytes(&local, &peer).await {
                Some(0) | None => return,
                Some(_) => tokio::time::sleep(RESET_DRAIN_POLL).await,
            }
        }
    };
    tokio::select! {
        _ = wait => {}
        // The connection is already gone.
        _ = done.closed() => return,
    }
    let _ = done.send(());
}

/// The `tx_queue` column (bytes sent but not yet acknowledged) of the `/proc/net/tcp` row for
/// the connection between `local` and `peer`, both formatted as in that file.
async fn unacked_bytes(local: &str, peer: &str) -> Option<u64> {
    let table = tokio::fs::read_to_string("/proc/net/tcp").await.ok()?;
    table.lines().skip(1).find_map(|line| {
        // sl local_address rem_address st tx_queue:rx_queue ...
        let mut fields = line.split_whitespace().skip(1);
        if fields.next()? != local || fields.next()? != peer {
            return None;
        }
        let (tx_queue, _) = fields.nth(1)?.split_once(':')?;
        u64::from_str_radix(tx_queue, 16).ok()
    })
}
