//! An append-only JSON-lines log: replay, quarantine, honest appends,
//! compaction. See the [module docs](super) for the replay rules.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{open_append, write_atomic};

/// What a replay found besides the records it handed over.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// Records read back.
    pub(crate) records: usize,
    /// Terminated lines that did not parse, moved to the quarantine file.
    pub(crate) quarantined: usize,
    /// Whether an unterminated last line was cut off.
    pub(crate) torn: bool,
}

/// An open JSON-lines log.
#[derive(Debug)]
pub(crate) struct JsonLog {
    path: PathBuf,
    file: File,
    /// Bytes of whole, acknowledged lines.
    len: u64,
    lines: usize,
    /// A failed append left bytes past `len` that could not be cut off yet.
    dirty_tail: bool,
    /// The handle may point at a file a compaction replaced.
    stale: bool,
}

impl JsonLog {
    /// Opens (or creates, `0600`) the log at `path`, handing every readable
    /// record to `apply` in order.
    pub(crate) fn open<T: DeserializeOwned>(
        path: &Path,
        mut apply: impl FnMut(T),
    ) -> io::Result<(JsonLog, Replayed)> {
        let mut replayed = Replayed::default();
        let mut bad: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut end = 0u64;
        match File::open(path) {
            Ok(file) => {
                let mut reader = BufReader::with_capacity(1 << 16, file);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    let n = reader.read_until(b'\n', &mut line)?;
                    if n == 0 {
                        break;
                    }
                    if !line.ends_with(b"\n") {
                        replayed.torn = true;
                        break;
                    }
                    match serde_json::from_slice::<T>(&line) {
                        Ok(record) => {
                            apply(record);
                            replayed.records += 1;
                        }
                        Err(error) => {
                            tracing::warn!(
                                log = %path.display(), offset = end, %error,
                                "unreadable line in a log; moved to its quarantine file, every other record kept"
                            );
                            bad.push((end, line.clone()));
                        }
                    }
                    end += n as u64;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        replayed.quarantined = bad.len();
        if !bad.is_empty() {
            quarantine(path, &bad)?;
            without_lines(path, end, &bad)?;
        } else if replayed.torn {
            tracing::warn!(log = %path.display(), offset = end, "cutting off a torn line at the end of a log");
            let file = std::fs::OpenOptions::new().write(true).open(path)?;
            file.set_len(end)?;
            file.sync_all()?;
        }
        let file = open_append(path)?;
        let len = file.metadata()?.len();
        Ok((
            JsonLog {
                path: path.to_path_buf(),
                file,
                len,
                lines: replayed.records,
                dirty_tail: false,
                stale: false,
            },
            replayed,
        ))
    }

    /// Appends `entries` with one write. On failure nothing of them stays in
    /// the file (it is cut back), so the log never holds a partial line before
    /// a later append.
    pub(crate) fn append<'a, T: Serialize + 'a>(
        &mut self,
        entries: impl IntoIterator<Item = &'a T>,
    ) -> io::Result<()> {
        let mut buf = Vec::with_capacity(4096);
        let mut count = 0;
        for entry in entries {
            serde_json::to_writer(&mut buf, entry).map_err(io::Error::other)?;
            buf.push(b'\n');
            count += 1;
        }
        if count == 0 {
            return Ok(());
        }
        self.repair()?;
        if let Err(e) = self.file.write_all(&buf) {
            self.cut_back();
            return Err(e);
        }
        self.len += buf.len() as u64;
        self.lines += count;
        Ok(())
    }

    /// Appends `entries` and fsyncs them; on any failure they are cut back
    /// off, so an error always means "not written".
    pub(crate) fn append_durable<'a, T: Serialize + 'a>(
        &mut self,
        entries: impl IntoIterator<Item = &'a T>,
    ) -> io::Result<()> {
        let (len, lines) = (self.len, self.lines);
        self.append(entries)?;
        if let Err(e) = self.file.sync_data() {
            self.len = len;
            self.lines = lines;
            self.cut_back();
            return Err(e);
        }
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

    /// Rewrites the log as exactly `entries`, atomically.
    pub(crate) fn compact<T: Serialize>(
        &mut self,
        entries: impl IntoIterator<Item = T>,
    ) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let mut count = 0;
        let written = write_atomic(&self.path, |out| {
            for entry in entries {
                serde_json::to_writer(&mut *out, &entry).map_err(io::Error::other)?;
                out.write_all(b"\n")?;
                count += 1;
            }
            Ok(())
        });
        // Whatever failed, appends go to the file at the path now: after a
        // rename that succeeded, the old handle is an unlinked file, and an
        // append there would be acknowledged and lost.
        let reopened = open_append(&self.path).and_then(|file| {
            let ino = file.metadata()?.ino();
            Ok((file, ino))
        });
        match reopened {
            Ok((file, ino)) => {
                let replaced = self.file.metadata().map_or(true, |m| m.ino() != ino);
                if replaced {
                    self.file = file;
                    self.len = self.file.metadata()?.len();
                    self.lines = count;
                    self.dirty_tail = false;
                }
                self.stale = false;
            }
            Err(e) => {
                self.stale = true;
                return Err(e);
            }
        }
        written
    }

    /// Cuts a failed append's bytes off; remembers to retry when it cannot.
    fn cut_back(&mut self) {
        self.dirty_tail = true;
        if let Err(error) = self.repair() {
            tracing::error!(log = %self.path.display(), %error, "cannot cut a failed append off a log; it takes no more appends until it can");
        }
    }

    fn repair(&mut self) -> io::Result<()> {
        if self.stale {
            // A compaction could not reopen the log: never append to the
            // handle it may have replaced.
            self.file = open_append(&self.path)?;
            self.len = self.file.metadata()?.len();
            self.dirty_tail = false;
            self.stale = false;
        }
        if self.dirty_tail {
            self.file.set_len(self.len)?;
            self.dirty_tail = false;
        }
        Ok(())
    }
}

fn quarantine_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".quarantine");
    path.with_file_name(name)
}

/// Appends the bad lines, as they were, to the log's quarantine file.
fn quarantine(path: &Path, bad: &[(u64, Vec<u8>)]) -> io::Result<()> {
    let mut out = open_append(&quarantine_path(path))?;
    for (_, line) in bad {
        out.write_all(line)?;
    }
    out.sync_all()
}

/// Rewrites the log's first `end` bytes without the lines at `bad`'s offsets.
fn without_lines(path: &Path, end: u64, bad: &[(u64, Vec<u8>)]) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(1 << 16, File::open(path)?);
    write_atomic(path, |out| {
        let mut offset = 0u64;
        let mut skip = bad.iter().map(|(at, _)| *at).peekable();
        let mut line = Vec::new();
        while offset < end {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            if skip.peek() == Some(&offset) {
                skip.next();
            } else {
                out.write_all(&line)?;
            }
            offset += n as u64;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn replay(path: &Path) -> (Vec<Value>, Replayed) {
        let mut seen = Vec::new();
        let (_, r) = JsonLog::open::<Value>(path, |v| seen.push(v)).unwrap();
        (seen, r)
    }

    #[test]
    fn a_bad_middle_line_is_quarantined_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        std::fs::write(
            &path,
            format!("{{\"a\":1}}\n{deep}\nnot json\n{{\"a\":2}}\n{{\"a\":3"),
        )
        .unwrap();
        let (seen, r) = replay(&path);
        assert_eq!(seen, vec![json!({"a": 1}), json!({"a": 2})]);
        assert_eq!(
            r,
            Replayed {
                records: 2,
                quarantined: 2,
                torn: true
            }
        );
        let q = std::fs::read_to_string(quarantine_path(&path)).unwrap();
        assert_eq!(q, format!("{deep}\nnot json\n"));
        // The log now holds only the good lines, and replays cleanly.
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n"
        );
        let (seen, r) = replay(&path);
        assert_eq!(seen.len(), 2);
        assert_eq!(r.quarantined, 0);
        assert!(!r.torn);
    }

    #[test]
    fn appends_compaction_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let (mut log, _) = JsonLog::open::<Value>(&path, |_| {}).unwrap();
        log.append(&[json!(1), json!(2)]).unwrap();
        log.append_durable(&[json!(3)]).unwrap();
        assert_eq!(log.lines(), 3);
        log.compact(&[json!(9)]).unwrap();
        log.append(&[json!(10)]).unwrap();
        drop(log);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "compaction keeps the log private");
        assert_eq!(replay(&path).0, vec![json!(9), json!(10)]);
    }

    #[test]
    fn a_stale_handle_is_never_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let (mut log, _) = JsonLog::open::<Value>(&path, |_| {}).unwrap();
        log.append(&[json!(1)]).unwrap();
        // What a compaction whose reopen failed leaves: the path holds a new
        // file, the handle the old, unlinked one.
        write_atomic(&path, |out| out.write_all(b"\"new\"\n")).unwrap();
        log.stale = true;
        log.append(&[json!(2)]).unwrap();
        drop(log);
        assert_eq!(replay(&path).0, vec![json!("new"), json!(2)]);
    }

    #[test]
    fn a_failed_append_leaves_no_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let (mut log, _) = JsonLog::open::<Value>(&path, |_| {}).unwrap();
        log.append(&[json!("first")]).unwrap();
        // What a write that fails part way leaves, then what append does on
        // that error.
        let len = log.len;
        log.file.write_all(b"{\"partial\":").unwrap();
        log.cut_back();
        assert!(!log.dirty_tail);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        log.append(&[json!("after")]).unwrap();
        drop(log);
        assert_eq!(replay(&path).0, vec![json!("first"), json!("after")]);
    }
}
