//! Named volumes: versioned JSON state and files on disk, shared by agents and
//! by the functions that mount them.
//!
//! Layout: `DATA_DIR/volumes/NAME/state/state.log` (the key/value state) and
//! `DATA_DIR/volumes/NAME/files/` (the files; the same directory a function
//! sees when it mounts the volume).
//!
//! ## Commit and reload semantics
//!
//! - **State** writes go through the volume's actor one at a time, are
//!   appended to the volume's log and fsynced *before* the call returns. When
//!   `write`/`cas`/`delete` returns, every other agent's next `read` sees the
//!   change (linearizable), and it survives a crash or restart of the process.
//!   `cas` succeeds only if the key's version is still the one expected.
//! - **Files** are replaced atomically (temp file, fsync, rename, fsync of the
//!   directory): a reader sees the old content or the new, never a mix. A file
//!   is visible to other agents and to running functions as soon as `put`
//!   returns. Files that functions write are visible at once too (same
//!   directory); there is no explicit commit or reload locally, unlike a Modal
//!   Volume, where the Modal backend syncs on commit and reload.
//! - **Watch**: a subscriber to a prefix receives every change made through the
//!   store (state puts and deletes, file puts and deletes) whose key or path
//!   starts with the prefix, in commit order, each with a sequence number.
//!   Writes that functions make directly to files are not announced.

mod actor;
pub(crate) mod beneath;
mod files;
mod open;
mod state;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::spec::{validate_object_name, SpecError};
use crate::supervisor::ChildError;

use crate::sync::Recover;
use actor::VolumeMsg;
pub use files::FileStat;
pub(crate) use open::OpenVolumes;

const STATE_TIMEOUT: Duration = Duration::from_secs(10);
const FILE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a writer waits for the store's answer once its write is queued.
/// A write the store cannot start by its own deadline (`STATE_TIMEOUT`,
/// `FILE_TIMEOUT`) is refused unapplied, so this wait only covers one write
/// actually running: the answer is always the true outcome, never a timeout
/// for a write that is applied later.
const WRITE_ANSWER_TIMEOUT: Duration = Duration::from_secs(3600);

/// Largest state value, serialized (1 MiB).
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Largest file (256 MiB).
pub const MAX_FILE_BYTES: usize = 256 << 20;

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The volume name is not acceptable.
    #[error(transparent)]
    Name(#[from] SpecError),
    /// A state key is not acceptable.
    #[error("invalid key {key:?}: expected 1 to 512 characters without control characters")]
    BadKey {
        /// The key (its first bytes when long).
        key: String,
    },
    /// A file path is not acceptable.
    #[error("invalid path {path:?}: {why}")]
    BadPath {
        /// The path (its first bytes when long).
        path: String,
        /// What is wrong and what is accepted.
        why: String,
    },
    /// A value or file is larger than allowed.
    #[error("{what} is {size} bytes; at most {limit} bytes are accepted")]
    TooLarge {
        /// `value of key "k"` or `file "p"`.
        what: String,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A compare-and-swap found another version.
    #[error("version conflict on {key:?}: expected {}, found {}", show_version(*.expected), show_version(*.current))]
    Conflict {
        /// The key.
        key: String,
        /// The version the caller expected (`None`: absent).
        expected: Option<u64>,
        /// The version it has (`None`: absent).
        current: Option<u64>,
    },
    /// The file does not exist.
    #[error("no file {path:?} in volume `{volume}`")]
    NoSuchFile {
        /// The volume.
        volume: String,
        /// The path.
        path: String,
    },
    /// Disk I/O failed.
    #[error("volume `{volume}`: {source}")]
    Io {
        /// The volume.
        volume: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The volume's actor is down.
    #[error(transparent)]
    Unavailable(#[from] ChildError),
    /// The store could not start the write in time (other writes ahead of
    /// it); it was not applied.
    #[error("the volume was too busy to start this write within {waited_s} s; it was not applied, try again")]
    Busy {
        /// How long it waited.
        waited_s: u64,
    },
    /// A value nests too deep to be stored and read back.
    #[error(transparent)]
    TooDeep(#[from] crate::value::TooDeep),
}

/// A file operation's I/O error, with what a link or directory in the way
/// means said plainly (they are the caller's path, not a server fault).
fn file_error(volume: &str, path: &str, source: std::io::Error) -> VolumeError {
    let bad = |why: &str| VolumeError::BadPath {
        path: crate::value::clip(path, crate::value::MAX_ECHO).into_owned(),
        why: why.to_owned(),
    };
    match source.raw_os_error() {
        Some(libc::ENOTDIR | libc::ELOOP) => {
            bad("a part of it is a link or not a directory; volume paths never follow links")
        }
        Some(libc::EISDIR) => bad("it is a directory"),
        _ => VolumeError::Io {
            volume: volume.to_owned(),
            source,
        },
    }
}

fn show_version(v: Option<u64>) -> String {
    v.map_or_else(|| "absent".to_owned(), |v| format!("version {v}"))
}

/// A state value with its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versioned {
    /// The value.
    pub value: Value,
    /// Its version: 1 on first write, +1 on every write or delete.
    pub version: u64,
}

/// A change announced to watchers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VolumeChange {
    /// A state key was written.
    Put {
        /// The key.
        key: String,
        /// Its new version.
        version: u64,
        /// Its new value.
        value: Value,
    },
    /// A state key was deleted.
    Delete {
        /// The key.
        key: String,
        /// The version of the deletion.
        version: u64,
    },
    /// A file was written.
    FilePut {
        /// The path.
        path: String,
        /// Its size.
        size: u64,
    },
    /// A file was deleted.
    FileDelete {
        /// The path.
        path: String,
    },
}

impl VolumeChange {
    fn subject(&self) -> &str {
        match self {
            VolumeChange::Put { key, .. } | VolumeChange::Delete { key, .. } => key,
            VolumeChange::FilePut { path, .. } | VolumeChange::FileDelete { path } => path,
        }
    }
}

/// One change, in commit order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeEvent {
    /// The volume.
    pub volume: String,
    /// Increases by one with every change to any volume of this store.
    pub seq: u64,
    /// What changed.
    pub change: VolumeChange,
}

struct Subscriber {
    volume: String,
    prefix: String,
    tx: mpsc::UnboundedSender<VolumeEvent>,
}

/// What outlives a [`VolumeStore`] actor: its root and the watchers.
pub(crate) struct VolumeShared {
    root: PathBuf,
    subscribers: Mutex<Vec<Subscriber>>,
    seq: std::sync::atomic::AtomicU64,
}

impl VolumeShared {
    pub(crate) fn new(root: PathBuf) -> Arc<VolumeShared> {
        Arc::new(VolumeShared {
            root,
            subscribers: Mutex::new(Vec::new()),
            seq: Default::default(),
        })
    }

    /// Whether volume `name` exists (something wrote to it, or it was
    /// created or mounted).
    fn exists(&self, name: &str) -> bool {
        validate_object_name("volume_name", name).is_ok() && self.root.join(name).is_dir()
    }

    fn files_dir(&self, volume: &str) -> PathBuf {
        self.root.join(volume).join("files")
    }

    fn announce(&self, volume: &str, change: VolumeChange) {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let mut subs = self.subscribers.lock().recover();
        subs.retain(|s| {
            if s.volume != volume || !change.subject().starts_with(&s.prefix) {
                return !s.tx.is_closed();
            }
            let event = VolumeEvent {
                volume: volume.to_owned(),
                seq,
                change: change.clone(),
            };
            s.tx.send(event).is_ok()
        });
    }
}

fn check_key(key: &str) -> Result<(), VolumeError> {
    // 512 characters (not bytes): what the API's schema says.
    if key.is_empty() || key.chars().count() > 512 || key.chars().any(char::is_control) {
        return Err(VolumeError::BadKey {
            key: crate::value::clip(key, crate::value::MAX_ECHO).into_owned(),
        });
    }
    Ok(())
}

fn check_value(key: &str, value: &Value) -> Result<(), VolumeError> {
    crate::value::check_depth(value, || format!("value of key {key:?}"))?;
    let size = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
    if size > MAX_VALUE_BYTES {
        return Err(VolumeError::TooLarge {
            what: format!("value of key {key:?}"),
            size,
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// A page of a volume's keys: those starting with `prefix`, after `after`,
/// at most `limit` of them and about `max_bytes` of keys and values (at
/// least one entry).
#[derive(Debug, Clone)]
pub struct StatePage {
    /// Keys starting with this.
    pub prefix: String,
    /// Keys after this one.
    pub after: Option<String>,
    /// How many at most.
    pub limit: usize,
    /// About how many bytes of keys and values at most.
    pub max_bytes: usize,
}

/// A cloneable handle to the volumes. State operations are linearizable and
/// durable when they return; see the module docs for the semantics.
#[derive(Clone)]
pub struct Volumes {
    open: Arc<OpenVolumes>,
    shared: Arc<VolumeShared>,
}

impl std::fmt::Debug for Volumes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volumes")
            .field("root", &self.shared.root)
            .finish_non_exhaustive()
    }
}

impl Volumes {
    pub(crate) fn new(
        shared: Arc<VolumeShared>,
        root: ractor::ActorRef<crate::supervisor::RootSupervisorMsg>,
        policy: crate::supervisor::RestartPolicy,
    ) -> Volumes {
        Volumes {
            open: OpenVolumes::new(shared.clone(), root, policy),
            shared,
        }
    }

    /// The open volumes (their actors, restarts, fault injection).
    pub(crate) fn open_volumes(&self) -> &OpenVolumes {
        &self.open
    }

    /// The host directory of a volume's files (what functions mounting it see).
    pub fn files_dir(&self, volume: &str) -> PathBuf {
        self.shared.files_dir(volume)
    }

    /// Whether volume `name` exists. Reads of a volume that does not exist
    /// find nothing and create nothing.
    pub fn exists(&self, name: &str) -> bool {
        self.shared.exists(name)
    }

    /// The names of all volumes on disk.
    pub fn list_volumes(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.shared.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Creates a volume if it does not exist (Modal's `create_if_missing`).
    pub async fn create(&self, volume: &str) -> Result<(), VolumeError> {
        validate_object_name("volume_name", volume)?;
        let root = self.shared.root.join(volume);
        blocking(volume, move || {
            crate::persist::private_dir(&root.join("state"))?;
            crate::persist::private_dir(&root.join("files"))
        })
        .await
    }

    /// A key's value and version, `None` if absent.
    pub async fn read(&self, volume: &str, key: &str) -> Result<Option<Versioned>, VolumeError> {
        validate_object_name("volume_name", volume)?;
        check_key(key)?;
        if !self.shared.exists(volume) {
            return Ok(None);
        }
        let lease = self.open.lease(volume).await?;
        lease
            .slot()
            .call(STATE_TIMEOUT, |reply| {
                VolumeMsg::Read(key.to_owned(), reply)
            })
            .await?
    }

    /// Keys starting with `prefix`, sorted, with values and versions.
    pub async fn list(
        &self,
        volume: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Versioned)>, VolumeError> {
        let page = StatePage {
            prefix: prefix.to_owned(),
            after: None,
            limit: usize::MAX,
            max_bytes: usize::MAX,
        };
        Ok(self.list_page(volume, page).await?.0)
    }

    /// The keys (and values) `page` asks for, in key order, and whether
    /// more follow (the next page starts after the last key of this one).
    pub async fn list_page(
        &self,
        volume: &str,
        page: StatePage,
    ) -> Result<(Vec<(String, Versioned)>, bool), VolumeError> {
        validate_object_name("volume_name", volume)?;
        if !self.shared.exists(volume) {
            return Ok((Vec::new(), false));
        }
        let lease = self.open.lease(volume).await?;
        lease
            .slot()
            .call(STATE_TIMEOUT, |reply| VolumeMsg::List(page.clone(), reply))
            .await?
    }

    async fn write_inner(
        &self,
        volume: &str,
        key: &str,
        value: Option<Value>,
        expected: Option<Option<u64>>,
    ) -> Result<u64, VolumeError> {
        validate_object_name("volume_name", volume)?;
        check_key(key)?;
        if let Some(v) = &value {
            check_value(key, v)?;
        }
        let start_by = tokio::time::Instant::now() + STATE_TIMEOUT;
        let lease = self.open.lease(volume).await?;
        // A write queued for an actor that failed never ran: it is sent to
        // the restarted actor (a failure is a panic between writes; a
        // compare-and-swap sent again finds its own version if it had).
        lease
            .slot()
            .call(WRITE_ANSWER_TIMEOUT, |reply| VolumeMsg::Write {
                key: key.to_owned(),
                value: value.clone(),
                expected,
                start_by,
                reply,
            })
            .await?
    }

    /// Writes a value; returns its new version.
    pub async fn write(&self, volume: &str, key: &str, value: Value) -> Result<u64, VolumeError> {
        self.write_inner(volume, key, Some(value), None).await
    }

    /// Writes only if the key's version is `expected` (`None`: the key must be
    /// absent); returns the new version or [`VolumeError::Conflict`].
    pub async fn compare_and_swap(
        &self,
        volume: &str,
        key: &str,
        expected: Option<u64>,
        value: Value,
    ) -> Result<u64, VolumeError> {
        self.write_inner(volume, key, Some(value), Some(expected))
            .await
    }

    /// Deletes a key; returns the deletion's version (0 if it was absent).
    pub async fn delete(&self, volume: &str, key: &str) -> Result<u64, VolumeError> {
        self.write_inner(volume, key, None, None).await
    }

    /// Deletes a key only if its version is `expected`.
    pub async fn delete_if(
        &self,
        volume: &str,
        key: &str,
        expected: u64,
    ) -> Result<u64, VolumeError> {
        self.write_inner(volume, key, None, Some(Some(expected)))
            .await
    }

    /// Read-modify-write with retries on conflict: `update` gets the current
    /// value (if any) and returns the new one. Returns the value written and
    /// its version.
    pub async fn update<F>(
        &self,
        volume: &str,
        key: &str,
        mut update: F,
    ) -> Result<Versioned, VolumeError>
    where
        F: FnMut(Option<&Value>) -> Value,
    {
        loop {
            let current = self.read(volume, key).await?;
            let next = update(current.as_ref().map(|c| &c.value));
            let expected = current.map(|c| c.version);
            match self
                .compare_and_swap(volume, key, expected, next.clone())
                .await
            {
                Ok(version) => {
                    return Ok(Versioned {
                        value: next,
                        version,
                    })
                }
                Err(VolumeError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Subscribes to every change whose key or path starts with `prefix`.
    pub fn watch(
        &self,
        volume: &str,
        prefix: &str,
    ) -> Result<mpsc::UnboundedReceiver<VolumeEvent>, VolumeError> {
        validate_object_name("volume_name", volume)?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared.subscribers.lock().recover().push(Subscriber {
            volume: volume.to_owned(),
            prefix: prefix.to_owned(),
            tx,
        });
        Ok(rx)
    }

    /// Writes a file atomically.
    pub async fn put_file(
        &self,
        volume: &str,
        path: &str,
        bytes: impl Into<Vec<u8>>,
    ) -> Result<FileStat, VolumeError> {
        validate_object_name("volume_name", volume)?;
        files::resolve(&self.files_dir(volume), path)?;
        let bytes: Arc<Vec<u8>> = Arc::new(bytes.into());
        if bytes.len() > MAX_FILE_BYTES {
            return Err(VolumeError::TooLarge {
                what: format!("file {path:?}"),
                size: bytes.len(),
                limit: MAX_FILE_BYTES,
            });
        }
        let start_by = tokio::time::Instant::now() + FILE_TIMEOUT;
        let lease = self.open.lease(volume).await?;
        lease
            .slot()
            .call(WRITE_ANSWER_TIMEOUT, |reply| {
                VolumeMsg::PutFile(path.to_owned(), bytes.clone(), start_by, reply)
            })
            .await?
    }

    fn target(&self, volume: &str, path: &str) -> Result<PathBuf, VolumeError> {
        validate_object_name("volume_name", volume)?;
        files::resolve(&self.files_dir(volume), path)
    }

    /// Reads a file. Links in the volume are never followed: a link (or a
    /// path through one) reads as no file.
    pub async fn get_file(&self, volume: &str, path: &str) -> Result<Vec<u8>, VolumeError> {
        self.target(volume, path)?;
        let (root, rel) = (self.files_dir(volume), path.to_owned());
        let read = tokio::task::spawn_blocking(move || beneath::Root::existing(&root)?.read(&rel))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        match read {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(VolumeError::NoSuchFile {
                volume: volume.to_owned(),
                path: path.to_owned(),
            }),
            Err(source) => Err(VolumeError::Io {
                volume: volume.to_owned(),
                source,
            }),
        }
    }

    /// Opens a file to stream it, with its size. Links in the volume are
    /// never followed, as for [`Volumes::get_file`].
    pub async fn open_file(
        &self,
        volume: &str,
        path: &str,
    ) -> Result<(tokio::fs::File, u64), VolumeError> {
        self.target(volume, path)?;
        let (root, rel) = (self.files_dir(volume), path.to_owned());
        let opened =
            tokio::task::spawn_blocking(move || beneath::Root::existing(&root)?.open_file(&rel))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
        match opened {
            Ok((file, size)) => Ok((tokio::fs::File::from_std(file), size)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(VolumeError::NoSuchFile {
                volume: volume.to_owned(),
                path: path.to_owned(),
            }),
            Err(source) => Err(VolumeError::Io {
                volume: volume.to_owned(),
                source,
            }),
        }
    }

    /// A file's metadata, `None` if it does not exist.
    pub async fn stat_file(
        &self,
        volume: &str,
        path: &str,
    ) -> Result<Option<FileStat>, VolumeError> {
        self.target(volume, path)?;
        let (root, rel) = (self.files_dir(volume), path.to_owned());
        blocking(volume, move || match beneath::Root::existing(&root) {
            Ok(r) => r.stat(&rel),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    /// Files whose path starts with `prefix`, sorted: every one (for the
    /// runtime's own use; a caller's listing is [`Volumes::list_files_page`]).
    pub async fn list_files(
        &self,
        volume: &str,
        prefix: &str,
    ) -> Result<Vec<FileStat>, VolumeError> {
        Ok(self
            .list_files_page(volume, prefix, None, usize::MAX)
            .await?
            .0)
    }

    /// At most `limit` files whose path starts with `prefix` and sorts after
    /// `after`, sorted, and whether more follow (the next page starts after
    /// the last path of this one).
    pub async fn list_files_page(
        &self,
        volume: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<FileStat>, bool), VolumeError> {
        validate_object_name("volume_name", volume)?;
        let root = self.files_dir(volume);
        let (prefix, after) = (prefix.to_owned(), after.map(str::to_owned));
        blocking(volume, move || match beneath::Root::existing(&root) {
            Ok(r) => r.list(&prefix, after.as_deref(), limit),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Vec::new(), false)),
            Err(e) => Err(e),
        })
        .await
    }

    /// Deletes a file; returns whether it existed.
    pub async fn delete_file(&self, volume: &str, path: &str) -> Result<bool, VolumeError> {
        self.target(volume, path)?;
        let start_by = tokio::time::Instant::now() + FILE_TIMEOUT;
        let lease = self.open.lease(volume).await?;
        lease
            .slot()
            .call(WRITE_ANSWER_TIMEOUT, |reply| {
                VolumeMsg::DeleteFile(path.to_owned(), start_by, reply)
            })
            .await?
    }

    /// The volume root of the store, `DATA_DIR/volumes`.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }
}

async fn blocking<T: Send + 'static>(
    volume: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, VolumeError> {
    let io = |source| VolumeError::Io {
        volume: volume.to_owned(),
        source,
    };
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io(std::io::Error::other(e)))?
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::{RestartPolicy, RootSupervisor, RootSupervisorArgs};
    use ractor::Actor;

    /// A huge key or path is echoed by its first bytes, so what is accepted
    /// is still said (a 1 MiB key made an 8 KiB answer of its bytes, the
    /// rest of the message cut off).
    #[test]
    fn a_huge_key_or_path_is_echoed_short() {
        let huge = "A".repeat(1 << 20);
        let e = check_key(&huge).unwrap_err().to_string();
        assert!(
            e.len() < 400 && e.ends_with("without control characters"),
            "{e}"
        );
        let e = files::resolve(Path::new("/v"), &huge)
            .unwrap_err()
            .to_string();
        assert!(
            e.len() < 400 && e.ends_with("expected 1 to 1024 bytes"),
            "{e}"
        );
    }

    async fn volumes(dir: &Path) -> Volumes {
        let (root, _) = Actor::spawn(
            None,
            RootSupervisor,
            RootSupervisorArgs {
                children: Vec::new(),
                policy: RestartPolicy::default(),
            },
        )
        .await
        .unwrap();
        Volumes::new(
            VolumeShared::new(dir.to_path_buf()),
            root,
            RestartPolicy::default(),
        )
    }

    /// A write a volume dequeues after its start deadline is refused and
    /// never applied, so a caller told "busy" can trust it was not.
    #[tokio::test]
    async fn a_write_started_too_late_is_refused_unapplied() {
        let dir = tempfile::tempdir().unwrap();
        let volumes = volumes(dir.path()).await;
        volumes.create("v").await.unwrap();
        let lease = volumes.open.lease("v").await.unwrap();
        let late = tokio::time::Instant::now() - Duration::from_secs(1);
        let answer = lease
            .slot()
            .call_once(Duration::from_secs(5), |reply| VolumeMsg::Write {
                key: "k".into(),
                value: Some(serde_json::json!(1)),
                expected: None,
                start_by: late,
                reply,
            })
            .await
            .unwrap();
        assert!(
            matches!(answer, Err(VolumeError::Busy { .. })),
            "{answer:?}"
        );
        let answer = lease
            .slot()
            .call_once(Duration::from_secs(5), |reply| {
                VolumeMsg::PutFile("f".into(), Arc::new(b"x".to_vec()), late, reply)
            })
            .await
            .unwrap();
        assert!(
            matches!(answer, Err(VolumeError::Busy { .. })),
            "{answer:?}"
        );
        drop(lease);
        assert_eq!(volumes.read("v", "k").await.unwrap(), None);
        assert!(volumes.get_file("v", "f").await.is_err());
        // In time, it is applied.
        assert_eq!(
            volumes.write("v", "k", serde_json::json!(2)).await.unwrap(),
            1
        );
    }

    /// Past the most open volumes, the least recently used is closed (after
    /// what was queued for it) and reopened from its log when used again:
    /// nothing written is lost, and the open count stays bounded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_least_recently_used_volume_is_closed_and_reopened_whole() {
        let dir = tempfile::tempdir().unwrap();
        let volumes = volumes(dir.path()).await;
        let n = open::MAX_OPEN + 40;
        for i in 0..n {
            volumes
                .write(&format!("v{i}"), "k", serde_json::json!(i))
                .await
                .unwrap();
            // The first volume stays in use: never the one closed.
            volumes.read("v0", "k").await.unwrap();
        }
        assert!(volumes.open.open_count() <= open::MAX_OPEN);
        for i in 0..n {
            let got = volumes.read(&format!("v{i}"), "k").await.unwrap().unwrap();
            assert_eq!((got.value, got.version), (serde_json::json!(i), 1), "v{i}");
        }
        // A reopened volume goes on with its versions.
        assert_eq!(
            volumes
                .write("v1", "k", serde_json::json!("again"))
                .await
                .unwrap(),
            2
        );
    }

    /// A volume's actor that panics is restarted from its log; the others
    /// never notice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_volume_is_restarted_from_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let volumes = volumes(dir.path()).await;
        volumes.write("a", "k", serde_json::json!(1)).await.unwrap();
        volumes.write("b", "k", serde_json::json!(2)).await.unwrap();
        volumes.open.inject_panics();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while volumes.open.restarts() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "not restarted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            volumes.read("a", "k").await.unwrap().unwrap().value,
            serde_json::json!(1)
        );
        assert_eq!(
            volumes
                .compare_and_swap("b", "k", Some(1), serde_json::json!(3))
                .await
                .unwrap(),
            2
        );
    }
}
