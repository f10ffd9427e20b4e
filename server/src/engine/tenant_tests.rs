//! The engine's tenant rules, driven through its commands as different callers: a tenant sees
//! and controls only its own downloads (another's guid is answered like one that never
//! existed), its result files are claimed where they land, and its quota holds under
//! concurrent creates. Nothing transfers here (no slots), so every download stays IDLE.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::auth::{Caller, Role, Tenant};
use crate::operation::{Behavior, Priority};

/// An engine on a fresh store whose downloads never start, with its directory.
async fn engine() -> (Engine, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let download_dir = dir.path().join("downloads");
    std::fs::create_dir_all(&download_dir).unwrap();
    let store = Arc::new(store::SqliteStore::open(dir.path()).await.unwrap());
    let config = EngineConfig {
        download_dir,
        // No slot: nothing runs, so these tests never touch the network.
        max_active: 0,
        retry: RetryPolicy {
            max_attempts: 1,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
        },
        min_free_disk_bytes: 0,
        default_cost_policy: CostPolicy::Always,
        max_file_size: u64::MAX,
        retain_finished: None,
        max_download_rate: None,
    };
    let timeouts = crate::fetch::Timeouts {
        connect: Duration::from_secs(1),
        stall: Duration::from_secs(1),
        min_speed: 0,
    };
    let egress = Arc::new(crate::egress::EgressPolicy::new(&[], &[]));
    let fetcher = Fetcher::new(timeouts, egress, &[]).unwrap();
    let engine = Engine::open(config, store, fetcher, CancellationToken::new())
        .await
        .unwrap();
    (engine, dir)
}

fn caller(tenant: &str, role: Role, max_live_downloads: Option<u64>) -> Caller {
    Caller {
        name: Arc::from(format!("{tenant}-{}", role.name())),
        tenant: Tenant::new(tenant),
        role,
        max_live_downloads,
    }
}

fn new(result_file: &str, group: &str) -> NewDownload {
    NewDownload {
        requested_uri: "http://127.0.0.1:9/x.bin".into(),
        result_file: result_file.into(),
        transfer_group: group.into(),
        ..NewDownload::default()
    }
}

fn guids(page: &Page) -> Vec<String> {
    page.downloads.iter().map(|d| d.spec.guid.clone()).collect()
}

async fn list(engine: &Engine, caller: &Caller, filter: Option<&str>) -> Result<Page, Error> {
    engine.list(&Scope::of(caller, filter)?, None, 0, "").await
}

/// Every call that names a guid, as `caller`, each reduced to its error (if any).
async fn every_guid_call(engine: &Engine, caller: &Caller, guid: &str) -> Vec<Option<Error>> {
    vec![
        engine.get(caller, guid).await.err(),
        engine.response_information(caller, guid).err(),
        engine.watch(caller, guid).await.err(),
        engine.pause(caller, guid).await.err(),
        engine.resume(caller, guid).await.err(),
        engine.cancel(caller, guid).await.err(),
        engine.delete(caller, guid, true).await.err(),
        engine
            .set_priority(caller, guid, Priority::High)
            .await
            .err(),
        engine
            .set_cost_policy(caller, guid, CostPolicy::UnrestrictedOnly)
            .await
            .err(),
        engine
            .set_request_header(caller, guid, "x-a", "b", false)
            .await
            .err(),
        engine
            .remove_request_header(caller, guid, "x-a")
            .await
            .err(),
        engine
            .set_requested_uri(
                caller,
                guid,
                "http://127.0.0.1:9/y",
                &Default::default(),
                &[],
            )
            .await
            .err(),
        engine.make_current_in_group(caller, guid).await.err(),
    ]
}

#[tokio::test]
async fn another_tenants_download_is_not_found_exactly_like_a_missing_one() {
    let (engine, _dir) = engine().await;
    let media = caller("media", Role::User, None);
    let ml = caller("ml", Role::User, None);
    let theirs = engine
        .create(&media, new("x.bin", "nightly"))
        .await
        .unwrap();
    let guid = theirs.spec.guid.clone();
    assert_eq!(theirs.spec.tenant, Tenant::new("media"));
    let missing = uuid::Uuid::new_v4().to_string();
    let on_theirs = every_guid_call(&engine, &ml, &guid).await;
    let on_missing = every_guid_call(&engine, &ml, &missing).await;
    for (i, (a, b)) in on_theirs.iter().zip(&on_missing).enumerate() {
        let (Some(a), Some(b)) = (a, b) else {
            panic!("call {i} succeeded on another tenant's or a missing download");
        };
        assert!(matches!(a, Error::NotFound { .. }), "call {i}: {a:?}");
        assert_eq!(
            a.to_string().replace(&guid, "GUID"),
            b.to_string().replace(&missing, "GUID"),
            "call {i}"
        );
    }
    // Nothing changed, and the owner and an admin still see it as it was.
    for who in [&media, &caller("ops", Role::Admin, None), &Caller::local()] {
        let view = engine.get(who, &guid).await.unwrap();
        assert_eq!(view.progress.progress.status, Status::Idle);
        assert_eq!(view.settings.priority, Priority::Default);
        assert!(view.settings.request_headers.is_empty());
        assert_eq!(view.settings.requested_uri, "http://127.0.0.1:9/x.bin");
    }
}

#[tokio::test]
async fn lists_and_watches_show_only_the_callers_tenant_and_admins_filter() {
    let (engine, _dir) = engine().await;
    let (media, ml) = (
        caller("media", Role::Reader, None),
        caller("ml", Role::User, None),
    );
    let admin = caller("ops", Role::Admin, None);
    let mut m = Vec::new();
    let mut l = Vec::new();
    for i in 0..3 {
        m.push(
            engine
                .create(&media, new(&format!("m{i}"), ""))
                .await
                .unwrap(),
        );
        l.push(engine.create(&ml, new(&format!("l{i}"), "")).await.unwrap());
    }
    let ids = |v: &[DownloadView]| v.iter().map(|d| d.spec.guid.clone()).collect::<Vec<_>>();
    assert_eq!(guids(&list(&engine, &media, None).await.unwrap()), ids(&m));
    assert_eq!(
        guids(&list(&engine, &media, Some("media")).await.unwrap()),
        ids(&m)
    );
    let err = list(&engine, &media, Some("ml")).await.unwrap_err();
    assert!(matches!(err, Error::OtherTenant { .. }), "{err:?}");
    assert_eq!(
        guids(&list(&engine, &admin, Some("ml")).await.unwrap()),
        ids(&l)
    );
    assert_eq!(
        list(&engine, &admin, None).await.unwrap().downloads.len(),
        6
    );
    assert!(
        list(&engine, &admin, Some(""))
            .await
            .unwrap()
            .downloads
            .is_empty()
    );

    // Pages of one tenant: tokens are its own downloads' positions, and a token past its last
    // download was never handed out to it, whatever other tenants created since.
    let own = Scope::of(&ml, None).unwrap();
    let first = engine.list(&own, None, 2, "").await.unwrap();
    assert_eq!(guids(&first), ids(&l[..2]));
    let rest = engine
        .list(&own, None, 2, &first.next_page_token)
        .await
        .unwrap();
    assert_eq!(guids(&rest), ids(&l[2..]));
    assert!(rest.next_page_token.is_empty());
    let past = (l[2].spec.seq + 1).to_string();
    engine.create(&media, new("later", "")).await.unwrap();
    let err = engine.list(&own, None, 2, &past).await.unwrap_err();
    assert!(err.to_string().contains("not a token"), "{err}");

    // WatchDownloads: the snapshot holds the tenant's downloads, then only its events follow.
    let mut watch = Box::pin(engine.watch_all(own, None));
    for expected in ids(&l) {
        let (guid, _) = watch.next().await.unwrap().unwrap();
        assert_eq!(&*guid, expected);
    }
    engine.create(&media, new("unseen", "")).await.unwrap();
    let mine = engine.create(&ml, new("seen", "")).await.unwrap();
    let (guid, _) = watch.next().await.unwrap().unwrap();
    assert_eq!(&*guid, mine.spec.guid);
}

#[tokio::test]
async fn result_files_are_claimed_where_they_land() {
    let (engine, dir) = engine().await;
    let (media, ml) = (
        caller("media", Role::User, None),
        caller("ml", Role::User, None),
    );
    engine.create(&media, new("x.bin", "")).await.unwrap();
    // Another tenant's file of the same name is another file.
    engine.create(&ml, new("x.bin", "")).await.unwrap();
    let err = engine.create(&ml, new("x.bin", "")).await.unwrap_err();
    assert!(matches!(err, Error::ResultFileInUse { .. }), "{err:?}");
    // The default tenant's `media/x.bin` is media's `x.bin`.
    let err = engine
        .create(&Caller::local(), new("media/x.bin", ""))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ResultFileInUse { .. }), "{err:?}");
    // A file already in a tenant's directory exists for that tenant only.
    std::fs::create_dir_all(dir.path().join("downloads/ml")).unwrap();
    std::fs::write(dir.path().join("downloads/ml/there.bin"), b"ml").unwrap();
    let err = engine.create(&ml, new("there.bin", "")).await.unwrap_err();
    assert!(matches!(err, Error::ResultFileExists { .. }), "{err:?}");
    engine.create(&media, new("there.bin", "")).await.unwrap();
    let err = engine.create(&media, new("../ml/y", "")).await.unwrap_err();
    assert!(matches!(err, Error::InvalidResultFile { .. }), "{err:?}");
}

#[tokio::test]
async fn the_quota_holds_under_concurrent_creates_and_frees_as_downloads_finish() {
    const LIMIT: u64 = 3;
    let (engine, _dir) = engine().await;
    let media = caller("media", Role::User, Some(LIMIT));
    let creates = (0..10).map(|i| {
        let (engine, media) = (engine.clone(), media.clone());
        tokio::spawn(async move { engine.create(&media, new(&format!("f{i}"), "")).await })
    });
    let mut created = Vec::new();
    for create in creates {
        match create.await.unwrap() {
            Ok(view) => created.push(view.spec.guid),
            Err(Error::QuotaExceeded { count, limit, .. }) => {
                assert_eq!((count, limit), (LIMIT, LIMIT));
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(created.len() as u64, LIMIT);
    assert_eq!(
        list(&engine, &media, None).await.unwrap().downloads.len() as u64,
        LIMIT
    );
    // Another tenant's count is its own.
    let ml = caller("ml", Role::User, Some(1));
    engine.create(&ml, new("f", "")).await.unwrap();
    // A finished download no longer counts.
    engine.cancel(&media, &created[0]).await.unwrap();
    engine.create(&media, new("again", "")).await.unwrap();
    let err = engine.create(&media, new("over", "")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "tenant `media` has 3 unfinished downloads and may have at most 3; wait for some to finish, or cancel some"
    );
    // Nothing was stored for the refused creates.
    assert_eq!(
        list(&engine, &media, None).await.unwrap().downloads.len() as u64,
        LIMIT + 1
    );
}

#[tokio::test]
async fn group_behavior_is_per_tenant() {
    let (engine, _dir) = engine().await;
    let (media, ml) = (
        caller("media", Role::User, None),
        caller("ml", Role::User, None),
    );
    let a = engine.create(&media, new("a", "nightly")).await.unwrap();
    let b = engine.create(&ml, new("b", "nightly")).await.unwrap();
    engine
        .set_group_behavior(&media, "nightly", Behavior::Serialized)
        .await
        .unwrap();
    {
        let mut core = engine.lock();
        let ops: Vec<_> = [&a, &b]
            .iter()
            .map(|v| core.registry.get(&v.spec.guid).unwrap())
            .collect();
        for op in &ops {
            core.slots.acquire(&op.spec);
        }
        assert!(core.slots.busy(&ops[0].spec));
        assert!(!core.slots.busy(&ops[1].spec));
        for op in &ops {
            core.slots.release(&op.spec);
        }
    }
    // Reordering moves within the tenant's group only.
    engine
        .make_current_in_group(&ml, &b.spec.guid)
        .await
        .unwrap();
    assert_eq!(
        engine
            .lock()
            .registry
            .live_members(&Tenant::new("ml"), "nightly")
            .len(),
        1
    );
}
