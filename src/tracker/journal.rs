//! The task journal: task records and the jobs of unfinished tasks as
//! JSON lines appended to `DATA_DIR/tasks.journal`, replayed at start (last
//! line of a task wins), and compacted into a snapshot (temp file, fsync,
//! rename) when it grows. One `write` per batch makes a change safe against a
//! crash of the process; a periodic fsync bounds what a crash of the machine
//! loses.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
}

/// What a journal holds after replay.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    pub(crate) records: HashMap<TaskId, TaskRecord>,
    pub(crate) jobs: HashMap<TaskId, Value>,
}

/// The open journal.
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    lines: usize,
}

impl Journal {
    /// Opens (or creates) the journal and replays it; a torn last line left
    /// by a crash mid-write is cut off.
    pub(crate) fn open(path: &Path) -> io::Result<(Journal, Replayed)> {
        let mut replayed = Replayed::default();
        let mut lines = 0;
        let mut good = 0u64;
        let mut torn = false;
        if let Ok(f) = File::open(path) {
            let mut reader = BufReader::new(f);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line)? > 0 {
                let entry = line
                    .ends_with(b"\n")
                    .then(|| serde_json::from_slice::<Entry>(&line).ok())
                    .flatten();
                let Some(entry) = entry else {
                    torn = true;
                    break;
                };
                good += line.len() as u64;
                lines += 1;
                match entry {
                    Entry::Record(r) => {
                        replayed.records.insert(r.task_id, *r);
                    }
                    Entry::Job(id, spec) => {
                        replayed.jobs.insert(id, spec);
                    }
                    Entry::Done(id) => {
                        replayed.jobs.remove(&id);
                    }
                }
                line.clear();
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        if torn {
            tracing::warn!(journal = %path.display(), "dropping a torn line at the end of the task journal");
            file.set_len(good)?;
        }
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
                lines,
            },
            replayed,
        ))
    }

    /// Appends entries with one write.
    pub(crate) fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(entries.len() * 256);
        for e in entries {
            serde_json::to_writer(&mut buf, e).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf)?;
        self.lines += entries.len();
        Ok(())
    }

    /// Forces what was appended to the disk.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Lines in the file now.
    pub(crate) fn lines(&self) -> usize {
        self.lines
    }

    /// Rewrites the journal as one line per record and per open job.
    pub(crate) fn compact(&mut self, entries: &[Entry]) -> io::Result<()> {
        let tmp = self.path.with_extension("journal.tmp");
        let mut out = io::BufWriter::new(File::create(&tmp)?);
        for e in entries {
            serde_json::to_writer(&mut out, e).map_err(io::Error::other)?;
            out.write_all(b"\n")?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.lines = entries.len();
        Ok(())
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
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"r\": {\"task_id\"").unwrap();
        let (mut j, r) = Journal::open(&path).unwrap();
        assert_eq!(r.records[&a.task_id].attempts, 3);
        assert_eq!(r.records.len(), 2);
        assert!(r.jobs.contains_key(&a.task_id) && !r.jobs.contains_key(&b.task_id));
        j.compact(&[Entry::Record(Box::new(a.clone()))]).unwrap();
        j.append(&[Entry::Record(Box::new(b.clone()))]).unwrap();
        drop(j);
        let (_, r) = Journal::open(&path).unwrap();
        assert_eq!(r.records.len(), 2);
        assert!(r.jobs.is_empty());
    }
}
