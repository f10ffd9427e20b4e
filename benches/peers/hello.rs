//! The control plane's peer: tonic's hello-world Greeter, the least a tonic server can do per
//! call, so transferd's RPCs are compared with the stack's own ceiling. Its messages and service
//! are written out by hand as tonic's code generator would write them, which keeps a second
//! .proto and build step out of the crate.

use std::convert::Infallible;
use std::net::SocketAddr;

use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic_prost::ProstCodec;

/// The argument that makes this program serve the Greeter instead of benchmarking.
pub const SERVE_FLAG: &str = "--serve-hello";

/// The one method's path.
pub const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

/// `helloworld.HelloRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    /// Who to greet.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `helloworld.HelloReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    /// The greeting.
    #[prost(string, tag = "1")]
    pub message: String,
}

/// Serves the Greeter on a free loopback port with TCP_NODELAY (tonic's default for a server
/// that binds its own port), printing `listening on ADDR` when ready; runs until killed.
pub async fn serve() -> anyhow::Result<()> {
    let incoming =
        TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?.with_nodelay(Some(true));
    println!("listening on {}", incoming.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(Greeter)
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

/// The request every SayHello call of the benchmark sends.
pub fn request() -> HelloRequest {
    HelloRequest {
        name: "transferd".into(),
    }
}

/// The reply to [`request`].
pub fn reply() -> HelloReply {
    HelloReply {
        message: format!("Hello {}!", request().name),
    }
}

/// One SayHello call on `channel`.
pub async fn say_hello(channel: Channel) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let request = tonic::Request::new(request());
    let path = http::uri::PathAndQuery::from_static(SAY_HELLO);
    let codec = ProstCodec::<HelloRequest, HelloReply>::default();
    grpc.unary(request, path, codec).await?;
    Ok(())
}

#[derive(Clone)]
struct Greeter;

impl NamedService for Greeter {
    const NAME: &'static str = "helloworld.Greeter";
}

impl Service<http::Request<tonic::body::Body>> for Greeter {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != SAY_HELLO {
                return Ok(tonic::Status::unimplemented("no such method").into_http());
            }
            let codec = ProstCodec::<HelloReply, HelloRequest>::default();
            Ok(Grpc::new(codec).unary(SayHello, request).await)
        })
    }
}

struct SayHello;

impl UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = std::future::Ready<Result<tonic::Response<HelloReply>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<HelloRequest>) -> Self::Future {
        let message = format!("Hello {}!", request.into_inner().name);
        std::future::ready(Ok(tonic::Response::new(HelloReply { message })))
    }
}
