//! Workers: run tasks by type, one at a time. `analysis` and `validation` are
//! built in and run Python functions on the runtime's compute; other types
//! are handled by [`TaskHandler`]s registered with
//! [`Agents::register_handler`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ractor::{ActorProcessingErr, RpcReplyPort};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{AgentError, AgentKind, Agents};
use crate::runtime::Runtime;
use crate::spec::FunctionSpec;
use crate::supervisor::{ChildError, Slot};
use crate::supervisor::{Serial, SerialActor};

/// A task for a worker, in the seed's shape: `{"type": ..., "data": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentTask {
    /// Which handler runs it (`analysis`, `validation`, or a registered type).
    #[serde(rename = "type")]
    pub kind: String,
    /// The handler's input.
    #[serde(default)]
    pub data: Value,
}

impl AgentTask {
    /// A task of `kind` with `data`.
    pub fn new(kind: impl Into<String>, data: Value) -> AgentTask {
        AgentTask {
            kind: kind.into(),
            data,
        }
    }
}

/// What a handler returns: the task's result, or why it failed
/// ([`AgentError::handler`] for a reason of its own).
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, AgentError>> + Send>>;

/// Runs tasks of one type. Closures `Fn(Runtime, AgentTask) -> impl Future`
/// implement it.
pub trait TaskHandler: Send + Sync + 'static {
    /// Runs one task.
    fn handle(&self, runtime: Runtime, task: AgentTask) -> HandlerFuture;
}

impl<F, Fut> TaskHandler for F
where
    F: Fn(Runtime, AgentTask) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, AgentError>> + Send + 'static,
{
    fn handle(&self, runtime: Runtime, task: AgentTask) -> HandlerFuture {
        Box::pin(self(runtime, task))
    }
}

/// Handlers by task type, shared by every worker of a runtime.
pub(crate) type Handlers = Arc<DashMap<String, Arc<dyn TaskHandler>>>;

/// The Python behind the built-in `analysis` tasks: statistics of a text or
/// of a list of numbers.
const ANALYSIS: &str = include_str!("worker/analysis.py");

/// The Python behind the built-in `validation` tasks: a record checked
/// against required fields, types and numeric ranges.
const VALIDATION: &str = include_str!("worker/validation.py");

/// Deploys the built-in functions if they are not deployed yet.
pub(crate) async fn ensure_builtins(runtime: &Runtime) -> Result<(), AgentError> {
    for (name, code) in [
        ("agent_analysis", ANALYSIS),
        ("agent_validation", VALIDATION),
    ] {
        if runtime.function(name).is_none() {
            runtime
                .deploy_function(FunctionSpec::new(name, code).timeout_s(120))
                .await
                .map_err(|e| AgentError::Runtime(Box::new(e)))?;
        }
    }
    Ok(())
}

fn builtin(function: &'static str) -> Arc<dyn TaskHandler> {
    Arc::new(move |rt: Runtime, task: AgentTask| async move {
        rt.call(function, vec![task.data], Map::new())
            .await
            .map_err(|e| AgentError::Runtime(Box::new(e)))
    })
}

pub(crate) fn builtin_handlers(handlers: &Handlers) {
    handlers
        .entry("analysis".into())
        .or_insert_with(|| builtin("agent_analysis"));
    handlers
        .entry("validation".into())
        .or_insert_with(|| builtin("agent_validation"));
}

/// How many tasks a [`WorkerHandle::run`] allows for ahead of its own in
/// the worker's mailbox (a master keeps at most `per_worker` in flight).
const QUEUED_AHEAD: u32 = 8;

/// Messages of a [`Worker`].
pub(crate) enum WorkerMsg {
    /// Runs a task and answers its outcome.
    /// Runs a task for at most the given time, counted from when the
    /// worker starts it (not while it waits in the mailbox).
    Run(
        AgentTask,
        std::time::Duration,
        RpcReplyPort<Result<Value, AgentError>>,
    ),
    /// Panics (fault injection).
    InjectPanic,
}

/// A worker agent: the [`Serial`] state it is (re)started from, handling its messages one at a time.
#[derive(Clone)]
pub(crate) struct Worker {
    id: String,
    runtime: Runtime,
    handlers: Handlers,
}

impl Serial for Worker {
    type Msg = WorkerMsg;

    async fn handle(&mut self, message: WorkerMsg) -> Result<(), ActorProcessingErr> {
        match message {
            WorkerMsg::Run(task, limit, reply) => {
                let handler = self.handlers.get(&task.kind).map(|h| h.clone());
                let outcome = match handler {
                    None => {
                        let mut known: Vec<String> =
                            self.handlers.iter().map(|e| e.key().clone()).collect();
                        known.sort();
                        Err(AgentError::NoHandler {
                            task_type: task.kind.clone(),
                            known,
                        })
                    }
                    Some(handler) => {
                        tracing::debug!(worker = %self.id, kind = %task.kind, "running task");
                        let kind = task.kind.clone();
                        let run = handler.handle(self.runtime.clone(), task);
                        match tokio::time::timeout(limit, run).await {
                            Ok(outcome) => outcome,
                            Err(_) => Err(AgentError::TimedOut {
                                task_type: kind,
                                after: limit,
                            }),
                        }
                    }
                };
                let _ = reply.send(outcome);
            }
            WorkerMsg::InjectPanic => panic!("fault injected into worker {}", self.id),
        }
        Ok(())
    }
}

/// A handle to a worker agent; it follows the worker across restarts.
#[derive(Clone)]
pub struct WorkerHandle {
    id: String,
    slot: Slot<WorkerMsg>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("id", &self.id)
            .finish()
    }
}

impl WorkerHandle {
    /// The worker's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the worker is running now (false while it is being restarted).
    pub fn is_up(&self) -> bool {
        self.slot.is_up()
    }

    /// The id of the worker's current actor (a restart gives a new one).
    pub(crate) fn actor_id(&self) -> Option<ractor::ActorId> {
        self.slot.actor_id()
    }

    /// Runs a task on this worker and waits for it; the task may run for
    /// `timeout` once the worker starts it (time spent queued behind other
    /// tasks does not count: [`AgentError::TimedOut`] past it). `Err` when
    /// the worker crashed (or was down) before answering; the task is not
    /// re-sent.
    pub async fn run(
        &self,
        task: AgentTask,
        timeout: Duration,
    ) -> Result<Result<Value, AgentError>, ChildError> {
        // The answer's own bound only guards against a worker that never
        // answers: room for a few tasks queued ahead of this one.
        let answer_within = timeout.saturating_mul(QUEUED_AHEAD + 1) + Duration::from_secs(30);
        self.slot
            .call_once(answer_within, |reply| WorkerMsg::Run(task, timeout, reply))
            .await
    }
}

impl Agents {
    /// Registers a handler for tasks of `kind` on every worker of this
    /// runtime (replacing one registered before).
    pub fn register_handler(&self, kind: impl Into<String>, handler: impl TaskHandler) {
        self.shared.handlers.insert(kind.into(), Arc::new(handler));
    }

    /// Starts a worker agent. The built-in `analysis` and `validation`
    /// functions are deployed on first use.
    pub async fn spawn_worker(&self, id: &str) -> Result<WorkerHandle, AgentError> {
        super::validate_agent_id(id)?;
        ensure_builtins(&self.runtime).await?;
        builtin_handlers(&self.shared.handlers);
        let (slot, publish) = Slot::new(format!("worker {id}"));
        self.start(
            id,
            AgentKind::Worker,
            publish,
            SerialActor::<Worker>::new,
            Worker {
                id: id.to_owned(),
                runtime: self.runtime.clone(),
                handlers: self.shared.handlers.clone(),
            },
            || WorkerMsg::InjectPanic,
        )
        .await?;
        Ok(WorkerHandle {
            id: id.to_owned(),
            slot,
        })
    }
}
