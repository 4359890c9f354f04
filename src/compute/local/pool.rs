//! A function's pool of warm containers, capped at its concurrency.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::budget::Budget;
use super::container::{Confinement, Container, Failure, Launcher, StartError};
use super::protocol::load_request;
use super::scaledown::Warm;
use crate::spec::FunctionSpec;
use crate::sync::Recover;
use crate::task::TaskError;

/// Warm containers of one deployed function.
#[derive(Debug)]
pub(crate) struct Pool {
    pub(crate) spec: FunctionSpec,
    env: BTreeMap<String, String>,
    cwd: PathBuf,
    launcher: Arc<Launcher>,
    budget: Arc<Budget>,
    /// Every pool of the backend, to retire idle containers across them.
    warm: Arc<Warm>,
    /// Idle containers and since when, most recently used last.
    idle: Mutex<Vec<(Container, Instant)>>,
    /// Containers leased out now.
    in_use: AtomicUsize,
    /// Set while a container is being started to reach `min_containers`.
    warming: AtomicBool,
    /// Signalled when a container comes back idle.
    returned: tokio::sync::Notify,
    slots: Arc<Semaphore>,
    /// Most containers running at once.
    pub(crate) size: usize,
    closed: AtomicBool,
    /// Starts that failed for a reason of their own, in a row.
    broken: Mutex<Broken>,
}

/// Container starts that failed for a reason of their own (the function's
/// code exited or hung while loading: the next start fails the same way),
/// in a row; any start that works clears it. Past [`BROKEN_AFTER`] the pool
/// starts no container for [`BROKEN_FOR`] after the last failure, and an
/// input that needs one fails at once (charged, so its retries still
/// apply): a map of a function that can no longer start ends in seconds,
/// not one failed start per input (50 inputs had taken 4 minutes).
#[derive(Debug, Default)]
struct Broken {
    in_a_row: u32,
    last: Option<(Instant, String)>,
}

/// Failed starts in a row that stop new starts for a while.
const BROKEN_AFTER: u32 = 3;
/// How long after the last failed start no new one is tried.
const BROKEN_FOR: Duration = Duration::from_secs(5);

/// Why an attempt on a pool got no reply.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// The container was lost before the input ran (it died while starting,
    /// or was gone before it took the request in). The input is charged
    /// nothing and runs again.
    Lost(TaskError),
    /// The attempt counts: the input ran (or can never run) and this is
    /// its error.
    Failed(TaskError),
    /// No container may be started now: the last starts failed for a
    /// reason of their own ([`BROKEN_AFTER`] in a row). Nothing ran; each
    /// input that needed one is charged this.
    Refused(TaskError),
}

impl AttemptError {
    pub(crate) fn into_error(self) -> TaskError {
        match self {
            AttemptError::Lost(e) | AttemptError::Failed(e) | AttemptError::Refused(e) => e,
        }
    }
}

impl From<TaskError> for AttemptError {
    fn from(e: TaskError) -> Self {
        AttemptError::Failed(e)
    }
}

/// A container checked out of a pool; it goes back when the lease drops,
/// unless it failed or was left mid-request.
#[derive(Debug)]
pub(crate) struct Lease {
    pool: Arc<Pool>,
    container: Option<Container>,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    pub(crate) fn new(
        spec: FunctionSpec,
        env: BTreeMap<String, String>,
        cwd: PathBuf,
        size: usize,
        launcher: Arc<Launcher>,
        budget: Arc<Budget>,
        warm: Arc<Warm>,
    ) -> Pool {
        Pool {
            spec,
            env,
            cwd,
            launcher,
            budget,
            warm,
            idle: Mutex::new(Vec::new()),
            in_use: AtomicUsize::new(0),
            warming: AtomicBool::new(false),
            returned: tokio::sync::Notify::new(),
            slots: Arc::new(Semaphore::new(size)),
            size,
            closed: AtomicBool::new(false),
            broken: Mutex::new(Broken::default()),
        }
    }

    /// Starts one container now, checking the code, and keeps it warm. When
    /// the resources are taken (by this function's previous deployment, say)
    /// the check runs in a container that is dropped right after, and the
    /// pool starts its containers on demand.
    pub(crate) async fn warm_up(&self) -> Result<(), StartError> {
        match self.budget.try_reserve(&self.spec) {
            Some(reservation) => {
                let container = self.launch(reservation).await?;
                self.park(container);
            }
            None => {
                let frame = self.load_frame(&self.env);
                drop(
                    self.launcher
                        .start(
                            &frame,
                            Confinement {
                                processes: self.spec.limits.processes,
                                memory_mib: self.memory_ceiling_mib(),
                                gpus: &[],
                            },
                        )
                        .await?,
                );
            }
        }
        Ok(())
    }

    fn load_frame(&self, env: &BTreeMap<String, String>) -> Vec<u8> {
        // RLIMIT_NPROC counts a user's processes machine-wide unless the
        // sandbox gives the container a user namespace of its own.
        let per_container_nproc = self.launcher.jail.is_some();
        // Without a memory cgroup, the ceiling is the address-space limit.
        let cgroup = self
            .launcher
            .pids
            .as_ref()
            .is_some_and(|g| g.limits_memory());
        let ceiling = (!cgroup).then(|| self.memory_ceiling_mib());
        load_request(&self.spec, env, &self.cwd, per_container_nproc, ceiling)
    }

    /// The container's memory ceiling in MiB: the function's limit, or the
    /// default below the machine's memory.
    pub(crate) fn memory_ceiling_mib(&self) -> u64 {
        self.spec
            .resources
            .memory_limit_mib
            .unwrap_or_else(super::env::default_memory_ceiling_mib)
    }

    async fn launch(
        &self,
        reservation: super::budget::Reservation,
    ) -> Result<Container, StartError> {
        let mut env = self.env.clone();
        if let Some(devices) = reservation.cuda_visible_devices() {
            env.insert("CUDA_VISIBLE_DEVICES".into(), devices);
        }
        let frame = self.load_frame(&env);
        let mut container = self
            .launcher
            .start(
                &frame,
                Confinement {
                    processes: self.spec.limits.processes,
                    memory_mib: self.memory_ceiling_mib(),
                    gpus: reservation.gpus(),
                },
            )
            .await?;
        container.hold(reservation);
        Ok(container)
    }

    /// Checks out a container, starting one if none is idle. Waits while the
    /// pool is at its concurrency limit; gives up when `cancel` fires.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        cancel: &CancellationToken,
    ) -> Result<Lease, AttemptError> {
        let permit = tokio::select! {
            p = self.slots.clone().acquire_owned() => p.map_err(|_| closed_error())?,
            () = cancel.cancelled() => return Err(cancelled_error().into()),
        };
        let start_failed = |e| match e {
            StartError::Code(e) => AttemptError::Failed(TaskError::new(
                crate::task::ErrorKind::ContainerStartFailed,
                e.to_string(),
            )),
            StartError::Failed(why) | StartError::Exited(why) => AttemptError::Failed(
                TaskError::new(crate::task::ErrorKind::ContainerStartFailed, why),
            ),
            StartError::Died(why) => AttemptError::Lost(TaskError::new(
                crate::task::ErrorKind::ContainerStartFailed,
                why,
            )),
        };
        // Take an idle container, or start one once resources allow; a
        // container coming back idle meanwhile wins over waiting.
        let container = loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some((c, _)) = self.idle.lock().recover().pop() {
                break c;
            }
            if let Some((why, until)) = self.broken_now() {
                // No start now: a container of this pool that is busy may
                // still come back (wait for it, or for the pause's end);
                // with none, the input fails at once.
                if self.in_use.load(Ordering::SeqCst) == 0 {
                    return Err(AttemptError::Refused(TaskError::new(
                        crate::task::ErrorKind::ContainerStartFailed,
                        why,
                    )));
                }
                tokio::select! {
                    () = &mut returned => continue,
                    () = tokio::time::sleep_until(until) => continue,
                    () = cancel.cancelled() => return Err(cancelled_error().into()),
                }
            }
            tokio::select! {
                reserved = self.reserve() => {
                    let reservation = reserved.map_err(|why| TaskError::new(crate::task::ErrorKind::ContainerStartFailed, why))?;
                    tokio::select! {
                        started = self.launch(reservation) => {
                            self.note_start(started.as_ref().err());
                            break started.map_err(start_failed)?
                        }
                        () = cancel.cancelled() => return Err(cancelled_error().into()),
                    }
                }
                () = &mut returned => continue,
                () = cancel.cancelled() => return Err(cancelled_error().into()),
            }
        };
        self.in_use.fetch_add(1, Ordering::SeqCst);
        Ok(Lease {
            pool: self.clone(),
            container: Some(container),
            _permit: permit,
        })
    }

    /// Reserves what one more container needs. When it does not fit, idle
    /// containers (of any function, longest idle first) are retired to make
    /// room before waiting; a container going idle while waiting is retired
    /// in turn.
    async fn reserve(&self) -> Result<super::budget::Reservation, String> {
        loop {
            let idle_soon = self.warm.idle_soon();
            if let Some(reservation) = self.budget.try_reserve(&self.spec) {
                return Ok(reservation);
            }
            if self.warm.retire_longest_idle(self) {
                continue;
            }
            tokio::select! {
                reserved = self.budget.reserve(&self.spec) => return reserved,
                () = idle_soon => {}
            }
        }
    }

    /// Counts a start: one that failed for a reason of its own adds to the
    /// failures in a row, any other clears them.
    fn note_start(&self, failed: Option<&StartError>) {
        let why = match failed {
            Some(StartError::Failed(why) | StartError::Exited(why)) => why.clone(),
            Some(StartError::Code(e)) => e.to_string(),
            // Killed from outside, most likely: says nothing of the next.
            Some(StartError::Died(_)) => return,
            None => {
                *self.broken.lock().recover() = Broken::default();
                return;
            }
        };
        let mut broken = self.broken.lock().recover();
        broken.in_a_row += 1;
        broken.last = Some((Instant::now(), why));
    }

    /// Why no container is started now, when starts keep failing, and
    /// until when.
    fn broken_now(&self) -> Option<(String, Instant)> {
        let broken = self.broken.lock().recover();
        let (at, why) = broken.last.as_ref()?;
        (broken.in_a_row >= BROKEN_AFTER && at.elapsed() < BROKEN_FOR).then(|| {
            let why = format!(
                "the last {} container starts failed, so none is started for {} s after the last; it said: {}",
                broken.in_a_row,
                BROKEN_FOR.as_secs(),
                crate::value::clip(why, 2048)
            );
            (why, *at + BROKEN_FOR)
        })
    }

    /// Keeps a container warm.
    fn park(&self, container: Container) {
        self.idle.lock().recover().push((container, Instant::now()));
        self.returned.notify_one();
        self.warm.went_idle();
    }

    /// Containers alive now, leased or idle.
    fn containers(&self) -> usize {
        self.in_use.load(Ordering::SeqCst) + self.idle.lock().recover().len()
    }

    /// Since when the longest-idle container past `min_containers` has been idle.
    pub(crate) fn longest_idle(&self) -> Option<Instant> {
        let spare = self.containers() > self.spec.min_containers as usize;
        let idle = self.idle.lock().recover();
        spare
            .then(|| idle.first().map(|(_, since)| *since))
            .flatten()
    }

    /// Retires the longest-idle container unless `min_containers` keeps it.
    pub(crate) fn retire_longest_idle(&self) -> bool {
        if self.containers() <= self.spec.min_containers as usize {
            return false;
        }
        let mut idle = self.idle.lock().recover();
        if idle.is_empty() {
            return false;
        }
        // Dropping it kills it and gives its reservation back.
        drop(idle.remove(0));
        true
    }

    /// Retires containers idle for longer than `scaledown_window`, keeping
    /// `min_containers`; how many went.
    pub(crate) fn scale_down(&self, now: Instant) -> usize {
        let window = Duration::from_secs(u64::from(self.spec.scaledown_window));
        let mut retired = 0;
        while self
            .longest_idle()
            .is_some_and(|since| now.duration_since(since) >= window)
            && self.retire_longest_idle()
        {
            retired += 1;
        }
        retired
    }

    /// Starts a container in the background when fewer than
    /// `min_containers` are alive and the resources are free now.
    pub(crate) fn keep_min(self: &Arc<Self>, tasks: &TaskTracker) {
        if self.closed.load(Ordering::SeqCst)
            || self.containers() >= self.spec.min_containers as usize
            || self.warming.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let Some(reservation) = self.budget.try_reserve(&self.spec) else {
            self.warming.store(false, Ordering::SeqCst);
            return;
        };
        let pool = self.clone();
        tasks.spawn(async move {
            match pool.launch(reservation).await {
                Ok(c) if !pool.closed.load(Ordering::SeqCst) => pool.park(c),
                Ok(_) => {}
                Err(e) => tracing::warn!(function = %pool.spec.name, error = ?e, "could not start a container for min_containers"),
            }
            pool.warming.store(false, Ordering::SeqCst);
        });
    }

    /// Stops handing out containers and kills the idle ones; leased ones are
    /// killed when their leases end.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.slots.close();
        self.idle.lock().recover().clear();
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.spec.timeout_s))
    }
}

impl Lease {
    /// Runs one request of `inputs` inputs on the leased container, each
    /// allowed the function's `limits.cpu_s`. On failure the container is
    /// discarded and the error says why, as a task error.
    pub(crate) async fn request(
        &mut self,
        frame: &[u8],
        inputs: usize,
        timeout: Duration,
        logs: &crate::compute::LogSink,
    ) -> Result<Vec<u8>, AttemptError> {
        let container = self.container.as_mut().expect("lease holds a container");
        if let Some(cpu_s) = self.pool.spec.limits.cpu_s {
            let seconds = u64::from(cpu_s).saturating_mul(inputs.max(1) as u64);
            if let Err(e) = container.allow_cpu(seconds) {
                self.container.take();
                return Err(AttemptError::Lost(TaskError::new(
                    crate::task::ErrorKind::ContainerStartFailed,
                    format!("could not set the container's CPU limit: {e}"),
                )));
            }
        }
        match container.request(frame, timeout, logs).await {
            Ok(reply) => Ok(reply),
            Err(failure) => {
                let container = self.container.take().expect("lease holds a container");
                Err(match failure {
                    Failure::TimedOut => AttemptError::Failed(TaskError::new(
                        crate::task::ErrorKind::TimeoutError,
                        format!(
                            "the function ran past its timeout of {} s; its container was killed",
                            timeout.as_secs()
                        ),
                    )),
                    Failure::Died(_) if container.oom_killed() => {
                        AttemptError::Failed(TaskError::new(
                            crate::task::ErrorKind::OutOfMemory,
                            format!(
                                "the input went past the container's memory limit of {} MiB; the container was killed and is replaced",
                                self.pool.memory_ceiling_mib()
                            ),
                        ))
                    }
                    died @ Failure::Died(_) => AttemptError::Failed(TaskError::new(
                        crate::task::ErrorKind::ContainerCrashed,
                        container.explain(died),
                    )),
                    broken @ Failure::Protocol(_) => AttemptError::Failed(TaskError::new(
                        crate::task::ErrorKind::ProtocolError,
                        container.explain(broken),
                    )),
                    lost @ Failure::NotRun(_) => AttemptError::Lost(TaskError::new(
                        crate::task::ErrorKind::ContainerCrashed,
                        container.explain(lost),
                    )),
                })
            }
        }
    }
}

impl Lease {
    /// Kills the leased container instead of returning it: it broke the
    /// protocol (a malformed frame, or more than one reply), so what it
    /// sends next cannot be trusted to answer the next request.
    pub(crate) fn discard(&mut self) {
        self.container.take();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let container = self.container.take();
        self.pool.in_use.fetch_sub(1, Ordering::SeqCst);
        if let Some(c) = container {
            if !c.busy && !self.pool.closed.load(Ordering::SeqCst) && !c.hit_process_limit() {
                self.pool.park(c);
            }
        }
    }
}

/// Times an input may lose its container before running (killed while
/// starting, idle, or as its request was sent) without being charged an
/// attempt. Past it a loss counts like any failure, so a function whose
/// containers can never start still fails.
pub(crate) const MAX_LOST: u32 = 100;

pub(crate) fn cancelled_error() -> TaskError {
    TaskError::new(crate::task::ErrorKind::Cancelled, "the task was cancelled")
}

fn closed_error() -> TaskError {
    TaskError::new(
        crate::task::ErrorKind::FunctionUndeployed,
        "the function was undeployed or the runtime shut down",
    )
}
