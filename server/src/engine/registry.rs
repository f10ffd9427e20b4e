//! The registry: every download by guid and by creation order (the order of ListDownloads and
//! its page tokens), and the result files claimed by unfinished downloads.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::download::Op;
use super::{Core, DownloadView};
use crate::error::Error;
use crate::operation::{DownloadSpec, Guid, Status, StatusReason};

/// Default page size of ListDownloads.
pub(super) const DEFAULT_PAGE_SIZE: usize = 100;

/// Largest page ListDownloads returns, so one call cannot build an unbounded response.
pub(super) const MAX_PAGE_SIZE: usize = 1000;

/// Every download the engine knows.
#[derive(Debug, Default)]
pub(super) struct Registry {
    ops: HashMap<Guid, Arc<Op>>,
    /// Every download by creation sequence: ListDownloads order and its page tokens.
    by_seq: BTreeMap<u64, Arc<Op>>,
    /// Result files claimed by unfinished downloads.
    claimed: HashMap<String, Guid>,
    /// The highest creation sequence handed out.
    last_seq: u64,
}

/// Where a page of ListDownloads starts and how long it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PageRequest {
    /// Creation sequence of the last download of the previous page (0 for the first page).
    pub(super) after: u64,
    /// Downloads on the page.
    pub(super) size: usize,
}

impl PageRequest {
    /// Reads a page token and a requested size (0 for the default, capped at the maximum). A
    /// token is the creation sequence of a page's last download, written as the server writes
    /// it: decimal digits without sign or leading zeros.
    pub(super) fn parse(page_size: usize, page_token: &str) -> Result<PageRequest, Error> {
        let after = if page_token.is_empty() {
            0
        } else {
            let canonical =
                page_token.bytes().all(|b| b.is_ascii_digit()) && !page_token.starts_with('0');
            canonical
                .then(|| page_token.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| not_issued(page_token))?
        };
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        Ok(PageRequest { after, size })
    }
}

/// A page token the server did not hand out.
fn not_issued(page_token: &str) -> Error {
    Error::InvalidArgument(format!(
        "page_token `{}` is not a token returned by ListDownloads; pass the next_page_token of the previous page, or none for the first page",
        crate::error::shorten(page_token)
    ))
}

impl Registry {
    /// The download with this guid.
    pub(super) fn get(&self, guid: &str) -> Option<Arc<Op>> {
        self.ops.get(guid).cloned()
    }

    /// The download with this guid, or NOT_FOUND.
    pub(super) fn find(&self, guid: &str) -> Result<Arc<Op>, Error> {
        self.get(guid)
            .ok_or_else(|| Error::NotFound { guid: guid.into() })
    }

    /// Every download, in creation order.
    pub(super) fn all(&self) -> impl Iterator<Item = &Arc<Op>> {
        self.by_seq.values()
    }

    /// The unfinished download that holds `path`, if any.
    pub(super) fn holder(&self, path: &str) -> Option<&Guid> {
        self.claimed.get(path)
    }

    /// Claims `path` for `guid` and hands out the next creation sequence. Called before the
    /// store write, so a concurrent create cannot take the same file meanwhile.
    pub(super) fn reserve(&mut self, path: &str, guid: &Guid) -> u64 {
        self.claimed.insert(path.to_string(), guid.clone());
        self.last_seq += 1;
        self.last_seq
    }

    /// Gives a result file back (its download finished, or was never stored).
    pub(super) fn release_claim(&mut self, spec: &DownloadSpec) {
        if self.claimed.get(&spec.result_file) == Some(&spec.guid) {
            self.claimed.remove(&spec.result_file);
        }
    }

    /// Forgets a finished download. Its creation sequence is not handed out again, so page
    /// tokens issued before stay valid.
    pub(super) fn remove(&mut self, guid: &str) -> Option<Arc<Op>> {
        let op = self.ops.remove(guid)?;
        self.by_seq.remove(&op.spec.seq);
        self.release_claim(&op.spec);
        Some(op)
    }

    /// A page of downloads (of one group, or all) and whether more follow. A page that starts
    /// after a download not yet created was never handed out.
    pub(super) fn page(
        &self,
        group: Option<&str>,
        page: PageRequest,
    ) -> Result<(Vec<Arc<Op>>, bool), Error> {
        if page.after > self.last_seq {
            return Err(not_issued(&page.after.to_string()));
        }
        let mut matching = self
            .by_seq
            .range(page.after + 1..)
            .map(|(_, op)| op)
            .filter(|op| group.is_none_or(|g| op.spec.transfer_group == g));
        let downloads: Vec<Arc<Op>> = matching.by_ref().take(page.size).cloned().collect();
        let more = matching.next().is_some();
        Ok((downloads, more))
    }

    /// The unfinished downloads of a transfer group.
    pub(super) fn live_members(&self, group: &str) -> Vec<Arc<Op>> {
        self.by_seq
            .values()
            .filter(|o| o.spec.transfer_group == group && !o.lock().status().is_terminal())
            .cloned()
            .collect()
    }

    fn insert(&mut self, op: Arc<Op>, unfinished: bool) {
        if unfinished {
            self.claimed
                .insert(op.spec.result_file.clone(), op.spec.guid.clone());
        }
        self.last_seq = self.last_seq.max(op.spec.seq);
        self.by_seq.insert(op.spec.seq, op.clone());
        self.ops.insert(op.spec.guid.clone(), op);
    }
}

impl Core {
    /// Adds a loaded or newly stored download: it claims its result file until it finishes,
    /// and waits in the run queue if it is IDLE.
    pub(super) fn add(&mut self, op: Arc<Op>) {
        let (status, key) = {
            let st = op.lock();
            (st.status(), op.queue_key(&st))
        };
        if status == Status::Idle {
            self.queue.push(key);
        }
        self.registry.insert(op, !status.is_terminal());
    }

    /// The download's view, telling "waiting for a slot" from "waiting for its group".
    pub(super) fn view(&self, op: &Op) -> DownloadView {
        let mut view = op.view();
        if view.reason == StatusReason::WaitingForSlot && self.slots.busy(&op.spec.transfer_group) {
            view.reason = StatusReason::WaitingForGroup;
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_and_sizes() {
        assert_eq!(
            PageRequest::parse(0, "").unwrap(),
            PageRequest {
                after: 0,
                size: DEFAULT_PAGE_SIZE
            }
        );
        assert_eq!(
            PageRequest::parse(5000, "17").unwrap(),
            PageRequest {
                after: 17,
                size: MAX_PAGE_SIZE
            }
        );
        for bad in ["abc", "+1", "-1", "01", " 1", "18446744073709551616"] {
            let err = PageRequest::parse(10, bad).unwrap_err();
            assert!(err.to_string().contains("not a token"), "{bad}: {err}");
        }
    }
}
