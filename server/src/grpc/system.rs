//! `TransferSystemService`: operator controls of the host (network conditions, constrained mode)
//! and its status. Each handler converts, calls the engine and converts the answer.

use tonic::{Request, Response, Status as GrpcStatus};

use crate::engine::Engine;
use crate::pb::backgroundtransfer::v1 as pb;
use pb::transfer_system_service_server::TransferSystemService;

/// The `TransferSystemService` implementation.
#[derive(Clone, Debug)]
pub struct SystemService {
    engine: Engine,
}

impl SystemService {
    /// Serves `engine`.
    pub fn new(engine: Engine) -> SystemService {
        SystemService { engine }
    }
}

#[tonic::async_trait]
impl TransferSystemService for SystemService {
    async fn set_network_conditions(
        &self,
        request: Request<pb::SetNetworkConditionsRequest>,
    ) -> Result<Response<pb::SystemStatus>, GrpcStatus> {
        let pb::SetNetworkConditionsRequest { connected, costed } = request.into_inner();
        let view = self.engine.set_network_conditions(connected, costed).await;
        Ok(Response::new(view.into()))
    }

    async fn set_system_policy(
        &self,
        request: Request<pb::SetSystemPolicyRequest>,
    ) -> Result<Response<pb::SystemStatus>, GrpcStatus> {
        let pb::SetSystemPolicyRequest { constrained } = request.into_inner();
        let view = self.engine.set_constrained(constrained).await;
        Ok(Response::new(view.into()))
    }

    async fn get_system_status(
        &self,
        request: Request<pb::GetSystemStatusRequest>,
    ) -> Result<Response<pb::SystemStatus>, GrpcStatus> {
        let pb::GetSystemStatusRequest {} = request.into_inner();
        Ok(Response::new(self.engine.system().into()))
    }
}
