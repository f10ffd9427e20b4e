//! Certificates for the TLS tests, made fresh by each test with rcgen: a CA, a server certificate
//! for `localhost` and `127.0.0.1` and a client certificate both signed by it, and a second,
//! unrelated CA with a client certificate of its own. [`Pki`] writes them as PEM files the
//! server's flags name, and builds the [`TlsOptions`] a client connects with.
//!
//! (The HTTPS origin's [`SelfSignedTls`](super::origin::SelfSignedTls) keeps its stored
//! certificate: it must be one no client trusts, which needs no CA.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tempfile::TempDir;
use transferd::client::TlsOptions;

use super::DEADLINE;

/// What an HTTP/2 client sends first: the connection preface and an empty SETTINGS frame. A
/// server that accepted the connection answers with a SETTINGS frame of its own.
const H2_OPENING: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// The PEM files of one test's certificates, in a temporary directory removed on drop.
pub struct Pki {
    dir: TempDir,
}

/// A CA that can sign certificates.
type Ca = CertifiedIssuer<'static, KeyPair>;

impl Pki {
    /// Makes both CAs and every certificate, and writes them: `ca.pem`, `server.pem`,
    /// `server.key`, `client.pem`, `client.key`, `other-ca.pem`, `other-client.pem`,
    /// `other-client.key`.
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("create a directory for certificates");
        let pki = Pki { dir };
        let ca = new_ca("transferd test CA");
        pki.write("ca.pem", &ca.pem());
        let server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("valid names");
        pki.sign("server", server, ExtendedKeyUsagePurpose::ServerAuth, &ca);
        pki.sign(
            "client",
            client_params("app"),
            ExtendedKeyUsagePurpose::ClientAuth,
            &ca,
        );

        let other = new_ca("unrelated CA");
        pki.write("other-ca.pem", &other.pem());
        let params = client_params("stranger");
        pki.sign(
            "other-client",
            params,
            ExtendedKeyUsagePurpose::ClientAuth,
            &other,
        );
        pki
    }

    /// The path of one of the files [`Pki::new`] wrote.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `contents` to `name` in the certificates' directory (for files a test spoils).
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {name}: {e}"));
        path
    }

    /// The server's flags for TLS with the server certificate.
    pub fn server_flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.arg("server.pem"),
            "--tls-key".into(),
            self.arg("server.key"),
        ]
    }

    /// [`Pki::server_flags`] plus `--tls-client-ca` with the CA: clients need its certificate.
    pub fn mtls_flags(&self) -> Vec<String> {
        let mut flags = self.server_flags();
        flags.extend(["--tls-client-ca".into(), self.arg("ca.pem")]);
        flags
    }

    /// Options that trust the CA and present no certificate.
    pub fn trusting_ca(&self) -> TlsOptions {
        TlsOptions::from_ca_file(&self.path("ca.pem")).expect("the CA file reads")
    }

    /// Options that trust the unrelated CA only.
    pub fn trusting_other_ca(&self) -> TlsOptions {
        TlsOptions::from_ca_file(&self.path("other-ca.pem")).expect("the CA file reads")
    }

    /// Options that trust the CA and present the client certificate it signed.
    pub fn with_client_cert(&self) -> TlsOptions {
        self.trusting_ca()
            .identity_files(&self.path("client.pem"), &self.path("client.key"))
            .expect("the client files read")
    }

    /// Options that trust the CA and present the unrelated CA's client certificate.
    pub fn with_other_client_cert(&self) -> TlsOptions {
        let cert = self.path("other-client.pem");
        let key = self.path("other-client.key");
        self.trusting_ca()
            .identity_files(&cert, &key)
            .expect("the client files read")
    }

    fn arg(&self, name: &str) -> String {
        path_arg(&self.path(name))
    }

    /// Signs `params` with `ca` for `usage` and writes `NAME.pem` and `NAME.key`.
    fn sign(
        &self,
        name: &str,
        mut params: CertificateParams,
        usage: ExtendedKeyUsagePurpose,
        ca: &Ca,
    ) {
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("generate a key");
        let cert = params.signed_by(&key, ca).expect("sign a certificate");
        self.write(&format!("{name}.pem"), &cert.pem());
        self.write(&format!("{name}.key"), &key.serialize_pem());
    }
}

/// A path as a command-line argument.
pub fn path_arg(path: &Path) -> String {
    path.to_str().expect("temporary paths are UTF-8").to_owned()
}

fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().expect("generate a CA key");
    CertifiedIssuer::self_signed(params, key).expect("self-sign a CA")
}

fn client_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
    params.distinguished_name.push(DnType::CommonName, name);
    params
}

/// Connects to `addr` with rustls itself, trusting the CAs in `trust` and presenting
/// `identity` (certificate and key files) if given, sends the HTTP/2 opening and reads the
/// server's first answer. `Ok` if the server answered; otherwise the TLS error that ended the
/// exchange, such as the alert of a server that refused the handshake. Done by hand rather than
/// through a gRPC client so a test sees the handshake's own outcome, not a transport's summary.
pub fn tls_exchange(
    addr: SocketAddr,
    trust: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<(), rustls::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(trust).expect("the CA file reads") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("a usable CA");
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .expect("the certificate file reads")
                .collect::<Result<Vec<_>, _>>()
                .expect("certificates");
            let key = PrivateKeyDer::from_pem_file(key).expect("the key file reads");
            builder
                .with_client_auth_cert(chain, key)
                .expect("a usable identity")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::IpAddress(addr.ip().into());
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("a TLS client");
    let mut tcp = TcpStream::connect(addr).expect("connect to the server");
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let mut answer = [0u8; 64];
    let read = tls
        .write_all(H2_OPENING)
        .and_then(|()| tls.flush())
        .and_then(|()| tls.read(&mut answer));
    match read {
        Ok(0) => panic!("the server closed the connection without a TLS alert"),
        Ok(_) => Ok(()),
        Err(e) => Err(e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .cloned()
            .unwrap_or_else(|| panic!("not a TLS error: {e}"))),
    }
}

/// Sends the HTTP/2 opening to `addr` in plaintext and returns the first bytes of the answer
/// (empty if the server closed without one).
pub fn plaintext_exchange(addr: SocketAddr) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).expect("connect to the server");
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp.write_all(H2_OPENING).expect("send the HTTP/2 opening");
    let mut answer = vec![0u8; 64];
    let n = tcp.read(&mut answer).unwrap_or(0);
    answer.truncate(n);
    answer
}
