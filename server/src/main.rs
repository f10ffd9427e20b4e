//! The `transferd` binary: parses configuration, sets up logging, binds, and runs the service
//! until SIGTERM or SIGINT; SIGHUP re-reads the token file. `transferd healthcheck` probes a
//! running server (for container HEALTHCHECKs); `transferd hash-token` hashes or makes a token
//! for the token file.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use transferd::client::TlsOptions;

/// How long `transferd healthcheck` waits for an answer.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// transferd: background HTTP(S) downloads over gRPC, modelled on WinRT BackgroundTransfer.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: transferd::Config,
    #[command(flatten)]
    log: transferd::logging::LogConfig,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Exit 0 if the server at ADDR reports SERVING on grpc.health.v1, 1 otherwise.
    Healthcheck {
        /// Address of the server to probe [default: the --listen address].
        #[arg(long, env = "TRANSFERD_HEALTHCHECK_ADDR")]
        addr: Option<SocketAddr>,
        #[command(flatten)]
        tls: ProbeTls,
    },
    /// Print the SHA-256 of TOKEN, for `token_sha256` in the --auth-tokens file. Without TOKEN,
    /// make a new random token and print it, then the line to paste into the file.
    HashToken {
        /// The token to hash; `-` reads it from standard input (one line).
        token: Option<String>,
    },
}

/// TLS for `transferd healthcheck`, for a server started with --tls-cert.
#[derive(clap::Args, Debug)]
struct ProbeTls {
    /// Probe over TLS, trusting the CA certificates in this PEM file (the CA that signed the
    /// server's --tls-cert). Without it the probe speaks plaintext.
    #[arg(long, env = "TRANSFERD_HEALTHCHECK_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Present this PEM client certificate, for a server started with --tls-client-ca; needs
    /// --client-key and --ca-cert.
    #[arg(long, env = "TRANSFERD_HEALTHCHECK_CLIENT_CERT", value_name = "FILE",
          requires_all = ["client_key", "ca_cert"])]
    client_cert: Option<PathBuf>,
    /// The PEM private key of --client-cert.
    #[arg(
        long,
        env = "TRANSFERD_HEALTHCHECK_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
    /// The name the server's certificate must carry [default: the probed address]; useful
    /// when probing 127.0.0.1 in a container whose certificate names the service's DNS name.
    #[arg(
        long,
        env = "TRANSFERD_HEALTHCHECK_SERVER_NAME",
        value_name = "NAME",
        requires = "ca_cert"
    )]
    server_name: Option<String>,
}

impl ProbeTls {
    /// The client's TLS options, if the probe is to use TLS; reads the files now.
    fn options(&self) -> anyhow::Result<Option<TlsOptions>> {
        let Some(ca) = &self.ca_cert else {
            return Ok(None);
        };
        let mut tls = TlsOptions::from_ca_file(ca)?;
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            tls = tls.identity_files(cert, key)?;
        }
        if let Some(name) = &self.server_name {
            tls = tls.server_name(name);
        }
        Ok(Some(tls))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::HashToken { token }) = &cli.command {
        return report(hash_token(token.as_deref()));
    }
    if let Err(e) = cli.log.init() {
        eprintln!("transferd: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("transferd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::Healthcheck { addr, tls }) => runtime.block_on(async {
            healthcheck(addr.unwrap_or(cli.config.listen), tls.options()?).await
        }),
        Some(Command::HashToken { .. }) => unreachable!("handled before the runtime starts"),
        None => runtime.block_on(serve(cli.config)),
    };
    report(result)
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("transferd: {}", explain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: many errors already print their
/// source in their own message (`cannot lock ...: Permission denied (os error 13)`), and
/// repeating it after them would say the same thing twice.
fn explain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

async fn serve(config: transferd::Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let transferd = transferd::server::Transferd::open(config).await?;
    if let Some(tokens) = transferd.tokens() {
        // Installed before the address is announced: until then SIGHUP would end the process.
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP to reload the token file")?;
        tokio::spawn(reload_on_hangup(hangup, tokens));
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(transferd.serve(listener, shutdown_signal()));
    // Announced on stdout so scripts and tests that pass port 0 learn the real port.
    println!("listening on {addr}");
    server.await.context("server task failed")??;
    Ok(())
}

/// Re-reads the token file on every SIGHUP. A bad file keeps the tokens in force.
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    tokens: std::sync::Arc<transferd::auth::tokens::TokenFile>,
) {
    while hangup.recv().await.is_some() {
        let file = tokens.path().display();
        match tokens.reload() {
            Ok(count) => tracing::info!(%file, tokens = count, "token file reloaded"),
            Err(e) => tracing::error!(
                error = %e,
                "token file NOT reloaded; the previous tokens stay in force until it is fixed"
            ),
        }
    }
}

/// `transferd hash-token [TOKEN]`.
fn hash_token(token: Option<&str>) -> anyhow::Result<()> {
    use transferd::auth::tokens::{check_token, generate_token, token_sha256};
    let token = match token {
        Some("-") => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the token from standard input")?;
            line.trim_end_matches(['\n', '\r']).to_owned()
        }
        Some(token) => token.to_owned(),
        None => {
            let token = generate_token().context("cannot read random bytes from the OS")?;
            eprintln!(
                "A new token (first line: give it to the client, keep it secret) and the line \
                 for its [[tokens]] entry in the --auth-tokens file:"
            );
            println!("{token}\ntoken_sha256 = \"{}\"", token_sha256(&token));
            return Ok(());
        }
    };
    check_token(&token).map_err(|why| anyhow::anyhow!("{why}; clients could not send it"))?;
    println!("{}", token_sha256(&token));
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn healthcheck(mut addr: SocketAddr, tls: Option<TlsOptions>) -> anyhow::Result<()> {
    // A server listening on every interface (0.0.0.0 in a container) is probed on loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let probe = async {
        let endpoint = match &tls {
            Some(tls) => tls.endpoint(&addr.to_string())?,
            None => tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?,
        };
        let channel = endpoint.connect().await?;
        let mut client = HealthClient::new(channel);
        let response = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner();
        anyhow::Ok(response.status())
    };
    let plaintext = tls.is_none();
    let status = tokio::time::timeout(HEALTHCHECK_TIMEOUT, probe)
        .await
        .with_context(|| format!("no answer from {addr} within {HEALTHCHECK_TIMEOUT:?}"))?
        .with_context(|| match plaintext {
            // A plaintext probe of a TLS port fails with an HTTP/2 error that names neither.
            true => format!("{addr} did not answer a plaintext probe (TLS? pass --ca-cert)"),
            false => format!("{addr} did not answer a TLS probe"),
        })?;
    anyhow::ensure!(
        status == ServingStatus::Serving,
        "{addr} reports {status:?}"
    );
    println!("SERVING");
    Ok(())
}
