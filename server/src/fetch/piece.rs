//! One segment's connection: requests ranged over what is left of its span, at most
//! [`PIECE_REQUEST`] each (`Range: bytes=from-last`, guarded by `If-Range`), the answer checked against the entity
//! every segment shares, and its body written at its offset without touching the rest of the
//! file. Anything that shows the entity is not the one being assembled (a 200, a changed
//! validator or length, a range that does not fit) is no failure to retry: the download must
//! start over.

use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

use super::response::{self, Resume};
use super::segments::{PIECE_REQUEST, Piece};
use super::spans::{Entity, Span};
use super::{Failure, Fetcher, Job, Observer, ResponseStart, body};
use crate::operation::{ErrorReason, TransferError, Validators};

impl Fetcher {
    /// Fetches what is left of `span`, resuming from its durable bytes, until it is complete,
    /// fails, or `stop` fires; a range the origin ends early is asked for again. Between
    /// requests it gives up its connection when `make_way` says so.
    ///
    /// A request that ends short of the span's end is only written, unless the span is due a
    /// checkpoint ([`Span::checkpoint_due`]): the next one follows at once, without waiting
    /// for an fsync and a store commit every 4 MiB. Its fsync runs in the background while
    /// the next request arrives, so the disk writes while the network delivers and the last
    /// fsync finds little left; the next request's end waits for it, and its failure fails
    /// the connection like any write's. What is written is checkpointed at the span's next
    /// checkpoint, at its end, or when the connection stops or fails.
    pub(super) async fn piece<O: Observer>(
        &self,
        job: &Job<'_>,
        span: &Span,
        entity: &Entity,
        observer: &O,
        make_way: &(dyn Fn() -> bool + Sync),
        stop: &CancellationToken,
    ) -> Result<Piece, Failure> {
        // Where the next request starts: the durable bytes, then what this connection wrote.
        let mut written = Written {
            at: span.durable(),
            syncing: None,
        };
        // The requests, one after another; `written` follows what they wrote.
        let ended: Result<Piece, Failure> = async {
            let mut reported = false;
            loop {
                let end = span.end();
                if written.at >= end {
                    return Ok(Piece::Done(end));
                }
                if reported && make_way() {
                    return Ok(Piece::Yielded);
                }
                let from = written.at;
                // Never more than a split leaves in front of the claimed bytes, so a split never
                // cuts this request short: it ends where it said and its connection is reused.
                let upto = end.min(from + PIECE_REQUEST);
                span.asking(upto);
                let sync_at_end = upto == end || span.checkpoint_due();
                let validators = &entity.validators;
                let Some(response) = self
                    .request(job, validators, from, Some(upto), stop)
                    .await?
                else {
                    return Ok(Piece::Stopped);
                };
                let status = response.status();
                if status == StatusCode::OK {
                    return Ok(Piece::Restart(
                        "a ranged request was answered with the whole entity (HTTP 200): it changed, \
                         or the server no longer serves ranges of it"
                            .into(),
                    ));
                }
                let part = match response::check_resume(&response, from, entity.total) {
                    Resume::Continue(part) => part,
                    Resume::RequestAgain(reason) => return Ok(Piece::Restart(reason.into())),
                    Resume::Whole => return Err(not_a_range(&response, observer)),
                };
                let (info, got) = response::describe(&response, true);
                if let Some(reason) = changed(validators, &got) {
                    return Ok(Piece::Restart(reason.into()));
                }
                let file = body::open_segment(job.partial).await?;
                // One response per connection is news to the engine; its next ranges are not.
                if !std::mem::replace(&mut reported, true) {
                    observer.response(ResponseStart {
                        info,
                        validators: got,
                        total: entity.total,
                        offset: from,
                        restarted: false,
                    });
                }
                let expect = body::Expect {
                    offset: from,
                    end: Some(part.end),
                    total: entity.total,
                    max_bytes: job.max_bytes,
                    window: self.timeouts.stall,
                    min_speed: self.timeouts.min_speed,
                    span: Some(span),
                    sync_at_end,
                    write: self.write_mode_for(job),
                };
                match body::stream_body(response, file, &mut None, expect, job.lane, observer, stop)
                    .await?
                {
                    body::Streamed::Complete(_) => return Ok(Piece::Done(end)),
                    // The range ended where it was asked to (or the server said), short of the
                    // span: ask for the next.
                    body::Streamed::RangeEnded(at) => {
                        written.at = at;
                        if !sync_at_end {
                            written.sync_in_background(job.partial).await?;
                        }
                    }
                    body::Streamed::Stopped => return Ok(Piece::Stopped),
                }
            }
        }
        .await;
        if matches!(ended, Ok(Piece::Restart(_))) {
            // The download starts over from byte 0: nothing here is kept.
            return ended;
        }
        if matches!(&ended, Err(failure) if failure.error.reason == ErrorReason::Disk) {
            // After a failed write or fsync nothing more is claimed durable: another fsync
            // can succeed where the first reported the loss.
            return ended;
        }
        // However it ended, what it wrote is kept: durable, and checkpointed.
        let settled = match written.synced().await {
            Ok(()) => {
                let upto = written.at.min(span.end());
                self.settle(job, span, upto, observer).await
            }
            Err(failure) => Err(failure),
        };
        match (ended, settled) {
            (Ok(piece), Ok(())) => Ok(piece),
            (Ok(_), Err(failure)) | (Err(failure), _) => Err(failure),
        }
    }
}

/// Where a connection's next request starts, and the fsync of what it wrote last, running in
/// the background.
struct Written {
    at: u64,
    syncing: Option<tokio::task::JoinHandle<Result<(), Failure>>>,
}

impl Written {
    /// Waits for the background fsync, if one runs; its failure is the connection's.
    async fn synced(&mut self) -> Result<(), Failure> {
        match self.syncing.take() {
            Some(syncing) => syncing.await.unwrap_or_else(|e| {
                Err(Failure::disk(
                    "syncing the partial file failed",
                    &std::io::Error::other(e),
                ))
            }),
            None => Ok(()),
        }
    }

    /// Starts the fsync of the partial file at `partial` in the background, after the one
    /// before it: at most one runs per connection.
    async fn sync_in_background(&mut self, partial: &std::path::Path) -> Result<(), Failure> {
        self.synced().await?;
        let partial = partial.to_path_buf();
        self.syncing = Some(tokio::spawn(
            async move { body::sync_segment(&partial).await },
        ));
        Ok(())
    }
}

impl Fetcher {
    /// Makes what this connection wrote of `span` up to `written` durable and reports it, if
    /// its last request left it unsynced.
    async fn settle<O: Observer>(
        &self,
        job: &Job<'_>,
        span: &Span,
        written: u64,
        observer: &O,
    ) -> Result<(), Failure> {
        if span.durable() >= written {
            return Ok(());
        }
        body::sync_segment(job.partial).await?;
        observer.durable(written, None).await;
        Ok(())
    }
}

/// Why a 206's validators show a different entity than the one being assembled, if they do:
/// `If-Range` should have prevented it, but a cache or a careless origin may ignore it.
fn changed(known: &Validators, got: &Validators) -> Option<&'static str> {
    match (&known.etag, &got.etag) {
        (Some(a), Some(b)) if a != b => Some("the entity's ETag changed between segments"),
        (None, _) => match (&known.last_modified, &got.last_modified) {
            (Some(a), Some(b)) if a != b => {
                Some("the entity's Last-Modified changed between segments")
            }
            _ => None,
        },
        _ => None,
    }
}

/// The failure of an answer that is neither a fitting 206 nor a 200: an error status (retried
/// when transient), a redirect that was not followed, or another success status.
fn not_a_range<O: Observer>(response: &reqwest::Response, observer: &O) -> Failure {
    let status = response.status();
    let (info, _) = response::describe(response, true);
    observer.error_response(info);
    if let Some(failure) = response::unfollowed_redirect(response) {
        return failure;
    }
    if !status.is_success() {
        return response::http_failure(status, response::retry_after(response.headers()));
    }
    Failure::transient(TransferError {
        message: format!(
            "the server answered a ranged request with HTTP {}, neither a range nor the whole \
             entity; nothing was written",
            status.as_u16()
        ),
        http_status: Some(status.as_u16()),
        reason: ErrorReason::HttpStatus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_different_validator_is_a_different_entity() {
        let v = |etag: Option<&str>, lm: Option<&str>| Validators {
            etag: etag.map(str::to_string),
            last_modified: lm.map(str::to_string),
        };
        let known = v(Some("\"a\""), Some("Mon"));
        assert!(changed(&known, &v(Some("\"a\""), Some("Tue"))).is_none());
        assert!(changed(&known, &v(Some("\"b\""), Some("Mon"))).is_some());
        assert!(changed(&v(None, Some("Mon")), &v(None, Some("Tue"))).is_some());
        assert!(changed(&v(None, Some("Mon")), &v(None, Some("Mon"))).is_none());
    }
}
