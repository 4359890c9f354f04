//! Group commit of task records: changes are marked dirty and written in one
//! database transaction every few milliseconds; a task's creation (with its
//! job) is acknowledged only once it is on disk.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::TaskStore;
use crate::store::{put, Store, Table, Write};
use crate::task::TaskId;

/// How long a flush waits to gather more changes.
const BATCH_WINDOW: Duration = Duration::from_millis(2);

#[derive(Default)]
struct Pending {
    dirty: HashSet<TaskId>,
    extra: Vec<Write>,
    epoch: u64,
}

/// The writer of task records to the database.
pub(crate) struct Durable {
    store: Arc<Store>,
    pending: Mutex<Pending>,
    wake: Notify,
    done: watch::Sender<u64>,
}

impl Durable {
    pub(crate) fn new(store: Arc<Store>) -> Arc<Durable> {
        Arc::new(Durable {
            store,
            pending: Mutex::default(),
            wake: Notify::new(),
            done: watch::channel(0).0,
        })
    }

    /// Marks a record (and optional extra writes) for the next flush; returns
    /// that flush's number.
    pub(crate) fn mark(&self, id: TaskId, extra: Option<Write>) -> u64 {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.dirty.insert(id);
        p.extra.extend(extra);
        let epoch = p.epoch + 1;
        drop(p);
        self.wake.notify_one();
        epoch
    }

    /// Waits until flush `epoch` is on disk.
    pub(crate) async fn wait(&self, epoch: u64) {
        let mut rx = self.done.subscribe();
        while *rx.borrow_and_update() < epoch {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Flushes until `stop`, then once more.
    pub(crate) async fn run(self: Arc<Self>, tasks: Arc<TaskStore>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = stop.cancelled() => break,
            }
            tokio::time::sleep(BATCH_WINDOW).await;
            self.flush(&tasks).await;
        }
        self.flush(&tasks).await;
    }

    /// Writes everything marked so far.
    pub(crate) async fn flush(&self, tasks: &TaskStore) {
        let (dirty, mut writes, epoch) = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.epoch += 1;
            (
                std::mem::take(&mut p.dirty),
                std::mem::take(&mut p.extra),
                p.epoch,
            )
        };
        for id in dirty {
            if let Some(record) = tasks.records.get(&id).map(|r| r.clone()) {
                writes.push(put(Table::Tasks, id.to_string(), &record));
                if record.status.is_terminal() {
                    writes.push(Write::Delete(Table::Jobs, id.to_string()));
                }
            }
        }
        let store = self.store.clone();
        let written = tokio::task::spawn_blocking(move || store.apply(writes)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "could not write task records"),
            Err(e) => tracing::error!(error = %e, "task record writer failed"),
        }
        self.done.send_replace(epoch);
    }
}
