//! Compute backends: where deployed functions actually run.
//!
//! [`ComputeBackend`] is the contract every backend meets: deploy and undeploy,
//! a call with positional and keyword args, an ordered map over a stream of
//! inputs, and spawn / wait / cancel for calls that outlive the request. Values
//! in and out are JSON. [`LocalBackend`] runs functions in warm local `python3`
//! containers; a Modal backend drives Modal's SDK behind the same trait.

pub(crate) mod local;
mod modal;
mod router;
#[cfg(any(test, feature = "testing"))]
mod scripted;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::spec::{FunctionSpec, SpecError};
use crate::task::TaskError;

pub use local::{GpuDevice, GpuUse, LocalBackend, LocalConfig, SandboxMode, Usage};
pub use modal::{
    app_file, ModalBackend, ModalConfig, ModalCredentials, SyncReport, APP_OBJECT,
    MODAL_SDK_VERSION,
};
pub(crate) use router::BackendRouter;
#[cfg(any(test, feature = "testing"))]
pub use scripted::{Script, ScriptedBackend};

/// The backend a spawned call runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallBackend {
    /// A local container: the call dies with this process.
    Local,
    /// Modal: the call goes on there when this process dies.
    Modal,
}

/// A spawned call: the backend it runs on and that backend's own id for it
/// (a Modal FunctionCall id, say). Calls are routed by `backend`, never by
/// the shape of `id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallId {
    /// Where it runs.
    pub backend: CallBackend,
    /// The backend's id for it.
    pub id: String,
}

impl CallId {
    /// A call of the local backend.
    pub fn local(id: impl Into<String>) -> CallId {
        CallId {
            backend: CallBackend::Local,
            id: id.into(),
        }
    }

    /// A Modal FunctionCall.
    pub fn modal(id: impl Into<String>) -> CallId {
        CallId {
            backend: CallBackend::Modal,
            id: id.into(),
        }
    }
}

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id)
    }
}

/// Why a backend operation failed (as opposed to the function failing, which
/// is a [`TaskError`] inside a successful outcome).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The code was refused at deploy: syntax error, missing function, or an
    /// exception while loading.
    #[error(transparent)]
    Code(#[from] SpecError),
    /// The function is not deployed on this backend.
    #[error("function `{0}` is not deployed")]
    UnknownFunction(String),
    /// No spawned call has this id (or its result was already taken).
    #[error("no call with id `{0}`")]
    UnknownCall(CallId),
    /// A container could not be started.
    #[error("could not start a container for `{function}`: {reason}")]
    ContainerStart {
        /// The function.
        function: String,
        /// What went wrong.
        reason: String,
    },
    /// The function's Python packages could not be installed.
    #[error("installing {packages} failed: {log}")]
    Image {
        /// The requirements.
        packages: String,
        /// What the installer said.
        log: String,
    },
    /// The Modal backend has no credentials.
    #[error("Modal credentials are missing: {0}")]
    ModalCredentials(String),
    /// The Modal SDK, `modal deploy` or the bridge to it failed.
    #[error("modal: {0}")]
    Modal(String),
    /// No backend can run the function as asked.
    #[error("{0}")]
    NoBackend(String),
    /// Containers must run sandboxed and cannot be.
    #[error("{0}")]
    Sandbox(String),
    /// The backend was shut down.
    #[error("the compute backend is shut down")]
    Closed,
    /// An I/O failure talking to the backend.
    #[error("backend I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A function to deploy, with what the runtime resolved for it.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// The validated spec.
    pub spec: FunctionSpec,
    /// Environment variables from the spec's secrets. Never logged.
    pub secret_env: BTreeMap<String, String>,
    /// Host directories of the spec's volumes, by mount path.
    pub volume_dirs: BTreeMap<String, PathBuf>,
    /// Secrets the runtime's store does not hold, for a backend with secrets
    /// of its own (Modal's `Secret.from_name`); empty for the local backend.
    pub remote_secrets: Vec<String>,
    /// Start a container now (checking the code) rather than on first use.
    /// False when a restarted runtime re-registers functions it had.
    pub warm: bool,
    /// Keeps secret values out of what the backend passes on from code it
    /// does not trust (package build output).
    pub redact: crate::redact::Redactor,
}

impl Deployment {
    /// `spec` with nothing resolved for it (no secrets, volumes or remote
    /// secrets), started at once: what a backend used on its own needs.
    pub fn new(spec: FunctionSpec) -> Deployment {
        Deployment {
            spec,
            secret_env: BTreeMap::new(),
            volume_dirs: BTreeMap::new(),
            remote_secrets: Vec::new(),
            warm: true,
            redact: crate::redact::Redactor::default(),
        }
    }
}

/// What a backend can run, for capacity planning and `GET /resources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// `local` or `modal`.
    pub backend: String,
    /// CPU cores available to containers.
    pub cpus: f64,
    /// Memory available to containers, in MiB.
    pub memory_mib: u64,
    /// GPUs available (model names).
    pub gpus: Vec<String>,
    /// Containers one function may run at once by default.
    pub default_pool_size: usize,
    /// How containers are kept apart from the machine and from each other.
    pub isolation: Isolation,
}

/// How a backend's containers are isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Not known yet: the local backend looks for bubblewrap when it starts.
    Unknown,
    /// Each container in a bubblewrap sandbox of its own: its own
    /// filesystem view, process, network (unless allowed) and user
    /// namespaces.
    Bubblewrap,
    /// Plain processes, because bubblewrap is not usable here (`--sandbox
    /// auto` fell back, or `off`): code can read what the server's user can,
    /// `limits.network: false` is not enforced, and neither is
    /// `limits.processes` unless a pids cgroup could be made.
    None,
    /// Modal's own sandboxed containers.
    Modal,
}

impl Isolation {
    /// The name reports use: `bubblewrap`, `none`, `modal` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Unknown => "unknown",
            Isolation::Bubblewrap => "bubblewrap",
            Isolation::None => "none",
            Isolation::Modal => "modal",
        }
    }
}

/// The outcome of one call: its result or error, and how many attempts it took.
#[derive(Debug, Clone, PartialEq)]
pub struct CallOutcome {
    /// The function's return value, or why it failed.
    pub result: Result<Value, TaskError>,
    /// Attempts made, retries included.
    pub attempts: u32,
}

/// One map input's outcome, emitted in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct MapItem {
    /// The input's position, from 0.
    pub index: u64,
    /// Its result or error.
    pub result: Result<Value, TaskError>,
    /// Attempts made for this input.
    pub attempts: u32,
}

/// Which stream a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// The function's stdout.
    Stdout,
    /// The function's stderr.
    Stderr,
}

/// Where a backend sends a task's captured output.
#[derive(Debug, Clone)]
pub struct LogSink(Option<mpsc::UnboundedSender<(LogStream, String)>>);

impl LogSink {
    /// A sink that discards everything.
    pub fn discard() -> LogSink {
        LogSink(None)
    }

    /// A sink and the receiver of what is written to it.
    pub fn channel() -> (LogSink, mpsc::UnboundedReceiver<(LogStream, String)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (LogSink(Some(tx)), rx)
    }

    /// Writes a chunk.
    pub fn write(&self, stream: LogStream, text: String) {
        if let Some(tx) = &self.0 {
            let _ = tx.send((stream, text));
        }
    }
}

/// Live counters of a running map, read for its progress.
#[derive(Debug, Default)]
pub struct MapMeter {
    /// Inputs taken from the input stream so far.
    pub submitted: AtomicU64,
    /// Inputs currently in a container.
    pub running: AtomicU64,
}

impl MapMeter {
    /// `(submitted, running)` now.
    pub fn read(&self) -> (u64, u64) {
        (
            self.submitted.load(Ordering::Relaxed),
            self.running.load(Ordering::Relaxed),
        )
    }
}

/// Per-task context a backend gets with a call or map.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// Fires when the task is cancelled; the backend stops and kills its work.
    pub cancel: CancellationToken,
    /// Where captured stdout/stderr goes.
    pub logs: LogSink,
    /// A map's live counters.
    pub meter: Arc<MapMeter>,
    /// Attempts earlier runs of this task used (runs the runtime went down
    /// under): a local call's retries count them. Modal retries on its own
    /// side and starts from zero.
    pub prior_attempts: u32,
    /// How a map passes each input to the function.
    pub inputs_as: crate::task::InputsAs,
}

impl Default for CallContext {
    fn default() -> Self {
        CallContext {
            cancel: CancellationToken::new(),
            logs: LogSink::discard(),
            meter: Arc::default(),
            prior_attempts: 0,
            inputs_as: crate::task::InputsAs::Argument,
        }
    }
}

/// A compute backend. Implementations must be cheap to share (`Arc`).
#[async_trait]
pub trait ComputeBackend: Send + Sync + 'static {
    /// The backend's short name (`local`, `modal`).
    fn name(&self) -> &'static str;

    /// What this backend can run.
    fn capacity(&self) -> Capacity;

    /// The backend a deployed function runs on (`local`, `modal`); a router
    /// over several backends answers per function.
    fn placement(&self, _function: &str) -> &'static str {
        self.name()
    }

    /// Whether a call of `function` can outlive this process (a Modal
    /// FunctionCall does): such calls are started with [`spawn`] and their
    /// id kept, so a restart waits for them instead of running them again.
    /// Other calls run with [`call`], in the task's own job (no id, no
    /// extra task).
    ///
    /// [`spawn`]: ComputeBackend::spawn
    /// [`call`]: ComputeBackend::call
    fn detached_calls(&self, _function: &str) -> bool {
        true
    }

    /// What of `spec` this backend does not enforce where the function was
    /// placed (say, `limits.network: false` without a sandbox), one
    /// sentence each; deploy answers carry them.
    fn unenforced(&self, _spec: &FunctionSpec) -> Vec<String> {
        Vec::new()
    }

    /// Checks, once at runtime start, what the backend needs before any
    /// deploy (a required sandbox, say), so a misconfiguration stops the
    /// start with a clear error rather than failing every deploy later.
    /// `redact` is the runtime's redactor: what the backend itself keeps of
    /// code's output (a container's stderr) goes through it.
    async fn start(&self, redact: &crate::redact::Redactor) -> Result<(), BackendError> {
        let _ = redact;
        Ok(())
    }

    /// Whether a container of `spec` can ever run here; the error names the
    /// resource, what was asked and what exists.
    async fn check_resources(&self, _spec: &FunctionSpec) -> Result<(), SpecError> {
        Ok(())
    }

    /// What is in use and queued now, when the backend tracks it.
    fn usage(&self) -> Option<Usage> {
        None
    }

    /// Deploys (or redeploys) a function. Code errors come back as
    /// [`BackendError::Code`].
    async fn deploy(&self, deployment: Deployment) -> Result<(), BackendError>;

    /// Removes a function; in-flight work on it is stopped.
    async fn undeploy(&self, function: &str) -> Result<(), BackendError>;

    /// Calls the function once with `args` and `kwargs`, retrying per its policy.
    async fn call(
        &self,
        function: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        ctx: CallContext,
    ) -> Result<CallOutcome, BackendError>;

    /// Maps the function over `inputs`, each passed as `ctx.inputs_as` says
    /// (by default as the one argument). The returned stream
    /// yields every input's outcome exactly once, in input order, in chunks of
    /// consecutive items (never empty), holding only a bounded window of inputs
    /// and results in memory. Dropping the stream, or cancelling `ctx.cancel`,
    /// stops the map.
    async fn map(
        &self,
        function: &str,
        inputs: BoxStream<'static, Value>,
        ctx: CallContext,
    ) -> Result<BoxStream<'static, Vec<MapItem>>, BackendError>;

    /// Starts a call in the background and returns its id at once.
    async fn spawn(
        &self,
        function: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        ctx: CallContext,
    ) -> Result<CallId, BackendError>;

    /// Waits for a spawned call and takes its outcome.
    async fn wait(&self, call: &CallId) -> Result<CallOutcome, BackendError>;

    /// Cancels a spawned call; its outcome becomes a `Cancelled` error.
    async fn cancel(&self, call: &CallId) -> Result<(), BackendError>;

    /// Stops everything and releases every container; nothing is left running.
    async fn shutdown(&self);
}
