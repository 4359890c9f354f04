//! Sandbox sessions: long-lived places where agent-written code runs step by
//! step. A sandbox is a filesystem (its workdir and `/tmp`), a cgroup (its
//! memory and process ceiling), a lifetime and a set of processes; each exec
//! is its own bubblewrap jail over that filesystem (see `jail`), with the
//! isolation functions get and no network unless asked.
//!
//! Lifetimes never surprise: a sandbox ends only for a reason it reports
//! ([`EndReason`]), says `sandbox.expiring` a minute before its lifetime
//! ends, and snapshots its workdir before it ends by expiry or a graceful
//! stop, so no file an agent wrote is lost. Every process ends with one
//! typed [`Outcome`]. Snapshots are content-addressed (`snapshot`), so a fork
//! or a second snapshot of unchanged files costs nothing; two snapshots
//! diff file by file.
//!
//! [`Sandboxes`] is a plain handle over a concurrent map; each sandbox's own
//! watcher task keeps its clocks.

mod exec;
mod files;
mod jail;
mod lifetime;
mod process;
mod quota;
pub(crate) mod snapshot;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Notify, OnceCell};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::compute::local::{images::Images, Bwrap, Confined, PidsGroup};
use crate::redact::Redactor;
use crate::secrets::SecretStore;
use crate::sync::Recover;
use crate::wire::{
    CreateSandbox, EndReason, ListSandboxes, SandboxEnded, SandboxNetwork, SandboxState,
    SandboxView, DEFAULT_SANDBOX_TIMEOUT_S, DEFAULT_WORKDIR, MAX_SANDBOX_TIMEOUT_S,
};

pub use exec::{OutputEvent, MAX_ANSWER_OUTPUT};
pub use process::{OutputChunk, Stream};
pub use snapshot::{SnapshotError, MAX_DIFF_FILE_BYTES, MAX_SNAPSHOT_BYTES, MAX_SNAPSHOT_FILES};

/// Settings of the sandboxes, each with its default.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Live sandboxes at once (default 32); past it a create is refused
    /// with a retry hint, never queued.
    pub max_sandboxes: usize,
    /// Running processes per sandbox (default 64).
    pub max_processes: usize,
    /// Largest file written or read through the files API (default 64 MiB).
    pub max_file_bytes: u64,
    /// Snapshots kept, the oldest deleted first (default 1,000).
    pub max_snapshots: usize,
    /// Ended sandboxes kept in the list (with the output of their last 20
    /// processes), the oldest forgotten first (default 200).
    pub max_ended: usize,
    /// How long before its lifetime ends a sandbox says `sandbox.expiring`
    /// (default 60 s).
    pub expiring_notice: Duration,
    /// The python3 the jails' wrapper runs with (default `python3` from `PATH`).
    pub python: Option<PathBuf>,
    /// The bubblewrap executable (default `bwrap` from `PATH`).
    pub bwrap: Option<PathBuf>,
    /// Bound on building a package environment (default 600 s).
    pub image_build_timeout: Duration,
    /// Output and event streams open at once, over all sandboxes (default
    /// 256); past it a follower is refused with a retry hint.
    pub max_followers: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            max_sandboxes: 32,
            max_processes: 64,
            max_file_bytes: 64 << 20,
            max_snapshots: 1000,
            max_ended: 200,
            expiring_notice: Duration::from_secs(60),
            python: None,
            bwrap: None,
            image_build_timeout: Duration::from_secs(600),
            max_followers: 256,
        }
    }
}

/// Why a sandbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A field holds a value that is not accepted.
    #[error("`{field}`: {message}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// No sandbox has that id.
    #[error("no sandbox `{0}`")]
    Unknown(String),
    /// The sandbox has no process with that id.
    #[error("sandbox `{sandbox}` has no process `{process}`")]
    UnknownProcess {
        /// The sandbox.
        sandbox: String,
        /// The process asked for.
        process: String,
    },
    /// The sandbox has ended: nothing runs or changes in it any more.
    #[error("sandbox `{id}` has ended ({})", .ended.reason)]
    Ended {
        /// The sandbox.
        id: String,
        /// How it ended.
        ended: SandboxEnded,
    },
    /// A live sandbox already has that name.
    #[error("the name `{name}` is held by live sandbox `{holder}`")]
    NameTaken {
        /// The name.
        name: String,
        /// The sandbox holding it.
        holder: String,
    },
    /// As many sandboxes are live as may be.
    #[error("{max} sandboxes are live, the most this runtime runs; terminate one or retry later")]
    AtCapacity {
        /// The ceiling.
        max: usize,
    },
    /// The sandbox's files take more than its disk quota: nothing starts
    /// until some are removed.
    #[error("the sandbox's files take {used_mib} MiB, over its disk quota of {limit_mib} MiB (limits.disk_mib); remove files first (DELETE /sandboxes/{{id}}/files/{{path}})")]
    OverQuota {
        /// What they take, in MiB.
        used_mib: u64,
        /// The quota, in MiB.
        limit_mib: u64,
    },
    /// As many processes run in the sandbox as may.
    #[error("{max} processes run in this sandbox, the most it may run at once")]
    TooManyProcesses {
        /// The ceiling.
        max: usize,
    },
    /// As many streams are followed as may be.
    #[error("{max} sandbox output and event streams are open, the most this runtime serves; retry later")]
    TooManyFollowers {
        /// The ceiling.
        max: usize,
    },
    /// A file is over the files API's limit.
    #[error("the file is {size} bytes; the files API takes at most {max}")]
    FileTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Nothing is at that path (or it is not what was asked for).
    #[error("{0}")]
    NoSuchFile(String),
    /// Sandboxes cannot run here (no bubblewrap, no python3).
    #[error("sandboxes cannot run here: {0}")]
    Unavailable(String),
    /// A snapshot operation failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The runtime is stopping.
    #[error("the runtime is shutting down")]
    ShutDown,
    /// The host failed (a file, a process); logged, not shown.
    #[error("sandbox storage: {0}")]
    Io(#[from] std::io::Error),
}

impl SandboxError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> SandboxError {
        SandboxError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An event of a sandbox's life, as `GET /sandboxes/{id}/events` sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxEvent {
    /// `sandbox.expiring` or `sandbox.ended`.
    pub event: String,
    /// The sandbox as it was then.
    pub sandbox: SandboxView,
}

/// What a sandbox keeps on disk (`record.json`), to be listed after a
/// restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: String,
    request: CreateSandbox,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    workdir: String,
    #[serde(default)]
    ended: Option<SandboxEnded>,
}

/// A sandbox's changing state.
struct Live {
    expires_at: DateTime<Utc>,
    last_active: Instant,
    ended: Option<SandboxEnded>,
    warned: bool,
    processes: std::collections::BTreeMap<u64, Arc<process::Process>>,
    /// What its files took when last measured past the disk quota (MiB);
    /// `None` while under it.
    over_quota: Option<u64>,
}

/// One sandbox.
pub(crate) struct Sandbox {
    id: String,
    request: CreateSandbox,
    created_at: DateTime<Utc>,
    workdir: String,
    /// `sandboxes/ID` on the host: `work/`, `tmp/`, `procs/`, `record.json`.
    host: PathBuf,
    binds: Vec<(PathBuf, String)>,
    read_only: Vec<PathBuf>,
    env: Vec<(String, String)>,
    /// Its cgroup, taken (and removed) when it ends.
    confined: Mutex<Option<Arc<Confined>>>,
    live: Mutex<Live>,
    next_process: AtomicU64,
    /// Wakes its watcher when its clocks change.
    wake: Notify,
    events: broadcast::Sender<SandboxEvent>,
    /// Serializes its end.
    ending: tokio::sync::Mutex<()>,
}

impl Sandbox {
    fn confined(&self) -> Option<Arc<Confined>> {
        self.confined.lock().recover().clone()
    }

    fn ended(&self) -> Option<SandboxEnded> {
        self.live.lock().recover().ended.clone()
    }

    /// Refuses an ended sandbox; else resets its idle clock.
    fn touch(&self) -> Result<(), SandboxError> {
        let mut live = self.live.lock().recover();
        if let Some(ended) = &live.ended {
            return Err(SandboxError::Ended {
                id: self.id.clone(),
                ended: ended.clone(),
            });
        }
        live.last_active = Instant::now();
        drop(live);
        self.wake.notify_one();
        Ok(())
    }

    fn view(&self) -> SandboxView {
        let live = self.live.lock().recover();
        SandboxView {
            sandbox_id: self.id.clone(),
            name: self.request.name.clone(),
            state: if live.ended.is_some() {
                SandboxState::Ended
            } else {
                SandboxState::Running
            },
            backend: "local".into(),
            created_at: self.created_at,
            expires_at: live.expires_at,
            idle_timeout_s: self.request.idle_timeout_s,
            idle_s: (live.last_active.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            workdir: self.workdir.clone(),
            tags: self.request.tags.clone(),
            from_snapshot: self.request.from_snapshot.clone(),
            processes: live
                .processes
                .values()
                .filter(|p| p.is_running())
                .map(|p| p.view())
                .collect(),
            oom_kills: self.confined().map_or(0, |c| c.oom_kills()),
            ended: live.ended.clone(),
        }
    }

    fn record(&self) -> Record {
        let live = self.live.lock().recover();
        Record {
            id: self.id.clone(),
            request: self.request.clone(),
            created_at: self.created_at,
            expires_at: live.expires_at,
            workdir: self.workdir.clone(),
            ended: live.ended.clone(),
        }
    }

    fn save(&self) -> std::io::Result<()> {
        let json = serde_json::to_vec(&self.record()).map_err(std::io::Error::other)?;
        crate::persist::write_atomic(&self.host.join("record.json"), |w| {
            std::io::Write::write_all(w, &json)
        })
    }

    fn work_dir(&self) -> PathBuf {
        self.host.join("work")
    }
}

/// What every jail needs, found once.
struct Env {
    bwrap: Arc<Bwrap>,
    python: PathBuf,
    pids: Option<PidsGroup>,
}

/// A sandbox's place (and name) held while it is made; given back on drop
/// unless `kept`.
struct Reservation {
    shared: Arc<Shared>,
    id: String,
    name: Option<String>,
    kept: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        self.shared.live.fetch_sub(1, Ordering::SeqCst);
        if let Some(name) = &self.name {
            self.shared
                .names
                .remove_if(name, |_, holder| *holder == self.id);
        }
        let dir = self.shared.dir.join(&self.id);
        // What was made of it so far; the runtime may be stopping.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn_blocking(move || std::fs::remove_dir_all(dir));
        }
    }
}

struct Shared {
    config: SandboxConfig,
    dir: PathBuf,
    volumes_dir: Box<dyn Fn(&str) -> PathBuf + Send + Sync>,
    snapshots: snapshot::Store,
    secrets: SecretStore,
    redact: Redactor,
    all: DashMap<String, Arc<Sandbox>>,
    /// Ended sandboxes, oldest first, to forget past `max_ended`.
    ended_order: Mutex<std::collections::VecDeque<String>>,
    names: DashMap<String, String>,
    live: AtomicUsize,
    env: OnceCell<Result<Arc<Env>, String>>,
    images: Images,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    followers: Arc<tokio::sync::Semaphore>,
}

/// The runtime's sandboxes: a plain handle, cheap to clone.
#[derive(Clone)]
pub struct Sandboxes {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Sandboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandboxes")
            .field("dir", &self.shared.dir)
            .field("live", &self.shared.live.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What [`Sandboxes::open`] needs from the runtime.
pub(crate) struct Parts {
    pub(crate) config: SandboxConfig,
    pub(crate) data_dir: PathBuf,
    pub(crate) volumes_dir: Box<dyn Fn(&str) -> PathBuf + Send + Sync>,
    pub(crate) secrets: SecretStore,
    pub(crate) redact: Redactor,
    pub(crate) shutdown: CancellationToken,
}

fn short(text: &str) -> String {
    crate::value::clip(text, crate::value::MAX_ECHO).into_owned()
}

impl Sandboxes {
    /// Opens the sandboxes under `data_dir/sandboxes`: those that were live
    /// when the runtime last stopped are listed as ended
    /// (`runtime_restarted`), their workdirs snapshotted if still there.
    pub(crate) async fn open(parts: Parts) -> std::io::Result<Sandboxes> {
        let dir = parts.data_dir.join("sandboxes");
        let snaps = parts.data_dir.join("snapshots");
        let (d, s) = (dir.clone(), snaps.clone());
        let store = tokio::task::spawn_blocking(move || {
            crate::persist::private_dir(&d)?;
            snapshot::Store::open(s)
        })
        .await
        .map_err(std::io::Error::other)??;
        let sandboxes = Sandboxes {
            shared: Arc::new(Shared {
                config: parts.config.clone(),
                dir,
                volumes_dir: parts.volumes_dir,
                snapshots: store,
                secrets: parts.secrets,
                redact: parts.redact,
                all: DashMap::new(),
                ended_order: Mutex::new(Default::default()),
                names: DashMap::new(),
                live: AtomicUsize::new(0),
                env: OnceCell::new(),
                images: Images::default(),
                followers: Arc::new(tokio::sync::Semaphore::new(parts.config.max_followers)),
                shutdown: parts.shutdown,
                tasks: TaskTracker::new(),
            }),
        };
        let me = sandboxes.clone();
        tokio::task::spawn_blocking(move || me.recover())
            .await
            .map_err(std::io::Error::other)?;
        Ok(sandboxes)
    }

    /// Reads every record; ends what was live (killing any process an
    /// earlier runtime on this data dir left in its sandboxes' groups).
    fn recover(&self) {
        PidsGroup::reclaim(&cgroup_tag(&self.shared.dir));
        let Ok(entries) = std::fs::read_dir(&self.shared.dir) else {
            return;
        };
        let mut found: Vec<Record> = entries
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read(e.path().join("record.json")).ok())
            .filter_map(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
            .collect();
        found.sort_by_key(|r| r.created_at);
        for mut record in found {
            let host = self.shared.dir.join(&record.id);
            if record.ended.is_none() {
                let snapshot_id = if record.request.snapshot_on_end {
                    crate::volume::beneath::Root::existing(&host.join("work"))
                        .ok()
                        .and_then(|root| self.shared.snapshots.take(&record.id, &root).ok())
                        .map(|i| i.snapshot_id)
                } else {
                    None
                };
                record.ended = Some(SandboxEnded {
                    reason: EndReason::RuntimeRestarted,
                    at: Utc::now(),
                    detail: Some("the runtime stopped while this sandbox was live".into()),
                    snapshot_id,
                });
                let _ = std::fs::remove_dir_all(host.join("work"));
                let _ = std::fs::remove_dir_all(host.join("tmp"));
            }
            let sandbox = Arc::new(Sandbox {
                id: record.id.clone(),
                request: record.request.clone(),
                created_at: record.created_at,
                workdir: record.workdir.clone(),
                host,
                binds: Vec::new(),
                read_only: Vec::new(),
                env: Vec::new(),
                confined: Mutex::new(None),
                live: Mutex::new(Live {
                    expires_at: record.expires_at,
                    last_active: Instant::now(),
                    ended: record.ended.clone(),
                    warned: true,
                    processes: Default::default(),
                    over_quota: None,
                }),
                next_process: AtomicU64::new(1),
                wake: Notify::new(),
                events: broadcast::channel(16).0,
                ending: tokio::sync::Mutex::new(()),
            });
            let _ = sandbox.save();
            self.shared.all.insert(record.id.clone(), sandbox);
            self.remember_ended(&record.id);
        }
    }

    /// Keeps `id` among the ended, forgetting (and deleting) the oldest past
    /// the limit.
    fn remember_ended(&self, id: &str) {
        let mut order = self.shared.ended_order.lock().recover();
        order.push_back(id.to_owned());
        while order.len() > self.shared.config.max_ended {
            if let Some(old) = order.pop_front() {
                if let Some((_, sb)) = self.shared.all.remove(&old) {
                    let host = sb.host.clone();
                    self.shared.tasks.spawn_blocking(move || {
                        let _ = std::fs::remove_dir_all(host);
                    });
                }
            }
        }
    }

    async fn env(&self) -> Result<Arc<Env>, SandboxError> {
        let config = &self.shared.config;
        self.shared
            .env
            .get_or_init(|| async {
                let (python, roots) = crate::compute::local::resolve_python(config.python.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                let bwrap = Bwrap::detect(
                    crate::compute::SandboxMode::Required,
                    config.bwrap.as_deref(),
                    &roots,
                )
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "bubblewrap is not available".to_owned())?;
                let pids = PidsGroup::create(&cgroup_tag(&self.shared.dir));
                Ok(Arc::new(Env {
                    bwrap,
                    python,
                    pids,
                }))
            })
            .await
            .clone()
            .map_err(SandboxError::Unavailable)
    }

    fn get(&self, id: &str) -> Result<Arc<Sandbox>, SandboxError> {
        self.shared
            .all
            .get(id)
            .map(|s| s.value().clone())
            .ok_or_else(|| SandboxError::Unknown(short(id)))
    }

    /// How long before its lifetime ends a sandbox says `sandbox.expiring`.
    pub fn expiring_notice(&self) -> Duration {
        self.shared.config.expiring_notice
    }

    /// The largest file the files API reads or writes.
    pub fn max_file_bytes(&self) -> u64 {
        self.shared.config.max_file_bytes
    }

    /// A place for one more follower, or the reason there is none.
    pub(crate) fn follower(&self) -> Result<tokio::sync::OwnedSemaphorePermit, SandboxError> {
        self.shared
            .followers
            .clone()
            .try_acquire_owned()
            .map_err(|_| SandboxError::TooManyFollowers {
                max: self.shared.config.max_followers,
            })
    }

    /// A sandbox as it is now.
    pub fn view(&self, id: &str) -> Result<SandboxView, SandboxError> {
        Ok(self.get(id)?.view())
    }

    /// The sandboxes that pass `filter`, newest first.
    pub fn list(&self, filter: &ListSandboxes) -> Vec<SandboxView> {
        let tag = filter.tag.as_deref().map(|t| match t.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (t.to_owned(), None),
        });
        let mut out: Vec<SandboxView> = self
            .shared
            .all
            .iter()
            .map(|s| s.value().view())
            .filter(|v| filter.state.is_none_or(|s| s == v.state))
            .filter(|v| filter.name.is_none() || v.name == filter.name)
            .filter(|v| match &tag {
                None => true,
                Some((k, want)) => v
                    .tags
                    .get(k)
                    .is_some_and(|have| want.as_ref().is_none_or(|w| w == have)),
            })
            .collect();
        out.sort_by_key(|v| std::cmp::Reverse(v.created_at));
        out
    }

    /// Creates a sandbox.
    pub async fn create(&self, request: CreateSandbox) -> Result<SandboxView, SandboxError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(SandboxError::ShutDown);
        }
        let workdir = validate(&request)?;
        let env = self.env().await?;
        // A place, reserved before any work, so a burst cannot overshoot.
        let max = self.shared.config.max_sandboxes;
        if self.shared.live.fetch_add(1, Ordering::SeqCst) >= max {
            self.shared.live.fetch_sub(1, Ordering::SeqCst);
            return Err(SandboxError::AtCapacity { max });
        }
        let id = format!("sb-{}", uuid::Uuid::new_v4().simple());
        // Given back unless the sandbox is made: on an error, and when the
        // caller goes away mid-way (a client that disconnects during a
        // package build).
        let mut reserved = Reservation {
            shared: self.shared.clone(),
            id: id.clone(),
            name: None,
            kept: false,
        };
        if let Some(name) = &request.name {
            match self.shared.names.entry(name.clone()) {
                dashmap::Entry::Occupied(holder) => {
                    return Err(SandboxError::NameTaken {
                        name: name.clone(),
                        holder: holder.get().clone(),
                    });
                }
                dashmap::Entry::Vacant(v) => {
                    v.insert(id.clone());
                    reserved.name = Some(name.clone());
                }
            }
        }
        let view = self.make(id, request, workdir, env).await?;
        reserved.kept = true;
        Ok(view)
    }

    async fn make(
        &self,
        id: String,
        request: CreateSandbox,
        workdir: String,
        env: Arc<Env>,
    ) -> Result<SandboxView, SandboxError> {
        for (field, mount) in std::iter::once(("workdir".to_owned(), &workdir)).chain(
            request
                .volumes
                .keys()
                .map(|m| (format!("volumes[{:?}]", short(m)), m)),
        ) {
            if env.python.starts_with(mount) {
                return Err(SandboxError::invalid(
                    field,
                    format!(
                        "{mount} would hide the interpreter ({}); choose another path",
                        env.python.display()
                    ),
                ));
            }
        }
        let secret_env = self
            .shared
            .secrets
            .resolve(&request.secrets)
            .map_err(|e| SandboxError::invalid("secrets", e.to_string()))?;
        // A value given to a sandbox stays redacted from its output even
        // after the secret is changed or removed.
        for value in secret_env.values() {
            self.shared.redact.add(value.clone());
        }
        let host = self.shared.dir.join(&id);
        let mut binds = vec![
            (host.join("work"), workdir.clone()),
            (host.join("tmp"), "/tmp".to_owned()),
        ];
        for (mount, name) in &request.volumes {
            binds.push(((self.shared.volumes_dir)(name), mount.clone()));
        }
        let mut read_only = Vec::new();
        let mut path = "/usr/local/bin:/usr/bin:/bin".to_owned();
        if !request.image.python_packages.is_empty() {
            let python = self
                .shared
                .images
                .python_for(
                    &self.shared.dir.with_file_name("sandbox-images"),
                    &env.python,
                    &request.image.python_packages,
                    crate::compute::local::images::Builder {
                        bwrap: Some(&env.bwrap),
                        redact: &self.shared.redact,
                        timeout: self.shared.config.image_build_timeout,
                    },
                )
                .await
                .map_err(|e| SandboxError::invalid("image.python_packages", e.to_string()))?;
            if let Some(bin) = python.parent() {
                path = format!("{}:{path}", bin.display());
                if let Some(root) = bin.parent() {
                    read_only.push(root.to_path_buf());
                }
            }
        }
        {
            let binds = binds.clone();
            let restore = request.from_snapshot.clone();
            let me = self.clone();
            let (work, id2) = (host.join("work"), id.clone());
            tokio::task::spawn_blocking(move || -> Result<(), SandboxError> {
                for (dir, _) in &binds {
                    crate::persist::private_dir(dir)?;
                }
                crate::persist::private_dir(&work.with_file_name("procs"))?;
                if let Some(snap) = restore {
                    let root = crate::volume::beneath::Root::existing(&work)?;
                    me.shared
                        .snapshots
                        .restore(&snap, &root)
                        .map_err(|e| match e {
                            SnapshotError::Unknown(_) => SandboxError::invalid(
                                "from_snapshot",
                                format!("{e}; see GET /snapshots"),
                            ),
                            e => e.into(),
                        })?;
                }
                let _ = id2;
                Ok(())
            })
            .await
            .map_err(std::io::Error::other)??;
        }
        let confined = env.pids.as_ref().and_then(PidsGroup::child).map(Arc::new);
        if let Some(c) = &confined {
            c.limit(request.limits.processes);
            c.limit_memory(request.memory.unwrap_or(2048) << 20);
        }
        let mut vars: Vec<(String, String)> = vec![
            ("PATH".into(), path),
            ("HOME".into(), workdir.clone()),
            ("LANG".into(), "C.UTF-8".into()),
            ("PYTHONUNBUFFERED".into(), "1".into()),
        ];
        vars.extend(secret_env);
        vars.extend(request.env.clone());
        let now = Utc::now();
        let lifetime = request.timeout_s.unwrap_or(DEFAULT_SANDBOX_TIMEOUT_S);
        let sandbox = Arc::new(Sandbox {
            id: id.clone(),
            request,
            created_at: now,
            workdir,
            host,
            binds,
            read_only,
            env: vars,
            confined: Mutex::new(confined),
            live: Mutex::new(Live {
                expires_at: now + chrono::Duration::seconds(lifetime as i64),
                last_active: Instant::now(),
                ended: None,
                warned: false,
                processes: Default::default(),
                over_quota: None,
            }),
            next_process: AtomicU64::new(1),
            wake: Notify::new(),
            events: broadcast::channel(16).0,
            ending: tokio::sync::Mutex::new(()),
        });
        let s = sandbox.clone();
        tokio::task::spawn_blocking(move || s.save())
            .await
            .map_err(std::io::Error::other)??;
        self.shared.all.insert(id, sandbox.clone());
        self.shared
            .tasks
            .spawn(lifetime::watch(self.clone(), sandbox.clone()));
        self.shared
            .tasks
            .spawn(quota::watch(self.shared.shutdown.clone(), sandbox.clone()));
        Ok(sandbox.view())
    }

    /// Ends sandbox `id` (idempotent): its processes are killed, and it is
    /// listed as ended with `reason`.
    pub async fn terminate(&self, id: &str) -> Result<SandboxView, SandboxError> {
        let sandbox = self.get(id)?;
        self.end(&sandbox, EndReason::Terminated, None, false).await;
        Ok(sandbox.view())
    }

    /// Resets the idle clock and adds `extend_s` to the lifetime; a
    /// lifetime past the maximum is refused, never cut.
    pub fn keepalive(&self, id: &str, extend_s: u64) -> Result<SandboxView, SandboxError> {
        let sandbox = self.get(id)?;
        sandbox.touch()?;
        {
            let mut live = sandbox.live.lock().recover();
            let new = live.expires_at
                + chrono::Duration::seconds(extend_s.min(MAX_SANDBOX_TIMEOUT_S) as i64);
            let lifetime = (new - sandbox.created_at).num_seconds().max(0) as u64;
            if lifetime > MAX_SANDBOX_TIMEOUT_S {
                return Err(SandboxError::invalid(
                    "extend_s",
                    format!(
                        "got {extend_s}; the lifetime may not pass {MAX_SANDBOX_TIMEOUT_S} s from \
                         creation, so at most {} more seconds can be added now",
                        MAX_SANDBOX_TIMEOUT_S.saturating_sub(
                            (live.expires_at - sandbox.created_at).num_seconds().max(0) as u64
                        )
                    ),
                ));
            }
            if extend_s > 0 {
                live.expires_at = new;
                // `sandbox.expiring` comes again only once the lifetime has
                // left the notice and comes back into it: a keepalive of a
                // few seconds at a time is not a message each.
                let notice = chrono::Duration::from_std(self.shared.config.expiring_notice)
                    .unwrap_or_default();
                if new - Utc::now() > notice {
                    live.warned = false;
                }
            }
        }
        sandbox.wake.notify_one();
        let s = sandbox.clone();
        self.shared.tasks.spawn_blocking(move || {
            let _ = s.save();
        });
        Ok(sandbox.view())
    }

    /// The events of sandbox `id` from now on (`sandbox.expiring`,
    /// `sandbox.ended`).
    pub fn events(
        &self,
        id: &str,
    ) -> Result<(SandboxView, broadcast::Receiver<SandboxEvent>), SandboxError> {
        let sandbox = self.get(id)?;
        let rx = sandbox.events.subscribe();
        Ok((sandbox.view(), rx))
    }

    /// [`Sandboxes::events`] holding a follower's place (given back when
    /// the permit drops).
    pub(crate) fn follow_events(
        &self,
        id: &str,
    ) -> Result<
        (
            SandboxView,
            broadcast::Receiver<SandboxEvent>,
            tokio::sync::OwnedSemaphorePermit,
        ),
        SandboxError,
    > {
        let (view, rx) = self.events(id)?;
        Ok((view, rx, self.follower()?))
    }

    /// Ends `sandbox` for `reason`, snapshotting its workdir first when
    /// `snapshot` (and it asked for that).
    pub(crate) async fn end(
        &self,
        sandbox: &Arc<Sandbox>,
        reason: EndReason,
        detail: Option<String>,
        snapshot: bool,
    ) {
        let _ending = sandbox.ending.lock().await;
        let processes: Vec<Arc<process::Process>> = {
            let mut live = sandbox.live.lock().recover();
            if live.ended.is_some() {
                return;
            }
            live.ended = Some(SandboxEnded {
                reason,
                at: Utc::now(),
                detail,
                snapshot_id: None,
            });
            live.processes.values().cloned().collect()
        };
        sandbox.wake.notify_one();
        for p in &processes {
            p.stop(process::Stop::SandboxEnded(reason));
        }
        for p in &processes {
            p.wait(Duration::from_secs(10)).await;
        }
        let snapshot_id = if snapshot && sandbox.request.snapshot_on_end {
            let (me, s) = (self.clone(), sandbox.clone());
            tokio::task::spawn_blocking(move || {
                let root = crate::volume::beneath::Root::existing(&s.work_dir()).ok()?;
                match me.shared.snapshots.take(&s.id, &root) {
                    Ok(info) => Some(info.snapshot_id),
                    Err(e) => {
                        tracing::warn!(sandbox = %s.id, error = %e, "the workdir could not be snapshotted as the sandbox ended");
                        None
                    }
                }
            })
            .await
            .ok()
            .flatten()
        } else {
            None
        };
        if let Some(ended) = sandbox.live.lock().recover().ended.as_mut() {
            ended.snapshot_id = snapshot_id;
        }
        let s = sandbox.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = s.save();
            let _ = std::fs::remove_dir_all(s.host.join("work"));
            let _ = std::fs::remove_dir_all(s.host.join("tmp"));
            // The output of its last 20 processes stays readable.
            let mut live = s.live.lock().recover();
            let n = live.processes.len();
            let old: Vec<u64> = live
                .processes
                .keys()
                .take(n.saturating_sub(20))
                .copied()
                .collect();
            for k in old {
                if let Some(p) = live.processes.remove(&k) {
                    let _ = std::fs::remove_file(&p.output);
                }
            }
        })
        .await;
        let confined = sandbox.confined.lock().recover().take();
        if let Some(confined) = confined {
            // Its processes are gone: the last holders drop with their tasks.
            let mut confined = confined;
            for _ in 0..100 {
                match Arc::try_unwrap(confined) {
                    Ok(c) => {
                        c.remove().await;
                        break;
                    }
                    Err(still) => {
                        confined = still;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
        self.shared.live.fetch_sub(1, Ordering::SeqCst);
        if let Some(name) = &sandbox.request.name {
            self.shared
                .names
                .remove_if(name, |_, holder| *holder == sandbox.id);
        }
        self.remember_ended(&sandbox.id);
        let _ = sandbox.events.send(SandboxEvent {
            event: "sandbox.ended".into(),
            sandbox: sandbox.view(),
        });
        tracing::info!(sandbox = %sandbox.id, %reason, "sandbox ended");
        self.prune_snapshots();
    }

    fn prune_snapshots(&self) {
        let me = self.clone();
        self.shared.tasks.spawn_blocking(move || {
            me.shared.snapshots.prune(me.shared.config.max_snapshots);
        });
    }

    /// Ends every live sandbox (`runtime_restarted`, each workdir
    /// snapshotted) and waits for their tasks: the runtime's graceful stop.
    pub(crate) async fn shutdown(&self) {
        let live: Vec<Arc<Sandbox>> = self
            .shared
            .all
            .iter()
            .filter(|s| s.ended().is_none())
            .map(|s| s.value().clone())
            .collect();
        let ends = live.iter().map(|s| {
            self.end(
                s,
                EndReason::RuntimeRestarted,
                Some("the runtime stopped".into()),
                true,
            )
        });
        futures_util::future::join_all(ends).await;
        self.shared.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.shared.tasks.wait()).await;
    }

    /// Snapshots sandbox `id`'s workdir now.
    pub async fn snapshot(&self, id: &str) -> Result<crate::wire::SnapshotInfo, SandboxError> {
        let sandbox = self.get(id)?;
        sandbox.touch()?;
        let me = self.clone();
        let info = tokio::task::spawn_blocking(move || {
            let root = crate::volume::beneath::Root::existing(&sandbox.work_dir())?;
            me.shared
                .snapshots
                .take(&sandbox.id, &root)
                .map_err(SandboxError::from)
        })
        .await
        .map_err(std::io::Error::other)??;
        self.prune_snapshots();
        Ok(info)
    }

    /// `count` new sandboxes from sandbox `id`'s current files, with its
    /// settings (no name: names are unique).
    pub async fn fork(&self, id: &str, count: u32) -> Result<crate::wire::Forked, SandboxError> {
        if !(1..=16).contains(&count) {
            return Err(SandboxError::invalid(
                "count",
                format!("got {count}; expected 1 to 16"),
            ));
        }
        let sandbox = self.get(id)?;
        let snap = self.snapshot(id).await?;
        let mut request = sandbox.request.clone();
        request.name = None;
        request.from_snapshot = Some(snap.snapshot_id.clone());
        let mut made = Vec::new();
        for _ in 0..count {
            match self.create(request.clone()).await {
                Ok(v) => made.push(v),
                Err(e) => {
                    // All or none: the ones made go again.
                    for v in &made {
                        let _ = self.terminate(&v.sandbox_id).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(crate::wire::Forked {
            snapshot_id: snap.snapshot_id,
            sandboxes: made,
        })
    }

    /// Every snapshot, newest first.
    pub async fn snapshots(&self) -> Vec<crate::wire::SnapshotInfo> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.shared.snapshots.list())
            .await
            .unwrap_or_default()
    }

    /// What changed from snapshot `from` to snapshot `to`.
    pub async fn diff(
        &self,
        from: &str,
        to: &str,
    ) -> Result<crate::wire::SnapshotDiff, SandboxError> {
        let (me, a, b) = (self.clone(), from.to_owned(), to.to_owned());
        tokio::task::spawn_blocking(move || me.shared.snapshots.diff(&a, &b, &me.shared.redact))
            .await
            .map_err(std::io::Error::other)?
            .map_err(SandboxError::from)
    }

    /// Deletes a snapshot; false when there was none.
    pub async fn delete_snapshot(&self, id: &str) -> Result<bool, SandboxError> {
        let (me, id) = (self.clone(), id.to_owned());
        tokio::task::spawn_blocking(move || me.shared.snapshots.delete(&id))
            .await
            .map_err(std::io::Error::other)?
            .map_err(SandboxError::from)
    }
}

/// The tag of this data dir's sandbox cgroups: the same across restarts,
/// so a runtime finds (and reclaims) its predecessor's.
fn cgroup_tag(dir: &std::path::Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("sbx-{hex}")
}

/// Checks a create request; the workdir it names.
fn validate(r: &CreateSandbox) -> Result<String, SandboxError> {
    fn range(
        field: &str,
        v: Option<u64>,
        min: u64,
        max: u64,
        unit: &str,
    ) -> Result<(), SandboxError> {
        match v {
            Some(v) if v < min || v > max => Err(SandboxError::invalid(
                field,
                format!("got {v}; expected {min} to {max} {unit} (the maximum is {max}; values are never cut to fit)"),
            )),
            _ => Ok(()),
        }
    }
    range(
        "timeout_s",
        r.timeout_s,
        1,
        MAX_SANDBOX_TIMEOUT_S,
        "seconds",
    )?;
    range(
        "idle_timeout_s",
        r.idle_timeout_s,
        1,
        MAX_SANDBOX_TIMEOUT_S,
        "seconds",
    )?;
    range("memory", r.memory, 64, 262_144, "MiB")?;
    range(
        "limits.processes",
        Some(r.limits.processes.into()),
        8,
        65_536,
        "",
    )?;
    range(
        "limits.open_files",
        Some(r.limits.open_files.into()),
        16,
        1_048_576,
        "",
    )?;
    range(
        "limits.file_size_mib",
        r.limits.file_size_mib,
        1,
        1_048_576,
        "MiB",
    )?;
    range(
        "limits.output_mib",
        Some(r.limits.output_mib),
        1,
        256,
        "MiB",
    )?;
    range(
        "limits.disk_mib",
        Some(r.limits.disk_mib),
        1,
        1_048_576,
        "MiB",
    )?;
    if let Some(cpu) = r.cpu {
        if !(0.125..=64.0).contains(&cpu) {
            return Err(SandboxError::invalid(
                "cpu",
                format!("got {cpu}; expected 0.125 to 64 cores"),
            ));
        }
    }
    if let SandboxNetwork::Allow { allow } = &r.network {
        return Err(SandboxError::invalid(
            "network",
            format!(
                "the local backend grants all network or none (true or false); an allow list ({} entries) cannot be enforced here",
                allow.len()
            ),
        ));
    }
    if r.backend == crate::spec::BackendChoice::Modal {
        return Err(SandboxError::invalid(
            "backend",
            "this runtime runs sandboxes on the local backend; use local or auto",
        ));
    }
    let workdir = r.workdir.clone().unwrap_or_else(|| DEFAULT_WORKDIR.into());
    if r.volumes.contains_key(&workdir) {
        return Err(SandboxError::invalid(
            format!("volumes[{:?}]", short(&workdir)),
            "a volume cannot be mounted at the workdir; mount it elsewhere (the workdir is the sandbox's own)",
        ));
    }
    let mut mounts = r.volumes.clone();
    mounts.insert(workdir.clone(), "workdir".into());
    // The workdir is checked as the mount it is, and named as itself.
    crate::spec::validate_volumes(&mounts).map_err(|e| {
        let e = e.with_field(|f| {
            if f == format!("volumes[{workdir:?}]") {
                "workdir".to_owned()
            } else {
                f.to_owned()
            }
        });
        SandboxError::invalid(e.field().to_owned(), e.detail())
    })?;
    for name in &r.secrets {
        crate::spec::validate_object_name("secrets", name)
            .map_err(|e| SandboxError::invalid("secrets", e.detail()))?;
    }
    if let Some(name) = &r.name {
        crate::spec::validate_object_name("name", name)
            .map_err(|e| SandboxError::invalid("name", e.detail()))?;
    }
    if r.tags.len() > 32
        || r.tags
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 256)
    {
        return Err(SandboxError::invalid(
            "tags",
            "at most 32 tags, keys of 1 to 64 bytes, values of at most 256",
        ));
    }
    crate::spec::validate_python_packages(&r.image.python_packages)
        .map_err(|e| SandboxError::invalid(e.field().to_owned(), e.detail()))?;
    check_env("env", &r.env)?;
    let size: usize = r.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    if size > 512 << 10 {
        return Err(SandboxError::invalid(
            "env",
            format!(
                "{size} bytes of environment; at most {} are accepted",
                512 << 10
            ),
        ));
    }
    Ok(workdir)
}

/// Environment names and values a process can be given.
pub(crate) fn check_env(
    field: &str,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<(), SandboxError> {
    if env.len() > 256 {
        return Err(SandboxError::invalid(
            field,
            format!("got {} variables; expected at most 256", env.len()),
        ));
    }
    for (k, v) in env {
        let wrong = if k.is_empty() || k.len() > 256 {
            Some(format!("a name of {} bytes", k.len()))
        } else if k.contains('=') || k.contains('\0') {
            Some(format!("the name {:?}", short(k)))
        } else if v.contains('\0') {
            Some("a value with a NUL byte".to_owned())
        } else if v.len() > 128 << 10 {
            Some(format!("a value of {} bytes", v.len()))
        } else {
            None
        };
        if let Some(wrong) = wrong {
            return Err(SandboxError::invalid(
                format!("{field}.{}", short(k)),
                format!(
                    "got {wrong}; expected names of 1 to 256 bytes without '=' or NUL, values up to 128 KiB without NUL"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused environment names the variable, what was wrong with it and
    /// what is accepted.
    #[test]
    fn env_errors_say_what_was_sent() {
        let many: std::collections::BTreeMap<String, String> =
            (0..300).map(|i| (format!("V{i}"), "x".into())).collect();
        let e = check_env("env", &many).unwrap_err().to_string();
        assert!(
            e.contains("got 300 variables") && e.contains("at most 256"),
            "{e}"
        );
        let big = [("BIG".to_owned(), "x".repeat(200 << 10))].into();
        let e = check_env("env", &big).unwrap_err().to_string();
        assert!(
            e.contains("env.BIG") && e.contains("a value of 204800 bytes"),
            "{e}"
        );
        let bad = [("A=B".to_owned(), "x".into())].into();
        let e = check_env("env", &bad).unwrap_err().to_string();
        assert!(e.contains("the name \"A=B\""), "{e}");
    }

    /// A bad workdir is named as the workdir (it was checked as a mount and
    /// named `volumes["rel"]`), and a bad mount names its field once.
    #[test]
    fn mount_errors_name_their_field_once() {
        let e = validate(&CreateSandbox {
            workdir: Some("rel".into()),
            ..CreateSandbox::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("`workdir`: got \"rel\"; expected") && !e.contains("volumes"),
            "{e}"
        );
        let e = validate(&CreateSandbox {
            volumes: [("data".to_owned(), "team".to_owned())].into(),
            ..CreateSandbox::default()
        })
        .unwrap_err()
        .to_string();
        assert_eq!(e.matches("volumes[").count(), 1, "{e}");
    }
}
