//! Agents: master, worker, codegen and repo-creator actors, children of
//! the runtime's supervisor. This layer sits above the runtime: it uses the
//! runtime's handle and three crate-private hooks (`supervise` a child,
//! `unsupervise` it, keep per-runtime state in an `extension`), and the
//! runtime knows nothing of agents.
//!
//! Agents register by id. Each kind has its own message enum and a cloneable
//! handle ([`WorkerHandle`], [`MasterHandle`], [`CodegenHandle`],
//! [`RepoCreatorHandle`]) that follows the agent across restarts. A panicking
//! agent is restarted under the runtime's
//! [`RestartPolicy`](crate::runtime::RestartPolicy), with a budget per agent; an agent
//! that fails more often than the policy allows is given up on (the runtime
//! carries on) and reported through [`Agents::events`].

mod codegen;
mod master;
mod repo;
mod worker;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::runtime::Runtime;
use crate::spec::SpecError;
use crate::supervisor::{ChildError, ChildEvent, ChildEvents, ChildSpec, SuperviseError};
use crate::sync::Recover;

pub use codegen::{
    ChatConfig, ChatGenerator, CodeGenerator, CodegenError, CodegenHandle, CodegenReport,
    CodegenTask, ComponentKind, ComponentResult, GeneratedCode, Language, TemplateGenerator,
};
pub use master::{JobProgress, JobReport, MasterConfig, MasterHandle, TaskResult, WorkerStats};
pub use repo::{
    RepoConfig, RepoCreatorConfig, RepoCreatorHandle, RepoError, RepoResult, RepoTestRun,
};
pub use worker::{AgentTask, HandlerFuture, TaskHandler, WorkerHandle};

/// The kinds of agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// Hands tasks to workers and aggregates results.
    Master,
    /// Runs tasks by type.
    Worker,
    /// Generates code components.
    Codegen,
    /// Creates git repositories.
    RepoCreator,
}

impl fmt::Display for AgentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AgentKind::Master => "master",
            AgentKind::Worker => "worker",
            AgentKind::Codegen => "codegen",
            AgentKind::RepoCreator => "repo-creator",
        })
    }
}

/// A registered agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: AgentKind,
    /// How often it has been restarted.
    pub restarts: u64,
}

/// What happens to agents, for anyone who wants to know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AgentEvent {
    /// An agent failed and was restarted.
    Restarted {
        /// The agent.
        id: String,
        /// Why it failed.
        reason: String,
        /// Restarts so far.
        restarts: u64,
    },
    /// An agent failed more often than the policy allows and was stopped.
    GaveUp {
        /// The agent.
        id: String,
        /// Why it failed last.
        reason: String,
    },
    /// An agent was stopped ([`Agents::stop`]) or ended on its own.
    Stopped {
        /// The agent.
        id: String,
        /// Why.
        reason: String,
    },
}

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The id is not acceptable.
    #[error(transparent)]
    Id(#[from] SpecError),
    /// Another agent has that id.
    #[error("an agent with id `{0}` is already registered")]
    Duplicate(String),
    /// No agent has that id.
    #[error("no agent with id `{0}`")]
    Unknown(String),
    /// The agent's actor did not start.
    #[error("agent `{id}` could not start: {reason}")]
    Spawn {
        /// The agent.
        id: String,
        /// Why.
        reason: String,
    },
    /// The work needs agents of a kind and was given none.
    #[error("{work} needs at least one {kind} agent")]
    NoAgents {
        /// The kind of agent needed.
        kind: AgentKind,
        /// The work asked for (a job, code generation, repository creation).
        work: &'static str,
    },
    /// An input of the work is not acceptable (a package name, say).
    #[error(transparent)]
    Invalid(CodegenError),
    /// The shared volume the agents write to failed.
    #[error(transparent)]
    Volume(#[from] crate::volume::VolumeError),
    /// The agent or its supervisor is down.
    #[error(transparent)]
    Unavailable(#[from] ChildError),
    /// A codegen agent could not produce a component.
    #[error("codegen agent `{agent}`: {error}")]
    Codegen {
        /// The agent.
        agent: String,
        /// Why.
        error: CodegenError,
    },
    /// A repository could not be created.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A runtime operation the agent needed failed.
    #[error(transparent)]
    Runtime(#[from] Box<crate::runtime::RuntimeError>),
    /// A task handler failed the task (its own reason).
    #[error("{0}")]
    Handler(String),
    /// A worker has no handler for a task's type.
    #[error("no handler for task type {task_type:?} (known: {})", .known.join(", "))]
    NoHandler {
        /// The task's type.
        task_type: String,
        /// The types there are handlers for.
        known: Vec<String>,
    },
    /// A task ran past its timeout (counted from when its worker started
    /// it).
    #[error("task of type {task_type:?} ran past its timeout of {after:?}")]
    TimedOut {
        /// The task's type.
        task_type: String,
        /// The timeout.
        after: std::time::Duration,
    },
    /// A sandbox operation failed.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// The worker running a task crashed or could not be reached.
    #[error("worker {worker} crashed or was unreachable: {cause}")]
    WorkerLost {
        /// The worker.
        worker: String,
        /// What its handle saw.
        cause: ChildError,
    },
}

impl AgentError {
    /// A handler's own failure of a task, with its reason.
    pub fn handler(reason: impl Into<String>) -> AgentError {
        AgentError::Handler(reason.into())
    }
}

/// What the agents of one runtime share: who is registered, the event
/// bus, the task handlers. Kept per runtime ([`Runtime::extension`]); the
/// agents' actors themselves are children of the runtime's supervisor.
pub(crate) struct AgentShared {
    /// Each agent with the token of its registration: an event about an
    /// earlier agent of the same id changes nothing.
    agents: Mutex<HashMap<String, (u64, AgentInfo)>>,
    tokens: std::sync::atomic::AtomicU64,
    events: broadcast::Sender<AgentEvent>,
    handlers: worker::Handlers,
}

impl Default for AgentShared {
    fn default() -> Self {
        AgentShared {
            agents: Mutex::new(HashMap::new()),
            tokens: std::sync::atomic::AtomicU64::new(0),
            events: broadcast::channel(1024).0,
            handlers: Arc::default(),
        }
    }
}

impl AgentShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, AgentInfo)>> {
        self.agents.lock().recover()
    }

    /// What the supervisor tells of agent `id` (registration `token`),
    /// kept and passed on.
    fn on_event(&self, id: &str, token: u64, event: ChildEvent) {
        let mut agents = self.lock();
        let Some((_, info)) = agents.get_mut(id).filter(|(t, _)| *t == token) else {
            return;
        };
        let id = id.to_owned();
        let event = match event {
            ChildEvent::Restarted { reason, restarts } => {
                info.restarts = restarts;
                AgentEvent::Restarted {
                    id,
                    reason,
                    restarts,
                }
            }
            ChildEvent::GaveUp { reason } => {
                agents.remove(&id);
                AgentEvent::GaveUp { id, reason }
            }
            ChildEvent::Stopped { reason } => {
                agents.remove(&id);
                AgentEvent::Stopped { id, reason }
            }
        };
        drop(agents);
        let _ = self.events.send(event);
    }
}

/// The supervisor's key of agent `id`.
fn child_key(id: &str) -> String {
    format!("agent/{id}")
}

/// Checks an agent id: 1 to 64 of `[A-Za-z0-9._-]`.
pub(crate) fn validate_agent_id(id: &str) -> Result<(), SpecError> {
    crate::spec::validate_object_name("agent_id", id)
}

/// The agents of a runtime: spawn, list, stop, fault-inject, and watch their
/// lifecycle. Every `Agents` of one runtime sees the same agents.
#[derive(Clone)]
pub struct Agents {
    runtime: Runtime,
    shared: Arc<AgentShared>,
}

impl fmt::Debug for Agents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agents")
            .field("agents", &self.list())
            .finish()
    }
}

impl Runtime {
    /// The agents of this runtime ([`Agents::new`]): spawn masters,
    /// workers, codegen and repo-creator agents, register task handlers,
    /// watch their lifecycle.
    pub fn agents(&self) -> Agents {
        Agents::new(self)
    }
}

impl Agents {
    /// The agents of `runtime`; agents are children of its supervisor.
    pub fn new(runtime: &Runtime) -> Agents {
        Agents {
            shared: runtime.extension::<AgentShared>(),
            runtime: runtime.clone(),
        }
    }

    /// Starts agent `id` of `kind`, an actor made by `make` from `args`,
    /// publishing its ref (across restarts) through `publish`.
    pub(crate) async fn start<A>(
        &self,
        id: &str,
        kind: AgentKind,
        publish: tokio::sync::watch::Sender<Option<ActorRef<A::Msg>>>,
        make: fn() -> A,
        args: A::Arguments,
        panic_msg: fn() -> A::Msg,
    ) -> Result<(), AgentError>
    where
        A: Actor,
        A::Arguments: Clone + Sync,
    {
        let runner = crate::supervisor::ChildRunner {
            make,
            args,
            publish,
            panic_msg,
        };
        self.register(id, kind, Box::new(runner)).await
    }

    /// Starts an agent under the runtime's supervisor.
    async fn register(
        &self,
        id: &str,
        kind: AgentKind,
        spec: Box<dyn ChildSpec>,
    ) -> Result<(), AgentError> {
        validate_agent_id(id)?;
        let token = self
            .shared
            .tokens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut agents = self.shared.lock();
            if agents.contains_key(id) {
                return Err(AgentError::Duplicate(id.to_owned()));
            }
            let info = AgentInfo {
                id: id.to_owned(),
                kind,
                restarts: 0,
            };
            agents.insert(id.to_owned(), (token, info));
        }
        let events: ChildEvents = {
            let (shared, id) = (Arc::downgrade(&self.shared), id.to_owned());
            Arc::new(move |event| {
                if let Some(shared) = shared.upgrade() {
                    shared.on_event(&id, token, event);
                }
            })
        };
        let added = self.runtime.supervise(&child_key(id), spec, events).await;
        if let Err(e) = added {
            let mut agents = self.shared.lock();
            if agents.get(id).is_some_and(|(t, _)| *t == token) {
                agents.remove(id);
            }
            drop(agents);
            return Err(match e {
                SuperviseError::Duplicate => AgentError::Duplicate(id.to_owned()),
                SuperviseError::Start(e) => AgentError::Spawn {
                    id: id.to_owned(),
                    reason: e.to_string(),
                },
                SuperviseError::Down(e) => AgentError::Unavailable(e),
            });
        }
        tracing::info!(agent = %id, %kind, "agent started");
        Ok(())
    }

    /// The registered agents, sorted by id.
    pub fn list(&self) -> Vec<AgentInfo> {
        let mut all: Vec<AgentInfo> = self
            .shared
            .lock()
            .values()
            .map(|(_, info)| info.clone())
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Stops and forgets an agent; returns whether it existed.
    pub async fn stop(&self, id: &str) -> Result<bool, AgentError> {
        // The supervisor tells the agent's hook (which forgets it) before
        // it answers; an agent still starting is not there yet.
        Ok(self.runtime.unsupervise(&child_key(id)).await?)
    }

    /// Fault injection for chaos tests: makes the agent panic.
    pub fn inject_fault(&self, id: &str) {
        self.runtime.inject_fault_into(&child_key(id));
    }

    /// Lifecycle events from now on (restarts, give-ups).
    pub fn events(&self) -> broadcast::Receiver<AgentEvent> {
        self.shared.events.subscribe()
    }

    /// The runtime the agents run on.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }
}
