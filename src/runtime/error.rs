//! Errors of the runtime's handle methods.

use std::path::PathBuf;
use std::time::Duration;

use crate::compute::BackendError;
use crate::secrets::SecretError;
use crate::spec::SpecError;
use crate::supervisor::ChildError;
use crate::task::{TaskError, TaskId};

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The function spec or its code was refused.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A secret is unknown or malformed.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The compute backend failed.
    #[error(transparent)]
    Backend(BackendError),
    /// An argument or input nests too deep to be stored and read back.
    #[error(transparent)]
    TooDeep(#[from] crate::value::TooDeep),
    /// An argument is outside what is accepted.
    #[error("invalid `{field}`: got {value}; expected {expected}")]
    Invalid {
        /// The argument.
        field: String,
        /// What was given.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// No function of that name is deployed.
    #[error("function `{0}` is not deployed")]
    UnknownFunction(String),
    /// No task has that id.
    #[error("no task with id {0}")]
    UnknownTask(TaskId),
    /// Results were asked of a task that is not a map.
    #[error("task {0} is not a map; its result is in its status")]
    NotAMap(TaskId),
    /// The task ran and failed.
    #[error("task {task_id} failed: {error}")]
    TaskFailed {
        /// The task.
        task_id: TaskId,
        /// Why.
        error: TaskError,
    },
    /// The task was cancelled.
    #[error("task {0} was cancelled")]
    Cancelled(TaskId),
    /// A wait ran out of time; the task goes on.
    #[error("task {task_id} did not finish within {waited:?}")]
    WaitTimeout {
        /// The task.
        task_id: TaskId,
        /// How long was waited.
        waited: Duration,
    },
    /// As many followers of task logs as allowed already follow (of this
    /// task, or in all).
    #[error("{} followers already follow {}, the most allowed; stop one, or try again later", .max, match .scope { super::FollowScope::Task(id) => format!("task {id}"), super::FollowScope::Runtime => "task logs on this server".to_owned() })]
    TooManyFollowers {
        /// Of one task, or of all.
        scope: super::FollowScope,
        /// The limit.
        max: usize,
    },
    /// A runtime component is down.
    #[error("runtime component unavailable: {0}")]
    Unavailable(String),
    /// The runtime was shut down.
    #[error("the runtime is shut down")]
    ShutDown,
    /// The data dir cannot be used.
    #[error("data dir {}: {source}", path.display())]
    DataDir {
        /// The path that failed.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Another runtime (a server, another process) uses the data dir.
    #[error("data dir {} is in use by another modal-agents runtime", path.display())]
    DataDirInUse {
        /// The data dir.
        path: PathBuf,
    },
    /// Reading or writing task files failed.
    #[error("task storage failed: {0}")]
    Storage(#[source] std::io::Error),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The supervision tree could not be started.
    #[error("the runtime's actors could not start: {0}")]
    Start(String),
}

impl From<ChildError> for RuntimeError {
    fn from(e: ChildError) -> Self {
        RuntimeError::Unavailable(e.to_string())
    }
}
