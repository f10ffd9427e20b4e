//! The layer that measures every gRPC call for the metrics: calls by method and status code,
//! their duration, and the watch streams open. Composed outermost, so calls the inner layers
//! refuse (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED) are counted too.
//!
//! A call's code is in the response headers when it failed before answering (a trailers-only
//! response) and in the trailers otherwise, so a call is recorded when its status is known:
//! at once, or when its body ends. A body dropped before its status was sent is a call the
//! client abandoned (or the server shut down under), counted as CANCELLED.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::{BoxFuture, Bytes, Service};

use super::roles;
use crate::metrics::{self, Rpc};

/// Methods served besides the contract's: health and reflection (both versions).
const OTHER_METHODS: [(&str, &str); 4] = [
    ("grpc.health.v1.Health", "Check"),
    ("grpc.health.v1.Health", "Watch"),
    (
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
    ),
];

/// The label of every path that is not a method we serve, so a client cannot grow the label
/// set by calling made-up methods.
const UNKNOWN: Rpc = Rpc {
    service: "unknown",
    method: "unknown",
};

/// The label of the method at `path`.
fn rpc(path: &str) -> Rpc {
    let named = roles::contract_method(path).or_else(|| {
        let asked = path.strip_prefix('/')?.rsplit_once('/')?;
        OTHER_METHODS.into_iter().find(|known| *known == asked)
    });
    named.map_or(UNKNOWN, |(service, method)| Rpc { service, method })
}

/// Measures every call of the service it wraps.
#[derive(Clone, Copy, Debug, Default)]
pub struct MeasureLayer;

impl<S> tower::Layer<S> for MeasureLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured { inner }
    }
}

/// A service whose calls are measured.
#[derive(Clone, Debug)]
pub struct Measured<S> {
    inner: S,
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for Measured<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let rpc = rpc(request.uri().path());
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            if let Some(status) = tonic::Status::from_header_map(response.headers()) {
                metrics::global().call_finished(rpc, status.code(), started.elapsed());
                return Ok(response);
            }
            let watch = metrics::is_watch(rpc);
            if watch {
                metrics::global().watch_streams(rpc, 1);
            }
            Ok(response.map(|body| {
                Body::new(Observed {
                    body,
                    rpc,
                    started,
                    recorded: false,
                    watch,
                })
            }))
        })
    }
}

/// A response body that records its call when the status goes out in the trailers, or as
/// CANCELLED when it is dropped before; a watch stream counts as open until it is dropped.
struct Observed {
    body: Body,
    rpc: Rpc,
    started: Instant,
    recorded: bool,
    watch: bool,
}

impl Observed {
    fn record(&mut self, code: tonic::Code) {
        if !self.recorded {
            self.recorded = true;
            metrics::global().call_finished(self.rpc, code, self.started.elapsed());
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.record(tonic::Code::Cancelled);
        if self.watch {
            metrics::global().watch_streams(self.rpc, -1);
        }
    }
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = tonic::Status::from_header_map(trailers)
                        .map_or(tonic::Code::Unknown, |status| status.code());
                    self.record(code);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let code = status.code();
                self.record(code);
            }
            // A gRPC response always ends with its status; one that does not is broken.
            Poll::Ready(None) => self.record(tonic::Code::Unknown),
            Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_labelled_from_fixed_tables_and_anything_else_is_unknown() {
        let create = rpc("/backgroundtransfer.v1.BackgroundTransferService/CreateDownload");
        assert_eq!(create.method, "CreateDownload");
        assert_eq!(
            create.service,
            "backgroundtransfer.v1.BackgroundTransferService"
        );
        assert_eq!(rpc("/grpc.health.v1.Health/Check").method, "Check");
        assert_eq!(rpc("/grpc.health.v1.Health/Nope"), UNKNOWN);
        assert_eq!(
            rpc("/backgroundtransfer.v1.BackgroundTransferService/Made-Up"),
            UNKNOWN
        );
        assert_eq!(rpc("not even a path"), UNKNOWN);
    }
}
