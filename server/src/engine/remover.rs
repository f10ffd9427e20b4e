//! Removes the partial names of completed downloads on a thread of its own. Once COMPLETED is
//! stored the name is only a leftover (the result path holds the same file), so the transfer
//! ends without waiting for the unlink, and a burst of completions costs one thread's wake-ups
//! rather than a trip to the blocking pool each. Names still queued when the process stops are
//! removed by the sweep at the next start (see `paths::sweep_partials`).

use std::path::PathBuf;
use std::sync::mpsc;

use crate::paths;

/// The queue of partial names to remove.
#[derive(Debug)]
pub(super) struct Remover {
    /// `None` if the thread could not be started.
    queue: Option<mpsc::Sender<PathBuf>>,
}

impl Remover {
    /// Starts the thread; it ends when the remover is dropped and its queue is empty.
    pub(super) fn start() -> Remover {
        let (queue, names) = mpsc::channel::<PathBuf>();
        let started = std::thread::Builder::new()
            .name("transferd-remove".into())
            .spawn(move || {
                for partial in names {
                    remove(&partial);
                }
            });
        if let Err(e) = &started {
            tracing::warn!(error = %e, "cannot start the partial file remover; completed downloads remove their partial names themselves");
        }
        Remover {
            queue: started.ok().map(|_| queue),
        }
    }

    /// Queues the removal of the partial name `partial` of a completed download. Without the
    /// thread (it could not start, or it panicked) the name is removed here, blocking briefly.
    pub(super) fn remove(&self, partial: PathBuf) {
        let Some(queue) = &self.queue else {
            return remove(&partial);
        };
        if let Err(mpsc::SendError(partial)) = queue.send(partial) {
            remove(&partial);
        }
    }
}

fn remove(partial: &std::path::Path) {
    if let Err(e) = paths::remove_partial(partial) {
        tracing::warn!(error = %e, path = %partial.display(), "could not remove partial file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_names_are_removed_in_order_and_a_missing_one_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join(paths::PARTIAL_DIR);
        std::fs::create_dir(&staging).unwrap();
        let names: Vec<PathBuf> = (0..50)
            .map(|i| staging.join(format!("g{i}.part")))
            .collect();
        for name in &names {
            std::fs::write(name, b"x").unwrap();
        }
        let remover = Remover::start();
        remover.remove(staging.join("never-there.part"));
        for name in &names {
            remover.remove(name.clone());
        }
        // Dropping the remover lets its thread finish the queue; wait for the last name.
        drop(remover);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while names.iter().any(|name| name.exists()) {
            assert!(
                std::time::Instant::now() < deadline,
                "names left: {names:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
