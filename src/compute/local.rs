//! The local backend: warm `python3` containers on this machine.
//!
//! Each deployed function gets a pool of containers, each a `python3`
//! process running the harness shipped in this crate, which loads the code once
//! and then serves calls and map batches over framed JSON on its stdin/stdout.
//! Containers run in their own process group with a clean environment (only
//! `PATH`, `HOME`, `LANG`, the function's secrets and `MODAL_AGENTS_*`), in a
//! work directory of their own, and die with the runtime.
//!
//! Volumes: until the sandbox binds them at their mount paths, a function finds
//! each volume's directory through the `MODAL_AGENTS_VOLUMES` environment
//! variable, a JSON object from mount path to host directory:
//! `json.loads(os.environ["MODAL_AGENTS_VOLUMES"])["/data"]`.

mod budget;
mod container;
mod images;
mod map;
mod marshal;
mod pool;
mod protocol;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
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
use self::container::{Launcher, LiveSet, StartError};
use self::pool::{cancelled_error, Pool};
use self::protocol::{call_request, decode_call_reply, Output};

pub use self::budget::{GpuDevice, GpuUse, Usage};
use super::{
    BackendError, CallContext, CallId, CallOutcome, Capacity, ComputeBackend, Deployment, LogSink,
    LogStream, MapItem,
};
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
    /// (default 1; 0 disables).
    pub standby: usize,
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
    budget: OnceCell<Arc<Budget>>,
    /// Launchers of interpreters in package environments (no standby).
    env_launchers: DashMap<PathBuf, Arc<Launcher>>,
    images: images::Images,
    functions: DashMap<String, Arc<Pool>>,
    calls: DashMap<CallId, Arc<SpawnedCall>>,
    live: Arc<LiveSet>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
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
            budget: OnceCell::new(),
            env_launchers: DashMap::new(),
            images: images::Images::default(),
            functions: DashMap::new(),
            calls: DashMap::new(),
            live: Arc::default(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
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
            .map_or(0, |l| l.standby.lock().expect("standby poisoned").len())
    }

    /// Process ids of the containers alive now.
    pub fn container_pids(&self) -> Vec<u32> {
        self.live.pids()
    }

    async fn launcher(&self) -> Result<&Arc<Launcher>, BackendError> {
        self.launcher
            .get_or_try_init(|| async {
                let python = resolve_python(self.config.python.clone()).await?;
                tokio::fs::create_dir_all(&self.config.work_dir).await?;
                Ok::<_, BackendError>(Arc::new(Launcher {
                    python,
                    runtime_tag: self.runtime_tag.clone(),
                    base_env: base_env(),
                    cwd: self.config.work_dir.clone(),
                    live: self.live.clone(),
                    standby_target: self.config.standby,
                    standby: std::sync::Mutex::new(Vec::new()),
                    refilling: AtomicBool::new(false),
                    closed: AtomicBool::new(false),
                }))
            })
            .await
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

    /// The launcher for a function: the base one, or one for its package
    /// environment.
    async fn launcher_for(&self, packages: &[String]) -> Result<Arc<Launcher>, BackendError> {
        let base = self.launcher().await?;
        if packages.is_empty() {
            return Ok(base.clone());
        }
        let root = self.config.work_dir.with_file_name("images");
        let python = self
            .images
            .python_for(&root, &base.python, packages)
            .await?;
        Ok(self
            .env_launchers
            .entry(python.clone())
            .or_insert_with(|| {
                Arc::new(Launcher {
                    python,
                    runtime_tag: base.runtime_tag.clone(),
                    base_env: base.base_env.clone(),
                    cwd: base.cwd.clone(),
                    live: self.live.clone(),
                    standby_target: 0,
                    standby: std::sync::Mutex::new(Vec::new()),
                    refilling: AtomicBool::new(false),
                    closed: AtomicBool::new(false),
                })
            })
            .clone())
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

/// What every container's environment starts from; nothing else of the
/// runtime's environment reaches a container.
fn base_env() -> Vec<(String, String)> {
    let mut env = Vec::new();
    for key in ["PATH", "HOME", "LANG", "TZ"] {
        if let Ok(v) = std::env::var(key) {
            env.push((key.to_owned(), v));
        }
    }
    if !env.iter().any(|(k, _)| k == "LANG") {
        env.push(("LANG".into(), "C.UTF-8".into()));
    }
    env.push(("PYTHONDONTWRITEBYTECODE".into(), "1".into()));
    env.push(("PYTHONUNBUFFERED".into(), "1".into()));
    env
}

/// The function's own environment, set when its code is loaded.
fn function_env(d: &Deployment) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("MODAL_AGENTS_FUNCTION".into(), d.spec.name.clone());
    let volumes: BTreeMap<&String, String> = d
        .volume_dirs
        .iter()
        .map(|(mount, dir)| (mount, dir.display().to_string()))
        .collect();
    env.insert(
        "MODAL_AGENTS_VOLUMES".into(),
        serde_json::to_string(&volumes).expect("string map serializes"),
    );
    env.extend(d.secret_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

async fn resolve_python(configured: Option<PathBuf>) -> Result<PathBuf, BackendError> {
    let candidate = configured.unwrap_or_else(|| PathBuf::from("python3"));
    let out = tokio::process::Command::new(&candidate)
        .args(["-c", "import sys; print(sys.executable)"])
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| BackendError::ContainerStart {
            function: String::new(),
            reason: format!("cannot run {}: {e}", candidate.display()),
        })?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || path.is_empty() {
        return Err(BackendError::ContainerStart {
            function: String::new(),
            reason: format!(
                "{} did not report its executable: {}",
                candidate.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(PathBuf::from(path))
}

async fn call_with_retries(pool: Arc<Pool>, frame: Vec<u8>, ctx: CallContext) -> CallOutcome {
    let policy = pool.spec.retries.clone();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let result = call_once(&pool, &frame, &ctx).await;
        match result {
            Err(e) if e.kind != "Cancelled" && attempts <= policy.max_retries => {
                tracing::debug!(function = %pool.spec.name, attempts, error = %e, "retrying call");
                tokio::select! {
                    () = tokio::time::sleep(policy.delay(attempts)) => {}
                    () = ctx.cancel.cancelled() => {
                        return CallOutcome { result: Err(cancelled_error()), attempts };
                    }
                }
            }
            result => return CallOutcome { result, attempts },
        }
    }
}

async fn call_once(pool: &Arc<Pool>, frame: &[u8], ctx: &CallContext) -> Result<Value, TaskError> {
    let mut lease = pool.acquire(&ctx.cancel).await?;
    ctx.meter
        .running
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let reply = tokio::select! {
        reply = lease.request(frame, pool.timeout()) => reply,
        () = ctx.cancel.cancelled() => Err(cancelled_error()),
    };
    ctx.meter
        .running
        .store(0, std::sync::atomic::Ordering::Relaxed);
    drop(lease);
    let (result, output) = decode_call_reply(&reply?);
    write_output(&ctx.logs, output);
    result
}

fn write_output(logs: &LogSink, output: Output) {
    if let Some(text) = output.stdout {
        logs.write(LogStream::Stdout, text);
    }
    if let Some(text) = output.stderr {
        logs.write(LogStream::Stderr, text);
    }
}

#[async_trait]
impl ComputeBackend for LocalBackend {
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
        }
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

    async fn deploy(&self, d: Deployment) -> Result<(), BackendError> {
        if self.shutdown.is_cancelled() {
            return Err(BackendError::Closed);
        }
        let spec = d.spec.clone();
        let launcher = self.launcher_for(&spec.image.python_packages).await?;
        let cwd = self.config.work_dir.join(&spec.name);
        tokio::fs::create_dir_all(&cwd).await?;
        let budget = self.budget().await.clone();
        budget.check(&spec)?;
        let size = spec
            .max_concurrency
            .map_or(self.config.pool_size, |n| n as usize)
            .max(1);
        let pool = Arc::new(Pool::new(
            spec.clone(),
            function_env(&d),
            cwd,
            size,
            launcher,
            budget,
        ));
        let warm = if d.warm { pool.warm_up().await } else { Ok(()) };
        warm.map_err(|e| match e {
            StartError::Code(e) => BackendError::Code(e),
            StartError::Failed(reason) => BackendError::ContainerStart {
                function: spec.name.clone(),
                reason,
            },
        })?;
        if let Some(old) = self.functions.insert(spec.name.clone(), pool) {
            old.close();
        }
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
        let id = CallId(format!("lc-{}", uuid::Uuid::new_v4().simple()));
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
                "InternalError",
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
    }
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

fn total_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}
