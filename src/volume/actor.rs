//! One open volume: the actor that is the single writer of its state log
//! and its files. Messages are handled one at a time, so versions are
//! linearizable; what touches the disk (the log's replay at open, each
//! fsynced commit, each file write or delete) runs on the blocking pool,
//! never on the runtime's worker threads, so a slow volume holds up only
//! its own callers.

use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::Value;

use tokio::time::Instant;

use super::state::VolumeState;
use super::Versioned;
use super::{beneath, file_error, files, FileStat, VolumeChange, VolumeError, VolumeShared};
use crate::sync::Recover;

/// A page of keys and their values, and whether more follow.
pub(crate) type KeyPage = (Vec<(String, Versioned)>, bool);

/// Messages of a [`VolumeActor`].
pub(crate) enum VolumeMsg {
    Read(String, RpcReplyPort<Result<Option<Versioned>, VolumeError>>),
    List(super::StatePage, RpcReplyPort<Result<KeyPage, VolumeError>>),
    /// Writes when the expected version matches (`None` in the outer option:
    /// unconditional; `Some(None)`: must be absent).
    /// A write not started by `start_by` is refused unapplied
    /// ([`VolumeError::Busy`]), so a caller's answer is always the true
    /// outcome.
    Write {
        key: String,
        value: Option<Value>,
        expected: Option<Option<u64>>,
        start_by: Instant,
        reply: RpcReplyPort<Result<u64, VolumeError>>,
    },
    PutFile(
        String,
        Arc<Vec<u8>>,
        Instant,
        RpcReplyPort<Result<FileStat, VolumeError>>,
    ),
    DeleteFile(String, Instant, RpcReplyPort<Result<bool, VolumeError>>),
    /// Stops after what is queued before it (eviction of an idle volume).
    Close,
    /// Panics (fault injection).
    InjectPanic,
}

/// Whether a write's start deadline has passed.
fn late(start_by: Instant) -> bool {
    Instant::now() > start_by
}

fn busy(waited: std::time::Duration) -> VolumeError {
    VolumeError::Busy {
        waited_s: waited.as_secs(),
    }
}

/// The actor of one open volume.
pub(crate) struct VolumeActor;

/// What a volume actor is (re)started from.
#[derive(Clone)]
pub(crate) struct VolumeArgs {
    pub(crate) name: String,
    pub(crate) shared: Arc<VolumeShared>,
}

/// A volume actor's state: its name, the shared store, and its state log
/// (behind a lock only so the blocking pool can hold it while it writes;
/// the actor's one-at-a-time handling is what orders writes).
pub(crate) struct Open {
    name: String,
    shared: Arc<VolumeShared>,
    state: Arc<Mutex<VolumeState>>,
}

impl Open {
    fn io(&self) -> impl Fn(std::io::Error) -> VolumeError + '_ {
        |source| VolumeError::Io {
            volume: self.name.clone(),
            source,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, VolumeState> {
        self.state.lock().recover()
    }

    fn read(&self, key: &str) -> Option<Versioned> {
        self.state().get(key).map(|(version, value)| Versioned {
            value: value.clone(),
            version,
        })
    }

    /// The page of live keys `page` asks for, and whether more follow.
    fn list(&self, page: &super::StatePage) -> (Vec<(String, Versioned)>, bool) {
        use std::ops::Bound;
        let prefix = page.prefix.as_str();
        let start = match &page.after {
            Some(after) if after.as_str() >= prefix => Bound::Excluded(after.clone()),
            _ => Bound::Included(prefix.to_owned()),
        };
        let state = self.state();
        let mut live = state
            .entries
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, e)| e.value.as_ref().map(|v| (k, v, e.version)));
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        for (key, value, version) in live.by_ref() {
            // At least one entry, then as many as fit.
            let size = key.len() + crate::value::json_size(value);
            if out.len() >= page.limit || (!out.is_empty() && bytes + size > page.max_bytes) {
                return (out, true);
            }
            bytes += size;
            out.push((
                key.clone(),
                Versioned {
                    value: value.clone(),
                    version,
                },
            ));
        }
        (out, false)
    }

    async fn write(
        &self,
        key: String,
        value: Option<Value>,
        expected: Option<Option<u64>>,
    ) -> Result<u64, VolumeError> {
        let current = self.state().live_version(&key);
        if let Some(expected) = expected {
            if expected != current {
                return Err(VolumeError::Conflict {
                    key,
                    expected,
                    current,
                });
            }
        }
        if value.is_none() && current.is_none() {
            return Ok(0);
        }
        let (state, k, v) = (self.state.clone(), key.clone(), value.clone());
        let version = tokio::task::spawn_blocking(move || state.lock().recover().commit(&k, v))
            .await
            .map_err(|e| (self.io())(std::io::Error::other(e)))?
            .map_err(self.io())?;
        let change = match value {
            Some(value) => VolumeChange::Put {
                key,
                version,
                value,
            },
            None => VolumeChange::Delete { key, version },
        };
        self.shared.announce(&self.name, change);
        Ok(version)
    }

    async fn put_file(&self, path: String, bytes: Arc<Vec<u8>>) -> Result<FileStat, VolumeError> {
        let root = self.shared.files_dir(&self.name);
        files::resolve(&root, &path)?;
        let rel = path.clone();
        let stat = tokio::task::spawn_blocking(move || {
            let root = beneath::Root::open(&root)?;
            root.write(&rel, &bytes)?;
            root.stat(&rel)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|e| file_error(&self.name, &path, e))?
        .ok_or_else(|| {
            file_error(
                &self.name,
                &path,
                std::io::Error::other("file vanished after write"),
            )
        })?;
        self.shared.announce(
            &self.name,
            VolumeChange::FilePut {
                path,
                size: stat.size,
            },
        );
        Ok(stat)
    }

    async fn delete_file(&self, path: String) -> Result<bool, VolumeError> {
        let root = self.shared.files_dir(&self.name);
        files::resolve(&root, &path)?;
        let rel = path.clone();
        let removed = tokio::task::spawn_blocking(move || beneath::Root::open(&root)?.remove(&rel))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| file_error(&self.name, &path, e))?;
        if removed {
            self.shared
                .announce(&self.name, VolumeChange::FileDelete { path });
        }
        Ok(removed)
    }
}

impl Actor for VolumeActor {
    type Msg = VolumeMsg;
    type State = Open;
    type Arguments = VolumeArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: VolumeArgs,
    ) -> Result<Open, ActorProcessingErr> {
        let dir = args.shared.root.join(&args.name).join("state");
        let files = args.shared.files_dir(&args.name);
        // Replaying a long log is disk work: off the runtime's threads.
        let state = tokio::task::spawn_blocking(move || {
            let state = VolumeState::open(&dir)?;
            crate::persist::private_dir(&files)?;
            Ok::<_, std::io::Error>(state)
        })
        .await??;
        Ok(Open {
            name: args.name,
            shared: args.shared,
            state: Arc::new(Mutex::new(state)),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: VolumeMsg,
        open: &mut Open,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            VolumeMsg::Read(key, reply) => {
                let _ = reply.send(Ok(open.read(&key)));
            }
            VolumeMsg::List(page, reply) => {
                let _ = reply.send(Ok(open.list(&page)));
            }
            VolumeMsg::Write {
                start_by, reply, ..
            } if late(start_by) => {
                let _ = reply.send(Err(busy(super::STATE_TIMEOUT)));
            }
            VolumeMsg::PutFile(.., start_by, reply) if late(start_by) => {
                let _ = reply.send(Err(busy(super::FILE_TIMEOUT)));
            }
            VolumeMsg::DeleteFile(_, start_by, reply) if late(start_by) => {
                let _ = reply.send(Err(busy(super::FILE_TIMEOUT)));
            }
            VolumeMsg::Write {
                key,
                value,
                expected,
                reply,
                ..
            } => {
                let _ = reply.send(open.write(key, value, expected).await);
            }
            VolumeMsg::PutFile(path, bytes, _, reply) => {
                let _ = reply.send(open.put_file(path, bytes).await);
            }
            VolumeMsg::DeleteFile(path, _, reply) => {
                let _ = reply.send(open.delete_file(path).await);
            }
            VolumeMsg::Close => myself.stop(Some("closed (idle, evicted)".into())),
            VolumeMsg::InjectPanic => panic!("fault injected into volume `{}`", open.name),
        }
        Ok(())
    }
}
