//! Sandbox sessions on the wire: create, exec, processes and their one typed
//! outcome, files, lifetimes, snapshots, forks and diffs. The HTTP routes,
//! the agent tools and the clients all speak these types.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::spec::BackendChoice;

/// Default lifetime of a sandbox, in seconds.
pub const DEFAULT_SANDBOX_TIMEOUT_S: u64 = 300;
/// Longest lifetime a sandbox may have (from create, keepalives included).
pub const MAX_SANDBOX_TIMEOUT_S: u64 = 86_400;
/// Longest an exec or wait request waits for a process to end.
pub const MAX_SANDBOX_WAIT_S: u64 = 55;
/// Default working directory inside a sandbox.
pub const DEFAULT_WORKDIR: &str = "/workspace";

/// What a sandbox's image holds beyond the system's python3.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxImage {
    /// pip requirements, installed into an environment the sandbox's
    /// `python3` uses (built once per set, then cached).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub python_packages: Vec<String>,
}

/// Network access: `false` (the default), `true` (the host's network), or
/// `{allow: [CIDR...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(
    untagged,
    expecting = "false (no network), true (the host's network) or {\"allow\": [\"CIDR\", ...]}"
)]
pub enum SandboxNetwork {
    /// None at all, or all of it.
    All(bool),
    /// Only these networks.
    Allow {
        /// CIDR blocks (`10.0.0.0/8`).
        allow: Vec<String>,
    },
}

impl Default for SandboxNetwork {
    fn default() -> Self {
        SandboxNetwork::All(false)
    }
}

/// Limits on what a sandbox's processes may use together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxLimits {
    /// Processes and threads, 8..=65536 (default 512).
    #[schema(minimum = 8, maximum = 65536)]
    pub processes: u32,
    /// Open files per process, 16..=1048576 (default 4096).
    #[schema(minimum = 16, maximum = 1048576)]
    pub open_files: u32,
    /// Largest file a process may write, in MiB, 1..=1048576 (default: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1048576)]
    pub file_size_mib: Option<u64>,
    /// Most bytes of stdout (and, separately, stderr) kept per process, in
    /// MiB, 1..=256 (default 16); what comes after is counted, not kept.
    #[schema(minimum = 1, maximum = 256)]
    pub output_mib: u64,
    /// MiB its files (workdir and `/tmp`) may take, 1..=1048576 (default
    /// 4096); past it processes end `disk_quota_exceeded`.
    #[schema(minimum = 1, maximum = 1048576)]
    pub disk_mib: u64,
}

/// Default of [`SandboxLimits::disk_mib`].
pub const DEFAULT_SANDBOX_DISK_MIB: u64 = 4096;

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            processes: 512,
            open_files: 4096,
            file_size_mib: None,
            output_mib: 16,
            disk_mib: DEFAULT_SANDBOX_DISK_MIB,
        }
    }
}

fn yes() -> bool {
    true
}

/// A whole number, also when sent as `9.0` (JSON Schema's integers include
/// those).
fn whole<'de, D: serde::Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    use serde::de::Error;
    let n = serde_json::Number::deserialize(d)?;
    let value = n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
            .map(|f| f as u64)
    });
    value
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| D::Error::custom(format!("expected a whole number in range, got {n}")))
}

/// `POST /sandboxes`: a new sandbox. `Default` is `{}` as sent over the
/// wire (so `snapshot_on_end` is true).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// Packages the sandbox's python3 can import.
    #[serde(default)]
    pub image: SandboxImage,
    /// Lifetime in seconds, 1..=86400 (default 300). Never cut silently: a
    /// value past the maximum is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 86400)]
    pub timeout_s: Option<u64>,
    /// Ends the sandbox after this many seconds with no exec, file call or
    /// keepalive, 1..=86400 (default: never idle-ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 86400)]
    pub idle_timeout_s: Option<u64>,
    /// CPU cores, 0.125..=64 (default 1); a weight among sandboxes locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.125, maximum = 64)]
    pub cpu: Option<f64>,
    /// Memory ceiling for all its processes together, in MiB, 64..=262144
    /// (default 2048).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 64, maximum = 262144)]
    pub memory: Option<u64>,
    /// Process, file and output limits.
    #[serde(default)]
    pub limits: SandboxLimits,
    /// Network access (default none).
    #[serde(default)]
    pub network: SandboxNetwork,
    /// Volumes mounted read-write: `{"/data": "volume-name"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, String>,
    /// Secrets whose keys become environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Environment variables of every process.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The working directory, an absolute path (default `/workspace`): what
    /// snapshots keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// A name, unique among live sandboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels to filter by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Where it runs (default auto: locally).
    #[serde(default)]
    pub backend: BackendChoice,
    /// Start from this snapshot's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<String>,
    /// Snapshot the workdir when the sandbox ends by expiry or a graceful
    /// stop of the runtime (default true).
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub snapshot_on_end: bool,
}

impl Default for CreateSandbox {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("every field has a default")
    }
}

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// Being made.
    Starting,
    /// Takes execs and file calls.
    Running,
    /// Over; `ended` says why.
    Ended,
}

/// Why a sandbox ended: always one of these, always reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// `DELETE /sandboxes/{id}` (or `terminate_sandbox`).
    Terminated,
    /// Its lifetime (`timeout_s`, with keepalives) ran out.
    LifetimeExpired,
    /// Nothing touched it for `idle_timeout_s`.
    IdleExpired,
    /// Its memory ceiling was reached with no process left to kill.
    OutOfMemory,
    /// The runtime stopped or restarted while it was live.
    RuntimeRestarted,
    /// The backend running it went away.
    BackendLost,
    /// It could not be made.
    CreateFailed,
}

impl EndReason {
    /// The snake_case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            EndReason::Terminated => "terminated",
            EndReason::LifetimeExpired => "lifetime_expired",
            EndReason::IdleExpired => "idle_expired",
            EndReason::OutOfMemory => "out_of_memory",
            EndReason::RuntimeRestarted => "runtime_restarted",
            EndReason::BackendLost => "backend_lost",
            EndReason::CreateFailed => "create_failed",
        }
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How and when a sandbox ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxEnded {
    /// Why.
    pub reason: EndReason,
    /// When.
    pub at: DateTime<Utc>,
    /// More about it, when there is more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The snapshot of its workdir taken as it ended, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
}

/// How a process ended: one shape, never a bare exit code standing in for
/// a timeout or a kill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// It exited by itself with this code.
    Exited {
        /// The exit code (0..=255).
        code: i32,
    },
    /// A signal ended it (a kill request, or its own doing).
    Signaled {
        /// The signal number.
        signal: i32,
    },
    /// Its own `timeout_s` ran out and it was killed.
    TimedOut {
        /// The timeout, in seconds.
        after_s: f64,
    },
    /// The kernel killed it for memory.
    OutOfMemory,
    /// The sandbox's files passed its disk quota (`limits.disk_mib`) and it
    /// was killed.
    DiskQuotaExceeded {
        /// The quota, in MiB.
        limit_mib: u64,
    },
    /// The sandbox ended while it ran.
    SandboxEnded {
        /// Why the sandbox ended.
        reason: EndReason,
    },
}

impl Outcome {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        matches!(self, Outcome::Exited { code: 0 })
    }
}

/// A process of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Still running.
    Running,
    /// Over; `outcome` says how.
    Ended,
}

/// A process and, once it ended, its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProcessView {
    /// Its id within the sandbox.
    pub process_id: String,
    /// The command.
    pub cmd: Vec<String>,
    /// Running or ended.
    pub state: ProcessState,
    /// How it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Bytes written to stdout so far (kept or not).
    pub stdout_bytes: u64,
    /// Bytes written to stderr so far (kept or not).
    pub stderr_bytes: u64,
}

/// What an exec answers: the process, and its output once it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    /// The process.
    #[serde(flatten)]
    pub process: ProcessView,
    /// Its stdout as UTF-8 (the last 1 MiB), when it ended within the wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// Its stderr as UTF-8 (the last 1 MiB), when it ended within the wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Whether output was left out of `stdout`/`stderr` (read it whole from
    /// the output route).
    #[serde(default)]
    pub truncated: bool,
}

/// `POST /sandboxes/{id}/exec`: run a command in the sandbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The command and its arguments (looked up in `PATH` when not a path).
    #[schema(min_items = 1)]
    pub cmd: Vec<String>,
    /// Written to its stdin, then stdin is closed (unless `stdin_open`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Keep stdin open for `.../stdin` requests (default false: closed once
    /// `stdin` is written).
    #[serde(default)]
    pub stdin_open: bool,
    /// Environment added to the sandbox's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory (default the sandbox's workdir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Kill it after this many seconds, 1..=86400 (default: the sandbox's
    /// lifetime bounds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 86400)]
    pub timeout_s: Option<u64>,
    /// Wait up to this many seconds for it to end, 0..=55 (default 0 over
    /// HTTP, 55 for the `sandbox_exec` tool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 55)]
    pub wait_s: Option<u64>,
}

/// `POST .../processes/{pid}/stdin`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinRequest {
    /// Text to write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Bytes to write, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
    /// Close stdin after writing.
    #[serde(default)]
    pub eof: bool,
}

/// `POST .../processes/{pid}/kill`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KillRequest {
    /// The signal: a number or a name (`TERM`, `SIGKILL`); default KILL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<serde_json::Value>,
}

/// `POST /sandboxes/{id}/keepalive`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveRequest {
    /// Seconds added to the lifetime (0 only resets the idle clock); the
    /// whole lifetime may not pass 86400 s.
    #[serde(default, deserialize_with = "whole")]
    #[schema(minimum = 0, maximum = 86400)]
    pub extend_s: u64,
}

/// `POST /sandboxes/{id}/fork`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// How many new sandboxes, 1..=16 (default 1).
    #[serde(default = "one", deserialize_with = "whole")]
    #[schema(minimum = 1, maximum = 16, default = 1)]
    pub count: u32,
}

fn one() -> u32 {
    1
}

impl Default for ForkRequest {
    fn default() -> Self {
        ForkRequest { count: 1 }
    }
}

/// A sandbox as it is now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxView {
    /// Its id.
    pub sandbox_id: String,
    /// Its name, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Starting, running or ended.
    pub state: SandboxState,
    /// Where it runs.
    pub backend: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When its lifetime ends (later with keepalives).
    pub expires_at: DateTime<Utc>,
    /// Its idle timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
    /// Seconds since the last exec, file call or keepalive.
    pub idle_s: f64,
    /// The working directory inside.
    pub workdir: String,
    /// Its labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// The snapshot it started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<String>,
    /// Processes running now.
    #[serde(default)]
    pub processes: Vec<ProcessView>,
    /// Processes the kernel killed for memory (the sandbox lives on).
    #[serde(default)]
    pub oom_kills: u64,
    /// How it ended, once it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<SandboxEnded>,
}

/// `GET /sandboxes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    /// Newest first.
    pub sandboxes: Vec<SandboxView>,
}

/// Filters of `GET /sandboxes` (and `list_sandboxes`).
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, utoipa::IntoParams,
)]
#[serde(deny_unknown_fields)]
pub struct ListSandboxes {
    /// Only sandboxes in this state: starting, running or ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<SandboxState>,
    /// Only the one with this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only those with this tag, `key=value` (or `key` for any value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// One entry of a sandbox directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxFileEntry {
    /// Its name.
    pub name: String,
    /// Its path inside the sandbox.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`0o644` is 420).
    pub mode: u32,
    /// Last modified.
    pub mtime: DateTime<Utc>,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Whether it is a symbolic link (never followed).
    #[serde(default)]
    pub is_link: bool,
}

/// `GET /sandboxes/{id}/files?path=DIR`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxFileList {
    /// The directory listed.
    pub path: String,
    /// Its entries, by name.
    pub entries: Vec<SandboxFileEntry>,
}

/// A snapshot of a sandbox's workdir.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotInfo {
    /// Its id.
    pub snapshot_id: String,
    /// The sandbox it was taken of.
    pub sandbox_id: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Files in it.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes stored anew (files no earlier snapshot had).
    pub new_bytes: u64,
}

/// `GET /snapshots`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    /// Newest first.
    pub snapshots: Vec<SnapshotInfo>,
}

/// A changed file of a diff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FileChange {
    /// Its path in the workdir.
    pub path: String,
    /// Its size in the first snapshot (none when added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_size: Option<u64>,
    /// Its size in the second (none when removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_size: Option<u64>,
    /// A unified diff, for text files up to 256 KiB on both sides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// `GET /snapshots/{a}/diff/{b}`: what changed from `a` to `b`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotDiff {
    /// The first snapshot.
    pub from: String,
    /// The second.
    pub to: String,
    /// Files only in `to`.
    pub added: Vec<FileChange>,
    /// Files in both with other content or mode.
    pub changed: Vec<FileChange>,
    /// Files only in `from`.
    pub removed: Vec<FileChange>,
}

/// `POST /sandboxes/{id}/fork` answers the new sandboxes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Forked {
    /// The snapshot they start from.
    pub snapshot_id: String,
    /// The new sandboxes.
    pub sandboxes: Vec<SandboxView>,
}

/// A sandbox by id (tool arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxRef {
    /// The sandbox.
    pub sandbox_id: String,
}

/// `sandbox_exec`'s arguments: the sandbox and an [`ExecRequest`]'s fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxExec {
    /// The sandbox.
    pub sandbox_id: String,
    /// The command and its arguments, e.g. ["python3", "-m", "pytest", "-q"]
    /// or ["sh", "-c", "make test"].
    #[schema(min_items = 1)]
    pub cmd: Vec<String>,
    /// Written to its stdin, then stdin is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Environment added to the sandbox's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory (default the sandbox's workdir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Kill it after this many seconds, 1..=86400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 86400)]
    pub timeout_s: Option<u64>,
    /// Wait up to this many seconds for it to end, 0..=55 (default 55).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 55)]
    pub wait_s: Option<u64>,
}

impl SandboxExec {
    /// The sandbox and the exec request.
    pub fn into_parts(self) -> (String, ExecRequest) {
        (
            self.sandbox_id,
            ExecRequest {
                cmd: self.cmd,
                stdin: self.stdin,
                stdin_open: false,
                env: self.env,
                cwd: self.cwd,
                timeout_s: self.timeout_s,
                wait_s: Some(self.wait_s.unwrap_or(MAX_SANDBOX_WAIT_S)),
            },
        )
    }
}

/// `wait_sandbox_process`'s arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxProcessRef {
    /// The sandbox.
    pub sandbox_id: String,
    /// The process.
    pub process_id: String,
    /// Wait up to this many seconds for it to end, 0..=55 (default 55).
    #[serde(default = "wait_default")]
    #[schema(minimum = 0, maximum = 55, default = 55)]
    pub wait_s: u64,
}

fn wait_default() -> u64 {
    MAX_SANDBOX_WAIT_S
}

/// A file of a sandbox (tool arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxFileRef {
    /// The sandbox.
    pub sandbox_id: String,
    /// Workdir-relative, or absolute inside the sandbox.
    pub path: String,
}

/// `write_sandbox_file`'s arguments: `content` (text) or `content_base64`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteSandboxFile {
    /// The sandbox.
    pub sandbox_id: String,
    /// Workdir-relative, or absolute inside the sandbox.
    pub path: String,
    /// The content as text (`text` is accepted too, deprecated).
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "text")]
    pub content: Option<String>,
    /// The content as base64 (`base64` is accepted too, deprecated).
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "base64")]
    pub content_base64: Option<String>,
}

/// A file's content: `content` when it is UTF-8, else `content_base64`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxFileContent {
    /// Its path inside the sandbox.
    pub path: String,
    /// Its size.
    pub size: u64,
    /// The content, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The content as base64, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
}

/// `list_sandbox_files`'s arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListSandboxFiles {
    /// The sandbox.
    pub sandbox_id: String,
    /// The directory (default the workdir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// `keepalive_sandbox`'s arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveSandbox {
    /// The sandbox.
    pub sandbox_id: String,
    /// Seconds added to its lifetime.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 86400)]
    pub extend_s: u64,
}

/// `fork_sandbox`'s arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkSandbox {
    /// The sandbox.
    pub sandbox_id: String,
    /// How many, 1..=16 (default 1).
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 16, default = 1)]
    pub count: u32,
}

/// `diff_snapshots`'s arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiffSnapshots {
    /// The first snapshot.
    pub from: String,
    /// The second.
    pub to: String,
}
