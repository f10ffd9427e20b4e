//! Who is calling: the `Caller` every RPC runs as (a name for audit lines, the `Tenant` whose
//! downloads it may see, and its `Role`). The gRPC layer establishes the caller once per call
//! and puts it in the request's extensions; handlers read it with `Caller::of` and pass it to
//! the engine, which scopes every lookup to the caller's tenant.
//!
//! Without `--auth-tokens`, every call runs as `Caller::local`: an admin of the default
//! tenant, so a single-user deployment behaves exactly as before tenants existed. With it,
//! [`tokens`] reads the token file and maps each bearer token to its caller.

pub mod tokens;

use std::fmt;
use std::sync::Arc;

/// What a caller may do. Ordered: each role may do everything the one before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Role {
    /// Get, List, Watch, WatchDownloads, GetResponseInformation.
    Reader,
    /// Also create downloads and control them (pause, resume, cancel, edits, delete).
    User,
    /// Everything, in every tenant, including `TransferSystemService`.
    Admin,
}

impl Role {
    /// The name used in token files and error messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The tenant a download belongs to. The default tenant (the empty name) owns every download
/// created without authentication, including those created before tenants existed.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Tenant(Arc<str>);

impl Tenant {
    /// A named tenant. The name is checked where it is read (the token file).
    pub(crate) fn new(name: &str) -> Tenant {
        Tenant(Arc::from(name))
    }

    /// The tenant of unauthenticated deployments.
    pub(crate) fn default_tenant() -> Tenant {
        Tenant::default()
    }

    /// Its name; empty for the default tenant.
    pub(crate) fn name(&self) -> &str {
        &self.0
    }

    /// Whether this is the default tenant.
    pub(crate) fn is_default(&self) -> bool {
        self.0.is_empty()
    }
}

/// The identity a call runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Caller {
    /// Who, for audit lines: the token's name, or `local` without authentication.
    pub(crate) name: Arc<str>,
    /// Whose downloads it sees and creates.
    pub(crate) tenant: Tenant,
    /// What it may do.
    pub(crate) role: Role,
    /// Most unfinished downloads its tenant may have at once, from its token entry; `None` for
    /// no limit. CreateDownload beyond it is RESOURCE_EXHAUSTED.
    pub(crate) max_live_downloads: Option<u64>,
}

impl Caller {
    /// The caller of a deployment without authentication: an admin of the default tenant.
    /// Every call of such a deployment runs as it, so it is built once and shared.
    pub(crate) fn local() -> Caller {
        static LOCAL: std::sync::LazyLock<Caller> = std::sync::LazyLock::new(|| Caller {
            name: Arc::from("local"),
            tenant: Tenant::default_tenant(),
            role: Role::Admin,
            max_live_downloads: None,
        });
        LOCAL.clone()
    }

    /// The caller the authentication layer established for `request`. A request that did not
    /// pass through the layer has no caller and is refused, so a route added without the layer
    /// fails closed.
    pub(crate) fn of<T>(request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| tonic::Status::unauthenticated("no caller identity on this call"))
    }

    /// Whether this caller may see and act on downloads of `tenant`: its own, or any as admin.
    pub(crate) fn sees(&self, tenant: &Tenant) -> bool {
        self.role == Role::Admin || &self.tenant == tenant
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_what_they_may_do() {
        assert!(Role::Reader < Role::User && Role::User < Role::Admin);
        assert_eq!(Role::User.to_string(), "user");
    }

    #[test]
    fn a_caller_sees_its_own_tenant_and_an_admin_sees_all() {
        let media = Caller {
            name: Arc::from("ingest"),
            tenant: Tenant::new("media"),
            role: Role::User,
            max_live_downloads: None,
        };
        assert!(media.sees(&Tenant::new("media")));
        assert!(!media.sees(&Tenant::new("ml")));
        assert!(!media.sees(&Tenant::default_tenant()));
        assert!(Caller::local().sees(&Tenant::new("ml")));
        assert!(Tenant::default_tenant().is_default() && !Tenant::new("ml").is_default());
    }
}
