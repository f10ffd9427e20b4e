//! Group commit. One thread owns the SQLite connection and runs every store call in arrival
//! order. Writes that queue up while a commit is being made durable go into the next
//! transaction together, so concurrent writers (many CreateDownloads, checkpoints, status
//! changes) share one commit and one fsync instead of taking one each; each caller hears back
//! only after the transaction holding its write has committed. A savepoint around each write
//! keeps one failing write from failing the others in its batch.
//!
//! A read ends the batch before it, so it never sees a write that might still fail to commit.

use std::panic::AssertUnwindSafe;
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::failed;
use crate::store::{StoreError, StoreFuture};

/// Most writes one transaction holds. A batch is what queued during the previous commit; the
/// bound keeps any one transaction, and so the wait of its first caller, short under a flood.
/// At a few microseconds per row against milliseconds per fsync, 256 rows cost far less than
/// the commit they share.
const MAX_BATCH: usize = 256;

/// Whether a call changes the store, and so joins a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Only reads; runs outside any transaction of the writer.
    Read,
    /// Changes the store; acknowledged once its transaction commits.
    Write,
}

/// A store call queued for the writer thread.
trait Job: Send {
    fn kind(&self) -> Kind;
    /// Runs the call on the connection and keeps its result.
    fn run(&mut self, conn: &Connection);
    /// Whether the call ran and succeeded.
    fn succeeded(&self) -> bool;
    /// Turns a success (or a call that never ran) into `error`: its transaction was lost.
    fn fail(&mut self, error: StoreError);
    /// Hands the result to the caller (who may have stopped waiting).
    fn reply(self: Box<Self>);
}

struct Call<T, F> {
    kind: Kind,
    call: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Call<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn kind(&self) -> Kind {
        self.kind
    }

    fn run(&mut self, conn: &Connection) {
        if let Some(call) = self.call.take() {
            // A panicking call fails alone (its caller sees "did not finish"); the thread and
            // every other call carry on, as they did when each call had its own blocking task.
            self.result = std::panic::catch_unwind(AssertUnwindSafe(|| call(conn))).ok();
        }
    }

    fn succeeded(&self) -> bool {
        matches!(self.result, Some(Ok(_)))
    }

    fn fail(&mut self, error: StoreError) {
        if !matches!(self.result, Some(Err(_))) {
            self.result = Some(Err(error));
        }
    }

    fn reply(self: Box<Self>) {
        let result = self.result.unwrap_or_else(|| {
            Err(StoreError::Unavailable(
                "a store call did not finish".into(),
            ))
        });
        // The caller may have gone away; the write stands either way, as the trait allows.
        let _ = self.reply.send(result);
    }
}

/// The handle of the writer thread. Dropping it lets the thread finish every queued call,
/// close the connection and exit, and waits for that, so a store dropped and reopened (a
/// restart in tests) never finds the old connection still open.
pub(super) struct Writer {
    queue: Option<mpsc::UnboundedSender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the thread that owns `conn`.
    pub(super) fn start(conn: Connection) -> Result<Writer, StoreError> {
        // Unbounded: every caller awaits its reply, so the queue never holds more than the
        // calls in flight, and the engine bounds those.
        let (queue, calls) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("transferd-store".into())
            .spawn(move || serve(conn, calls))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store thread: {e}")))?;
        Ok(Writer {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues `call` now (not when the future is first polled) and resolves with its result:
    /// for a write, once the transaction holding it has committed.
    pub(super) fn call<T, F>(&self, kind: Kind, call: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let job = Box::new(Call {
            kind,
            call: Some(call),
            result: None,
            reply,
        });
        if let Some(queue) = &self.queue {
            // A send fails only if the thread is gone; the dropped reply then says so below.
            let _ = queue.send(job);
        }
        Box::pin(async move {
            result.await.unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "the store thread has stopped; restart transferd".into(),
                ))
            })
        })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: runs calls until every handle to the queue is gone.
fn serve(conn: Connection, mut calls: mpsc::UnboundedReceiver<Box<dyn Job>>) {
    let mut next = calls.blocking_recv();
    while let Some(mut job) = next.take() {
        if job.kind() == Kind::Read {
            job.run(&conn);
            job.reply();
            next = calls.blocking_recv();
            continue;
        }
        let mut batch = vec![job];
        while batch.len() < MAX_BATCH {
            match calls.try_recv() {
                Ok(job) if job.kind() == Kind::Write => batch.push(job),
                Ok(read) => {
                    next = Some(read);
                    break;
                }
                Err(_) => break,
            }
        }
        commit(&conn, &mut batch);
        for job in batch {
            job.reply();
        }
        if next.is_none() {
            next = calls.blocking_recv();
        }
    }
}

/// Applies `batch` in one transaction, each write in its own savepoint, and commits it. A
/// write that fails is rolled back to its savepoint and keeps its own error; the others stand.
/// A write acknowledged here is durable: COMMIT returns after the WAL is fsynced
/// (`synchronous = FULL`).
fn commit(conn: &Connection, batch: &mut [Box<dyn Job>]) {
    let lost = |e: &rusqlite::Error| {
        StoreError::Unavailable(format!("the write could not be committed: {e}"))
    };
    // IMMEDIATE takes the write lock up front, so a lock held elsewhere (an operator's shell)
    // is waited for under the busy timeout rather than failing mid-batch.
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        batch.iter_mut().for_each(|job| job.fail(lost(&e)));
        return;
    }
    // The first write of the open transaction: SQLite rolls a whole transaction back on some
    // errors (disk full, I/O), taking the writes before the failing one with it.
    let mut first = 0;
    for i in 0..batch.len() {
        let opened = match exec(conn, "SAVEPOINT write") {
            Ok(()) => {
                batch[i].run(conn);
                true
            }
            Err(e) => {
                batch[i].fail(failed("opening a savepoint", e));
                false
            }
        };
        if conn.is_autocommit() {
            let rolled_back = || {
                StoreError::Unavailable(
                    "the store rolled back a transaction after a failed write; try again".into(),
                )
            };
            batch[first..=i]
                .iter_mut()
                .for_each(|job| job.fail(rolled_back()));
            if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
                batch[i + 1..].iter_mut().for_each(|job| job.fail(lost(&e)));
                return;
            }
            first = i + 1;
            continue;
        }
        if opened {
            let ended = if batch[i].succeeded() {
                exec(conn, "RELEASE write")
            } else {
                exec(conn, "ROLLBACK TO write").and_then(|()| exec(conn, "RELEASE write"))
            };
            if let Err(e) = ended {
                batch[i].fail(lost(&e));
            }
        }
    }
    if let Err(e) = exec(conn, "COMMIT") {
        batch[first..].iter_mut().for_each(|job| job.fail(lost(&e)));
        let _ = exec(conn, "ROLLBACK");
    }
}

fn exec(conn: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Reply = oneshot::Receiver<Result<(), StoreError>>;

    /// A write that runs `statements` in order, failing at the first that fails.
    fn write(statements: &'static [&'static str]) -> (Box<dyn Job>, Reply) {
        let (reply, result) = oneshot::channel();
        let call = move |conn: &Connection| {
            for sql in statements {
                conn.execute_batch(sql)
                    .map_err(|e| failed("test write", e))?;
            }
            Ok(())
        };
        let job = Call {
            kind: Kind::Write,
            call: Some(call),
            result: None,
            reply,
        };
        (Box::new(job), result)
    }

    /// One batch holding failing writes: each failure is rolled back to its own savepoint,
    /// including what it wrote before failing, and every other write commits.
    #[test]
    fn a_failing_write_rolls_back_alone_and_the_batch_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            .unwrap();
        let writes = [
            write(&["INSERT INTO t VALUES (1)"]),
            write(&["INSERT INTO t VALUES (1)"]),
            write(&["INSERT INTO t VALUES (2)"]),
            write(&["INSERT INTO t VALUES (3)", "INSERT INTO t VALUES (2)"]),
            write(&["INSERT INTO t VALUES (4)"]),
        ];
        let (mut batch, mut replies): (Vec<_>, Vec<_>) = writes.into_iter().unzip();
        commit(&conn, &mut batch);
        assert!(conn.is_autocommit(), "the transaction is closed");
        batch.into_iter().for_each(|job| job.reply());
        let results: Vec<_> = replies.iter_mut().map(|r| r.try_recv().unwrap()).collect();
        let conflicts: Vec<bool> = results
            .iter()
            .map(|r| matches!(r, Err(StoreError::Conflict(_))))
            .collect();
        assert_eq!(conflicts, [false, true, false, true, false], "{results:?}");
        for ok in [0, 2, 4] {
            assert!(results[ok].is_ok(), "{results:?}");
        }
        let other = Connection::open(&path).unwrap();
        let mut stmt = other.prepare("SELECT k FROM t ORDER BY k").unwrap();
        let keys: Vec<i64> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(keys, [1, 2, 4]);
    }
}
