//! The HTTP endpoint of `--metrics-listen`: `GET /metrics` answers the metrics in the text
//! exposition format; any other path is 404 and any other method on `/metrics` 405. HTTP/1.1
//! only, as Prometheus scrapes; its own listener, so a scrape never competes with gRPC calls
//! for the in-flight caps and the gRPC port's TLS and tokens do not apply to it.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The path metrics are served on, Prometheus's default `metrics_path`.
const METRICS_PATH: &str = "/metrics";

/// The content type of the OpenMetrics text format `prometheus-client` writes; Prometheus
/// asks for it first when it scrapes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics endpoint, bound and not yet serving.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
}

/// Binds the metrics endpoint on `addr` (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<MetricsServer> {
    Ok(MetricsServer {
        listener: TcpListener::bind(addr).await?,
    })
}

impl MetricsServer {
    /// The address it is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers scrapes until `shutdown` fires; a scrape in progress then ends with it.
    pub async fn serve(self, shutdown: CancellationToken) {
        loop {
            let socket = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((socket, _)) => socket,
                    Err(e) => {
                        // Out of descriptors, or a connection reset before it was accepted:
                        // the next accept may well succeed.
                        tracing::debug!(error = %e, "metrics: accept failed");
                        continue;
                    }
                },
                () = shutdown.cancelled() => return,
            };
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), hyper::service::service_fn(answer));
                tokio::select! {
                    result = connection => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "metrics: connection ended");
                        }
                    }
                    () = shutdown.cancelled() => {}
                }
            });
        }
    }
}

/// The answer to one request.
async fn answer<B>(request: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = if request.uri().path() != METRICS_PATH {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics\n".into(),
        )
    } else if request.method() != Method::GET {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        )
    } else {
        (StatusCode::OK, CONTENT_TYPE, super::global().encode())
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    Ok(response)
}
