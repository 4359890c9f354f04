//! The task tracker: every task's record, its transitions, waiters, logs and
//! (for maps) results on disk.

mod durable;
mod index;
mod journal;
mod kept;
mod results;
mod retention;

use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use dashmap::DashMap;
use serde_json::Value;
use tokio::sync::watch;

use crate::compute::CallBackend;
use crate::task::{MapProgress, TaskError, TaskId, TaskRecord, TaskStatus};

pub(crate) use durable::Durable;
pub(crate) use journal::{Journal, Replayed};
pub(crate) use kept::Kept;
use kept::Names;
pub(crate) use results::{
    indexed_count, looks_whole, read_page, recover as recover_results, Buffered, ResultWriter,
    Stored,
};
pub use retention::Retention;
pub(crate) use retention::{remove_orphans, sweep};

/// Every task's record, watch and readable results count, and what writes
/// them to the journal.
pub(crate) struct TaskStore {
    records: DashMap<TaskId, Kept>,
    /// The function names records share.
    names: Names,
    watches: DashMap<TaskId, watch::Sender<TaskStatus>>,
    /// Map results flushed to disk and readable, per map task.
    available: DashMap<TaskId, u64>,
    /// Order and counts of the records.
    index: index::TaskIndex,
    /// Tasks removed by retention, for those that keep things per task.
    forgotten: tokio::sync::broadcast::Sender<Arc<Vec<TaskId>>>,
    dir: PathBuf,
    durable: std::sync::OnceLock<Arc<Durable>>,
}

impl TaskStore {
    pub(crate) fn new(dir: PathBuf) -> Arc<TaskStore> {
        Arc::new(TaskStore {
            records: DashMap::new(),
            names: Names::default(),
            watches: DashMap::new(),
            available: DashMap::new(),
            index: index::TaskIndex::default(),
            forgotten: tokio::sync::broadcast::channel(16).0,
            dir,
            durable: std::sync::OnceLock::new(),
        })
    }

    /// Persists records from now on.
    pub(crate) fn attach(&self, durable: Arc<Durable>) {
        let _ = self.durable.set(durable);
    }

    pub(crate) fn durable(&self) -> Option<&Arc<Durable>> {
        self.durable.get()
    }

    /// Adds a recovered record as it is, with its readable results count.
    pub(crate) fn restore(&self, record: TaskRecord, available: u64) {
        let id = record.task_id;
        let record = Kept::new(record, &self.names);
        self.restore_kept(id, record, available);
    }

    /// [`TaskStore::restore`] for a record already in the kept form.
    pub(crate) fn restore_kept(&self, id: TaskId, record: Kept, available: u64) {
        // Only an unfinished task keeps a channel (see `Tasks::watch`).
        if !record.status.is_terminal() {
            self.watches
                .entry(id)
                .or_insert_with(|| watch::channel(record.status).0);
        }
        if record.kind == crate::task::TaskKind::Map {
            self.available.insert(id, available);
        }
        self.index.insert(record.created_at, id, record.status);
        if let Some(old) = self.records.insert(id, record) {
            self.index.remove(old.created_at, id, old.status);
        }
    }

    /// Adds a new record (kept as it is if the task is already known, e.g.
    /// abandoned) and marks it and its job for the journal; returns the write
    /// to wait for.
    fn insert_new(&self, record: TaskRecord, job: Option<Value>) -> Option<(Arc<Durable>, u64)> {
        let id = record.task_id;
        self.watches
            .entry(id)
            .or_insert_with(|| watch::channel(record.status).0);
        if let dashmap::Entry::Vacant(slot) = self.records.entry(id) {
            self.index.insert(record.created_at, id, record.status);
            slot.insert(Kept::new(record, &self.names));
        }
        self.durable
            .get()
            .map(|d| (d.clone(), d.mark(self, id, job)))
    }

    /// Where a task keeps its files (inputs, results, logs).
    pub(crate) fn task_dir(&self, id: TaskId) -> crate::persist::TaskDir {
        crate::persist::TaskDir::new(self.dir.join(id.to_string()))
    }

    fn apply(&self, id: TaskId, update: TaskUpdate) {
        let Some(mut record) = self.records.get_mut(&id) else {
            tracing::warn!(task_id = %id, "update for an unknown task");
            return;
        };
        if record.status.is_terminal() {
            return;
        }
        let before = record.status;
        match update {
            TaskUpdate::Started { call, attempt } => {
                record.status = TaskStatus::Running;
                record.started_at.get_or_insert_with(Utc::now);
                record.attempts = record.attempts.max(attempt);
                // Only an id that outlives this process is worth keeping
                // (a local one names nothing after the call).
                if let Some(call) = call.filter(|c| c.backend == CallBackend::Modal) {
                    let rare = record.rare_mut();
                    rare.backend_call_id = Some(call.id);
                    rare.call_backend = Some(call.backend);
                }
            }
            TaskUpdate::Interrupted if record.status == TaskStatus::Running => {
                record.status = TaskStatus::Pending;
                // A call running on a backend that outlives this process goes
                // on there and is waited for again: its attempt stands.
                if !record.runs_remotely() {
                    record.attempts = record.attempts.saturating_sub(1);
                }
            }
            TaskUpdate::Interrupted => {}
            TaskUpdate::Progress(progress) => record.rare_mut().progress = Some(progress),
            TaskUpdate::Finished(done) => {
                record.status = done.status;
                record.result = done.result;
                record.attempts = done.attempts.max(record.attempts);
                record.finished_at = Some(Utc::now());
                if done.result_ref.is_some() || done.error.is_some() || done.progress.is_some() {
                    let rare = record.rare_mut();
                    rare.result_ref = done.result_ref;
                    rare.error = done.error;
                    if done.progress.is_some() {
                        rare.progress = done.progress;
                    }
                } else if let Some(rare) = record.rare.as_mut() {
                    rare.result_ref = None;
                    rare.error = None;
                }
            }
        }
        let status = record.status;
        // Under the record's lock, so index moves follow status changes in order.
        self.index.moved(record.created_at, id, before, status);
        drop(record);
        if let Some(d) = self.durable.get() {
            d.mark(self, id, None);
        }
        if status.is_terminal() {
            // Its last change: told, then the channel goes (receivers keep
            // the final status), so a finished task costs no channel.
            if let Some((_, tx)) = self.watches.remove(&id) {
                tx.send_replace(status);
            }
        } else if let Some(tx) = self.watches.get(&id) {
            tx.send_replace(status);
        }
    }
}

/// A change to a task's record.
#[derive(Debug)]
pub(crate) enum TaskUpdate {
    /// It started running, on attempt `attempt` (1 for a first run).
    Started {
        call: Option<crate::compute::CallId>,
        attempt: u32,
    },
    /// The runtime is stopping gracefully under it: back to pending, the
    /// attempt it was on not charged (the next start runs it again).
    Interrupted,
    /// A map's counts changed.
    Progress(MapProgress),
    /// It reached a terminal state.
    Finished(Box<Finished>),
}

/// The terminal part of a record.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: TaskStatus,
    pub(crate) result: Option<Value>,
    /// A result kept in the task's files instead of `result`.
    pub(crate) result_ref: Option<crate::task::ResultRef>,
    pub(crate) error: Option<TaskError>,
    pub(crate) attempts: u32,
    pub(crate) progress: Option<MapProgress>,
}

/// The task records: a plain handle over the shared [`TaskStore`] (no
/// mailbox, no timeout). A transition is applied under its record's lock,
/// so transitions of one task are ordered; a creation is answered once it
/// is in the journal.
#[derive(Clone)]
pub(crate) struct Tasks {
    store: Arc<TaskStore>,
}

impl Tasks {
    pub(crate) fn new(store: Arc<TaskStore>) -> Self {
        Tasks { store }
    }

    pub(crate) fn store(&self) -> &Arc<TaskStore> {
        &self.store
    }

    /// Adds a new record at once and marks it and its job for the journal;
    /// the returned future ends once they are written. The task can start
    /// meanwhile (its run overlaps the write); it is acknowledged only after.
    pub(crate) fn insert(
        &self,
        record: TaskRecord,
        job: Option<Value>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let written = self.store.insert_new(record, job);
        async move {
            if let Some((durable, epoch)) = written {
                durable.wait(epoch).await;
            }
        }
    }

    /// Applies an update (ignored once the task is terminal).
    pub(crate) fn update(&self, id: TaskId, update: TaskUpdate) {
        self.store.apply(id, update);
    }

    /// Records the task's end.
    pub(crate) fn finish(&self, id: TaskId, finished: Finished) {
        self.update(id, TaskUpdate::Finished(Box::new(finished)));
    }

    pub(crate) fn get(&self, id: TaskId) -> Option<TaskRecord> {
        self.store.records.get(&id).map(|r| r.record(id))
    }

    /// Records as listings show them ([`TaskRecord::listed`]), newest
    /// first, optionally only those in `status`, and how many match in all.
    /// Only the page is cloned, and results only `with_results`.
    pub(crate) fn list(
        &self,
        status: Option<TaskStatus>,
        offset: usize,
        limit: usize,
        with_results: bool,
    ) -> (Vec<TaskRecord>, usize) {
        let records = &self.store.records;
        let page = self
            .store
            .index
            .page(status, offset, limit)
            .into_iter()
            .filter_map(|id| records.get(&id).map(|r| r.listed(id, with_results)))
            .collect();
        (page, self.store.index.count(status))
    }

    /// A receiver that sees the task's status changes. A finished task has
    /// no channel of its own: its receiver holds the final status, and its
    /// `changed` answers at once that nothing more will come.
    pub(crate) fn watch(&self, id: TaskId) -> Option<watch::Receiver<TaskStatus>> {
        if let Some(tx) = self.store.watches.get(&id) {
            return Some(tx.subscribe());
        }
        let status = self.store.records.get(&id).map(|r| r.status)?;
        // A task between its end and its channel's removal is terminal.
        Some(watch::channel(status).1)
    }

    pub(crate) fn set_available(&self, id: TaskId, n: u64) {
        self.store.available.insert(id, n);
    }

    pub(crate) fn available(&self, id: TaskId) -> u64 {
        self.store.available.get(&id).map_or(0, |n| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskKind;

    #[tokio::test]
    async fn a_create_returns_once_its_job_is_in_the_journal_and_ends_are_final() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.journal");
        let (journal, replayed) = Journal::open(&path).unwrap();
        let store = TaskStore::new(dir.path().join("tasks"));
        let durable = Durable::new(journal, replayed.jobs.clone());
        store.attach(durable.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let writer = tokio::spawn(durable.clone().run(store.clone(), stop.clone()));
        let tasks = Tasks::new(store.clone());
        let record = TaskRecord::new("f", TaskKind::Call, None);
        let id = record.task_id;
        tasks
            .insert(record, Some(serde_json::json!({"kind": "call"})))
            .await;
        let (_, seen) = Journal::open(&path).unwrap();
        assert!(
            seen.jobs.contains_key(&id),
            "the job is written before insert's future ends"
        );
        assert_eq!(tasks.get(id).unwrap().status, TaskStatus::Pending);
        tasks.finish(
            id,
            Finished {
                status: TaskStatus::Cancelled,
                result: None,
                result_ref: None,
                error: None,
                attempts: 0,
                progress: None,
            },
        );
        // A terminal task changes no more.
        tasks.update(
            id,
            TaskUpdate::Started {
                call: None,
                attempt: 1,
            },
        );
        assert_eq!(tasks.get(id).unwrap().status, TaskStatus::Cancelled);
        assert_eq!(*tasks.watch(id).unwrap().borrow(), TaskStatus::Cancelled);
        stop.cancel();
        writer.await.unwrap();
    }
}
