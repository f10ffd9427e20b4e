//! ReadResult: a download's bytes over gRPC. A COMPLETED download is read whole or in ranges;
//! with follow, a download that has not completed is read as its bytes become durable, and the
//! stream ends ABORTED if the download cannot finish; a result changed outside transferd is
//! refused rather than sent.

mod common;

use common::origin::{Resource, test_bytes};
use common::{Harness, S, pb, sha256, status_of};
use tonic::{Code, Streaming};

/// The largest chunk the server sends (ReadResult's documented chunk size).
const CHUNK: usize = 256 * 1024;

/// Reads a ReadResult stream to its end: the chunks in order, or the status it ended with.
async fn read_all(
    mut stream: Streaming<pb::ResultChunk>,
) -> (Vec<pb::ResultChunk>, Result<(), tonic::Status>) {
    let mut chunks = Vec::new();
    loop {
        match tokio::time::timeout(common::DEADLINE, stream.message()).await {
            Err(_) => panic!("ReadResult sent nothing for {:?}", common::DEADLINE),
            Ok(Ok(Some(chunk))) => chunks.push(chunk),
            Ok(Ok(None)) => return (chunks, Ok(())),
            Ok(Err(status)) => return (chunks, Err(status)),
        }
    }
}

/// The bytes of `chunks`, checked to follow one another from `offset`, each at most [`CHUNK`].
fn joined(chunks: &[pb::ResultChunk], offset: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    for chunk in chunks {
        assert_eq!(chunk.offset, offset + bytes.len() as u64, "chunks in order");
        assert!(!chunk.data.is_empty() && chunk.data.len() <= CHUNK);
        bytes.extend_from_slice(&chunk.data);
    }
    bytes
}

/// `guid`'s bytes from `offset`, `length` of them (0: to the end), without follow.
async fn read(h: &Harness, guid: &str, offset: u64, length: u64) -> Result<Vec<u8>, tonic::Status> {
    let stream = h.client.read_result(guid, offset, length, false).await?;
    let (chunks, end) = read_all(stream).await;
    end.map(|()| joined(&chunks, offset))
}

#[tokio::test]
async fn a_completed_download_reads_back_whole_and_in_ranges() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(CHUNK * 4 + 123, 41);
    h.origin.put("/whole.bin", Resource::new(body.clone()));
    let op = h.create(&h.origin.url("/whole.bin"), "whole.bin").await;
    h.wait_status(&op.guid, S::Completed).await;

    let stream = h.client.read_result(&op.guid, 0, 0, false).await.unwrap();
    let (chunks, end) = read_all(stream).await;
    end.unwrap();
    assert_eq!(chunks.len(), 5, "256 KiB chunks, the last one short");
    assert_eq!(sha256(&joined(&chunks, 0)), sha256(&body));

    let size = body.len() as u64;
    let cases: [(u64, u64, &[u8]); 5] = [
        (1000, 300_000, &body[1000..301_000]),
        (size - 10, 0, &body[body.len() - 10..]),
        (size - 10, 1_000_000, &body[body.len() - 10..]),
        (CHUNK as u64, 1, &body[CHUNK..CHUNK + 1]),
        (size, 0, &[]),
    ];
    for (offset, length, expected) in cases {
        let got = read(&h, &op.guid, offset, length).await.unwrap();
        assert_eq!(got, expected, "offset {offset}, length {length}");
    }

    let past = read(&h, &op.guid, size + 1, 0).await.unwrap_err();
    assert_eq!(past.code(), Code::OutOfRange, "{past:?}");
    assert!(
        past.message().contains(&format!("which has {size} bytes")),
        "{past:?}"
    );
}

#[tokio::test]
async fn only_a_completed_download_is_read_without_follow() {
    let h = Harness::start(&[]).await;
    let op = h
        .start_held("/held.bin", Resource::new(test_bytes(64 * 1024, 3)), 1024)
        .await;
    let running = read(&h, &op.guid, 0, 0).await.unwrap_err();
    assert_eq!(running.code(), Code::FailedPrecondition, "{running:?}");
    assert!(
        running.message().contains("it is RUNNING") && running.message().contains("follow"),
        "{running:?}"
    );

    h.origin.put("/gone.bin", Resource::new("nope").status(404));
    let failed = h.create(&h.origin.url("/gone.bin"), "gone.bin").await;
    h.wait_status(&failed.guid, S::Error).await;
    let error = read(&h, &failed.guid, 0, 0).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert!(error.message().contains("has no result"), "{error:?}");
    let followed = h.client.read_result(&failed.guid, 0, 0, true).await;
    assert_eq!(followed.unwrap_err().code(), Code::FailedPrecondition);

    let missing = read(&h, "00000000-0000-4000-8000-000000000000", 0, 0)
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
}

/// A paused download holding `held` durable bytes of `body`, and a follower started on it.
async fn paused_and_followed(
    h: &Harness,
    path: &str,
    body: &bytes::Bytes,
    held: u64,
) -> (pb::DownloadOperation, Streaming<pb::ResultChunk>) {
    let op = h.start_held(path, Resource::new(body.clone()), held).await;
    h.pause(&op.guid).await;
    h.wait_status(&op.guid, S::PausedByApplication).await;
    let stream = h.client.read_result(&op.guid, 0, 0, true).await.unwrap();
    (op, stream)
}

/// The first `count` chunks of a followed read, each arriving while the download is paused.
async fn chunks_while_paused(
    h: &Harness,
    guid: &str,
    stream: &mut Streaming<pb::ResultChunk>,
    count: usize,
) -> Vec<pb::ResultChunk> {
    let mut chunks = Vec::new();
    for _ in 0..count {
        chunks.push(common::next_message(stream).await);
        assert_eq!(status_of(&h.get(guid).await), S::PausedByApplication);
    }
    chunks
}

#[tokio::test]
async fn follow_reads_a_download_as_it_is_written_then_to_its_end() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(CHUNK * 6 + 77, 5);
    let held = 2 * CHUNK as u64;
    let (op, mut stream) = paused_and_followed(&h, "/follow.bin", &body, held).await;
    // The durable bytes of a paused download arrive before it moves on.
    let mut chunks = chunks_while_paused(&h, &op.guid, &mut stream, 2).await;
    assert_eq!(joined(&chunks, 0), &body[..held as usize]);

    h.origin.release("/follow.bin");
    h.client.resume(&op.guid).await.unwrap();
    let (rest, end) = read_all(stream).await;
    end.unwrap();
    chunks.extend(rest);
    assert_eq!(sha256(&joined(&chunks, 0)), sha256(&body));
    assert_eq!(status_of(&h.get(&op.guid).await), S::Completed);
    h.assert_file("follow.bin", &body);
}

#[tokio::test]
async fn a_followed_read_ends_aborted_when_the_download_is_canceled() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(CHUNK * 3, 6);
    let (op, mut stream) = paused_and_followed(&h, "/cancel.bin", &body, CHUNK as u64).await;
    let chunks = chunks_while_paused(&h, &op.guid, &mut stream, 1).await;
    assert_eq!(joined(&chunks, 0), &body[..CHUNK]);

    h.client.cancel(&op.guid).await.unwrap();
    let (more, end) = read_all(stream).await;
    assert!(more.is_empty(), "nothing past the checkpoint: {more:?}");
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(
        status.message().contains("canceled") && status.message().contains("not a whole result"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_followed_read_ends_aborted_when_the_download_starts_over() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(CHUNK * 3, 7);
    let (op, mut stream) = paused_and_followed(&h, "/changes.bin", &body, CHUNK as u64).await;
    chunks_while_paused(&h, &op.guid, &mut stream, 1).await;

    // The origin's file changes: the resume's If-Range no longer matches, so it starts over.
    let changed = test_bytes(CHUNK * 3, 8);
    h.origin.put("/changes.bin", Resource::new(changed.clone()));
    h.client.resume(&op.guid).await.unwrap();
    let (_, end) = read_all(stream).await;
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("started over"), "{status:?}");

    // The download itself completes with the new file, which reads back whole.
    h.wait_status(&op.guid, S::Completed).await;
    let again = read(&h, &op.guid, 0, 0).await.unwrap();
    assert_eq!(sha256(&again), sha256(&changed));
}

#[tokio::test]
async fn a_result_changed_or_removed_outside_transferd_is_refused() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(4096, 9);
    let mut guids = Vec::new();
    for name in ["removed.bin", "grown.bin", "swapped.bin"] {
        h.origin
            .put(&format!("/{name}"), Resource::new(body.clone()));
        let op = h.create(&h.origin.url(&format!("/{name}")), name).await;
        h.wait_status(&op.guid, S::Completed).await;
        guids.push(op.guid);
    }
    let dir = h.download_dir();
    std::fs::remove_file(dir.join("removed.bin")).unwrap();
    std::fs::write(dir.join("grown.bin"), [&body[..], b"more"].concat()).unwrap();
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), &body[..]).unwrap();
    std::fs::remove_file(dir.join("swapped.bin")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.join("swapped.bin")).unwrap();

    let expected = [
        "it is no longer there",
        "it has 4100 bytes, not the 4096 transferd committed",
        "symlink",
    ];
    for (guid, expected) in guids.iter().zip(expected) {
        let refused = read(&h, guid, 0, 0).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains(expected), "{refused:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_reads_a_segmented_download_in_order() {
    let h = Harness::start(&["--max-connections-per-download", "4"]).await;
    // Large and slow per connection, so the download is split over several connections whose
    // segments become durable out of order.
    let body = test_bytes(24 << 20, 21);
    let paced =
        Resource::new(body.clone()).throttle(64 << 10, std::time::Duration::from_millis(10));
    h.origin.put("/segmented.bin", paced);
    let op = h
        .create(&h.origin.url("/segmented.bin"), "segmented.bin")
        .await;
    let stream = h.client.read_result(&op.guid, 0, 0, true).await.unwrap();
    let (chunks, end) = read_all(stream).await;
    end.unwrap();
    assert_eq!(sha256(&joined(&chunks, 0)), sha256(&body));
    let ranged = h
        .origin
        .requests_for("/segmented.bin")
        .iter()
        .filter(|r| r.header("range").is_some())
        .count();
    assert!(
        ranged >= 2,
        "the download was not segmented: {ranged} ranged requests"
    );
}
