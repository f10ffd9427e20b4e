//! [`SelfSignedTls`]: an address that speaks TLS with a certificate no client trusts (a
//! self-signed one for `localhost`, made once with openssl and kept in `selfsigned/`), for the
//! certificate-error tests. It completes handshakes only as far as the client lets it and never
//! serves HTTP: a client that verifies certificates must stop at the handshake.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The self-signed certificate (DER) and its PKCS#8 key.
const CERT: &[u8] = include_bytes!("selfsigned/cert.der");
const KEY: &[u8] = include_bytes!("selfsigned/key.der");

/// A TLS listener on `127.0.0.1` with an untrusted certificate; stops when dropped.
pub struct SelfSignedTls {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl SelfSignedTls {
    /// Starts listening on an OS-assigned port.
    pub async fn start() -> SelfSignedTls {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(CERT.to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(KEY.to_vec())),
            )
            .expect("the stored certificate and key match");
        let config = Arc::new(config);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind TLS listener");
        let addr = listener.local_addr().expect("TLS local addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let config = config.clone();
                let Ok(stream) = stream.into_std() else {
                    continue;
                };
                // rustls is synchronous; a blocking thread per handshake is fine for a test.
                tokio::task::spawn_blocking(move || handshake(config, stream));
            }
        });
        SelfSignedTls {
            addr,
            connections,
            task,
        }
    }

    /// `https://localhost:PORT/path`, which the certificate names.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.addr.port(), path)
    }

    /// TCP connections accepted so far: one per attempt of a client.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Runs the server side of a handshake until the client gives up on it.
fn handshake(config: Arc<rustls::ServerConfig>, mut stream: std::net::TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let Ok(mut conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    while conn.is_handshaking() {
        if conn.complete_io(&mut stream).is_err() {
            return;
        }
    }
}

impl Drop for SelfSignedTls {
    fn drop(&mut self) {
        self.task.abort();
    }
}
