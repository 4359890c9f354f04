//! A volume's versioned key/value state: an in-memory map backed by an
//! append-only JSON-lines log that is fsynced before a write is acknowledged,
//! and compacted into a snapshot (temp file, fsync, rename) when it grows.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    dir: PathBuf,
    pub(crate) entries: BTreeMap<String, Entry>,
    log: File,
    log_records: usize,
}

impl VolumeState {
    /// Opens (or creates) the state under `dir`, replaying its log. A torn
    /// last line, left by a crash mid-append, is ignored.
    pub(crate) fn open(dir: &Path) -> io::Result<VolumeState> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG);
        let mut entries = BTreeMap::new();
        let mut log_records = 0;
        let mut good_len = 0u64;
        let mut torn = false;
        if let Ok(file) = File::open(&path) {
            let mut reader = BufReader::new(file);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line)? > 0 {
                let record = line
                    .ends_with(b"\n")
                    .then(|| serde_json::from_slice::<Record>(&line).ok())
                    .flatten();
                let Some(record) = record else {
                    torn = true;
                    break;
                };
                good_len += line.len() as u64;
                log_records += 1;
                entries.insert(
                    record.k,
                    Entry {
                        version: record.v,
                        value: record.d,
                    },
                );
                line.clear();
            }
        }
        let log = OpenOptions::new().create(true).append(true).open(&path)?;
        if torn {
            tracing::warn!(log = %path.display(), "dropping a torn record at the end of a state log");
            log.set_len(good_len)?;
            log.sync_all()?;
        }
        Ok(VolumeState {
            dir: dir.to_path_buf(),
            entries,
            log,
            log_records,
        })
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

    /// Durably records `value` (or a deletion) for `key`; returns the new version.
    pub(crate) fn commit(&mut self, key: &str, value: Option<Value>) -> io::Result<u64> {
        let version = self.entries.get(key).map_or(0, |e| e.version) + 1;
        let mut line = serde_json::to_vec(&Record {
            k: key.to_owned(),
            v: version,
            d: value.clone(),
        })
        .map_err(io::Error::other)?;
        line.push(b'\n');
        self.log.write_all(&line)?;
        self.log.sync_data()?;
        self.log_records += 1;
        self.entries
            .insert(key.to_owned(), Entry { version, value });
        if self.log_records > 1024 && self.log_records > 2 * self.entries.len() {
            self.compact()?;
        }
        Ok(version)
    }

    /// Rewrites the log as one record per key.
    fn compact(&mut self) -> io::Result<()> {
        let tmp = self.dir.join(format!("{LOG}.tmp"));
        let mut out = io::BufWriter::new(File::create(&tmp)?);
        for (k, e) in &self.entries {
            let record = Record {
                k: k.clone(),
                v: e.version,
                d: e.value.clone(),
            };
            serde_json::to_writer(&mut out, &record).map_err(io::Error::other)?;
            out.write_all(b"\n")?;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(LOG))?;
        File::open(&self.dir)?.sync_all()?;
        self.log = OpenOptions::new().append(true).open(self.dir.join(LOG))?;
        self.log_records = self.entries.len();
        Ok(())
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
        let mut log = OpenOptions::new()
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
