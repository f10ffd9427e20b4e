//! TLS on the gRPC port: reads and checks the PEM files named by `--tls-cert`, `--tls-key` and
//! `--tls-client-ca` before anything binds, so a bad file stops the start with a message naming
//! the file and the problem, and builds tonic's server configuration from them.
//!
//! The files are read once, at start: rotating a certificate means restarting transferd (which
//! downloads survive). tonic fixes its acceptor when the server is built, and a restart keeps the
//! one place a certificate is loaded simple; a reload on SIGHUP would need an acceptor of our own.
//!
//! The checks here are rustls's own (the same library tonic serves with): a certificate or key
//! that passes them is one tonic accepts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// How long a client may take over the TLS handshake. Without a bound, a connection that opens
/// and sends nothing holds a handshake task forever; ten seconds is far beyond any real
/// handshake, even across continents on a loaded host.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Some TLS files were given but not the certificate and the key both.
    #[error("TLS needs both --tls-cert and --tls-key (and --tls-client-ca needs them too)")]
    Incomplete,
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not PEM, or holds none of what it should.
    #[error("{}: {problem}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong, for a person.
        problem: String,
    },
    /// The certificate and key were read but do not make a usable server identity (for
    /// example the key belongs to another certificate).
    #[error("the certificate in {} and the key in {} cannot be used together: {source}",
            cert.display(), key.display())]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// The client CA file holds certificates that cannot verify clients.
    #[error("{}: cannot verify client certificates with it: {reason}", path.display())]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// rustls's reason.
        reason: String,
    },
}

/// PEM certificates read from a file: the text (which tonic takes) and the parsed DER.
pub(crate) struct PemCerts {
    /// The file's bytes.
    pub pem: Vec<u8>,
    /// Every certificate in it, in order; never empty.
    pub der: Vec<CertificateDer<'static>>,
}

/// Reads `path` and parses every `CERTIFICATE` block in it; at least one must be there.
pub(crate) fn read_certs(path: &Path) -> Result<PemCerts, TlsError> {
    let pem = read(path)?;
    let der = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_problem(path, &e))?;
    if der.is_empty() {
        return Err(TlsError::Pem {
            path: path.into(),
            problem: "holds no certificate (expected a -----BEGIN CERTIFICATE----- block)".into(),
        });
    }
    Ok(PemCerts { pem, der })
}

/// Reads `path` and parses its first private key (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn read_key(path: &Path) -> Result<(Vec<u8>, PrivateKeyDer<'static>), TlsError> {
    let pem = read(path)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::Pem {
            path: path.into(),
            problem: "holds no private key (expected a -----BEGIN PRIVATE KEY-----, \
                      RSA PRIVATE KEY or EC PRIVATE KEY block)"
                .into(),
        },
        e => pem_problem(path, &e),
    })?;
    Ok((pem, key))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })
}

fn pem_problem(path: &Path, e: &pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.into(),
        problem: format!("is not valid PEM: {e}"),
    }
}

/// Reads and checks the server's certificate chain and key and, for mTLS, the CA that client
/// certificates must be signed by; returns tonic's configuration for them.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerTlsConfig, TlsError> {
    // The fetcher installs the same provider; whichever runs first wins, and both are ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chain = read_certs(cert)?;
    let (key_pem, key_der) = read_key(key)?;
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain.der, key_der)
        .map_err(|source| TlsError::Identity {
            cert: cert.into(),
            key: key.into(),
            source,
        })?;
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(chain.pem, key_pem))
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(path) = client_ca {
        let ca = read_certs(path)?;
        check_client_ca(path, ca.der)?;
        config = config.client_ca_root(Certificate::from_pem(ca.pem));
    }
    Ok(config)
}

/// Builds the verifier tonic will build, so a CA it would refuse (or silently skip) is refused
/// here with the file's name.
fn check_client_ca(path: &Path, certs: Vec<CertificateDer<'static>>) -> Result<(), TlsError> {
    let problem = |reason: String| TlsError::ClientCa {
        path: path.into(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| problem(e.to_string()))?;
    }
    rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| problem(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn missing_and_malformed_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = server_config(&missing, &missing, None).unwrap_err();
        assert!(e.to_string().starts_with("cannot read "), "{e}");
        assert!(e.to_string().contains("nope.pem"), "{e}");

        let text = file(dir.path(), "cert.pem", "just some text\n");
        let e = server_config(&text, &text, None).unwrap_err().to_string();
        assert!(e.contains("cert.pem: holds no certificate"), "{e}");

        let cut = file(dir.path(), "cut.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
        let e = server_config(&cut, &cut, None).unwrap_err().to_string();
        assert!(e.contains("cut.pem: is not valid PEM"), "{e}");
    }
}
