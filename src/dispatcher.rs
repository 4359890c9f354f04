//! The dispatcher: turns submitted tasks into backend work and reports their
//! progress and outcome to the task records.
//!
//! Each task runs as its own tokio task in a tracked set (the runtime's
//! shutdown waits for them); the handle only starts and cancels them, so a
//! submit is a map insert and a spawn.

pub(crate) mod logs;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker as JobSet;

use crate::compute::{
    BackendError, CallContext, CallId, CallOutcome, ComputeBackend, LogSink, MapItem, MapMeter,
};
use crate::persist::TaskDir;
use crate::sync::Recover;
use crate::task::{
    InputsAs, MapProgress, ResultRef, TaskError, TaskId, TaskStatus, INLINE_RESULT_BYTES,
    MAX_RESULT_BYTES,
};
use crate::tracker::{Buffered, Finished, ResultWriter, Stored, TaskUpdate, Tasks};

pub(crate) use logs::{read_logs, LogFeeds, Taken};

const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Work for the dispatcher.
pub(crate) enum TaskJob {
    /// One call.
    Call {
        task_id: TaskId,
        function: String,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        /// A call still running on a backend that outlives this process
        /// (Modal) after a restart: wait for it instead of starting another.
        attach: Option<CallId>,
        /// Attempts earlier runs used (runs the runtime went down under);
        /// the function's retries count them.
        prior_attempts: u32,
    },
    /// A map over a stream of inputs.
    Map {
        task_id: TaskId,
        function: String,
        inputs: BoxStream<'static, Value>,
        /// Stored inputs that could not be read back, each an error in its
        /// own slot (set aside by [`read_inputs`]).
        unreadable: Option<Unreadable>,
        total: Option<u64>,
        /// Where a map interrupted by a restart picks up.
        resume: Option<Stored>,
        /// Runs of this map before this one (runs the runtime went down
        /// under).
        prior_attempts: u32,
        /// How each input is passed.
        inputs_as: InputsAs,
    },
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
        /// Runs the runtime went down under while this input (the first
        /// without a stored result) was next: past the function's retries
        /// it is given up.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        charged: Option<Charged>,
        /// How each input is passed (stored only when not the default).
        #[serde(default, skip_serializing_if = "InputsAs::is_argument")]
        inputs_as: InputsAs,
    },
}

/// Runs of a map the runtime went down under at the same next input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Charged {
    /// The input's index.
    pub(crate) at: u64,
    /// How many runs.
    pub(crate) runs: u32,
}

/// Writes a map's inputs before it starts, so a restart can resume it.
pub(crate) fn write_inputs(dir: &TaskDir, inputs: &[Value]) -> std::io::Result<()> {
    use std::io::Write;
    crate::persist::private_dir(dir)?;
    crate::persist::write_atomic(&dir.inputs(), |out| {
        for v in inputs {
            serde_json::to_writer(&mut *out, v)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Streams a map's stored inputs from index `skip` on. A line that does not
/// parse is set aside in the returned [`Unreadable`] with its position (before
/// any later input is sent), to become an `InputUnreadable` error in its slot;
/// the stream ends early only when the file itself cannot be read (the map
/// then fails as incomplete). `given_up`, when set, is the error of the
/// input at `skip`, which is not run again.
pub(crate) fn read_inputs(
    dir: &TaskDir,
    skip: u64,
    given_up: Option<TaskError>,
) -> (BoxStream<'static, Value>, Unreadable) {
    let path = dir.inputs();
    let unreadable = Unreadable::default();
    let skip = match given_up {
        Some(error) => {
            unreadable.push(skip, error);
            skip + 1
        }
        None => skip,
    };
    let set_aside = unreadable.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(error) => {
                tracing::error!(file = %path.display(), %error, "cannot open a map's stored inputs");
                return;
            }
        };
        let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
        let mut line = Vec::new();
        let mut index = 0u64;
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(file = %path.display(), index, %error, "cannot read a map's stored inputs");
                    return;
                }
            }
            index += 1;
            if index <= skip {
                continue;
            }
            match serde_json::from_slice::<Value>(&line) {
                Ok(value) => {
                    if tx.blocking_send(value).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::error!(file = %path.display(), index = index - 1, %error, "unreadable stored map input");
                    set_aside.push(
                        index - 1,
                        TaskError::new(
                            crate::task::ErrorKind::InputUnreadable,
                            format!("the stored input could not be read back: {error}"),
                        ),
                    );
                }
            }
        }
    });
    (
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed(),
        unreadable,
    )
}

impl TaskJob {
    fn task_id(&self) -> TaskId {
        match self {
            TaskJob::Call { task_id, .. } | TaskJob::Map { task_id, .. } => *task_id,
        }
    }
}

/// What the dispatcher's jobs share; it outlives any one dispatcher actor.
pub(crate) struct DispatchShared {
    pub(crate) backend: Arc<dyn ComputeBackend>,
    pub(crate) tracker: Tasks,
    pub(crate) cancels: DashMap<TaskId, CancellationToken>,
    pub(crate) jobs: JobSet,
    pub(crate) shutdown: CancellationToken,
    /// Keeps secret values out of the errors and output tasks leave.
    pub(crate) redact: crate::redact::Redactor,
    /// The output feeds of running tasks, for their followers.
    pub(crate) feeds: LogFeeds,
}

/// The dispatcher: a plain handle that starts each job as a task of its
/// own (no mailbox, no timeout) and cancels them.
#[derive(Clone)]
pub(crate) struct Dispatcher {
    shared: Arc<DispatchShared>,
}

impl Dispatcher {
    pub(crate) fn new(shared: Arc<DispatchShared>) -> Self {
        Dispatcher { shared }
    }

    /// Starts a job. A stop is not a cancel: the token is not a child of
    /// the shutdown token (see `run_job`).
    pub(crate) fn submit(&self, job: TaskJob) {
        let cancel = CancellationToken::new();
        let id = job.task_id();
        self.shared.cancels.insert(id, cancel.clone());
        let shared = self.shared.clone();
        self.shared.jobs.spawn(async move {
            // A panic in a job fails its task rather than leaving it
            // running for ever.
            let run = std::panic::AssertUnwindSafe(run_job(shared.clone(), job, cancel));
            if futures_util::FutureExt::catch_unwind(run).await.is_err() {
                tracing::error!(task_id = %id, "a task's job panicked; the task is failed");
                shared.cancels.remove(&id);
                shared.tracker.finish(
                    id,
                    Finished {
                        status: TaskStatus::Failed,
                        result: None,
                        result_ref: None,
                        error: Some(TaskError::new(
                            crate::task::ErrorKind::InternalError,
                            "the runtime failed while running this task; it was stopped",
                        )),
                        attempts: 1,
                        progress: None,
                    },
                );
            }
        });
    }

    /// Cancels a task; whether it was still running.
    pub(crate) fn cancel(&self, id: TaskId) -> bool {
        self.shared.cancels.get(&id).map(|t| t.cancel()).is_some()
    }
}

async fn run_job(shared: Arc<DispatchShared>, job: TaskJob, cancel: CancellationToken) {
    let id = job.task_id();
    let dir = shared.tracker.store().task_dir(id);
    // Findable by followers before the task is seen to start.
    let feed = logs::publish(&shared.feeds, id);
    let (sink, log_rx) = LogSink::channel();
    let prior_attempts = match &job {
        TaskJob::Call { prior_attempts, .. } | TaskJob::Map { prior_attempts, .. } => {
            *prior_attempts
        }
    };
    let inputs_as = match &job {
        TaskJob::Map { inputs_as, .. } => *inputs_as,
        TaskJob::Call { .. } => InputsAs::Argument,
    };
    let ctx = CallContext {
        cancel: cancel.clone(),
        logs: sink,
        meter: Arc::new(MapMeter::default()),
        prior_attempts,
        inputs_as,
    };
    let work = async {
        match job {
            TaskJob::Call {
                function,
                args,
                kwargs,
                attach,
                ..
            } => run_call(&shared, id, &function, (args, kwargs), attach, ctx).await,
            TaskJob::Map {
                function,
                inputs,
                unreadable,
                total,
                resume,
                ..
            } => {
                run_map(
                    &shared,
                    id,
                    &function,
                    (inputs, unreadable),
                    total,
                    resume,
                    ctx,
                )
                .await
            }
        }
    };
    // The log writer runs beside the work in this same task and ends when the
    // backend drops its log sinks; the task is finished only once its logs are
    // on disk.
    let logs = logs::write_logs(dir, log_rx, shared.redact.clone(), feed);
    tokio::pin!(work, logs);
    let mut logs_done = false;
    let finished = loop {
        tokio::select! {
            biased;
            finished = &mut work => break finished,
            () = &mut logs, if !logs_done => logs_done = true,
            // A graceful stop leaves the task as a crash would: unfinished,
            // its job stored, so the next start resumes it. Recording it as
            // cancelled would lose work a kill -9 keeps.
            () = shared.shutdown.cancelled() => {
                tracing::info!(task_id = %id, "runtime stopping; the task resumes at the next start");
                shared.cancels.remove(&id);
                // Stopped by the operator, not by the task: the attempt it was
                // on is given back, so a restart does not charge it.
                shared.tracker.update(id, TaskUpdate::Interrupted);
                return;
            }
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
    // A failure that ends as the runtime stops is most likely the stop's
    // doing (containers going away): leave the task for the next start
    // rather than record it failed. A result, a cancel asked for, or the
    // function's own error (an exception, a map's failed inputs) stands.
    let stop_caused = |e: &TaskError| {
        use crate::task::ErrorKind as K;
        matches!(
            e.kind,
            K::ContainerCrashed
                | K::ContainerStartFailed
                | K::RuntimeShutdown
                | K::BackendError
                | K::FunctionUndeployed
                | K::Cancelled
                | K::StorageError
        )
    };
    if shared.shutdown.is_cancelled()
        && status != TaskStatus::Completed
        && !cancel.is_cancelled()
        && finished.error.as_ref().is_none_or(stop_caused)
    {
        tracing::info!(task_id = %id, "task interrupted by the stop; it resumes at the next start");
        shared.cancels.remove(&id);
        return;
    }
    shared.tracker.finish(id, finished);
    shared.cancels.remove(&id);
    tracing::debug!(task_id = %id, %status, "task finished");
}

fn backend_error(e: BackendError) -> TaskError {
    use crate::task::ErrorKind;
    let kind = match e {
        BackendError::UnknownFunction(_) => ErrorKind::FunctionNotFound,
        BackendError::Closed => ErrorKind::RuntimeShutdown,
        _ => ErrorKind::BackendError,
    };
    TaskError::new(kind, e.to_string())
}

/// A result nesting deeper than the runtime stores (and reads back) is the
/// input's error, whichever backend produced it.
#[inline]
fn storable(value: Value) -> Result<Value, TaskError> {
    // Scalars, most results, need no walk.
    if matches!(value, Value::Array(_) | Value::Object(_))
        && crate::value::deeper_than(&value, crate::value::MAX_VALUE_DEPTH)
    {
        return Err(TaskError::new(
            crate::task::ErrorKind::ResultTooDeep,
            format!(
                "the result nests arrays/objects more than {} levels deep; at most {} are stored (flatten it, or return it as a string)",
                crate::value::MAX_VALUE_DEPTH,
                crate::value::MAX_VALUE_DEPTH
            ),
        ));
    }
    Ok(value)
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
    let attempt = ctx.prior_attempts + 1;
    let backend = &shared.backend;
    let started = match attach {
        Some(call) => {
            tracing::info!(task_id = %id, call_id = %call, "waiting again for a call started before the restart");
            Ok(call)
        }
        None if !backend.detached_calls(function) => {
            // Runs here, in this job: nothing to keep or wait for apart.
            shared.tracker.update(
                id,
                TaskUpdate::Started {
                    call: None,
                    attempt,
                },
            );
            let outcome = backend.call(function, args, kwargs, ctx).await;
            return finish_call(shared, id, &cancel, outcome).await;
        }
        None => backend.spawn(function, args, kwargs, ctx).await,
    };
    let outcome = match started {
        Err(e) => Err(e),
        Ok(call) => {
            shared.tracker.update(
                id,
                TaskUpdate::Started {
                    call: Some(call.clone()),
                    attempt,
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
    finish_call(shared, id, &cancel, outcome).await
}

/// A call's outcome as its task's end: the result kept (in the record or
/// its files), errors cleaned, a cancel asked for shown as such.
async fn finish_call(
    shared: &DispatchShared,
    id: TaskId,
    cancel: &CancellationToken,
    outcome: Result<CallOutcome, BackendError>,
) -> Finished {
    let (result, attempts) = match outcome {
        Ok(CallOutcome { result, attempts }) => (result.and_then(storable), attempts),
        Err(e) => (Err(backend_error(e)), 1),
    };
    let result = match result {
        Ok(value) => keep_result(shared, id, value).await,
        Err(e) => Err(e),
    };
    let result = result.map_err(|e| e.cleaned(&shared.redact));
    let ((status, error), (result, result_ref)) = match result {
        Ok(kept) => ((TaskStatus::Completed, None), kept),
        Err(_) if cancel.is_cancelled() => (
            (
                TaskStatus::Cancelled,
                Some(TaskError::new(
                    crate::task::ErrorKind::Cancelled,
                    "the task was cancelled",
                )),
            ),
            (None, None),
        ),
        Err(e) => ((TaskStatus::Failed, Some(e)), (None, None)),
    };
    Finished {
        status,
        result,
        result_ref,
        error,
        attempts,
        progress: None,
    }
}

/// Where a call's result is kept: in its record when it is at most
/// [`INLINE_RESULT_BYTES`] as JSON, in the task's `result.json` when larger
/// (written now, fsynced before the journal records the call's end), and
/// nowhere past [`MAX_RESULT_BYTES`] (a `ResultTooLarge` error).
async fn keep_result(
    shared: &DispatchShared,
    id: TaskId,
    value: Value,
) -> Result<(Option<Value>, Option<ResultRef>), TaskError> {
    // Most results are small: those surely under the bound (even with
    // every character escaped) are kept without writing them out.
    if crate::value::surely_within(&value, INLINE_RESULT_BYTES / 8) {
        return Ok((Some(value), None));
    }
    let (value, bytes) = tokio::task::spawn_blocking(move || {
        let bytes = serde_json::to_vec(&value).expect("a JSON value serializes");
        (value, bytes)
    })
    .await
    .map_err(|e| {
        TaskError::new(
            crate::task::ErrorKind::StorageError,
            format!("cannot measure the result: {e}"),
        )
    })?;
    if bytes.len() > MAX_RESULT_BYTES {
        return Err(TaskError::new(
            crate::task::ErrorKind::ResultTooLarge,
            format!(
                "the result is {} bytes as JSON; at most {MAX_RESULT_BYTES} are kept (return less, or write it to a volume and return its path)",
                bytes.len()
            ),
        ));
    }
    if bytes.len() <= INLINE_RESULT_BYTES {
        return Ok((Some(value), None));
    }
    drop(value);
    let dir = shared.tracker.store().task_dir(id);
    let path = dir.result();
    let size = bytes.len() as u64;
    let written = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        crate::persist::private_dir(&dir)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(crate::persist::FILE_MODE)
            .open(dir.result())?
            .write_all(&bytes)
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r);
    if let Err(e) = written {
        return Err(TaskError::new(
            crate::task::ErrorKind::StorageError,
            format!("cannot store the result: {e}"),
        ));
    }
    if let Some(durable) = shared.tracker.store().durable() {
        durable.sync_before_next_fsync(vec![path]);
    }
    Ok((None, Some(ResultRef { bytes: size })))
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

/// Inputs that could not be read, by their position in the map, waiting for
/// their slot in the results.
#[derive(Default)]
pub(crate) struct UnreadableInputs {
    queue: Mutex<std::collections::VecDeque<(u64, TaskError)>>,
    /// How many are queued, so the common case (none) takes no lock.
    queued: std::sync::atomic::AtomicUsize,
}

pub(crate) type Unreadable = Arc<UnreadableInputs>;

impl UnreadableInputs {
    fn push(&self, position: u64, error: TaskError) {
        self.queue.lock().recover().push_back((position, error));
        self.queued
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}

/// The unreadable inputs due at slot `next` (consecutive from it), or all
/// that are left when `all`; advances `next` past them. `None` (the usual
/// case, checked without a lock) when there are none.
#[inline(always)]
fn take_unreadable(
    unreadable: Option<&Unreadable>,
    next: &mut u64,
    all: bool,
) -> Option<Vec<TaskError>> {
    let unreadable = unreadable?;
    if unreadable.queued.load(std::sync::atomic::Ordering::Acquire) == 0 {
        return None;
    }
    Some(take_queued(unreadable, next, all))
}

#[cold]
fn take_queued(unreadable: &UnreadableInputs, next: &mut u64, all: bool) -> Vec<TaskError> {
    let mut due = Vec::new();
    let mut q = unreadable.queue.lock().recover();
    while let Some((at, _)) = q.front() {
        if !all && *at != *next {
            break;
        }
        due.extend(q.pop_front().map(|(_, e)| e));
        unreadable
            .queued
            .fetch_sub(1, std::sync::atomic::Ordering::Release);
        *next += 1;
    }
    due
}

/// Buffers one result (an error of the runtime's own, always small),
/// writing the buffer out when it is full.
async fn push(writer: &mut ResultWriter, value: &Value) -> std::io::Result<()> {
    if writer.buffer(value)? == Buffered::Full {
        writer.flush().await?;
    }
    Ok(())
}

/// The error in a map input's slot when its result is over
/// [`MAX_RESULT_BYTES`].
#[cold]
fn too_large(bytes: usize) -> Value {
    json!({ "error": TaskError::new(
        crate::task::ErrorKind::ResultTooLarge,
        format!("the result is {bytes} bytes as JSON; at most {MAX_RESULT_BYTES} are kept (return less, or write it to a volume and return its path)"),
    ) })
}

async fn run_map(
    shared: &DispatchShared,
    id: TaskId,
    function: &str,
    (inputs, unreadable): (BoxStream<'static, Value>, Option<Unreadable>),
    total: Option<u64>,
    resume: Option<Stored>,
    ctx: CallContext,
) -> Finished {
    let cancel = ctx.cancel.clone();
    let meter = ctx.meter.clone();
    let tracker = &shared.tracker;
    let failed = |error: TaskError, progress| Finished {
        status: TaskStatus::Failed,
        result: None,
        result_ref: None,
        error: Some(error),
        attempts: 1,
        progress,
    };
    let storage = |e: std::io::Error| {
        failed(
            TaskError::new(
                crate::task::ErrorKind::StorageError,
                format!("cannot store results: {e}"),
            ),
            None,
        )
    };
    let dir = tracker.store().task_dir(id);
    let opened = match resume {
        Some(stored) => ResultWriter::resume(&dir, stored).await,
        None => ResultWriter::create(&dir).await,
    };
    let mut writer = match opened {
        Ok(w) => w,
        Err(e) => return storage(e),
    };
    let resume = resume.unwrap_or_default();
    let attempt = ctx.prior_attempts + 1;
    let mut items = match shared.backend.map(function, inputs, ctx).await {
        Ok(items) => items,
        Err(e) => return failed(backend_error(e), None),
    };
    tracker.update(
        id,
        TaskUpdate::Started {
            call: None,
            attempt,
        },
    );
    let mut counts = MapCounts {
        total,
        completed: resume.completed,
        failed: resume.failed,
    };
    // The slot the next result goes to.
    let mut next = resume.count;
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = tick.tick() => {
                match writer.flush().await {
                    Ok(n) => tracker.set_available(id, n),
                    Err(e) => return storage(e),
                }
                tracker.update(id, TaskUpdate::Progress(counts.progress(&meter, false)));
            }
            chunk = items.next() => {
                let Some(chunk) = chunk else { break };
                for MapItem { result, .. } in chunk {
                    // Unreadable inputs just before this one take their slots first.
                    if let Some(due) = take_unreadable(unreadable.as_ref(), &mut next, false) {
                        for e in due {
                            counts.failed += 1;
                            if let Err(e) = push(&mut writer, &json!({ "error": e })).await {
                                return storage(e);
                            }
                        }
                    }
                    let value = match result.and_then(storable) {
                        Ok(v) => {
                            counts.completed += 1;
                            v
                        }
                        Err(e) => {
                            counts.failed += 1;
                            json!({ "error": e.cleaned(&shared.redact) })
                        }
                    };
                    next += 1;
                    let full = match writer.buffer(&value) {
                        Ok(Buffered::Room) => false,
                        Ok(Buffered::Full) => true,
                        Ok(Buffered::TooLarge(bytes)) => {
                            counts.completed -= 1;
                            counts.failed += 1;
                            match writer.buffer(&too_large(bytes)) {
                                Ok(b) => b == Buffered::Full,
                                Err(e) => return storage(e),
                            }
                        }
                        Err(e) => return storage(e),
                    };
                    if full {
                        if let Err(e) = writer.flush().await {
                            return storage(e);
                        }
                    }
                }
            }
        }
    }
    for e in take_unreadable(unreadable.as_ref(), &mut next, true).unwrap_or_default() {
        counts.failed += 1;
        if let Err(e) = push(&mut writer, &json!({ "error": e })).await {
            return storage(e);
        }
    }
    // Every result is written before the map's end is recorded, and fsynced
    // before that record is (the journal's next fsync does these files
    // first), so the map's end costs no disk wait here.
    match writer.flush().await {
        Ok(n) => tracker.set_available(id, n),
        Err(e) => return storage(e),
    }
    if let Some(durable) = tracker.store().durable() {
        durable.sync_before_next_fsync(writer.paths());
    }
    let cancelled = cancel.is_cancelled();
    let mut progress = counts.progress(&meter, !cancelled);
    progress.running = 0;
    progress.pending = progress.total.saturating_sub(progress.done());
    let (status, error) = if cancelled {
        (
            TaskStatus::Cancelled,
            Some(TaskError::new(
                crate::task::ErrorKind::Cancelled,
                "the map was cancelled",
            )),
        )
    } else if progress.done() < progress.total {
        (
            TaskStatus::Failed,
            Some(TaskError::new(
                crate::task::ErrorKind::MapIncomplete,
                format!(
                    "{} of {} inputs have no outcome: their stored inputs could not be read",
                    progress.pending, progress.total
                ),
            )),
        )
    } else if counts.failed > 0 {
        (
            TaskStatus::Failed,
            Some(TaskError::new(
                crate::task::ErrorKind::MapInputsFailed,
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
        result_ref: None,
        error,
        attempts: 1,
        progress: Some(progress),
    }
}

#[cfg(test)]
mod tests;
