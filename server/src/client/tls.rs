//! TLS for clients: [`TlsOptions`] says which CA to trust, which certificate to present when the
//! server requires one (mTLS) and which name to expect; [`Client::connect_tls`] connects with
//! them. The plaintext constructors are untouched.

use std::fmt;
use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::Client;
use crate::tls::{HANDSHAKE_TIMEOUT, TlsError, read_certs, read_key};

/// How to reach a transferd that serves TLS.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use transferd::client::{Client, TlsOptions};
/// let tls = TlsOptions::from_ca_file("ca.pem".as_ref())?
///     .identity_files("client.pem".as_ref(), "client.key".as_ref())?
///     .server_name("transferd.internal");
/// let client = Client::connect_tls("10.0.0.5:50051", &tls).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsOptions {
    /// PEM certificates of the CAs the server's certificate must chain to.
    ca: Vec<u8>,
    /// PEM certificate and key this client presents, for servers that require one.
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the server's certificate must carry, if not the host of the address.
    server_name: Option<String>,
}

impl TlsOptions {
    /// Trusts the CA certificates in `ca_pem` (PEM text) and only them: the system's roots are
    /// not consulted, since a transferd is normally served with a private CA.
    pub fn new(ca_pem: impl Into<Vec<u8>>) -> TlsOptions {
        TlsOptions {
            ca: ca_pem.into(),
            identity: None,
            server_name: None,
        }
    }

    /// Trusts the CA certificates in the PEM file at `path`; fails, naming the file, if it cannot
    /// be read or holds no certificate.
    pub fn from_ca_file(path: &Path) -> Result<TlsOptions, TlsError> {
        Ok(TlsOptions::new(read_certs(path)?.pem))
    }

    /// Presents this certificate chain and key (PEM text) to servers that ask for one.
    pub fn identity(self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        TlsOptions {
            identity: Some((cert_pem.into(), key_pem.into())),
            ..self
        }
    }

    /// Presents the certificate chain and key in these PEM files; fails, naming the file, if one
    /// cannot be read or holds no certificate or key.
    pub fn identity_files(self, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert = read_certs(cert)?.pem;
        let (key, _) = read_key(key)?;
        Ok(self.identity(cert, key))
    }

    /// Expects the server's certificate to name `name` instead of the host of the address (for
    /// example when connecting to `127.0.0.1` to a server whose certificate names its DNS name).
    pub fn server_name(self, name: impl Into<String>) -> Self {
        TlsOptions {
            server_name: Some(name.into()),
            ..self
        }
    }

    /// An endpoint for `addr` (`host:port` or a URI) over TLS. The scheme is always `https`:
    /// given TLS options, an `http://` address is upgraded rather than silently sent in the
    /// clear.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        let authority = addr
            .strip_prefix("https://")
            .or_else(|| addr.strip_prefix("http://"))
            .unwrap_or(addr);
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        Endpoint::from_shared(format!("https://{authority}"))?.tls_config(config)
    }
}

/// Leaves the key out: options get logged and printed, keys must not be.
impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("client_identity", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to transferd at `addr` (`host:port` or a URI) over TLS with `tls`. Fails if the
    /// address is not a valid URI, nothing answers there, or the handshake fails (a certificate
    /// the options do not trust, or a server that requires a client certificate they lack).
    pub async fn connect_tls(
        addr: &str,
        tls: &TlsOptions,
    ) -> Result<Client, tonic::transport::Error> {
        let channel = tls.endpoint(addr)?.connect().await?;
        Ok(Client::from_channel(channel))
    }
}
