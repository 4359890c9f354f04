//! The master (seed pattern 3, master-worker coordination): hands tasks to
//! the least-loaded worker, re-runs a task whose worker crashed or whose
//! compute failed on another worker up to a limit, reports progress, and
//! stores the aggregate in a volume.
//!
//! Every dispatch carries an attempt number and the master accepts only the
//! outcome of a task's current attempt, once, so no task is dropped silently
//! and none is counted twice. Jobs live outside the master actor: a master
//! restarted mid-job carries on with it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{ActorId, ActorProcessingErr, RpcReplyPort};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{AgentError, AgentKind, AgentTask, Agents, WorkerHandle};
use crate::runtime::Runtime;
use crate::supervisor::{ChildError, Slot};
use crate::supervisor::{Serial, SerialActor};
use crate::sync::Recover;

/// How a master runs jobs.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// Attempts per task before it is reported failed (default 3).
    pub max_attempts: u32,
    /// Tasks in flight per worker at most (default 2, at most 8): one
    /// running and one queued, so a worker never idles between tasks and a
    /// queue never grows behind a slow one.
    pub per_worker: usize,
    /// How long one task may run on a worker (default 10 minutes), counted
    /// from when the worker starts it, never while it waits in the
    /// worker's mailbox. A task past it fails that attempt
    /// ([`AgentError::TimedOut`]) and is re-run on another worker.
    pub task_timeout: Duration,
    /// The volume the aggregate is stored in (default `agents`).
    pub results_volume: String,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            max_attempts: 3,
            per_worker: 2,
            task_timeout: Duration::from_secs(600),
            results_volume: "agents".into(),
        }
    }
}

/// Live counts of a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    /// Tasks in the job.
    pub total: usize,
    /// Tasks finished, either way.
    pub done: usize,
    /// Tasks finished with a failure.
    pub failed: usize,
    /// Tasks on a worker now.
    pub running: usize,
    /// Re-runs so far.
    pub retries: u64,
}

/// What one worker did in a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Tasks it completed.
    pub completed: u64,
    /// Attempts that failed on it (crash or error).
    pub failed_attempts: u64,
}

/// The outcome of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Its position in the job.
    pub index: usize,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The worker of its last attempt.
    pub worker: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// Its result, when it completed.
    pub result: Option<Value>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// A finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    /// The job's id.
    pub job_id: String,
    /// The master that ran it.
    pub master: String,
    /// Tasks in the job.
    pub total: usize,
    /// Tasks that completed.
    pub completed: usize,
    /// Tasks that failed after every attempt.
    pub failed: usize,
    /// Re-runs.
    pub retries: u64,
    /// Wall time from submission to the last outcome.
    pub wall_ms: u64,
    /// Per worker.
    pub per_worker: BTreeMap<String, WorkerStats>,
    /// Per task, in task order.
    pub results: Vec<TaskResult>,
    /// Where the aggregate is stored: volume, state key and results file.
    pub stored_at: Value,
}

struct JobState {
    tasks: Vec<AgentTask>,
    workers: Vec<WorkerHandle>,
    queue: VecDeque<usize>,
    attempts: Vec<u32>,
    last_worker: Vec<Option<String>>,
    inflight: HashMap<String, usize>,
    outcomes: Vec<Option<TaskResult>>,
    /// Outcomes in, and how many of them are failures (counted as they
    /// come, so progress costs nothing per task).
    done: usize,
    failed: usize,
    per_worker: BTreeMap<String, WorkerStats>,
    retries: u64,
    started: Instant,
    progress: watch::Sender<JobProgress>,
    report: watch::Sender<Option<Arc<JobReport>>>,
}

impl JobState {
    fn publish(&self) {
        self.progress.send_replace(JobProgress {
            total: self.tasks.len(),
            done: self.done,
            failed: self.failed,
            running: self.inflight.values().sum(),
            retries: self.retries,
        });
    }
}

/// What outlives a master actor: its jobs.
pub(crate) struct MasterShared {
    id: String,
    config: MasterConfig,
    runtime: Runtime,
    jobs: Mutex<HashMap<String, JobState>>,
    slot: Slot<MasterMsg>,
    /// Worker actors seen dead: a worker is skipped until its supervisor has
    /// replaced the actor, even while the dead one still looks running.
    dead: Mutex<HashSet<ActorId>>,
}

impl MasterShared {
    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, JobState>> {
        self.jobs.lock().recover()
    }

    fn usable(&self, worker: &WorkerHandle) -> bool {
        worker.is_up()
            && worker
                .actor_id()
                .is_some_and(|id| !self.dead.lock().recover().contains(&id))
    }
}

/// Messages of a [`Master`].
pub(crate) enum MasterMsg {
    /// Starts a job (idempotent per job id).
    Submit {
        job_id: String,
        tasks: Vec<AgentTask>,
        workers: Vec<WorkerHandle>,
        reply: RpcReplyPort<()>,
    },
    /// A task's attempt ended on a worker.
    Finished {
        job_id: String,
        index: usize,
        attempt: u32,
        worker: String,
        outcome: Arc<Result<Value, AgentError>>,
        reply: RpcReplyPort<()>,
    },
    /// Hands out queued tasks again (after workers were down).
    Pump(String),
    /// Panics (fault injection).
    InjectPanic,
}

/// A master agent: the [`Serial`] state it is (re)started from, handling its messages one at a time.
#[derive(Clone)]
pub(crate) struct Master {
    shared: Arc<MasterShared>,
}

impl Serial for Master {
    type Msg = MasterMsg;

    async fn handle(&mut self, message: MasterMsg) -> Result<(), ActorProcessingErr> {
        let shared = &self.shared;
        match message {
            MasterMsg::Submit {
                job_id,
                tasks,
                workers,
                reply,
            } => {
                {
                    let mut jobs = shared.jobs();
                    if !jobs.contains_key(&job_id) {
                        let n = tasks.len();
                        let job = JobState {
                            queue: (0..n).collect(),
                            attempts: vec![0; n],
                            last_worker: vec![None; n],
                            inflight: workers.iter().map(|w| (w.id().to_owned(), 0)).collect(),
                            outcomes: vec![None; n],
                            done: 0,
                            failed: 0,
                            per_worker: workers
                                .iter()
                                .map(|w| (w.id().to_owned(), WorkerStats::default()))
                                .collect(),
                            retries: 0,
                            started: Instant::now(),
                            progress: watch::channel(JobProgress {
                                total: n,
                                ..JobProgress::default()
                            })
                            .0,
                            report: watch::channel(None).0,
                            tasks,
                            workers,
                        };
                        jobs.insert(job_id.clone(), job);
                    }
                }
                pump(shared, &job_id);
                finish_if_done(shared, &job_id).await;
                let _ = reply.send(());
            }
            MasterMsg::Finished {
                job_id,
                index,
                attempt,
                worker,
                outcome,
                reply,
            } => {
                record(shared, &job_id, index, attempt, &worker, &outcome);
                pump(shared, &job_id);
                finish_if_done(shared, &job_id).await;
                let _ = reply.send(());
            }
            MasterMsg::Pump(job_id) => pump(shared, &job_id),
            MasterMsg::InjectPanic => panic!("fault injected into master {}", shared.id),
        }
        Ok(())
    }
}

/// Applies one attempt's outcome, if it is the task's current attempt.
fn record(
    shared: &MasterShared,
    job_id: &str,
    index: usize,
    attempt: u32,
    worker: &str,
    outcome: &Result<Value, AgentError>,
) {
    let mut jobs = shared.jobs();
    let Some(job) = jobs.get_mut(job_id) else {
        return;
    };
    if job.attempts[index] != attempt || job.outcomes[index].is_some() {
        tracing::debug!(job = job_id, index, attempt, "stale outcome ignored");
        return;
    }
    if let Some(n) = job.inflight.get_mut(worker) {
        *n = n.saturating_sub(1);
    }
    let stats = job.per_worker.entry(worker.to_owned()).or_default();
    match outcome {
        Ok(result) => {
            stats.completed += 1;
            job.done += 1;
            job.outcomes[index] = Some(TaskResult {
                index,
                kind: job.tasks[index].kind.clone(),
                worker: Some(worker.to_owned()),
                attempts: attempt,
                result: Some(result.clone()),
                error: None,
            });
        }
        Err(reason) => {
            stats.failed_attempts += 1;
            if attempt < shared.config.max_attempts {
                tracing::info!(job = job_id, index, attempt, worker, %reason, "task failed; re-running on another worker");
                job.retries += 1;
                job.queue.push_front(index);
            } else {
                job.done += 1;
                job.failed += 1;
                job.outcomes[index] = Some(TaskResult {
                    index,
                    kind: job.tasks[index].kind.clone(),
                    worker: Some(worker.to_owned()),
                    attempts: attempt,
                    result: None,
                    error: Some(reason.to_string()),
                });
            }
        }
    }
    job.publish();
}

/// Hands queued tasks to the least-loaded workers with room.
fn pump(shared: &Arc<MasterShared>, job_id: &str) {
    let mut jobs = shared.jobs();
    let Some(job) = jobs.get_mut(job_id) else {
        return;
    };
    while let Some(&index) = job.queue.front() {
        let avoid = job.last_worker[index].clone();
        let pick = job
            .workers
            .iter()
            .filter(|w| {
                shared.usable(w)
                    && job.inflight.get(w.id()).copied().unwrap_or(0) < shared.config.per_worker
            })
            .min_by_key(|w| {
                let stats = job.per_worker.get(w.id()).copied().unwrap_or_default();
                (
                    Some(w.id()) == avoid.as_deref(),
                    job.inflight.get(w.id()).copied().unwrap_or(0),
                    stats.completed + stats.failed_attempts,
                )
            })
            .cloned();
        let Some(worker) = pick else {
            if job.inflight.values().all(|n| *n == 0) {
                // Every worker is down: look again shortly.
                let (slot, job_id) = (shared.slot.clone(), job_id.to_owned());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    slot.cast(MasterMsg::Pump(job_id));
                });
            }
            break;
        };
        job.queue.pop_front();
        job.attempts[index] += 1;
        job.last_worker[index] = Some(worker.id().to_owned());
        *job.inflight.entry(worker.id().to_owned()).or_default() += 1;
        let task = job.tasks[index].clone();
        let attempt = job.attempts[index];
        let (shared, job_id) = (shared.clone(), job_id.to_owned());
        let actor = worker.actor_id();
        tokio::spawn(async move {
            let outcome = match worker.run(task, shared.config.task_timeout).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    if let (ChildError::Down(_), Some(actor)) = (&e, actor) {
                        // Until it is restarted, this worker fails whatever it
                        // gets at once: do not hand it more.
                        shared.dead.lock().recover().insert(actor);
                    }
                    Err(AgentError::WorkerLost {
                        worker: worker.id().to_owned(),
                        cause: e,
                    })
                }
            };
            // Sent again if the master restarts meanwhile: shared, not copied.
            let outcome = Arc::new(outcome);
            let sent = shared
                .slot
                .call(Duration::from_secs(30), |reply| MasterMsg::Finished {
                    job_id: job_id.clone(),
                    index,
                    attempt,
                    worker: worker.id().to_owned(),
                    outcome: outcome.clone(),
                    reply,
                })
                .await;
            if let Err(e) = sent {
                tracing::error!(job = %job_id, index, error = %e, "master unreachable; outcome lost");
            }
        });
    }
    job.publish();
}

/// When every task has an outcome: stores the aggregate and publishes the report.
async fn finish_if_done(shared: &MasterShared, job_id: &str) {
    let report = {
        let jobs = shared.jobs();
        let Some(job) = jobs.get(job_id) else { return };
        if job.report.borrow().is_some() || job.done < job.tasks.len() {
            return;
        }
        let results: Vec<TaskResult> = job.outcomes.iter().flatten().cloned().collect();
        let failed = results.iter().filter(|r| r.error.is_some()).count();
        JobReport {
            job_id: job_id.to_owned(),
            master: shared.id.clone(),
            total: results.len(),
            completed: results.len() - failed,
            failed,
            retries: job.retries,
            wall_ms: job.started.elapsed().as_millis() as u64,
            per_worker: job.per_worker.clone(),
            results,
            stored_at: Value::Null,
        }
    };
    let report = store(shared, report).await;
    if let Some(job) = shared.jobs().get(job_id) {
        job.report.send_replace(Some(Arc::new(report)));
    }
}

async fn store(shared: &MasterShared, mut report: JobReport) -> JobReport {
    let volume = &shared.config.results_volume;
    let key = format!("jobs/{}", report.job_id);
    let file = format!("jobs/{}/results.json", report.job_id);
    let volumes = shared.runtime.volumes();
    let summary = json!({
        "job_id": report.job_id, "master": report.master, "total": report.total,
        "completed": report.completed, "failed": report.failed, "retries": report.retries,
        "wall_ms": report.wall_ms, "per_worker": report.per_worker, "results_file": file,
    });
    let results = serde_json::to_vec_pretty(&report.results).unwrap_or_default();
    let stored = async {
        volumes.put_file(volume, &file, results).await?;
        volumes.write(volume, &key, summary).await
    }
    .await;
    report.stored_at = match stored {
        Ok(_) => json!({"volume": volume, "key": key, "file": file}),
        Err(e) => {
            tracing::error!(job = %report.job_id, error = %e, "could not store the job's aggregate");
            json!({"error": e.to_string()})
        }
    };
    report
}

/// A handle to a master agent; it follows the master across restarts.
#[derive(Clone)]
pub struct MasterHandle {
    shared: Arc<MasterShared>,
}

impl std::fmt::Debug for MasterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterHandle")
            .field("id", &self.shared.id)
            .finish()
    }
}

impl MasterHandle {
    /// The master's id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Starts a job of `tasks` over `workers`; returns its id at once.
    pub async fn submit(
        &self,
        tasks: Vec<AgentTask>,
        workers: &[WorkerHandle],
    ) -> Result<String, AgentError> {
        if workers.is_empty() && !tasks.is_empty() {
            return Err(AgentError::NoAgents {
                kind: AgentKind::Worker,
                work: "a job",
            });
        }
        let job_id = uuid::Uuid::new_v4().to_string();
        self.shared
            .slot
            .call(Duration::from_secs(30), |reply| MasterMsg::Submit {
                job_id: job_id.clone(),
                tasks: tasks.clone(),
                workers: workers.to_vec(),
                reply,
            })
            .await?;
        Ok(job_id)
    }

    /// Live progress of a job.
    pub fn progress(&self, job_id: &str) -> Option<watch::Receiver<JobProgress>> {
        self.shared
            .jobs()
            .get(job_id)
            .map(|j| j.progress.subscribe())
    }

    /// Waits for a job's report.
    pub async fn wait(&self, job_id: &str) -> Result<JobReport, AgentError> {
        let mut rx = self
            .shared
            .jobs()
            .get(job_id)
            .map(|j| j.report.subscribe())
            .ok_or_else(|| AgentError::Unknown(format!("job {job_id}")))?;
        loop {
            if let Some(report) = rx.borrow_and_update().clone() {
                return Ok((*report).clone());
            }
            if rx.changed().await.is_err() {
                return Err(AgentError::Unknown(format!("job {job_id}")));
            }
        }
    }

    /// Runs a job to the end (the seed's `master_agent_coordinator`).
    pub async fn run(
        &self,
        tasks: Vec<AgentTask>,
        workers: &[WorkerHandle],
    ) -> Result<JobReport, AgentError> {
        let job = self.submit(tasks, workers).await?;
        self.wait(&job).await
    }
}

impl Agents {
    /// Starts a master agent.
    pub async fn spawn_master(
        &self,
        id: &str,
        config: MasterConfig,
    ) -> Result<MasterHandle, AgentError> {
        super::validate_agent_id(id)?;
        crate::spec::validate_object_name("results_volume", &config.results_volume)?;
        if !(1..=8).contains(&config.per_worker) {
            return Err(AgentError::Id(crate::spec::SpecError::invalid(
                "per_worker",
                config.per_worker,
                "tasks in flight per worker, from 1 to 8",
            )));
        }
        let (slot, publish) = Slot::new(format!("master {id}"));
        let shared = Arc::new(MasterShared {
            id: id.to_owned(),
            config,
            runtime: self.runtime.clone(),
            jobs: Mutex::new(HashMap::new()),
            slot,
            dead: Mutex::new(HashSet::new()),
        });
        self.start(
            id,
            AgentKind::Master,
            publish,
            SerialActor::<Master>::new,
            Master {
                shared: shared.clone(),
            },
            || MasterMsg::InjectPanic,
        )
        .await?;
        Ok(MasterHandle { shared })
    }
}

#[cfg(test)]
mod tests;
