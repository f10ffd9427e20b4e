//! Tenants, end to end: a real transferd with a token file of two user tenants (`media`, `ml`)
//! and an admin, real clients sending their tokens. Each tenant sees and controls only its own
//! downloads (another's guid is NOT_FOUND with the message of a guid that never existed, and
//! nothing changes), its result files land in its own directory, its groups are its own, and
//! its quota of unfinished downloads is RESOURCE_EXHAUSTED beyond the limit. The admin sees
//! every tenant and can filter by one.

mod common;

use common::origin::{Origin, Resource, test_bytes};
use common::rpcs::every_rpc;
use common::tokens::{MEDIA, ML, token_file};
use common::{Client, Harness, S, Server, Token, assert_holds, create_request, next_message, pb};
use tonic::Code;

const ADMIN: Token = Token {
    name: "ops",
    tenant: "ops",
    role: "admin",
    secret: "admin-secret-3",
};

/// The RPCs that name a download by guid: each must treat another tenant's like a missing one.
const GUID_RPCS: &[&str] = &[
    "GetDownload",
    "PauseDownload",
    "ResumeDownload",
    "CancelDownload",
    "DeleteDownload",
    "WatchDownload",
    "GetResponseInformation",
    "SetCostPolicy",
    "SetPriority",
    "SetRequestHeader",
    "RemoveRequestHeader",
    "SetRequestedUri",
    "MakeCurrentInTransferGroup",
    "SetRateLimit",
    "ReadResult",
];

/// A server with both tenants and the admin; the harness's own client is the admin, who sees
/// every tenant, so the harness's waits work on anyone's download.
async fn start() -> (Harness, Client, Client) {
    let h = Harness::start_with_tokens(&[MEDIA, ML, ADMIN], &ADMIN, &["--max-active", "8"]).await;
    let media = h.server.client_as(&MEDIA).await;
    let ml = h.server.client_as(&ML).await;
    (h, media, ml)
}

/// A download of `tenant` in `group`, held by the origin after 1 KiB so it stays unfinished.
async fn held(h: &Harness, tenant: &Client, path: &str, group: &str) -> pb::DownloadOperation {
    h.origin.put(
        path,
        Resource::new(test_bytes(64 * 1024, 1)).hold_after(1024),
    );
    let mut request = create_request(&h.origin.url(path), path.trim_start_matches('/'));
    request.transfer_group = group.into();
    tenant.create(request).await.expect("the tenant creates")
}

/// Guids of every download `client` lists.
async fn listed(client: &Client) -> Vec<String> {
    let all = client.list_all(None).await.expect("lists");
    all.into_iter().map(|op| op.guid).collect()
}

/// Guids of the downloads ListDownloads with `tenant` shows `client`, or the refusal.
async fn listed_in(client: &Client, tenant: &str) -> Result<Vec<String>, tonic::Status> {
    let request = pb::ListDownloadsRequest {
        tenant: Some(tenant.into()),
        ..Default::default()
    };
    let page = client.list_with(request).await?;
    Ok(page.downloads.into_iter().map(|op| op.guid).collect())
}

#[tokio::test]
async fn another_tenants_guid_is_not_found_like_a_missing_one_and_nothing_changes() {
    let (h, media, ml) = start().await;
    h.origin.put(
        "/file.bin",
        Resource::new(test_bytes(64 * 1024, 1)).hold_after(1024),
    );
    let mut request = create_request(&h.origin.url("/file.bin"), "file.bin");
    request.transfer_group = "nightly".into();
    request
        .request_headers
        .insert("x-kept".into(), "yes".into());
    let theirs = media.create(request).await.unwrap();
    h.wait_bytes(&theirs.guid, 1024).await;
    media.pause(&theirs.guid).await.unwrap();
    let before = h.wait_status(&theirs.guid, S::PausedByApplication).await;
    let files_before = common::files_under(&h.download_dir());

    let missing = "00000000-0000-4000-8000-000000000000";
    let on_theirs = every_rpc(&h, &ml, &theirs.guid).await;
    let on_missing = every_rpc(&h, &ml, missing).await;
    for ((method, answer), (_, control)) in on_theirs.iter().zip(&on_missing) {
        if !GUID_RPCS.contains(method) {
            continue;
        }
        let status = answer.as_ref().expect_err(method);
        let control = control.as_ref().expect_err(method);
        assert_eq!(status.code(), Code::NotFound, "{method}: {status:?}");
        assert_eq!(
            status.message().replace(&theirs.guid, "GUID"),
            control.message().replace(missing, "GUID"),
            "{method}"
        );
    }
    // The calls in the list are the contract's guid calls, so none was skipped by mistake.
    let named: Vec<&str> = on_theirs.iter().map(|(m, _)| *m).collect();
    for method in GUID_RPCS {
        assert!(named.contains(method), "every_rpc lacks {method}");
    }

    // Nothing of media's changed: the download (as its owner sees it now and the admin saw it
    // before), and its files: its directory and its partial file.
    let after = media.get(&theirs.guid).await.unwrap();
    assert_eq!(format!("{after:?}"), format!("{before:?}"));
    assert_eq!(
        after.request_headers.get("x-kept").map(String::as_str),
        Some("yes")
    );
    assert!(!after.request_headers.contains_key("x-test"));
    assert_eq!(after.tenant, "media");
    let files_after = common::files_under(&h.download_dir());
    let media_files = |files: &[String]| -> Vec<String> {
        let mine = |p: &&String| p.starts_with("media/") || p.contains(&theirs.guid);
        files.iter().filter(mine).cloned().collect()
    };
    assert_eq!(media_files(&files_after), media_files(&files_before));
    assert_eq!(media_files(&files_before).len(), 1, "{files_before:?}");
}

#[tokio::test]
async fn lists_and_watches_show_each_tenant_its_own_and_the_admin_everything() {
    let (h, media, ml) = start().await;
    let m = held(&h, &media, "/m.bin", "").await;
    let l = held(&h, &ml, "/l.bin", "").await;
    h.wait_bytes(&m.guid, 1024).await;
    h.wait_bytes(&l.guid, 1024).await;

    assert_eq!(listed(&media).await, [m.guid.as_str()]);
    assert_eq!(listed(&ml).await, [l.guid.as_str()]);
    assert_eq!(listed(&h.client).await, [m.guid.clone(), l.guid.clone()]);
    assert_eq!(listed_in(&h.client, "ml").await.unwrap(), [l.guid.as_str()]);
    assert_eq!(listed_in(&media, "media").await.unwrap(), [m.guid.as_str()]);
    let refused = listed_in(&media, "ml").await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("`ml`"), "{refused:?}");
    let refused = ml
        .watch_all_with(pb::WatchDownloadsRequest {
            tenant: Some("media".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let ops = h.client.list_all(None).await.unwrap();
    let tenants: Vec<&str> = ops.iter().map(|op| op.tenant.as_str()).collect();
    assert_eq!(tenants, ["media", "ml"]);

    // WatchDownloads: ml's snapshot is its own download; then, of a change to media's download
    // and a later one to ml's, ml is told only of its own.
    let mut ml_events = ml.watch_all(None).await.unwrap();
    assert_eq!(next_message(&mut ml_events).await.guid, l.guid);
    let mut admin_events = h
        .client
        .watch_all_with(pb::WatchDownloadsRequest {
            tenant: Some("media".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(next_message(&mut admin_events).await.guid, m.guid);
    media.cancel(&m.guid).await.unwrap();
    ml.cancel(&l.guid).await.unwrap();
    let event = next_message(&mut ml_events).await;
    assert_eq!(event.guid, l.guid);
    assert_eq!(
        event.progress.unwrap().status(),
        S::Canceled,
        "ml sees its own cancel next"
    );
    // The admin's view filtered to media sees media's cancel and nothing of ml's.
    let event = next_message(&mut admin_events).await;
    assert_eq!(event.guid, m.guid);
    assert_eq!(event.progress.unwrap().status(), S::Canceled);
}

#[tokio::test]
async fn one_result_file_name_is_two_files_in_two_directories() {
    let (h, media, ml) = start().await;
    let (media_bytes, ml_bytes) = (test_bytes(70_000, 11), test_bytes(50_000, 12));
    h.origin.put("/a.bin", Resource::new(media_bytes.clone()));
    h.origin.put("/b.bin", Resource::new(ml_bytes.clone()));
    let m = media
        .create(create_request(&h.origin.url("/a.bin"), "same/x.bin"))
        .await
        .unwrap();
    let l = ml
        .create(create_request(&h.origin.url("/b.bin"), "same/x.bin"))
        .await
        .unwrap();
    for op in [&m, &l] {
        let done = h.wait_finished(&op.guid).await;
        assert_eq!(common::status_of(&done), S::Completed);
        assert_eq!(done.result_file, "same/x.bin");
    }
    assert_holds(&h.download_dir().join("media/same/x.bin"), &media_bytes);
    assert_holds(&h.download_dir().join("ml/same/x.bin"), &ml_bytes);
    assert!(!h.download_dir().join("same/x.bin").exists());

    // Naming the other tenant's file is refused, as any escape is.
    let refused = media
        .create(create_request(&h.origin.url("/a.bin"), "../ml/same/x.bin"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    // Deleting media's download with its file leaves ml's file alone.
    let deleted = media.delete(&m.guid, true).await.unwrap();
    assert!(deleted.result_file_deleted);
    assert!(!h.download_dir().join("media/same/x.bin").exists());
    assert_holds(&h.download_dir().join("ml/same/x.bin"), &ml_bytes);
}

#[tokio::test]
async fn one_group_name_in_two_tenants_is_two_groups() {
    use pb::BackgroundTransferBehavior as B;
    let (h, media, ml) = start().await;
    media
        .set_group_behavior("nightly", B::Serialized)
        .await
        .unwrap();
    let m1 = held(&h, &media, "/m1.bin", "nightly").await;
    h.wait_bytes(&m1.guid, 1024).await;
    let m2 = held(&h, &media, "/m2.bin", "nightly").await;
    h.wait_status_reason(&m2.guid, S::Idle, pb::StatusReason::WaitingForGroup)
        .await;
    // ml's nightly is a group of its own, still parallel: both of its downloads run.
    let l1 = held(&h, &ml, "/l1.bin", "nightly").await;
    let l2 = held(&h, &ml, "/l2.bin", "nightly").await;
    h.wait_bytes(&l1.guid, 1024).await;
    h.wait_bytes(&l2.guid, 1024).await;
    assert_eq!(
        common::status_of(&h.client.get(&m2.guid).await.unwrap()),
        S::Idle
    );
    // Reordering in ml's group does not touch media's.
    ml.make_current(&l2.guid).await.unwrap();
    let still = h.client.get(&m2.guid).await.unwrap();
    assert_eq!(still.status_reason(), pb::StatusReason::WaitingForGroup);
}

#[tokio::test]
async fn a_tenant_beyond_its_quota_is_resource_exhausted_and_nothing_is_stored() {
    const LIMIT: usize = 2;
    let dir = tempfile::tempdir().unwrap();
    // Every token of media carries its limit; ml and the admin have none.
    let text = format!(
        "{}\nmax_live_downloads = {LIMIT}\n\n{}",
        token_file(&[MEDIA]).trim_end(),
        token_file(&[ML, ADMIN])
    );
    let file = dir.path().join("tokens.toml");
    std::fs::write(&file, text).unwrap();
    let server = Server::start(dir.path(), &["--auth-tokens", file.to_str().unwrap()]).await;
    let origin = Origin::start().await;
    origin.put(
        "/q.bin",
        Resource::new(test_bytes(64 * 1024, 3)).hold_after(1024),
    );
    let (media, ml) = (server.client_as(&MEDIA).await, server.client_as(&ML).await);
    let admin = server.client_as(&ADMIN).await;
    let create = |name: &str| create_request(&origin.url("/q.bin"), name);

    let mut live = Vec::new();
    for i in 0..LIMIT {
        live.push(media.create(create(&format!("q{i}"))).await.unwrap().guid);
    }
    let stored = admin.list_all(None).await.unwrap();
    let refused = media.create(create("over")).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        refused.message(),
        "tenant `media` has 2 unfinished downloads and may have at most 2; wait for some to finish, or cancel some"
    );
    // Nothing was stored or claimed: the list is as before, and the name is free for ml.
    let after = admin.list_all(None).await.unwrap();
    assert_eq!(
        after.iter().map(|o| &o.guid).collect::<Vec<_>>(),
        stored.iter().map(|o| &o.guid).collect::<Vec<_>>()
    );
    assert!(!server.download_dir().join("media/over").exists());
    // Another tenant's quota is its own.
    ml.create(create("over")).await.unwrap();
    // A finished download frees its place.
    media.cancel(&live[0]).await.unwrap();
    media.create(create("over")).await.unwrap();
    let refused = media.create(create("over-again")).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
}
