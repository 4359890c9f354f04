//! # modal-agents
//!
//! An actor runtime in which agent programs deploy Python functions from code
//! strings and run them on warm local Python containers (or on Modal), one call
//! or a whole parallel map at a time, with every task tracked.
//!
//! ## Layout
//!
//! - [`runtime`](Runtime): the [`Runtime`] handle and its [`RuntimeBuilder`];
//!   start, deploy, spawn, call, map, status, wait, results, cancel, shutdown.
//! - `spec`: [`FunctionSpec`] and its parts ([`Resources`], [`GpuSpec`],
//!   [`ImageSpec`], [`RetryPolicy`], [`Limits`], [`BackendChoice`]), validated
//!   before any backend sees them.
//! - `task`: [`TaskId`], [`TaskStatus`], [`TaskRecord`], [`MapProgress`],
//!   [`TaskError`], [`ResultsPage`].
//! - `compute`: the [`ComputeBackend`] trait, the [`LocalBackend`] (warm
//!   `python3` containers running a harness shipped in the crate, sandboxed
//!   under bubblewrap per [`SandboxMode`]), the [`ModalBackend`] (Modal through
//!   the pinned official SDK, [`ModalConfig`], [`ModalCredentials`]) and the
//!   router that sends each function where its `backend` says.
//! - `secrets`: the [`SecretStore`] functions draw environment variables from;
//!   [`redact`]: the [`Redactor`](redact::Redactor) that keeps every known
//!   secret value out of what the runtime logs or returns.
//! - `supervisor`: the root supervisor and its [`RestartPolicy`]; `registry`,
//!   `tracker` (task records, journal, map results), `dispatcher`, `volume`
//!   ([`Volumes`]: versioned state, files, watches) and `agents`
//!   ([`Agents`]: master, worker, codegen, repo-creator) are its children.
//! - `store`: the redb database of functions, secrets and webhooks.
//! - [`webhooks`]: signed task-completion webhooks, a runtime service
//!   ([`webhooks::Webhooks`]) the HTTP app serves.
//! - `tools`: the seed's agent tools with JSON Schemas ([`Tools`]).
//! - [`api`]: the axum HTTP service; [`client`]: its typed client.
//!
//! ## Example
//!
//! ```no_run
//! use modal_agents::{FunctionSpec, Runtime};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = Runtime::builder().data_dir("/tmp/modal-agents-demo").start().await?;
//! rt.deploy_function(FunctionSpec::new("double", "def double(x):\n    return x * 2\n"))
//!     .await?;
//! assert_eq!(rt.call("double", vec![json!(21)], Default::default()).await?, json!(42));
//! let map = rt.run_parallel("double", (0..100).map(|i| json!(i)).collect()).await?;
//! rt.wait(map, None).await?;
//! let page = rt.results(map, 0, 10).await?;
//! assert_eq!(page.results[3], json!(6));
//! rt.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod agents;
pub mod api;
pub mod client;
mod compute;
mod dispatcher;
mod persist;
pub mod redact;
mod registry;
mod runtime;
mod secrets;
mod spec;
mod store;
mod supervisor;
mod task;
mod tools;
mod tracker;
mod value;
mod volume;
pub mod webhooks;

pub use agents::{
    AgentError, AgentEvent, AgentInfo, AgentKind, AgentTask, Agents, CodeGenerator, CodegenError,
    CodegenHandle, CodegenReport, CodegenTask, ComponentKind, ComponentResult, GeneratedCode,
    HandlerFuture, JobProgress, JobReport, Language, MasterConfig, MasterHandle, RepoConfig,
    RepoCreatorConfig, RepoCreatorHandle, RepoError, RepoResult, TaskHandler, TaskResult,
    TemplateGenerator, WorkerHandle, WorkerStats,
};
pub use compute::{
    app_file, BackendError, CallContext, CallId, CallOutcome, Capacity, ComputeBackend, Deployment,
    GpuDevice, GpuUse, Isolation, LocalBackend, LocalConfig, LogSink, LogStream, MapItem, MapMeter,
    ModalBackend, ModalConfig, ModalCredentials, SandboxMode, SyncReport, Usage, APP_OBJECT,
    MODAL_SDK_VERSION,
};
#[cfg(any(test, feature = "testing"))]
pub use compute::{Script, ScriptedBackend};
pub use registry::FunctionInfo;
pub use runtime::{
    GpuAllocation, ModalStatus, ResourceReport, Retention, Runtime, RuntimeBuilder, RuntimeError,
    DEFAULT_DATA_DIR, DEFAULT_SHUTDOWN_TIMEOUT, MAX_RESULTS_PAGE,
};
pub use secrets::{SecretError, SecretStore};
pub use spec::{
    BackendChoice, FunctionSpec, GpuRequest, GpuSpec, GpuType, ImageSpec, Limits, Resources,
    RetryPolicy, SeedVolumes, SpecError, DEFAULT_TIMEOUT_S, GPU_TYPES,
};
pub use store::StoreError;
pub use supervisor::{ChildError, RestartPolicy, RuntimeChild};
pub use task::{
    ErrorKind, MapProgress, ResultsPage, TaskError, TaskId, TaskKind, TaskLogs, TaskRecord,
    TaskStatus,
};
pub use tools::{ToolDefinition, ToolError, Tools, MAX_INLINE_RESULTS};
pub use value::{TooDeep, MAX_VALUE_DEPTH};
pub use volume::{
    FileStat, Versioned, VolumeChange, VolumeError, VolumeEvent, Volumes, MAX_FILE_BYTES,
    MAX_VALUE_BYTES,
};
