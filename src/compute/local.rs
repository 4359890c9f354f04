//! The local backend: warm `python3` containers on this machine.
//!
//! Each deployed function gets a pool of containers, each a `python3`
//! process running the harness shipped in this crate, which loads the code once
//! and then serves calls and map batches over framed JSON on its stdin/stdout.
//! Containers run in their own process group with a clean environment (only
//! `PATH`, `HOME`, `LANG`, the function's secrets and `MODAL_AGENTS_*`), in a
//! work directory of their own, and die with the runtime.
//!
//! Sandbox: where bubblewrap works ([`SandboxMode`], default `auto`), every
//! container runs under it (see [`sandbox`](self::sandbox)): read-only system,
//! private `/tmp`, no network unless `limits.network` is true, only the
//! function's working directory and volumes writable, volumes at their mount
//! paths. Limits (`limits.*`) are rlimits set by the harness before the code
//! loads, plus a pids cgroup per container where one can be made.
//!
//! Volumes: sandboxed code opens `/data/...` as on Modal. Unsandboxed, a
//! function finds each volume's host directory through the
//! `MODAL_AGENTS_VOLUMES` environment variable (set in both cases), a JSON
//! object from mount path to directory:
//! `json.loads(os.environ["MODAL_AGENTS_VOLUMES"])["/data"]`.

mod budget;
mod cgroup;
mod container;
mod env;
pub(crate) mod images;
mod map;
mod marshal;
mod pool;
mod protocol;
mod sandbox;
mod scaledown;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use futures_util::stream::BoxStream;
use serde_json::{Map, Value};
use tokio::sync::{Mutex as AsyncMutex, OnceCell};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::budget::Budget;

pub(crate) use self::cgroup::{Confined, PidsGroup};
use self::container::{Launcher, LauncherArgs, LiveSet, StartError};
pub(crate) use self::env::resolve_python;
use self::env::{base_env, cores, function_env, total_memory_mib};
use self::pool::{cancelled_error, AttemptError, Pool, MAX_LOST};
use self::protocol::{call_request, decode_call_reply, Output};
pub(crate) use self::sandbox::{Bwrap, Jail};

pub use self::budget::{GpuDevice, GpuUse, Usage};
pub use self::sandbox::SandboxMode;
use super::{
    BackendError, CallContext, CallId, CallOutcome, Capacity, ComputeBackend, Deployment,
    Isolation, LogSink, LogStream, MapItem,
};
use crate::sync::Recover;
use crate::task::TaskError;

/// Settings of the local backend.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The Python interpreter (default: `python3` from `PATH`, resolved once to
    /// the real executable so shims such as pyenv's cost nothing per container).
    pub python: Option<PathBuf>,
    /// Containers per function unless its spec's `max_concurrency` says
    /// otherwise (default: the number of cores).
    pub pool_size: usize,
    /// Where containers get their working directories (default: a
    /// `containers` directory under the runtime's data dir).
    pub work_dir: PathBuf,
    /// Largest map batch sent to one container (default 16384).
    pub max_batch: usize,
    /// How long a map batch should take; batch sizes adapt towards it
    /// (default 20 ms).
    pub target_batch: Duration,
    /// The GPUs containers may use (default: what `nvidia-smi` lists).
    pub gpus: Option<Vec<GpuDevice>>,
    /// Blank containers (interpreter started, no code loaded) kept ready so a
    /// deploy, or a pool growing under load, skips the interpreter's start-up
    /// (default 1; 0 disables). Sandboxed containers are started per
    /// function (their mounts differ), so they have no standby.
    pub standby: usize,
    /// Whether containers run under bubblewrap (default [`SandboxMode::Auto`]).
    pub sandbox: SandboxMode,
    /// The bubblewrap executable (default: `bwrap` from `PATH`).
    pub bwrap: Option<PathBuf>,
    /// Longest a package environment build may take before it is stopped and
    /// the deploy fails (default 15 minutes).
    pub image_build_timeout: Duration,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            python: None,
            pool_size: std::thread::available_parallelism().map_or(2, |n| n.get()),
            work_dir: std::env::temp_dir().join("modal-agents").join("containers"),
            max_batch: 16_384,
            target_batch: Duration::from_millis(20),
            standby: 1,
            gpus: None,
            sandbox: SandboxMode::Auto,
            bwrap: None,
            image_build_timeout: Duration::from_secs(15 * 60),
        }
    }
}

struct SpawnedCall {
    cancel: CancellationToken,
    handle: AsyncMutex<Option<JoinHandle<CallOutcome>>>,
}

/// Runs functions in warm local `python3` containers. See the module docs.
pub struct LocalBackend {
    config: LocalConfig,
    runtime_tag: String,
    launcher: OnceCell<Arc<Launcher>>,
    /// The sandbox, once detected (`None` inside: unsandboxed).
    bwrap: std::sync::OnceLock<Option<Arc<Bwrap>>>,
    budget: OnceCell<Arc<Budget>>,
    /// Launchers of interpreters in package environments (no standby).
    env_launchers: DashMap<PathBuf, Arc<Launcher>>,
    images: images::Images,
    functions: DashMap<String, Arc<Pool>>,
    /// Every pool, for retiring idle containers; swept from the first deploy.
    warm: Arc<scaledown::Warm>,
    sweeping: std::sync::atomic::AtomicBool,
    calls: DashMap<CallId, Arc<SpawnedCall>>,
    live: Arc<LiveSet>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// The runtime's redactor (from [`ComputeBackend::start`]): containers'
    /// stderr is kept only through it.
    redact: Arc<std::sync::OnceLock<crate::redact::Redactor>>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("config", &self.config)
            .field("functions", &self.functions.len())
            .finish_non_exhaustive()
    }
}

impl LocalBackend {
    /// A backend with the given settings. Containers start on first deploy.
    pub fn new(config: LocalConfig) -> LocalBackend {
        LocalBackend {
            config,
            runtime_tag: uuid::Uuid::new_v4().simple().to_string(),
            launcher: OnceCell::new(),
            bwrap: std::sync::OnceLock::new(),
            budget: OnceCell::new(),
            env_launchers: DashMap::new(),
            images: images::Images::default(),
            functions: DashMap::new(),
            warm: Arc::default(),
            sweeping: std::sync::atomic::AtomicBool::new(false),
            calls: DashMap::new(),
            live: Arc::default(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            redact: Arc::default(),
        }
    }

    /// A tag in every container's command line (`modal-agents-container <tag>
    /// <function>`), unique to this backend, for finding its processes.
    pub fn instance_tag(&self) -> &str {
        &self.runtime_tag
    }

    /// Blank containers ready for the next deploy or pool growth.
    pub fn standby_ready(&self) -> usize {
        self.launcher
            .get()
            .map_or(0, |l| l.standby.lock().recover().len())
    }

    /// Process ids of the containers alive now.
    pub fn container_pids(&self) -> Vec<u32> {
        self.live.pids()
    }

    async fn launcher(&self) -> Result<&Arc<Launcher>, BackendError> {
        self.launcher
            .get_or_try_init(|| async {
                let (python, roots) = resolve_python(self.config.python.clone()).await?;
                tokio::fs::create_dir_all(&self.config.work_dir).await?;
                let bwrap =
                    Bwrap::detect(self.config.sandbox, self.config.bwrap.as_deref(), &roots)
                        .await?;
                let standby = if bwrap.is_some() {
                    0
                } else {
                    self.config.standby
                };
                let _ = self.bwrap.set(bwrap);
                let pids = PidsGroup::create(&self.runtime_tag).map(Arc::new);
                Ok::<_, BackendError>(Arc::new(Launcher::new(LauncherArgs {
                    python,
                    runtime_tag: self.runtime_tag.clone(),
                    base_env: base_env(),
                    cwd: self.config.work_dir.clone(),
                    live: self.live.clone(),
                    standby,
                    jail: None,
                    pids,
                    redact: self.redact.clone(),
                })))
            })
            .await
    }

    /// Whether containers run sandboxed; `None` until the first deploy (or
    /// [`ComputeBackend::start`]) has looked for bubblewrap.
    pub fn sandboxed(&self) -> Option<bool> {
        self.bwrap.get().map(Option::is_some)
    }

    async fn budget(&self) -> &Arc<Budget> {
        self.budget
            .get_or_init(|| async {
                let gpus = match &self.config.gpus {
                    Some(g) => g.clone(),
                    None => budget::detect_gpus().await,
                };
                Budget::new(cores(), total_memory_mib(), gpus)
            })
            .await
    }

    /// Python environments built by this backend so far.
    pub fn image_builds(&self) -> u64 {
        self.images.builds()
    }

    /// The launcher for a function: the base one, one for its package
    /// environment, or (sandboxed) one of its own with its mounts.
    async fn launcher_for(
        &self,
        d: &Deployment,
        cwd: &Path,
    ) -> Result<Arc<Launcher>, BackendError> {
        let base = self.launcher().await?;
        let packages = &d.spec.image.python_packages;
        let bwrap = self.bwrap.get().cloned().flatten();
        if packages.is_empty() && bwrap.is_none() {
            return Ok(base.clone());
        }
        let python = if packages.is_empty() {
            base.python.clone()
        } else {
            let root = self.config.work_dir.with_file_name("images");
            self.images
                .python_for(
                    &root,
                    &base.python,
                    packages,
                    images::Builder {
                        bwrap: bwrap.as_ref(),
                        redact: &d.redact,
                        timeout: self.config.image_build_timeout,
                    },
                )
                .await?
        };
        let args = LauncherArgs {
            python: python.clone(),
            runtime_tag: base.runtime_tag.clone(),
            base_env: base.base_env.clone(),
            cwd: base.cwd.clone(),
            live: self.live.clone(),
            standby: 0,
            jail: None,
            pids: base.pids.clone(),
            redact: self.redact.clone(),
        };
        let Some(bwrap) = bwrap else {
            return Ok(self
                .env_launchers
                .entry(python)
                .or_insert_with(|| Arc::new(Launcher::new(args)))
                .clone());
        };
        let mut binds = vec![(cwd.to_path_buf(), cwd.display().to_string())];
        binds.extend(
            d.volume_dirs
                .iter()
                .map(|(mount, dir)| (dir.clone(), mount.clone())),
        );
        // A package environment's interpreter: bin/python inside its root.
        let read_only = match python.parent().and_then(Path::parent) {
            Some(env) if !packages.is_empty() => vec![env.to_path_buf()],
            _ => Vec::new(),
        };
        let jail = Jail {
            bwrap,
            binds,
            read_only,
            network: d.spec.limits.allows_network(),
            gpu: d.spec.resources.gpu.is_some(),
        };
        Ok(Arc::new(Launcher::new(LauncherArgs {
            jail: Some(jail),
            ..args
        })))
    }

    fn pool(&self, function: &str) -> Result<Arc<Pool>, BackendError> {
        if self.shutdown.is_cancelled() {
            return Err(BackendError::Closed);
        }
        self.functions
            .get(function)
            .map(|p| p.clone())
            .ok_or_else(|| BackendError::UnknownFunction(function.to_owned()))
    }
}

/// Runs a call, retrying per the function's policy. An attempt is charged
/// only when the call ran (or can never run): a container lost before it
/// took the call in is replaced without counting, up to [`MAX_LOST`] times.
async fn call_with_retries(pool: Arc<Pool>, frame: Vec<u8>, ctx: CallContext) -> CallOutcome {
    let policy = pool.spec.retries.clone();
    let mut attempts = ctx.prior_attempts;
    let mut lost = 0;
    loop {
        let error = match call_once(&pool, &frame, &ctx).await {
            Ok(value) => {
                return CallOutcome {
                    result: Ok(value),
                    attempts: attempts + 1,
                }
            }
            Err(AttemptError::Lost(e)) if lost < MAX_LOST && !ctx.cancel.is_cancelled() => {
                lost += 1;
                tracing::debug!(function = %pool.spec.name, lost, error = %e, "container lost before the call ran; starting another");
                continue;
            }
            Err(e) => e.into_error(),
        };
        attempts += 1;
        if error.kind == crate::task::ErrorKind::Cancelled || attempts > policy.max_retries {
            return CallOutcome {
                result: Err(error),
                attempts,
            };
        }
        tracing::debug!(function = %pool.spec.name, attempts, %error, "retrying call");
        tokio::select! {
            () = tokio::time::sleep(policy.delay(attempts)) => {}
            () = ctx.cancel.cancelled() => {
                return CallOutcome { result: Err(cancelled_error()), attempts };
            }
        }
    }
}

async fn call_once(
    pool: &Arc<Pool>,
    frame: &[u8],
    ctx: &CallContext,
) -> Result<Value, AttemptError> {
    let mut lease = pool.acquire(&ctx.cancel).await?;
    ctx.meter
        .running
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let reply = tokio::select! {
        reply = lease.request(frame, 1, pool.timeout(), &ctx.logs) => reply,
        () = ctx.cancel.cancelled() => Err(cancelled_error().into()),
    };
    ctx.meter
        .running
        .store(0, std::sync::atomic::Ordering::Relaxed);
    let (result, output) = match decode_call_reply(&reply?) {
        Ok(decoded) => decoded,
        Err(malformed) => {
            lease.discard();
            return Err(AttemptError::Failed(malformed));
        }
    };
    drop(lease);
    write_output(&ctx.logs, output);
    result.map_err(AttemptError::Failed)
}

pub(crate) fn write_output(logs: &LogSink, output: Output) {
    if let Some(text) = output.stdout {
        logs.write(LogStream::Stdout, text);
    }
    if let Some(text) = output.stderr {
        logs.write(LogStream::Stderr, text);
    }
}

#[async_trait]
impl ComputeBackend for LocalBackend {
    /// Local calls die with the process: they run in their task's job.
    fn detached_calls(&self, _function: &str) -> bool {
        false
    }

    fn name(&self) -> &'static str {
        "local"
    }

    fn capacity(&self) -> Capacity {
        Capacity {
            backend: "local".into(),
            cpus: cores(),
            memory_mib: total_memory_mib(),
            gpus: self
                .budget
                .get()
                .map(|b| b.devices().into_iter().map(|d| d.name).collect())
                .unwrap_or_default(),
            default_pool_size: self.config.pool_size,
            isolation: match self.sandboxed() {
                None => Isolation::Unknown,
                Some(true) => Isolation::Bubblewrap,
                Some(false) => Isolation::None,
            },
        }
    }

    fn unenforced(&self, spec: &crate::spec::FunctionSpec) -> Vec<String> {
        if self.sandboxed() != Some(false) {
            return Vec::new();
        }
        let mut unenforced = Vec::new();
        if spec.limits.network != Some(true) {
            unenforced.push(
                "limits.network: this server runs functions without a sandbox (bubblewrap is not usable here), so the function's network is not blocked".to_owned(),
            );
        }
        let pids = self
            .launcher
            .get()
            .and_then(|l| l.pids.as_ref())
            .is_some_and(|g| g.limits_processes());
        if !pids {
            unenforced.push(format!(
                "limits.processes ({}): without a sandbox or a pids cgroup the process limit is not enforced per container",
                spec.limits.processes
            ));
        }
        unenforced.push(
            "isolation: without a sandbox the function can read and write whatever this server's user can".to_owned(),
        );
        unenforced
    }

    async fn check_resources(
        &self,
        spec: &crate::spec::FunctionSpec,
    ) -> Result<(), crate::spec::SpecError> {
        self.budget().await.check(spec)
    }

    fn usage(&self) -> Option<Usage> {
        self.budget.get().map(|b| b.usage())
    }

    async fn start(&self, redact: &crate::redact::Redactor) -> Result<(), BackendError> {
        let _ = self.redact.set(redact.clone());
        // Whether containers will be sandboxed is known (and said) from the
        // start; only a required sandbox failing stops the start.
        match self.launcher().await {
            Ok(_) => Ok(()),
            Err(e) if self.config.sandbox == SandboxMode::Required => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "the local backend cannot start containers yet");
                Ok(())
            }
        }
    }

    async fn deploy(&self, d: Deployment) -> Result<(), BackendError> {
        if self.shutdown.is_cancelled() {
            return Err(BackendError::Closed);
        }
        let spec = d.spec.clone();
        let cwd = self.config.work_dir.join(&spec.name);
        tokio::fs::create_dir_all(&cwd).await?;
        let launcher = self.launcher_for(&d, &cwd).await?;
        let sandboxed = launcher.jail.is_some();
        let budget = self.budget().await.clone();
        budget.check(&spec)?;
        let size = spec
            .max_concurrency
            .map_or(self.config.pool_size, |n| n as usize)
            .max(1);
        let pool = Arc::new(Pool::new(
            spec.clone(),
            function_env(&d, sandboxed),
            cwd,
            size,
            launcher,
            budget,
            self.warm.clone(),
        ));
        self.warm.register(&pool);
        if !self
            .sweeping
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            self.tasks.spawn(
                self.warm
                    .clone()
                    .sweep(self.shutdown.clone(), self.tasks.clone()),
            );
        }
        let warm = if d.warm { pool.warm_up().await } else { Ok(()) };
        warm.map_err(|e| match e {
            StartError::Code(e) => BackendError::Code(e),
            // The process died while it ran the code's module: the code's
            // doing (an exit, a crash, memory), told as a load error.
            StartError::Died(reason) | StartError::Exited(reason) => {
                BackendError::Code(crate::spec::SpecError::Load {
                    kind: "ContainerExited".into(),
                    message: format!("the container died while loading the code: {reason}"),
                })
            }
            StartError::Failed(reason) => BackendError::ContainerStart {
                function: spec.name.clone(),
                reason,
            },
        })?;
        // The previous version is not closed: maps and calls already running
        // on it finish on the version they started with, and its containers
        // go when the last of them lets go of it.
        drop(self.functions.insert(spec.name.clone(), pool));
        tracing::info!(function = %spec.name, pool_size = size, "deployed on the local backend");
        Ok(())
    }

    async fn undeploy(&self, function: &str) -> Result<(), BackendError> {
        let (_, pool) = self
            .functions
            .remove(function)
            .ok_or_else(|| BackendError::UnknownFunction(function.to_owned()))?;
        pool.close();
        Ok(())
    }

    async fn call(
        &self,
        function: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        ctx: CallContext,
    ) -> Result<CallOutcome, BackendError> {
        let pool = self.pool(function)?;
        let frame = call_request(args, kwargs);
        Ok(call_with_retries(pool, frame, ctx).await)
    }

    async fn map(
        &self,
        function: &str,
        inputs: BoxStream<'static, Value>,
        ctx: CallContext,
    ) -> Result<BoxStream<'static, Vec<MapItem>>, BackendError> {
        let pool = self.pool(function)?;
        let tuning = map::Tuning {
            max_batch: self.config.max_batch.max(1),
            target_batch: self.config.target_batch,
        };
        Ok(map::start(
            pool,
            inputs,
            ctx,
            tuning,
            &self.tasks,
            self.shutdown.clone(),
        ))
    }

    async fn spawn(
        &self,
        function: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        mut ctx: CallContext,
    ) -> Result<CallId, BackendError> {
        let pool = self.pool(function)?;
        let frame = call_request(args, kwargs);
        let id = CallId::local(format!("lc-{}", uuid::Uuid::new_v4().simple()));
        ctx.cancel = ctx.cancel.child_token();
        let cancel = ctx.cancel.clone();
        let handle = self.tasks.spawn(call_with_retries(pool, frame, ctx));
        self.calls.insert(
            id.clone(),
            Arc::new(SpawnedCall {
                cancel,
                handle: AsyncMutex::new(Some(handle)),
            }),
        );
        Ok(id)
    }

    async fn wait(&self, call: &CallId) -> Result<CallOutcome, BackendError> {
        let spawned = self
            .calls
            .get(call)
            .map(|c| c.clone())
            .ok_or_else(|| BackendError::UnknownCall(call.clone()))?;
        let handle = spawned
            .handle
            .lock()
            .await
            .take()
            .ok_or_else(|| BackendError::UnknownCall(call.clone()))?;
        let outcome = handle.await.unwrap_or_else(|e| CallOutcome {
            result: Err(TaskError::new(
                crate::task::ErrorKind::InternalError,
                format!("call task failed: {e}"),
            )),
            attempts: 1,
        });
        self.calls.remove(call);
        Ok(outcome)
    }

    async fn cancel(&self, call: &CallId) -> Result<(), BackendError> {
        let spawned = self
            .calls
            .get(call)
            .map(|c| c.clone())
            .ok_or_else(|| BackendError::UnknownCall(call.clone()))?;
        spawned.cancel.cancel();
        Ok(())
    }

    async fn shutdown(&self) {
        self.shutdown.cancel();
        for entry in self.calls.iter() {
            entry.cancel.cancel();
        }
        for entry in self.functions.iter() {
            entry.close();
        }
        self.functions.clear();
        if let Some(launcher) = self.launcher.get() {
            launcher.close();
        }
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("local backend tasks still running at shutdown");
        }
        self.live.kill_all_and_wait(Duration::from_secs(10)).await;
        if let Some(pids) = self.launcher.get().and_then(|l| l.pids.as_ref()) {
            pids.sweep();
        }
    }
}
