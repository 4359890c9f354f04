//! Group commit of task records to the journal: changes
//! are marked dirty and appended in one write as soon as the previous write
//! is done (a burst of changes shares one), and a task's creation (with its
//! job) is acknowledged only once it is written. A mark made while no write
//! is under way is appended at once by the thread that made it (one append
//! to the page cache: no hand-off); one made during a write is left to the
//! journal's own writer thread, which takes everything marked meanwhile in
//! its next write. A write reaches the OS at once, which is what a crash of
//! this process needs; the writer thread alone fsyncs, at most once a second
//! (and at shutdown), which bounds what a crash of the machine loses, and
//! compacts.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::journal::{Entry, Journal};
use super::TaskStore;
use crate::sync::Recover;
use crate::task::TaskId;

/// How often the journal is fsynced while it changes.
const FSYNC_EVERY: Duration = Duration::from_secs(1);
/// Fewest lines before a compaction is considered.
const COMPACT_AT: usize = 10_000;
/// How long the writer waits before trying a failed write again.
const RETRY_AFTER: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Pending {
    dirty: HashSet<TaskId>,
    jobs: Vec<(TaskId, Value)>,
    forgets: Vec<TaskId>,
    files: Vec<PathBuf>,
    epoch: u64,
    /// The writer thread is to write what is left, fsynced, and end.
    stopping: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.dirty.is_empty() && self.jobs.is_empty() && self.forgets.is_empty()
    }
}

struct Disk {
    journal: Journal,
    /// Open jobs, for compaction.
    jobs: HashMap<TaskId, Value>,
    last_fsync: Instant,
    unsynced: bool,
    /// Files to fsync before the journal's next fsync (map results whose
    /// end is in the journal).
    files: Vec<PathBuf>,
}

/// The writer of task records.
pub(crate) struct Durable {
    disk: Arc<Mutex<Disk>>,
    pending: Mutex<Pending>,
    /// Rung by a mark: the writer thread has work.
    marked: Condvar,
    /// One write at a time, snapshot included.
    writing: Mutex<()>,
    done: watch::Sender<u64>,
}

impl Durable {
    pub(crate) fn new(journal: Journal, jobs: HashMap<TaskId, Value>) -> Arc<Durable> {
        Arc::new(Durable {
            disk: Arc::new(Mutex::new(Disk {
                journal,
                jobs,
                last_fsync: Instant::now(),
                unsynced: false,
                files: Vec::new(),
            })),
            pending: Mutex::default(),
            marked: Condvar::new(),
            writing: Mutex::new(()),
            done: watch::channel(0).0,
        })
    }

    /// Marks a record (and its job, when new) for the next write, and has
    /// it written ([`Durable::write_soon`]); returns that write's number.
    pub(crate) fn mark(&self, tasks: &TaskStore, id: TaskId, job: Option<Value>) -> u64 {
        let mut p = self.pending.lock().recover();
        p.dirty.insert(id);
        if let Some(job) = job {
            p.jobs.push((id, job));
        }
        let epoch = p.epoch + 1;
        drop(p);
        self.write_soon(tasks);
        epoch
    }

    /// Has what is marked written: here and now when no write is under
    /// way (one append to the page cache, no hand-off to the writer thread
    /// and back: a call's create, start and end were three such round
    /// trips), else by the writer thread once the write under way is done.
    /// Fsyncs and compactions stay on the writer thread.
    fn write_soon(&self, tasks: &TaskStore) {
        match self.writing.try_lock() {
            Ok(turn) if self.write_locked(&turn, tasks, None) => {}
            _ => self.marked.notify_one(),
        }
    }

    /// Marks tasks removed by retention for the next write; returns that
    /// write's number.
    pub(crate) fn forget(&self, ids: &[TaskId]) -> u64 {
        let mut p = self.pending.lock().recover();
        p.forgets.extend_from_slice(ids);
        let epoch = p.epoch + 1;
        drop(p);
        self.marked.notify_one();
        epoch
    }

    /// Files to reach the disk before any record written from now on does:
    /// the next journal fsync (or compaction) fsyncs them first, in order.
    pub(crate) fn sync_before_next_fsync(&self, files: Vec<PathBuf>) {
        let mut p = self.pending.lock().recover();
        p.files.extend(files);
    }

    /// Waits until write `epoch` is done.
    pub(crate) async fn wait(&self, epoch: u64) {
        let mut rx = self.done.subscribe();
        while *rx.borrow_and_update() < epoch {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Writes until `stop`, then once more, fsynced: a thread of its own
    /// writes each batch as soon as one is marked. The thread holds neither
    /// the records nor this writer: if both go without a stop (a runtime
    /// dropped, not shut down), it ends within [`FSYNC_EVERY`].
    pub(crate) async fn run(self: Arc<Self>, tasks: Arc<TaskStore>, stop: CancellationToken) {
        let (ended_tx, ended) = tokio::sync::oneshot::channel::<()>();
        let (this, records) = (Arc::downgrade(&self), Arc::downgrade(&tasks));
        let spawned = std::thread::Builder::new()
            .name("task-journal".into())
            .spawn(move || {
                writer_thread(&this, &records);
                drop(ended_tx);
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "could not start the task journal's writer thread");
            return;
        }
        stop.cancelled().await;
        self.pending.lock().recover().stopping = true;
        self.marked.notify_one();
        let _ = ended.await;
        self.flush(&tasks).await;
    }

    /// Writes everything marked so far, fsynced.
    pub(crate) async fn flush(self: &Arc<Self>, tasks: &Arc<TaskStore>) {
        let (this, tasks) = (self.clone(), tasks.clone());
        if let Err(error) = tokio::task::spawn_blocking(move || this.write(&tasks, true)).await {
            tracing::error!(%error, "task journal flush failed");
        }
    }

    /// One group commit. Writes are taken one at a time and each takes its
    /// snapshot of the records under its turn, so a record written later is
    /// never older than one written before it. A batch that cannot be
    /// appended is not in the file at all; it goes back to be written again
    /// and its waiters keep waiting (a create times out rather than being
    /// acknowledged on a write that did not happen). Whether it was written.
    fn write(&self, tasks: &TaskStore, fsync: bool) -> bool {
        let turn = self.writing.lock().recover();
        self.write_locked(&turn, tasks, Some(fsync))
    }

    /// [`Durable::write`] under its turn; with `settle` (whether to fsync)
    /// the fsync or compaction that is due follows, without it that is left
    /// to the writer thread's next round.
    fn write_locked(
        &self,
        _turn: &std::sync::MutexGuard<'_, ()>,
        tasks: &TaskStore,
        settle: Option<bool>,
    ) -> bool {
        let (dirty, jobs, forgets, files, epoch) = {
            let mut p = self.pending.lock().recover();
            p.epoch += 1;
            (
                std::mem::take(&mut p.dirty),
                std::mem::take(&mut p.jobs),
                std::mem::take(&mut p.forgets),
                std::mem::take(&mut p.files),
                p.epoch,
            )
        };
        let mut entries: Vec<Entry> = jobs
            .into_iter()
            .map(|(id, spec)| Entry::Job(id, spec))
            .collect();
        for id in dirty {
            if let Some(record) = tasks.records.get(&id).map(|r| r.record(id)) {
                let terminal = record.status.is_terminal();
                entries.push(Entry::Record(Box::new(record)));
                if terminal {
                    entries.push(Entry::Done(id));
                }
            }
        }
        entries.extend(forgets.into_iter().map(Entry::Forget));
        let mut d = self.disk.lock().recover();
        // Taken before the records that need them, so they are never
        // behind a journal fsync.
        d.files.extend(files);
        if let Err(error) = d.journal.append(&entries) {
            drop(d);
            tracing::error!(%error, entries = entries.len(), "could not append to the task journal; the batch is retried and not acknowledged");
            self.requeue(entries);
            return false;
        }
        for e in &entries {
            match e {
                Entry::Job(id, spec) => {
                    d.jobs.insert(*id, spec.clone());
                }
                Entry::Done(id) | Entry::Forget(id) => {
                    d.jobs.remove(id);
                }
                Entry::Record(_) => {}
            }
        }
        d.unsynced |= !entries.is_empty();
        // The batch is in the file: what follows can fail without taking
        // that back, and is tried again next time.
        if let Some(fsync) = settle {
            if let Err(error) = d.settle(tasks, fsync) {
                tracing::error!(%error, "could not fsync or compact the task journal; retrying");
            }
        }
        drop(d);
        self.done.send_replace(epoch);
        true
    }

    /// Puts a batch that was not written back in front of what is pending.
    fn requeue(&self, entries: Vec<Entry>) {
        let mut p = self.pending.lock().recover();
        let mut jobs = Vec::new();
        for e in entries {
            match e {
                Entry::Job(id, spec) => jobs.push((id, spec)),
                Entry::Record(r) => {
                    p.dirty.insert(r.task_id);
                }
                Entry::Forget(id) => p.forgets.push(id),
                Entry::Done(_) => {}
            }
        }
        jobs.append(&mut p.jobs);
        p.jobs = jobs;
    }
}

/// The writer thread: waits for a mark (or the periodic fsync), writes
/// what is marked, and at a stop writes the rest and ends.
fn writer_thread(durable: &Weak<Durable>, tasks: &Weak<TaskStore>) {
    loop {
        let (Some(durable), Some(tasks)) = (durable.upgrade(), tasks.upgrade()) else {
            return;
        };
        let stopping = {
            let p = durable.pending.lock().recover();
            let (p, _) = durable
                .marked
                .wait_timeout_while(p, FSYNC_EVERY, |p| p.is_empty() && !p.stopping)
                .recover();
            p.stopping
        };
        if stopping {
            // The stop's flush writes what is left, fsynced.
            return;
        }
        if !durable.write(&tasks, false) {
            std::thread::sleep(RETRY_AFTER);
        }
    }
}

impl Disk {
    /// Fsyncs the files records depend on, in order; a file removed since
    /// (retention) needs nothing.
    fn sync_files(&mut self) -> std::io::Result<()> {
        let mut failed = Vec::new();
        for path in std::mem::take(&mut self.files) {
            let synced = std::fs::File::open(&path).and_then(|f| f.sync_data());
            match synced {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // One file that cannot be synced must not hold up the
                // journal's own fsyncs for ever: it is reported and dropped.
                Err(error) => {
                    tracing::error!(file = %path.display(), %error, "could not fsync map results");
                    failed.push(path);
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "{} result files could not be fsynced",
                failed.len()
            )))
        }
    }

    /// Compacts the journal when it has grown, else fsyncs it when due.
    fn settle(&mut self, tasks: &TaskStore, fsync: bool) -> std::io::Result<()> {
        let live = tasks.records.len() + self.jobs.len();
        let compact = self.journal.lines() > COMPACT_AT.max(4 * live);
        let due = self.unsynced && (fsync || self.last_fsync.elapsed() >= FSYNC_EVERY);
        if compact || due {
            self.sync_files()?;
        }
        if compact {
            // One record at a time: the ids are copied, not the records (a
            // record gone since is left out; one changed since is in the
            // batch after this one too).
            let ids: Vec<TaskId> = tasks.records.iter().map(|r| *r.key()).collect();
            let jobs = self.jobs.iter().map(|(id, s)| Entry::Job(*id, s.clone()));
            let records = ids.into_iter().filter_map(|id| {
                let record = tasks.records.get(&id)?.record(id);
                Some(Entry::Record(Box::new(record)))
            });
            self.journal.compact(jobs.chain(records))?;
            self.unsynced = false;
            self.last_fsync = Instant::now();
        } else if due {
            self.journal.sync()?;
            self.unsynced = false;
            self.last_fsync = Instant::now();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{TaskKind, TaskRecord, TaskStatus};
    use crate::tracker::{Finished, TaskUpdate};

    /// A stop's flush racing the writer's own writes: the journal ends with
    /// each record as it ended. (Before writes were taken one at a time, an
    /// older snapshot could land last and bring a finished task back as
    /// unfinished; that interleaving depends on the blocking pool's order and
    /// is not forced here, so this checks the outcome under contention.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_never_land_an_older_snapshot_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.journal");
        let (journal, replayed) = Journal::open(&path).unwrap();
        let store = TaskStore::new(dir.path().join("tasks"));
        let durable = Durable::new(journal, replayed.jobs);
        store.attach(durable.clone());
        let ids: Vec<TaskId> = (0..300)
            .map(|_| {
                let r = TaskRecord::new("f", TaskKind::Call, None);
                let id = r.task_id;
                store.insert_new(r, Some(serde_json::json!({"kind": "call"})));
                id
            })
            .collect();
        let flushers: Vec<_> = (0..4)
            .map(|_| {
                let (d, s) = (durable.clone(), store.clone());
                tokio::spawn(async move {
                    for _ in 0..50 {
                        d.flush(&s).await;
                    }
                })
            })
            .collect();
        for id in &ids {
            store.apply(
                *id,
                TaskUpdate::Started {
                    call: None,
                    attempt: 1,
                },
            );
            tokio::task::yield_now().await;
            store.apply(
                *id,
                TaskUpdate::Finished(Box::new(Finished {
                    status: TaskStatus::Completed,
                    result: Some(serde_json::json!(1)),
                    result_ref: None,
                    error: None,
                    attempts: 1,
                    progress: None,
                })),
            );
        }
        for f in flushers {
            f.await.unwrap();
        }
        durable.flush(&store).await;
        drop((store, durable));
        let (_, replayed) = Journal::open(&path).unwrap();
        assert!(
            replayed.jobs.is_empty(),
            "{} jobs left open",
            replayed.jobs.len()
        );
        for id in &ids {
            assert_eq!(replayed.records[id].status, TaskStatus::Completed);
        }
    }
}
