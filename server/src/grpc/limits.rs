//! Overload is answered, not absorbed: a cap on calls being handled at once, and caps on open
//! streams in total and per tenant. A call beyond a cap gets RESOURCE_EXHAUSTED at once, so a
//! flood of creates or a client that opens watch streams and never reads them costs bounded
//! memory, and the callers within the caps are not slowed by the ones beyond them.
//!
//! A call holds an in-flight permit until its handler has answered (for a stream: until the
//! stream starts); a stream then holds a stream permit until it ends, however it ends. Health
//! checks are never refused, so an overloaded server is not also restarted by its orchestrator.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use tonic::codegen::http;
use tonic::codegen::{Bytes, Service};

use super::coalesce::{ConnectionInfo, OpenStreams, StreamOpen};
use crate::auth::{Caller, Tenant};

/// gRPC paths whose calls are exempt from the in-flight cap (health checks).
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// The methods whose answer is a long-lived stream, counted against the stream caps.
const STREAMING_METHODS: [&str; 4] = [
    "/backgroundtransfer.v1.BackgroundTransferService/WatchDownload",
    "/backgroundtransfer.v1.BackgroundTransferService/WatchDownloads",
    "/grpc.health.v1.Health/Watch",
    // Reflection is a bidirectional stream: a tool holds it for the length of a session.
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
];

/// The caps, as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Calls being handled at once, over all connections.
    pub max_inflight_calls: usize,
    /// Open streams, over all tenants.
    pub max_streams: usize,
    /// Open streams of one tenant.
    pub max_streams_per_tenant: usize,
}

/// The shared counters behind the caps.
#[derive(Debug)]
struct Limits {
    config: LimitsConfig,
    calls: Cap,
    streams: Cap,
    per_tenant: Mutex<HashMap<Tenant, usize>>,
}

/// A count with a ceiling, taken without waiting: beyond the ceiling a call is refused, never
/// queued. (A semaphore would also do, but giving a permit back takes its waiters' lock, on
/// every call, although nothing here ever waits.)
#[derive(Debug)]
struct Cap {
    max: usize,
    taken: AtomicUsize,
}

impl Cap {
    fn new(max: usize) -> Cap {
        Cap {
            max,
            taken: AtomicUsize::new(0),
        }
    }

    /// Takes one if fewer than the ceiling are taken.
    fn take(&self) -> bool {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < self.max).then_some(taken + 1)
            })
            .is_ok()
    }

    /// Gives back one taken with [`Cap::take`].
    fn give_back(&self) {
        self.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A call's in-flight slot, given back when it is dropped (once its handler has answered).
#[derive(Debug)]
pub struct CallPermit(Arc<Limits>);

impl Drop for CallPermit {
    fn drop(&mut self) {
        self.0.calls.give_back();
    }
}

/// The tower layer that applies the caps to every call; composed where the server is built,
/// inside the layer that establishes the caller (so a stream is counted against its tenant).
#[derive(Clone, Debug)]
pub struct LimitLayer {
    limits: Arc<Limits>,
}

impl LimitLayer {
    /// The caps in `config`.
    pub fn new(config: LimitsConfig) -> LimitLayer {
        LimitLayer {
            limits: Arc::new(Limits {
                config,
                calls: Cap::new(config.max_inflight_calls),
                streams: Cap::new(config.max_streams),
                per_tenant: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl<S> tower::Layer<S> for LimitLayer {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Limited<S> {
        Limited {
            inner,
            limits: self.limits.clone(),
        }
    }
}

/// A service with the caps applied.
#[derive(Clone, Debug)]
pub struct Limited<S> {
    inner: S,
    limits: Arc<Limits>,
}

/// A stream's claim on the caps, given back when the stream's body is dropped; it also counts
/// the stream among its connection's open streams, which decide whether the connection's writes
/// are coalesced (see `grpc/coalesce.rs`).
#[derive(Debug)]
pub struct StreamPermit {
    tenant: Tenant,
    limits: Arc<Limits>,
    _on_connection: Option<StreamOpen>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.limits.streams.give_back();
        let mut per_tenant = self.limits.per_tenant.lock().expect("stream counts");
        if let Some(open) = per_tenant.get_mut(&self.tenant) {
            *open -= 1;
            if *open == 0 {
                per_tenant.remove(&self.tenant);
            }
        }
    }
}

impl Limits {
    /// Claims an in-flight slot, or says why not.
    fn call(self: &Arc<Self>) -> Result<Option<CallPermit>, tonic::Status> {
        if !self.calls.take() {
            return Err(tonic::Status::resource_exhausted(format!(
                "the server is handling {} calls, its limit (--max-inflight-calls); retry with \
                 backoff",
                self.config.max_inflight_calls
            )));
        }
        Ok(Some(CallPermit(self.clone())))
    }

    /// Claims a stream slot for `tenant` on `connection`, or says which cap is reached.
    fn stream(
        self: &Arc<Self>,
        tenant: Tenant,
        connection: Option<&OpenStreams>,
    ) -> Result<StreamPermit, tonic::Status> {
        if !self.streams.take() {
            return Err(tonic::Status::resource_exhausted(format!(
                "the server has {} open streams, its limit (--max-streams); close streams you \
                 no longer read",
                self.config.max_streams
            )));
        }
        let mut per_tenant = self.per_tenant.lock().expect("stream counts");
        let open = per_tenant.entry(tenant.clone()).or_default();
        if *open >= self.config.max_streams_per_tenant {
            drop(per_tenant);
            self.streams.give_back();
            return Err(tonic::Status::resource_exhausted(format!(
                "this tenant has {} open streams, its limit (--max-streams-per-tenant); close \
                 streams you no longer read",
                self.config.max_streams_per_tenant
            )));
        }
        *open += 1;
        Ok(StreamPermit {
            tenant,
            limits: self.clone(),
            _on_connection: connection.map(OpenStreams::open),
        })
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Limited<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone,
    ResBody: Default,
{
    type Response = http::Response<Permitted<ResBody>>;
    type Error = S::Error;
    type Future = LimitedFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        let call = if path.starts_with(HEALTH_PREFIX) {
            Ok(None)
        } else {
            self.limits.call()
        };
        let stream = STREAMING_METHODS.contains(&path).then(|| {
            let tenant = request
                .extensions()
                .get::<Caller>()
                .map(|caller| caller.tenant.clone())
                .unwrap_or_default();
            let connection = request.extensions().get::<ConnectionInfo>();
            self.limits
                .stream(tenant, connection.map(|info| &info.streams))
        });
        let (call, stream) = match (call, stream.transpose()) {
            (Ok(call), Ok(stream)) => (call, stream),
            (Err(refused), _) | (_, Err(refused)) => {
                return LimitedFuture::Refused {
                    response: Some(refused.into_http()),
                };
            }
        };
        // The service that was polled ready is the one that must be called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        LimitedFuture::Called {
            call: inner.call(request),
            permit: call,
            stream,
        }
    }
}

pin_project_lite::pin_project! {
    /// A call within the caps until its handler has answered, or a refusal.
    #[project = LimitedProjection]
    pub enum LimitedFuture<F, B> {
        /// Refused at once: RESOURCE_EXHAUSTED.
        Refused { response: Option<http::Response<B>> },
        /// Being handled, holding its in-flight permit and, for a stream, its stream permit.
        Called {
            #[pin]
            call: F,
            permit: Option<CallPermit>,
            stream: Option<StreamPermit>,
        },
    }
}

impl<F, B, E> Future for LimitedFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<Permitted<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LimitedProjection::Refused { response } => {
                let response = response.take().expect("a refusal is polled once");
                Poll::Ready(Ok(response.map(Permitted::without)))
            }
            LimitedProjection::Called {
                call,
                permit,
                stream,
            } => {
                let response = ready!(call.poll(cx))?;
                // The in-flight slot is free once the handler has answered.
                permit.take();
                let stream = stream.take();
                Poll::Ready(Ok(response.map(|body| Permitted { body, stream })))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its stream's permit, if it is a stream, until the body is
    /// dropped: when the stream ends, the client goes away or the server shuts down.
    pub struct Permitted<B> {
        #[pin]
        body: B,
        stream: Option<StreamPermit>,
    }
}

impl<B> Permitted<B> {
    /// `body` holding no permit.
    fn without(body: B) -> Permitted<B> {
        Permitted { body, stream: None }
    }
}

impl<B: Default> Default for Permitted<B> {
    fn default() -> Self {
        Permitted::without(B::default())
    }
}

impl<B> http_body::Body for Permitted<B>
where
    B: http_body::Body<Data = Bytes, Error = tonic::Status>,
{
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
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
    use tokio::sync::Semaphore;
    use tonic::body::Body;
    use tonic::codegen::BoxFuture;
    use tower::Layer;

    /// An inner service whose calls finish only when the test releases them, so a call can be
    /// held in flight.
    #[derive(Clone)]
    struct Gate(Arc<Semaphore>);

    impl Service<http::Request<()>> for Gate {
        type Response = http::Response<Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let gate = self.0.clone();
            Box::pin(async move {
                gate.acquire().await.expect("gate open").forget();
                // A body with something in it: an empty one ends (and is dropped) at once.
                let body = http_body_util::Full::new(Bytes::from_static(b"message"));
                Ok(http::Response::new(Body::new(body)))
            })
        }
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    fn code<B>(response: &http::Response<B>) -> tonic::Code {
        tonic::Status::from_header_map(response.headers())
            .map_or(tonic::Code::Ok, |status| status.code())
    }

    #[tokio::test]
    async fn a_call_beyond_the_in_flight_cap_is_refused_at_once_and_health_never_is() {
        let gate = Arc::new(Semaphore::new(0));
        let mut service = LimitLayer::new(LimitsConfig {
            max_inflight_calls: 1,
            max_streams: 10,
            max_streams_per_tenant: 10,
        })
        .layer(Gate(gate.clone()));
        let get = "/backgroundtransfer.v1.BackgroundTransferService/GetDownload";
        let held = tokio::spawn(service.call(request(get)));
        let refused = service.call(request(get)).await.unwrap();
        assert_eq!(code(&refused), tonic::Code::ResourceExhausted);
        let health = tokio::spawn(service.call(request("/grpc.health.v1.Health/Check")));
        gate.add_permits(2);
        assert_eq!(code(&held.await.unwrap().unwrap()), tonic::Code::Ok);
        assert_eq!(code(&health.await.unwrap().unwrap()), tonic::Code::Ok);
        gate.add_permits(1);
        let after = service.call(request(get)).await.unwrap();
        assert_eq!(code(&after), tonic::Code::Ok);
    }

    fn layer(calls: usize, streams: usize, per_tenant: usize) -> Arc<Limits> {
        LimitLayer::new(LimitsConfig {
            max_inflight_calls: calls,
            max_streams: streams,
            max_streams_per_tenant: per_tenant,
        })
        .limits
    }

    #[test]
    fn calls_beyond_the_cap_are_refused_until_one_finishes() {
        let limits = layer(2, 10, 10);
        let a = limits.call().unwrap();
        let _b = limits.call().unwrap();
        let refused = limits.call().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("2 calls"), "{refused:?}");
        drop(a);
        assert!(limits.call().is_ok());
    }

    #[test]
    fn streams_are_capped_per_tenant_and_in_total() {
        let limits = layer(10, 3, 2);
        let media = Tenant::new("media");
        let m1 = limits.stream(media.clone(), None).unwrap();
        let _m2 = limits.stream(media.clone(), None).unwrap();
        let refused = limits.stream(media.clone(), None).unwrap_err();
        assert!(refused.message().contains("tenant has 2"), "{refused:?}");
        let _ml = limits.stream(Tenant::new("ml"), None).unwrap();
        let refused = limits.stream(Tenant::new("ops"), None).unwrap_err();
        assert!(refused.message().contains("3 open streams"), "{refused:?}");
        drop(m1);
        assert!(limits.stream(media, None).is_ok());
    }

    #[test]
    fn a_refused_stream_gives_its_total_slot_back() {
        let limits = layer(10, 2, 1);
        let _m = limits.stream(Tenant::new("media"), None).unwrap();
        assert!(limits.stream(Tenant::new("media"), None).is_err());
        let ml = limits.stream(Tenant::new("ml"), None).unwrap();
        assert_eq!(limits.per_tenant.lock().unwrap().len(), 2);
        drop(ml);
        assert_eq!(
            limits.per_tenant.lock().unwrap().len(),
            1,
            "a closed tenant is forgotten"
        );
    }

    /// A stream counts on its connection from its start until its body is dropped (which
    /// decides whether the connection coalesces its writes); a unary call and a refused stream
    /// never count.
    #[tokio::test]
    async fn a_stream_counts_on_its_connection_while_its_body_lives() {
        let gate = Arc::new(Semaphore::new(100));
        let mut service = LimitLayer::new(LimitsConfig {
            max_inflight_calls: 10,
            max_streams: 1,
            max_streams_per_tenant: 10,
        })
        .layer(Gate(gate));
        let streams = OpenStreams::default();
        let on_connection = |path: &str| {
            let mut request = request(path);
            request.extensions_mut().insert(ConnectionInfo {
                streams: streams.clone(),
            });
            request
        };
        let service_path = "/backgroundtransfer.v1.BackgroundTransferService";
        let get = service
            .call(on_connection(&format!("{service_path}/GetDownload")))
            .await
            .unwrap();
        assert_eq!(code(&get), tonic::Code::Ok);
        assert_eq!(streams.count(), 0, "a unary call is no stream");
        let watch = format!("{service_path}/WatchDownload");
        let stream = service.call(on_connection(&watch)).await.unwrap();
        assert_eq!(code(&stream), tonic::Code::Ok);
        assert_eq!(streams.count(), 1);
        let refused = service.call(on_connection(&watch)).await.unwrap();
        assert_eq!(code(&refused), tonic::Code::ResourceExhausted);
        assert_eq!(streams.count(), 1, "a refused stream is not counted");
        drop(stream);
        assert_eq!(streams.count(), 0, "counted until its body is dropped");
    }
}
