//! The root supervisor and its restart policy.
//!
//! The runtime's children (function registry, task tracker, volume store,
//! dispatcher, agent supervisor) are spawned linked to a root supervisor.
//! When one fails (a panic in a handler), the supervisor restarts it
//! one-for-one from the same arguments; children keep their state in shared
//! stores handed in through those arguments, so a restart loses no
//! registered function or task record. More than `max_restarts` failures
//! within `window` escalate: the supervisor stops and the runtime reports
//! itself unavailable. The agent supervisor restarts agents the same way,
//! with a budget per agent, giving up on one (not escalating) when it is
//! spent.
//!
//! Both supervisors share one restart rule, [`schedule_restart`]: the
//! backoff is a timer (`send_after`) that sends the supervisor a restart
//! message, never a sleep in its handler, so its mailbox stays open while a
//! child waits to come back. Children are found by typed ids
//! ([`RuntimeChild`], an agent's id), and anything a message carries that must
//! be taken once although [`Slot::call`] may re-send it travels in a
//! [`Once`].

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

/// A value a message carries that must be taken at most once, although
/// [`Slot::call`] may send the message again after a restart: the first
/// handler to [`take`](Once::take) it wins, a re-sent copy finds it gone.
pub(crate) struct Once<T>(std::sync::Mutex<Option<T>>);

impl<T> Once<T> {
    pub(crate) fn new(value: T) -> Arc<Once<T>> {
        Arc::new(Once(std::sync::Mutex::new(Some(value))))
    }

    /// The value, the first time only.
    pub(crate) fn take(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
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
    /// Spawns the child linked to `supervisor` and publishes its new ref.
    async fn start(&self, supervisor: ActorCell) -> Result<ActorCell, ractor::SpawnErr>;
    /// Makes the running child panic (fault injection).
    fn inject_panic(&self);
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

/// The one shape every child of the root takes: the [`Slot`] its handle
/// calls through, and the [`ChildSpec`] the root (re)starts it from. Each
/// actor module has a `child(..) -> (Handle, Box<dyn ChildSpec>)` built on
/// this, and the runtime's builder wires children through those.
pub(crate) fn child<A>(
    id: RuntimeChild,
    make: fn() -> A,
    args: A::Arguments,
    panic_msg: fn() -> A::Msg,
) -> (Slot<A::Msg>, Box<dyn ChildSpec>)
where
    A: Actor,
    A::Arguments: Clone + Sync,
{
    let (slot, publish) = Slot::new(id);
    let spec = ChildRunner {
        make,
        args,
        publish,
        panic_msg,
    };
    (slot, Box::new(spec))
}

/// The root of the runtime's supervision tree.
pub(crate) struct RootSupervisor;

/// Messages of the [`RootSupervisor`].
pub(crate) enum RootSupervisorMsg {
    /// Make a child panic (for chaos tests).
    InjectFault(RuntimeChild),
    /// How many restarts have happened so far (children started again, not
    /// ones still waiting out their backoff).
    Restarts(RpcReplyPort<u64>),
    /// Start a failed child again (sent by the backoff timer).
    Restart(RuntimeChild),
}

/// Arguments of the [`RootSupervisor`].
pub(crate) struct RootSupervisorArgs {
    pub(crate) children: Vec<(RuntimeChild, Box<dyn ChildSpec>)>,
    pub(crate) policy: RestartPolicy,
}

/// One child of the root: its id, how to start it, its actor while it runs.
struct RootChild {
    id: RuntimeChild,
    spec: Box<dyn ChildSpec>,
    cell: Option<ActorCell>,
}

/// State of the [`RootSupervisor`].
pub(crate) struct RootSupervisorState {
    children: Vec<RootChild>,
    budget: RestartBudget,
    restarted: u64,
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
                id,
                spec,
                cell: Some(cell),
            });
        }
        Ok(RootSupervisorState {
            children,
            budget: RestartBudget::new(args.policy),
            restarted: 0,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
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
            RootSupervisorMsg::InjectFault(id) => {
                if let Some(child) = state.children.iter().find(|c| c.id == id) {
                    tracing::warn!(child = %id, "injecting a panic");
                    child.spec.inject_panic();
                }
            }
            RootSupervisorMsg::Restarts(reply) => {
                let _ = reply.send(state.restarted);
            }
            RootSupervisorMsg::Restart(id) => {
                if let Some(child) = state.children.iter_mut().find(|c| c.id == id) {
                    if child.cell.is_none() {
                        child.cell = Some(child.spec.start(myself.get_cell()).await?);
                        state.restarted += 1;
                    }
                }
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
        let Some(child) = state
            .children
            .iter_mut()
            .find(|c| c.cell.as_ref().is_some_and(|c| c.get_id() == cell.get_id()))
        else {
            return Ok(());
        };
        child.cell = None;
        let id = child.id;
        if !schedule_restart(&myself, &mut state.budget, &id, &reason, move || {
            RootSupervisorMsg::Restart(id)
        }) {
            tracing::error!(child = %id, %reason, "restart intensity exceeded; escalating by stopping the runtime");
            myself.stop(Some(format!("{id} failed too often: {reason}")));
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
            children: vec![(RuntimeChild::Registry, Box::new(runner))],
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
        root.cast(RootSupervisorMsg::InjectFault(RuntimeChild::Registry))
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
        root.cast(RootSupervisorMsg::InjectFault(RuntimeChild::Registry))
            .unwrap();
        until("the child restarted", || {
            starts.load(std::sync::atomic::Ordering::SeqCst) == 2
        })
        .await;
        root.cast(RootSupervisorMsg::InjectFault(RuntimeChild::Registry))
            .unwrap();
        until("the root escalated", || {
            root.get_status() == ractor::ActorStatus::Stopped
        })
        .await;
    }
}
