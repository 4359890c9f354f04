//! Bringing a runtime back from its data dir after a stop or a crash.

use chrono::Utc;

use super::{Runtime, RuntimeError};
use crate::compute::Deployment;
use crate::dispatcher::{read_inputs, Charged, JobSpec, TaskJob};
use crate::persist::TaskDir;
use crate::registry::FunctionInfo;
use crate::store::Table;
use crate::task::{TaskId, TaskKind, TaskRecord, TaskStatus};
use crate::tracker::{Replayed, Stored};

impl Runtime {
    /// Brings back what the data dir holds: functions (containers start on
    /// demand), finished tasks as they were, and unfinished ones re-queued
    /// with their attempts counted; a map resumes after its stored results.
    pub(crate) async fn recover(&self, replayed: Replayed) -> Result<(), RuntimeError> {
        let store = self.inner.store.clone();
        let functions = tokio::task::spawn_blocking(move || {
            store.all::<FunctionInfo>(Table::Functions, "function")
        })
        .await
        .map_err(|e| RuntimeError::Storage(std::io::Error::other(e)))?
        .map_err(RuntimeError::Store)?;
        let tasks = replayed.records;
        let jobs: Vec<(TaskId, JobSpec)> = replayed
            .jobs
            .into_iter()
            .filter_map(|(id, spec)| serde_json::from_value(spec).ok().map(|s| (id, s)))
            .collect();
        let functions_retries = functions
            .iter()
            .map(|(name, info)| (name.clone(), info.spec.retries.max_retries))
            .collect();
        for (name, info) in functions {
            if let Err(e) = self.redeploy(info).await {
                tracing::error!(function = %name, error = %e, "could not restore a function");
            }
        }
        let mut jobs: std::collections::HashMap<TaskId, JobSpec> = jobs.into_iter().collect();
        // A job whose record could not be read back (quarantined) is not run
        // blind: it is recorded failed, so it neither runs nor lingers.
        let orphaned: Vec<(TaskId, JobSpec)> = jobs
            .iter()
            .filter(|(id, _)| !tasks.contains_key(id))
            .map(|(id, spec)| (*id, spec.clone()))
            .collect();
        let tracker = self.inner.tracker.store().clone();
        for (id, spec) in orphaned {
            jobs.remove(&id);
            let (function, kind, total) = match spec {
                JobSpec::Call { function, .. } => (function, TaskKind::Call, None),
                JobSpec::Map {
                    function, total, ..
                } => (function, TaskKind::Map, total),
            };
            let mut record = TaskRecord::new(&function, kind, total);
            record.task_id = id;
            record.status = TaskStatus::Failed;
            record.finished_at = Some(Utc::now());
            record.error = Some(crate::task::TaskError::new(
                crate::task::ErrorKind::RecordUnreadable,
                "the task's record could not be read back after a restart (see the journal's quarantine file); it was not run again",
            ));
            tracing::error!(task_id = %id, "a task's record was unreadable; it is marked failed");
            tracker.restore(record, 0);
            if let Some(d) = tracker.durable() {
                d.mark(&tracker, id, None);
            }
        }
        let retries: std::collections::HashMap<String, u32> = functions_retries;
        let mut requeued = 0;
        for (key, kept) in tasks {
            // A finished call goes back as it was kept, not rebuilt.
            if kept.status.is_terminal() && kept.kind == TaskKind::Call {
                tracker.restore_kept(key, kept, 0);
                continue;
            }
            let mut record = kept.record(key);
            let dir = tracker.task_dir(record.task_id);
            if record.status.is_terminal() {
                let available = finished_results(&mut record, &dir).await;
                tracker.restore(record, available);
                continue;
            }
            // A call running on Modal carries on there: wait for it (same
            // attempt). Local calls died with the process: run them again.
            let attach = record.remote_call();
            // The runtime went down under a running task (a graceful stop
            // sets it back to pending first): that run is charged an
            // attempt, so a task that takes the runtime down does not
            // crash-loop it; past its retries it is given up. One re-run is
            // always allowed, so a single kill -9 of the server never costs
            // a task with no retries its work.
            let crashed = record.status == TaskStatus::Running && attach.is_none();
            let used = if crashed {
                record.attempts.max(1)
            } else {
                record.attempts
            };
            let max_retries = retries
                .get(&record.function_name)
                .copied()
                .unwrap_or(0)
                .max(1);
            let exhausted = crashed && used > max_retries;
            record.attempts = used;
            let mut lost = None;
            record.status = TaskStatus::Pending;
            let job = match jobs.remove(&key) {
                Some(JobSpec::Call { .. }) if exhausted => {
                    tracing::error!(task_id = %record.task_id, attempts = used, "the runtime went down under this call on every attempt; given up");
                    lost = Some(runtime_lost(used, max_retries, "call"));
                    None
                }
                Some(JobSpec::Call {
                    function,
                    args,
                    kwargs,
                }) => Some(TaskJob::Call {
                    task_id: record.task_id,
                    function,
                    args,
                    kwargs,
                    // A call waited for again goes on with the attempt it was on.
                    prior_attempts: if attach.is_some() {
                        used.saturating_sub(1)
                    } else {
                        used
                    },
                    attach,
                }),
                Some(JobSpec::Map {
                    function,
                    total,
                    inputs_file: true,
                    charged,
                    inputs_as,
                }) => {
                    match check_results(&dir).await {
                        Ok(stored) => {
                            if let Some(p) = record.progress.as_mut() {
                                p.completed = stored.completed;
                                p.failed = stored.failed;
                                p.running = 0;
                                p.pending = p.total.saturating_sub(stored.count);
                            }
                            // The first input without a result was in flight
                            // when the runtime went down: runs are charged to
                            // it while it stays first; past the function's
                            // retries it is given up and the rest go on.
                            let runs = match charged {
                                Some(c) if c.at == stored.count => c.runs + 1,
                                _ => 1,
                            };
                            let mut given_up = None;
                            let mut charged = None;
                            if crashed && runs > max_retries {
                                tracing::error!(task_id = %record.task_id, input = stored.count, runs, "the runtime went down under this map's next input on every attempt; it is given up");
                                given_up = Some(runtime_lost(runs, max_retries, "input"));
                            } else if crashed {
                                charged = Some(Charged {
                                    at: stored.count,
                                    runs,
                                });
                            }
                            let spec = JobSpec::Map {
                                function: function.clone(),
                                total,
                                inputs_file: true,
                                charged,
                                inputs_as,
                            };
                            if let (Some(d), Ok(spec)) =
                                (tracker.durable(), serde_json::to_value(spec))
                            {
                                d.mark(&tracker, record.task_id, Some(spec));
                            }
                            let (inputs, unreadable) = read_inputs(&dir, stored.count, given_up);
                            Some(TaskJob::Map {
                                task_id: record.task_id,
                                function,
                                inputs,
                                unreadable: Some(unreadable),
                                total,
                                resume: Some(stored),
                                prior_attempts: used,
                                inputs_as,
                            })
                        }
                        Err(e) => {
                            // One damaged map never keeps the runtime from starting.
                            tracing::error!(task_id = %record.task_id, error = %e, "a map's results cannot be read; it is marked failed");
                            lost = Some(crate::task::TaskError::new(
                            crate::task::ErrorKind::StorageError,
                            format!("the map's stored results could not be read after a restart: {e}"),
                        ));
                            None
                        }
                    }
                }
                _ => None,
            };
            let id = record.task_id;
            let stored = crate::tracker::indexed_count(&dir);
            match job {
                Some(job) => {
                    tracker.restore(record, stored);
                    if let Some(d) = tracker.durable() {
                        d.mark(&tracker, id, None);
                    }
                    self.inner.dispatcher.submit(job);
                    requeued += 1;
                }
                None => {
                    record.status = TaskStatus::Failed;
                    record.finished_at = Some(Utc::now());
                    record.error = Some(lost.take().unwrap_or_else(|| crate::task::TaskError::new(
                        crate::task::ErrorKind::LostAtRestart,
                        "the runtime stopped while this task ran and its input (a stream) was not stored; its stored results are kept",
                    )));
                    tracker.restore(record, stored);
                    if let Some(d) = tracker.durable() {
                        d.mark(&tracker, id, None);
                    }
                }
            }
        }
        if requeued > 0 {
            tracing::info!(requeued, "unfinished tasks re-queued after a restart");
        }
        Ok(())
    }

    /// Removes files no task refers to any more, then sweeps finished tasks
    /// per `policy` now and every `policy.sweep_every` until shutdown.
    pub(crate) async fn start_retention(
        &self,
        policy: crate::tracker::Retention,
        quarantined: usize,
    ) {
        let store = self.inner.tracker.store().clone();
        let orphans = if quarantined > 0 {
            tracing::warn!(quarantined, "journal lines were quarantined: task files without a record are kept for inspection");
            Ok(Ok(0))
        } else {
            let store = store.clone();
            tokio::task::spawn_blocking(move || crate::tracker::remove_orphans(&store)).await
        };
        match orphans {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(removed = n, "task files no record refers to removed"),
            Ok(Err(error)) => tracing::warn!(%error, "could not look for orphaned task files"),
            Err(error) => tracing::warn!(%error, "could not look for orphaned task files"),
        }
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            loop {
                crate::tracker::sweep(&store, &policy).await;
                tokio::select! {
                    () = tokio::time::sleep(policy.sweep_every) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        });
    }

    async fn redeploy(&self, info: FunctionInfo) -> Result<(), RuntimeError> {
        let spec = info.spec.clone();
        let (secret_env, remote_secrets) = self.resolve_secrets(&spec)?;
        let volume_dirs = spec
            .volumes
            .iter()
            .map(|(mount, name)| (mount.clone(), self.volume_dir(name)))
            .collect();
        self.inner
            .backend
            .deploy(Deployment {
                spec,
                secret_env,
                volume_dirs,
                remote_secrets,
                warm: false,
                redact: self.inner.redactor.clone(),
            })
            .await
            .map_err(RuntimeError::Backend)?;
        self.inner.registry.register(info);
        Ok(())
    }
}

/// Checks a map's result files off the async threads.
async fn check_results(dir: &TaskDir) -> std::io::Result<Stored> {
    let dir = dir.clone();
    tokio::task::spawn_blocking(move || crate::tracker::recover_results(&dir))
        .await
        .map_err(std::io::Error::other)?
}

/// Results readable for a finished task. A finished map whose files no longer
/// hold all its results is cut back to what reads back whole and marked
/// failed with the reason.
async fn finished_results(record: &mut TaskRecord, dir: &TaskDir) -> u64 {
    let Some(done) = record
        .progress
        .filter(|_| record.kind == TaskKind::Map)
        .map(|p| p.done())
    else {
        return 0;
    };
    let whole = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || crate::tracker::looks_whole(&dir, done))
            .await
            .unwrap_or(false)
    };
    if whole {
        return done;
    }
    let kept = check_results(dir).await.map_or(0, |s| s.count);
    tracing::error!(task_id = %record.task_id, kept, expected = done, "a finished map's results are damaged; it is marked failed");
    record.status = TaskStatus::Failed;
    record.error = Some(crate::task::TaskError::new(
        crate::task::ErrorKind::StorageError,
        format!("only {kept} of the map's {done} results could be read back after a restart; they are kept"),
    ));
    kept
}

/// The error of work the runtime went down under on each of its attempts.
fn runtime_lost(attempts: u32, max_retries: u32, what: &str) -> crate::task::TaskError {
    crate::task::TaskError::new(
        crate::task::ErrorKind::RuntimeLost,
        format!(
            "the runtime went down while this {what} ran, {attempts} time(s), which uses up its retries (max_retries = {max_retries}); it was not run again"
        ),
    )
}
