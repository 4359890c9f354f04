//! Giving back what idle containers hold. A warm container keeps its CPU,
//! memory and GPU reservation, so idle containers of one function could
//! starve every other: containers idle past their function's
//! `scaledown_window` are retired (down to its `min_containers`), pools are
//! topped up to `min_containers`, and a container start that does not fit
//! first retires the longest-idle container of any function.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::pool::Pool;
use crate::sync::Recover;

/// How often idle containers are checked against their window.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// Every pool of a backend, for retiring idle containers across functions.
#[derive(Debug, Default)]
pub(crate) struct Warm {
    pools: Mutex<Vec<Weak<Pool>>>,
    /// Signalled whenever a container goes idle, so a start waiting for
    /// resources can retire it.
    went_idle: Notify,
}

impl Warm {
    pub(crate) fn register(&self, pool: &Arc<Pool>) {
        let mut pools = self.pools.lock().recover();
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(pool));
    }

    fn pools(&self) -> Vec<Arc<Pool>> {
        let mut pools = self.pools.lock().recover();
        pools.retain(|p| p.strong_count() > 0);
        pools.iter().filter_map(Weak::upgrade).collect()
    }

    /// A future that completes when a container next goes idle; enabled
    /// at once, so a container going idle right after is not missed.
    pub(crate) fn idle_soon(&self) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
        let mut notified = Box::pin(self.went_idle.notified());
        notified.as_mut().enable();
        notified
    }

    pub(crate) fn went_idle(&self) {
        self.went_idle.notify_waiters();
    }

    /// Retires the container idle longest among other functions' pools
    /// whose containers hold what `for_pool` lacks (GPUs for a GPU function;
    /// anything otherwise), never one a `min_containers` keeps, and never
    /// `for_pool`'s own (it reuses those); whether there was one.
    pub(crate) fn retire_longest_idle(&self, for_pool: &Pool) -> bool {
        let needs_gpu = for_pool.spec.resources.gpu.is_some();
        let oldest = self
            .pools()
            .into_iter()
            .filter(|p| !std::ptr::eq(Arc::as_ptr(p), for_pool))
            .filter(|p| !needs_gpu || p.spec.resources.gpu.is_some())
            .filter_map(|p| p.longest_idle().map(|since| (since, p)))
            .min_by_key(|(since, _)| *since);
        match oldest {
            Some((_, pool)) => pool.retire_longest_idle(),
            None => false,
        }
    }

    /// Retires containers idle past their window and keeps every pool at
    /// its `min_containers`, until `shutdown`.
    pub(crate) async fn sweep(self: Arc<Self>, shutdown: CancellationToken, tasks: TaskTracker) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let now = Instant::now();
            for pool in self.pools() {
                let retired = pool.scale_down(now);
                if retired > 0 {
                    tracing::debug!(function = %pool.spec.name, retired, "idle containers retired");
                }
                pool.keep_min(&tasks);
            }
        }
    }
}
