//! Configuring and starting a [`Runtime`].

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ractor::Actor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker as JobSet;

use super::{Inner, Runtime, RuntimeError};
use crate::compute::{
    BackendRouter, ComputeBackend, LocalBackend, LocalConfig, ModalBackend, ModalConfig,
};
use crate::dispatcher::DispatchShared;
use crate::secrets::{SecretStore, SecretsKey};
use crate::store::Store;
use crate::supervisor::{RestartPolicy, RootSupervisor, RootSupervisorArgs};
use crate::tracker::{Durable, Journal, Retention, TaskStore};
use crate::volume::VolumeShared;

/// Configures a [`Runtime`]. Every setting has a documented default.
#[derive(Default)]
pub struct RuntimeBuilder {
    data_dir: Option<PathBuf>,
    backend: Option<Arc<dyn ComputeBackend>>,
    local: Option<LocalConfig>,
    modal: Option<ModalConfig>,
    secrets: SecretStore,
    secrets_key: SecretsKey,
    follow_limits: super::FollowLimits,
    restart: RestartPolicy,
    shutdown_timeout: Option<Duration>,
    retention: Retention,
    sandboxes: crate::sandbox::SandboxConfig,
}

/// Default bound of [`Runtime::shutdown`] on running work.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Default data dir, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "modal-agents-data";

impl RuntimeBuilder {
    /// Settings of the sandboxes (default [`SandboxConfig::default`](crate::sandbox::SandboxConfig)).
    pub fn sandbox_config(mut self, config: crate::sandbox::SandboxConfig) -> Self {
        self.sandboxes = config;
        self
    }

    /// Where tasks, volumes and container work dirs live (default
    /// `./modal-agents-data`).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Adds the Modal backend (default: none). Functions then choose with
    /// their `backend` field; `auto` sends to Modal what this machine cannot
    /// run. A `cache_dir` left at its default moves under the data dir.
    pub fn modal(mut self, config: ModalConfig) -> Self {
        self.modal = Some(config);
        self
    }

    /// The compute backend (default: a [`LocalBackend`]).
    pub fn backend(mut self, backend: Arc<dyn ComputeBackend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Settings of the default local backend (default: [`LocalConfig::default`]
    /// with container work dirs under the data dir).
    pub fn local_config(mut self, config: LocalConfig) -> Self {
        self.local = Some(config);
        self
    }

    /// Containers per function for the default local backend (default: cores).
    pub fn pool_size(mut self, n: usize) -> Self {
        let mut config = self.local.take().unwrap_or_default();
        config.pool_size = n.max(1);
        self.local = Some(config);
        self
    }

    /// The secrets functions may ask for (default: empty; add more later with
    /// [`Runtime::secrets`]).
    pub fn secrets(mut self, secrets: SecretStore) -> Self {
        self.secrets = secrets;
        self
    }

    /// The key secrets are sealed with in the data dir (default: none, so
    /// they are stored plain in `state.redb`, mode 0600). Give a previous
    /// key with it to rotate: see [`SecretsKey`].
    pub fn secrets_key(mut self, key: SecretsKey) -> Self {
        self.secrets_key = key;
        self
    }

    /// How many followers of task logs ([`Runtime::follow_logs`]) the
    /// runtime serves at once (default [`FollowLimits::default`](super::FollowLimits):
    /// 512 per task, 2,048 in all).
    pub fn follow_limits(mut self, limits: super::FollowLimits) -> Self {
        self.follow_limits = limits;
        self
    }

    /// How the root supervisor restarts failed children (default:
    /// [`RestartPolicy::default`]).
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// How long [`Runtime::shutdown`] waits for running work to let go
    /// (default [`DEFAULT_SHUTDOWN_TIMEOUT`], 30 s). Unfinished tasks are not
    /// lost either way: the next start resumes them.
    pub fn shutdown_timeout(mut self, bound: Duration) -> Self {
        self.shutdown_timeout = Some(bound);
        self
    }

    /// How long and how many finished tasks are kept, with their result and
    /// log files and webhook registrations (default [`Retention::default`]:
    /// 7 days, 100,000 tasks, swept every minute and at start).
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Creates the data dir and starts the supervision tree.
    pub async fn start(self) -> Result<Runtime, RuntimeError> {
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        // Task files and volumes are the runtime's user's alone.
        for sub in ["tasks", "volumes", "containers"] {
            let path = data_dir.join(sub);
            let p = path.clone();
            tokio::task::spawn_blocking(move || crate::persist::private_dir(&p))
                .await
                .map_err(|e| RuntimeError::Start(e.to_string()))?
                .map_err(|source| RuntimeError::DataDir { path, source })?;
        }
        let data_dir =
            tokio::fs::canonicalize(&data_dir)
                .await
                .map_err(|source| RuntimeError::DataDir {
                    path: data_dir.clone(),
                    source,
                })?;
        let backend = match self.backend {
            Some(b) => b,
            None => {
                let mut config = self.local.unwrap_or_default();
                config.work_dir = data_dir.join("containers");
                Arc::new(LocalBackend::new(config))
            }
        };
        let modal = self.modal.map(|mut config| {
            if config.cache_dir == ModalConfig::default().cache_dir {
                config.cache_dir = data_dir.join("modal");
            }
            Arc::new(ModalBackend::new(config))
        });
        let backend: Arc<dyn ComputeBackend> = Arc::new(BackendRouter::new(backend, modal.clone()));
        let redactor = crate::redact::Redactor::with_secrets(self.secrets.clone());
        if let Some(creds) = modal.as_ref().and_then(|m| m.credentials().ok()) {
            redactor.add(creds.token_id.clone());
            redactor.add(creds.token_secret.clone());
        }
        backend
            .start(&redactor)
            .await
            .map_err(RuntimeError::Backend)?;

        let db_path = data_dir.join("state.redb");
        let db = {
            let path = db_path.clone();
            tokio::task::spawn_blocking(move || Store::open(&path))
                .await
                .map_err(|e| RuntimeError::Start(e.to_string()))?
                .map_err(|e| match e {
                    crate::store::StoreError::InUse => RuntimeError::DataDirInUse {
                        path: data_dir.clone(),
                    },
                    source => RuntimeError::DataDir {
                        path: db_path.clone(),
                        source: std::io::Error::other(source.to_string()),
                    },
                })?
        };
        let db = Arc::new(db);
        self.secrets
            .attach(db.clone(), self.secrets_key.clone())
            .map_err(|e| match e {
                crate::secrets::AttachError::Store(e) => RuntimeError::Store(e),
                crate::secrets::AttachError::Key(e) => RuntimeError::Secret(e.into()),
            })?;
        let store = TaskStore::new(data_dir.join("tasks"));
        let journal_path = data_dir.join("tasks.journal");
        let (journal, replayed) = {
            let path = journal_path.clone();
            tokio::task::spawn_blocking(move || Journal::open(&path))
                .await
                .map_err(|e| RuntimeError::Start(e.to_string()))?
                .map_err(|source| RuntimeError::DataDir {
                    path: journal_path.clone(),
                    source,
                })?
        };
        let durable = Durable::new(journal, replayed.jobs.clone());
        store.attach(durable.clone());
        let flusher_stop = CancellationToken::new();
        // The writer starts once recovery has restored every record: a
        // compaction before that would snapshot only some of them.
        let writer = durable.clone().run(store.clone(), flusher_stop.clone());
        // The task records and the dispatcher are plain handles; the volume
        // store is the supervisor's child, from its module's `child`.
        let registry = crate::registry::Functions::default();
        let tracker = crate::tracker::Tasks::new(store.clone());
        let shutdown = CancellationToken::new();
        let jobs = JobSet::new();
        let feeds = crate::dispatcher::LogFeeds::default();
        let shared = Arc::new(DispatchShared {
            backend: backend.clone(),
            tracker: tracker.clone(),
            cancels: DashMap::new(),
            jobs: jobs.clone(),
            shutdown: shutdown.clone(),
            redact: redactor.clone(),
            feeds: feeds.clone(),
        });
        let dispatcher = crate::dispatcher::Dispatcher::new(shared);
        let args = RootSupervisorArgs {
            children: Vec::new(),
            policy: self.restart,
        };
        let (root, _join) = Actor::spawn(None, RootSupervisor, args)
            .await
            .map_err(|e| RuntimeError::Start(e.to_string()))?;
        // Each open volume is an actor, a child of the root.
        let volumes = crate::volume::Volumes::new(
            VolumeShared::new(data_dir.join("volumes")),
            root.clone(),
            self.restart,
        );
        let sandboxes = {
            let shared = volumes.clone();
            crate::sandbox::Sandboxes::open(crate::sandbox::Parts {
                config: self.sandboxes,
                data_dir: data_dir.clone(),
                volumes_dir: Box::new(move |name| shared.files_dir(name)),
                secrets: self.secrets.clone(),
                redact: redactor.clone(),
                shutdown: shutdown.child_token(),
            })
            .await
            .map_err(|source| RuntimeError::DataDir {
                path: data_dir.join("sandboxes"),
                source,
            })?
        };
        tracing::info!(data_dir = %data_dir.display(), backend = backend.name(), "runtime started");
        let runtime = Runtime {
            inner: Arc::new(Inner {
                data_dir,
                backend,
                redactor,
                feeds,
                followers: super::logs::Followers::new(self.follow_limits),
                secrets: self.secrets,
                registry,
                tracker,
                dispatcher,
                volumes,
                sandboxes,
                root,
                restart: self.restart,
                extensions: Default::default(),
                jobs,
                shutdown,
                shutdown_timeout: self.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
                stopped: AtomicBool::new(false),
                store: db,
                modal,
                durable,
                flusher_stop,
            }),
        };
        let quarantined = replayed.quarantined;
        runtime.recover(replayed).await?;
        // Idempotency keys answered before a restart are answered again.
        crate::commands::restore_replays(&runtime)?;
        tokio::spawn(writer);
        runtime.start_retention(self.retention, quarantined).await;
        Ok(runtime)
    }
}
