//! Agents: master, worker, codegen and repo-creator actors under an
//! [`AgentSupervisor`] that sits under the runtime's root supervisor.
//!
//! Agents register by id. Each kind has its own message enum and a cloneable
//! handle ([`WorkerHandle`], [`MasterHandle`], [`CodegenHandle`],
//! [`RepoCreatorHandle`]) that follows the agent across restarts. A panicking
//! agent is restarted from its registration under the runtime's
//! [`RestartPolicy`](crate::RestartPolicy), counted per agent; an agent that
//! fails more often than the policy allows is given up on and reported
//! through [`Agents::events`]. Registrations live outside the supervisor actor,
//! so if it is restarted itself it brings every agent back.

mod codegen;
mod master;
mod repo;
mod worker;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::runtime::Runtime;
use crate::spec::SpecError;
use crate::supervisor::{
    schedule_restart, ChildError, ChildSpec, Once, RestartBudget, RestartPolicy, Slot,
};

pub use codegen::{
    CodeGenerator, CodegenError, CodegenHandle, CodegenReport, CodegenTask, ComponentKind,
    ComponentResult, GeneratedCode, Language, TemplateGenerator,
};
pub use master::{JobProgress, JobReport, MasterConfig, MasterHandle, TaskResult, WorkerStats};
pub use repo::{RepoConfig, RepoCreatorConfig, RepoCreatorHandle, RepoError, RepoResult};
pub use worker::{AgentTask, HandlerFuture, TaskHandler, WorkerHandle};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

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
    Volume(#[from] crate::VolumeError),
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
    Runtime(#[from] Box<crate::RuntimeError>),
}

struct AgentRegistration {
    kind: AgentKind,
    spec: Arc<dyn ChildSpec>,
    /// Its actor while it runs; `None` while it waits to be restarted.
    cell: Option<ActorCell>,
    budget: RestartBudget,
}

/// Why the agent supervisor did not register an agent.
pub(crate) enum RegisterError {
    /// Another agent has that id.
    Duplicate,
    /// Its actor did not start.
    Start(ractor::SpawnErr),
}

/// What outlives the [`AgentSupervisor`] actor: registrations and the event bus.
pub(crate) struct AgentShared {
    agents: Mutex<HashMap<String, AgentRegistration>>,
    events: broadcast::Sender<AgentEvent>,
    policy: RestartPolicy,
    handlers: worker::Handlers,
}

impl AgentShared {
    pub(crate) fn new(policy: RestartPolicy) -> Arc<AgentShared> {
        Arc::new(AgentShared {
            agents: Mutex::new(HashMap::new()),
            events: broadcast::channel(1024).0,
            policy,
            handlers: Arc::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, AgentRegistration>> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops every registration (at shutdown; agents hold the runtime).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }
}

/// The agent supervisor actor.
pub(crate) struct AgentSupervisor;

/// Messages of the [`AgentSupervisor`].
pub(crate) enum AgentSupervisorMsg {
    /// Starts and registers an agent (its spec taken once, should the
    /// message be sent again after a restart of the supervisor).
    Register(
        String,
        AgentKind,
        Arc<Once<Box<dyn ChildSpec>>>,
        RpcReplyPort<Result<(), RegisterError>>,
    ),
    /// Starts a failed agent again (sent by the backoff timer), with why it
    /// failed.
    Restart(String, String),
    /// Stops and forgets an agent.
    Unregister(String, RpcReplyPort<bool>),
    /// Makes an agent panic (fault injection).
    InjectFault(String),
    /// Panics (fault injection).
    InjectPanic,
}

/// The agent supervisor as a child of the root supervisor, and the slot
/// [`Agents`] calls it through.
pub(crate) fn child(shared: Arc<AgentShared>) -> (Slot<AgentSupervisorMsg>, Box<dyn ChildSpec>) {
    crate::supervisor::child(
        crate::supervisor::RuntimeChild::Agents,
        || AgentSupervisor,
        AgentSupervisorArgs { shared },
        || AgentSupervisorMsg::InjectPanic,
    )
}

/// Arguments of the [`AgentSupervisor`].
#[derive(Clone)]
pub(crate) struct AgentSupervisorArgs {
    pub(crate) shared: Arc<AgentShared>,
}

/// State of the [`AgentSupervisor`].
pub(crate) struct AgentSupervisorState {
    shared: Arc<AgentShared>,
}

impl Actor for AgentSupervisor {
    type Msg = AgentSupervisorMsg;
    type State = AgentSupervisorState;
    type Arguments = AgentSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        // A restarted supervisor brings back every registered agent.
        let specs: Vec<(String, Arc<dyn ChildSpec>)> = {
            let mut agents = args.shared.lock();
            agents
                .iter_mut()
                .map(|(id, reg)| {
                    if let Some(old) = reg.cell.take() {
                        old.stop(None);
                    }
                    (id.clone(), reg.spec.clone())
                })
                .collect()
        };
        for (id, spec) in specs {
            let started = spec.start(myself.get_cell()).await;
            if let Some(reg) = args.shared.lock().get_mut(&id) {
                reg.cell = started.ok();
            }
        }
        Ok(AgentSupervisorState {
            shared: args.shared,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AgentSupervisorMsg::Register(id, kind, spec, reply) => {
                let Some(spec) = spec.take() else {
                    // A re-sent copy: the first one registered it.
                    let _ = reply.send(Ok(()));
                    return Ok(());
                };
                if state.shared.lock().contains_key(&id) {
                    let _ = reply.send(Err(RegisterError::Duplicate));
                    return Ok(());
                }
                let spec: Arc<dyn ChildSpec> = Arc::from(spec);
                match spec.start(myself.get_cell()).await {
                    Ok(cell) => {
                        let budget = RestartBudget::new(state.shared.policy);
                        state.shared.lock().insert(
                            id.clone(),
                            AgentRegistration {
                                kind,
                                spec,
                                cell: Some(cell),
                                budget,
                            },
                        );
                        tracing::info!(agent = %id, %kind, "agent started");
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RegisterError::Start(e)));
                    }
                }
            }
            AgentSupervisorMsg::Restart(id, reason) => {
                let spec = match state.shared.lock().get(&id) {
                    Some(reg) if reg.cell.is_none() => reg.spec.clone(),
                    // Unregistered meanwhile, or already back.
                    _ => return Ok(()),
                };
                let started = spec.start(myself.get_cell()).await;
                let restarts = {
                    let mut agents = state.shared.lock();
                    let Some(reg) = agents.get_mut(&id) else {
                        return Ok(());
                    };
                    reg.cell = started.ok();
                    reg.budget.total
                };
                let _ = state.shared.events.send(AgentEvent::Restarted {
                    id,
                    reason,
                    restarts,
                });
            }
            AgentSupervisorMsg::Unregister(id, reply) => {
                let removed = state.shared.lock().remove(&id);
                if let Some(cell) = removed.as_ref().and_then(|r| r.cell.as_ref()) {
                    cell.stop(Some("unregistered".into()));
                }
                let _ = reply.send(removed.is_some());
            }
            AgentSupervisorMsg::InjectFault(id) => {
                if let Some(reg) = state.shared.lock().get(&id) {
                    tracing::warn!(agent = %id, "injecting a panic");
                    reg.spec.inject_panic();
                }
            }
            AgentSupervisorMsg::InjectPanic => panic!("fault injected into the agent supervisor"),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(cell, err) = event else {
            return Ok(());
        };
        let reason = err.to_string();
        let mut agents = state.shared.lock();
        let Some((id, reg)) = agents
            .iter_mut()
            .find(|(_, r)| r.cell.as_ref().is_some_and(|c| c.get_id() == cell.get_id()))
        else {
            return Ok(());
        };
        let id = id.clone();
        reg.cell = None;
        let restart = {
            let (id, reason) = (id.clone(), reason.clone());
            move || AgentSupervisorMsg::Restart(id, reason)
        };
        if !schedule_restart(&myself, &mut reg.budget, &id, &reason, restart) {
            agents.remove(&id);
            drop(agents);
            tracing::error!(agent = %id, %reason, "agent failed too often; giving up on it");
            let _ = state.shared.events.send(AgentEvent::GaveUp { id, reason });
        }
        Ok(())
    }
}

/// Checks an agent id: 1 to 64 of `[A-Za-z0-9._-]`.
pub(crate) fn validate_agent_id(id: &str) -> Result<(), SpecError> {
    crate::spec::validate_object_name("agent_id", id)
}

/// The agents of a runtime: spawn, list, stop, fault-inject, and watch their
/// lifecycle. Get one with [`Runtime::agents`].
#[derive(Clone)]
pub struct Agents {
    pub(crate) runtime: Runtime,
    pub(crate) slot: Slot<AgentSupervisorMsg>,
    pub(crate) shared: Arc<AgentShared>,
}

impl fmt::Debug for Agents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agents")
            .field("agents", &self.list())
            .finish()
    }
}

impl Agents {
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

    /// Starts an agent under the agent supervisor.
    pub(crate) async fn register(
        &self,
        id: &str,
        kind: AgentKind,
        spec: Box<dyn ChildSpec>,
    ) -> Result<(), AgentError> {
        validate_agent_id(id)?;
        if self.shared.lock().contains_key(id) {
            return Err(AgentError::Duplicate(id.to_owned()));
        }
        let spec = Once::new(spec);
        self.slot
            .call(CALL_TIMEOUT, |reply| {
                AgentSupervisorMsg::Register(id.to_owned(), kind, spec.clone(), reply)
            })
            .await?
            .map_err(|e| match e {
                RegisterError::Duplicate => AgentError::Duplicate(id.to_owned()),
                RegisterError::Start(e) => AgentError::Spawn {
                    id: id.to_owned(),
                    reason: e.to_string(),
                },
            })
    }

    /// The registered agents, sorted by id.
    pub fn list(&self) -> Vec<AgentInfo> {
        let mut all: Vec<AgentInfo> = self
            .shared
            .lock()
            .iter()
            .map(|(id, r)| AgentInfo {
                id: id.clone(),
                kind: r.kind,
                restarts: r.budget.total,
            })
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Stops and forgets an agent; returns whether it existed.
    pub async fn stop(&self, id: &str) -> Result<bool, AgentError> {
        Ok(self
            .slot
            .call(CALL_TIMEOUT, |reply| {
                AgentSupervisorMsg::Unregister(id.to_owned(), reply)
            })
            .await?)
    }

    /// Fault injection for chaos tests: makes the agent panic.
    pub fn inject_fault(&self, id: &str) {
        self.slot
            .cast(AgentSupervisorMsg::InjectFault(id.to_owned()));
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
