//! Wiring: opens the store and the engine, serves everything `grpc::routes` returns on an
//! already-bound listener, and shuts down in order: health flips to NOT_SERVING, new calls stop,
//! streams end, transfers checkpoint.

use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::ServerTlsConfig;

use crate::auth::tokens::{TokenFile, TokenFileError};
use crate::config::Config;
use crate::config::StoreUrl;
use crate::datadir::DataDirLock;
use crate::egress::EgressPolicy;
use crate::engine::ClusterConfig;
use crate::engine::{Engine, EngineConfig};
use crate::fetch::{Fetcher, Timeouts};
use crate::grpc;
use crate::grpc::limits::{LimitLayer, LimitsConfig};
use crate::metrics::{MetricsServer, TimedStore};
use crate::retry::RetryPolicy;
use crate::store::{PostgresStore, SqliteStore, StoreError};

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration would serve unauthenticated beyond loopback.
    #[error(transparent)]
    Exposed(#[from] crate::config::ExposedError),
    /// The token file is missing or wrong.
    #[error(transparent)]
    Tokens(#[from] TokenFileError),
    /// Another process holds the data directory, or it cannot be locked.
    #[error(transparent)]
    Locked(#[from] crate::datadir::LockError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine could not be set up.
    #[error(transparent)]
    Engine(#[from] crate::error::Error),
    /// A directory could not be prepared.
    #[error("cannot prepare {}: {source}{}", path.display(), crate::datadir::permission_hint(source, path))]
    Io {
        /// The directory.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    /// Serving gRPC failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built from the descriptor set.
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The TLS certificate, key or client CA cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The metrics address cannot be listened on.
    #[error("cannot listen on {addr} for metrics (--metrics-listen): {source}")]
    MetricsListen {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A transferd whose store is open and whose downloads are loaded, not yet serving. Opening
/// before binding lets the binary refuse a bad store before it announces an address.
#[derive(Debug)]
pub struct Transferd {
    engine: Engine,
    token: CancellationToken,
    limits: LimitsConfig,
    /// The bearer tokens in force, if authentication is configured.
    tokens: Option<Arc<TokenFile>>,
    /// Held until the server has stopped.
    lock: DataDirLock,
    /// TLS for the gRPC port, checked at open; `None` serves plaintext.
    tls: Option<ServerTlsConfig>,
    /// The metrics endpoint, bound at open; `None` without `--metrics-listen`.
    metrics: Option<MetricsServer>,
}

impl Transferd {
    /// Refuses a configuration that would serve unauthenticated beyond loopback, reads and
    /// checks the TLS files and the token file, locks the data directory (before anything else touches it), prepares the
    /// download directory, opens the store and loads every download.
    pub async fn open(config: Config) -> Result<Transferd, ServeError> {
        // First: a bad configuration is an error that should touch nothing.
        config.check_exposure()?;
        let tls = config.tls()?;
        let tokens = match &config.auth_tokens {
            Some(path) => {
                let tokens = TokenFile::load(path)?;
                tracing::info!(file = %path.display(), tokens = tokens.len(), "authentication on");
                Some(Arc::new(tokens))
            }
            None => {
                if config.allow_unauthenticated {
                    tracing::warn!(
                        listen = %config.listen,
                        "serving WITHOUT authentication (--allow-unauthenticated): anyone who \
                         can reach this address controls every download"
                    );
                }
                None
            }
        };
        let lock = DataDirLock::acquire(&config.data_dir)?;
        let download_dir = config.download_dir();
        std::fs::create_dir_all(&download_dir).map_err(|source| ServeError::Io {
            path: download_dir.clone(),
            source,
        })?;
        let metrics = bind_metrics(config.metrics_listen).await?;
        let token = CancellationToken::new();
        let engine_config = EngineConfig {
            download_dir,
            max_active: config.max_active,
            retry: RetryPolicy {
                max_attempts: config.max_attempts,
                base_delay: config.retry_base_delay,
                max_delay: config.retry_max_delay,
            },
            min_free_disk_bytes: config.min_free_disk,
            default_cost_policy: config.default_cost_policy.into(),
            max_file_size: config.max_file_size,
            retain_finished: config.retain_finished,
            max_download_rate: config.max_download_rate.filter(|&rate| rate > 0),
        };
        let fetcher = Fetcher::new(
            Timeouts {
                connect: config.connect_timeout,
                stall: config.stall_timeout,
                min_speed: config.min_speed,
            },
            Arc::new(EgressPolicy::new(&config.deny_egress, &config.allow_egress)),
            &config.resolve,
        )?
        .with_connections(
            config.max_connections_per_download as usize,
            config.max_connections_per_host as usize,
        )
        .with_write_mode(config.write_mode);
        let engine = open_engine(&config, engine_config, fetcher, token.clone()).await?;
        Ok(Transferd {
            engine,
            token,
            limits: LimitsConfig {
                max_inflight_calls: config.max_inflight_calls,
                max_streams: config.max_streams,
                max_streams_per_tenant: config.max_streams_per_tenant,
            },
            tokens,
            lock,
            tls,
            metrics,
        })
    }

    /// The address metrics are served on, if `--metrics-listen` was given.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref()?.local_addr().ok()
    }

    /// The token file in force, if authentication is configured, so the binary can reload it
    /// on SIGHUP.
    pub fn tokens(&self) -> Option<Arc<TokenFile>> {
        self.tokens.clone()
    }

    /// Serves on `listener` until `shutdown` completes, then shuts down cleanly.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Transferd {
            engine,
            token,
            limits,
            tokens,
            lock,
            tls,
            metrics,
        } = self;
        if let Some(metrics) = metrics {
            tokio::spawn(metrics.serve(token.clone()));
        }
        let (routes, health) = grpc::routes(engine.clone()).await?;
        engine.start();
        match listener.local_addr() {
            Ok(addr) => tracing::info!(%addr, tls = tls.is_some(), "serving"),
            Err(e) => tracing::info!(addr = %e, tls = tls.is_some(), "serving"),
        }

        let stop = async move {
            shutdown.await;
            tracing::info!("shutting down");
            health.set_not_serving().await;
            // Streams end and transfers checkpoint once the token fires.
            token.cancel();
        };
        // tonic applies its own `tcp_nodelay` only to listeners it binds itself, so accepted
        // sockets get TCP_NODELAY here: without it, small responses on a connection that
        // multiplexes calls (every gRPC channel does) wait ~40 ms for delayed ACKs. With TLS,
        // tonic runs the handshake on these same sockets (its `tls_config` wraps any incoming
        // stream), so the option holds under TLS too.
        // Each plaintext socket's writes are coalesced (see `grpc::coalesce`), so a change seen
        // by thousands of watchers on one connection is written in a few large writes.
        let coalesce = tls.is_none();
        let incoming = TcpListenerStream::new(listener).map(|accepted| {
            if let Ok(socket) = &accepted {
                if let Err(e) = socket.set_nodelay(true) {
                    tracing::warn!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
                }
            }
            accepted.map(|socket| grpc::coalesce::Coalescing::new(socket, coalesce))
        });
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        builder
            .layer(grpc::MeasureLayer)
            .layer(grpc::identify_layer(tokens))
            .layer(LimitLayer::new(limits))
            .serve_with_incoming_shutdown(routes, incoming, stop)
            .await?;
        engine.drain().await;
        drop(lock);
        tracing::info!("stopped");
        Ok(())
    }
}

/// Binds the metrics endpoint if `--metrics-listen` asks for one, and says where (or that
/// there is none). Any address is allowed: the endpoint is read-only and its metrics carry
/// counts and volumes, no guids, URIs, tenant names or secrets (see the README's Metrics).
async fn bind_metrics(
    addr: Option<std::net::SocketAddr>,
) -> Result<Option<MetricsServer>, ServeError> {
    let Some(addr) = addr else {
        tracing::debug!("metrics off (no --metrics-listen)");
        return Ok(None);
    };
    let server = crate::metrics::bind(addr)
        .await
        .map_err(|source| ServeError::MetricsListen { addr, source })?;
    let bound = server.local_addr().unwrap_or(addr);
    tracing::info!(addr = %bound, "metrics listening");
    Ok(Some(server))
}

/// Opens the engine on the store `--store` names: the embedded SQLite database, or PostgreSQL
/// shared with any other replicas.
async fn open_engine(
    config: &Config,
    engine_config: EngineConfig,
    fetcher: Fetcher,
    token: CancellationToken,
) -> Result<Engine, ServeError> {
    Ok(match &config.store {
        StoreUrl::Sqlite => {
            let store = Arc::new(TimedStore::new(SqliteStore::open(&config.data_dir).await?));
            Engine::open(engine_config, store, fetcher, token).await?
        }
        StoreUrl::Postgres(url) => {
            let store = Arc::new(TimedStore::new(PostgresStore::open(url).await?));
            let node = config.node_id();
            tracing::info!(node = %node, lease_ttl = ?config.lease_ttl, "sharing a PostgreSQL store with any other replicas");
            let cluster = ClusterConfig {
                node,
                lease_ttl: config.lease_ttl,
            };
            Engine::open_shared(engine_config, store, cluster, fetcher, token).await?
        }
    })
}
