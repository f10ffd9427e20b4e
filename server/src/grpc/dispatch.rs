//! The services transferd serves, chosen by the service name in each call's path.
//!
//! tonic's `Routes` does the same through axum's router, which wraps every request body and
//! every response body in a box of axum's and then again in one of tonic's: four allocations
//! per call, and two more heap objects that each frame of a stream passes through. A watcher's
//! message is cheap to produce, so with 10,000 watchers of one download those two cold objects
//! per watcher were a visible part of the server's work per status change. Here a call goes
//! straight to its generated service: its body is the one the generated code made.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;

/// What every generated tonic service is: it answers any request, and its future is boxed.
pub trait Generated:
    Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future = BoxFuture<Response<Body>, Infallible>,
    > + NamedService
    + Clone
    + Send
    + 'static
{
}

impl<S> Generated for S where
    S: Service<
            Request<Body>,
            Response = Response<Body>,
            Error = Infallible,
            Future = BoxFuture<Response<Body>, Infallible>,
        > + NamedService
        + Clone
        + Send
        + 'static
{
}

/// The five services, each called for the paths `/<its name>/<method>`; any other path is
/// answered UNIMPLEMENTED, as tonic's router answers it.
#[derive(Clone, Debug)]
pub struct Services<T, S, H, R, Ra> {
    /// `backgroundtransfer.v1.BackgroundTransferService`, first: nearly every call is its.
    pub transfer: T,
    /// `backgroundtransfer.v1.TransferSystemService`.
    pub system: S,
    /// `grpc.health.v1.Health`.
    pub health: H,
    /// Reflection, v1.
    pub reflection: R,
    /// Reflection, v1alpha (ghz and older tools).
    pub reflection_alpha: Ra,
}

impl<T, S, H, R, Ra> Service<Request<Body>> for Services<T, S, H, R, Ra>
where
    T: Generated,
    S: Generated,
    H: Generated,
    R: Generated,
    Ra: Generated,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Response<Body>, Infallible>;

    /// Always ready, like the generated services themselves (their `poll_ready` is always
    /// ready too, which is why `call` may skip theirs).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let Some(service) = service_name(request.uri().path()) else {
            return unimplemented();
        };
        if service == T::NAME {
            self.transfer.call(request)
        } else if service == S::NAME {
            self.system.call(request)
        } else if service == H::NAME {
            self.health.call(request)
        } else if service == R::NAME {
            self.reflection.call(request)
        } else if service == Ra::NAME {
            self.reflection_alpha.call(request)
        } else {
            unimplemented()
        }
    }
}

/// The service of a gRPC path `/<service>/<method>` (the method not empty).
fn service_name(path: &str) -> Option<&str> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty()).then_some(service)
}

/// The answer to a path that names no service served here: UNIMPLEMENTED, trailers only.
fn unimplemented() -> BoxFuture<Response<Body>, Infallible> {
    let (parts, ()) = tonic::Status::unimplemented("this server has no such service")
        .into_http::<()>()
        .into_parts();
    Box::pin(std::future::ready(Ok(Response::from_parts(
        parts,
        Body::empty(),
    ))))
}

#[cfg(test)]
mod tests {
    use super::service_name;

    #[test]
    fn a_path_names_its_service() {
        assert_eq!(
            service_name("/backgroundtransfer.v1.BackgroundTransferService/GetDownload"),
            Some("backgroundtransfer.v1.BackgroundTransferService")
        );
        assert_eq!(
            service_name("/grpc.health.v1.Health/Check"),
            Some("grpc.health.v1.Health")
        );
    }

    #[test]
    fn a_path_without_service_or_method_names_none() {
        for path in [
            "",
            "/",
            "//Check",
            "/grpc.health.v1.Health",
            "/grpc.health.v1.Health/",
            "x/y",
        ] {
            assert_eq!(service_name(path), None, "{path:?}");
        }
    }
}
