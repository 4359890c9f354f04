//! `idempotency_key` on the tools that create work: a call retried with the
//! same key and the same arguments gets the first call's answer instead of
//! creating the work twice (a retry while the first still runs waits for
//! it); the same key with other arguments is refused. A failed call is not
//! remembered, so it may be retried. Kept in memory per runtime for 24 hours,
//! at most 10,000 keys, the oldest forgotten first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::ToolError;
use crate::sync::Recover;

/// The tools a key applies to.
pub(super) const CREATING: &[&str] = &[
    "deploy_modal_function",
    "spawn_parallel_tasks",
    "spawn_task",
    "request_gpu_task",
    "write_volume_file",
];

const KEEP: Duration = Duration::from_secs(24 * 3600);
const MAX_KEYS: usize = 10_000;
const MAX_KEY_LEN: usize = 255;

enum Entry {
    Running {
        fingerprint: [u8; 32],
        done: Arc<Notify>,
    },
    Done {
        fingerprint: [u8; 32],
        answer: Value,
    },
}

/// The runtime's remembered tool answers, by key.
#[derive(Default)]
pub(crate) struct Replays {
    entries: Mutex<HashMap<String, Entry>>,
    /// Finished keys, oldest first.
    order: Mutex<VecDeque<(Instant, String)>>,
}

/// What to do with a keyed call.
pub(super) enum Claim {
    /// Run it; the guard remembers the answer (or forgets the key).
    Run(RunGuard),
    /// The first call's answer.
    Replay(Value),
}

/// Takes `idempotency_key` out of `args`, checked: 1 to 255 characters.
pub(super) fn take_key(tool: &str, args: &mut Value) -> Result<Option<String>, ToolError> {
    let Some(key) = args
        .as_object_mut()
        .and_then(|a| a.remove("idempotency_key"))
    else {
        return Ok(None);
    };
    match key {
        Value::String(k) if !k.is_empty() && k.len() <= MAX_KEY_LEN => Ok(Some(k)),
        other => Err(ToolError::InvalidArguments {
            tool: tool.to_owned(),
            field: "idempotency_key".into(),
            message: format!("got {other}; expected a string of 1 to {MAX_KEY_LEN} characters"),
        }),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().recover()
}

impl Replays {
    /// Claims `key` for a call of `tool` with `args`: run it, replay the
    /// first answer (waiting while the first call runs), or refuse.
    pub(super) async fn claim(
        self: &Arc<Self>,
        tool: &str,
        key: String,
        args: &Value,
    ) -> Result<Claim, ToolError> {
        let fingerprint: [u8; 32] = Sha256::digest(format!("{tool}\0{args}")).into();
        let conflict = || ToolError::InvalidArguments {
            tool: tool.to_owned(),
            field: "idempotency_key".into(),
            message: "already used with other arguments; use a new key for a new request".into(),
        };
        loop {
            let done: Arc<Notify>;
            let mut notified;
            {
                let mut entries = lock(&self.entries);
                done = match entries.get(&key) {
                    None => {
                        let done = Arc::new(Notify::new());
                        entries.insert(key.clone(), Entry::Running { fingerprint, done });
                        return Ok(Claim::Run(RunGuard {
                            replays: self.clone(),
                            key,
                            finished: false,
                        }));
                    }
                    Some(
                        Entry::Done { fingerprint: f, .. } | Entry::Running { fingerprint: f, .. },
                    ) if *f != fingerprint => return Err(conflict()),
                    Some(Entry::Done { answer, .. }) => return Ok(Claim::Replay(answer.clone())),
                    Some(Entry::Running { done, .. }) => done.clone(),
                };
                // Listening before the lock is released: the first call's
                // end (which takes the lock) cannot slip in between.
                notified = Box::pin(done.notified());
                notified.as_mut().enable();
            }
            notified.await;
        }
    }
}

/// A keyed call running: [`RunGuard::finish`] remembers its answer; a call
/// that fails or is dropped forgets the key, so it can be tried again.
pub(super) struct RunGuard {
    replays: Arc<Replays>,
    key: String,
    finished: bool,
}

impl RunGuard {
    pub(super) fn finish(mut self, answer: &Result<Value, ToolError>) {
        self.finished = true;
        let mut entries = lock(&self.replays.entries);
        let waiters = match entries.remove(&self.key) {
            Some(Entry::Running { fingerprint, done }) => {
                if let Ok(answer) = answer {
                    let answer = answer.clone();
                    entries.insert(
                        self.key.clone(),
                        Entry::Done {
                            fingerprint,
                            answer,
                        },
                    );
                    let mut order = lock(&self.replays.order);
                    let now = Instant::now();
                    order.push_back((now, self.key.clone()));
                    while order.len() > MAX_KEYS
                        || order
                            .front()
                            .is_some_and(|(at, _)| now.duration_since(*at) > KEEP)
                    {
                        if let Some((_, old)) = order.pop_front() {
                            if matches!(entries.get(&old), Some(Entry::Done { .. })) {
                                entries.remove(&old);
                            }
                        }
                    }
                }
                Some(done)
            }
            other => {
                if let Some(other) = other {
                    entries.insert(self.key.clone(), other);
                }
                None
            }
        };
        drop(entries);
        if let Some(done) = waiters {
            done.notify_waiters();
        }
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let removed = {
            let mut entries = lock(&self.replays.entries);
            match entries.get(&self.key) {
                Some(Entry::Running { .. }) => entries.remove(&self.key),
                _ => None,
            }
        };
        if let Some(Entry::Running { done, .. }) = removed {
            done.notify_waiters();
        }
    }
}
