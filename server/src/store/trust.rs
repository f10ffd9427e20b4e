//! What a stored download must satisfy before transferd serves it, whichever backend it came
//! from. A row edited by hand, restored from the wrong backup or written by a buggy build could
//! otherwise make transferd write outside its download directory or let two downloads overwrite
//! one file; refusing to start with a message naming the download is safer than guessing.
//! Values a backend cannot even represent (a negative byte count in SQLite) are refused by that
//! backend when it reads the row.

use std::collections::HashMap;

use super::{Record, StoreError};
use crate::operation::Guid;
use crate::paths;

/// Checks the downloads of one load, one at a time, in any order.
#[derive(Debug, Default)]
pub struct LoadCheck {
    /// Result files claimed by the unfinished downloads admitted so far, by where they land
    /// (relative to the download directory, tenant directory included).
    claimed: HashMap<String, Guid>,
}

impl LoadCheck {
    /// Admits `record`, or refuses it as [`StoreError::Corrupt`] when it cannot be trusted: its
    /// tenant cannot name a directory, its result path is not a plain path inside its tenant's
    /// directory (in the normal form transferd stores), its bandwidth limit is one transferd
    /// never accepts, or it is unfinished and another unfinished download already claims the
    /// file its result path resolves to.
    pub fn admit(&mut self, record: &Record) -> Result<(), StoreError> {
        let spec = &record.spec;
        let untrusted = |detail: String| {
            StoreError::Corrupt(format!(
                "stored download `{}` cannot be trusted: {detail}; delete or repair that row (sqlite3 CLI), or restore the store from a backup",
                spec.guid
            ))
        };
        paths::check_tenant_dir(&spec.tenant).map_err(&untrusted)?;
        match paths::validate_result_file(&spec.result_file) {
            Ok(normal) if normal == spec.result_file => {}
            Ok(_) => {
                return Err(untrusted(format!(
                    "result file `{}` is not in normal form",
                    spec.result_file
                )));
            }
            Err(e) => return Err(untrusted(e.to_string())),
        }
        let rates = crate::operation::RATE_LIMITS;
        if let Some(rate) = record.settings.max_bytes_per_second {
            if !rates.contains(&rate) {
                return Err(untrusted(format!(
                    "bandwidth limit {rate} bytes/s is outside {}..={}",
                    rates.start(),
                    rates.end()
                )));
            }
        }
        if record.status.is_terminal() {
            return Ok(());
        }
        let resolved = spec.resolved_path();
        if let Some(other) = self.claimed.insert(resolved.clone(), spec.guid.clone()) {
            return Err(untrusted(format!(
                "unfinished download `{other}` claims the same result file `{resolved}`"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Tenant;
    use crate::operation::Status;

    fn record(guid: &str, file: &str, status: Status) -> Record {
        let mut record = crate::store::conformance::record(guid, 1);
        record.spec.result_file = file.into();
        record.status = status;
        record
    }

    fn in_tenant(tenant: &str, mut record: Record) -> Record {
        record.spec.tenant = Tenant::new(tenant);
        record
    }

    fn refused(check: &mut LoadCheck, r: &Record) -> String {
        let err = check.admit(r).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        err.to_string()
    }

    #[test]
    fn refuses_result_paths_that_escape() {
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "a//b",
            ".transferd-partial/x",
        ] {
            let message = refused(
                &mut LoadCheck::default(),
                &record("g1", bad, Status::Completed),
            );
            assert!(message.contains("`g1`"), "{message}");
        }
    }

    #[test]
    fn refuses_two_unfinished_downloads_on_one_file() {
        let mut check = LoadCheck::default();
        check
            .admit(&record("done", "f", Status::Completed))
            .unwrap();
        check.admit(&record("a", "f", Status::Idle)).unwrap();
        check.admit(&record("b", "g", Status::Running)).unwrap();
        let message = refused(&mut check, &record("c", "f", Status::PausedByApplication));
        assert!(
            message.contains("`c`") && message.contains("`a`"),
            "{message}"
        );
        // Finished downloads may share a file with anything: only one of them committed last.
        check.admit(&record("old", "f", Status::Canceled)).unwrap();
    }

    #[test]
    fn claims_are_per_resolved_path() {
        let mut check = LoadCheck::default();
        check.admit(&record("a", "f", Status::Idle)).unwrap();
        // One name in two tenants is two files.
        check
            .admit(&in_tenant("media", record("b", "f", Status::Idle)))
            .unwrap();
        check
            .admit(&in_tenant("ml", record("c", "f", Status::Idle)))
            .unwrap();
        // The default tenant's `media/f` is tenant media's `f`: one file.
        let message = refused(&mut check, &record("d", "media/f", Status::Idle));
        assert!(
            message.contains("`d`") && message.contains("`b`"),
            "{message}"
        );
    }

    #[test]
    fn refuses_bandwidth_limits_transferd_never_accepts() {
        for bad in [0, 1, 1023, (1 << 40) + 1, u64::MAX] {
            let mut r = record("g1", "f", Status::Idle);
            r.settings.max_bytes_per_second = Some(bad);
            let message = refused(&mut LoadCheck::default(), &r);
            assert!(
                message.contains("`g1`") && message.contains("bandwidth limit"),
                "{message}"
            );
        }
        let mut r = record("g2", "f", Status::Idle);
        r.settings.max_bytes_per_second = Some(1024);
        LoadCheck::default().admit(&r).unwrap();
    }

    #[test]
    fn refuses_tenants_that_cannot_name_a_directory() {
        for bad in ["..", ".transferd-partial", "a/b"] {
            let r = in_tenant(bad, record("g1", "f", Status::Completed));
            let message = refused(&mut LoadCheck::default(), &r);
            assert!(
                message.contains("`g1`") && message.contains("tenant"),
                "{message}"
            );
        }
    }
}
