//! Retention: finished tasks are kept for a while and up to a count, then
//! forgotten. Their records leave memory and the journal, their files (map
//! inputs and results, logs) leave the disk, and whoever keeps something per
//! task (webhook registrations) hears about it. Unfinished tasks are never
//! touched.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::TaskStore;
use crate::task::{TaskId, TaskStatus};

/// How long and how many finished tasks are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Finished tasks are removed this long after they finished (default 7
    /// days).
    pub max_age: Duration,
    /// At most this many finished tasks are kept; beyond it the oldest go
    /// first (default 100,000).
    pub max_finished: usize,
    /// How often the sweep runs (default 60 s; it also runs at start).
    pub sweep_every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_finished: 100_000,
            sweep_every: Duration::from_secs(60),
        }
    }
}

impl TaskStore {
    /// Finished tasks `policy` no longer keeps at `now`, oldest first.
    pub(crate) fn expired(&self, policy: &Retention, now: DateTime<Utc>) -> Vec<TaskId> {
        let finished: usize = [
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
        ]
        .into_iter()
        .map(|s| self.index.count(Some(s)))
        .sum();
        let mut excess = finished.saturating_sub(policy.max_finished);
        let cutoff = chrono::Duration::from_std(policy.max_age)
            .ok()
            .and_then(|age| now.checked_sub_signed(age))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut out = Vec::new();
        self.index.oldest(|created, id| {
            // A task created after the cutoff finished after it too.
            if excess == 0 && created > cutoff {
                return false;
            }
            let finished_at = self
                .records
                .get(&id)
                .filter(|r| r.status.is_terminal())
                .map(|r| r.finished_at.unwrap_or(r.created_at));
            if let Some(at) = finished_at {
                if excess > 0 || at < cutoff {
                    out.push(id);
                    excess = excess.saturating_sub(1);
                }
            }
            true
        });
        out
    }

    /// Drops `ids` from memory and tells those who keep things per task.
    pub(crate) fn forget(&self, ids: &[TaskId]) {
        for id in ids {
            if let Some((_, r)) = self.records.remove(id) {
                self.index.remove(r.created_at, *id, r.status);
            }
            self.watches.remove(id);
            self.available.remove(id);
        }
        self.names.prune();
        let _ = self.forgotten.send(Arc::new(ids.to_vec()));
    }

    /// Hears of every batch of tasks retention removes.
    pub(crate) fn subscribe_forgotten(&self) -> tokio::sync::broadcast::Receiver<Arc<Vec<TaskId>>> {
        self.forgotten.subscribe()
    }
}

/// One sweep: removes what `policy` no longer keeps, from memory, then the
/// journal, then the disk (a crash in between leaves only files, which the
/// next start removes). Returns how many tasks went.
pub(crate) async fn sweep(store: &Arc<TaskStore>, policy: &Retention) -> usize {
    let ids = store.expired(policy, Utc::now());
    if ids.is_empty() {
        return 0;
    }
    store.forget(&ids);
    if let Some(durable) = store.durable() {
        let epoch = durable.forget(&ids);
        durable.wait(epoch).await;
        // On disk for good before the files go: a machine crash must not
        // bring back a record whose files are gone.
        durable.flush(store).await;
    }
    let dirs: Vec<PathBuf> = ids
        .iter()
        .map(|id| store.task_dir(*id).to_path_buf())
        .collect();
    let removed = tokio::task::spawn_blocking(move || remove_dirs(&dirs)).await;
    if let Err(error) = removed {
        tracing::warn!(%error, "retention could not remove task files");
    }
    tracing::info!(removed = ids.len(), "retention: finished tasks removed");
    ids.len()
}

/// Removes task directories no record refers to (left by a crash during a
/// sweep). Runs at start, before any task is created.
pub(crate) fn remove_orphans(store: &TaskStore) -> std::io::Result<usize> {
    let mut orphans = Vec::new();
    for entry in std::fs::read_dir(&store.dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.parse::<TaskId>().ok()) else {
            continue;
        };
        if !store.records.contains_key(&id) {
            orphans.push(entry.path());
        }
    }
    remove_dirs(&orphans);
    Ok(orphans.len())
}

fn remove_dirs(dirs: &[PathBuf]) {
    for dir in dirs {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "could not remove a task's files");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{TaskKind, TaskRecord};

    fn finished(store: &TaskStore, created: DateTime<Utc>, finished: DateTime<Utc>) -> TaskId {
        let mut r = TaskRecord::new("f", TaskKind::Call, None);
        r.created_at = created;
        r.finished_at = Some(finished);
        r.status = TaskStatus::Completed;
        let id = r.task_id;
        store.restore(r, 0);
        id
    }

    #[test]
    fn age_and_count_decide_and_unfinished_tasks_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = TaskStore::new(dir.path().to_path_buf());
        let now = Utc::now();
        let day = chrono::Duration::days(1);
        let old = finished(&store, now - day * 10, now - day * 9);
        let long_map = finished(
            &store,
            now - day * 10 + chrono::Duration::hours(1),
            now - chrono::Duration::hours(1),
        );
        let recent: Vec<TaskId> = (0..5)
            .map(|i| finished(&store, now - chrono::Duration::minutes(50 - i), now))
            .collect();
        let mut running = TaskRecord::new("f", TaskKind::Call, None);
        running.created_at = now - day * 30;
        running.status = TaskStatus::Running;
        let running_id = running.task_id;
        store.restore(running, 0);

        let policy = Retention {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_finished: 100,
            sweep_every: Duration::from_secs(60),
        };
        assert_eq!(store.expired(&policy, now), vec![old]);
        // Over the count, the oldest finished go first; never the running one.
        let tight = Retention {
            max_finished: 3,
            ..policy
        };
        let gone = store.expired(&tight, now);
        assert_eq!(gone, vec![old, long_map, recent[0], recent[1]]);
        store.forget(&gone);
        assert!(store.records.contains_key(&running_id));
        assert_eq!(store.records.len(), 4);
        assert_eq!(store.index.count(Some(TaskStatus::Completed)), 3);
        assert!(store.expired(&tight, now).is_empty());
    }
}
