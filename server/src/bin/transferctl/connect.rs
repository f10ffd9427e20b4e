//! Reaching the server: the global flags become one connection (plaintext or TLS) and a
//! [`Client`] that sends the token, if any, with every call.

use std::time::Duration;

use anyhow::{Context, bail};
use tonic::transport::Endpoint;
use transferd::client::{Client, TlsOptions};

use crate::args::Global;

/// How long to wait for the server to accept the connection: a server on the same host or
/// network answers in milliseconds; beyond this it is down or the address is wrong, and a
/// person waiting at a prompt should hear so.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `--server` as the global flags say; fails with the address and the cause.
pub async fn connect(global: &Global) -> anyhow::Result<Client> {
    let server = &global.server;
    let endpoint = match tls_options(global)? {
        Some(tls) => tls
            .endpoint(server)
            .with_context(|| format!("{server:?} is not a valid server address"))?,
        None => {
            if server.starts_with("https://") {
                bail!("{server} is an https address: pass --ca-cert (TRANSFERCTL_CA_CERT)");
            }
            let uri = match server.contains("://") {
                true => server.clone(),
                false => format!("http://{server}"),
            };
            Endpoint::from_shared(uri)
                .with_context(|| format!("{server:?} is not a valid server address"))?
        }
    };
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .with_context(|| {
            format!("cannot connect to transferd at {server} (is it running there? see --server)")
        })?;
    match global.token.as_deref().filter(|t| !t.is_empty()) {
        Some(token) => Client::from_channel_with_token(channel, token)
            .context("the token cannot be sent: it must be printable ASCII"),
        None => Ok(Client::from_channel(channel)),
    }
}

/// The TLS options, if `--ca-cert` asks for TLS; reads the files now, naming any that fails.
fn tls_options(global: &Global) -> anyhow::Result<Option<TlsOptions>> {
    let Some(ca) = &global.ca_cert else {
        return Ok(None);
    };
    let mut tls = TlsOptions::from_ca_file(ca)?;
    if let (Some(cert), Some(key)) = (&global.client_cert, &global.client_key) {
        tls = tls.identity_files(cert, key)?;
    }
    if let Some(name) = &global.server_name {
        tls = tls.server_name(name);
    }
    Ok(Some(tls))
}
