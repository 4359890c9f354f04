//! The one idempotency store (see the [module docs](super) for the rule):
//! answers remembered by caller and key, with the fingerprint of the
//! command and input they answered.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

mod kept;

use super::CommandError;
use crate::store::Store;
use crate::sync::Recover;
use kept::{stored_key, Kept};

/// How long a key is remembered.
const KEEP: Duration = Duration::from_secs(24 * 3600);
/// Most keys remembered per caller.
const MAX_KEYS: usize = 100_000;
/// Most answer bytes remembered in all.
const MAX_BYTES: usize = 32 << 20;
/// Largest answer remembered whole; a larger one is remembered as done.
const MAX_REPLAYED: usize = 4 << 20;
/// Longest key.
const MAX_KEY_LEN: usize = 255;

/// How long a retry waits for its key's first request to finish before it
/// is told that request is still running (55 s).
pub const REPLAY_WAIT: Duration = Duration::from_secs(55);

/// Whose keys: the bearer token a request came with (the first 16 bytes of
/// its SHA-256, the same across restarts and however the server's tokens
/// are listed; never the token itself), or none (an embedding program, a
/// server without tokens). Keys of different callers never meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct Caller(pub(crate) Option<[u8; 16]>);

impl Caller {
    /// The caller presenting `token`.
    pub(crate) fn of_token(token: &str) -> Caller {
        let digest = Sha256::digest(format!("modal-agents caller\0{token}"));
        let mut id = [0; 16];
        id.copy_from_slice(&digest[..16]);
        Caller(Some(id))
    }
}

enum Entry {
    Running {
        fingerprint: [u8; 32],
        done: Arc<Notify>,
    },
    Done {
        fingerprint: [u8; 32],
        /// `None` when it was too large to keep.
        answer: Option<Value>,
        /// What an answer too large to keep named ([`made_by`]).
        made: Option<String>,
    },
}

type Key = (Caller, String);
type Slot = Arc<Mutex<Entry>>;

/// The runtime's remembered answers.
#[derive(Default)]
pub(crate) struct Replays {
    entries: DashMap<Key, Slot>,
    /// Finished keys, oldest first: when, the key, its slot, its bytes.
    /// Per caller, so that one caller's answers never push out another's.
    order: Mutex<std::collections::HashMap<Caller, Finished>>,
    /// Where finished keys are kept across restarts (`replays` in
    /// `state.redb`), once [`Replays::restore`] has read it.
    store: std::sync::OnceLock<Arc<Store>>,
    /// Forgotten keys still to delete from the store (with its next write).
    forgotten: Mutex<Vec<String>>,
}

/// One caller's finished keys, oldest first (when, the key, its slot, its
/// bytes), and their bytes.
#[derive(Default)]
struct Finished {
    keys: VecDeque<(Instant, Key, Slot, usize)>,
    bytes: usize,
}

/// What an answer names that its request made (`task ID`, `sandbox ID`,
/// ...), for a retry whose answer cannot be replayed.
fn made_by(answer: &Value) -> Option<String> {
    [
        ("task_id", "task"),
        ("sandbox_id", "sandbox"),
        ("snapshot_id", "snapshot"),
        ("webhook_id", "webhook"),
    ]
    .iter()
    .find_map(|(field, what)| {
        let id = answer.get(field)?.as_str()?;
        Some(format!("{what} {}", crate::value::clip(id, 128)))
    })
}

/// What identifies a request under its key: the command and its input.
pub(super) fn fingerprint(command: &str, input: &Value) -> [u8; 32] {
    Sha256::digest(format!("{command}\0{input}")).into()
}

/// Takes `idempotency_key` out of `args`, checked: 1 to 255 bytes, no
/// control characters (null: none).
pub(super) fn take_key(command: &str, args: &mut Value) -> Result<Option<String>, CommandError> {
    let Some(key) = args
        .as_object_mut()
        .and_then(|a| a.remove("idempotency_key"))
    else {
        return Ok(None);
    };
    match key {
        Value::String(k) => check_key(command, k).map(Some),
        // Left out, as a model says it.
        Value::Null => Ok(None),
        other => Err(CommandError::invalid(
            command,
            "idempotency_key",
            format!(
                "got {}; expected a string of 1 to {MAX_KEY_LEN} characters",
                crate::value::clip(&other.to_string(), crate::value::MAX_ECHO)
            ),
        )),
    }
}

/// A key as given (a header, an argument), checked.
pub(crate) fn check_key(command: &str, key: String) -> Result<String, CommandError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(CommandError::invalid(
            command,
            "idempotency_key",
            format!(
                "expected 1 to {MAX_KEY_LEN} bytes of UTF-8, got {}",
                key.len()
            ),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(CommandError::invalid(
            command,
            "idempotency_key",
            "control characters are not accepted in a key",
        ));
    }
    Ok(key)
}

impl Replays {
    /// Runs `work` under `key` for `caller`, or answers as the key's first
    /// request did.
    pub(super) async fn run<O, E>(
        self: &Arc<Self>,
        caller: Caller,
        command: &str,
        key: String,
        fingerprint: [u8; 32],
        work: impl Future<Output = Result<O, E>> + Send + 'static,
    ) -> Result<(O, bool), E>
    where
        O: Serialize + DeserializeOwned + Send + 'static,
        E: From<CommandError> + Send + 'static,
    {
        self.expire();
        let key = (caller, key);
        let conflict = || {
            CommandError::invalid(
                command,
                "idempotency_key",
                "already used with another request; use a new key for a new request",
            )
        };
        let mut work = Some(work);
        loop {
            let mine = Arc::new(Mutex::new(Entry::Running {
                fingerprint,
                done: Arc::new(Notify::new()),
            }));
            let existing = match self.entries.entry(key.clone()) {
                dashmap::Entry::Occupied(o) => Some(o.get().clone()),
                dashmap::Entry::Vacant(v) => {
                    v.insert(mine.clone());
                    None
                }
            };
            let Some(existing) = existing else {
                let work = work.take().expect("run once");
                return self
                    .first(key, mine, command, work)
                    .await
                    .map(|o| (o, false));
            };
            let mut notified = {
                let entry = existing.lock().recover();
                match &*entry {
                    Entry::Running { fingerprint: f, .. } | Entry::Done { fingerprint: f, .. }
                        if *f != fingerprint =>
                    {
                        return Err(conflict().into())
                    }
                    Entry::Done {
                        answer: Some(answer),
                        ..
                    } => {
                        return serde_json::from_value(answer.clone())
                            .map(|o| (o, true))
                            .map_err(|_| {
                                CommandError::NotReplayable {
                                    tool: command.to_owned(),
                                    made: made_by(answer),
                                }
                                .into()
                            })
                    }
                    Entry::Done {
                        answer: None, made, ..
                    } => {
                        return Err(CommandError::NotReplayable {
                            tool: command.to_owned(),
                            made: made.clone(),
                        }
                        .into())
                    }
                    Entry::Running { done, .. } => {
                        // Listening before the lock is released: the first
                        // request's end cannot slip in between.
                        let mut notified = Box::pin(done.clone().notified_owned());
                        notified.as_mut().enable();
                        notified
                    }
                }
            };
            if tokio::time::timeout(REPLAY_WAIT, notified.as_mut())
                .await
                .is_err()
            {
                return Err(CommandError::InProgress {
                    tool: command.to_owned(),
                }
                .into());
            }
        }
    }

    /// The key's first request: run to the end whatever its caller does,
    /// then remembered (or, failed, forgotten so it can be tried again).
    async fn first<O, E>(
        self: &Arc<Self>,
        key: Key,
        slot: Slot,
        command: &str,
        work: impl Future<Output = Result<O, E>> + Send + 'static,
    ) -> Result<O, E>
    where
        O: Serialize + DeserializeOwned + Send + 'static,
        E: From<CommandError> + Send + 'static,
    {
        let (me, k, s) = (self.clone(), key, slot);
        let ran = tokio::spawn(async move {
            let outcome = work.await;
            let done = match &*s.lock().recover() {
                Entry::Running { done, .. } => done.clone(),
                Entry::Done { .. } => Arc::new(Notify::new()),
            };
            match &outcome {
                Ok(answer) => {
                    let answer = serde_json::to_value(answer).ok();
                    let size = answer
                        .as_ref()
                        .map_or(0, |a| serde_json::to_vec(a).map_or(0, |v| v.len()));
                    let made = answer.as_ref().and_then(made_by);
                    let kept = answer.filter(|_| size <= MAX_REPLAYED);
                    let bytes = kept.as_ref().map_or(0, |_| size);
                    let fingerprint = match &*s.lock().recover() {
                        Entry::Running { fingerprint, .. } | Entry::Done { fingerprint, .. } => {
                            *fingerprint
                        }
                    };
                    let record = Kept::new(&fingerprint, kept.clone(), made.clone(), bytes);
                    *s.lock().recover() = Entry::Done {
                        fingerprint,
                        answer: kept,
                        made,
                    };
                    let name = stored_key(&k);
                    me.finished(k, s, bytes);
                    me.keep(name, &record).await;
                }
                // A failure is not remembered: the key is free again.
                Err(_) => {
                    me.entries
                        .remove_if(&k, |_, current| Arc::ptr_eq(current, &s));
                }
            }
            done.notify_waiters();
            outcome
        });
        match ran.await {
            Ok(outcome) => outcome,
            Err(e) => Err(CommandError::Runtime {
                tool: command.to_owned(),
                source: crate::runtime::RuntimeError::Unavailable(format!(
                    "the request failed inside the runtime ({e})"
                )),
            }
            .into()),
        }
    }

    /// Records a finished key, then forgets what is past its time, the key
    /// count or the byte budget, oldest first.
    fn finished(&self, key: Key, slot: Slot, size: usize) {
        let mut order = self.order.lock().recover();
        let queue = order.entry(key.0).or_default();
        queue.bytes += size;
        queue.keys.push_back((Instant::now(), key, slot, size));
        self.expire_in(queue);
    }

    fn expire(&self) {
        let mut order = self.order.lock().recover();
        for queue in order.values_mut() {
            self.expire_in(queue);
        }
        order.retain(|_, q| !q.keys.is_empty());
    }

    fn expire_in(&self, queue: &mut Finished) {
        while let Some((at, _, _, _)) = queue.keys.front() {
            let over = queue.keys.len() > MAX_KEYS || queue.bytes > MAX_BYTES;
            if !over && at.elapsed() < KEEP {
                break;
            }
            let Some((_, key, slot, size)) = queue.keys.pop_front() else {
                break;
            };
            queue.bytes -= size;
            // Only this entry: the key may have been used again since.
            if self
                .entries
                .remove_if(&key, |_, current| Arc::ptr_eq(current, &slot))
                .is_some()
                && self.store.get().is_some()
            {
                self.forgotten.lock().recover().push(stored_key(&key));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(replays: &Arc<Replays>, key: &str, input: u32) -> Result<u32, CommandError> {
        let f = fingerprint("c", &serde_json::json!(input));
        replays
            .run(Caller::default(), "c", key.into(), f, async move {
                Ok::<_, CommandError>(input * 2)
            })
            .await
            .map(|(o, _)| o)
    }

    #[tokio::test]
    async fn a_key_replays_its_first_answer_and_refuses_another_request() {
        let replays = Arc::new(Replays::default());
        assert_eq!(answer(&replays, "k", 2).await.unwrap(), 4);
        assert_eq!(answer(&replays, "k", 2).await.unwrap(), 4);
        let e = answer(&replays, "k", 3).await.unwrap_err();
        assert!(
            matches!(&e, CommandError::InvalidArguments { field, .. } if field == "idempotency_key"),
            "{e}"
        );
        // Another caller's key of the same name is its own.
        let f = fingerprint("c", &serde_json::json!(3));
        let theirs = replays
            .run(Caller::of_token("other"), "c", "k".into(), f, async {
                Ok::<_, CommandError>(7u32)
            })
            .await
            .unwrap()
            .0;
        assert_eq!(theirs, 7);
    }

    #[tokio::test]
    async fn a_retry_waits_for_the_first_and_a_failure_is_forgotten() {
        let replays = Arc::new(Replays::default());
        let gate = Arc::new(Notify::new());
        let f = fingerprint("c", &serde_json::json!(1));
        let (r, g) = (replays.clone(), gate.clone());
        let first = tokio::spawn(async move {
            r.run(Caller::default(), "c", "slow".into(), f, async move {
                g.notified().await;
                Ok::<_, CommandError>(1u32)
            })
            .await
        });
        // The retry joins the running first request.
        let (r, f2) = (replays.clone(), f);
        let retry = tokio::spawn(async move {
            r.run(Caller::default(), "c", "slow".into(), f2, async {
                Ok::<_, CommandError>(99u32)
            })
            .await
        });
        tokio::task::yield_now().await;
        gate.notify_one();
        assert_eq!(first.await.unwrap().unwrap(), (1, false));
        assert_eq!(
            retry.await.unwrap().unwrap(),
            (1, true),
            "the first answer, replayed"
        );
        let failed: Result<(u32, bool), CommandError> = replays
            .run(Caller::default(), "c", "bad".into(), f, async {
                Err(CommandError::invalid("c", "x", "no"))
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(answer(&replays, "bad", 1).await.unwrap(), 2, "tried again");
    }

    /// Finished keys outlive the runtime: a new store of them read from the
    /// same database answers as the first did, for the same caller (known
    /// by its token, not its place among the tokens) and no other; keys
    /// forgotten meanwhile leave the database with the next write.
    #[tokio::test]
    async fn keys_are_kept_across_restarts_per_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let f = fingerprint("c", &serde_json::json!(1));
        let run = |r: Arc<Replays>, who: &'static str, out: u32| async move {
            r.run(Caller::of_token(who), "c", "k".into(), f, async move {
                Ok::<_, CommandError>(out)
            })
            .await
            .unwrap()
        };
        {
            let store = Arc::new(Store::open(&path).unwrap());
            let replays = Arc::new(Replays::default());
            replays.restore(store.clone()).unwrap();
            assert_eq!(run(replays.clone(), "token-a", 1).await, (1, false));
            store.close();
        }
        let store = Arc::new(Store::open(&path).unwrap());
        let replays = Arc::new(Replays::default());
        replays.restore(store.clone()).unwrap();
        assert_eq!(
            run(replays.clone(), "token-a", 2).await,
            (1, true),
            "replayed"
        );
        assert_eq!(
            run(replays.clone(), "token-b", 3).await,
            (3, false),
            "theirs"
        );
        let other = fingerprint("c", &serde_json::json!(2));
        let refused = replays
            .run(Caller::of_token("token-a"), "c", "k".into(), other, async {
                Ok::<_, CommandError>(0u32)
            })
            .await;
        assert!(matches!(
            refused,
            Err(CommandError::InvalidArguments { .. })
        ));
        let kept: Vec<(String, Kept)> = store.all(crate::store::Table::Replays, "key").unwrap();
        assert_eq!(kept.len(), 2);
        assert!(
            kept.iter().all(|(name, _)| !name.contains("token-")),
            "never the token"
        );
    }

    /// An answer too large to replay still tells a retry what the first
    /// request made, so the caller can find it.
    #[tokio::test]
    async fn a_retry_of_an_answer_too_large_learns_what_was_made() {
        let replays = Arc::new(Replays::default());
        let f = fingerprint("c", &serde_json::json!(1));
        let big = serde_json::json!({"task_id": "t-1", "results": "x".repeat(MAX_REPLAYED)});
        let run = |answer: Value| {
            replays.run(Caller::default(), "c", "big".into(), f, async move {
                Ok::<_, CommandError>(answer)
            })
        };
        assert!(run(big.clone()).await.is_ok());
        let e = run(big).await.unwrap_err();
        assert!(
            matches!(&e, CommandError::NotReplayable { made: Some(m), .. } if m == "task t-1"),
            "{e:?}"
        );
        assert!(e.to_string().contains("made task t-1"), "{e}");
    }

    /// Remembered bytes stay within each caller's budget, oldest forgotten
    /// first; one caller filling its budget forgets none of another's keys.
    #[test]
    fn each_caller_keeps_to_its_byte_budget() {
        let store = Replays::default();
        let remember = |caller: Caller, name: &str| {
            let key = (caller, name.to_owned());
            let slot = Arc::new(Mutex::new(Entry::Done {
                fingerprint: [0; 32],
                answer: None,
                made: None,
            }));
            store.entries.insert(key.clone(), slot.clone());
            store.finished(key, slot, MAX_REPLAYED);
        };
        let other = Caller::of_token("other");
        remember(other, "theirs");
        for i in 0..40 {
            remember(Caller::default(), &format!("k{i}"));
            let order = store.order.lock().recover();
            assert!(order[&Caller::default()].bytes <= MAX_BYTES);
        }
        assert_eq!(store.entries.len(), MAX_BYTES / MAX_REPLAYED + 1);
        assert!(!store
            .entries
            .contains_key(&(Caller::default(), "k0".into())));
        assert!(store.entries.contains_key(&(other, "theirs".into())));
    }
}
