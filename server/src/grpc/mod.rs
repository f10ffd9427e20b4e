//! The gRPC layer of `backgroundtransfer.v1`: the only place that knows the wire. One file per
//! service (`transfer.rs`, `system.rs`) whose handlers only convert and delegate to the engine,
//! the conversions between protobuf and domain types (`convert.rs`), and the one table from
//! domain errors to status codes (`status.rs`). No transfer logic lives here.
//!
//! [`routes`] gathers everything the server serves (`dispatch.rs` hands each call to its
//! service), so a layer that applies to every call (auth, metrics, load shedding) is added in
//! one place. `measure.rs` is the metrics layer: calls by
//! method and code, their duration, open watch streams.

pub mod audit;
pub(crate) mod coalesce;
pub(crate) mod codec;
mod convert;
mod dispatch;
mod identify;
pub mod limits;
mod measure;
mod roles;
mod status;
mod system;
mod transfer;

use std::sync::Arc;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::auth::tokens::TokenFile;
use crate::engine::Engine;
use crate::pb;
use pb::backgroundtransfer::v1::background_transfer_service_server::BackgroundTransferServiceServer;
use pb::backgroundtransfer::v1::transfer_system_service_server::TransferSystemServiceServer;
use system::SystemService;
use transfer::TransferService;

/// Everything transferd serves over gRPC, backed by `engine`: `BackgroundTransferService`,
/// `TransferSystemService`, `grpc.health.v1` (already reporting SERVING) and server reflection in
/// both versions (v1, and v1alpha for ghz and older tools). The returned [`Health`] flips the
/// health service to NOT_SERVING at shutdown.
pub async fn routes(
    engine: Engine,
) -> Result<
    (
        Routes<impl Generated, impl Generated, impl Generated>,
        Health,
    ),
    tonic_reflection::server::Error,
> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<BackgroundTransferServiceServer<TransferService>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let routes = Services {
        transfer: BackgroundTransferServiceServer::new(TransferService::new(engine.clone())),
        system: TransferSystemServiceServer::new(SystemService::new(engine)),
        health: health_service,
        reflection: reflection_v1,
        reflection_alpha: reflection_v1alpha,
    };
    Ok((routes, Health { reporter }))
}

/// The layer that establishes who is calling, composed once where the server is built so no
/// route can be served without it: it authenticates the call's bearer token against `tokens`,
/// puts the call's [`Caller`](crate::auth::Caller) in the request's extensions (where handlers
/// find it with `Caller::of`), and refuses a call outside the caller's role. Without a token
/// file every call runs as `Caller::local`.
pub fn identify_layer(tokens: Option<Arc<TokenFile>>) -> IdentifyLayer {
    IdentifyLayer::new(tokens)
}

pub use dispatch::{Generated, Services};
pub use identify::IdentifyLayer;

/// Everything [`routes`] serves: the contract's two services, then health and reflection.
pub type Routes<H, R, Ra> = Services<
    BackgroundTransferServiceServer<TransferService>,
    TransferSystemServiceServer<SystemService>,
    H,
    R,
    Ra,
>;
pub use measure::MeasureLayer;
pub(crate) use status::code as code_of;

/// The health service's reporter, so the server can announce shutdown without naming the
/// generated service types.
#[derive(Clone, Debug)]
pub struct Health {
    reporter: HealthReporter,
}

impl Health {
    /// Reports NOT_SERVING for the transfer service and for the server as a whole, so load
    /// balancers and `transferd healthcheck` stop sending work before the listener closes.
    pub async fn set_not_serving(&self) {
        self.reporter
            .set_not_serving::<BackgroundTransferServiceServer<TransferService>>()
            .await;
        self.reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
    }
}
