//! The PostgreSQL store against a real PostgreSQL: the conformance suite every store passes,
//! and what only this backend does (leases, claims, fencing, the feed). Each test gets a
//! database of its own on the server `TRANSFERD_TEST_POSTGRES` names, or on the private
//! instance `.ci/postgres` starts (see tests/common/postgres.rs, which this mirrors).

use std::time::Duration;

use super::PostgresStore;
use crate::operation::{CostPolicy, Status};
use crate::store::conformance::{Fixture, record};
use crate::store::shared::{Claim, ClaimFilter, FencedWrite, Inserted, Lease, Notice, SharedStore};
use crate::store::{Store, StoreError};

/// The test PostgreSQL server's URL, or `None` when there is none (a failure under CI).
fn server_url() -> Option<String> {
    if let Ok(url) = std::env::var("TRANSFERD_TEST_POSTGRES") {
        return Some(url);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/postgres");
    match std::process::Command::new("bash")
        .arg(script)
        .arg("url")
        .output()
    {
        Ok(out) if out.status.success() => {
            Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
        }
        other => {
            assert!(
                std::env::var_os("CI").is_none(),
                "no PostgreSQL for the store tests: {other:?}"
            );
            eprintln!("SKIPPED: no PostgreSQL ({other:?})");
            None
        }
    }
}

/// A fresh database's URL, or `None` when no PostgreSQL is reachable (a failure under CI).
pub(crate) async fn fresh_database() -> Option<String> {
    let base = server_url()?;
    let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(connection);
    let name = format!("u_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path(&format!("/{name}"));
    Some(url.to_string())
}

struct PgFixture {
    url: String,
}

impl Fixture for PgFixture {
    const SCHEMA_VERSION: i64 = super::schema::SCHEMA_VERSION;

    async fn open() -> (Self, Box<dyn Store>) {
        // The suite has no way to skip: without PostgreSQL outside CI, these cases fail with
        // the reason, like any test whose environment is missing.
        let url = fresh_database()
            .await
            .expect("PostgreSQL for the conformance suite");
        let store = PostgresStore::open(&url).await.unwrap();
        (PgFixture { url }, Box::new(store))
    }

    async fn reopen(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(PostgresStore::open(&self.url).await?))
    }

    fn available() -> bool {
        server_url().is_some()
    }

    async fn set_schema_version(&self, version: i64) {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        super::schema::set_version(&client, version).await;
    }
}

mod conformance_suite {
    use super::PgFixture;
    crate::store::conformance::suite!(PgFixture);
}

const TTL: Duration = Duration::from_secs(30);

fn every_policy() -> ClaimFilter {
    ClaimFilter {
        cost_policies: CostPolicy::ALL.to_vec(),
    }
}

async fn store_with(count: u64) -> Option<PostgresStore> {
    let url = fresh_database().await?;
    let store = PostgresStore::open(&url).await.unwrap();
    for seq in 1..=count {
        store
            .insert(&record(&format!("g{seq}"), seq))
            .await
            .unwrap();
    }
    Some(store)
}

#[tokio::test]
async fn claims_go_in_queue_order_and_never_twice() {
    let Some(store) = store_with(3).await else {
        return;
    };
    let first = store
        .claim_next("a", 2, &every_policy(), TTL)
        .await
        .unwrap();
    let guids: Vec<_> = first.iter().map(|c| c.record.spec.guid.as_str()).collect();
    assert_eq!(guids, ["g1", "g2"]);
    assert!(first.iter().all(|c| !c.took_over && c.lease.epoch == 1));
    let second = store
        .claim_next("b", 5, &every_policy(), TTL)
        .await
        .unwrap();
    let guids: Vec<_> = second.iter().map(|c| c.record.spec.guid.as_str()).collect();
    assert_eq!(guids, ["g3"], "a leased download is claimed once");
    // Claimed downloads are stored RUNNING.
    let stored = store.get(&["g1".into()]).await.unwrap();
    assert_eq!(stored[0].status, Status::Running);
}

#[tokio::test]
async fn a_live_lease_is_held_and_an_expired_one_is_taken_over() {
    let Some(store) = store_with(1).await else {
        return;
    };
    let short = Duration::from_secs(1);
    let claimed = store
        .claim_next("a", 1, &every_policy(), short)
        .await
        .unwrap();
    let lease = claimed[0].lease;
    match store.claim("b", "g1", TTL).await.unwrap() {
        Claim::HeldBy(owner) => assert_eq!(owner, "a"),
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let Claim::Claimed(taken) = store.claim("b", "g1", TTL).await.unwrap() else {
        panic!("an expired lease was not taken over");
    };
    assert!(taken.took_over);
    assert_eq!(taken.lease.epoch, lease.epoch + 1);
    // The old holder is fenced: it can neither renew, write nor release.
    assert!(
        store
            .renew("a", &[("g1".into(), lease)], TTL)
            .await
            .unwrap()
            .is_empty()
    );
    let rec = record("g1", 1);
    let write = FencedWrite {
        record: &rec,
        lease,
        changes: &[],
        bytes: 0,
        restarts: 0,
    };
    assert!(matches!(
        store.save_fenced("a", &write).await,
        Err(StoreError::Fenced(_))
    ));
    assert!(matches!(
        store.release("a", "g1", lease).await,
        Err(StoreError::Fenced(_))
    ));
    // The new holder can.
    let write = FencedWrite {
        lease: taken.lease,
        ..write
    };
    store.save_fenced("b", &write).await.unwrap();
    store.release("b", "g1", taken.lease).await.unwrap();
    assert!(matches!(
        store.claim("c", "missing", TTL).await.unwrap(),
        Claim::Missing
    ));
}

#[tokio::test]
async fn a_replica_claiming_its_own_live_lease_is_handed_the_file() {
    let Some(store) = store_with(1).await else {
        return;
    };
    let Claim::Claimed(first) = store.claim("a", "g1", TTL).await.unwrap() else {
        panic!("a free download was not claimed");
    };
    assert!(!first.took_over);
    // Its release is still on the way when it claims the download again: nobody else wrote
    // the file, so it is handed over (renamed), not taken over (copied).
    let Claim::Claimed(again) = store.claim("a", "g1", TTL).await.unwrap() else {
        panic!("a replica could not claim its own lease");
    };
    assert!(!again.took_over, "its own live lease counted as taken over");
    assert_eq!(again.lease.epoch, first.lease.epoch + 1);
    // Another replica's live lease still holds.
    match store.claim("b", "g1", TTL).await.unwrap() {
        Claim::HeldBy(owner) => assert_eq!(owner, "a"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn notices_reach_every_listener_in_order() {
    let Some(store) = store_with(1).await else {
        return;
    };
    let mut feed = store.listen().await.unwrap();
    let notices: Vec<Notice> = (0..5)
        .map(|i| Notice::Changed {
            guid: format!("g{i}"),
            node: "a".into(),
        })
        .collect();
    store.notify(&notices).await.unwrap();
    let claimed = store
        .claim_next("a", 1, &every_policy(), TTL)
        .await
        .unwrap();
    for want in &notices {
        let got = tokio::time::timeout(TTL, feed.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(&got, want);
    }
    // The claim announced RUNNING in its own transaction.
    let got = tokio::time::timeout(TTL, feed.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Notice::Saved {
        guid,
        node,
        changes,
        ..
    } = got
    else {
        panic!("{got:?}");
    };
    assert_eq!((guid.as_str(), node.as_str()), ("g1", "a"));
    assert_eq!(changes[0].decode().unwrap().0, Status::Running);
    drop(claimed);
}

#[tokio::test]
async fn a_plain_save_leaves_the_lease_alone() {
    let Some(store) = store_with(1).await else {
        return;
    };
    let claimed = store
        .claim_next("a", 1, &every_policy(), TTL)
        .await
        .unwrap();
    let lease: Lease = claimed[0].lease;
    store.save(&record("g1", 1)).await.unwrap();
    assert_eq!(
        store
            .renew("a", &[("g1".into(), lease)], TTL)
            .await
            .unwrap(),
        ["g1"]
    );
}

#[tokio::test]
async fn a_serialized_group_runs_one_download_across_replicas() {
    let Some(url) = fresh_database().await else {
        return;
    };
    let store = PostgresStore::open(&url).await.unwrap();
    let tenant = crate::auth::Tenant::default_tenant();
    store
        .save_group(&tenant, "fleet", crate::operation::Behavior::Serialized)
        .await
        .unwrap();
    for seq in 1..=3 {
        let mut r = record(&format!("g{seq}"), seq);
        r.spec.transfer_group = "fleet".into();
        store.insert(&r).await.unwrap();
    }
    let a = store
        .claim_next("a", 3, &every_policy(), TTL)
        .await
        .unwrap();
    assert_eq!(a.len(), 1, "one at a time");
    let b = store
        .claim_next("b", 3, &every_policy(), TTL)
        .await
        .unwrap();
    assert!(b.is_empty(), "another replica waits for the group too");
}

#[tokio::test]
async fn two_replicas_opening_at_once_migrate_once() {
    let Some(url) = fresh_database().await else {
        return;
    };
    let (a, b) = tokio::join!(PostgresStore::open(&url), PostgresStore::open(&url));
    a.unwrap();
    b.unwrap();
}

#[tokio::test]
async fn an_unreachable_database_is_named_without_its_password() {
    let err = PostgresStore::open("postgres://u:hunter2@127.0.0.1:1/db")
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(message.contains("127.0.0.1:1/db"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

/// A record of `tenant` landing at `file`.
fn record_at(guid: &str, seq: u64, tenant: &str, file: &str) -> crate::store::Record {
    let mut r = record(guid, seq);
    r.spec.tenant = crate::auth::Tenant::new(tenant);
    r.spec.result_file = file.into();
    r
}

#[tokio::test]
async fn a_new_download_is_refused_a_path_an_unfinished_one_holds() {
    let Some(store) = store_with(0).await else {
        return;
    };
    let first = record_at("g1", 1, "", "media/x.bin");
    assert_eq!(
        store.insert_new(&first, None).await.unwrap(),
        Inserted::Stored
    );
    // The same path, from the default tenant and from tenant `media` (whose directory is
    // `media/`): both land where g1 does.
    for (guid, seq, tenant, file) in [("g2", 2, "", "media/x.bin"), ("g3", 3, "media", "x.bin")] {
        assert_eq!(
            store
                .insert_new(&record_at(guid, seq, tenant, file), None)
                .await
                .unwrap(),
            Inserted::PathTaken {
                holder: "g1".into()
            },
            "{guid}"
        );
    }
    assert!(
        store
            .get(&["g2".into(), "g3".into()])
            .await
            .unwrap()
            .is_empty()
    );
    // Another tenant's same name lands elsewhere.
    let other = record_at("g4", 4, "films", "x.bin");
    assert_eq!(
        store.insert_new(&other, None).await.unwrap(),
        Inserted::Stored
    );
    // Once g1 finished, its path is free again.
    let mut done = first.clone();
    done.status = Status::Completed;
    done.finished_at = Some(std::time::SystemTime::now());
    store.save(&done).await.unwrap();
    let again = record_at("g5", 5, "media", "x.bin");
    assert_eq!(
        store.insert_new(&again, None).await.unwrap(),
        Inserted::Stored
    );
    // A guid stored twice is still a conflict, not a taken path.
    let twice = record_at("g5", 6, "", "elsewhere.bin");
    assert!(matches!(
        store.insert_new(&twice, None).await,
        Err(StoreError::Conflict(_))
    ));
}

#[tokio::test]
async fn concurrent_creates_on_many_replicas_never_pass_a_quota_or_share_a_path() {
    let Some(store) = store_with(0).await else {
        return;
    };
    let store = std::sync::Arc::new(store);
    // Twelve creates at once, each on its own connection as on its own replica: a quota of 5
    // lets exactly five in.
    let creates = (1..=12u64).map(|seq| {
        let store = store.clone();
        tokio::spawn(async move {
            let r = record_at(&format!("q{seq}"), seq, "media", &format!("q{seq}.bin"));
            store.insert_new(&r, Some(5)).await.unwrap()
        })
    });
    let outcomes: Vec<Inserted> = futures_util::future::join_all(creates)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let stored = outcomes.iter().filter(|o| **o == Inserted::Stored).count();
    assert_eq!(stored, 5, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Inserted::Stored | Inserted::OverQuota { count: 5 })),
        "{outcomes:?}"
    );
    // Twelve creates of one path at once: exactly one is stored.
    let creates = (100..112u64).map(|seq| {
        let store = store.clone();
        tokio::spawn(async move {
            let r = record_at(&format!("p{seq}"), seq, "films", "same.bin");
            store.insert_new(&r, None).await.unwrap()
        })
    });
    let outcomes: Vec<Inserted> = futures_util::future::join_all(creates)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let winners: Vec<_> = outcomes
        .iter()
        .filter(|o| **o == Inserted::Stored)
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let (records, _) = store.page(Some("films"), None, 0, 100).await.unwrap();
    assert_eq!(records.len(), 1);
    let holder = records[0].spec.guid.clone();
    for o in &outcomes {
        if *o != Inserted::Stored {
            assert_eq!(
                *o,
                Inserted::PathTaken {
                    holder: holder.clone()
                }
            );
        }
    }
}

#[tokio::test]
async fn version_1_is_migrated_unless_two_unfinished_downloads_share_a_path() {
    let Some(url) = fresh_database().await else {
        return;
    };
    // A database as version 1 left it, with two unfinished downloads at one path (which
    // version 1's replicas could store when they created at the same moment).
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client.batch_execute(super::schema::V1).await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE transferd_schema (version BIGINT NOT NULL);
             INSERT INTO transferd_schema (version) VALUES (1);",
        )
        .await
        .unwrap();
    for (guid, seq) in [("g1", 1), ("g2", 2)] {
        let row = super::Row::from_record(&record_at(guid, seq, "", "same.bin"));
        client
            .execute(super::INSERT.as_str(), &row.pg_values())
            .await
            .unwrap();
    }
    let refused = PostgresStore::open(&url).await.unwrap_err();
    assert!(
        matches!(&refused, StoreError::Conflict(m) if m.contains("land at the same path")),
        "{refused}"
    );
    let version: i64 = client
        .query_one("SELECT version FROM transferd_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 1, "a refused migration changes nothing");
    // Once one of them has finished, the migration goes through and the path is guarded.
    client
        .execute(
            "UPDATE downloads SET finished_at = 1, status = 5 WHERE guid = 'g2'",
            &[],
        )
        .await
        .unwrap();
    let store = PostgresStore::open(&url).await.unwrap();
    let version: i64 = client
        .query_one("SELECT version FROM transferd_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, super::schema::SCHEMA_VERSION);
    assert_eq!(
        store
            .insert_new(&record_at("g3", 3, "", "same.bin"), None)
            .await
            .unwrap(),
        Inserted::PathTaken {
            holder: "g1".into()
        }
    );
}
