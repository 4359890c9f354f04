//! A sandbox's clocks: one task per live sandbox sleeps until the next of
//! its deadlines (the expiry notice, the lifetime, the idle timeout) and is
//! woken early whenever they move (an exec, a file call, a keepalive).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::{Sandbox, SandboxEvent, Sandboxes};
use crate::sync::Recover;
use crate::wire::EndReason;

/// What the watcher does next.
enum Next {
    Warn,
    End(EndReason),
    Sleep(Duration),
}

fn next(sandboxes: &Sandboxes, sandbox: &Sandbox) -> Option<Next> {
    let mut live = sandbox.live.lock().recover();
    // A running process is activity: the idle clock starts when the last
    // one ends (each end wakes this watcher).
    if live.processes.values().any(|p| p.is_running()) {
        live.last_active = Instant::now();
    }
    if live.ended.is_some() {
        return None;
    }
    let now = Utc::now();
    let left = (live.expires_at - now).to_std().unwrap_or(Duration::ZERO);
    if left.is_zero() {
        return Some(Next::End(EndReason::LifetimeExpired));
    }
    let idle_left = sandbox
        .request
        .idle_timeout_s
        .map(|idle| Duration::from_secs(idle).saturating_sub(live.last_active.elapsed()));
    if idle_left == Some(Duration::ZERO) {
        return Some(Next::End(EndReason::IdleExpired));
    }
    let notice = sandboxes.shared.config.expiring_notice;
    if !live.warned && left <= notice {
        return Some(Next::Warn);
    }
    let mut sleep = left;
    if !live.warned {
        sleep = sleep.min(left - notice);
    }
    if let Some(idle) = idle_left {
        sleep = sleep.min(idle);
    }
    Some(Next::Sleep(sleep))
}

/// Keeps `sandbox`'s clocks until it ends.
pub(crate) async fn watch(sandboxes: Sandboxes, sandbox: Arc<Sandbox>) {
    let shutdown = sandboxes.shared.shutdown.clone();
    loop {
        match next(&sandboxes, &sandbox) {
            None => return,
            Some(Next::Warn) => {
                sandbox.live.lock().recover().warned = true;
                let _ = sandbox.events.send(SandboxEvent {
                    event: "sandbox.expiring".into(),
                    sandbox: sandbox.view(),
                });
                tracing::info!(sandbox = %sandbox.id, "sandbox expiring soon");
            }
            Some(Next::End(reason)) => {
                sandboxes.end(&sandbox, reason, None, true).await;
                return;
            }
            Some(Next::Sleep(d)) => {
                // Woken early when a clock moves; a deadline is met to the
                // millisecond, never late by a poll interval.
                let until = Instant::now() + d;
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = sandbox.wake.notified() => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}
