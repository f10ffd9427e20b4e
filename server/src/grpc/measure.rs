//! The layer that measures every gRPC call for the metrics: calls by method and status code,
//! their duration, and the watch streams open. Composed outermost, so calls the inner layers
//! refuse (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED) are counted too.
//!
//! A call's code is in the response headers when it failed before answering (a trailers-only
//! response) and in the trailers otherwise, so a call is recorded when its status is known:
//! at once, or when its body ends. A body dropped before its status was sent is a call the
//! client abandoned (or the server shut down under), counted as CANCELLED.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use tonic::codegen::http;
use tonic::codegen::{Bytes, Service};

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

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Measured<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<Observed<ResBody>>;
    type Error = S::Error;
    type Future = MeasuredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let rpc = rpc(request.uri().path());
        MeasuredFuture {
            call: self.inner.call(request),
            rpc,
            started,
        }
    }
}

pin_project_lite::pin_project! {
    /// A measured call until its response is ready.
    pub struct MeasuredFuture<F> {
        #[pin]
        call: F,
        rpc: Rpc,
        started: Instant,
    }
}

impl<F, B, E> Future for MeasuredFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<Observed<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.call.poll(cx))?;
        let (rpc, started) = (*this.rpc, *this.started);
        // A trailers-only response carries its status in the headers: recorded now.
        let answered = tonic::Status::from_header_map(response.headers());
        if let Some(status) = &answered {
            metrics::global().call_finished(rpc, status.code(), started.elapsed());
        }
        let watch = answered.is_none() && metrics::is_watch(rpc);
        if watch {
            metrics::global().watch_streams(rpc, 1);
        }
        Poll::Ready(Ok(response.map(|body| Observed {
            body,
            rpc,
            started,
            recorded: answered.is_some(),
            watch,
        })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call when the status goes out in the trailers, or as
    /// CANCELLED when it is dropped before; a watch stream counts as open until it is dropped.
    pub struct Observed<B> {
        #[pin]
        body: B,
        rpc: Rpc,
        started: Instant,
        recorded: bool,
        watch: bool,
    }

    impl<B> PinnedDrop for Observed<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            record(this.recorded, *this.rpc, *this.started, tonic::Code::Cancelled);
            if *this.watch {
                metrics::global().watch_streams(*this.rpc, -1);
            }
        }
    }
}

/// Records a call's `code` once: the first time, when `recorded` is still false.
fn record(recorded: &mut bool, rpc: Rpc, started: Instant, code: tonic::Code) {
    if !*recorded {
        *recorded = true;
        metrics::global().call_finished(rpc, code, started.elapsed());
    }
}

impl<B> http_body::Body for Observed<B>
where
    B: http_body::Body<Data = Bytes, Error = tonic::Status>,
{
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.body.poll_frame(cx);
        let (rpc, started) = (*this.rpc, *this.started);
        match &frame {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = tonic::Status::from_header_map(trailers)
                        .map_or(tonic::Code::Unknown, |status| status.code());
                    record(this.recorded, rpc, started, code);
                }
            }
            Poll::Ready(Some(Err(status))) => record(this.recorded, rpc, started, status.code()),
            // A gRPC response always ends with its status; one that does not is broken.
            Poll::Ready(None) => record(this.recorded, rpc, started, tonic::Code::Unknown),
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
