//! Parallel repository creation (the seed's pattern 1): repo-creator agents
//! turn configs `{name, files: {path: content}}` into real git repositories
//! (libgit2, no shell-out) on a volume, each with an initial commit.
//!
//! Each repository is claimed first through a compare-and-swap on the volume
//! key `repos/NAME`: `absent -> creating(owner) -> created(commit)`. An agent
//! that loses the claim waits for the winner and returns its result, so no
//! repository is created twice even when two agents get the same config; a
//! re-run with the same config returns the recorded commit; the same name
//! with different content is refused. A claim left `creating` by an agent
//! that died is taken over after [`RepoCreatorConfig::stale_claim`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ractor::{ActorProcessingErr, RpcReplyPort};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

mod test_run;

pub use test_run::RepoTestRun;

use super::{AgentError, AgentKind, Agents};
use crate::runtime::Runtime;
use crate::supervisor::Slot;
use crate::supervisor::{Serial, SerialActor};
use crate::volume::VolumeError;

/// Most bytes of all files of one repository (100 MiB).
const MAX_REPO_BYTES: usize = 100 << 20;

/// A repository to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// 1 to 100 of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
    pub name: String,
    /// Files by relative path.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// The initial branch (default `main`).
    #[serde(default)]
    pub branch: Option<String>,
    /// The initial commit's message (default `Initial commit`).
    #[serde(default)]
    pub message: Option<String>,
    /// Written to `.git/description` when given.
    #[serde(default)]
    pub description: Option<String>,
}

/// How repo-creator agents work.
#[derive(Debug, Clone)]
pub struct RepoCreatorConfig {
    /// The volume repositories go to (default `repos`).
    pub volume: String,
    /// Author and committer name (default `modal-agents`).
    pub author_name: String,
    /// Author and committer email (default `agents@modal-agents.invalid`).
    pub author_email: String,
    /// How long a `creating` claim may sit before another agent takes it
    /// over (default 60 s).
    pub stale_claim: Duration,
}

impl Default for RepoCreatorConfig {
    fn default() -> Self {
        RepoCreatorConfig {
            volume: "repos".into(),
            author_name: "modal-agents".into(),
            author_email: "agents@modal-agents.invalid".into(),
            stale_claim: Duration::from_secs(60),
        }
    }
}

/// A created (or already existing) repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoResult {
    /// Its name.
    pub name: String,
    /// Its directory on the host.
    pub path: PathBuf,
    /// Its directory relative to the volume root.
    pub volume_path: String,
    /// The initial commit's id.
    pub commit: String,
    /// The branch.
    pub branch: String,
    /// Files committed.
    pub files: usize,
    /// The agent that created it.
    pub created_by: String,
    /// Whether this call created it (false: it existed already).
    pub created: bool,
}

/// Why a repository was not created.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The name is not acceptable.
    #[error("invalid repository name {name:?}: expected 1 to 100 of letters, digits, '.', '_' or '-', not starting with '.' or '-'")]
    Name {
        /// The name.
        name: String,
    },
    /// A file path is not acceptable.
    #[error("invalid path {path:?} in repository `{repo}`: {why}")]
    Path {
        /// The repository.
        repo: String,
        /// The path.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The repository's files are too large.
    #[error(
        "repository `{repo}` holds {size} bytes of files; at most {MAX_REPO_BYTES} are accepted"
    )]
    TooLarge {
        /// The repository.
        repo: String,
        /// Its size.
        size: usize,
    },
    /// A repository of that name exists with other content.
    #[error("repository `{name}` already exists with different content (commit {commit})")]
    Conflict {
        /// The repository.
        name: String,
        /// Its commit.
        commit: String,
    },
    /// Another agent holds the claim and did not finish in time.
    #[error("repository `{name}` is being created by `{owner}`, which did not finish in time")]
    Busy {
        /// The repository.
        name: String,
        /// The agent holding the claim.
        owner: String,
    },
    /// git failed.
    #[error("git failed on repository `{repo}`: {source}")]
    Git {
        /// The repository.
        repo: String,
        /// libgit2's error.
        #[source]
        source: git2::Error,
    },
    /// The volume failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The filesystem failed.
    #[error("repository `{repo}`: {source}")]
    Io {
        /// The repository.
        repo: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn validate(config: &RepoConfig) -> Result<(), RepoError> {
    let name = &config.name;
    let ok_name = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok_name {
        return Err(RepoError::Name { name: name.clone() });
    }
    let bad = |path: &str, why: &str| RepoError::Path {
        repo: name.clone(),
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let mut size = 0;
    for (path, content) in &config.files {
        if path.is_empty() || path.starts_with('/') || path.contains('\\') || path.contains('\0') {
            return Err(bad(path, "expected a relative '/'-separated path"));
        }
        for seg in path.split('/') {
            match seg {
                "" | "." | ".." => {
                    return Err(bad(path, "empty, '.' and '..' segments are not allowed"))
                }
                s if s.eq_ignore_ascii_case(".git") => return Err(bad(path, "'.git' is reserved")),
                _ => {}
            }
        }
        size += content.len();
    }
    if size > MAX_REPO_BYTES {
        return Err(RepoError::TooLarge {
            repo: name.clone(),
            size,
        });
    }
    if let Some(branch) = &config.branch {
        if !git2::Reference::is_valid_name(&format!("refs/heads/{branch}")) {
            return Err(bad(branch, "not a valid branch name"));
        }
    }
    Ok(())
}

/// A stable fingerprint of a config's content.
fn fingerprint(config: &RepoConfig) -> String {
    let canonical = json!([
        config.files,
        config.branch,
        config.message,
        config.description
    ]);
    git2::Oid::hash_object(git2::ObjectType::Blob, canonical.to_string().as_bytes())
        .map(|o| o.to_string())
        .unwrap_or_default()
}

/// Writes the files and makes the initial commit; returns the commit id.
fn create_repository(
    dir: &Path,
    config: &RepoConfig,
    branch: &str,
    author: &(String, String),
) -> Result<String, RepoError> {
    let repo_name = config.name.clone();
    let io = |source| RepoError::Io {
        repo: repo_name.clone(),
        source,
    };
    let git = |source| RepoError::Git {
        repo: repo_name.clone(),
        source,
    };
    if std::fs::symlink_metadata(dir).is_ok() {
        // A partial repository left by a crashed attempt (or a link planted
        // in its place: only the link goes).
        std::fs::remove_dir_all(dir).map_err(io)?;
    }
    // The repository's directory, opened without following a link; its
    // files are written beneath it, never through a link in the volume.
    let root = crate::volume::beneath::Root::open(dir).map_err(io)?;
    let mut opts = git2::RepositoryInitOptions::new();
    opts.initial_head(branch);
    if let Some(d) = &config.description {
        opts.description(d);
    }
    let repo = git2::Repository::init_opts(dir, &opts).map_err(git)?;
    let mut index = repo.index().map_err(git)?;
    for (path, content) in &config.files {
        root.write(path, content.as_bytes()).map_err(io)?;
        index.add_path(Path::new(path)).map_err(git)?;
    }
    index.write().map_err(git)?;
    let tree = repo
        .find_tree(index.write_tree().map_err(git)?)
        .map_err(git)?;
    let signature = git2::Signature::now(&author.0, &author.1).map_err(git)?;
    let message = config.message.as_deref().unwrap_or("Initial commit");
    let commit = repo
        .commit(Some("HEAD"), &signature, &signature, message, &tree, &[])
        .map_err(git)?;
    Ok(commit.to_string())
}

/// Messages of a [`RepoCreator`].
pub(crate) enum RepoCreatorMsg {
    /// Creates (or finds) a repository.
    Create(Box<RepoConfig>, RpcReplyPort<Result<RepoResult, RepoError>>),
    /// Panics (fault injection).
    InjectPanic,
}

/// A repo-creator agent: the [`Serial`] state it is (re)started from, handling its messages one at a time.
#[derive(Clone)]
pub(crate) struct RepoCreator {
    id: String,
    runtime: Runtime,
    config: RepoCreatorConfig,
}

impl RepoCreator {
    fn result(&self, config: &RepoConfig, claim: &Value, created: bool) -> RepoResult {
        let volumes = self.runtime.volumes();
        RepoResult {
            name: config.name.clone(),
            path: volumes.files_dir(&self.config.volume).join(&config.name),
            volume_path: config.name.clone(),
            commit: claim["commit"].as_str().unwrap_or_default().to_owned(),
            branch: claim["branch"].as_str().unwrap_or("main").to_owned(),
            files: claim["files"].as_u64().unwrap_or(0) as usize,
            created_by: claim["owner"].as_str().unwrap_or_default().to_owned(),
            created,
        }
    }

    async fn create(&self, config: RepoConfig) -> Result<RepoResult, RepoError> {
        validate(&config)?;
        let me = &self.id;
        let volume = &self.config.volume;
        let volumes = self.runtime.volumes();
        let key = format!("repos/{}", config.name);
        let hash = fingerprint(&config);
        let deadline = tokio::time::Instant::now() + self.config.stale_claim;
        // Claim the name, or find who has it.
        let version = loop {
            let current = volumes.read(volume, &key).await?;
            let Some(current) = current else {
                let claim = json!({"status": "creating", "owner": me, "hash": hash,
                                   "since_ms": chrono::Utc::now().timestamp_millis()});
                match volumes.compare_and_swap(volume, &key, None, claim).await {
                    Ok(v) => break v,
                    Err(VolumeError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            let claim = &current.value;
            if claim["status"] == "created" {
                if claim["hash"] == json!(hash) {
                    return Ok(self.result(&config, claim, false));
                }
                return Err(RepoError::Conflict {
                    name: config.name.clone(),
                    commit: claim["commit"].as_str().unwrap_or_default().to_owned(),
                });
            }
            let owner = claim["owner"].as_str().unwrap_or_default().to_owned();
            if owner == *me || tokio::time::Instant::now() >= deadline {
                // Ours from before a restart, or abandoned: take it over.
                let mut taken = claim.clone();
                taken["owner"] = json!(me);
                taken["hash"] = json!(hash);
                match volumes
                    .compare_and_swap(volume, &key, Some(current.version), taken)
                    .await
                {
                    Ok(v) => break v,
                    Err(VolumeError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            // Someone else is creating it: wait for the claim to change.
            let mut watch = volumes.watch(volume, &key)?;
            if volumes.read(volume, &key).await?.map(|c| c.version) == Some(current.version) {
                let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
                let _ = tokio::time::timeout(wait, watch.recv()).await;
            }
        };
        let branch = config.branch.clone().unwrap_or_else(|| "main".into());
        let dir = volumes.files_dir(volume).join(&config.name);
        let author = (
            self.config.author_name.clone(),
            self.config.author_email.clone(),
        );
        let (cfg, b) = (config.clone(), branch.clone());
        let commit =
            tokio::task::spawn_blocking(move || create_repository(&dir, &cfg, &b, &author))
                .await
                .map_err(|e| RepoError::Io {
                    repo: config.name.clone(),
                    source: std::io::Error::other(e),
                })??;
        let done = json!({"status": "created", "owner": me, "hash": hash, "commit": commit,
                          "branch": branch, "files": config.files.len()});
        volumes
            .compare_and_swap(volume, &key, Some(version), done.clone())
            .await?;
        tracing::info!(agent = %me, repo = %config.name, %commit, "repository created");
        Ok(self.result(&config, &done, true))
    }
}

impl Serial for RepoCreator {
    type Msg = RepoCreatorMsg;

    async fn handle(&mut self, message: RepoCreatorMsg) -> Result<(), ActorProcessingErr> {
        match message {
            RepoCreatorMsg::Create(config, reply) => {
                let _ = reply.send(self.create(*config).await);
            }
            RepoCreatorMsg::InjectPanic => {
                panic!("fault injected into repo creator {}", self.id)
            }
        }
        Ok(())
    }
}

/// A handle to a repo-creator agent; it follows the agent across restarts.
#[derive(Clone)]
pub struct RepoCreatorHandle {
    id: String,
    slot: Slot<RepoCreatorMsg>,
}

impl std::fmt::Debug for RepoCreatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoCreatorHandle")
            .field("id", &self.id)
            .finish()
    }
}

impl RepoCreatorHandle {
    /// The agent's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Creates a repository, or returns the one that exists for this config.
    pub async fn create(
        &self,
        config: RepoConfig,
    ) -> Result<Result<RepoResult, RepoError>, AgentError> {
        Ok(self
            .slot
            .call_once(Duration::from_secs(300), |reply| {
                RepoCreatorMsg::Create(Box::new(config), reply)
            })
            .await?)
    }
}

impl Agents {
    /// Starts a repo-creator agent.
    pub async fn spawn_repo_creator(
        &self,
        id: &str,
        config: RepoCreatorConfig,
    ) -> Result<RepoCreatorHandle, AgentError> {
        super::validate_agent_id(id)?;
        crate::spec::validate_object_name("volume", &config.volume)?;
        let (slot, publish) = Slot::new(format!("repo creator {id}"));
        self.start(
            id,
            AgentKind::RepoCreator,
            publish,
            SerialActor::<RepoCreator>::new,
            RepoCreator {
                id: id.to_owned(),
                runtime: self.runtime.clone(),
                config,
            },
            || RepoCreatorMsg::InjectPanic,
        )
        .await?;
        Ok(RepoCreatorHandle {
            id: id.to_owned(),
            slot,
        })
    }

    /// Hands `configs` to `agents` round-robin and creates the repositories in
    /// parallel (the seed's `coordinate_repo_creation`). Results are in config
    /// order; an agent that crashes mid-way has its config tried on the next.
    pub async fn create_repos(
        &self,
        configs: Vec<RepoConfig>,
        agents: &[RepoCreatorHandle],
    ) -> Vec<Result<RepoResult, AgentError>> {
        if agents.is_empty() {
            return configs
                .iter()
                .map(|_| {
                    Err(AgentError::NoAgents {
                        kind: AgentKind::RepoCreator,
                        work: "repository creation",
                    })
                })
                .collect();
        }
        let n = agents.len();
        let runs = configs
            .into_iter()
            .enumerate()
            .map(|(i, config)| async move {
                let mut last = None;
                for k in 0..n {
                    match agents[(i + k) % n].create(config.clone()).await {
                        Ok(Ok(r)) => return Ok(r),
                        Ok(Err(e)) => return Err(AgentError::Repo(e)),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.expect("at least one agent was tried"))
            });
        futures_util::future::join_all(runs).await
    }
}
