//! The persistence kit: the few ways this runtime puts bytes on disk, each
//! written once.
//!
//! - [`write_atomic`]: a whole file replaced at once (temp file, fsync,
//!   rename, fsync of the directory), created `0600`.
//! - [`JsonLog`]: an append-only JSON-lines log with replay, quarantine of
//!   unreadable lines and compaction; the task journal and every volume's
//!   state log are one.
//! - [`private_dir`]: a directory only the runtime's user can read.
//!
//! ## The data dir
//!
//! | path | format | owner | durability |
//! |---|---|---|---|
//! | `state.redb` | redb | `store` (functions, secrets, webhooks) | committed before the call returns |
//! | `tasks.journal` | [`JsonLog`] of task records, jobs, ends, removals | `tracker` | written before a create is acknowledged; fsynced each second and at stop |
//! | `tasks.journal.quarantine` | lines replay could not read | [`JsonLog`] | kept for inspection |
//! | `tasks/ID/inputs.jsonl` | a map's inputs, one JSON value a line | `dispatcher`, named by [`TaskDir`] | [`write_atomic`] before the map is created |
//! | `tasks/ID/result.json` | a call's result over `task::INLINE_RESULT_BYTES` | `dispatcher`, named by [`TaskDir`] | fsynced before the call's end is |
//! | `tasks/ID/results.jsonl` + `results.idx` | results in input order + their end offsets | `tracker::results`, named by [`TaskDir`] | data before index; fsynced before the map's end |
//! | `tasks/ID/stdout.log`, `stderr.log` | what the task printed | `dispatcher::logs`, named by [`TaskDir`] | written as it comes |
//! | `volumes/NAME/state/state.log` | [`JsonLog`] of key, version, value | `volume` | fsynced before a write is acknowledged |
//! | `volumes/NAME/files/` | the volume's files | `volume`, functions | atomic replace, fsynced |
//! | `containers/` | containers' working directories | local backend | scratch |
//!
//! Files are `0600` and directories `0700` ([`FILE_MODE`], [`DIR_MODE`]).
//!
//! ## Replay rules
//!
//! Only an unterminated last line is a torn tail (a crash mid-append) and is
//! cut off. A terminated line that does not parse is never taken for the end
//! of the log: it is copied to `<log>.quarantine`, logged with its byte offset,
//! and removed from the log; every other record is kept. An append that fails
//! is cut back off the file, so a failed write leaves no partial line for a
//! later append to follow.

mod log;

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub(crate) use log::JsonLog;

/// A task's directory (`DATA_DIR/tasks/ID`), the one owner of the names of
/// the files in it: a map's inputs (`inputs.jsonl`), its results
/// (`results.jsonl` + `results.idx`) and the task's logs (`stdout.log`,
/// `stderr.log`). Read as a [`Path`] it is the directory itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskDir(PathBuf);

impl TaskDir {
    pub(crate) fn new(path: PathBuf) -> TaskDir {
        TaskDir(path)
    }

    /// A map's inputs, one JSON value per line.
    pub(crate) fn inputs(&self) -> PathBuf {
        self.0.join("inputs.jsonl")
    }

    /// A call's result when it is too large for its record, as JSON.
    pub(crate) fn result(&self) -> PathBuf {
        self.0.join("result.json")
    }

    /// A map's results, one JSON value per line, in input order.
    pub(crate) fn results(&self) -> PathBuf {
        self.0.join("results.jsonl")
    }

    /// The end offset of each result line (8 bytes each, little endian).
    pub(crate) fn results_index(&self) -> PathBuf {
        self.0.join("results.idx")
    }

    /// What the task printed on `stream`.
    pub(crate) fn log(&self, stream: crate::compute::LogStream) -> PathBuf {
        self.0.join(match stream {
            crate::compute::LogStream::Stdout => "stdout.log",
            crate::compute::LogStream::Stderr => "stderr.log",
        })
    }
}

impl std::ops::Deref for TaskDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

/// Mode of every file the runtime keeps state in.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Mode of every directory the runtime keeps state in.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Replaces `path` with what `fill` writes, atomically: a reader (or a crash)
/// sees the old file or the new one, never a mix. The file is `0600`.
pub(crate) fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut io::BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = tmp_path(path);
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        // A temp file left by an earlier crash keeps its old mode.
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        let mut out = io::BufWriter::with_capacity(1 << 16, file);
        fill(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Fsyncs the directory holding `path`, so a rename or creation in it lasts.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// Creates `dir` (and missing parents) readable by the runtime's user only;
/// an existing `dir` is narrowed to that.
pub(crate) fn private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode != DIR_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// Opens `path` for appending, creating it `0600` (and narrowing an existing
/// file to that).
pub(crate) fn open_append(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)?;
    if file.metadata()?.permissions().mode() & 0o777 != FILE_MODE {
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(file)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn atomic_writes_are_private_and_replace_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&path, |out| out.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!tmp_path(&path).exists());
        // A failing fill leaves the old file and no temp file.
        let err = write_atomic(&path, |_| Err(io::Error::other("boom"))).unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!tmp_path(&path).exists());
    }

    #[test]
    fn private_dirs_are_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        private_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&sub).unwrap();
        let mode = std::fs::metadata(&sub).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
