//! The dispatcher: turns submitted tasks into backend work and reports their
//! progress and outcome to the task tracker.
//!
//! Each task runs as its own tokio task in a tracked set, not inside the actor,
//! so a slow map never blocks the dispatcher and a dispatcher restart never
//! interrupts running work.

mod logs;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker as JobSet;

use crate::compute::{
    BackendError, CallContext, CallId, CallOutcome, ComputeBackend, LogSink, MapItem, MapMeter,
};
use crate::supervisor::{ChildError, Slot};
use crate::task::{MapProgress, TaskError, TaskId, TaskStatus};
use crate::tracker::{Finished, ResultWriter, TaskTrackerHandle, TaskUpdate};

pub(crate) use logs::read_logs;

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Work for the dispatcher.
pub(crate) enum Job {
    /// One call.
    Call {
        task_id: TaskId,
        function: String,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        /// A call still running on a backend that outlives this process
        /// (Modal) after a restart: wait for it instead of starting another.
        attach: Option<CallId>,
    },
    /// A map over a stream of inputs.
    Map {
        task_id: TaskId,
        function: String,
        inputs: BoxStream<'static, Value>,
        total: Option<u64>,
        /// Where a map interrupted by a restart picks up.
        resume: Option<Resume>,
    },
}

/// What a resumed map had finished before the restart.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Resume {
    pub(crate) done: u64,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
}

/// What is stored of an unfinished task's job, to run it again after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum JobSpec {
    /// A call and its arguments.
    Call {
        function: String,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    },
    /// A map; `inputs_file` says its inputs were written to `inputs.jsonl`.
    Map {
        function: String,
        total: Option<u64>,
        inputs_file: bool,
    },
}

/// The file a map's inputs are kept in, one JSON value per line.
pub(crate) const INPUTS_FILE: &str = "inputs.jsonl";

/// Writes a map's inputs before it starts, so a restart can resume it.
pub(crate) fn write_inputs(dir: &std::path::Path, inputs: &[Value]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut out =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(dir.join(INPUTS_FILE))?);
    for v in inputs {
        serde_json::to_writer(&mut out, v)?;
        out.write_all(b"\n")?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_data()
}

/// Streams a map's stored inputs from index `skip` on.
pub(crate) fn read_inputs(dir: &std::path::Path, skip: u64) -> BoxStream<'static, Value> {
    let path = dir.join(INPUTS_FILE);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Value>(1024);
    tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let Ok(file) = std::fs::File::open(&path) else {
            return;
        };
        for line in std::io::BufReader::new(file).lines().skip(skip as usize) {
            let Ok(value) = line
                .map_err(|_| ())
                .and_then(|l| serde_json::from_str(&l).map_err(|_| ()))
            else {
                tracing::error!(file = %path.display(), "unreadable map input; stopping");
                return;
            };
            if tx.blocking_send(value).is_err() {
                return;
            }
        }
    });
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

impl Job {
    fn task_id(&self) -> TaskId {
        match self {
            Job::Call { task_id, .. } | Job::Map { task_id, .. } => *task_id,
        }
    }
}

/// A job handed to the dispatcher; taken at most once even if the message is
/// sent again after a restart.
pub(crate) struct JobCell(Mutex<Option<Job>>);

/// What the dispatcher's jobs share; it outlives any one dispatcher actor.
pub(crate) struct DispatchShared {
    pub(crate) backend: Arc<dyn ComputeBackend>,
    pub(crate) tracker: TaskTrackerHandle,
    pub(crate) cancels: DashMap<TaskId, CancellationToken>,
    pub(crate) jobs: JobSet,
    pub(crate) shutdown: CancellationToken,
}

/// The dispatcher actor.
pub(crate) struct Dispatcher;

/// Messages of the [`Dispatcher`].
pub(crate) enum DispatcherMsg {
    /// Starts a job.
    Submit(Arc<JobCell>, RpcReplyPort<()>),
    /// Cancels a task; answers whether it was still running.
    Cancel(TaskId, RpcReplyPort<bool>),
    /// Panics (fault injection).
    InjectPanic,
}

/// Arguments of the [`Dispatcher`].
#[derive(Clone)]
pub(crate) struct DispatcherArgs {
    pub(crate) shared: Arc<DispatchShared>,
}

/// State of the [`Dispatcher`].
pub(crate) struct DispatcherState {
    shared: Arc<DispatchShared>,
}

impl Actor for Dispatcher {
    type Msg = DispatcherMsg;
    type State = DispatcherState;
    type Arguments = DispatcherArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(DispatcherState {
            shared: args.shared,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            DispatcherMsg::Submit(cell, reply) => {
                let job = cell.0.lock().expect("job cell poisoned").take();
                if let Some(job) = job {
                    let shared = state.shared.clone();
                    let cancel = shared.shutdown.child_token();
                    shared.cancels.insert(job.task_id(), cancel.clone());
                    state.shared.jobs.spawn(run_job(shared, job, cancel));
                }
                let _ = reply.send(());
            }
            DispatcherMsg::Cancel(id, reply) => {
                let found = state.shared.cancels.get(&id).map(|t| t.cancel()).is_some();
                let _ = reply.send(found);
            }
            DispatcherMsg::InjectPanic => panic!("fault injected into the dispatcher"),
        }
        Ok(())
    }
}

/// A cloneable handle to the [`Dispatcher`].
#[derive(Clone)]
pub(crate) struct DispatcherHandle {
    slot: Slot<DispatcherMsg>,
}

impl DispatcherHandle {
    pub(crate) fn new(slot: Slot<DispatcherMsg>) -> Self {
        DispatcherHandle { slot }
    }

    pub(crate) async fn submit(&self, job: Job) -> Result<(), ChildError> {
        let cell = Arc::new(JobCell(Mutex::new(Some(job))));
        self.slot
            .call(CALL_TIMEOUT, |reply| {
                DispatcherMsg::Submit(cell.clone(), reply)
            })
            .await
    }

    pub(crate) async fn cancel(&self, id: TaskId) -> Result<bool, ChildError> {
        self.slot
            .call(CALL_TIMEOUT, |reply| DispatcherMsg::Cancel(id, reply))
            .await
    }
}

async fn run_job(shared: Arc<DispatchShared>, job: Job, cancel: CancellationToken) {
    let id = job.task_id();
    let dir = shared.tracker.store().task_dir(id);
    let (sink, log_rx) = LogSink::channel();
    let ctx = CallContext {
        cancel: cancel.clone(),
        logs: sink,
        meter: Arc::new(MapMeter::default()),
    };
    let work = async {
        match job {
            Job::Call {
                function,
                args,
                kwargs,
                attach,
                ..
            } => run_call(&shared, id, &function, (args, kwargs), attach, ctx).await,
            Job::Map {
                function,
                inputs,
                total,
                resume,
                ..
            } => run_map(&shared, id, &function, inputs, total, resume, ctx).await,
        }
    };
    // The log writer runs beside the work in this same task and ends when the
    // backend drops its log sinks; the task is finished only once its logs are
    // on disk.
    let logs = logs::write_logs(dir, log_rx);
    tokio::pin!(work, logs);
    let mut logs_done = false;
    let finished = loop {
        tokio::select! {
            finished = &mut work => break finished,
            () = &mut logs, if !logs_done => logs_done = true,
        }
    };
    if !logs_done
        && tokio::time::timeout(Duration::from_secs(5), logs)
            .await
            .is_err()
    {
        tracing::warn!(task_id = %id, "task logs not flushed in time");
    }
    let status = finished.status;
    if let Err(e) = shared.tracker.finish(id, finished).await {
        tracing::error!(task_id = %id, error = %e, "could not record the end of a task");
    }
    shared.cancels.remove(&id);
    tracing::debug!(task_id = %id, %status, "task finished");
}

fn backend_error(e: BackendError) -> TaskError {
    let kind = match e {
        BackendError::UnknownFunction(_) => "FunctionNotFound",
        BackendError::Closed => "RuntimeShutdown",
        _ => "BackendError",
    };
    TaskError::new(kind, e.to_string())
}

async fn run_call(
    shared: &DispatchShared,
    id: TaskId,
    function: &str,
    (args, kwargs): (Vec<Value>, Map<String, Value>),
    attach: Option<CallId>,
    ctx: CallContext,
) -> Finished {
    let cancel = ctx.cancel.clone();
    let backend = &shared.backend;
    let started = match attach {
        Some(call) => {
            tracing::info!(task_id = %id, call_id = %call, "waiting again for a call started before the restart");
            Ok(call)
        }
        None => backend.spawn(function, args, kwargs, ctx).await,
    };
    let outcome = match started {
        Err(e) => Err(e),
        Ok(call) => {
            shared.tracker.notify(
                id,
                TaskUpdate::Started {
                    backend_call_id: Some(call.0.clone()),
                },
            );
            tokio::select! {
                outcome = backend.wait(&call) => outcome,
                () = cancel.cancelled() => {
                    if let Err(e) = backend.cancel(&call).await {
                        tracing::debug!(task_id = %id, error = %e, "cancel of a finished call");
                    }
                    backend.wait(&call).await
                }
            }
        }
    };
    let (result, attempts) = match outcome {
        Ok(CallOutcome { result, attempts }) => (result, attempts),
        Err(e) => (Err(backend_error(e)), 1),
    };
    let (status, result, error) = match result {
        Ok(value) => (TaskStatus::Completed, Some(value), None),
        Err(_) if cancel.is_cancelled() => (
            TaskStatus::Cancelled,
            None,
            Some(TaskError::new("Cancelled", "the task was cancelled")),
        ),
        Err(e) => (TaskStatus::Failed, None, Some(e)),
    };
    Finished {
        status,
        result,
        error,
        attempts,
        progress: None,
    }
}

struct MapCounts {
    total: Option<u64>,
    completed: u64,
    failed: u64,
}

impl MapCounts {
    fn progress(&self, meter: &MapMeter, input_done: bool) -> MapProgress {
        let (submitted, running) = meter.read();
        let done = self.completed + self.failed;
        let total = match self.total {
            Some(t) => t,
            None if input_done => done,
            None => submitted.max(done),
        };
        let running = running.min(total.saturating_sub(done));
        MapProgress {
            total,
            pending: total.saturating_sub(done + running),
            running,
            completed: self.completed,
            failed: self.failed,
        }
    }
}

async fn run_map(
    shared: &DispatchShared,
    id: TaskId,
    function: &str,
    inputs: BoxStream<'static, Value>,
    total: Option<u64>,
    resume: Option<Resume>,
    ctx: CallContext,
) -> Finished {
    let cancel = ctx.cancel.clone();
    let meter = ctx.meter.clone();
    let tracker = &shared.tracker;
    let failed = |error: TaskError, progress| Finished {
        status: TaskStatus::Failed,
        result: None,
        error: Some(error),
        attempts: 1,
        progress,
    };
    let dir = tracker.store().task_dir(id);
    let opened = match resume {
        Some(r) => ResultWriter::resume(&dir, r.done).await,
        None => ResultWriter::create(&dir).await,
    };
    let mut writer = match opened {
        Ok(w) => w,
        Err(e) => {
            return failed(
                TaskError::new("StorageError", format!("cannot store results: {e}")),
                None,
            )
        }
    };
    let mut items = match shared.backend.map(function, inputs, ctx).await {
        Ok(items) => items,
        Err(e) => return failed(backend_error(e), None),
    };
    tracker.notify(
        id,
        TaskUpdate::Started {
            backend_call_id: None,
        },
    );
    let resume = resume.unwrap_or_default();
    let mut counts = MapCounts {
        total,
        completed: resume.completed,
        failed: resume.failed,
    };
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = tick.tick() => {
                match writer.flush().await {
                    Ok(n) => tracker.set_available(id, n),
                    Err(e) => return failed(TaskError::new("StorageError", format!("cannot store results: {e}")), None),
                }
                tracker.notify(id, TaskUpdate::Progress(counts.progress(&meter, false)));
            }
            chunk = items.next() => {
                let Some(chunk) = chunk else { break };
                for MapItem { result, .. } in chunk {
                    let value = match result {
                        Ok(v) => {
                            counts.completed += 1;
                            v
                        }
                        Err(e) => {
                            counts.failed += 1;
                            json!({ "error": e })
                        }
                    };
                    if let Err(e) = writer.push(&value).await {
                        return failed(TaskError::new("StorageError", format!("cannot store results: {e}")), None);
                    }
                }
            }
        }
    }
    match writer.flush().await {
        Ok(n) => tracker.set_available(id, n),
        Err(e) => {
            return failed(
                TaskError::new("StorageError", format!("cannot store results: {e}")),
                None,
            )
        }
    }
    let cancelled = cancel.is_cancelled();
    let mut progress = counts.progress(&meter, !cancelled);
    progress.running = 0;
    progress.pending = progress.total.saturating_sub(progress.done());
    let (status, error) = if cancelled {
        (
            TaskStatus::Cancelled,
            Some(TaskError::new("Cancelled", "the map was cancelled")),
        )
    } else if counts.failed > 0 {
        (
            TaskStatus::Failed,
            Some(TaskError::new(
                "MapInputsFailed",
                format!(
                    "{} of {} inputs failed; their errors are in the results",
                    counts.failed, progress.total
                ),
            )),
        )
    } else {
        (TaskStatus::Completed, None)
    };
    Finished {
        status,
        result: None,
        error,
        attempts: 1,
        progress: Some(progress),
    }
}
