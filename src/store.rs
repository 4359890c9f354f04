//! The runtime's embedded redb database at `DATA_DIR/state.redb` (file mode
//! 0600): deployed functions, secrets, webhook registrations with their
//! delivery attempts, and finished idempotency keys with their answers.
//!
//! Task records and the jobs of unfinished tasks are not here: they are the
//! task journal (`DATA_DIR/tasks.journal`, see `tracker::journal`), and a
//! task's inputs, results and logs are files under `DATA_DIR/tasks/ID`. The
//! data dir's whole layout is in `persist`'s module docs.

use std::path::Path;

use crate::sync::Recover;
use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

const FUNCTIONS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("functions");
const SECRETS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("secrets");
const WEBHOOKS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("webhooks");
const REPLAYS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("replays");

/// Why the durable state failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("state database: {0}")]
    Db(Box<redb::Error>),
    /// A stored value does not decode.
    #[error("state database holds a bad {what}: {error}")]
    Decode {
        /// What was read.
        what: &'static str,
        /// The decoder's message.
        error: String,
    },
    /// Another runtime (a process) has the database open.
    #[error("the state database is open in another runtime")]
    InUse,
    /// The database file could not be prepared.
    #[error("state database file: {0}")]
    Io(#[from] std::io::Error),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(e.into()))
            }
        }
    )*};
}
db_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// One change to write.
pub(crate) enum Write {
    Put(Table, String, Vec<u8>),
    Delete(Table, String),
}

/// The tables.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Table {
    Functions,
    Secrets,
    Webhooks,
    /// Finished idempotency keys and their answers (`commands::replay`).
    Replays,
}

impl Table {
    fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Table::Functions => FUNCTIONS,
            Table::Secrets => SECRETS,
            Table::Webhooks => WEBHOOKS,
            Table::Replays => REPLAYS,
        }
    }
}

/// The database; closed at shutdown so another runtime can open the data dir.
pub(crate) struct Store {
    db: std::sync::RwLock<Option<Database>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Opens (or creates) the database; only this process may use it.
    pub(crate) fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse,
            e => e.into(),
        })?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        let txn = db.begin_write()?;
        for table in [FUNCTIONS, SECRETS, WEBHOOKS, REPLAYS] {
            txn.open_table(table)?;
        }
        txn.commit()?;
        Ok(Store {
            db: std::sync::RwLock::new(Some(db)),
        })
    }

    /// Closes the database; later writes fail.
    pub(crate) fn close(&self) {
        self.db.write().recover().take();
    }

    fn closed() -> StoreError {
        StoreError::Io(std::io::Error::other(
            "the state database is closed (runtime shut down)",
        ))
    }

    /// Applies writes in one transaction, fsynced before it returns.
    pub(crate) fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.apply_with(writes, redb::Durability::Immediate)
    }

    fn apply_with(
        &self,
        writes: Vec<Write>,
        durability: redb::Durability,
    ) -> Result<(), StoreError> {
        if writes.is_empty() && !matches!(durability, redb::Durability::Immediate) {
            return Ok(());
        }
        let guard = self.db.read().recover();
        let db = guard.as_ref().ok_or_else(Store::closed)?;
        let mut txn = db.begin_write()?;
        txn.set_durability(durability);
        for w in writes {
            match w {
                Write::Put(t, k, v) => {
                    txn.open_table(t.def())?.insert(k.as_str(), v.as_slice())?;
                }
                Write::Delete(t, k) => {
                    txn.open_table(t.def())?.remove(k.as_str())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Every entry of a table, decoded.
    pub(crate) fn all<T: DeserializeOwned>(
        &self,
        table: Table,
        what: &'static str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let guard = self.db.read().recover();
        let db = guard.as_ref().ok_or_else(Store::closed)?;
        let txn = db.begin_read()?;
        let t = txn.open_table(table.def())?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let value = serde_json::from_slice(v.value()).map_err(|e| StoreError::Decode {
                what,
                error: e.to_string(),
            })?;
            out.push((k.value().to_owned(), value));
        }
        Ok(out)
    }
}

/// A put of `value` as JSON.
pub(crate) fn put(table: Table, key: impl Into<String>, value: &impl Serialize) -> Write {
    Write::Put(
        table,
        key.into(),
        serde_json::to_vec(value).expect("state serializes"),
    )
}
