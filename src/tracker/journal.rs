//! The task journal: task records and the jobs of unfinished tasks as
//! JSON lines appended to `DATA_DIR/tasks.journal` (a [`JsonLog`]), replayed
//! at start (last line of a task wins), and compacted into a snapshot when it
//! grows. One `write` per batch makes a change safe against a crash of the
//! process; a periodic fsync bounds what a crash of the machine loses.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::kept::{Kept, Names};
use crate::persist::JsonLog;
use crate::task::{TaskId, TaskRecord};

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Entry {
    /// A task's record as it is now.
    #[serde(rename = "r")]
    Record(Box<TaskRecord>),
    /// An unfinished task's job.
    #[serde(rename = "j")]
    Job(TaskId, Value),
    /// A task whose job is done.
    #[serde(rename = "d")]
    Done(TaskId),
    /// A task removed by retention.
    #[serde(rename = "f")]
    Forget(TaskId),
}

/// What a journal holds after replay.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    /// Records as the tracker keeps them (compact: a restart on a million
    /// tasks holds them once, small).
    pub(crate) records: HashMap<TaskId, Kept>,
    pub(crate) jobs: HashMap<TaskId, Value>,
    /// Lines set aside as unreadable: files of tasks without a record are
    /// then kept for inspection instead of removed.
    pub(crate) quarantined: usize,
}

/// The open journal.
pub(crate) struct Journal {
    log: JsonLog,
}

impl Journal {
    /// Opens (or creates) the journal and replays it (see
    /// [`crate::persist`] for what happens to torn and unreadable lines).
    pub(crate) fn open(path: &Path) -> io::Result<(Journal, Replayed)> {
        let mut replayed = Replayed::default();
        let names = Names::default();
        let (log, stats) = JsonLog::open::<Entry>(path, |entry| match entry {
            Entry::Record(r) => {
                replayed.records.insert(r.task_id, Kept::new(*r, &names));
            }
            Entry::Job(id, spec) => {
                replayed.jobs.insert(id, spec);
            }
            Entry::Done(id) => {
                replayed.jobs.remove(&id);
            }
            Entry::Forget(id) => {
                replayed.records.remove(&id);
                replayed.jobs.remove(&id);
            }
        })?;
        replayed.quarantined = stats.quarantined;
        Ok((Journal { log }, replayed))
    }

    /// Appends entries with one write; on failure none of them is in the file.
    pub(crate) fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        self.log.append(entries)
    }

    /// Forces what was appended to the disk.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.log.sync()
    }

    /// Lines in the file now.
    pub(crate) fn lines(&self) -> usize {
        self.log.lines()
    }

    /// Rewrites the journal as one line per record and per open job.
    pub(crate) fn compact(&mut self, entries: impl IntoIterator<Item = Entry>) -> io::Result<()> {
        self.log.compact(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskKind;

    #[test]
    fn replays_last_record_and_open_jobs_and_cuts_torn_tails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.journal");
        let (mut j, empty) = Journal::open(&path).unwrap();
        assert!(empty.records.is_empty());
        let mut a = TaskRecord::new("f", TaskKind::Call, None);
        let b = TaskRecord::new("g", TaskKind::Call, None);
        j.append(&[
            Entry::Job(a.task_id, serde_json::json!({"kind": "call"})),
            Entry::Record(Box::new(a.clone())),
            Entry::Job(b.task_id, serde_json::json!({"kind": "call"})),
            Entry::Record(Box::new(b.clone())),
        ])
        .unwrap();
        a.attempts = 3;
        j.append(&[Entry::Record(Box::new(a.clone())), Entry::Done(b.task_id)])
            .unwrap();
        drop(j);
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"r\": {\"task_id\"").unwrap();
        let (mut j, r) = Journal::open(&path).unwrap();
        assert_eq!(r.records[&a.task_id].attempts, 3);
        assert_eq!(r.records.len(), 2);
        assert!(r.jobs.contains_key(&a.task_id) && !r.jobs.contains_key(&b.task_id));
        j.compact([Entry::Record(Box::new(a.clone()))]).unwrap();
        j.append(&[Entry::Record(Box::new(b.clone()))]).unwrap();
        drop(j);
        let (_, r) = Journal::open(&path).unwrap();
        assert_eq!(r.records.len(), 2);
        assert!(r.jobs.is_empty());
    }
}
