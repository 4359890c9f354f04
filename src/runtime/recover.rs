//! Bringing a runtime back from its data dir after a stop or a crash.

use chrono::Utc;

use super::{Runtime, RuntimeError};
use crate::compute::{CallId, Deployment};
use crate::dispatcher::{read_inputs, Job, JobSpec, Resume};
use crate::registry::FunctionInfo;
use crate::store::Table;
use crate::task::{TaskId, TaskStatus};
use crate::tracker::Replayed;

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
        for (name, info) in functions {
            if let Err(e) = self.redeploy(info).await {
                tracing::error!(function = %name, error = %e, "could not restore a function");
            }
        }
        let mut jobs: std::collections::HashMap<TaskId, JobSpec> = jobs.into_iter().collect();
        let tracker = self.inner.tracker.store().clone();
        let mut requeued = 0;
        for (key, mut record) in tasks {
            let dir = tracker.task_dir(record.task_id);
            let stored = crate::tracker::stored_count(&dir);
            if record.status.is_terminal() {
                tracker.restore(record, stored);
                continue;
            }
            // A call running on Modal carries on there: wait for it (same
            // attempt). Local calls died with the process: run them again.
            let attach = record
                .backend_call_id
                .clone()
                .filter(|c| !c.starts_with("lc-"))
                .map(CallId);
            if attach.is_none() {
                record.attempts += 1;
            }
            record.status = TaskStatus::Pending;
            let job = match jobs.remove(&key) {
                Some(JobSpec::Call {
                    function,
                    args,
                    kwargs,
                }) => Some(Job::Call {
                    task_id: record.task_id,
                    function,
                    args,
                    kwargs,
                    attach,
                }),
                Some(JobSpec::Map {
                    function,
                    total,
                    inputs_file: true,
                }) => {
                    let (completed, failed) = crate::tracker::count_outcomes(&dir, stored)
                        .map_err(RuntimeError::Storage)?;
                    if let Some(p) = record.progress.as_mut() {
                        p.completed = completed;
                        p.failed = failed;
                        p.running = 0;
                        p.pending = p.total.saturating_sub(stored);
                    }
                    Some(Job::Map {
                        task_id: record.task_id,
                        function,
                        inputs: read_inputs(&dir, stored),
                        total,
                        resume: Some(Resume {
                            done: stored,
                            completed,
                            failed,
                        }),
                    })
                }
                _ => None,
            };
            let id = record.task_id;
            match job {
                Some(job) => {
                    tracker.restore(record, stored);
                    if let Some(d) = tracker.durable() {
                        d.mark(id, None);
                    }
                    self.inner.dispatcher.submit(job).await?;
                    requeued += 1;
                }
                None => {
                    record.status = TaskStatus::Failed;
                    record.finished_at = Some(Utc::now());
                    record.error = Some(crate::TaskError::new(
                        "LostAtRestart",
                        "the runtime stopped while this task ran and its input (a stream) was not stored; its stored results are kept",
                    ));
                    tracker.restore(record, stored);
                    if let Some(d) = tracker.durable() {
                        d.mark(id, None);
                    }
                }
            }
        }
        if requeued > 0 {
            tracing::info!(requeued, "unfinished tasks re-queued after a restart");
        }
        Ok(())
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
            })
            .await
            .map_err(RuntimeError::Backend)?;
        self.inner.registry.register(info).await?;
        Ok(())
    }
}
