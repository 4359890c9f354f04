//! The runtime: builder, start and shutdown, and the handle agents use.

mod builder;
mod error;
mod logs;
mod recover;
mod resources;

use crate::sync::Recover;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::stream::{BoxStream, Stream};
use futures_util::StreamExt;
use ractor::ActorRef;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker as JobSet;
use uuid::Uuid;

use std::collections::BTreeMap;

use crate::compute::{BackendError, ComputeBackend, Deployment, ModalBackend};
use crate::dispatcher::{read_logs, write_inputs, Dispatcher, JobSpec, TaskJob};
use crate::registry::Functions;
use crate::secrets::SecretStore;
use crate::spec::{BackendChoice, FunctionSpec};
use crate::store::{put, Store, Table, Write};
use crate::supervisor::{ChildEvents, ChildKey, ChildSpec, RootSupervisorMsg, SuperviseError};
use crate::task::{
    InputsAs, ResultsPage, TaskId, TaskKind, TaskLogs, TaskRecord, TaskStatus, WaitMode,
};
use crate::tracker::{read_page, Durable, Tasks};
use crate::value::{check_depth, check_each};
use crate::volume::Volumes;

pub use crate::registry::FunctionInfo;
pub use crate::store::StoreError;
pub use crate::supervisor::{ChildError, RestartPolicy, RuntimeChild};
pub use crate::tracker::Retention;
pub use crate::value::{TooDeep, MAX_VALUE_DEPTH};
pub use builder::{RuntimeBuilder, DEFAULT_DATA_DIR, DEFAULT_SHUTDOWN_TIMEOUT};
pub use error::RuntimeError;
pub use logs::{FollowLimits, FollowScope, LogChunk, LogOffsets};
pub use resources::{GpuAllocation, ModalStatus, ResourceReport};

/// Most tasks one [`Runtime::wait_tasks`] waits on.
pub const MAX_WAIT_TASKS: usize = 1000;

/// Largest page of map results one read returns.
pub const MAX_RESULTS_PAGE: u64 = 10_000;

/// Most bytes of results (as JSON) one page carries (8 MiB): a page ends
/// before it would pass them, with at least one result, so a map of large
/// results is read in smaller pages.
pub const MAX_PAGE_BYTES: u64 = 8 << 20;

/// How long the runtime waits for its root supervisor to answer.
const SUPERVISOR_TIMEOUT: Duration = Duration::from_secs(10);

/// Services layered on a runtime, one per type ([`Runtime::extension`]).
type Extensions = std::collections::HashMap<std::any::TypeId, Arc<dyn std::any::Any + Send + Sync>>;

/// How long [`Runtime::cancel`] waits for a cancelled task to stop.
const CANCEL_GRACE: Duration = Duration::from_secs(30);

/// A running modal-agents runtime. Cheap to clone; every clone is the same
/// runtime. See the [crate docs](crate) for an example.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    data_dir: PathBuf,
    backend: Arc<dyn ComputeBackend>,
    redactor: crate::redact::Redactor,
    /// The output feeds of running tasks.
    feeds: crate::dispatcher::LogFeeds,
    /// Who follows task logs now, within their limits.
    followers: Arc<logs::Followers>,
    secrets: SecretStore,
    registry: Functions,
    tracker: Tasks,
    dispatcher: Dispatcher,
    store: Arc<Store>,
    modal: Option<Arc<ModalBackend>>,
    durable: Arc<Durable>,
    flusher_stop: CancellationToken,
    volumes: Volumes,
    sandboxes: crate::sandbox::Sandboxes,
    root: ActorRef<RootSupervisorMsg>,
    restart: RestartPolicy,
    /// Services layered on the runtime (the agents' registry, say), one per
    /// type, made on first use and dropped at shutdown.
    extensions: std::sync::Mutex<Extensions>,
    jobs: JobSet,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
    stopped: AtomicBool,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("data_dir", &self.inner.data_dir)
            .field("backend", &self.inner.backend.name())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.flusher_stop.cancel();
        self.shutdown.cancel();
        self.root.stop(None);
    }
}

impl Runtime {
    /// Starts configuring a runtime.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The runtime's database.
    /// Runs `work` as one of the runtime's background jobs: dropped at its
    /// next await when the runtime stops, and waited for by shutdown.
    pub(crate) fn spawn_service(
        &self,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let stop = self.inner.shutdown.clone();
        self.inner.jobs.spawn(async move {
            tokio::select! {
                () = work => {}
                () = stop.cancelled() => {}
            }
        });
    }

    /// Whether the runtime has started to stop.
    pub(crate) fn is_stopping(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// A token cancelled when the runtime starts to stop (for services
    /// layered on it that hold connections open, such as MCP sessions).
    pub(crate) fn stopping(&self) -> CancellationToken {
        self.inner.shutdown.child_token()
    }

    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// Hears of every batch of tasks retention removes.
    pub(crate) fn subscribe_forgotten(&self) -> tokio::sync::broadcast::Receiver<Arc<Vec<TaskId>>> {
        self.inner.tracker.store().subscribe_forgotten()
    }

    /// The directory holding the runtime's tasks, volumes and containers.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The runtime's secrets.
    pub fn secrets(&self) -> &SecretStore {
        &self.inner.secrets
    }

    /// What keeps secret values out of what the runtime returns and logs:
    /// it knows every secret in [`Runtime::secrets`] and the Modal
    /// credentials; add the API tokens and any other value to it.
    pub fn redactor(&self) -> &crate::redact::Redactor {
        &self.inner.redactor
    }

    /// The host directory of volume `name`, as functions that mount it see it.
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.inner.volumes.files_dir(name)
    }

    /// The sandboxes: long-lived sessions for agent-written code.
    pub fn sandboxes(&self) -> &crate::sandbox::Sandboxes {
        &self.inner.sandboxes
    }

    /// The runtime's one `T`, made with `T::default()` on first use: how a
    /// layer above the runtime (the agents) keeps state per runtime without
    /// the runtime knowing it. Dropped at shutdown.
    pub(crate) fn extension<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut map = self.inner.extensions.lock().recover();
        if self.inner.stopped.load(Ordering::SeqCst) {
            // Kept no more once the runtime stops (they may hold it):
            // checked under the lock shutdown empties the map with.
            return Arc::new(T::default());
        }
        let any = map
            .entry(std::any::TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()))
            .clone();
        any.downcast().expect("keyed by its own type")
    }

    /// Adds `spec` under the root supervisor as `key`, with a restart budget
    /// of its own; `events` hears of its restarts and of the supervisor
    /// giving up on it.
    pub(crate) async fn supervise(
        &self,
        key: &str,
        spec: Box<dyn ChildSpec>,
        events: ChildEvents,
    ) -> Result<(), SuperviseError> {
        crate::supervisor::supervise(
            &self.inner.root,
            key.into(),
            spec,
            self.inner.restart,
            events,
        )
        .await
    }

    /// Stops and forgets a child [`Runtime::supervise`] added; whether it
    /// was there.
    pub(crate) async fn unsupervise(&self, key: &str) -> Result<bool, ChildError> {
        let key: Arc<str> = key.into();
        ractor::call_t!(
            self.inner.root,
            RootSupervisorMsg::Unsupervise,
            SUPERVISOR_TIMEOUT.as_millis() as u64,
            key
        )
        .map_err(|_| ChildError::Down("root supervisor".into()))
    }

    /// Makes a child [`Runtime::supervise`] added panic (fault injection).
    pub(crate) fn inject_fault_into(&self, key: &str) {
        let _ = self
            .inner
            .root
            .cast(RootSupervisorMsg::InjectFault(ChildKey::Dynamic(
                key.into(),
            )));
    }

    /// The volumes: versioned state, files and watches shared by agents and
    /// the functions that mount them.
    pub fn volumes(&self) -> &Volumes {
        &self.inner.volumes
    }

    fn ensure_running(&self) -> Result<(), RuntimeError> {
        if self.inner.stopped.load(Ordering::SeqCst) {
            Err(RuntimeError::ShutDown)
        } else {
            Ok(())
        }
    }

    /// Validates, deploys and registers a function. Redeploying a name
    /// replaces the function; its new containers serve calls from then on.
    pub async fn deploy_function(&self, spec: FunctionSpec) -> Result<FunctionInfo, RuntimeError> {
        self.ensure_running()?;
        spec.validate()?;
        let (secret_env, remote_secrets) = self.resolve_secrets(&spec)?;
        let mut volume_dirs = std::collections::BTreeMap::new();
        for (mount, name) in &spec.volumes {
            let dir = self.volume_dir(name);
            let d = dir.clone();
            tokio::task::spawn_blocking(move || crate::persist::private_dir(&d))
                .await
                .map_err(|e| RuntimeError::Storage(std::io::Error::other(e)))?
                .map_err(|source| RuntimeError::DataDir {
                    path: dir.clone(),
                    source,
                })?;
            volume_dirs.insert(mount.clone(), dir);
        }
        self.inner
            .backend
            .deploy(Deployment {
                spec: spec.clone(),
                secret_env,
                volume_dirs,
                remote_secrets,
                warm: true,
                redact: self.inner.redactor.clone(),
            })
            .await
            .map_err(|e| match e {
                // What the code raised while loading may hold a secret it
                // was given: the caller sees it redacted, and bounded.
                BackendError::Code(crate::spec::SpecError::Load { kind, message }) => {
                    let cleaned =
                        crate::task::TaskError::new(crate::task::ErrorKind::other(kind), message)
                            .cleaned(&self.inner.redactor);
                    RuntimeError::Spec(crate::spec::SpecError::Load {
                        kind: cleaned.kind.as_str().to_owned(),
                        message: cleaned.message,
                    })
                }
                BackendError::Code(e) => RuntimeError::Spec(e),
                e => RuntimeError::Backend(e),
            })?;
        let info = FunctionInfo {
            function_id: Uuid::new_v4(),
            function_name: spec.name.clone(),
            backend: self.inner.backend.placement(&spec.name).to_owned(),
            deployed_at: Utc::now(),
            warnings: self.inner.backend.unenforced(&spec),
            spec,
        };
        self.persist(vec![put(
            Table::Functions,
            info.function_name.clone(),
            &info,
        )])
        .await?;
        self.inner.registry.register(info.clone());
        Ok(info)
    }

    /// The function's secret environment from the runtime's store; a function
    /// that may run on Modal may also name secrets that only exist there.
    fn resolve_secrets(
        &self,
        spec: &FunctionSpec,
    ) -> Result<(BTreeMap<String, String>, Vec<String>), RuntimeError> {
        if spec.backend == BackendChoice::Local || self.inner.modal.is_none() {
            return Ok((self.inner.secrets.resolve(&spec.secrets)?, Vec::new()));
        }
        let known = self.inner.secrets.names();
        let (here, remote): (Vec<String>, Vec<String>) = spec
            .secrets
            .iter()
            .cloned()
            .partition(|s| known.contains(s));
        Ok((self.inner.secrets.resolve(&here)?, remote))
    }

    async fn persist(&self, writes: Vec<Write>) -> Result<(), RuntimeError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || store.apply(writes))
            .await
            .map_err(|e| RuntimeError::Storage(std::io::Error::other(e)))?
            .map_err(RuntimeError::Store)
    }

    /// Removes a deployed function and stops its containers.
    pub async fn undeploy_function(&self, name: &str) -> Result<FunctionInfo, RuntimeError> {
        self.ensure_running()?;
        let info = self.inner.registry.remove(name).ok_or_else(|| {
            RuntimeError::UnknownFunction(
                crate::value::clip(name, crate::value::MAX_ECHO).into_owned(),
            )
        })?;
        self.persist(vec![Write::Delete(Table::Functions, name.to_owned())])
            .await?;
        if let Err(e) = self.inner.backend.undeploy(name).await {
            tracing::warn!(function = name, error = %e, "backend undeploy failed");
        }
        Ok(info)
    }

    /// Removes secret `name` (whether it existed); refused while a
    /// deployed function uses it, naming them.
    pub fn remove_secret(&self, name: &str) -> Result<bool, crate::secrets::SecretError> {
        let mut functions: Vec<String> = self
            .functions()
            .into_iter()
            .filter(|f| f.spec.secrets.iter().any(|s| s == name))
            .map(|f| f.function_name)
            .collect();
        if !functions.is_empty() {
            functions.sort();
            return Err(crate::secrets::SecretError::InUse {
                secret: name.to_owned(),
                functions,
            });
        }
        self.secrets().remove(name)
    }

    /// The deployed functions, by name.
    pub fn functions(&self) -> Vec<FunctionInfo> {
        self.inner.registry.list()
    }

    /// One deployed function.
    pub fn function(&self, name: &str) -> Option<FunctionInfo> {
        self.inner.registry.get(name)
    }

    fn require_function(&self, name: &str) -> Result<(), RuntimeError> {
        self.ensure_running()?;
        match self.inner.registry.get(name) {
            Some(_) => Ok(()),
            None => Err(RuntimeError::UnknownFunction(
                crate::value::clip(name, crate::value::MAX_ECHO).into_owned(),
            )),
        }
    }

    async fn submit(
        &self,
        record: TaskRecord,
        job: TaskJob,
        spec: JobSpec,
    ) -> Result<TaskId, RuntimeError> {
        let (id, written) = self.start(record, job, spec)?;
        // The id is answered only once the job is in the journal (a crash
        // before that loses a task nobody was told about).
        written.await;
        Ok(id)
    }

    /// Starts a task while its job is written to the journal; the future
    /// ends once it is.
    fn start(
        &self,
        record: TaskRecord,
        job: TaskJob,
        spec: JobSpec,
    ) -> Result<
        (
            TaskId,
            impl std::future::Future<Output = ()> + Send + 'static,
        ),
        RuntimeError,
    > {
        let id = record.task_id;
        let spec = serde_json::to_value(&spec)
            .map_err(|e| RuntimeError::Storage(std::io::Error::other(e)))?;
        let written = self.inner.tracker.insert(record, Some(spec));
        self.inner.dispatcher.submit(job);
        Ok((id, written))
    }

    /// Starts one call of `function(*args, **kwargs)` and returns its task id.
    pub async fn spawn(
        &self,
        function: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Result<TaskId, RuntimeError> {
        let (record, job, spec) = self.call_of(function, args, kwargs)?;
        self.submit(record, job, spec).await
    }

    /// The record, job and journal entry of one call, its arguments checked.
    fn call_of(
        &self,
        function: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Result<(TaskRecord, TaskJob, JobSpec), RuntimeError> {
        self.require_function(function)?;
        check_each(&args, "args")?;
        for (name, value) in &kwargs {
            check_depth(value, || format!("kwargs.{name}"))?;
        }
        let record = TaskRecord::new(function, TaskKind::Call, None);
        let spec = JobSpec::Call {
            function: function.to_owned(),
            args: args.clone(),
            kwargs: kwargs.clone(),
        };
        let job = TaskJob::Call {
            task_id: record.task_id,
            function: function.to_owned(),
            args,
            kwargs,
            attach: None,
            prior_attempts: 0,
        };
        Ok((record, job, spec))
    }

    /// A completed call's result, wherever it is kept (in its record, or in
    /// its files when larger than
    /// [`INLINE_RESULT_BYTES`](crate::task::INLINE_RESULT_BYTES)); `None`
    /// when it has none (not completed, or a map).
    pub async fn result(&self, id: TaskId) -> Result<Option<Value>, RuntimeError> {
        let record = self.status(id)?;
        if record.result_ref.is_none() {
            return Ok(record.result);
        }
        let path = self.inner.tracker.store().task_dir(id).result();
        tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(path)?;
            serde_json::from_slice(&bytes).map_err(std::io::Error::other)
        })
        .await
        .map_err(|e| RuntimeError::Storage(std::io::Error::other(e)))?
        .map(Some)
        .map_err(RuntimeError::Storage)
    }

    /// Where a completed call's result larger than
    /// [`INLINE_RESULT_BYTES`](crate::task::INLINE_RESULT_BYTES) is kept, to
    /// stream it.
    pub(crate) fn result_path(&self, id: TaskId) -> PathBuf {
        self.inner.tracker.store().task_dir(id).result()
    }

    /// Calls `function(*args, **kwargs)` and waits for its result.
    pub async fn call(
        &self,
        function: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Result<Value, RuntimeError> {
        let (record, job, spec) = self.call_of(function, args, kwargs)?;
        // The answer is the result, not the id: the journal's write runs
        // beside the call and is not waited for (a crash loses the call
        // and its caller alike).
        let (id, _written) = self.start(record, job, spec)?;
        let record = self.wait(id, None).await?;
        match record.status {
            TaskStatus::Completed if record.result_ref.is_some() => {
                Ok(self.result(id).await?.unwrap_or(Value::Null))
            }
            TaskStatus::Completed => Ok(record.result.unwrap_or(Value::Null)),
            TaskStatus::Cancelled => Err(RuntimeError::Cancelled(id)),
            _ => Err(RuntimeError::TaskFailed {
                task_id: id,
                error: record.error.unwrap_or_else(|| {
                    crate::task::TaskError::new(
                        crate::task::ErrorKind::Unknown,
                        "no error recorded",
                    )
                }),
            }),
        }
    }

    /// Maps `function` over `inputs` (one argument each) in parallel and
    /// returns the map's task id. Read results with [`Runtime::results`].
    pub async fn run_parallel(
        &self,
        function: &str,
        inputs: Vec<Value>,
    ) -> Result<TaskId, RuntimeError> {
        self.run_parallel_as(function, inputs, InputsAs::Argument)
            .await
    }

    /// [`Runtime::run_parallel`], each input passed as `inputs_as` says: as
    /// the one argument, as a list of positional arguments (a starmap) or as
    /// an object of keyword arguments. An input of the wrong shape is
    /// refused before anything runs, naming its index.
    pub async fn run_parallel_as(
        &self,
        function: &str,
        inputs: Vec<Value>,
        inputs_as: InputsAs,
    ) -> Result<TaskId, RuntimeError> {
        self.require_function(function)?;
        check_each(&inputs, "inputs")?;
        if let Some((i, bad)) = inputs.iter().enumerate().find(|(_, v)| !inputs_as.fits(v)) {
            return Err(RuntimeError::Invalid {
                field: format!("inputs[{i}]"),
                value: crate::value::clip(&bad.to_string(), 64).into_owned(),
                expected: inputs_as.expected().to_owned(),
            });
        }
        let total = inputs.len() as u64;
        let record = TaskRecord::new(function, TaskKind::Map, Some(total));
        // The inputs go to disk first, so a restart can resume the map.
        let dir = self.inner.tracker.store().task_dir(record.task_id);
        let inputs =
            tokio::task::spawn_blocking(move || write_inputs(&dir, &inputs).map(|()| inputs))
                .await
                .map_err(|e| RuntimeError::Storage(std::io::Error::other(e)))?
                .map_err(RuntimeError::Storage)?;
        let job = TaskJob::Map {
            task_id: record.task_id,
            function: function.to_owned(),
            inputs: futures_util::stream::iter(inputs).boxed(),
            unreadable: None,
            total: Some(total),
            resume: None,
            prior_attempts: 0,
            inputs_as,
        };
        let spec = JobSpec::Map {
            function: function.to_owned(),
            total: Some(total),
            inputs_file: true,
            charged: None,
            inputs_as,
        };
        self.submit(record, job, spec).await
    }

    /// Maps `function` over a stream of inputs, pulled only as fast as the
    /// containers consume them, so a map of any size runs in bounded memory.
    /// `total`, when known, is reported in the progress from the start. Unlike
    /// [`Runtime::run_parallel`], a streamed map's inputs are not stored, so
    /// if the process dies mid-map it is reported failed after the restart.
    pub async fn run_parallel_stream<S>(
        &self,
        function: &str,
        inputs: S,
        total: Option<u64>,
    ) -> Result<TaskId, RuntimeError>
    where
        S: Stream<Item = Value> + Send + 'static,
    {
        self.require_function(function)?;
        let record = TaskRecord::new(function, TaskKind::Map, total);
        let inputs: BoxStream<'static, Value> = inputs.boxed();
        let job = TaskJob::Map {
            task_id: record.task_id,
            function: function.to_owned(),
            inputs,
            unreadable: None,
            total,
            resume: None,
            prior_attempts: 0,
            inputs_as: InputsAs::Argument,
        };
        let spec = JobSpec::Map {
            function: function.to_owned(),
            total,
            inputs_file: false,
            charged: None,
            inputs_as: InputsAs::Argument,
        };
        self.submit(record, job, spec).await
    }

    /// A task's current record.
    pub fn status(&self, id: TaskId) -> Result<TaskRecord, RuntimeError> {
        self.inner
            .tracker
            .get(id)
            .ok_or(RuntimeError::UnknownTask(id))
    }

    /// Tasks, newest first, optionally only those in `status`; returns the
    /// page and how many tasks match in all. A listing never carries
    /// results (read one with [`Runtime::result`] or [`Runtime::status`]),
    /// and errors only in short (a message of at most
    /// [`LISTED_ERROR_MESSAGE`](crate::task::LISTED_ERROR_MESSAGE) bytes, no
    /// traceback), so its size depends on the page, not on what the tasks
    /// returned or raised.
    pub fn tasks(
        &self,
        status: Option<TaskStatus>,
        offset: usize,
        limit: usize,
    ) -> (Vec<TaskRecord>, usize) {
        self.inner.tracker.list(status, offset, limit, false)
    }

    /// [`Runtime::tasks`] with the results their records hold (those of at
    /// most [`INLINE_RESULT_BYTES`](crate::task::INLINE_RESULT_BYTES)).
    pub fn tasks_with_results(
        &self,
        status: Option<TaskStatus>,
        offset: usize,
        limit: usize,
    ) -> (Vec<TaskRecord>, usize) {
        self.inner.tracker.list(status, offset, limit, true)
    }

    /// Waits until the task is completed, failed or cancelled, at most
    /// `timeout` (forever when `None`), and returns its record. A wait ends
    /// with [`RuntimeError::ShutDown`] when the runtime stops; the task then
    /// resumes at the next start.
    pub async fn wait(
        &self,
        id: TaskId,
        timeout: Option<Duration>,
    ) -> Result<TaskRecord, RuntimeError> {
        let mut rx = self
            .inner
            .tracker
            .watch(id)
            .ok_or(RuntimeError::UnknownTask(id))?;
        let shutdown = self.inner.shutdown.clone();
        let until_done = async {
            loop {
                if rx.borrow_and_update().is_terminal() {
                    return Ok(());
                }
                tokio::select! {
                    // A closed channel with a final status is a task that
                    // just ended; closed without one, the runtime is going.
                    changed = rx.changed() => if changed.is_err() && !rx.borrow().is_terminal() {
                        return Err(RuntimeError::ShutDown);
                    },
                    () = shutdown.cancelled() => return Err(RuntimeError::ShutDown),
                }
            }
        };
        match timeout {
            None => until_done.await?,
            Some(t) => tokio::time::timeout(t, until_done).await.map_err(|_| {
                RuntimeError::WaitTimeout {
                    task_id: id,
                    waited: t,
                }
            })??,
        }
        self.status(id)
    }

    /// Waits until every task in `ids` has finished ([`WaitMode::All`]) or
    /// one has ([`WaitMode::Any`]), at most `timeout`, without polling;
    /// returns whether that happened and the tasks' records then, in the
    /// order asked. At most [`MAX_WAIT_TASKS`] ids, each known.
    pub async fn wait_tasks(
        &self,
        ids: &[TaskId],
        mode: WaitMode,
        timeout: Duration,
    ) -> Result<(bool, Vec<TaskRecord>), RuntimeError> {
        if ids.is_empty() || ids.len() > MAX_WAIT_TASKS {
            return Err(RuntimeError::Invalid {
                field: "task_ids".into(),
                value: format!("{} ids", ids.len()),
                expected: format!("1 to {MAX_WAIT_TASKS} task ids"),
            });
        }
        let mut watches = Vec::with_capacity(ids.len());
        for &id in ids {
            let rx = self
                .inner
                .tracker
                .watch(id)
                .ok_or(RuntimeError::UnknownTask(id))?;
            watches.push(rx);
        }
        let holds = |watches: &mut Vec<tokio::sync::watch::Receiver<TaskStatus>>| {
            let mut done = watches
                .iter_mut()
                .map(|rx| rx.borrow_and_update().is_terminal());
            match mode {
                WaitMode::All => done.all(|d| d),
                WaitMode::Any => done.any(|d| d),
            }
        };
        let shutdown = self.inner.shutdown.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        let satisfied = loop {
            if holds(&mut watches) {
                break true;
            }
            // Only unfinished tasks can still change (a finished one's
            // channel is closed).
            let changed = futures_util::future::select_all(
                watches
                    .iter_mut()
                    .filter(|rx| !rx.borrow().is_terminal())
                    .map(|rx| Box::pin(rx.changed())),
            );
            let (timed_out, closed) = tokio::select! {
                (result, _, _) = changed => (false, result.is_err()),
                () = tokio::time::sleep_until(deadline) => (true, false),
                () = shutdown.cancelled() => return Err(RuntimeError::ShutDown),
            };
            // A closed channel is fine when its task just finished (its
            // final status is there); one closed unfinished means the
            // runtime is going away.
            if closed
                && watches
                    .iter()
                    .any(|rx| rx.has_changed().is_err() && !rx.borrow().is_terminal())
            {
                return Err(RuntimeError::ShutDown);
            }
            if timed_out {
                break holds(&mut watches);
            }
        };
        let records = ids
            .iter()
            .map(|&id| self.status(id))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((satisfied, records))
    }

    /// One page of a map's results in input order; a failed input appears as
    /// `{"error": {...}}` in its slot. While the map runs, the page holds what
    /// is finished so far. `limit` is taken between 1 and [`MAX_RESULTS_PAGE`].
    pub async fn results(
        &self,
        id: TaskId,
        offset: u64,
        limit: u64,
    ) -> Result<ResultsPage, RuntimeError> {
        let record = self.status(id)?;
        let Some(progress) = record.progress.filter(|_| record.kind == TaskKind::Map) else {
            return Err(RuntimeError::NotAMap(id));
        };
        let limit = limit.clamp(1, MAX_RESULTS_PAGE);
        let available = self.inner.tracker.available(id);
        let dir = self.inner.tracker.store().task_dir(id);
        let results = if available > offset && limit > 0 {
            tokio::task::spawn_blocking(move || {
                read_page(dir, offset, limit, available, MAX_PAGE_BYTES)
            })
            .await
            .map_err(|e| RuntimeError::Storage(std::io::Error::other(e)))?
            .map_err(RuntimeError::Storage)?
        } else {
            Vec::new()
        };
        let end = offset + results.len() as u64;
        let finished_short = record.status.is_terminal() && end >= available;
        let next_offset = (end < progress.total && !finished_short).then_some(end);
        Ok(ResultsPage {
            results,
            offset,
            limit,
            total: progress.total,
            next_offset,
        })
    }

    /// What a task printed.
    pub async fn logs(&self, id: TaskId) -> Result<TaskLogs, RuntimeError> {
        self.status(id)?;
        let dir = self.inner.tracker.store().task_dir(id);
        read_logs(&dir).await.map_err(RuntimeError::Storage)
    }

    /// Cancels a task and waits (up to 30 s) until it has stopped; returns its
    /// final record. Cancelling a finished task changes nothing.
    pub async fn cancel(&self, id: TaskId) -> Result<TaskRecord, RuntimeError> {
        let record = self.status(id)?;
        if record.status.is_terminal() {
            return Ok(record);
        }
        self.inner.dispatcher.cancel(id);
        match self.wait(id, Some(CANCEL_GRACE)).await {
            Err(RuntimeError::WaitTimeout { .. }) => self.status(id),
            other => other,
        }
    }

    /// How many times the supervisor has restarted one of the runtime's
    /// own children ([`RuntimeChild`]); agents count theirs in
    /// [`AgentInfo::restarts`](crate::agents::AgentInfo::restarts).
    pub async fn restarts(&self) -> Result<u64, RuntimeError> {
        let own = ractor::call_t!(self.inner.root, RootSupervisorMsg::Restarts, 5_000)
            .map_err(|_| RuntimeError::Unavailable("root supervisor".into()))?;
        Ok(own + self.inner.volumes.open_volumes().restarts())
    }

    /// Fault injection for chaos tests: makes a runtime child panic
    /// ([`RuntimeChild::Volumes`]: every open volume's actor). The
    /// supervisor restarts it per its [`RestartPolicy`].
    pub fn inject_fault(&self, child: RuntimeChild) {
        match child {
            RuntimeChild::Volumes => self.inner.volumes.open_volumes().inject_panics(),
        }
    }

    /// Whether the supervision tree is up (false after shutdown, or after a
    /// child failed more often than the restart policy allows).
    pub fn is_running(&self) -> bool {
        !self.inner.stopped.load(Ordering::SeqCst)
            && matches!(
                self.inner.root.get_status(),
                ractor::ActorStatus::Starting | ractor::ActorStatus::Running
            )
    }

    /// Stops gracefully, within the builder's
    /// [`shutdown_timeout`](RuntimeBuilder::shutdown_timeout) for running
    /// work: waits in progress end with [`RuntimeError::ShutDown`], running
    /// tasks are left unfinished exactly as a crash would leave them (the
    /// next start on the same data dir resumes them), every record is written
    /// and fsynced, every container is killed and reaped, and the actors
    /// stop. Idempotent.
    pub async fn shutdown(&self) {
        if self.inner.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!("runtime shutting down");
        // Sandboxes first: each workdir is snapshotted while the runtime
        // can still write.
        self.inner.sandboxes.shutdown().await;
        self.inner.shutdown.cancel();
        self.inner.jobs.close();
        if tokio::time::timeout(self.inner.shutdown_timeout, self.inner.jobs.wait())
            .await
            .is_err()
        {
            tracing::warn!("tasks still running after the shutdown bound");
        }
        self.inner.backend.shutdown().await;
        let _ = self
            .inner
            .root
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        // Every record as it ended, on disk before we return.
        self.inner.durable.flush(self.inner.tracker.store()).await;
        self.inner.flusher_stop.cancel();
        self.inner.store.close();
        // Services layered on the runtime may hold it (a task handler that
        // captured it, say); dropping them breaks that cycle.
        let extensions = std::mem::take(&mut *self.inner.extensions.lock().recover());
        drop(extensions);
        tracing::info!("runtime stopped");
    }
}
