//! Several transferd replicas sharing one PostgreSQL database and one download directory:
//! any replica serves any call, the shared queue runs each download on exactly one replica, a
//! replica killed with SIGKILL is taken over once its leases expire, and one stopped with
//! SIGSTOP past its lease is fenced: when it wakes it writes and commits nothing.
//!
//! CI runs a bounded version (50 downloads). The soak is the same test with more:
//!
//! ```sh
//! REPLICAS_DOWNLOADS=400 REPLICAS_ROUNDS=5 cargo test --release --test replicas -- --nocapture
//! ```
//!
//! `REPLICAS_SEED` replays a run; the seed is printed at the start.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::origin::{Resource, test_bytes};
use common::*;
use tokio::task::JoinHandle;

/// A short lease, so the test sees a dead replica taken over in seconds.
const LEASE_TTL: &str = "2s";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The flags of replica `i` on database `url`, sharing `downloads`.
fn replica_flags(url: &str, i: usize, downloads: &Path, max_active: &str) -> Vec<String> {
    [
        "--store",
        url,
        "--node-id",
        &format!("replica-{i}"),
        "--lease-ttl",
        LEASE_TTL,
        "--download-dir",
        downloads.to_str().unwrap(),
        "--max-active",
        max_active,
        "--retry-base-delay",
        "50ms",
    ]
    .map(String::from)
    .to_vec()
}

/// What every replica of a test shares: a fresh database, and the download directory under
/// a temporary root (which also holds each replica's data directory).
struct Cluster {
    url: String,
    root: tempfile::TempDir,
    shared: std::path::PathBuf,
}

impl Cluster {
    /// `None` when no PostgreSQL is reachable (a failure under CI).
    async fn new() -> Option<Cluster> {
        let url = common::postgres::fresh_database().await?;
        let root = tempfile::tempdir().unwrap();
        let shared = root.path().join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        Some(Cluster { url, root, shared })
    }
}

/// Starts replica `i`.
async fn start_replica(
    root: &Path,
    url: &str,
    i: usize,
    downloads: &Path,
    max_active: &str,
) -> Harness {
    let flags = replica_flags(url, i, downloads, max_active);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Harness::start_at(&root.join(format!("replica-{i}")), &flags).await
}

/// Every status each download went through, as a WatchDownloads stream on one replica saw it.
type Seen = HashMap<String, Vec<S>>;

/// Watches every download through a replica until it has seen `target` downloads
/// COMPLETED, recording each one's status changes.
fn watch_statuses(client: transferd::client::Client, target: usize) -> JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut seen = Seen::new();
        let mut stream = client.watch_all(None).await.expect("WatchDownloads");
        while let Ok(Some(event)) = stream.message().await {
            let Some(progress) = event.progress else {
                continue;
            };
            let Ok(status) = S::try_from(progress.status) else {
                continue;
            };
            let statuses = seen.entry(event.guid).or_default();
            if statuses.last() != Some(&status) {
                statuses.push(status);
            }
            let completed = seen
                .values()
                .filter(|s| s.last() == Some(&S::Completed))
                .count();
            if completed >= target {
                break;
            }
        }
        seen
    })
}

/// Waits until at least `count` of `guids` have received bytes, as `replica` reports them.
async fn wait_for_bytes(replica: &Harness, guids: &[String], count: usize) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut moving = 0;
        for guid in guids {
            let op = replica.get(guid).await;
            if op.progress.is_some_and(|p| p.bytes_received > 0) {
                moving += 1;
            }
        }
        if moving >= count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "downloads never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many downloads the chaos runs create.
fn watch_target() -> usize {
    env_or("REPLICAS_DOWNLOADS", 50) as usize
}

/// Asserts a watcher saw every download complete, and never a status after COMPLETED.
fn assert_saw_completion(name: &str, seen: &Seen, guids: &[String]) {
    for guid in guids {
        let statuses = seen
            .get(guid)
            .unwrap_or_else(|| panic!("{name} never saw {guid}"));
        assert_eq!(
            statuses.last(),
            Some(&S::Completed),
            "{name} saw {guid} end in {statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == S::Completed).count(),
            1,
            "{name} saw {guid} complete more than once: {statuses:?}"
        );
    }
}

/// Puts `count` resources on the origin: throttled so kills land mid-body, every fifth unable
/// to resume; returns their SHA-256s.
fn put_resources(origin: &common::origin::Origin, count: usize, seed: u64) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count)
        .map(|i| {
            let len = rng.usize(64 * 1024..1024 * 1024);
            let body = test_bytes(len, seed ^ i as u64);
            let mut resource =
                Resource::new(body.clone()).throttle(16 * 1024, Duration::from_millis(20));
            if i % 5 == 4 {
                resource = resource.ignore_range();
            }
            origin.put(&format!("/d{i}"), resource);
            sha256(&body)
        })
        .collect()
}

/// The chaos run: `victim` is killed (`stop = false`) or stopped past its lease and woken
/// (`stop = true`) while downloads are in flight on every replica.
async fn chaos(stop: bool) {
    let Some(Cluster { url, root, shared }) = Cluster::new().await else {
        return;
    };
    let downloads = watch_target();
    let seed = env_or("REPLICAS_SEED", fastrand::u64(..));
    println!("replicas: {downloads} downloads, stop={stop}, REPLICAS_SEED={seed}");
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(start_replica(root.path(), &url, i, &shared, "4").await);
    }
    let expected = put_resources(&replicas[0].origin, downloads, seed);
    // Two serialized groups: their downloads must run one at a time across all replicas.
    replicas[0]
        .client
        .set_group_behavior("serial-a", pb::BackgroundTransferBehavior::Serialized)
        .await
        .unwrap();
    replicas[1]
        .client
        .set_group_behavior("serial-b", pb::BackgroundTransferBehavior::Serialized)
        .await
        .unwrap();
    // Watchers on the two replicas that survive.
    let watchers = [
        watch_statuses(replicas[0].server.client().await, downloads),
        watch_statuses(replicas[2].server.client().await, downloads),
    ];
    let mut guids = Vec::new();
    for i in 0..downloads {
        let replica = &replicas[i % 3];
        let group = match i % 10 {
            3 => "serial-a",
            7 => "serial-b",
            _ => "",
        };
        let request = pb::CreateDownloadRequest {
            expected_sha256: expected[i].clone(),
            transfer_group: group.into(),
            ..create_request(&replicas[0].origin.url(&format!("/d{i}")), &format!("d{i}"))
        };
        guids.push(replica.create_with(request).await.guid);
    }
    // Let every replica get going, then strike replica 1.
    wait_for_bytes(&replicas[0], &guids, 6).await;
    let victim = replicas[1].server.pid();
    if stop {
        stop_holding_a_lease(victim, &url).await;
        // Well past its lease: another replica takes its downloads over meanwhile.
        tokio::time::sleep(Duration::from_secs(6)).await;
        signal(victim, "CONT");
    } else {
        replicas[1].server.kill().await;
    }

    for (i, guid) in guids.iter().enumerate() {
        let op = replicas[0].wait_finished(guid).await;
        assert_eq!(
            status_of(&op),
            S::Completed,
            "d{i}: {op:?}\n{}",
            replicas[0].server.log()
        );
        assert_eq!(
            sha256_file(&shared.join(format!("d{i}"))),
            expected[i],
            "d{i} has the wrong bytes"
        );
        // The other survivor answers the same.
        assert_eq!(
            replicas[2].status(guid).await,
            S::Completed,
            "d{i} on replica 2"
        );
    }
    let mut want: Vec<String> = (0..downloads).map(|i| format!("d{i}")).collect();
    want.sort();
    let files = files_settled(&shared, &want).await;
    assert_eq!(
        files, want,
        "stray or missing files (partial files must be gone)"
    );
    for (name, watcher) in ["replica 0", "replica 2"].into_iter().zip(watchers) {
        let seen = tokio::time::timeout(DEADLINE, watcher)
            .await
            .unwrap_or_else(|_| panic!("{name}'s watcher never saw every download complete"))
            .unwrap();
        assert_saw_completion(name, &seen, &guids);
    }
    if stop {
        // The stopped replica woke up fenced: it said so, and committed nothing it had lost.
        let log = replicas[1].server.log();
        assert!(
            log.contains("the lease was taken over by another replica"),
            "the stopped replica never noticed it was fenced:\n{log}"
        );
        assert_eq!(replicas[1].status(&guids[0]).await, S::Completed);
        // And it committed no file after it learned it had lost that file's lease.
        let mut fenced = std::collections::HashSet::new();
        for line in log.lines() {
            if line.contains("the lease was taken over by another replica") {
                fenced.extend(guid_in(line));
            } else if line.contains("committed the file") {
                let guid = guid_in(line).unwrap_or_default();
                assert!(
                    !fenced.contains(&guid),
                    "a fenced replica committed {guid}:\n{line}"
                );
            }
        }
    }
    let committed = count_lines(&replicas, "committed the file");
    let found_in_place = count_lines(&replicas, "the file was already in place");
    for guid in &guids {
        let count = |lines: &HashMap<String, usize>| lines.get(guid.as_str()).copied().unwrap_or(0);
        match count(&committed) {
            1 => {}
            // A replica killed between placing the file and logging it: the replica that took
            // the download over found that very file in place (its partial file is linked
            // there) and placed nothing.
            0 if !stop => assert!(
                count(&found_in_place) >= 1,
                "{guid} was never committed, and no replica found it in place"
            ),
            n => panic!("{guid} was committed {n} times"),
        }
    }
}

/// How many log lines containing `what` each download has, over every replica's log.
fn count_lines(replicas: &[Harness], what: &str) -> HashMap<String, usize> {
    let mut lines: HashMap<String, usize> = HashMap::new();
    for replica in replicas {
        for line in replica.server.log().lines() {
            if !line.contains(what) {
                continue;
            }
            if let Some(guid) = guid_in(line) {
                *lines.entry(guid).or_default() += 1;
            }
        }
    }
    lines
}

/// The `guid=` field of a log line.
fn guid_in(line: &str) -> Option<String> {
    let start = line.find("guid=")? + "guid=".len();
    let rest = &line[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

/// Stops replica 1 (`pid`) with SIGSTOP at a moment it holds a lease, as the database shows
/// once it is stopped, so it has downloads to find taken over when it wakes. A replica caught
/// between two downloads is woken and stopped again.
async fn stop_holding_a_lease(pid: u32, url: &str) {
    let db = common::postgres::connect(url).await;
    let held = || async {
        db.query_one(
            "SELECT count(*) FROM downloads WHERE lease_owner = 'replica-1' AND lease_until > now()",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if held().await > 0 {
            signal(pid, "STOP");
            if held().await > 0 {
                return;
            }
            signal(pid, "CONT");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica 1 never held a lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `per_replica` creates as `token` to each of `servers` at once (request `(i, j)` is the
/// `j`th on replica `i`) and returns how each one ended.
async fn race_creates(
    servers: &[common::Server],
    token: &common::Token,
    per_replica: usize,
    request: impl Fn(usize, usize) -> pb::CreateDownloadRequest,
) -> Vec<Result<pb::DownloadOperation, tonic::Status>> {
    let mut racing = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        for j in 0..per_replica {
            let client = server.client_as(token).await;
            let request = request(i, j);
            racing.push(tokio::spawn(async move { client.create(request).await }));
        }
    }
    let mut outcomes = Vec::new();
    for race in racing {
        outcomes.push(race.await.unwrap());
    }
    outcomes
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_is_taken_over_and_nothing_is_lost_or_doubled() {
    chaos(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_past_its_lease_wakes_fenced() {
    chaos(true).await;
}

/// A pause whose write finds the download taken over by another replica while it waited is
/// never shown. The call fails (ABORTED), and the replica's watchers and GetDownload show what
/// the store holds, never PAUSED: the change was not stored, and the new holder decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_whose_write_is_fenced_is_never_shown() {
    let Some(Cluster { url, root, shared }) = Cluster::new().await else {
        return;
    };
    let a = start_replica(root.path(), &url, 0, &shared, "2").await;
    let body = test_bytes(300_000, 9);
    let op = a.start_held("/f.bin", Resource::new(body), 100_000).await;
    let mut watcher = a.watch(&op.guid).await;
    let first = next_message(&mut watcher).await;
    assert_eq!(S::try_from(first.status).unwrap(), S::Running);

    // The download's row locked, as a replica taking it over holds it: A makes the pause, and
    // its write waits for the row.
    let mut db = common::postgres::connect(&url).await;
    let takeover = db.transaction().await.unwrap();
    takeover
        .execute(
            "SELECT 1 FROM downloads WHERE guid = $1 FOR UPDATE",
            &[&op.guid],
        )
        .await
        .unwrap();
    let pause = tokio::spawn({
        let (client, guid) = (a.client.clone(), op.guid.clone());
        async move { client.pause(&guid).await }
    });
    a.wait_log("paused by a client").await;
    // Another replica takes the lease (the next epoch, far from expiring) and lets go of the row.
    takeover
        .execute(
            "UPDATE downloads SET lease_owner = 'replica-9', lease_epoch = lease_epoch + 1,
                    lease_until = now() + interval '1 hour'
              WHERE guid = $1",
            &[&op.guid],
        )
        .await
        .unwrap();
    takeover.commit().await.unwrap();

    let refused = tokio::time::timeout(DEADLINE, pause)
        .await
        .expect("the pause is answered")
        .unwrap()
        .expect_err("a pause that was never stored fails");
    assert_eq!(refused.code(), tonic::Code::Aborted, "{refused:?}");
    // The watcher is shown nothing of it, and GetDownload says what the store holds.
    let mut seen = Vec::new();
    let quiet = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(message) = tokio::time::timeout_at(quiet, watcher.message()).await {
        seen.push(S::try_from(message.unwrap().expect("the stream ended").status).unwrap());
    }
    assert!(
        !seen.contains(&S::PausedByApplication),
        "the watcher saw {seen:?}\n{}",
        a.server.log()
    );
    let stored: i64 = db
        .query_one("SELECT status FROM downloads WHERE guid = $1", &[&op.guid])
        .await
        .unwrap()
        .get(0);
    let now = a.get(&op.guid).await;
    assert_ne!(status_of(&now), S::PausedByApplication, "{now:?}");
    assert_eq!(status_of(&now) as i64, stored, "{now:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_call_on_one_replica_reaches_the_download_running_on_another() {
    let Some(Cluster { url, root, shared }) = Cluster::new().await else {
        return;
    };
    // Replica 0 alone at first, so it is the one running the download.
    let a = start_replica(root.path(), &url, 0, &shared, "2").await;
    let body = test_bytes(2 << 20, 7);
    // Held mid-body until released, so the pause provably lands while A transfers it.
    a.origin
        .put("/big", Resource::new(body.clone()).hold_after(1 << 20));
    let request = pb::CreateDownloadRequest {
        expected_sha256: sha256(&body),
        ..create_request(&a.origin.url("/big"), "big.bin")
    };
    let guid = a.create_with(request).await.guid;
    a.wait_bytes(&guid, 1 << 20).await;
    let b = start_replica(root.path(), &url, 1, &shared, "2").await;
    // B learns of A's download and watches it.
    let mut watch = b.watch(&guid).await;
    let first = next_message(&mut watch).await;
    assert_eq!(
        S::try_from(first.status).unwrap(),
        S::Running,
        "B sees it RUNNING"
    );

    // Pause on B: it takes effect on A, and B's call returns once A has let go.
    let paused = b.pause(&guid).await;
    assert_eq!(status_of(&paused), S::PausedByApplication);
    assert_eq!(a.status(&guid).await, S::PausedByApplication);
    assert!(
        a.server.log().contains("paused by a client"),
        "A did not pause it:\n{}",
        a.server.log()
    );
    let checkpoint = a.get(&guid).await.progress.unwrap().bytes_received;
    assert_eq!(
        checkpoint,
        1 << 20,
        "A checkpointed what it had when it paused"
    );
    a.origin.release("/big");

    // An edit on B lands on the stored download, seen by A.
    b.client
        .set_priority(&guid, pb::BackgroundTransferPriority::High)
        .await
        .unwrap();
    a.wait_until(&guid, "A sees the new priority", |op| {
        op.priority == pb::BackgroundTransferPriority::High as i32
    })
    .await;

    // B follows the result while A holds it paused: it reads A's partial file up to the
    // stored checkpoint, then the rest as the download goes on, and ends at its last byte.
    let follow = b.client.read_result(&guid, 0, 0, true).await.unwrap();
    let followed = tokio::spawn(async move {
        let mut stream = follow;
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await.unwrap() {
            assert_eq!(chunk.offset, bytes.len() as u64, "chunks arrive in order");
            bytes.extend_from_slice(&chunk.data);
        }
        bytes
    });

    // Resume on B: one replica runs it to the end, from its checkpoint.
    let resumed = b.resume(&guid).await;
    assert_ne!(status_of(&resumed), S::PausedByApplication);
    let done = b.wait_finished(&guid).await;
    assert_eq!(status_of(&done), S::Completed, "{}", b.server.log());
    assert_holds(&shared.join("big.bin"), &body);
    let followed = tokio::time::timeout(DEADLINE, followed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        sha256(&followed),
        sha256(&body),
        "B's ReadResult(follow) bytes"
    );
    let statuses: Vec<S> = read_until(&mut watch, "COMPLETED", |m| m.status == S::Completed as i32)
        .await
        .iter()
        .map(|m| S::try_from(m.status).unwrap())
        .collect();
    let mut changes = statuses.clone();
    changes.dedup();
    assert!(
        changes.starts_with(&[S::PausedByApplication])
            || changes.starts_with(&[S::Running, S::PausedByApplication]),
        "B's watcher saw {changes:?}"
    );
    assert_eq!(
        changes.last(),
        Some(&S::Completed),
        "B's watcher saw {changes:?}"
    );
    assert_eq!(changes.iter().filter(|s| **s == S::Completed).count(), 1);
    // Resumed from where it paused, not from zero: the origin saw a range request.
    let ranged = a
        .origin
        .requests_for("/big")
        .iter()
        .filter(|r| r.header("range").is_some())
        .count();
    assert!(ranged >= 1, "the resume did not ask for the rest");

    // ListDownloads on either replica reads the database: the same downloads, pages and
    // statuses, and a page token of one replica works on the other.
    let other = a.create(&a.origin.url("/big"), "other.bin").await.guid;
    let first = b.client.list(None, 1, "").await.unwrap();
    assert_eq!(first.downloads.len(), 1);
    assert_eq!(first.downloads[0].guid, guid);
    assert_eq!(status_of(&first.downloads[0]), S::Completed);
    let second = a
        .client
        .list(None, 1, &first.next_page_token)
        .await
        .unwrap();
    assert_eq!(second.downloads.len(), 1);
    assert_eq!(
        second.downloads[0].guid, other,
        "created on A, listed by B's token"
    );
    let err = b.client.list(None, 1, "999999999").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_current_in_group_reorders_a_serialized_group_across_replicas() {
    use pb::BackgroundTransferBehavior as Behavior;
    let Some(Cluster { url, root, shared }) = Cluster::new().await else {
        return;
    };
    let a = start_replica(root.path(), &url, 0, &shared, "4").await;
    let b = start_replica(root.path(), &url, 1, &shared, "4").await;
    let group = b.client.set_group_behavior("fleet", Behavior::Serialized);
    assert_eq!(group.await.unwrap().behavior(), Behavior::Serialized);
    // Four members created on both replicas; each is held after its first bytes, so the first
    // runs (on either replica) while the others wait for the group.
    let mut guids = Vec::new();
    for i in 0..4 {
        let path = format!("/g{i}");
        a.origin
            .put(&path, Resource::new(test_bytes(5000, i)).hold_after(100));
        let request = pb::CreateDownloadRequest {
            transfer_group: "fleet".into(),
            ..create_request(&a.origin.url(&path), &format!("g{i}"))
        };
        let replica = if i % 2 == 0 { &a } else { &b };
        guids.push(replica.create_with(request).await.guid);
    }
    a.wait_status(&guids[0], S::Running).await;
    for g in &guids[1..] {
        let op = b.get(g).await;
        assert_eq!(status_of(&op), S::Idle, "{g} runs beside the group's first");
    }
    // On B: g3 to the front of its group. The members are moved where they are held, the
    // running g0 included: the order becomes g3, g0, g1, g2.
    let made = b.client.make_current(&guids[3]).await.unwrap();
    assert_eq!(made.guid, guids[3]);
    for i in 0..4 {
        a.origin.release(&format!("/g{i}"));
    }
    for g in &guids {
        let done = a.wait_finished(g).await;
        assert_eq!(status_of(&done), S::Completed, "{g}");
    }
    let order: Vec<String> = a
        .origin
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p.starts_with("/g"))
        .collect();
    assert_eq!(order, ["/g0", "/g3", "/g1", "/g2"]);
    // A download outside any group is refused, on either replica.
    a.origin.put("/solo", Resource::new(test_bytes(5000, 9)));
    let solo = a.create(&a.origin.url("/solo"), "solo").await.guid;
    let err = b.client.make_current(&solo).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reads_on_when_its_download_is_taken_over_from_a_killed_replica() {
    let Some(Cluster { url, root, shared }) = Cluster::new().await else {
        return;
    };
    // Replica 0 alone at first, so it is the one running the download.
    let mut a = start_replica(root.path(), &url, 0, &shared, "2").await;
    // Slow enough that A checkpoints (every 3 s) before the origin holds the rest back, so B
    // has bytes to read while A still runs it.
    let body = test_bytes(4 << 20, 11);
    a.origin.put(
        "/big",
        Resource::new(body.clone())
            .throttle(32 * 1024, Duration::from_millis(50))
            .hold_after(3 << 20),
    );
    let request = pb::CreateDownloadRequest {
        expected_sha256: sha256(&body),
        ..create_request(&a.origin.url("/big"), "big.bin")
    };
    let guid = a.create_with(request).await.guid;
    a.wait_bytes(&guid, 3 << 20).await;
    let b = start_replica(root.path(), &url, 1, &shared, "2").await;

    // B follows the download A runs, and has read from A's partial file before A dies.
    let mut follow = b.client.read_result(&guid, 0, 0, true).await.unwrap();
    let first = tokio::time::timeout(DEADLINE, follow.message())
        .await
        .expect("B never read the first bytes A checkpointed")
        .unwrap()
        .expect("the follow ended before any bytes");
    assert_eq!(first.offset, 0);
    let mut followed = first.data.to_vec();
    let reader = tokio::spawn(async move {
        while let Some(chunk) = follow.message().await.unwrap() {
            assert_eq!(
                chunk.offset,
                followed.len() as u64,
                "chunks arrive in order"
            );
            followed.extend_from_slice(&chunk.data);
        }
        followed
    });

    // A dies holding the lease; B takes the download over once it expires, in a copy of A's
    // partial file, and finishes it.
    a.server.kill().await;
    a.origin.release("/big");
    let done = b.wait_finished(&guid).await;
    assert_eq!(status_of(&done), S::Completed, "{}", b.server.log());
    assert_holds(&shared.join("big.bin"), &body);
    assert!(
        b.server.log().contains("committed the file"),
        "B did not finish it:\n{}",
        b.server.log()
    );
    let followed = tokio::time::timeout(DEADLINE, reader)
        .await
        .expect("B's follow never ended")
        .unwrap();
    assert_eq!(
        sha256(&followed),
        sha256(&body),
        "the bytes B's ReadResult(follow) sent across the takeover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_racing_on_three_replicas_keep_quotas_and_result_files() {
    use common::Server;
    use common::tokens::{MEDIA, ML, token_file};
    const QUOTA: usize = 3;
    let Some(Cluster { url, root, shared }) = Cluster::new().await else {
        return;
    };
    let tokens = root.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "{}\nmax_live_downloads = {QUOTA}\n\n{}",
            token_file(&[MEDIA]).trim_end(),
            token_file(&[ML])
        ),
    )
    .unwrap();
    let mut servers = Vec::new();
    for i in 0..3 {
        let mut flags = replica_flags(&url, i, &shared, "4");
        flags.extend(["--auth-tokens".into(), tokens.to_str().unwrap().into()]);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        servers.push(Server::start(&root.path().join(format!("replica-{i}")), &flags).await);
    }
    // Held after their first bytes, so every download stays unfinished while the test counts.
    let origin = common::origin::Origin::start().await;
    origin.put(
        "/q.bin",
        Resource::new(test_bytes(64 * 1024, 5)).hold_after(1024),
    );
    let url_of = origin.url("/q.bin");

    // Twelve creates of media at once, four on each replica: exactly its quota get in.
    let outcomes = race_creates(&servers, &MEDIA, 4, |i, j| {
        create_request(&url_of, &format!("q{i}-{j}"))
    })
    .await;
    let mut stored = 0;
    for outcome in outcomes {
        match outcome {
            Ok(_) => stored += 1,
            Err(e) => assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}"),
        }
    }
    assert_eq!(stored, QUOTA, "media's quota across three replicas");

    // Nine creates of one result file at once, three on each replica: exactly one gets it.
    let outcomes = race_creates(&servers, &ML, 3, |_, _| create_request(&url_of, "same.bin")).await;
    let mut winners = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(op) => winners.push(op.guid),
            Err(e) => assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "one result file, one unfinished download");

    // Nine creates without a result file, named after the URI by transferd: every one is
    // stored, each under a name of its own.
    let outcomes = race_creates(&servers, &ML, 3, |_, _| create_request(&url_of, "")).await;
    let mut names: Vec<String> = outcomes
        .into_iter()
        .map(|outcome| outcome.expect("a create without a result file").result_file)
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 9, "{names:?}");
    assert!(names.contains(&"q.bin".to_string()), "{names:?}");
}
