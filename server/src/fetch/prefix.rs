//! The SHA-256 of a segmented download, hashed while it arrives. SHA-256 takes bytes only in
//! order, so it follows the file's durable prefix: the bytes durable in one run from byte 0.
//! The download's first connection hashes its own span as it writes it (an ordinary attempt
//! does); once it stops, the hasher here reads on from the partial file as the prefix grows,
//! a batch at a time on a blocking thread, while the bytes are still in the page cache. A
//! download that hashes fills its file in order (see `spans.rs`), so the prefix stays a few
//! requests behind the connections and the commit finds the file hashed, instead of reading
//! all of it again (from the disk, for a file larger than the page cache).
//!
//! The state goes into every segment checkpoint, so a resumed download goes on from there too.

use std::io::{Seek, SeekFrom};
use std::path::Path;

use super::spans::{Board, PrefixHash};
use crate::sha256::Hasher;

/// Most bytes hashed in one trip to a blocking thread.
const BATCH: u64 = 16 << 20;

/// Hashes `board`'s durable prefix as it grows, reading it from the partial file at `partial`,
/// until the whole entity is hashed. Fails if the file cannot be read; the download then goes
/// on and its commit reads the file. Never returns for a download that does not hash.
pub(super) async fn follow(board: &Board, partial: &Path) -> std::io::Result<()> {
    let Some(hash) = &board.hash else {
        return std::future::pending().await;
    };
    loop {
        let hashed = hash.snapshot();
        let total = board.entity().map_or(0, |e| e.total);
        if total > 0 && hashed.len() >= total {
            return Ok(());
        }
        let prefix = board.prefix();
        if hash.first_hashing.load(std::sync::atomic::Ordering::SeqCst) || prefix <= hashed.len() {
            // A notification sent since the last wait is kept, so none is missed.
            hash.news.notified().await;
            continue;
        }
        let upto = prefix.min(hashed.len() + BATCH);
        let state = read_on(hashed, partial, upto).await?;
        hash.offer(&state);
    }
}

/// `state` (of the file's first bytes) carried on through the file's bytes up to `upto`.
async fn read_on(mut state: Hasher, partial: &Path, upto: u64) -> std::io::Result<Hasher> {
    let partial = partial.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file = crate::paths::open_partial_for_reading(&partial)?;
        file.seek(SeekFrom::Start(state.len()))?;
        let len = upto - state.len();
        state.update_from(&mut file, len)?;
        Ok(state)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Where the prefix hash of a resumed download starts: the `saved` state, if it covers no
/// more than the stored segments hold durably from byte 0 (it always does when stored with
/// them), else byte 0.
pub(super) fn resumed(saved: Option<&Hasher>, prefix: u64) -> PrefixHash {
    match saved.filter(|s| s.len() <= prefix) {
        Some(saved) => {
            tracing::debug!(
                bytes = saved.len(),
                "going on with the SHA-256 of the durable prefix from its saved state"
            );
            PrefixHash::new(saved.clone())
        }
        None => PrefixHash::new(Hasher::new()),
    }
}
