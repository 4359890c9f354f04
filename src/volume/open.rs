//! The open volumes: one [`VolumeActor`] per volume in use, each a child
//! of the runtime's supervisor (keyed `volume/NAME#N`) with its own restart
//! budget. At most [`MAX_OPEN`] are open; past that the least recently used
//! one that no call is using is closed after what is queued for it, and a
//! volume being closed is opened again only once it is gone, so two actors
//! never write one volume.

use crate::sync::Recover;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ractor::ActorRef;
use tokio::sync::watch;

use super::actor::{VolumeActor, VolumeArgs, VolumeMsg};
use super::{VolumeError, VolumeShared};
use crate::supervisor::{
    ChildEvent, ChildEvents, ChildRunner, RestartPolicy, RootSupervisorMsg, Slot,
};

/// Most volumes open at once.
pub(crate) const MAX_OPEN: usize = 256;

/// How long an open waits for the same volume's previous actor to close.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// One open volume.
struct Entry {
    key: Arc<str>,
    slot: Slot<VolumeMsg>,
    last_used: AtomicU64,
    /// Calls holding a [`Lease`] on it now.
    users: AtomicUsize,
    /// Becomes true once its actor is gone (closed, or given up on).
    gone: watch::Sender<bool>,
}

#[derive(Default)]
struct Table {
    open: HashMap<String, Arc<Entry>>,
    /// Volumes whose actor is closing, until it is gone.
    closing: HashMap<String, watch::Receiver<bool>>,
    tick: u64,
}

/// The open volumes and how they are supervised.
pub(crate) struct OpenVolumes {
    shared: Arc<VolumeShared>,
    root: ActorRef<RootSupervisorMsg>,
    policy: RestartPolicy,
    table: Mutex<Table>,
    /// Restarts of volume actors so far.
    restarts: AtomicU64,
    /// Opens so far (each actor's key is unique).
    opened: AtomicU64,
    me: Weak<OpenVolumes>,
}

/// What [`OpenVolumes::find_or_make`] found.
enum Found {
    Open(Lease),
    Closing(watch::Receiver<bool>),
    New(Arc<Entry>, ChildRunner<VolumeActor>),
}

/// A call's hold on an open volume: it is not closed while held.
pub(crate) struct Lease {
    entry: Arc<Entry>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.entry.users.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Lease {
    pub(crate) fn slot(&self) -> &Slot<VolumeMsg> {
        &self.entry.slot
    }
}

impl OpenVolumes {
    pub(crate) fn new(
        shared: Arc<VolumeShared>,
        root: ActorRef<RootSupervisorMsg>,
        policy: RestartPolicy,
    ) -> Arc<OpenVolumes> {
        Arc::new_cyclic(|me| OpenVolumes {
            shared,
            root,
            policy,
            table: Mutex::default(),
            restarts: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            me: me.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().recover()
    }

    /// Restarts of volume actors so far.
    pub(crate) fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// How many volumes are open.
    #[cfg(test)]
    pub(crate) fn open_count(&self) -> usize {
        self.lock().open.len()
    }

    /// Makes every open volume's actor panic (fault injection).
    pub(crate) fn inject_panics(&self) {
        for entry in self.lock().open.values() {
            entry.slot.cast(VolumeMsg::InjectPanic);
        }
    }

    /// The open volume `name`, opening it (and closing the least recently
    /// used idle one past [`MAX_OPEN`]) when needed.
    pub(crate) async fn lease(&self, name: &str) -> Result<Lease, VolumeError> {
        loop {
            let (entry, spec) = match self.find_or_make(name) {
                Found::Open(lease) => return Ok(lease),
                Found::Closing(mut gone) => {
                    let closed = gone.wait_for(|g| *g);
                    if tokio::time::timeout(CLOSE_WAIT, closed).await.is_err() {
                        return Err(VolumeError::Busy {
                            waited_s: CLOSE_WAIT.as_secs(),
                        });
                    }
                    continue;
                }
                Found::New(entry, spec) => (entry, spec),
            };
            let lease = Lease {
                entry: entry.clone(),
            };
            let events = self.events(name, entry.clone());
            let added = crate::supervisor::supervise(
                &self.root,
                entry.key.clone(),
                Box::new(spec),
                self.policy,
                events,
            )
            .await;
            if let Err(e) = added {
                self.forget(name, &entry);
                return Err(VolumeError::Unavailable(match e {
                    crate::supervisor::SuperviseError::Down(e) => e,
                    other => {
                        crate::supervisor::ChildError::Down(format!("volume `{name}` ({other:?})"))
                    }
                }));
            }
            return Ok(lease);
        }
    }

    /// Under the table's lock: the open volume, the close to wait for, or
    /// a new entry (inserted, held) whose actor the caller starts.
    fn find_or_make(&self, name: &str) -> Found {
        let mut table = self.lock();
        table.tick += 1;
        let tick = table.tick;
        if let Some(entry) = table.open.get(name) {
            entry.users.fetch_add(1, Ordering::AcqRel);
            entry.last_used.store(tick, Ordering::Relaxed);
            return Found::Open(Lease {
                entry: entry.clone(),
            });
        }
        if let Some(gone) = table.closing.get(name) {
            return Found::Closing(gone.clone());
        }
        if table.open.len() >= MAX_OPEN {
            self.evict_one(&mut table);
        }
        let n = self.opened.fetch_add(1, Ordering::Relaxed);
        let key: Arc<str> = format!("volume/{name}#{n}").into();
        let (slot, publish) = Slot::new(format!("volume `{name}`"));
        let entry = Arc::new(Entry {
            key,
            slot,
            last_used: AtomicU64::new(tick),
            users: AtomicUsize::new(1),
            gone: watch::channel(false).0,
        });
        table.open.insert(name.to_owned(), entry.clone());
        let spec = ChildRunner {
            make: || VolumeActor,
            args: VolumeArgs {
                name: name.to_owned(),
                shared: self.shared.clone(),
            },
            publish,
            panic_msg: || VolumeMsg::InjectPanic,
        };
        Found::New(entry, spec)
    }

    /// Closes the least recently used open volume no call holds, after
    /// what is queued for it.
    fn evict_one(&self, table: &mut Table) {
        let victim = table
            .open
            .iter()
            .filter(|(_, e)| e.users.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
            .map(|(name, _)| name.clone());
        if let Some(name) = victim {
            let entry = table.open.remove(&name).expect("found above");
            table.closing.insert(name, entry.gone.subscribe());
            entry.slot.cast(VolumeMsg::Close);
        }
    }

    /// Drops `entry` from the table (its actor is gone).
    fn forget(&self, name: &str, entry: &Arc<Entry>) {
        let mut table = self.lock();
        if table.open.get(name).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            table.open.remove(name);
        }
        if table
            .closing
            .get(name)
            .is_some_and(|gone| gone.same_channel(&entry.gone.subscribe()))
        {
            table.closing.remove(name);
        }
        drop(table);
        entry.gone.send_replace(true);
    }

    /// What the supervisor tells of a volume actor.
    fn events(&self, name: &str, entry: Arc<Entry>) -> ChildEvents {
        let (me, name) = (self.me.clone(), name.to_owned());
        Arc::new(move |event| {
            let Some(me) = me.upgrade() else { return };
            match event {
                ChildEvent::Restarted { .. } => {
                    me.restarts.fetch_add(1, Ordering::Relaxed);
                }
                ChildEvent::GaveUp { .. } | ChildEvent::Stopped { .. } => {
                    me.forget(&name, &entry);
                }
            }
        })
    }
}
