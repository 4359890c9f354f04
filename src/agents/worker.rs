//! Workers: run tasks by type, one at a time. `analysis` and `validation` are
//! built in and run Python functions on the runtime's compute; other types
//! are handled by [`TaskHandler`]s registered with
//! [`Agents::register_handler`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{AgentError, AgentKind, Agents};
use crate::runtime::Runtime;
use crate::spec::FunctionSpec;
use crate::supervisor::{ChildError, Slot};

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

/// What a handler returns: the task's result, or why it failed.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, String>> + Send>>;

/// Runs tasks of one type. Closures `Fn(Runtime, AgentTask) -> impl Future`
/// implement it.
pub trait TaskHandler: Send + Sync + 'static {
    /// Runs one task.
    fn handle(&self, runtime: Runtime, task: AgentTask) -> HandlerFuture;
}

impl<F, Fut> TaskHandler for F
where
    F: Fn(Runtime, AgentTask) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, String>> + Send + 'static,
{
    fn handle(&self, runtime: Runtime, task: AgentTask) -> HandlerFuture {
        Box::pin(self(runtime, task))
    }
}

/// Handlers by task type, shared by every worker of a runtime.
pub(crate) type Handlers = Arc<DashMap<String, Arc<dyn TaskHandler>>>;

/// The Python behind the built-in `analysis` tasks: statistics of a text or
/// of a list of numbers.
const ANALYSIS: &str = r#"
import re, statistics
from collections import Counter

def agent_analysis(data):
    if not isinstance(data, dict):
        raise TypeError("analysis data must be an object with 'text' or 'values'")
    if "text" in data:
        text = str(data["text"])
        words = re.findall(r"[A-Za-z0-9']+", text.lower())
        sentences = [s for s in re.split(r"[.!?]+", text) if s.strip()]
        return {
            "kind": "text",
            "words": len(words),
            "unique_words": len(set(words)),
            "sentences": len(sentences),
            "mean_word_length": round(sum(map(len, words)) / len(words), 3) if words else 0,
            "top_words": [w for w, _ in Counter(words).most_common(5)],
        }
    if "values" in data:
        values = [float(v) for v in data["values"]]
        if not values:
            raise ValueError("analysis of an empty 'values' list")
        return {
            "kind": "values",
            "count": len(values),
            "mean": round(statistics.fmean(values), 6),
            "stdev": round(statistics.pstdev(values), 6),
            "min": min(values),
            "max": max(values),
            "median": statistics.median(values),
        }
    raise ValueError("analysis data needs 'text' or 'values', got keys %s" % sorted(data))
"#;

/// The Python behind the built-in `validation` tasks: a record checked
/// against required fields, types and numeric ranges.
const VALIDATION: &str = r#"
TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool, "list": list, "dict": dict}

def agent_validation(data):
    record = data.get("record")
    schema = data.get("schema", {})
    if not isinstance(record, dict):
        raise TypeError("validation data needs a 'record' object")
    errors = []
    for field in schema.get("required", []):
        if field not in record:
            errors.append("missing required field %r" % field)
    for field, type_name in schema.get("types", {}).items():
        if field in record:
            expected = TYPES.get(type_name)
            if expected is None:
                raise ValueError("unknown type %r in schema (known: %s)" % (type_name, ", ".join(TYPES)))
            value = record[field]
            if not isinstance(value, expected) or (type_name != "bool" and isinstance(value, bool)):
                errors.append("%s: expected %s, got %s" % (field, type_name, type(value).__name__))
    for field, (low, high) in schema.get("ranges", {}).items():
        value = record.get(field)
        if isinstance(value, (int, float)) and not (low <= value <= high):
            errors.append("%s: %r outside [%r, %r]" % (field, value, low, high))
    return {"valid": not errors, "errors": errors, "fields": len(record)}
"#;

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
            .map_err(|e| e.to_string())
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

/// A worker agent.
pub(crate) struct Worker;

/// Messages of a [`Worker`].
pub(crate) enum WorkerMsg {
    /// Runs a task and answers its outcome.
    Run(AgentTask, RpcReplyPort<Result<Value, String>>),
    /// Panics (fault injection).
    InjectPanic,
}

/// Arguments of a [`Worker`].
#[derive(Clone)]
pub(crate) struct WorkerArgs {
    id: String,
    runtime: Runtime,
    handlers: Handlers,
}

/// State of a [`Worker`].
pub(crate) struct WorkerState {
    args: WorkerArgs,
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(WorkerState { args })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkerMsg::Run(task, reply) => {
                let handler = state.args.handlers.get(&task.kind).map(|h| h.clone());
                let outcome = match handler {
                    None => {
                        let mut known: Vec<String> = state
                            .args
                            .handlers
                            .iter()
                            .map(|e| e.key().clone())
                            .collect();
                        known.sort();
                        Err(format!(
                            "no handler for task type {:?} (known: {})",
                            task.kind,
                            known.join(", ")
                        ))
                    }
                    Some(handler) => {
                        tracing::debug!(worker = %state.args.id, kind = %task.kind, "running task");
                        handler.handle(state.args.runtime.clone(), task).await
                    }
                };
                let _ = reply.send(outcome);
            }
            WorkerMsg::InjectPanic => panic!("fault injected into worker {}", state.args.id),
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

    /// Runs a task on this worker and waits for it. `Err` when the worker
    /// crashed (or was down) before answering; the task is not re-sent.
    pub async fn run(
        &self,
        task: AgentTask,
        timeout: Duration,
    ) -> Result<Result<Value, String>, ChildError> {
        self.slot
            .call_once(timeout, |reply| WorkerMsg::Run(task, reply))
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
            || Worker,
            WorkerArgs {
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
