//! Task identity, lifecycle and records.
//!
//! Lifecycle: `pending -> running -> completed | failed | cancelled`. A map is
//! one parent task whose [`MapProgress`] counts its inputs and whose results are
//! read page by page in input order.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

mod kind;
pub(crate) mod time;

pub use kind::ErrorKind;

/// A task's id: a UUID, printed in its hyphenated form.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
#[schema(value_type = String, format = Uuid)]
pub struct TaskId(Uuid);

impl TaskId {
    /// A fresh random id.
    pub fn new() -> TaskId {
        TaskId(Uuid::new_v4())
    }
}

impl Default for TaskId {
    fn default() -> Self {
        TaskId::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(TaskId)
    }
}

/// Where a task is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Accepted, not started.
    Pending,
    /// Running on a backend.
    Running,
    /// Finished with a result.
    Completed,
    /// Finished with an error (for a map: at least one input failed).
    Failed,
    /// Stopped by a cancel request.
    Cancelled,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    /// Whether the task has finished, one way or another.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }

    /// The lowercase name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`Runtime::wait_tasks`](crate::runtime::Runtime::wait_tasks) waits
/// for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WaitMode {
    /// Until every task has finished (the default).
    #[default]
    All,
    /// Until one of them has finished.
    Any,
}

/// A single call, or a map over many inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// One call with args and kwargs.
    Call,
    /// A map over inputs, one call each.
    Map,
}

/// How each input of a map is passed to the function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputsAs {
    /// The input is the one positional argument: `f(input)` (the default).
    #[default]
    Argument,
    /// The input is a list of positional arguments: `f(*input)`, like
    /// Modal's `starmap`.
    Args,
    /// The input is an object of keyword arguments: `f(**input)`.
    Kwargs,
}

impl InputsAs {
    /// Whether it is the default (left out of what is stored).
    pub fn is_argument(&self) -> bool {
        *self == InputsAs::Argument
    }

    /// Whether `input` has the shape this way of passing needs.
    pub fn fits(&self, input: &Value) -> bool {
        match self {
            InputsAs::Argument => true,
            InputsAs::Args => input.is_array(),
            InputsAs::Kwargs => input.is_object(),
        }
    }

    /// What each input must be, for an error.
    pub fn expected(&self) -> &'static str {
        match self {
            InputsAs::Argument => "any JSON value",
            InputsAs::Args => "a list of positional arguments (inputs_as: args)",
            InputsAs::Kwargs => "an object of keyword arguments (inputs_as: kwargs)",
        }
    }
}

/// What went wrong in a task or one map input: `{type, message, traceback}`.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, utoipa::ToSchema,
)]
#[error("{kind}: {message}")]
pub struct TaskError {
    /// The Python exception type (`ValueError`), or a runtime kind such as
    /// `TimeoutError`, `ContainerCrashed`, `ResultNotSerializable`, `Cancelled`.
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub kind: ErrorKind,
    /// Human-readable message.
    pub message: String,
    /// The Python traceback, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
}

/// Longest error message a task keeps (4 KiB); the rest is cut.
pub const MAX_ERROR_MESSAGE: usize = 4 << 10;
/// Longest traceback a task keeps (8 KiB, its end: where the error was
/// raised). Records are kept in memory for their retention, so a failed
/// task costs at most this much more than another.
pub const MAX_TRACEBACK: usize = 8 << 10;

impl TaskError {
    /// This error as the runtime keeps and shows it: every secret value
    /// `redactor` knows replaced, the message cut to [`MAX_ERROR_MESSAGE`]
    /// and the traceback to its last [`MAX_TRACEBACK`] bytes.
    pub(crate) fn cleaned(mut self, redactor: &crate::redact::Redactor) -> TaskError {
        if let ErrorKind::Other(name) = &mut self.kind {
            redactor.redact_in_place(name);
            if name.len() > crate::value::MAX_ECHO {
                *name = crate::value::clip(name, crate::value::MAX_ECHO).into_owned();
            }
        }
        // Redacted before it is cut, so a cut never leaves half a secret.
        redactor.redact_in_place(&mut self.message);
        if self.message.len() > MAX_ERROR_MESSAGE {
            let cut = floor_char(&self.message, MAX_ERROR_MESSAGE);
            let dropped = self.message.len() - cut;
            self.message.truncate(cut);
            self.message
                .push_str(&format!("… [{dropped} more bytes of the message not kept]"));
        }
        if let Some(tb) = &mut self.traceback {
            redactor.redact_in_place(tb);
            if tb.len() > MAX_TRACEBACK {
                let mut start = tb.len() - MAX_TRACEBACK;
                while !tb.is_char_boundary(start) {
                    start += 1;
                }
                *tb = format!(
                    "[traceback cut: its first {start} bytes are not kept]\n{}",
                    &tb[start..]
                );
            }
        }
        self
    }

    /// An error without a traceback.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> TaskError {
        TaskError {
            kind,
            message: message.into(),
            traceback: None,
        }
    }
}

/// The largest character boundary of `s` at most `max`.
fn floor_char(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    cut
}

/// Longest error message a listing shows of a task (1 KiB); its status
/// has the whole error.
pub const LISTED_ERROR_MESSAGE: usize = 1 << 10;

/// Largest result (as JSON) a task record holds itself (4 KiB): a larger
/// one is kept in the task's files and referred to by
/// [`TaskRecord::result_ref`]. Records stay in memory while retention keeps
/// them (up to 100,000 finished tasks), so this bounds what results cost
/// there: 400 MB at most, where 64 KiB allowed 6 GB.
pub const INLINE_RESULT_BYTES: usize = 4 << 10;

/// Largest result (as JSON) a call or a map input may return (64 MiB); a
/// larger one is the input's `ResultTooLarge` error.
pub const MAX_RESULT_BYTES: usize = 64 << 20;

/// A call's result kept in the task's files rather than in its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResultRef {
    /// Its size as JSON, in bytes.
    pub bytes: u64,
}

/// Counts of a map's inputs by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MapProgress {
    /// All inputs (known once the input stream has ended, or given up front).
    pub total: u64,
    /// Not started.
    pub pending: u64,
    /// Sent to a container, not finished.
    pub running: u64,
    /// Finished with a result.
    pub completed: u64,
    /// Finished with an error.
    pub failed: u64,
}

impl MapProgress {
    /// Inputs that finished, either way.
    pub fn done(&self) -> u64 {
        self.completed + self.failed
    }
}

/// Everything known about a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskRecord {
    /// Its id.
    pub task_id: TaskId,
    /// The function it runs.
    pub function_name: String,
    /// Call or map.
    pub kind: TaskKind,
    /// Lifecycle state.
    pub status: TaskStatus,
    /// When it was accepted.
    #[serde(serialize_with = "time::serialize")]
    pub created_at: DateTime<Utc>,
    /// When it started running.
    #[serde(serialize_with = "time::serialize_opt")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    #[serde(serialize_with = "time::serialize_opt")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Attempts made (a call's retries count; a map counts 1).
    pub attempts: u32,
    /// The result of a completed call, when it is at most
    /// [`INLINE_RESULT_BYTES`] as JSON; a larger one is in the task's files
    /// ([`TaskRecord::result_ref`]), read with
    /// [`Runtime::result`](crate::runtime::Runtime::result) or streamed by
    /// `GET /status/{id}`. Map results are read with
    /// [`Runtime::results`](crate::runtime::Runtime::results).
    pub result: Option<Value>,
    /// Where a completed call's result larger than [`INLINE_RESULT_BYTES`]
    /// is: kept in the task's files, not in this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_ref: Option<ResultRef>,
    /// Why it failed.
    pub error: Option<TaskError>,
    /// A map's progress.
    pub progress: Option<MapProgress>,
    /// The backend's own id for the call, when it has one (a Modal FunctionCall id).
    pub backend_call_id: Option<String>,
    /// The backend that call runs on (absent in records written before it
    /// was kept, and for maps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_backend: Option<crate::compute::CallBackend>,
}

impl TaskRecord {
    pub(crate) fn new(function_name: &str, kind: TaskKind, total: Option<u64>) -> TaskRecord {
        TaskRecord {
            task_id: TaskId::new(),
            function_name: function_name.to_owned(),
            kind,
            status: TaskStatus::Pending,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            attempts: 0,
            result: None,
            result_ref: None,
            error: None,
            progress: (kind == TaskKind::Map).then(|| MapProgress {
                total: total.unwrap_or(0),
                pending: total.unwrap_or(0),
                ..MapProgress::default()
            }),
            backend_call_id: None,
            call_backend: None,
        }
    }

    /// The call this task has running on a backend that outlives this
    /// process (Modal), if any: after a restart it is waited for, not run
    /// again.
    pub(crate) fn remote_call(&self) -> Option<crate::compute::CallId> {
        use crate::compute::{CallBackend, CallId};
        let id = self.backend_call_id.as_ref()?;
        match self.call_backend {
            Some(CallBackend::Modal) => Some(CallId::modal(id.clone())),
            Some(CallBackend::Local) => None,
            // Journals from before `call_backend` was kept: local ids were
            // the ones starting `lc-`.
            None => (!id.starts_with("lc-")).then(|| CallId::modal(id.clone())),
        }
    }
}

/// One page of a map's results, in input order. A failed input appears as
/// `{"error": {type, message, traceback}}` in its slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResultsPage {
    /// The results, `results[i]` being input `offset + i`.
    pub results: Vec<Value>,
    /// Index of the first result.
    pub offset: u64,
    /// The page size asked for.
    pub limit: u64,
    /// How many inputs the map has (so far, while its input is still streaming).
    pub total: u64,
    /// Where the next page starts; `None` at the end of a finished map.
    pub next_offset: Option<u64>,
}

/// A task's captured output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskLogs {
    /// What the function printed to stdout.
    pub stdout: String,
    /// What the function printed to stderr.
    pub stderr: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_call_is_known_by_its_backend() {
        use crate::compute::{CallBackend, CallId};
        let mut record = TaskRecord::new("f", TaskKind::Call, None);
        assert_eq!(record.remote_call(), None);
        record.backend_call_id = Some("fc-1".into());
        record.call_backend = Some(CallBackend::Modal);
        assert_eq!(record.remote_call(), Some(CallId::modal("fc-1")));
        // Whatever the id looks like, a local call is not waited for again.
        record.call_backend = Some(CallBackend::Local);
        assert_eq!(record.remote_call(), None);
        // A record journaled before the backend was kept: by its id.
        record.call_backend = None;
        assert_eq!(record.remote_call(), Some(CallId::modal("fc-1")));
        record.backend_call_id = Some("lc-2".into());
        assert_eq!(record.remote_call(), None);
        let old: TaskRecord = serde_json::from_value(serde_json::json!({
            "task_id": record.task_id, "function_name": "f", "kind": "call",
            "status": "running", "created_at": record.created_at, "started_at": null,
            "finished_at": null, "attempts": 1, "result": null, "error": null,
            "progress": null, "backend_call_id": "fc-9"}))
        .unwrap();
        assert_eq!(old.remote_call(), Some(CallId::modal("fc-9")));
    }

    #[test]
    fn ids_round_trip() {
        let id = TaskId::new();
        assert_eq!(id.to_string().parse::<TaskId>().unwrap(), id);
        assert!("nope".parse::<TaskId>().is_err());
    }

    #[test]
    fn error_serializes_with_type_field() {
        let e = TaskError::new(crate::task::ErrorKind::other("ValueError"), "bad");
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"type": "ValueError", "message": "bad"})
        );
    }

    #[test]
    fn terminal_states() {
        assert!(!TaskStatus::Running.is_terminal());
        assert!(TaskStatus::Cancelled.is_terminal());
        assert_eq!(
            serde_json::to_string(&TaskStatus::Completed).unwrap(),
            "\"completed\""
        );
    }
}
