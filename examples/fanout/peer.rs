//! The fan-out's peer: the least a plain tonic server can do to stream one status to many
//! watchers. It serves three methods of the contract on their real paths, so the same driver
//! and client talk to it: WatchDownload streams the one status (its current value, then each
//! change, from a tokio `watch` channel, as a tonic user would write it), and PauseDownload and
//! ResumeDownload set it to PAUSED_BY_APPLICATION and PAUSED_NO_NETWORK. No store, no
//! authentication, no metrics, no limits: what transferd adds over this is its own cost.
//! The methods are written out by hand, as the hello server of the benchmark is.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use tonic::server::{Grpc, NamedService, ServerStreamingService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic_prost::ProstCodec;
use transferd::pb::backgroundtransfer::v1 as pb;
use transferd::pb::backgroundtransfer::v1::background_transfer_service_server::SERVICE_NAME;

/// The argument that makes the driver serve as the peer instead of driving.
pub const SERVE_FLAG: &str = "--serve-peer";

/// The guid the peer answers to (it serves one download and ignores the guid).
pub const GUID: &str = "peer";

/// Serves on a free loopback port with TCP_NODELAY, printing `listening on ADDR` when ready
/// (as transferd does); runs until killed.
pub async fn serve() -> anyhow::Result<()> {
    let incoming =
        TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?.with_nodelay(Some(true));
    println!("listening on {}", incoming.local_addr()?);
    let (status, _) = watch::channel(progress(pb::BackgroundTransferStatus::PausedNoNetwork));
    tonic::transport::Server::builder()
        .add_service(Peer { status })
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

/// A progress message in `status`.
fn progress(status: pb::BackgroundTransferStatus) -> pb::BackgroundDownloadProgress {
    pb::BackgroundDownloadProgress {
        status: status.into(),
        ..Default::default()
    }
}

#[derive(Clone)]
struct Peer {
    status: watch::Sender<pb::BackgroundDownloadProgress>,
}

impl NamedService for Peer {
    const NAME: &'static str = SERVICE_NAME;
}

impl Service<http::Request<tonic::body::Body>> for Peer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let status = self.status.clone();
        Box::pin(async move {
            let method = request.uri().path().rsplit('/').next().unwrap_or_default();
            Ok(match method {
                "WatchDownload" => {
                    let codec = ProstCodec::<
                        pb::BackgroundDownloadProgress,
                        pb::WatchDownloadRequest,
                    >::default();
                    Grpc::new(codec)
                        .server_streaming(Watch(status), request)
                        .await
                }
                "PauseDownload" => {
                    let set = Set(status, pb::BackgroundTransferStatus::PausedByApplication);
                    let codec =
                        ProstCodec::<pb::DownloadOperation, pb::PauseDownloadRequest>::default();
                    Grpc::new(codec).unary(set, request).await
                }
                "ResumeDownload" => {
                    let set = Set(status, pb::BackgroundTransferStatus::PausedNoNetwork);
                    let codec =
                        ProstCodec::<pb::DownloadOperation, pb::ResumeDownloadRequest>::default();
                    Grpc::new(codec).unary(set, request).await
                }
                _ => tonic::Status::unimplemented("the peer serves only watch, pause and resume")
                    .into_http(),
            })
        })
    }
}

/// WatchDownload: the status now, then each change.
struct Watch(watch::Sender<pb::BackgroundDownloadProgress>);

type Progresses =
    Pin<Box<dyn Stream<Item = Result<pb::BackgroundDownloadProgress, tonic::Status>> + Send>>;

impl ServerStreamingService<pb::WatchDownloadRequest> for Watch {
    type Response = pb::BackgroundDownloadProgress;
    type ResponseStream = Progresses;
    type Future = std::future::Ready<Result<tonic::Response<Progresses>, tonic::Status>>;

    fn call(&mut self, _: tonic::Request<pb::WatchDownloadRequest>) -> Self::Future {
        let stream: Progresses = Box::pin(WatchStream::new(self.0.subscribe()).map(Ok));
        std::future::ready(Ok(tonic::Response::new(stream)))
    }
}

/// PauseDownload or ResumeDownload: sets the status and answers with it.
struct Set(
    watch::Sender<pb::BackgroundDownloadProgress>,
    pb::BackgroundTransferStatus,
);

impl<R> UnaryService<R> for Set {
    type Response = pb::DownloadOperation;
    type Future = std::future::Ready<Result<tonic::Response<pb::DownloadOperation>, tonic::Status>>;

    fn call(&mut self, _: tonic::Request<R>) -> Self::Future {
        let now = progress(self.1);
        self.0.send_replace(now);
        std::future::ready(Ok(tonic::Response::new(pb::DownloadOperation {
            guid: GUID.into(),
            progress: Some(now),
            ..Default::default()
        })))
    }
}
