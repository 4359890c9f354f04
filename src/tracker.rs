//! The task tracker: every task's record, its transitions, waiters, logs and
//! (for maps) results on disk.

mod durable;
mod index;
mod journal;
mod results;
mod retention;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dashmap::DashMap;
use ractor::{ActorProcessingErr, RpcReplyPort};
use serde_json::Value;
use tokio::sync::watch;

use crate::supervisor::{ChildError, Once, Slot};
use crate::supervisor::{Serial, SerialActor};
use crate::task::{MapProgress, TaskError, TaskId, TaskRecord, TaskStatus};

pub(crate) use durable::Durable;
pub(crate) use journal::{Journal, Replayed};
pub(crate) use results::{
    indexed_count, looks_whole, read_page, recover as recover_results, Buffered, ResultWriter,
    Stored,
};
pub use retention::Retention;
pub(crate) use retention::{remove_orphans, sweep};

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The tracker's contents, shared with its handle so that a restarted tracker
/// actor starts from exactly what the failed one had.
pub(crate) struct TaskStore {
    records: DashMap<TaskId, TaskRecord>,
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
        self.watches
            .entry(id)
            .or_insert_with(|| watch::channel(record.status).0);
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
            slot.insert(record);
        }
        self.durable.get().map(|d| (d.clone(), d.mark(id, job)))
    }

    /// Records a task that will never run (its creation or dispatch was not
    /// acknowledged) as failed, whether or not its record exists yet: a
    /// create still on its way finds it failed, and its job is written
    /// followed by its end, so a restart never runs it.
    pub(crate) fn abandon(&self, mut record: TaskRecord, error: TaskError) {
        let id = record.task_id;
        {
            let mut entry = self.records.entry(id).or_insert_with(|| {
                record.status = TaskStatus::Pending;
                self.index.insert(record.created_at, id, record.status);
                record
            });
            if entry.status.is_terminal() {
                return;
            }
            self.index
                .moved(entry.created_at, id, entry.status, TaskStatus::Failed);
            entry.status = TaskStatus::Failed;
            entry.error = Some(error);
            entry.finished_at = Some(Utc::now());
        }
        if let Some(d) = self.durable.get() {
            d.mark(id, None);
        }
        let tx = self
            .watches
            .entry(id)
            .or_insert_with(|| watch::channel(TaskStatus::Failed).0);
        tx.send_replace(TaskStatus::Failed);
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
                if let Some(call) = call {
                    record.backend_call_id = Some(call.id);
                    record.call_backend = Some(call.backend);
                }
            }
            TaskUpdate::Interrupted if record.status == TaskStatus::Running => {
                record.status = TaskStatus::Pending;
                // A call running on a backend that outlives this process goes
                // on there and is waited for again: its attempt stands.
                if record.remote_call().is_none() {
                    record.attempts = record.attempts.saturating_sub(1);
                }
            }
            TaskUpdate::Interrupted => {}
            TaskUpdate::Progress(progress) => record.progress = Some(progress),
            TaskUpdate::Finished(done) => {
                record.status = done.status;
                record.result = done.result;
                record.result_ref = done.result_ref;
                record.error = done.error;
                record.attempts = done.attempts.max(record.attempts);
                if done.progress.is_some() {
                    record.progress = done.progress;
                }
                record.finished_at = Some(Utc::now());
            }
        }
        let status = record.status;
        // Under the record's lock, so index moves follow status changes in order.
        self.index.moved(record.created_at, id, before, status);
        drop(record);
        if let Some(d) = self.durable.get() {
            d.mark(id, None);
        }
        if let Some(tx) = self.watches.get(&id) {
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

/// Messages of the [`Tracker`].
pub(crate) enum TrackerMsg {
    /// Adds a new record (and stores its job, when durable); answers once
    /// both are written.
    Create(Box<TaskRecord>, Option<serde_json::Value>, RpcReplyPort<()>),
    /// Applies an update (ignored once the task is terminal).
    Update(TaskId, Arc<Once<TaskUpdate>>, RpcReplyPort<()>),
    /// Applies an update without answering.
    Notify(TaskId, TaskUpdate),
    /// Panics (fault injection).
    InjectPanic,
}

/// The tracker as a child of the root supervisor, and its handle.
pub(crate) fn child(
    store: Arc<TaskStore>,
) -> (TrackerHandle, Box<dyn crate::supervisor::ChildSpec>) {
    let (slot, spec) = crate::supervisor::child(
        crate::supervisor::RuntimeChild::Tracker,
        SerialActor::<Tracker>::new,
        Tracker {
            store: store.clone(),
        },
        || TrackerMsg::InjectPanic,
    );
    (TrackerHandle::new(slot, store), spec)
}

/// The task tracker: the [`Serial`] state it is (re)started from, applying record transitions one at a time.
#[derive(Clone)]
pub(crate) struct Tracker {
    pub(crate) store: Arc<TaskStore>,
}

impl Serial for Tracker {
    type Msg = TrackerMsg;

    async fn handle(&mut self, message: TrackerMsg) -> Result<(), ActorProcessingErr> {
        match message {
            TrackerMsg::Create(record, job, reply) => {
                match self.store.insert_new(*record, job) {
                    Some((d, epoch)) => {
                        // Answer once it is on disk, without holding up the tracker.
                        tokio::spawn(async move {
                            d.wait(epoch).await;
                            let _ = reply.send(());
                        });
                    }
                    None => {
                        let _ = reply.send(());
                    }
                }
            }
            TrackerMsg::Update(id, cell, reply) => {
                let update = cell.take();
                if let Some(update) = update {
                    self.store.apply(id, update);
                }
                let _ = reply.send(());
            }
            TrackerMsg::Notify(id, update) => self.store.apply(id, update),
            TrackerMsg::InjectPanic => panic!("fault injected into the task tracker"),
        }
        Ok(())
    }
}

/// A cloneable handle to the [`Tracker`]. Reads go to the shared store;
/// writes go through the actor.
#[derive(Clone)]
pub(crate) struct TrackerHandle {
    slot: Slot<TrackerMsg>,
    store: Arc<TaskStore>,
}

impl TrackerHandle {
    pub(crate) fn new(slot: Slot<TrackerMsg>, store: Arc<TaskStore>) -> Self {
        TrackerHandle { slot, store }
    }

    pub(crate) fn store(&self) -> &Arc<TaskStore> {
        &self.store
    }

    pub(crate) async fn create(
        &self,
        record: TaskRecord,
        job: Option<serde_json::Value>,
    ) -> Result<(), ChildError> {
        self.slot
            .call(CALL_TIMEOUT, |reply| {
                TrackerMsg::Create(Box::new(record.clone()), job.clone(), reply)
            })
            .await
    }

    pub(crate) async fn update(&self, id: TaskId, update: TaskUpdate) -> Result<(), ChildError> {
        let cell = Once::new(update);
        self.slot
            .call(CALL_TIMEOUT, |reply| {
                TrackerMsg::Update(id, cell.clone(), reply)
            })
            .await
    }

    /// Sends an update without waiting for it to be applied. Used for
    /// `Started` and `Progress`, which a later update supersedes; one sent
    /// while the tracker restarts is lost, never a task's end.
    pub(crate) fn notify(&self, id: TaskId, update: TaskUpdate) {
        self.slot.cast(TrackerMsg::Notify(id, update));
    }

    pub(crate) async fn finish(&self, id: TaskId, finished: Finished) -> Result<(), ChildError> {
        self.update(id, TaskUpdate::Finished(Box::new(finished)))
            .await
    }

    pub(crate) fn get(&self, id: TaskId) -> Option<TaskRecord> {
        self.store.records.get(&id).map(|r| r.clone())
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
            .filter_map(|id| records.get(&id).map(|r| r.listed(with_results)))
            .collect();
        (page, self.store.index.count(status))
    }

    /// A receiver that sees the task's status changes.
    pub(crate) fn watch(&self, id: TaskId) -> Option<watch::Receiver<TaskStatus>> {
        self.store.watches.get(&id).map(|tx| tx.subscribe())
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
    async fn a_task_abandoned_before_its_create_lands_never_runs_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.journal");
        let open = || {
            let (journal, replayed) = Journal::open(&path).unwrap();
            let store = TaskStore::new(dir.path().join("tasks"));
            let durable = Durable::new(journal, replayed.jobs.clone());
            store.attach(durable.clone());
            (store, durable, replayed)
        };
        let (store, durable, _) = open();
        let late = TaskRecord::new("f", TaskKind::Call, None);
        let early = TaskRecord::new("f", TaskKind::Call, None);
        // The caller heard "not created" before the tracker got to the create.
        store.abandon(
            late.clone(),
            TaskError::new("NotCreated", "not recorded in time"),
        );
        store.insert_new(late.clone(), Some(serde_json::json!({"kind": "call"})));
        // And one whose create was written before the caller gave up.
        store.insert_new(early.clone(), Some(serde_json::json!({"kind": "call"})));
        durable.flush(&store).await;
        store.abandon(
            early.clone(),
            TaskError::new("NotCreated", "not recorded in time"),
        );
        durable.flush(&store).await;
        drop((store, durable));

        let (_, _, replayed) = open();
        assert!(
            replayed.jobs.is_empty(),
            "no job is left to run: {:?}",
            replayed.jobs
        );
        for id in [late.task_id, early.task_id] {
            let r = &replayed.records[&id];
            assert_eq!(r.status, TaskStatus::Failed);
            assert_eq!(r.error.as_ref().unwrap().kind, "NotCreated");
        }
    }
}
