//! Keeping finished idempotency keys across restarts: each one a row of
//! the `replays` table in `state.redb` (its caller, key, fingerprint,
//! answer and when it finished), written before the answer is given and
//! read back at start.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::{Caller, Entry, Key, Replays, KEEP};
use crate::store::{Store, Table, Write};
use crate::sync::Recover;

/// A finished key as the store keeps it.
#[derive(Serialize, serde::Deserialize)]
pub(super) struct Kept {
    fingerprint: String,
    /// `None` when it was too large to keep.
    answer: Option<Value>,
    /// What an answer too large to keep named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    made: Option<String>,
    /// When it finished, in seconds since the Unix epoch.
    at: u64,
    size: usize,
}

impl Kept {
    /// A key that just finished with `answer` (`None`: too large to keep,
    /// naming what it `made`) of `size` bytes.
    pub(super) fn new(
        fingerprint: &[u8; 32],
        answer: Option<Value>,
        made: Option<String>,
        size: usize,
    ) -> Kept {
        Kept {
            fingerprint: hex(fingerprint),
            answer,
            made,
            at: unix_now(),
            size,
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A key as the store names it: its caller (hex, or `-` for none), `/`,
/// the key.
pub(super) fn stored_key((caller, key): &Key) -> String {
    let caller = caller
        .0
        .as_ref()
        .map_or_else(|| "-".to_owned(), |id| hex(id));
    format!("{caller}/{key}")
}

/// [`stored_key`] read back.
fn key_from(stored: &str) -> Option<Key> {
    let (caller, key) = stored.split_once('/')?;
    let caller = match caller {
        "-" => Caller(None),
        id => Caller(Some(unhex(id)?)),
    };
    Some((caller, key.to_owned()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0; N];
    if text.len() != 2 * N {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Replays {
    /// Reads the keys `store` kept (dropping those past their time, the key
    /// count or the byte budget), and keeps finished keys there from now on.
    pub(crate) fn restore(&self, store: Arc<Store>) -> Result<(), crate::store::StoreError> {
        let mut kept: Vec<(String, Kept)> = store.all(Table::Replays, "idempotency key")?;
        kept.sort_by_key(|(_, k)| k.at);
        let now = unix_now();
        let mut stale = Vec::new();
        for (name, k) in kept {
            let age = Duration::from_secs(now.saturating_sub(k.at));
            let parsed = key_from(&name).zip(unhex(&k.fingerprint));
            let (Some((key, fingerprint)), Some(at)) = (parsed, Instant::now().checked_sub(age))
            else {
                stale.push(name);
                continue;
            };
            if age >= KEEP {
                stale.push(name);
                continue;
            }
            let slot = Arc::new(Mutex::new(Entry::Done {
                fingerprint,
                answer: k.answer,
                made: k.made,
            }));
            self.entries.insert(key.clone(), slot.clone());
            let mut order = self.order.lock().recover();
            let caller = key.0;
            let queue = order.entry(caller).or_default();
            queue.bytes += k.size;
            queue.keys.push_back((at, key, slot, k.size));
            self.expire_in(queue);
        }
        self.forgotten.lock().recover().extend(stale);
        let _ = self.store.set(store);
        Ok(())
    }

    /// Writes a finished key to the store (with the deletes of those
    /// forgotten since the last write), before its waiters hear of it. A
    /// failed write is logged: the answer is still remembered in memory.
    pub(super) async fn keep(self: &Arc<Self>, name: String, record: &Kept) {
        let Some(store) = self.store.get().cloned() else {
            return;
        };
        let mut writes: Vec<Write> = std::mem::take(&mut *self.forgotten.lock().recover())
            .into_iter()
            .map(|k| Write::Delete(Table::Replays, k))
            .collect();
        writes.push(crate::store::put(Table::Replays, name, record));
        let written = tokio::task::spawn_blocking(move || store.apply(writes)).await;
        if let Ok(Err(e)) | Err(e) =
            written.map_err(|e| crate::store::StoreError::Io(std::io::Error::other(e.to_string())))
        {
            tracing::warn!(error = %e, "an idempotency key could not be kept across restarts");
        }
    }
}
