//! Named sets of secret key/values that functions receive as environment
//! variables.
//!
//! At rest they are in `state.redb` (mode 0600), sealed with
//! ChaCha20-Poly1305 when the runtime is given a [`SecretsKey`]
//! (`MODAL_AGENTS_SECRETS_KEY`); see [`SecretsKey`] for rotation. In memory
//! and in a function's environment they are plain; every output a caller
//! can read passes through the [`Redactor`](crate::redact::Redactor).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use dashmap::DashMap;

use crate::spec::{validate_object_name, SpecError};

mod sealed;

pub use sealed::{KeyError, SecretsKey};

/// Largest value of one secret key (a PEM private key is about 3 KiB).
pub const MAX_SECRET_VALUE_BYTES: usize = 16 << 10;
/// Largest secret, its keys and values together.
pub const MAX_SECRET_BYTES: usize = 64 << 10;
/// Largest size of all secrets together (each value is looked for in every
/// output a function produces).
pub const MAX_ALL_SECRETS_BYTES: usize = 1 << 20;

/// Why a secret could not be stored or resolved.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SecretError {
    /// The secret's name is not acceptable.
    #[error(transparent)]
    Name(#[from] SpecError),
    /// A key is not a valid environment variable name.
    #[error("invalid key {key:?} in secret `{secret}`: expected an environment variable name ([A-Za-z_][A-Za-z0-9_]*, at most 256 characters)")]
    Key {
        /// The secret.
        secret: String,
        /// The bad key.
        key: String,
    },
    /// A value holds a NUL byte, which no environment variable can carry.
    #[error("the value of {key:?} in secret `{secret}` contains a NUL byte")]
    Value {
        /// The secret.
        secret: String,
        /// The key whose value is bad.
        key: String,
    },
    /// A value, or the values of one secret together, past the size
    /// secrets may have (every value is searched for in every output).
    #[error("secret `{secret}` is too large: {what} is {size} bytes; at most {max} bytes are accepted (a secret is a key or a token; put data in a volume)")]
    TooLarge {
        /// The secret.
        secret: String,
        /// Which part: a key's value, or all of them.
        what: String,
        /// Its size.
        size: usize,
        /// The most accepted.
        max: usize,
    },
    /// The runtime's database could not store the change; nothing changed.
    #[error("secret `{secret}` could not be stored, so it was not changed: {cause}")]
    Storage {
        /// The secret.
        secret: String,
        /// Why the database refused.
        cause: String,
    },
    /// The key secrets are sealed with at rest is malformed, or missing
    /// for a secret stored sealed.
    #[error(transparent)]
    SealKey(#[from] KeyError),
    /// Deployed functions use the secret: removing it would leave them
    /// unable to start (and unable to come back at the next start).
    #[error("secret `{secret}` is used by deployed {}: {}; undeploy {} or deploy {} without it first", if .functions.len() == 1 { "function" } else { "functions" }, .functions.join(", "), if .functions.len() == 1 { "it" } else { "them" }, if .functions.len() == 1 { "it" } else { "them" })]
    InUse {
        /// The secret.
        secret: String,
        /// The functions that use it.
        functions: Vec<String>,
    },
    /// A function asks for a secret the store does not have.
    #[error("unknown secret `{name}` (known secrets: {})", if .known.is_empty() { "none".to_owned() } else { .known.join(", ") })]
    Unknown {
        /// The missing secret.
        name: String,
        /// The secrets the store has.
        known: Vec<String>,
    },
}

/// Why the secrets could not be taken from the database at start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttachError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A stored secret does not open with the keys given.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The runtime's secrets: named key/value sets. Values are never logged,
/// never returned by listings and never written into task records.
///
/// Cloning is cheap and every clone sees the same secrets.
#[derive(Clone, Default)]
pub struct SecretStore {
    inner: Arc<DashMap<String, BTreeMap<String, String>>>,
    /// The database secrets are kept in, and the key they are sealed with
    /// there.
    store: Arc<std::sync::OnceLock<(Arc<crate::store::Store>, SecretsKey)>>,
    /// Bumped at every change, so a [`Redactor`](crate::redact::Redactor)
    /// knows when to look at the values again.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStore")
            .field("names", &self.names())
            .finish_non_exhaustive()
    }
}

impl SecretStore {
    /// An empty store.
    pub fn new() -> SecretStore {
        SecretStore::default()
    }

    /// Stores (or replaces) secret `name` with the given key/values: at most
    /// [`MAX_SECRET_VALUE_BYTES`] a value and [`MAX_SECRET_BYTES`] in all.
    pub fn set<K, V>(
        &self,
        name: &str,
        values: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), SecretError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        validate_object_name("name", name)?;
        let mut map = BTreeMap::new();
        for (k, v) in values {
            let (key, value) = (k.into(), v.into());
            let valid_key = key.len() <= 256
                && key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_key {
                return Err(SecretError::Key {
                    secret: name.to_owned(),
                    key,
                });
            }
            if value.contains('\0') {
                return Err(SecretError::Value {
                    secret: name.to_owned(),
                    key,
                });
            }
            if value.len() > MAX_SECRET_VALUE_BYTES {
                return Err(SecretError::TooLarge {
                    secret: name.to_owned(),
                    what: format!("the value of {key:?}"),
                    size: value.len(),
                    max: MAX_SECRET_VALUE_BYTES,
                });
            }
            map.insert(key, value);
        }
        let total: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
        if total > MAX_SECRET_BYTES {
            return Err(SecretError::TooLarge {
                secret: name.to_owned(),
                what: "all of its keys and values".into(),
                size: total,
                max: MAX_SECRET_BYTES,
            });
        }
        let others: usize = self
            .inner
            .iter()
            .filter(|e| e.key() != name)
            .map(|e| {
                e.value()
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
            })
            .sum();
        if others + total > MAX_ALL_SECRETS_BYTES {
            return Err(SecretError::TooLarge {
                secret: name.to_owned(),
                what: format!(
                    "with the other secrets, all secrets ({} bytes)",
                    others + total
                ),
                size: others + total,
                max: MAX_ALL_SECRETS_BYTES,
            });
        }
        // On disk first: a change the database refused is not made at all.
        if let Some((_, key)) = self.store.get() {
            self.persist(
                name,
                crate::store::put(crate::store::Table::Secrets, name, &key.seal(name, &map)),
            )?;
        }
        self.inner.insert(name.to_owned(), map);
        self.changed();
        Ok(())
    }

    fn changed(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// How many changes the store has seen.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn persist(&self, name: &str, write: crate::store::Write) -> Result<(), SecretError> {
        match self.store.get().map(|(store, _)| store.apply(vec![write])) {
            Some(Err(e)) => {
                tracing::error!(secret = name, error = %e, "could not store a secret");
                Err(SecretError::Storage {
                    secret: name.to_owned(),
                    cause: e.to_string(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Keeps secrets in the runtime's database from now on, sealed with
    /// `key` when it has a current key: loads what it holds (opening what
    /// was sealed, with the current or a previous key), stores what was set
    /// before, and writes again every stored secret not sealed with the
    /// current key (rotation, or a first key).
    pub(crate) fn attach(
        &self,
        store: Arc<crate::store::Store>,
        key: SecretsKey,
    ) -> Result<(), AttachError> {
        use crate::store::{put, Table};
        let saved: Vec<(String, serde_json::Value)> = store.all(Table::Secrets, "secret")?;
        let mut writes = Vec::new();
        let mut opened = Vec::new();
        for (name, stored) in saved {
            let (stored_with, values) = match key.open(&name, stored)? {
                sealed::Stored::Plain(v) => (None, v),
                sealed::Stored::Sealed(id, v) => (Some(id), v),
            };
            if key.reseal(stored_with.as_deref()) && !self.inner.contains_key(&name) {
                writes.push(put(Table::Secrets, name.clone(), &key.seal(&name, &values)));
            }
            opened.push((name, values));
        }
        for entry in self.inner.iter() {
            writes.push(put(
                Table::Secrets,
                entry.key().clone(),
                &key.seal(entry.key(), entry.value()),
            ));
        }
        store.apply(writes)?;
        for (name, values) in opened {
            self.inner.entry(name).or_insert(values);
        }
        self.changed();
        let _ = self.store.set((store, key));
        Ok(())
    }

    /// Every value of every secret, for redaction.
    pub(crate) fn values(&self) -> Vec<String> {
        self.inner
            .iter()
            .flat_map(|e| e.value().values().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Removes a secret; returns whether it existed. When the database
    /// refuses the removal the secret stays.
    pub fn remove(&self, name: &str) -> Result<bool, SecretError> {
        if !self.inner.contains_key(name) {
            return Ok(false);
        }
        self.persist(
            name,
            crate::store::Write::Delete(crate::store::Table::Secrets, name.to_owned()),
        )?;
        let removed = self.inner.remove(name).is_some();
        self.changed();
        Ok(removed)
    }

    /// The names of all secrets, sorted. Values are never listed.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.iter().map(|e| e.key().clone()).collect();
        names.sort();
        names
    }

    /// The keys of one secret, without values.
    pub fn keys(&self, name: &str) -> Option<Vec<String>> {
        self.inner.get(name).map(|m| m.keys().cloned().collect())
    }

    /// The environment for a function that declares `names`: every key of
    /// every named secret (later secrets win on a clash).
    pub(crate) fn resolve(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, String>, SecretError> {
        let mut env = BTreeMap::new();
        for name in names {
            let secret = self.inner.get(name).ok_or_else(|| SecretError::Unknown {
                name: name.clone(),
                known: self.names(),
            })?;
            env.extend(secret.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_resolve_and_list() {
        let store = SecretStore::new();
        store.set("api-keys", [("TOKEN", "s3cret")]).unwrap();
        store
            .set("db", [("DB_URL", "postgres://x"), ("TOKEN", "other")])
            .unwrap();
        assert_eq!(store.names(), ["api-keys", "db"]);
        let env = store.resolve(&["api-keys".into(), "db".into()]).unwrap();
        assert_eq!(env["TOKEN"], "other");
        assert_eq!(env["DB_URL"], "postgres://x");
        assert!(!format!("{store:?}").contains("s3cret"));
    }

    #[test]
    fn unknown_secret_lists_known_ones() {
        let store = SecretStore::new();
        store.set("a", [("K", "v")]).unwrap();
        let err = store.resolve(&["b".into()]).unwrap_err().to_string();
        assert!(
            err.contains("`b`") && err.contains("known secrets: a"),
            "{err}"
        );
    }

    #[test]
    fn bad_names_keys_and_values() {
        let store = SecretStore::new();
        assert!(matches!(
            store.set("bad name", [("K", "v")]),
            Err(SecretError::Name(_))
        ));
        let err = store.set("s", [("1KEY", "v")]).unwrap_err().to_string();
        assert!(
            err.contains("1KEY") && err.contains("environment variable"),
            "{err}"
        );
        assert!(matches!(
            store.set("s", [("K", "a\0b")]),
            Err(SecretError::Value { .. })
        ));
        assert!(store.names().is_empty());
    }

    /// A change the database refuses is an error and is not made: no 200
    /// for a secret that would be gone after a restart.
    #[test]
    fn a_refused_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Store::open(&dir.path().join("s.redb")).unwrap());
        let secrets = SecretStore::new();
        secrets
            .attach(store.clone(), SecretsKey::default())
            .unwrap();
        secrets.set("keys", [("A", "one")]).unwrap();
        store.close();
        let err = secrets.set("keys", [("A", "two")]).unwrap_err();
        assert!(matches!(err, SecretError::Storage { .. }), "{err:?}");
        assert_eq!(secrets.resolve(&["keys".to_owned()]).unwrap()["A"], "one");
        let err = secrets.remove("keys").unwrap_err();
        assert!(matches!(err, SecretError::Storage { .. }), "{err:?}");
        assert_eq!(secrets.names(), ["keys"]);
        assert!(!secrets.remove("absent").unwrap());
    }
}
