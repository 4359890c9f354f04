//! The wire model: every request and response the HTTP API, the typed
//! [`client`](crate::client), the agent [`Tools`](crate::tools::Tools) and
//! anything else that speaks to agents exchange, defined once, with
//! `Serialize`, `Deserialize` and a schema.
//!
//! The OpenAPI document and the tools' JSON Schemas ([`json_schema`]) are
//! both derived from these types, so a bound or a field written here shows
//! in both; the runtime's own validation ([`FunctionSpec::validate`]) is
//! what enforces it.
//!
//! [`FunctionSpec::validate`]: crate::spec::FunctionSpec

mod deploy;
mod problem;
mod sandbox;
mod schema;
mod state;
mod tasks;
mod tools;

pub use deploy::{DeployRequest, Deployed, FunctionView, ImageConfig, VolumeMounts};
pub use problem::{Problem, ProblemKind};
pub use sandbox::{
    CreateSandbox, DiffSnapshots, EndReason, ExecRequest, ExecResult, FileChange, ForkRequest,
    ForkSandbox, Forked, KeepaliveRequest, KeepaliveSandbox, KillRequest, ListSandboxFiles,
    ListSandboxes, Outcome, ProcessState, ProcessView, SandboxEnded, SandboxExec,
    SandboxFileContent, SandboxFileEntry, SandboxFileList, SandboxFileRef, SandboxImage,
    SandboxLimits, SandboxList, SandboxNetwork, SandboxProcessRef, SandboxRef, SandboxState,
    SandboxView, SnapshotDiff, SnapshotInfo, SnapshotList, StdinRequest, WriteSandboxFile,
    DEFAULT_SANDBOX_DISK_MIB, DEFAULT_SANDBOX_TIMEOUT_S, DEFAULT_WORKDIR, MAX_SANDBOX_TIMEOUT_S,
    MAX_SANDBOX_WAIT_S,
};
pub use schema::{json_schema, output_json_schema};
pub use state::{
    PutState, SecretInfo, StateEntry, Webhook, WebhookAttempt, WebhookRequest, WebhookState,
};
pub use tasks::{
    MapSubmitted, RunParallelRequest, SpawnTaskRequest, TaskList, TaskStatusView, TaskSummary,
    WaitTasksRequest, WaitTasksResult, DEFAULT_WAIT_S, MAX_INLINE_RESULTS,
};
pub use tools::{
    list_limit, CodeLanguage, CoordinateState, FunctionList, GpuTaskResult, ListFunctions,
    ListVolumeFiles, NoArguments, RequestGpuTask, RunCode, RunCodeResult, SpawnParallelTasks,
    StateOperation, StateResult, TaskRef, TaskResultsRequest, ToolDefinition, VolumeFile,
    VolumeFileList, VolumeFileRef, WriteVolumeFile, DEFAULT_LIST_PAGE, DEFAULT_RUN_CODE_TIMEOUT_S,
    MAX_LIST_PAGE, MAX_LIST_PAGE_BYTES, MAX_RUN_CODE_BYTES, MAX_RUN_CODE_TIMEOUT_S,
};

pub(crate) use deploy::wire_field;
pub(crate) use schema::from_json;
