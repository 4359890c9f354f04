//! Snapshots of sandbox workdirs, content-addressed: each file's bytes are
//! stored once under their SHA-256 (`snapshots/blobs/`), so a file no
//! snapshot changed costs nothing again; a snapshot is a manifest of paths,
//! modes, link targets and hashes (`snapshots/manifests/ID.json`). A blob
//! no manifest names is removed when its last snapshot is deleted.
//!
//! Reads and restores go through [`Root`]: a link in a workdir is recorded
//! as a link and restored as one, never followed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::PathBuf;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::volume::beneath::{Meta, Root, Walked};
use crate::wire::{FileChange, SnapshotDiff, SnapshotInfo};

/// Most files one snapshot holds.
pub const MAX_SNAPSHOT_FILES: u64 = 200_000;
/// Most bytes one snapshot holds (2 GiB), by the files' sizes as listed,
/// checked before a byte is copied (a sparse file counts whole).
pub const MAX_SNAPSHOT_BYTES: u64 = 2 << 30;
/// How long the line diffs of one diff answer may take together; a file
/// whose diff would take longer is listed without one.
const DIFF_TIME: std::time::Duration = std::time::Duration::from_secs(3);
/// Largest text file (each side) a diff shows line by line (256 KiB).
pub const MAX_DIFF_FILE_BYTES: u64 = 256 << 10;
/// Most bytes of unified diff one diff answer carries (4 MiB).
const MAX_DIFF_TEXT: usize = 4 << 20;

/// One entry of a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) path: String,
    pub(crate) kind: EntryKind,
    pub(crate) mode: u32,
    #[serde(default)]
    pub(crate) size: u64,
    /// A file's content hash (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sha256: Option<String>,
    /// A link's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EntryKind {
    File,
    Dir,
    Link,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    info: SnapshotInfo,
    entries: Vec<Entry>,
}

/// Why a snapshot operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No snapshot has that id.
    #[error("no snapshot `{0}`")]
    Unknown(String),
    /// The workdir is over a snapshot's limits.
    #[error("the workdir holds more than a snapshot may ({what}; the limit is {limit})")]
    TooLarge {
        /// What is over.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// Reading or writing the store failed.
    #[error("snapshot store: {0}")]
    Io(#[from] std::io::Error),
}

/// The snapshot store under `dir`.
#[derive(Debug)]
pub(crate) struct Store {
    dir: PathBuf,
    /// Held shared while a snapshot is taken or restored, exclusively while
    /// unreferenced blobs are removed: a snapshot whose blobs are stored but
    /// whose manifest is not yet written never loses them.
    gc: std::sync::RwLock<()>,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Store {
    pub(crate) fn open(dir: PathBuf) -> std::io::Result<Store> {
        for sub in ["blobs", "manifests", "tmp"] {
            crate::persist::private_dir(&dir.join(sub))?;
        }
        Ok(Store {
            dir,
            gc: std::sync::RwLock::new(()),
        })
    }

    fn manifest_path(&self, id: &str) -> PathBuf {
        self.dir.join("manifests").join(format!("{id}.json"))
    }

    fn blob(&self, hash: &str) -> PathBuf {
        self.dir.join("blobs").join(hash)
    }

    fn manifest(&self, id: &str) -> Result<Manifest, SnapshotError> {
        if !valid_id(id) {
            return Err(SnapshotError::Unknown(
                crate::value::clip(id, 64).into_owned(),
            ));
        }
        let bytes = std::fs::read(self.manifest_path(id)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SnapshotError::Unknown(id.to_owned()),
            _ => SnapshotError::Io(e),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Io(std::io::Error::other(e)))
    }

    pub(crate) fn info(&self, id: &str) -> Result<SnapshotInfo, SnapshotError> {
        self.manifest(id).map(|m| m.info)
    }

    /// Every snapshot, newest first.
    pub(crate) fn list(&self) -> Vec<SnapshotInfo> {
        let mut out: Vec<SnapshotInfo> = std::fs::read_dir(self.dir.join("manifests"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                self.info(name.strip_suffix(".json")?).ok()
            })
            .collect();
        out.sort_by_key(|v| std::cmp::Reverse(v.created_at));
        out
    }

    /// Stores the files under `root` as a new snapshot of `sandbox_id`.
    pub(crate) fn take(
        &self,
        sandbox_id: &str,
        root: &Root,
    ) -> Result<SnapshotInfo, SnapshotError> {
        use crate::sync::Recover;
        // Held until the manifest naming the new blobs is written.
        let _shared = self.gc.read().recover();
        let mut entries = Vec::new();
        let (mut bytes, mut new_bytes, mut files) = (0u64, 0u64, 0u64);
        root.walk(&mut |path, meta: Meta, walked| {
            files += 1;
            if files > MAX_SNAPSHOT_FILES {
                return Err(std::io::Error::other(TooMany("files", MAX_SNAPSHOT_FILES)));
            }
            let entry = match walked {
                Walked::Dir => Entry {
                    path: path.to_owned(),
                    kind: EntryKind::Dir,
                    mode: meta.mode,
                    size: 0,
                    sha256: None,
                    target: None,
                },
                Walked::Link(target) => Entry {
                    path: path.to_owned(),
                    kind: EntryKind::Link,
                    mode: meta.mode,
                    size: 0,
                    sha256: None,
                    target: Some(String::from_utf8_lossy(&target).into_owned()),
                },
                Walked::File(file) => {
                    // Counted by its listed size before any byte is copied.
                    if bytes + meta.size > MAX_SNAPSHOT_BYTES {
                        return Err(std::io::Error::other(TooMany("bytes", MAX_SNAPSHOT_BYTES)));
                    }
                    let (hash, size, stored) = self.store_blob(file, MAX_SNAPSHOT_BYTES - bytes)?;
                    bytes += size;
                    if stored {
                        new_bytes += size;
                    }
                    Entry {
                        path: path.to_owned(),
                        kind: EntryKind::File,
                        mode: meta.mode,
                        size,
                        sha256: Some(hash),
                        target: None,
                    }
                }
            };
            entries.push(entry);
            Ok(())
        })
        .map_err(
            |e| match e.get_ref().and_then(|i| i.downcast_ref::<TooMany>()) {
                Some(TooMany(what, limit)) => SnapshotError::TooLarge {
                    what,
                    limit: *limit,
                },
                None => SnapshotError::Io(e),
            },
        )?;
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        // The blobs reach the disk before a manifest names them: one
        // syncfs for all of them, not an fsync each.
        self.sync_blobs()?;
        let info = SnapshotInfo {
            snapshot_id: format!("snap-{}", uuid::Uuid::new_v4().simple()),
            sandbox_id: sandbox_id.to_owned(),
            created_at: Utc::now(),
            files: entries.iter().filter(|e| e.kind == EntryKind::File).count() as u64,
            bytes,
            new_bytes,
        };
        let manifest = Manifest {
            info: info.clone(),
            entries,
        };
        let json = serde_json::to_vec(&manifest).map_err(std::io::Error::other)?;
        crate::persist::write_atomic(&self.manifest_path(&info.snapshot_id), |w| {
            w.write_all(&json)
        })?;
        Ok(info)
    }

    /// Copies `file` into the blob store under its hash; its hash, size and
    /// whether it was new.
    fn store_blob(&self, file: std::fs::File, room: u64) -> std::io::Result<(String, u64, bool)> {
        // A file growing while it is read stops at the room left.
        let mut file = file.take(room);
        let tmp = self
            .dir
            .join("tmp")
            .join(uuid::Uuid::new_v4().simple().to_string());
        let mut out = std::fs::File::create(&tmp)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        let copied = (|| loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            size += n as u64;
        })();
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let hash: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let blob = self.blob(&hash);
        if blob.exists() {
            let _ = std::fs::remove_file(&tmp);
            return Ok((hash, size, false));
        }
        std::fs::rename(&tmp, &blob)?;
        Ok((hash, size, true))
    }

    /// Flushes the store's file system (the blobs just written).
    fn sync_blobs(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let dir = std::fs::File::open(self.dir.join("blobs"))?;
        // SAFETY: syncfs on a descriptor this process owns.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Writes snapshot `id`'s files under `root` (an empty workdir).
    pub(crate) fn restore(&self, id: &str, root: &Root) -> Result<(), SnapshotError> {
        use crate::sync::Recover;
        let _shared = self.gc.read().recover();
        let manifest = self.manifest(id)?;
        for e in &manifest.entries {
            match e.kind {
                EntryKind::Dir => root.mkdir(&e.path)?,
                EntryKind::Link => {
                    root.symlink(&e.path, e.target.as_deref().unwrap_or("").as_bytes())?
                }
                EntryKind::File => {
                    let hash = e.sha256.as_deref().unwrap_or_default();
                    let bytes = std::fs::read(self.blob(hash))?;
                    root.create_file(&e.path, &bytes, e.mode & 0o777)?;
                }
            }
        }
        Ok(())
    }

    /// What changed from snapshot `a` to snapshot `b`.
    pub(crate) fn diff(
        &self,
        a: &str,
        b: &str,
        redact: &crate::redact::Redactor,
    ) -> Result<SnapshotDiff, SnapshotError> {
        let deadline = std::time::Instant::now() + DIFF_TIME;
        let (ma, mb) = (self.manifest(a)?, self.manifest(b)?);
        let files = |m: &Manifest| -> BTreeMap<String, Entry> {
            m.entries
                .iter()
                .filter(|e| e.kind != EntryKind::Dir)
                .map(|e| (e.path.clone(), e.clone()))
                .collect()
        };
        let (fa, fb) = (files(&ma), files(&mb));
        let mut budget = Budget {
            bytes: MAX_DIFF_TEXT,
            deadline,
            redact,
        };
        let mut diff = SnapshotDiff {
            from: a.to_owned(),
            to: b.to_owned(),
            added: Vec::new(),
            changed: Vec::new(),
            removed: Vec::new(),
        };
        for (path, new) in &fb {
            match fa.get(path) {
                None => {
                    let text = self.unified(None, Some(new), path, &mut budget);
                    diff.added.push(change(path, None, Some(new), text));
                }
                Some(old)
                    if old.sha256 != new.sha256
                        || old.target != new.target
                        || old.mode != new.mode =>
                {
                    let text = self.unified(Some(old), Some(new), path, &mut budget);
                    diff.changed.push(change(path, Some(old), Some(new), text));
                }
                Some(_) => {}
            }
        }
        for (path, old) in &fa {
            if !fb.contains_key(path) {
                let text = self.unified(Some(old), None, path, &mut budget);
                diff.removed.push(change(path, Some(old), None, text));
            }
        }
        Ok(diff)
    }

    /// A text file's content (none when too large, binary or not a file).
    fn text(&self, e: Option<&Entry>) -> Option<String> {
        let Some(e) = e else {
            return Some(String::new());
        };
        if e.kind != EntryKind::File || e.size > MAX_DIFF_FILE_BYTES {
            return None;
        }
        let bytes = std::fs::read(self.blob(e.sha256.as_deref()?)).ok()?;
        if bytes.contains(&0) {
            return None;
        }
        String::from_utf8(bytes).ok()
    }

    fn unified(
        &self,
        a: Option<&Entry>,
        b: Option<&Entry>,
        path: &str,
        budget: &mut Budget<'_>,
    ) -> Option<String> {
        if std::time::Instant::now() >= budget.deadline {
            return None;
        }
        let (old, new) = (self.text(a)?, self.text(b)?);
        let from = if a.is_some() {
            format!("a/{path}")
        } else {
            "/dev/null".into()
        };
        let to = if b.is_some() {
            format!("b/{path}")
        } else {
            "/dev/null".into()
        };
        let diff = similar::TextDiff::configure()
            .algorithm(similar::Algorithm::Myers)
            .deadline(budget.deadline)
            .diff_lines(&old, &new);
        if std::time::Instant::now() >= budget.deadline {
            return None;
        }
        let text = diff
            .unified_diff()
            .context_radius(3)
            .header(&from, &to)
            .to_string();
        let text = budget.redact.redact(&text).into_owned();
        if text.len() > budget.bytes {
            return None;
        }
        budget.bytes -= text.len();
        Some(text)
    }

    /// Removes snapshot `id` and the blobs no other snapshot names.
    pub(crate) fn delete(&self, id: &str) -> Result<bool, SnapshotError> {
        match self.manifest(id) {
            Ok(_) => {}
            Err(SnapshotError::Unknown(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
        std::fs::remove_file(self.manifest_path(id))?;
        self.collect_garbage();
        Ok(true)
    }

    /// Removes blobs no manifest names (no snapshot is being taken then).
    fn collect_garbage(&self) {
        use crate::sync::Recover;
        let _alone = self.gc.write().recover();
        let mut used = BTreeSet::new();
        for info in self.list() {
            if let Ok(m) = self.manifest(&info.snapshot_id) {
                used.extend(m.entries.into_iter().filter_map(|e| e.sha256));
            }
        }
        for blob in std::fs::read_dir(self.dir.join("blobs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(name) = blob.file_name().into_string() {
                if !used.contains(&name) {
                    let _ = std::fs::remove_file(blob.path());
                }
            }
        }
    }

    /// Deletes the oldest snapshots past `keep`.
    pub(crate) fn prune(&self, keep: usize) {
        let all = self.list();
        if all.len() <= keep {
            return;
        }
        for info in &all[keep..] {
            let _ = std::fs::remove_file(self.manifest_path(&info.snapshot_id));
        }
        self.collect_garbage();
    }

    #[cfg(test)]
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

fn change(
    path: &str,
    old: Option<&Entry>,
    new: Option<&Entry>,
    diff: Option<String>,
) -> FileChange {
    FileChange {
        path: path.to_owned(),
        old_size: old.map(|e| e.size),
        new_size: new.map(|e| e.size),
        diff,
    }
}

/// What the line diffs of one answer may still use.
struct Budget<'a> {
    bytes: usize,
    deadline: std::time::Instant,
    redact: &'a crate::redact::Redactor,
}

/// A walk stopped at a limit.
#[derive(Debug)]
struct TooMany(&'static str, u64);

impl std::fmt::Display for TooMany {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "more than {} {}", self.1, self.0)
    }
}

impl std::error::Error for TooMany {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::beneath::Kind;

    #[test]
    fn a_snapshot_being_taken_keeps_its_blobs_while_others_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(dir.path().join("snaps")).unwrap());
        let a = Root::open(&dir.path().join("a")).unwrap();
        let b = Root::open(&dir.path().join("b")).unwrap();
        b.write("other", b"other").unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let deleter = {
            let (store, stop) = (store.clone(), stop.clone());
            let b_dir = dir.path().join("b");
            std::thread::spawn(move || {
                let b = Root::existing(&b_dir).unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let info = store.take("b", &b).unwrap();
                    store.delete(&info.snapshot_id).unwrap();
                }
            })
        };
        for round in 0..20 {
            for i in 0..100 {
                a.write(&format!("f{i}"), format!("{round}-{i}").as_bytes())
                    .unwrap();
            }
            let info = store.take("a", &a).unwrap();
            let copy = Root::open(&dir.path().join(format!("copy{round}"))).unwrap();
            store.restore(&info.snapshot_id, &copy).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        deleter.join().unwrap();
    }

    #[test]
    fn snapshots_store_each_content_once_and_diff() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("snaps")).unwrap();
        let work = dir.path().join("work");
        let root = Root::open(&work).unwrap();
        root.write("a.txt", b"one\ntwo\n").unwrap();
        root.write("same.bin", &[0u8, 1, 2]).unwrap();
        root.mkdir("empty/dir").unwrap();
        root.symlink("out", b"/etc/passwd").unwrap();
        let first = store.take("sb", &root).unwrap();
        assert_eq!(first.files, 2);
        assert_eq!(first.new_bytes, 11);
        root.write("a.txt", b"one\nthree\n").unwrap();
        root.write("new.txt", b"hi\n").unwrap();
        root.remove("same.bin").unwrap();
        let second = store.take("sb", &root).unwrap();
        assert_eq!(second.new_bytes, 13, "only the changed and new files");
        let diff = store
            .diff(
                &first.snapshot_id,
                &second.snapshot_id,
                &crate::redact::Redactor::default(),
            )
            .unwrap();
        assert_eq!(diff.added[0].path, "new.txt");
        assert_eq!(diff.removed[0].path, "same.bin");
        assert_eq!(diff.changed[0].path, "a.txt");
        let text = diff.changed[0].diff.as_deref().unwrap();
        assert!(text.contains("-two") && text.contains("+three"), "{text}");
        assert!(diff.removed[0].diff.is_none(), "binary: no text diff");
        // Restored, the link is a link again, never followed.
        let copy = Root::open(&dir.path().join("copy")).unwrap();
        store.restore(&first.snapshot_id, &copy).unwrap();
        assert_eq!(copy.read("a.txt").unwrap(), b"one\ntwo\n");
        assert_eq!(copy.meta("out").unwrap().unwrap().kind, Kind::Link);
        assert_eq!(copy.meta("empty/dir").unwrap().unwrap().kind, Kind::Dir);
        assert!(store.delete(&first.snapshot_id).unwrap());
        assert!(!store.delete(&first.snapshot_id).unwrap());
        assert!(matches!(store.info("../x"), Err(SnapshotError::Unknown(_))));
        // same.bin's blob went with the only snapshot naming it.
        let blobs = std::fs::read_dir(store.dir().join("blobs"))
            .unwrap()
            .count();
        assert_eq!(blobs, 2);
    }
}
