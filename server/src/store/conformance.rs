//! The one test suite every [`Store`] backend must pass. It drives the trait only, through
//! `&dyn Store`, so what it checks is the contract the engine relies on, not how a backend
//! keeps it. A backend supplies a [`Fixture`] (how to open, reopen and age its store) and runs
//! every case with one line: `conformance::suite!(MyFixture);`.

use crate::auth::Tenant;
use crate::operation::{
    Behavior, CostPolicy, DownloadSpec, ErrorReason, Priority, ResponseInfo, Segment, Settings,
    Status, TransferError, Validators,
};
use std::time::{Duration, SystemTime};

use crate::store::{Record, Store, StoreError, StoredGroup};

/// How the suite sets up one backend.
pub(crate) trait Fixture: Sized {
    /// The schema version the backend writes.
    const SCHEMA_VERSION: i64;
    /// Creates an empty store that no other case sees, and opens it.
    async fn open() -> (Self, Box<dyn Store>);
    /// Opens the same store again, as a restarted transferd would. The suite drops every
    /// earlier handle first.
    async fn reopen(&self) -> Result<Box<dyn Store>, StoreError>;
    /// Records `version` as the store's schema version, as a transferd of that version would.
    async fn set_schema_version(&self, version: i64);
    /// Whether the backend can be set up here. A backend that needs a server (PostgreSQL)
    /// says `false` outside CI when there is none, and every case then returns at once; under
    /// CI it must fail instead.
    fn available() -> bool {
        true
    }
}

/// Expands to one `#[tokio::test]` per case of the suite, run against the given [`Fixture`];
/// a backend cannot forget a case, and a new case reaches every backend.
macro_rules! suite {
    ($fixture:ty) => {
        $crate::store::conformance::suite!(@cases $fixture;
            insert_then_load,
            every_field_round_trips,
            duplicate_insert_is_a_conflict,
            save_of_unknown_download_is_a_conflict,
            checkpoints_are_saved,
            status_updates_are_saved,
            live_setting_edits_are_saved,
            groups_are_saved_overwritten_and_loaded,
            pages_follow_seq_order,
            newer_schema_is_refused,
            finish_time_round_trips,
            delete_forgets_a_download,
            finished_downloads_are_pruned_by_age,
            concurrent_writes_are_all_durable,
            a_bad_write_among_concurrent_ones_fails_alone,
        );
    };
    (@cases $fixture:ty; $($case:ident,)*) => {
        $(
            #[tokio::test]
            async fn $case() {
                if !<$fixture as $crate::store::conformance::Fixture>::available() {
                    return;
                }
                $crate::store::conformance::$case::<$fixture>().await;
            }
        )*
    };
}
pub(crate) use suite;

/// A download as just created: every optional field empty. Other unit tests build their
/// records from it too.
pub(crate) fn record(guid: &str, seq: u64) -> Record {
    Record {
        spec: DownloadSpec {
            guid: guid.into(),
            seq,
            tenant: Tenant::default_tenant(),
            result_file: format!("{guid}.bin"),
            transfer_group: String::new(),
            expected_sha256: None,
            recoverable_web_error_statuses: Vec::new(),
            max_bytes: None,
            replace_existing: false,
        },
        settings: Settings {
            requested_uri: format!("http://127.0.0.1/{guid}"),
            request_headers: Default::default(),
            sensitive_headers: Default::default(),
            priority: Priority::Default,
            cost_policy: CostPolicy::Default,
            max_bytes_per_second: None,
        },
        status: Status::Idle,
        checkpoint_bytes: 0,
        segments: Vec::new(),
        total_bytes: 0,
        sha256_state: None,
        validators: Validators::default(),
        response: None,
        error: None,
        attempts: 0,
        web_error_status: None,
        queue_order: i64::try_from(seq).unwrap(),
        finished_at: None,
    }
}

/// A download with every field set to something other than its default, with values that
/// catch narrowing (past 32 bits), sign and text-encoding mistakes.
fn full_record(guid: &str, seq: u64) -> Record {
    Record {
        spec: DownloadSpec {
            guid: guid.into(),
            seq,
            tenant: Tenant::new("médiä"),
            result_file: "dir/ünïcode file.bin".into(),
            transfer_group: "nightly".into(),
            expected_sha256: Some("ab".repeat(32)),
            recoverable_web_error_statuses: vec![401, 403],
            max_bytes: Some(5 << 30),
            replace_existing: true,
        },
        settings: Settings {
            requested_uri: "https://example.test/a?b=c&d=é".into(),
            request_headers: [
                ("authorization".to_string(), "Bearer x".to_string()),
                ("x-empty".to_string(), String::new()),
                ("x-pin".to_string(), "1234".to_string()),
            ]
            .into(),
            sensitive_headers: ["x-pin".to_string(), "x-later".to_string()].into(),
            priority: Priority::High,
            cost_policy: CostPolicy::UnrestrictedOnly,
            // Past 32 bits, to catch narrowing.
            max_bytes_per_second: Some((1 << 40) - 3),
        },
        status: Status::Error,
        checkpoint_bytes: 5_000_000_000_123,
        // Past 32 bits too; in entity order, as the engine writes them.
        segments: vec![
            Segment {
                start: 0,
                end: 4_500_000_000_000,
                durable: 4_000_000_000_000,
            },
            Segment {
                start: 4_500_000_000_000,
                end: 9_000_000_000_000,
                durable: 1_000_000_000_123,
            },
        ],
        total_bytes: 9_000_000_000_000,
        // Opaque to the store: bytes of every value, including zeros, round-trip.
        sha256_state: Some((0..=255).collect()),
        validators: Validators {
            etag: Some("\"e-1\"".into()),
            last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
        },
        response: Some(ResponseInfo {
            is_resumable: true,
            actual_uri: "https://cdn.example.test/a".into(),
            status_code: 404,
            headers: [
                ("etag".to_string(), "\"e-1\"".to_string()),
                ("set-cookie".to_string(), "a=1, b=2".to_string()),
            ]
            .into(),
        }),
        error: Some(TransferError {
            message: "the server answered HTTP 404 Not Found".into(),
            http_status: Some(404),
            reason: ErrorReason::HttpStatus,
        }),
        attempts: 7,
        web_error_status: Some(403),
        queue_order: -5,
        finished_at: Some(at_ms(1_700_000_000_123)),
    }
}

/// A time `ms` milliseconds after the Unix epoch: what a store keeps of a finish time.
fn at_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

async fn load_all(store: &dyn Store) -> Vec<Record> {
    store.load_page(0, usize::MAX).await.unwrap()
}

async fn reopen<F: Fixture>(fixture: &F) -> Box<dyn Store> {
    fixture.reopen().await.expect("the store opens again")
}

/// A created download is durable: it is loaded back, also after a restart.
pub(crate) async fn insert_then_load<F: Fixture>() {
    let (fixture, store) = F::open().await;
    assert_eq!(load_all(&*store).await, vec![]);
    let (a, b) = (record("a", 1), record("b", 2));
    store.insert(&a).await.unwrap();
    store.insert(&b).await.unwrap();
    assert_eq!(load_all(&*store).await, vec![a.clone(), b.clone()]);
    drop(store);
    assert_eq!(load_all(&*reopen(&fixture).await).await, vec![a, b]);
}

/// Every field of a record comes back exactly as stored, whether inserted so or saved later,
/// and an optional field saved empty is empty again.
pub(crate) async fn every_field_round_trips<F: Fixture>() {
    let (fixture, store) = F::open().await;
    let inserted = full_record("full", 1);
    store.insert(&inserted).await.unwrap();
    let mut saved = full_record("saved", 2);
    let created = record("saved", 2);
    saved.spec = created.spec.clone();
    store.insert(&created).await.unwrap();
    store.save(&saved).await.unwrap();
    assert_eq!(
        load_all(&*store).await,
        vec![inserted.clone(), saved.clone()]
    );
    let cleared = created;
    store.save(&cleared).await.unwrap();
    drop(store);
    assert_eq!(
        load_all(&*reopen(&fixture).await).await,
        vec![inserted, cleared]
    );
}

/// A download is inserted once: a second insert of its guid, or of its seq, is refused and
/// leaves the stored one as it was.
pub(crate) async fn duplicate_insert_is_a_conflict<F: Fixture>() {
    let (_fixture, store) = F::open().await;
    let a = record("a", 1);
    store.insert(&a).await.unwrap();
    let same_guid = full_record("a", 2);
    let err = store.insert(&same_guid).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let same_seq = record("b", 1);
    let err = store.insert(&same_seq).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(load_all(&*store).await, vec![a]);
}

/// Saving a download that was never inserted is refused and stores nothing.
pub(crate) async fn save_of_unknown_download_is_a_conflict<F: Fixture>() {
    let (_fixture, store) = F::open().await;
    let a = record("a", 1);
    store.insert(&a).await.unwrap();
    let err = store.save(&record("zz", 3)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(load_all(&*store).await, vec![a]);
}

/// Each checkpoint replaces the last: the latest byte counts and validators are what a
/// restart resumes from.
pub(crate) async fn checkpoints_are_saved<F: Fixture>() {
    let (fixture, store) = F::open().await;
    let mut a = record("a", 1);
    store.insert(&a).await.unwrap();
    a.status = Status::Running;
    a.total_bytes = 10_000_000_000;
    a.validators.etag = Some("\"v1\"".into());
    for bytes in [1, 4_294_967_296, 7_000_000_000] {
        a.checkpoint_bytes = bytes;
        store.save(&a).await.unwrap();
        assert_eq!(load_all(&*store).await, vec![a.clone()]);
    }
    drop(store);
    assert_eq!(load_all(&*reopen(&fixture).await).await, vec![a]);
}

/// Every status is stored and read back, together with the error and web-error status that
/// go with it, and cleared again.
pub(crate) async fn status_updates_are_saved<F: Fixture>() {
    let (_fixture, store) = F::open().await;
    let mut a = record("a", 1);
    store.insert(&a).await.unwrap();
    for status in Status::ALL {
        a.status = status;
        a.attempts += 1;
        a.error = (status == Status::Error).then(|| TransferError {
            message: "writing the partial file failed: no space".into(),
            http_status: None,
            reason: ErrorReason::Disk,
        });
        a.web_error_status = (status == Status::PausedRecoverableWebErrorStatus).then_some(401);
        store.save(&a).await.unwrap();
        assert_eq!(load_all(&*store).await, vec![a.clone()], "{status:?}");
    }
}

/// Live edits (URI, headers and their sensitivity marks, priority, cost policy, bandwidth limit,
/// queue position) are saved; the spec, fixed
/// at creation, stays as inserted even if a save carries another.
pub(crate) async fn live_setting_edits_are_saved<F: Fixture>() {
    let (fixture, store) = F::open().await;
    let mut a = record("a", 1);
    store.insert(&a).await.unwrap();
    a.settings = Settings {
        requested_uri: "http://127.0.0.1/moved".into(),
        request_headers: [("cookie".to_string(), "k=v".to_string())].into(),
        sensitive_headers: ["x-marked".to_string()].into(),
        priority: Priority::Low,
        cost_policy: CostPolicy::Always,
        max_bytes_per_second: Some(64 * 1024),
    };
    a.queue_order = -1;
    store.save(&a).await.unwrap();
    assert_eq!(load_all(&*store).await, vec![a.clone()]);
    // A limit removed is stored as none, not left behind.
    let mut unlimited = a.clone();
    unlimited.settings.max_bytes_per_second = None;
    store.save(&unlimited).await.unwrap();
    assert_eq!(load_all(&*store).await, vec![unlimited]);
    store.save(&a).await.unwrap();
    let mut other_spec = a.clone();
    other_spec.spec.result_file = "elsewhere.bin".into();
    other_spec.spec.transfer_group = "g".into();
    other_spec.spec.tenant = Tenant::new("other");
    store.save(&other_spec).await.unwrap();
    drop(store);
    assert_eq!(load_all(&*reopen(&fixture).await).await, vec![a]);
}

/// Group behaviors are saved, overwritten by the latest, and loaded in (tenant, name) order;
/// one name in two tenants is two groups.
pub(crate) async fn groups_are_saved_overwritten_and_loaded<F: Fixture>() {
    let (fixture, store) = F::open().await;
    assert_eq!(store.load_groups().await.unwrap(), vec![]);
    let (default, media) = (Tenant::default_tenant(), Tenant::new("media"));
    let saves = [
        (&default, "b", Behavior::Serialized),
        (&media, "b", Behavior::Serialized),
        (&default, "a", Behavior::Serialized),
        (&default, "c", Behavior::Serialized),
        (&default, "b", Behavior::Parallel),
    ];
    for (tenant, name, behavior) in saves {
        store.save_group(tenant, name, behavior).await.unwrap();
    }
    let group = |tenant: &Tenant, name: &str, behavior| StoredGroup {
        tenant: tenant.clone(),
        name: name.into(),
        behavior,
    };
    let expected = vec![
        group(&default, "a", Behavior::Serialized),
        group(&default, "b", Behavior::Parallel),
        group(&default, "c", Behavior::Serialized),
        group(&media, "b", Behavior::Serialized),
    ];
    assert_eq!(store.load_groups().await.unwrap(), expected);
    drop(store);
    assert_eq!(
        reopen(&fixture).await.load_groups().await.unwrap(),
        expected
    );
}

/// Pages come in seq order whatever the insertion order or queue order, split exactly at
/// `limit`, continue after the given seq (also one that falls in a gap), and end empty.
pub(crate) async fn pages_follow_seq_order<F: Fixture>() {
    let (_fixture, store) = F::open().await;
    // Seqs 2, 4, ..., 50 inserted out of order, with queue order opposite to seq.
    let seqs: Vec<u64> = (1..=25).map(|i| (i * 7 % 25 + 1) * 2).collect();
    for &seq in &seqs {
        let mut r = record(&format!("d{seq}"), seq);
        r.queue_order = -i64::try_from(seq).unwrap();
        store.insert(&r).await.unwrap();
    }
    let seqs_of = |page: &[Record]| page.iter().map(|r| r.spec.seq).collect::<Vec<_>>();
    let mut read = Vec::new();
    let mut after = 0;
    // Bounded, so a backend that repeats a page fails here instead of looping forever.
    for _ in 0..4 {
        let page = store.load_page(after, 10).await.unwrap();
        assert!(page.len() <= 10);
        let Some(last) = page.last() else { break };
        after = last.spec.seq;
        read.extend(seqs_of(&page));
    }
    assert_eq!(read, (1..=25).map(|i| i * 2).collect::<Vec<u64>>());
    let mut page_sizes = Vec::new();
    for after in [0, 20, 40] {
        page_sizes.push(store.load_page(after, 10).await.unwrap().len());
    }
    assert_eq!(page_sizes, [10, 10, 5]);
    assert_eq!(seqs_of(&store.load_page(7, 2).await.unwrap()), vec![8, 10]);
    assert_eq!(seqs_of(&store.load_page(48, 10).await.unwrap()), vec![50]);
    assert_eq!(store.load_page(50, 10).await.unwrap(), vec![]);
    assert_eq!(store.load_page(1_000, 10).await.unwrap(), vec![]);
    assert_eq!(store.load_page(0, 0).await.unwrap(), vec![]);
}

/// A store written by a newer schema is refused, not misread, and stays intact for the newer
/// version: set back, it opens with its data.
pub(crate) async fn newer_schema_is_refused<F: Fixture>() {
    let (fixture, store) = F::open().await;
    let a = record("a", 1);
    store.insert(&a).await.unwrap();
    drop(store);
    let newer = F::SCHEMA_VERSION + 1;
    fixture.set_schema_version(newer).await;
    let err = fixture.reopen().await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NewerSchema { found, supported }
                if found == newer && supported == F::SCHEMA_VERSION
        ),
        "{err:?}"
    );
    fixture.set_schema_version(F::SCHEMA_VERSION).await;
    assert_eq!(load_all(&*reopen(&fixture).await).await, vec![a]);
}

/// The finish time is saved when a download finishes, and read back to the millisecond.
pub(crate) async fn finish_time_round_trips<F: Fixture>() {
    let (fixture, store) = F::open().await;
    let mut a = record("a", 1);
    store.insert(&a).await.unwrap();
    a.status = Status::Completed;
    a.finished_at = Some(at_ms(1_763_000_000_001));
    store.save(&a).await.unwrap();
    drop(store);
    assert_eq!(load_all(&*reopen(&fixture).await).await, vec![a]);
}

/// A deleted download is gone, also after a restart; deleting it again, or deleting a guid
/// never stored, reports that nothing was deleted; the others stay.
pub(crate) async fn delete_forgets_a_download<F: Fixture>() {
    let (fixture, store) = F::open().await;
    let (a, b) = (record("a", 1), full_record("b", 2));
    store.insert(&a).await.unwrap();
    store.insert(&b).await.unwrap();
    assert!(store.delete("a").await.unwrap());
    assert!(!store.delete("a").await.unwrap());
    assert!(!store.delete("never").await.unwrap());
    assert_eq!(load_all(&*store).await, vec![b.clone()]);
    let err = store.save(&a).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    drop(store);
    let store = reopen(&fixture).await;
    assert_eq!(load_all(&*store).await, vec![b]);
    // Its guid may be stored again (a new download never reuses one, but nothing forbids it).
    store.insert(&a).await.unwrap();
}

/// Pruning forgets exactly the downloads that finished before the cutoff.
pub(crate) async fn finished_downloads_are_pruned_by_age<F: Fixture>() {
    let (fixture, store) = F::open().await;
    let finished = |guid: &str, seq, ms| Record {
        status: Status::Canceled,
        finished_at: Some(at_ms(ms)),
        ..record(guid, seq)
    };
    let old = finished("old", 1, 1_000);
    let at_cutoff = finished("at-cutoff", 2, 2_000);
    let recent = finished("recent", 3, 3_000);
    let unfinished = record("unfinished", 4);
    for r in [&old, &at_cutoff, &recent, &unfinished] {
        store.insert(r).await.unwrap();
    }
    assert_eq!(
        store.delete_finished_before(at_ms(2_000)).await.unwrap(),
        vec!["old".to_string()]
    );
    assert_eq!(
        store.delete_finished_before(at_ms(2_000)).await.unwrap(),
        Vec::<String>::new()
    );
    drop(store);
    let store = reopen(&fixture).await;
    assert_eq!(
        load_all(&*store).await,
        vec![at_cutoff, recent, unfinished.clone()]
    );
    let mut pruned = store
        .delete_finished_before(at_ms(u64::from(u32::MAX) * 1000))
        .await
        .unwrap();
    pruned.sort();
    assert_eq!(pruned, vec!["at-cutoff".to_string(), "recent".to_string()]);
    assert_eq!(load_all(&*store).await, vec![unfinished]);
}

/// Writes in flight together (a backend may commit them as one batch) are each durable once
/// acknowledged: every one is there after a restart, each with its own content.
pub(crate) async fn concurrent_writes_are_all_durable<F: Fixture>() {
    const WRITES: u64 = 200;
    let (fixture, store) = F::open().await;
    let records: Vec<Record> = (1..=WRITES).map(|n| record(&format!("c{n}"), n)).collect();
    let inserts = records.iter().map(|r| store.insert(r));
    for result in futures_util::future::join_all(inserts).await {
        result.unwrap();
    }
    let saved: Vec<Record> = records
        .iter()
        .map(|r| Record {
            status: Status::Running,
            checkpoint_bytes: r.spec.seq * 1000,
            ..r.clone()
        })
        .collect();
    let saves = saved.iter().map(|r| store.save(r));
    for result in futures_util::future::join_all(saves).await {
        result.unwrap();
    }
    drop(store);
    assert_eq!(load_all(&*reopen(&fixture).await).await, saved);
}

/// Of writes in flight together, the ones that contradict what is stored (a duplicate of a
/// download already stored, a save of a download never inserted) fail with their own error;
/// every other one succeeds and is durable. (Which of two concurrent inserts of one guid wins
/// is not promised; the engine never makes them.)
pub(crate) async fn a_bad_write_among_concurrent_ones_fails_alone<F: Fixture>() {
    let (fixture, store) = F::open().await;
    let good: Vec<Record> = (1..=20).map(|n| record(&format!("g{n}"), n)).collect();
    store.insert(&good[2]).await.unwrap();
    let duplicate = full_record("g3", 100);
    let unknown = record("never-inserted", 101);
    let (first, rest) = good.split_at(10);
    let mut writes = Vec::new();
    writes.extend(
        first
            .iter()
            .filter(|r| r.spec.guid != "g3")
            .map(|r| store.insert(r)),
    );
    writes.push(store.insert(&duplicate));
    writes.push(store.save(&unknown));
    writes.extend(rest.iter().map(|r| store.insert(r)));
    let results = futures_util::future::join_all(writes).await;
    for (i, result) in results.iter().enumerate() {
        match i {
            9 | 10 => assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}"),
            _ => assert!(result.is_ok(), "write {i}: {result:?}"),
        }
    }
    assert_eq!(load_all(&*store).await, good);
    drop(store);
    assert_eq!(load_all(&*reopen(&fixture).await).await, good);
}
