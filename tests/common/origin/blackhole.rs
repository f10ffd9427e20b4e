//! [`Blackhole`]: an address whose connection attempts hang, for connect timeouts.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Listen backlog of a [`Blackhole`]. Linux counts an accept queue as full once it holds more
/// than this many connections, so a small value needs only a couple of filler connections.
const BLACKHOLE_BACKLOG: u32 = 1;

/// How long a [`Blackhole`] filler connection may take before the queue counts as full. A
/// loopback handshake takes microseconds and a dropped SYN is only retried after a second, so
/// anything in between tells the two apart.
const BLACKHOLE_PROBE: Duration = Duration::from_millis(50);

/// Filler connections after which [`Blackhole::start`] gives up: a kernel that accepts this many
/// into a queue of [`BLACKHOLE_BACKLOG`] does not drop SYNs for a full queue at all.
const BLACKHOLE_MAX_FILL: usize = 32;

/// A TCP address on `127.0.0.1` that accepts no connections in time: a listener whose accept
/// queue is full, so new connection attempts hang (the kernel drops their SYN) until the client's
/// connect timeout, rather than being refused. Dropping it frees the port. This relies on Linux
/// dropping SYNs for a full accept queue (`net.ipv4.tcp_abort_on_overflow` = 0, the default).
pub struct Blackhole {
    addr: SocketAddr,
    /// Never accepted from: its full accept queue is what makes new connections hang.
    _listener: TcpListener,
    /// The connections that fill the accept queue.
    _filler: Vec<TcpStream>,
}

impl Blackhole {
    /// Listen on an OS-assigned port and fill the accept queue. Takes about 50 ms: the last
    /// filler attempt must time out to prove the queue is full. Panics if the kernel refuses the
    /// filler connections or never drops one.
    pub async fn start() -> Blackhole {
        let socket = TcpSocket::new_v4().expect("create blackhole socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind blackhole socket");
        let listener = socket
            .listen(BLACKHOLE_BACKLOG)
            .expect("listen on blackhole socket");
        let addr = listener.local_addr().expect("blackhole local addr");
        // Connect until an attempt hangs rather than trusting the kernel's queue arithmetic.
        // Connections that completed stay queued (nobody accepts them) for as long as we hold
        // them; the hanging attempt is abandoned when its timeout drops it.
        let mut filler = Vec::new();
        loop {
            assert!(
                filler.len() < BLACKHOLE_MAX_FILL,
                "the kernel completed {} connections to a listener with backlog {} that never \
                 accepts; it does not drop SYNs when the accept queue is full",
                filler.len(),
                BLACKHOLE_BACKLOG
            );
            match tokio::time::timeout(BLACKHOLE_PROBE, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => filler.push(stream),
                Ok(Err(e)) => panic!("filler connection to blackhole {addr} failed: {e}"),
                Err(_) => break,
            }
        }
        Blackhole {
            addr,
            _listener: listener,
            _filler: filler,
        }
    }

    /// The address connection attempts hang on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Absolute `http` URL for `path` (which must start with `/`) on this address.
    pub fn url(&self, path: &str) -> String {
        debug_assert!(path.starts_with('/'), "path must start with '/': {path}");
        format!("http://{}{}", self.addr, path)
    }
}
