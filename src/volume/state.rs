//! A volume's versioned key/value state: an in-memory map backed by an
//! append-only JSON-lines log (a [`JsonLog`]) that is fsynced before a write
//! is acknowledged, and compacted into a snapshot when it grows.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::persist::{private_dir, JsonLog};

const LOG: &str = "state.log";

/// One key's current value and version (`value` is `None` once deleted; the
/// version carries on so a re-created key never reuses one).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) version: u64,
    pub(crate) value: Option<Value>,
}

#[derive(Serialize, Deserialize)]
struct Record {
    k: String,
    v: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<Value>,
}

/// The state of one volume.
pub(crate) struct VolumeState {
    pub(crate) entries: BTreeMap<String, Entry>,
    log: JsonLog,
}

impl VolumeState {
    /// Opens (or creates) the state under `dir`, replaying its log (see
    /// [`crate::persist`] for what happens to torn and unreadable lines).
    pub(crate) fn open(dir: &Path) -> io::Result<VolumeState> {
        private_dir(dir)?;
        let mut entries = BTreeMap::new();
        let (log, _) = JsonLog::open::<Record>(&dir.join(LOG), |record| {
            entries.insert(
                record.k,
                Entry {
                    version: record.v,
                    value: record.d,
                },
            );
        })?;
        Ok(VolumeState { entries, log })
    }

    /// The live value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<(u64, &Value)> {
        self.entries
            .get(key)
            .and_then(|e| e.value.as_ref().map(|v| (e.version, v)))
    }

    /// The version a live key has, `None` when absent or deleted.
    pub(crate) fn live_version(&self, key: &str) -> Option<u64> {
        self.get(key).map(|(v, _)| v)
    }

    /// Durably records `value` (or a deletion) for `key`; returns the new
    /// version. An error means nothing was recorded.
    pub(crate) fn commit(&mut self, key: &str, value: Option<Value>) -> io::Result<u64> {
        let version = self.entries.get(key).map_or(0, |e| e.version) + 1;
        let record = Record {
            k: key.to_owned(),
            v: version,
            d: value,
        };
        self.log.append_durable([&record])?;
        self.entries.insert(
            record.k,
            Entry {
                version,
                value: record.d,
            },
        );
        if self.log.lines() > 1024 && self.log.lines() > 2 * self.entries.len() {
            // The write is durable already; a failed compaction is retried
            // at the next write and must not report it as failed.
            if let Err(error) = self.compact() {
                tracing::warn!(%error, "could not compact a volume's state log");
            }
        }
        Ok(version)
    }

    /// Rewrites the log as one record per key.
    fn compact(&mut self) -> io::Result<()> {
        let records: Vec<Record> = self
            .entries
            .iter()
            .map(|(k, e)| Record {
                k: k.clone(),
                v: e.version,
                d: e.value.clone(),
            })
            .collect();
        self.log.compact(&records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn survives_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = VolumeState::open(dir.path()).unwrap();
        for i in 0..3000 {
            s.commit("counter", Some(json!(i))).unwrap();
        }
        assert_eq!(s.commit("gone", Some(json!(1))).unwrap(), 1);
        assert_eq!(s.commit("gone", None).unwrap(), 2);
        drop(s);
        let mut s = VolumeState::open(dir.path()).unwrap();
        assert_eq!(s.get("counter"), Some((3000, &json!(2999))));
        assert_eq!(s.get("gone"), None);
        assert_eq!(
            s.commit("gone", Some(json!(2))).unwrap(),
            3,
            "versions never reused"
        );
        let lines = std::fs::read_to_string(dir.path().join(LOG))
            .unwrap()
            .lines()
            .count();
        assert!(lines < 1100, "compacted: {lines} lines");
    }

    #[test]
    fn torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = VolumeState::open(dir.path()).unwrap();
        s.commit("a", Some(json!(1))).unwrap();
        drop(s);
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG))
            .unwrap();
        log.write_all(b"{\"k\":\"b\",\"v\":1,\"d\":").unwrap();
        let mut s = VolumeState::open(dir.path()).unwrap();
        assert_eq!(s.get("a"), Some((1, &json!(1))));
        assert_eq!(s.get("b"), None);
        s.commit("c", Some(json!(3))).unwrap();
        drop(s);
        let s = VolumeState::open(dir.path()).unwrap();
        assert_eq!(
            s.get("c"),
            Some((1, &json!(3))),
            "writes after a torn tail survive"
        );
    }
}
