//! The one supervisor, its restart policy, and the shape of every actor.
//!
//! Children are added to the root supervisor while the runtime runs
//! ([`RootSupervisorMsg::Supervise`]): each open volume's actor (keyed
//! `volume/<name>#<n>`) and each agent (`agent/<id>`).
//! When a child fails (a panic in a handler), it is restarted one-for-one
//! from the same arguments; children keep their state in shared stores
//! handed in through those arguments, so a restart loses no task record.
//! The runtime's own children share one budget: more than `max_restarts`
//! failures within `window` escalate, the supervisor stops and the runtime
//! reports itself unavailable. A dynamic child has a budget of its own and
//! is forgotten (its owner told through its [`ChildEvents`] hook) when it
//! is spent, never escalating.
//!
//! The backoff is a timer (`send_after`) that sends the supervisor a
//! restart message ([`schedule_restart`]), never a sleep in its handler, so
//! its mailbox stays open while a child waits to come back. Children are
//! found by typed keys ([`ChildKey`]).
//!
//! ## The shape of an actor
//!
//! An actor exists only where something must be serialized (a volume's
//! versions, an agent's state); anything else is a plain handle over
//! shared state (the function registry, the task records, the dispatcher). Each actor module has:
//!
//! - one message enum, and a state that is what the actor is started from
//!   (the shared stores a restart must find again) and implements
//!   [`Serial`], run by [`SerialActor`]; only an actor that truly owns
//!   more (a volume's open log) implements ractor's `Actor` itself;
//! - a cloneable handle that calls the actor through a [`Slot`] with a
//!   timeout, so it follows the actor across restarts;
//! - one `child(args) -> (Handle, Box<dyn ChildSpec>)`, built on [`child`],
//!   through which the runtime's builder wires it under the root.

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
    /// Restarts allowed within `window` before escalating: the runtime
    /// stops when one of its own children fails more often, an agent is
    /// given up on (default 5).
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
    /// The volumes: each open volume's actor.
    Volumes,
}

impl fmt::Display for RuntimeChild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuntimeChild::Volumes => "volumes",
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
        // Not started yet (a child being added): nothing was sent, so
        // waiting for its first start re-sends nothing.
        let mut rx = self.rx.clone();
        let started = rx.wait_for(Option::is_some);
        let actor = match tokio::time::timeout(RESTART_WAIT, started).await {
            Ok(Ok(actor)) => actor.clone(),
            _ => None,
        };
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
    /// Spawns the child linked to `supervisor` and publishes its new ref.
    async fn start(&self, supervisor: ActorCell) -> Result<ActorCell, ractor::SpawnErr>;
    /// Makes the running child panic (fault injection).
    fn inject_panic(&self);
}

/// An actor that is its state: it handles one message at a time over what
/// it was started from (the shared stores a restart must find again).
/// Every actor but the supervisor and the volume actors takes this shape;
/// [`SerialActor`] runs it.
pub(crate) trait Serial: Send + Sync + Sized + 'static {
    /// Its one message enum.
    type Msg: Message;

    /// Handles one message; a panic or an error fails the actor, and its
    /// supervisor restarts it from the same state.
    fn handle(
        &mut self,
        message: Self::Msg,
    ) -> impl std::future::Future<Output = Result<(), ActorProcessingErr>> + Send;
}

/// The ractor actor that runs a [`Serial`] state.
pub(crate) struct SerialActor<S>(std::marker::PhantomData<fn() -> S>);

impl<S> SerialActor<S> {
    pub(crate) fn new() -> Self {
        SerialActor(std::marker::PhantomData)
    }
}

impl<S: Serial> Actor for SerialActor<S> {
    type Msg = S::Msg;
    type State = S;
    type Arguments = S;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: S,
    ) -> Result<S, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut S,
    ) -> Result<(), ActorProcessingErr> {
        state.handle(message).await
    }
}

/// Restarts any child of the runtime by calling its [`ChildSpec`].
pub(crate) struct ChildRunner<A: Actor> {
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

/// After a child's failure: restart it once the delay `budget` allows has
/// passed, by a timer that sends `myself` the message `restart` builds (the
/// supervisor's mailbox stays open meanwhile); `false` when the budget is
/// spent and the caller must escalate or give up.
pub(crate) fn schedule_restart<M: Message>(
    myself: &ActorRef<M>,
    budget: &mut RestartBudget,
    child: &dyn fmt::Display,
    reason: &str,
    restart: impl FnOnce() -> M + Send + 'static,
) -> bool {
    let Some(delay) = budget.next_restart() else {
        return false;
    };
    tracing::warn!(%child, %reason, ?delay, "child failed; restarting");
    myself.send_after(delay, restart);
    true
}

/// A child of the root: one of the runtime's own ([`RuntimeChild`]), or
/// one added while it runs (an agent, keyed `agent/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ChildKey {
    /// The runtime's own child.
    Runtime(RuntimeChild),
    /// A child added with [`RootSupervisorMsg::Supervise`].
    Dynamic(Arc<str>),
}

impl fmt::Display for ChildKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildKey::Runtime(c) => c.fmt(f),
            ChildKey::Dynamic(name) => f.write_str(name),
        }
    }
}

/// What happened to a dynamic child, told to its [`ChildEvents`] hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChildEvent {
    /// It failed and was started again (`restarts` so far).
    Restarted { reason: String, restarts: u64 },
    /// It failed more often than its policy allows and was forgotten.
    GaveUp { reason: String },
    /// It was stopped ([`RootSupervisorMsg::Unsupervise`]) or ended on its
    /// own, and was forgotten.
    Stopped { reason: String },
}

/// The hook a dynamic child's owner learns of its restarts through; it
/// runs inside the supervisor, so it must be quick and must not block.
pub(crate) type ChildEvents = Arc<dyn Fn(ChildEvent) + Send + Sync>;

/// Why the supervisor did not add a dynamic child.
#[derive(Debug)]
pub(crate) enum SuperviseError {
    /// A child with that key exists.
    Duplicate,
    /// Its actor did not start.
    Start(ractor::SpawnErr),
    /// The supervisor did not answer (the runtime is stopping or stopped).
    Down(ChildError),
}

/// How long the root supervisor has to answer an add or a removal.
const SUPERVISOR_TIMEOUT: Duration = Duration::from_secs(10);

/// Adds `spec` under the root supervisor as `key`, with a restart budget
/// of its own from `policy`; `events` hears of its restarts and of the
/// supervisor giving up on it.
pub(crate) async fn supervise(
    root: &ActorRef<RootSupervisorMsg>,
    key: Arc<str>,
    spec: Box<dyn ChildSpec>,
    policy: RestartPolicy,
    events: ChildEvents,
) -> Result<(), SuperviseError> {
    let answer = root
        .call(
            |reply| RootSupervisorMsg::Supervise {
                key: key.clone(),
                spec,
                policy,
                events,
                reply,
            },
            Some(SUPERVISOR_TIMEOUT),
        )
        .await;
    match answer {
        Ok(ractor::rpc::CallResult::Success(result)) => result,
        Ok(ractor::rpc::CallResult::Timeout) => {
            // It may still be added: take it back rather than leave it
            // running unowned.
            let _ = root.cast(RootSupervisorMsg::Unsupervise(
                key,
                ractor::concurrency::oneshot().0.into(),
            ));
            Err(SuperviseError::Down(ChildError::Timeout(
                "root supervisor".into(),
            )))
        }
        _ => Err(SuperviseError::Down(ChildError::Down(
            "root supervisor".into(),
        ))),
    }
}

/// The root of the runtime's supervision tree, and the one supervisor.
pub(crate) struct RootSupervisor;

/// Messages of the [`RootSupervisor`].
pub(crate) enum RootSupervisorMsg {
    /// Make a child panic (for chaos tests).
    InjectFault(ChildKey),
    /// How many restarts of the runtime's own children have happened so
    /// far (started again, not ones still waiting out their backoff).
    Restarts(RpcReplyPort<u64>),
    /// Start a failed child again (sent by the backoff timer): its key, the
    /// generation that failed (a child added again under the same key is
    /// not restarted by the old one's timer), and why it failed.
    Restart(ChildKey, u64, String),
    /// Adds a child with its own restart budget from `policy`; when the
    /// budget is spent it is forgotten (not escalated).
    Supervise {
        key: Arc<str>,
        spec: Box<dyn ChildSpec>,
        policy: RestartPolicy,
        events: ChildEvents,
        reply: RpcReplyPort<Result<(), SuperviseError>>,
    },
    /// Stops and forgets a dynamic child; answers whether it existed.
    Unsupervise(Arc<str>, RpcReplyPort<bool>),
}

/// Arguments of the [`RootSupervisor`].
pub(crate) struct RootSupervisorArgs {
    pub(crate) children: Vec<(RuntimeChild, Box<dyn ChildSpec>)>,
    pub(crate) policy: RestartPolicy,
}

/// One child of the root: its key, how to start it, its actor while it
/// runs, and (for a dynamic child) its own budget and event hook.
struct RootChild {
    key: ChildKey,
    /// Which adding of `key` this is.
    generation: u64,
    spec: Box<dyn ChildSpec>,
    cell: Option<ActorCell>,
    own: Option<(RestartBudget, ChildEvents)>,
}

/// State of the [`RootSupervisor`].
pub(crate) struct RootSupervisorState {
    children: Vec<RootChild>,
    /// The budget the runtime's own children share; spent, it escalates.
    budget: RestartBudget,
    restarted: u64,
    /// Dynamic children added so far (each one's generation).
    generations: u64,
}

impl RootSupervisorState {
    fn position(&self, key: &ChildKey) -> Option<usize> {
        self.children.iter().position(|c| &c.key == key)
    }
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
        for (id, spec) in args.children {
            let cell = spec.start(myself.get_cell()).await?;
            children.push(RootChild {
                key: ChildKey::Runtime(id),
                generation: 0,
                spec,
                cell: Some(cell),
                own: None,
            });
        }
        Ok(RootSupervisorState {
            children,
            budget: RestartBudget::new(args.policy),
            restarted: 0,
            generations: 0,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Dynamic children (added last) stop first.
        for child in state.children.iter().rev() {
            if let Some(cell) = &child.cell {
                cell.stop(None);
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RootSupervisorMsg::InjectFault(key) => {
                if let Some(i) = state.position(&key) {
                    tracing::warn!(child = %key, "injecting a panic");
                    state.children[i].spec.inject_panic();
                }
            }
            RootSupervisorMsg::Restarts(reply) => {
                let _ = reply.send(state.restarted);
            }
            RootSupervisorMsg::Restart(key, generation, reason) => {
                let Some(i) = state.position(&key) else {
                    // Forgotten meanwhile.
                    return Ok(());
                };
                if state.children[i].generation != generation {
                    // Forgotten and added again meanwhile.
                    return Ok(());
                }
                if state.children[i].cell.is_some() {
                    return Ok(());
                }
                let started = state.children[i].spec.start(myself.get_cell()).await;
                let child = &mut state.children[i];
                match (&child.own, started) {
                    (None, started) => {
                        // The runtime cannot do without its own children.
                        child.cell = Some(started?);
                        state.restarted += 1;
                    }
                    (Some((budget, events)), Ok(cell)) => {
                        child.cell = Some(cell);
                        let restarts = budget.total;
                        events(ChildEvent::Restarted { reason, restarts });
                    }
                    (Some(_), Err(e)) => {
                        tracing::error!(child = %key, error = %e, "a restarted child did not start; forgetting it");
                        let (_, events) = state.children.remove(i).own.expect("dynamic");
                        events(ChildEvent::GaveUp {
                            reason: e.to_string(),
                        });
                    }
                }
            }
            RootSupervisorMsg::Supervise {
                key,
                spec,
                policy,
                events,
                reply,
            } => {
                let key = ChildKey::Dynamic(key);
                if state.position(&key).is_some() {
                    let _ = reply.send(Err(SuperviseError::Duplicate));
                    return Ok(());
                }
                match spec.start(myself.get_cell()).await {
                    Ok(cell) => {
                        state.generations += 1;
                        state.children.push(RootChild {
                            key,
                            generation: state.generations,
                            spec,
                            cell: Some(cell),
                            own: Some((RestartBudget::new(policy), events)),
                        });
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(SuperviseError::Start(e)));
                    }
                }
            }
            RootSupervisorMsg::Unsupervise(key, reply) => {
                let key = ChildKey::Dynamic(key);
                let removed = state.position(&key).map(|i| state.children.remove(i));
                if let Some(child) = &removed {
                    if let Some(cell) = &child.cell {
                        cell.stop(Some("unsupervised".into()));
                    }
                    // Told before the answer, so the owner's view is
                    // current when its caller hears back.
                    if let Some((_, events)) = &child.own {
                        events(ChildEvent::Stopped {
                            reason: "stopped".into(),
                        });
                    }
                }
                let _ = reply.send(removed.is_some());
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
        let (cell, reason, failed) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string(), true),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".to_owned()), false)
            }
            _ => return Ok(()),
        };
        let Some(i) = state
            .children
            .iter()
            .position(|c| c.cell.as_ref().is_some_and(|c| c.get_id() == cell.get_id()))
        else {
            return Ok(());
        };
        let child = &mut state.children[i];
        child.cell = None;
        let key = child.key.clone();
        let restart = {
            let (key, generation, reason) = (key.clone(), child.generation, reason.clone());
            move || RootSupervisorMsg::Restart(key, generation, reason)
        };
        match &mut child.own {
            // The runtime's own children share one budget and escalate; one
            // that stops is as gone as one that fails.
            None => {
                if !schedule_restart(&myself, &mut state.budget, &key, &reason, restart) {
                    tracing::error!(child = %key, %reason, "restart intensity exceeded; escalating by stopping the runtime");
                    myself.stop(Some(format!("{key} failed too often: {reason}")));
                }
            }
            // A dynamic child that stops on its own has finished.
            Some((_, events)) if !failed => {
                let events = events.clone();
                state.children.remove(i);
                events(ChildEvent::Stopped { reason });
            }
            Some((budget, events)) => {
                if !schedule_restart(&myself, budget, &key, &reason, restart) {
                    tracing::error!(child = %key, %reason, "child failed too often; giving up on it");
                    let events = events.clone();
                    state.children.remove(i);
                    events(ChildEvent::GaveUp { reason });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that panics when told to and counts its starts.
    struct Flaky;

    enum FlakyMsg {
        Panic,
        Ping(RpcReplyPort<()>),
    }

    impl Actor for Flaky {
        type Msg = FlakyMsg;
        type State = ();
        type Arguments = Arc<std::sync::atomic::AtomicU32>;

        async fn pre_start(
            &self,
            _myself: ActorRef<Self::Msg>,
            starts: Self::Arguments,
        ) -> Result<(), ActorProcessingErr> {
            starts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }

        async fn handle(
            &self,
            _myself: ActorRef<Self::Msg>,
            message: Self::Msg,
            _state: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            match message {
                FlakyMsg::Panic => panic!("told to"),
                FlakyMsg::Ping(reply) => {
                    let _ = reply.send(());
                }
            }
            Ok(())
        }
    }

    fn policy(max_restarts: u32, backoff: Duration) -> RestartPolicy {
        RestartPolicy {
            max_restarts,
            window: Duration::from_secs(60),
            backoff,
        }
    }

    #[test]
    fn the_budget_doubles_its_delay_and_runs_out() {
        let mut budget = RestartBudget::new(policy(3, Duration::from_millis(300)));
        assert_eq!(budget.next_restart(), Some(Duration::from_millis(300)));
        assert_eq!(budget.next_restart(), Some(Duration::from_millis(600)));
        assert_eq!(
            budget.next_restart(),
            Some(Duration::from_secs(1)),
            "capped at 1 s"
        );
        assert_eq!(budget.next_restart(), None, "the fourth escalates");
        assert_eq!(budget.total, 3);
    }

    async fn root(
        policy: RestartPolicy,
    ) -> (
        ActorRef<RootSupervisorMsg>,
        Slot<FlakyMsg>,
        Arc<std::sync::atomic::AtomicU32>,
    ) {
        let starts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (slot, publish) = Slot::new("flaky");
        let runner = ChildRunner {
            make: || Flaky,
            args: starts.clone(),
            publish,
            panic_msg: || FlakyMsg::Panic,
        };
        let args = RootSupervisorArgs {
            children: vec![(RuntimeChild::Volumes, Box::new(runner))],
            policy,
        };
        let (root, _) = Actor::spawn(None, RootSupervisor, args).await.unwrap();
        (root, slot, starts)
    }

    /// Polls `check` until it holds, for at most 5 s.
    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn restarts(root: &ActorRef<RootSupervisorMsg>) -> u64 {
        ractor::call_t!(root, RootSupervisorMsg::Restarts, 5000).unwrap()
    }

    #[tokio::test]
    async fn a_failed_child_comes_back_and_the_mailbox_stays_open_during_backoff() {
        let (root, slot, starts) = root(policy(5, Duration::from_secs(2))).await;
        root.cast(RootSupervisorMsg::InjectFault(ChildKey::Runtime(
            RuntimeChild::Volumes,
        )))
        .unwrap();
        until("the child failed", || !slot.is_up()).await;
        // Inside the 2 s backoff (the child is down, not restarted yet) the
        // supervisor answers at once; a sleep in its handler held its
        // mailbox the whole time.
        let asked = std::time::Instant::now();
        assert_eq!(restarts(&root).await, 0, "not restarted yet");
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "the supervisor's mailbox was blocked for {:?}",
            asked.elapsed()
        );
        assert_eq!(starts.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A call waits for the restart and then reaches the new child.
        slot.call(Duration::from_secs(5), FlakyMsg::Ping)
            .await
            .unwrap();
        assert_eq!(starts.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(restarts(&root).await, 1);
        root.stop(None);
    }

    #[tokio::test]
    async fn failures_past_the_budget_stop_the_root() {
        let (root, _slot, starts) = root(policy(1, Duration::from_millis(1))).await;
        root.cast(RootSupervisorMsg::InjectFault(ChildKey::Runtime(
            RuntimeChild::Volumes,
        )))
        .unwrap();
        until("the child restarted", || {
            starts.load(std::sync::atomic::Ordering::SeqCst) == 2
        })
        .await;
        root.cast(RootSupervisorMsg::InjectFault(ChildKey::Runtime(
            RuntimeChild::Volumes,
        )))
        .unwrap();
        until("the root escalated", || {
            root.get_status() == ractor::ActorStatus::Stopped
        })
        .await;
    }

    #[tokio::test]
    async fn a_dynamic_child_has_its_own_budget_and_is_forgotten_not_escalated() {
        let (root, _core, _) = root(policy(5, Duration::from_millis(1))).await;
        let starts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (slot, publish) = Slot::new("agent/a");
        let runner = ChildRunner {
            make: || Flaky,
            args: starts.clone(),
            publish,
            panic_msg: || FlakyMsg::Panic,
        };
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let events: ChildEvents = {
            let seen = seen.clone();
            Arc::new(move |e| seen.lock().unwrap().push(e))
        };
        let added = ractor::call_t!(
            root,
            |reply| RootSupervisorMsg::Supervise {
                key: "agent/a".into(),
                spec: Box::new(runner),
                policy: policy(1, Duration::from_millis(1)),
                events,
                reply,
            },
            5000
        )
        .unwrap();
        assert!(added.is_ok());
        let key = ChildKey::Dynamic("agent/a".into());
        root.cast(RootSupervisorMsg::InjectFault(key.clone()))
            .unwrap();
        until("restarted once", || seen.lock().unwrap().len() == 1).await;
        assert!(matches!(
            seen.lock().unwrap()[0],
            ChildEvent::Restarted { restarts: 1, .. }
        ));
        slot.call(Duration::from_secs(5), FlakyMsg::Ping)
            .await
            .unwrap();
        root.cast(RootSupervisorMsg::InjectFault(key)).unwrap();
        until("given up", || seen.lock().unwrap().len() == 2).await;
        assert!(matches!(seen.lock().unwrap()[1], ChildEvent::GaveUp { .. }));
        // The root carries on, and counts no restart of its own children.
        assert_eq!(root.get_status(), ractor::ActorStatus::Running);
        assert_eq!(restarts(&root).await, 0);
        let gone = ractor::call_t!(root, RootSupervisorMsg::Unsupervise, 5000, "agent/a".into());
        assert!(!gone.unwrap(), "forgotten already");
        root.stop(None);
    }

    async fn supervise(
        root: &ActorRef<RootSupervisorMsg>,
        key: &str,
        backoff: Duration,
    ) -> (Slot<FlakyMsg>, Arc<std::sync::Mutex<Vec<ChildEvent>>>) {
        let (slot, publish) = Slot::new(key);
        let runner = ChildRunner {
            make: || Flaky,
            args: Arc::new(std::sync::atomic::AtomicU32::new(0)),
            publish,
            panic_msg: || FlakyMsg::Panic,
        };
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let events: ChildEvents = {
            let seen = seen.clone();
            Arc::new(move |e| seen.lock().unwrap().push(e))
        };
        let key: Arc<str> = key.into();
        ractor::call_t!(
            root,
            |reply| RootSupervisorMsg::Supervise {
                key: key.clone(),
                spec: Box::new(runner),
                policy: policy(5, backoff),
                events,
                reply,
            },
            5000
        )
        .unwrap()
        .unwrap();
        (slot, seen)
    }

    #[tokio::test]
    async fn a_stopped_child_is_told_and_an_old_timer_does_not_restart_its_successor() {
        let (root, _core, _) = root(policy(5, Duration::from_millis(1))).await;
        let key = ChildKey::Dynamic("agent/b".into());
        let (_, first_seen) = supervise(&root, "agent/b", Duration::from_secs(60)).await;
        let stopped = ractor::call_t!(root, RootSupervisorMsg::Unsupervise, 5000, "agent/b".into());
        assert!(stopped.unwrap());
        assert!(matches!(
            first_seen.lock().unwrap()[..],
            [ChildEvent::Stopped { .. }]
        ));

        // Added again under the same key, it fails and waits out a long
        // backoff; a restart timer left from the first (generation 1) must
        // not bring it back early.
        let (slot, seen) = supervise(&root, "agent/b", Duration::from_secs(60)).await;
        root.cast(RootSupervisorMsg::InjectFault(key.clone()))
            .unwrap();
        until("the successor failed", || !slot.is_up()).await;
        root.cast(RootSupervisorMsg::Restart(key, 1, "old".into()))
            .unwrap();
        // A call is answered after the cast before it is handled.
        restarts(&root).await;
        assert!(!slot.is_up(), "restarted by a stale timer");
        assert!(seen.lock().unwrap().is_empty());
        root.stop(None);
    }
}
