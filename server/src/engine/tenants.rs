//! Tenants in the engine: which downloads a caller's request covers ([`Scope`]), and what the
//! registry keeps per tenant ([`TenantIndex`]): its downloads in creation order, so a tenant's
//! page or snapshot walk never reads another tenant's rows, and its count of unfinished
//! downloads, so its quota is checked without a scan.

use std::collections::BTreeSet;

use crate::auth::{Caller, Role, Tenant};
use crate::error::Error;

/// The downloads a read covers: one tenant's, or every tenant's (an admin's unfiltered view).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every tenant's downloads.
    All,
    /// One tenant's downloads.
    Tenant(Tenant),
}

impl Scope {
    /// What a List or WatchDownloads of `caller` covers, given its optional tenant filter: an
    /// admin sees every tenant, or the one it names; anyone else sees its own tenant, and naming
    /// another is refused (PERMISSION_DENIED) rather than quietly answered with its own.
    pub(crate) fn of(caller: &Caller, filter: Option<&str>) -> Result<Scope, Error> {
        match (caller.role, filter) {
            (Role::Admin, None) => Ok(Scope::All),
            (Role::Admin, Some(name)) => Ok(Scope::Tenant(Tenant::new(name))),
            (_, None) => Ok(Scope::Tenant(caller.tenant.clone())),
            (_, Some(name)) if name == caller.tenant.name() => {
                Ok(Scope::Tenant(caller.tenant.clone()))
            }
            (_, Some(name)) => Err(Error::OtherTenant {
                tenant: name.to_string(),
            }),
        }
    }

    /// The one tenant it covers, or `None` for all.
    pub(crate) fn tenant(&self) -> Option<&Tenant> {
        match self {
            Scope::All => None,
            Scope::Tenant(t) => Some(t),
        }
    }
}

/// What the registry keeps per tenant, in step with its index of every download.
#[derive(Debug, Default)]
pub(super) struct TenantIndex {
    /// Creation sequences of the tenant's downloads, finished or not.
    pub(super) seqs: BTreeSet<u64>,
    /// The tenant's unfinished downloads that are in the registry.
    pub(super) live: u64,
    /// Creates that passed the quota check and are being stored: they count against the quota
    /// until they are added or given up, so concurrent creates cannot overshoot it.
    pub(super) pending: u64,
    /// The highest creation sequence of the tenant's downloads: a page token past it was never
    /// handed to anyone looking at this tenant.
    pub(super) last_seq: u64,
}

impl TenantIndex {
    /// Refuses one more unfinished download of `tenant` when it has `limit` already.
    pub(super) fn check_quota(&self, tenant: &Tenant, limit: Option<u64>) -> Result<(), Error> {
        match limit {
            Some(limit) if self.live + self.pending >= limit => Err(Error::QuotaExceeded {
                tenant: tenant.name().to_string(),
                count: self.live + self.pending,
                limit,
            }),
            _ => Ok(()),
        }
    }

    /// Whether nothing is left to keep (every download forgotten, no create pending).
    pub(super) fn is_empty(&self) -> bool {
        self.seqs.is_empty() && self.pending == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn caller(tenant: &str, role: Role) -> Caller {
        Caller {
            name: Arc::from("t"),
            tenant: Tenant::new(tenant),
            role,
            max_live_downloads: None,
        }
    }

    #[test]
    fn admins_see_all_or_filter_and_others_see_only_their_own() {
        let admin = caller("ops", Role::Admin);
        assert_eq!(Scope::of(&admin, None).unwrap(), Scope::All);
        assert_eq!(
            Scope::of(&admin, Some("media")).unwrap(),
            Scope::Tenant(Tenant::new("media"))
        );
        assert_eq!(
            Scope::of(&admin, Some("")).unwrap(),
            Scope::Tenant(Tenant::default_tenant())
        );
        for role in [Role::Reader, Role::User] {
            let media = caller("media", role);
            let own = Scope::Tenant(Tenant::new("media"));
            assert_eq!(Scope::of(&media, None).unwrap(), own);
            assert_eq!(Scope::of(&media, Some("media")).unwrap(), own);
            let err = Scope::of(&media, Some("ml")).unwrap_err();
            assert!(matches!(err, Error::OtherTenant { .. }), "{err:?}");
            assert!(err.to_string().contains("`ml`"), "{err}");
        }
        assert_eq!(Scope::of(&Caller::local(), None).unwrap(), Scope::All);
    }

    #[test]
    fn the_quota_counts_live_and_pending_downloads() {
        let media = Tenant::new("media");
        let mut index = TenantIndex::default();
        assert!(index.check_quota(&media, Some(2)).is_ok());
        assert!(index.check_quota(&media, None).is_ok());
        index.live = 1;
        index.pending = 1;
        let err = index.check_quota(&media, Some(2)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tenant `media` has 2 unfinished downloads and may have at most 2; wait for some to finish, or cancel some"
        );
        assert!(index.check_quota(&media, Some(3)).is_ok());
        assert!(index.check_quota(&media, None).is_ok());
        let err = index.check_quota(&Tenant::default_tenant(), Some(0));
        let message = err.unwrap_err().to_string();
        assert!(
            message.starts_with(
                "the default tenant has 2 unfinished downloads and may have at most 0;"
            ),
            "{message}"
        );
    }
}
