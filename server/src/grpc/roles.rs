//! The one table of what each RPC needs: for every method of our two services, the least
//! [`Role`] that may call it. Health and reflection are open to anyone (they reveal nothing per
//! tenant, and load balancers probe health without credentials). A method of ours missing from
//! the table needs admin, so a forgotten RPC fails closed; a unit test checks that every method
//! in the contract has its row.

use crate::auth::Role;
use crate::pb::backgroundtransfer::v1::{
    background_transfer_service_server::SERVICE_NAME as TRANSFER,
    transfer_system_service_server::SERVICE_NAME as SYSTEM,
};

/// Path prefixes served to anyone, token or not.
const OPEN_PREFIXES: &[&str] = &["/grpc.health.v1.Health/", "/grpc.reflection."];

/// Every method of `BackgroundTransferService` and `TransferSystemService`, with the least role
/// that may call it.
const ROLES: &[(&str, &str, Role)] = &[
    (TRANSFER, "GetDownload", Role::Reader),
    (TRANSFER, "ListDownloads", Role::Reader),
    (TRANSFER, "WatchDownload", Role::Reader),
    (TRANSFER, "WatchDownloads", Role::Reader),
    (TRANSFER, "GetResponseInformation", Role::Reader),
    // Whoever may see a tenant's downloads may read what they fetched.
    (TRANSFER, "ReadResult", Role::Reader),
    (TRANSFER, "CreateDownload", Role::User),
    (TRANSFER, "PauseDownload", Role::User),
    (TRANSFER, "ResumeDownload", Role::User),
    (TRANSFER, "CancelDownload", Role::User),
    (TRANSFER, "DeleteDownload", Role::User),
    (TRANSFER, "SetCostPolicy", Role::User),
    (TRANSFER, "SetPriority", Role::User),
    (TRANSFER, "SetRequestHeader", Role::User),
    (TRANSFER, "RemoveRequestHeader", Role::User),
    (TRANSFER, "SetRequestedUri", Role::User),
    (TRANSFER, "SetTransferGroupBehavior", Role::User),
    (TRANSFER, "MakeCurrentInTransferGroup", Role::User),
    (TRANSFER, "SetRateLimit", Role::User),
    (SYSTEM, "SetNetworkConditions", Role::Admin),
    (SYSTEM, "SetSystemPolicy", Role::Admin),
    (SYSTEM, "GetSystemStatus", Role::Admin),
];

/// Who may call a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone, without a token.
    Open,
    /// Callers with at least this role.
    AtLeast(Role),
}

/// Who may call the method at `path` (`/package.Service/Method`).
pub(crate) fn access(path: &str) -> Access {
    if OPEN_PREFIXES.iter().any(|prefix| path.starts_with(prefix)) {
        return Access::Open;
    }
    let (service, method) = split(path);
    ROLES
        .iter()
        .find(|(s, m, _)| *s == service && *m == method)
        .map_or(Access::AtLeast(Role::Admin), |(_, _, role)| {
            Access::AtLeast(*role)
        })
}

/// Whether a call to `path` could change state, and so is audited: every method that needs
/// more than the reader role, except the admin's read of the system status. A method missing
/// from the table counts as changing state.
pub(crate) fn changes_state(path: &str) -> bool {
    match access(path) {
        Access::Open | Access::AtLeast(Role::Reader) => false,
        Access::AtLeast(_) => method_name(path) != "GetSystemStatus",
    }
}

/// The method's name without its service, for messages.
pub(crate) fn method_name(path: &str) -> &str {
    split(path).1
}

/// The contract's method at `path` as (service, method), if it is one of ours: static strings
/// from the table, so a metrics label can never be made of what a client sent.
pub(crate) fn contract_method(path: &str) -> Option<(&'static str, &'static str)> {
    let (service, method) = split(path);
    ROLES
        .iter()
        .find(|(s, m, _)| *s == service && *m == method)
        .map(|(s, m, _)| (*s, *m))
}

fn split(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.rsplit_once('/').unwrap_or(("", path))
}

/// The roles that may do what `least` may, for messages: "user or admin".
pub(crate) fn roles_from(least: Role) -> &'static str {
    match least {
        Role::Reader => "reader, user or admin",
        Role::User => "user or admin",
        Role::Admin => "admin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Every method of both services, read from the descriptor set the server is built from
    /// (and serves by reflection), so a new RPC cannot be added without its row.
    #[test]
    fn every_method_of_the_contract_has_a_row() {
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET)
            .expect("the built descriptor set decodes");
        let mut methods = Vec::new();
        for file in &set.file {
            for service in &file.service {
                let full = format!("{}.{}", file.package(), service.name());
                for method in &service.method {
                    methods.push((full.clone(), method.name().to_owned()));
                }
            }
        }
        assert!(methods.len() >= 20, "{methods:?}");
        for (service, method) in &methods {
            assert!(
                ROLES.iter().any(|(s, m, _)| s == service && m == method),
                "{service}/{method} has no row in ROLES: decide the least role that may call it"
            );
        }
        assert_eq!(
            ROLES.len(),
            methods.len(),
            "ROLES names a method the contract lacks"
        );
    }

    #[test]
    fn open_paths_and_least_roles() {
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::Open);
        assert_eq!(
            access("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Access::Open
        );
        let path = |method: &str| format!("/{TRANSFER}/{method}");
        assert_eq!(access(&path("GetDownload")), Access::AtLeast(Role::Reader));
        assert_eq!(access(&path("PauseDownload")), Access::AtLeast(Role::User));
        assert_eq!(
            access(&format!("/{SYSTEM}/GetSystemStatus")),
            Access::AtLeast(Role::Admin)
        );
        // Unknown methods and services need admin: a forgotten row fails closed.
        assert_eq!(access(&path("NewThing")), Access::AtLeast(Role::Admin));
        assert_eq!(access("/x.Y/Z"), Access::AtLeast(Role::Admin));
        assert_eq!(access("/grpc.healthy/Check"), Access::AtLeast(Role::Admin));
        assert_eq!(method_name(&path("PauseDownload")), "PauseDownload");
        assert!(changes_state(&path("CreateDownload")) && changes_state(&path("NewThing")));
        assert!(changes_state(&format!("/{SYSTEM}/SetNetworkConditions")));
        assert!(!changes_state(&path("GetDownload")) && !changes_state(&path("WatchDownloads")));
        assert!(!changes_state(&format!("/{SYSTEM}/GetSystemStatus")));
        assert!(!changes_state("/grpc.health.v1.Health/Check"));
    }
}
