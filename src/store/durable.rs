//! Durability in the background: files are handed over as soon as they are written and
//! a few threads `fdatasync` them while the CPU-bound work (compression, decompression)
//! goes on, so the final wait finds (almost) nothing left to do. The threads wait for
//! the disk, not the CPU, and concurrent syncs share the filesystem's journal commits.
//! The queue is bounded (open files are a limited resource): a slow disk slows the
//! producers down rather than growing it.

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use super::{Result, StoreError, io_err};

/// Threads waiting in `fdatasync` at once.
const THREADS: usize = 8;
/// Files written but not yet picked up (each holds an open descriptor).
const QUEUE: usize = 128;

struct Job {
    file: File,
    /// Shown in the error if the sync fails.
    path: PathBuf,
}

#[derive(Default)]
struct State {
    error: Mutex<Option<StoreError>>,
}

impl State {
    fn fail(&self, e: StoreError) {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(e);
    }
    fn failed(&self) -> bool {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}

/// A pool of threads that `fdatasync` the files given to [`submit`](Syncer::submit).
/// [`finish`](Syncer::finish) waits for all of them and reports the first failure.
pub(crate) struct Syncer {
    tx: Mutex<Option<SyncSender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    state: Arc<State>,
}

impl Syncer {
    pub(crate) fn new() -> Result<Syncer> {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let state = Arc::new(State::default());
        let syncer = Syncer {
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(Vec::with_capacity(THREADS)),
            state,
        };
        for i in 0..THREADS {
            let (rx, state) = (rx.clone(), syncer.state.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("warren-sync-{i}"))
                .spawn(move || run(&rx, &state));
            match spawned {
                Ok(h) => syncer
                    .threads
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(h),
                // Dropping `syncer` stops the threads already started.
                Err(e) => return Err(io_err("spawning a sync thread")(e)),
            }
        }
        Ok(syncer)
    }

    /// Queues `file` (written through, not yet synced) for `fdatasync`. Blocks while the
    /// queue is full. An error means an earlier sync failed.
    pub(crate) fn submit(&self, file: File, path: PathBuf) -> Result<()> {
        if self.state.failed() {
            return Err(self.take_error());
        }
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let sent = tx.map(|tx| tx.send(Job { file, path }));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(self.take_error()),
        }
    }

    /// Waits until every file submitted so far is synced; the first failure, if any.
    /// Nothing can be submitted afterwards.
    pub(crate) fn finish(&self) -> Result<()> {
        self.stop();
        match self
            .state
            .error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn take_error(&self) -> StoreError {
        self.state
            .error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_else(|| StoreError::Entry {
                path: PathBuf::new(),
                reason: "sync threads stopped".into(),
            })
    }

    fn stop(&self) {
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for h in threads {
            if h.join().is_err() {
                self.state.fail(StoreError::Entry {
                    path: PathBuf::new(),
                    reason: "a sync thread panicked".into(),
                });
            }
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(rx: &Mutex<Receiver<Job>>, state: &State) {
    loop {
        let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else { return };
        if state.failed() {
            continue; // keep draining so no producer blocks forever
        }
        if let Err(e) = job.file.sync_data() {
            state.fail(io_err(&job.path)(e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn syncs_many_files_and_reports_success() {
        let tmp = tempfile::tempdir().unwrap();
        let syncer = Syncer::new().unwrap();
        for i in 0..(QUEUE * 3) {
            let path = tmp.path().join(format!("f{i}"));
            let mut f = File::create(&path).unwrap();
            f.write_all(b"data").unwrap();
            syncer.submit(f, path).unwrap();
        }
        syncer.finish().unwrap();
    }

    #[test]
    fn a_failed_sync_is_reported_with_its_path() {
        let syncer = Syncer::new().unwrap();
        // A pipe cannot be fsynced: EINVAL.
        let (r, _w) = std::io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(r));
        syncer.submit(file, PathBuf::from("/the/pipe")).unwrap();
        match syncer.finish() {
            Err(StoreError::Io { path, .. }) => assert_eq!(path, PathBuf::from("/the/pipe")),
            other => panic!("{other:?}"),
        }
    }
}
