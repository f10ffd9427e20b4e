//! Group commit. One thread owns the SQLite connection and runs every store call in arrival
//! order. Writes that queue up while a commit is being made durable go into the next
//! transaction together, so concurrent writers (many CreateDownloads, checkpoints, status
//! changes) share one commit and one fsync instead of taking one each; each caller hears back
//! only after the transaction holding its write has committed. A savepoint around each write
//! keeps one failing write from failing the others in its batch.
//!
//! A read ends the batch before it, so it never sees a write that might still fail to commit.
//!
//! A write nobody waits to see ([`Kind::Lazy`], such as the record of a download that already
//! completed) may wait up to [`LAZY_WAIT`] for others to share its commit: downloads that end
//! one after another then share a commit instead of taking one each. Any other call ends the
//! wait at once.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::failed;
use crate::store::{StoreError, StoreFuture};

/// Most writes one transaction holds. A batch is what queued during the previous commit; the
/// bound keeps any one transaction, and so the wait of its first caller, short under a flood.
/// At a few microseconds per row against milliseconds per fsync, 256 rows cost far less than
/// the commit they share.
const MAX_BATCH: usize = 256;

/// How long a batch of only [`Kind::Lazy`] writes waits for more writes before it commits.
/// Small next to the commit it saves (an fsync), and unseen by clients: the changes these
/// writes record were shown already.
pub(super) const LAZY_WAIT: Duration = Duration::from_millis(2);

/// Whether a call changes the store, and so joins a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Only reads; runs outside any transaction of the writer.
    Read,
    /// Changes the store; acknowledged once its transaction commits.
    Write,
    /// A write that may wait up to the writer's lazy wait for company before its commit.
    Lazy,
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
    queue: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the thread that owns `conn`; a batch of only lazy writes waits `lazy_wait` for
    /// more.
    pub(super) fn start(conn: Connection, lazy_wait: Duration) -> Result<Writer, StoreError> {
        // Unbounded: every caller awaits its reply, so the queue never holds more than the
        // calls in flight, and the engine bounds those. Sending never blocks.
        let (queue, calls) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("transferd-store".into())
            .spawn(move || serve(conn, &calls, lazy_wait))
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
fn serve(conn: Connection, calls: &mpsc::Receiver<Box<dyn Job>>, lazy_wait: Duration) {
    let mut next = calls.recv().ok();
    while let Some(mut job) = next.take() {
        if job.kind() == Kind::Read {
            job.run(&conn);
            job.reply();
            next = calls.recv().ok();
            continue;
        }
        // Only a batch of lazy writes waits, and only until this moment.
        let mut lazy_until = (job.kind() == Kind::Lazy).then(|| Instant::now() + lazy_wait);
        let mut batch = vec![job];
        while batch.len() < MAX_BATCH {
            let queued = match lazy_until {
                Some(until) => calls.recv_timeout(until.saturating_duration_since(Instant::now())),
                None => calls
                    .try_recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Timeout),
            };
            match queued {
                Ok(read) if read.kind() == Kind::Read => {
                    next = Some(read);
                    break;
                }
                Ok(write) => {
                    if write.kind() == Kind::Write {
                        // Someone waits for this one: commit once what is queued is in.
                        lazy_until = None;
                    }
                    batch.push(write);
                }
                Err(_) => break,
            }
        }
        commit(&conn, &mut batch);
        for job in batch {
            job.reply();
        }
        if next.is_none() {
            next = calls.recv().ok();
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
        write_as(Kind::Write, statements)
    }

    /// [`write`], of `kind`.
    fn write_as(kind: Kind, statements: &'static [&'static str]) -> (Box<dyn Job>, Reply) {
        let (reply, result) = oneshot::channel();
        let call = move |conn: &Connection| {
            for sql in statements {
                conn.execute_batch(sql)
                    .map_err(|e| failed("test write", e))?;
            }
            Ok(())
        };
        let job = Call {
            kind,
            call: Some(call),
            result: None,
            reply,
        };
        (Box::new(job), result)
    }

    /// Sends `job` to `writer`'s thread, as `Writer::call` does.
    fn send(writer: &Writer, job: Box<dyn Job>) {
        writer.queue.as_ref().unwrap().send(job).unwrap();
    }

    /// A new database in a temporary directory (kept while the first value lives) with an
    /// empty table `t` of integer keys: its path, and a connection to it.
    fn table_t() -> (tempfile::TempDir, std::path::PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            .unwrap();
        (dir, path, conn)
    }

    /// The keys committed to table `t` of the database at `path`, as another connection sees
    /// them.
    fn committed(path: &std::path::Path) -> Vec<i64> {
        let other = Connection::open(path).unwrap();
        let mut stmt = other.prepare("SELECT k FROM t ORDER BY k").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A lazy write waits for company: it is not committed on its own, and the next write
    /// (one a caller waits for) ends the wait and shares its commit.
    #[tokio::test]
    async fn a_lazy_write_waits_to_share_the_next_writes_commit() {
        let (_dir, path, conn) = table_t();
        // A wait far longer than the test, so that only the next write can end it.
        let writer = Writer::start(conn, Duration::from_secs(600)).unwrap();
        let (lazy, mut lazy_done) = write_as(Kind::Lazy, &["INSERT INTO t VALUES (1)"]);
        let (more, more_done) = write_as(Kind::Lazy, &["INSERT INTO t VALUES (2)"]);
        send(&writer, lazy);
        send(&writer, more);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            lazy_done.try_recv().is_err(),
            "lazy writes wait for company"
        );
        assert_eq!(committed(&path), Vec::<i64>::new());
        let (now, now_done) = write(&["INSERT INTO t VALUES (3)"]);
        send(&writer, now);
        now_done.await.unwrap().unwrap();
        lazy_done.await.unwrap().unwrap();
        more_done.await.unwrap().unwrap();
        assert_eq!(committed(&path), [1, 2, 3]);
    }

    /// A lazy write alone commits after the wait, and a read queued behind it ends the wait
    /// without running inside its transaction.
    #[tokio::test]
    async fn a_lazy_write_commits_after_its_wait_or_before_a_read() {
        let (_dir, path, conn) = table_t();
        let writer = Writer::start(conn, Duration::from_millis(1)).unwrap();
        let (lazy, lazy_done) = write_as(Kind::Lazy, &["INSERT INTO t VALUES (1)"]);
        send(&writer, lazy);
        lazy_done.await.unwrap().unwrap();
        assert_eq!(committed(&path), [1]);

        let writer =
            Writer::start(Connection::open(&path).unwrap(), Duration::from_secs(600)).unwrap();
        let (lazy, lazy_done) = write_as(Kind::Lazy, &["INSERT INTO t VALUES (2)"]);
        send(&writer, lazy);
        let read = writer.call(Kind::Read, |conn| {
            conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
                .map_err(|e| failed("test read", e))
        });
        // The read runs after the lazy write's commit, and so sees it.
        assert_eq!(read.await.unwrap(), 2);
        lazy_done.await.unwrap().unwrap();
    }

    /// One batch holding failing writes: each failure is rolled back to its own savepoint,
    /// including what it wrote before failing, and every other write commits.
    #[test]
    fn a_failing_write_rolls_back_alone_and_the_batch_commits() {
        let (_dir, path, conn) = table_t();
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
        assert_eq!(committed(&path), [1, 2, 4]);
    }
}
