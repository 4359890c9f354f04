//! The root supervisor and its restart policy.
//!
//! The runtime's children (function registry, task tracker, dispatcher) are
//! spawned linked to a root supervisor. When one fails (a panic in a handler),
//! the supervisor restarts it one-for-one from the same arguments; children
//! keep their state in shared stores handed in through those arguments, so a
//! restart loses no registered function or task record. More than
//! `max_restarts` failures within `window` escalate: the supervisor stops and
//! the runtime reports itself unavailable.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, Message, RpcReplyPort, SupervisionEvent,
};
use tokio::sync::watch;

/// How the root supervisor reacts to a failing child.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    /// Restarts allowed within `window` before escalating (default 5).
    pub max_restarts: u32,
    /// The sliding window restarts are counted in (default 10 s).
    pub window: Duration,
    /// Delay before a restart, doubled for each restart already in the window
    /// (default 10 ms, at most 1 s).
    pub backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 5,
            window: Duration::from_secs(10),
            backoff: Duration::from_millis(10),
        }
    }
}

/// Restarts counted against a [`RestartPolicy`]'s window.
#[derive(Debug)]
pub(crate) struct RestartBudget {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
    pub(crate) total: u64,
}

impl RestartBudget {
    pub(crate) fn new(policy: RestartPolicy) -> RestartBudget {
        RestartBudget {
            policy,
            recent: VecDeque::new(),
            total: 0,
        }
    }

    /// The delay before the next restart, or `None` when the policy's
    /// intensity is exceeded and the failure must escalate.
    pub(crate) fn next_restart(&mut self) -> Option<Duration> {
        let now = Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() as u32 >= self.policy.max_restarts {
            return None;
        }
        let delay = self
            .policy
            .backoff
            .saturating_mul(1 << self.recent.len().min(10))
            .min(Duration::from_secs(1));
        self.recent.push_back(now);
        self.total += 1;
        Some(delay)
    }
}

/// The runtime's supervised children, for fault injection and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuntimeChild {
    /// The function registry.
    Registry,
    /// The task tracker.
    Tracker,
    /// The dispatcher.
    Dispatcher,
    /// The volume store.
    Volumes,
    /// The agent supervisor.
    Agents,
}

impl fmt::Display for RuntimeChild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuntimeChild::Registry => "function registry",
            RuntimeChild::Tracker => "task tracker",
            RuntimeChild::Dispatcher => "dispatcher",
            RuntimeChild::Volumes => "volume store",
            RuntimeChild::Agents => "agent supervisor",
        })
    }
}

/// Why a runtime child could not be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChildError {
    /// It did not answer within the call's timeout.
    #[error("the {0} did not answer in time")]
    Timeout(String),
    /// It is down and was not restarted in time (or the runtime stopped).
    #[error("the {0} is unavailable")]
    Down(String),
}

/// How long a call waits for a failed child to be restarted.
const RESTART_WAIT: Duration = Duration::from_secs(5);

/// The current `ActorRef` of a supervised child; the supervisor replaces it on
/// restart and handles follow.
#[derive(Debug)]
pub(crate) struct Slot<M: Message> {
    label: Arc<str>,
    rx: watch::Receiver<Option<ActorRef<M>>>,
}

impl<M: Message> Clone for Slot<M> {
    fn clone(&self) -> Self {
        Slot {
            label: self.label.clone(),
            rx: self.rx.clone(),
        }
    }
}

impl<M: Message> Slot<M> {
    pub(crate) fn new(label: impl fmt::Display) -> (Slot<M>, watch::Sender<Option<ActorRef<M>>>) {
        let (tx, rx) = watch::channel(None);
        let label = label.to_string().into();
        (Slot { label, rx }, tx)
    }

    /// Whether the child is running now (false while it is being restarted).
    pub(crate) fn is_up(&self) -> bool {
        self.rx
            .borrow()
            .as_ref()
            .is_some_and(|a| a.get_status() == ractor::ActorStatus::Running)
    }

    /// The id of the child's current actor; a restart gives a new one.
    pub(crate) fn actor_id(&self) -> Option<ractor::ActorId> {
        self.rx.borrow().as_ref().map(|a| a.get_id())
    }

    /// Calls the child once; if it is down or dies before answering, says so
    /// without re-sending.
    pub(crate) async fn call_once<R: Send + 'static>(
        &self,
        timeout: Duration,
        build: impl FnOnce(RpcReplyPort<R>) -> M,
    ) -> Result<R, ChildError> {
        let actor = self.rx.borrow().clone();
        let Some(actor) = actor else {
            return Err(ChildError::Down(self.label.to_string()));
        };
        match actor.call(build, Some(timeout)).await {
            Ok(ractor::rpc::CallResult::Success(reply)) => Ok(reply),
            Ok(ractor::rpc::CallResult::Timeout) => {
                Err(ChildError::Timeout(self.label.to_string()))
            }
            _ => Err(ChildError::Down(self.label.to_string())),
        }
    }

    /// Sends without waiting; a message to a child that is down is dropped.
    pub(crate) fn cast(&self, msg: M) {
        if let Some(actor) = self.rx.borrow().as_ref() {
            let _ = actor.cast(msg);
        }
    }

    /// Calls the child. When it is down (or dies before answering), waits for
    /// the supervisor to restart it and calls again, so `build` may run more
    /// than once: messages sent this way must be idempotent.
    pub(crate) async fn call<R: Send + 'static>(
        &self,
        timeout: Duration,
        build: impl Fn(RpcReplyPort<R>) -> M,
    ) -> Result<R, ChildError> {
        let deadline = tokio::time::Instant::now() + RESTART_WAIT;
        let mut rx = self.rx.clone();
        loop {
            let actor = rx.borrow_and_update().clone();
            if let Some(actor) = actor {
                let ms = timeout.as_millis() as u64;
                match ractor::call_t!(actor, build, ms) {
                    Ok(reply) => return Ok(reply),
                    Err(ractor::RactorErr::Timeout) => {
                        return Err(ChildError::Timeout(self.label.to_string()))
                    }
                    Err(e) => {
                        tracing::debug!(child = %self.label, error = %e, "child unreachable; waiting for restart")
                    }
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(ChildError::Down(self.label.to_string())),
            }
        }
    }
}

/// A child the supervisor can (re)start.
#[async_trait]
pub(crate) trait ChildSpec: Send + Sync + 'static {
    /// Names the child in logs and fault injection.
    fn label(&self) -> &str;
    /// Spawns the child linked to `supervisor` and publishes its new ref.
    async fn start(&self, supervisor: ActorCell) -> Result<ActorCell, ractor::SpawnErr>;
    /// Makes the running child panic (fault injection).
    fn inject_panic(&self);
}

/// Restarts any child of the runtime by calling its [`ChildSpec`].
pub(crate) struct ChildRunner<A: Actor> {
    pub(crate) label: String,
    pub(crate) make: fn() -> A,
    pub(crate) args: A::Arguments,
    pub(crate) publish: watch::Sender<Option<ActorRef<A::Msg>>>,
    pub(crate) panic_msg: fn() -> A::Msg,
}

#[async_trait]
impl<A> ChildSpec for ChildRunner<A>
where
    A: Actor,
    A::Arguments: Clone + Sync,
{
    fn label(&self) -> &str {
        &self.label
    }

    async fn start(&self, supervisor: ActorCell) -> Result<ActorCell, ractor::SpawnErr> {
        let (actor, _join) =
            Actor::spawn_linked(None, (self.make)(), self.args.clone(), supervisor).await?;
        let cell = actor.get_cell();
        self.publish.send_replace(Some(actor));
        Ok(cell)
    }

    fn inject_panic(&self) {
        if let Some(actor) = self.publish.borrow().as_ref() {
            let _ = actor.cast((self.panic_msg)());
        }
    }
}

/// The root of the runtime's supervision tree.
pub(crate) struct RootSupervisor;

/// Messages of the [`RootSupervisor`].
pub(crate) enum RootSupervisorMsg {
    /// Make a child panic (for chaos tests).
    InjectFault(RuntimeChild),
    /// How many restarts have happened so far.
    Restarts(RpcReplyPort<u64>),
}

/// Arguments of the [`RootSupervisor`].
pub(crate) struct RootSupervisorArgs {
    pub(crate) children: Vec<Box<dyn ChildSpec>>,
    pub(crate) policy: RestartPolicy,
}

/// State of the [`RootSupervisor`].
pub(crate) struct RootSupervisorState {
    children: Vec<(Box<dyn ChildSpec>, ActorCell)>,
    budget: RestartBudget,
}

impl Actor for RootSupervisor {
    type Msg = RootSupervisorMsg;
    type State = RootSupervisorState;
    type Arguments = RootSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut children = Vec::new();
        for spec in args.children {
            let cell = spec.start(myself.get_cell()).await?;
            children.push((spec, cell));
        }
        Ok(RootSupervisorState {
            children,
            budget: RestartBudget::new(args.policy),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for (_, cell) in state.children.iter().rev() {
            cell.stop(None);
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RootSupervisorMsg::InjectFault(child) => {
                let label = child.to_string();
                if let Some((spec, _)) = state.children.iter().find(|(s, _)| s.label() == label) {
                    tracing::warn!(%child, "injecting a panic");
                    spec.inject_panic();
                }
            }
            RootSupervisorMsg::Restarts(reply) => {
                let _ = reply.send(state.budget.total);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".to_owned()))
            }
            _ => return Ok(()),
        };
        let Some(pos) = state
            .children
            .iter()
            .position(|(_, c)| c.get_id() == cell.get_id())
        else {
            return Ok(());
        };
        let child = state.children[pos].0.label().to_owned();
        let Some(delay) = state.budget.next_restart() else {
            tracing::error!(%child, %reason, "restart intensity exceeded; escalating by stopping the runtime");
            myself.stop(Some(format!("{child} failed too often: {reason}")));
            return Ok(());
        };
        tracing::warn!(%child, %reason, ?delay, "runtime child failed; restarting");
        tokio::time::sleep(delay).await;
        let new_cell = state.children[pos].0.start(myself.get_cell()).await?;
        state.children[pos].1 = new_cell;
        Ok(())
    }
}
