//! Secret values at rest, sealed with a key the operator holds
//! (`MODAL_AGENTS_SECRETS_KEY`).
//!
//! Without a key, a secret is stored as its JSON key/values in
//! `state.redb`, a file only the runtime's user can read (mode 0600). With
//! a key, each secret is sealed with ChaCha20-Poly1305 (ring's AEAD): a
//! fresh random nonce per write, the secret's name as associated data (a
//! sealed value moved to another name does not open), and the key's id
//! beside it so the right key is picked. What is stored is
//! `{"$sealed": {"key_id", "nonce", "data"}}`; `$` is never in a secret's
//! keys, so it cannot be mistaken for one.
//!
//! Rotation: start the runtime with the new key as
//! `MODAL_AGENTS_SECRETS_KEY` and the old one in
//! `MODAL_AGENTS_SECRETS_KEY_PREVIOUS` (several, comma-separated); every
//! secret is opened with the key it was sealed with and sealed again with
//! the new one before the runtime serves, after which the old key can be
//! dropped. A previous key alone (no current one) writes the secrets back
//! unsealed.

use std::collections::BTreeMap;

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// Why a key could not be taken, or a stored secret not opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A key is not 32 bytes in base64 or hex.
    #[error("{field}: expected 32 random bytes as base64 (44 characters) or hex (64 characters), got {len} characters (make one with: head -c 32 /dev/urandom | base64)")]
    Malformed {
        /// The variable or setting that held it.
        field: String,
        /// How long the value was.
        len: usize,
    },
    /// A stored secret is sealed with a key the runtime was not given.
    #[error("secret `{secret}` is sealed with key {key_id}, which the runtime was not given: set MODAL_AGENTS_SECRETS_KEY (or MODAL_AGENTS_SECRETS_KEY_PREVIOUS, when rotating) to that key")]
    Missing {
        /// The secret.
        secret: String,
        /// The id of the key it needs.
        key_id: String,
    },
    /// A stored secret does not open with the key its id names: it was
    /// changed, or moved from another name.
    #[error("secret `{secret}` does not open with key {key_id}: it was altered or moved")]
    Tampered {
        /// The secret.
        secret: String,
        /// The key's id.
        key_id: String,
    },
}

/// One 256-bit key and its id (the first 8 hex digits of its SHA-256).
#[derive(Clone)]
struct Key {
    id: String,
    key: std::sync::Arc<LessSafeKey>,
}

impl Key {
    fn parse(field: &str, raw: &str) -> Result<Key, KeyError> {
        let raw = raw.trim();
        let bytes = if raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&raw[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .ok()
        } else {
            base64::engine::general_purpose::STANDARD.decode(raw).ok()
        };
        let bytes = bytes
            .filter(|b| b.len() == 32)
            .ok_or_else(|| KeyError::Malformed {
                field: field.to_owned(),
                len: raw.len(),
            })?;
        let id = {
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(&bytes);
            digest[..4].iter().map(|b| format!("{b:02x}")).collect()
        };
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes).expect("32 bytes");
        Ok(Key {
            id,
            key: std::sync::Arc::new(LessSafeKey::new(unbound)),
        })
    }
}

/// The keys secrets are sealed with at rest: the one new writes use (if
/// any) and older ones that still open what they sealed. See the module
/// docs for rotation.
#[derive(Clone, Default)]
pub struct SecretsKey {
    current: Option<Key>,
    previous: Vec<Key>,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsKey")
            .field("current", &self.current.as_ref().map(|k| &k.id))
            .field(
                "previous",
                &self.previous.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A sealed secret as stored.
#[derive(Serialize, Deserialize)]
struct Envelope {
    #[serde(rename = "$sealed")]
    sealed: Sealed,
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    key_id: String,
    nonce: String,
    data: String,
}

/// How a secret was found on disk.
pub(crate) enum Stored {
    /// Its key/values as they are.
    Plain(BTreeMap<String, String>),
    /// Sealed with the key of this id.
    Sealed(String, BTreeMap<String, String>),
}

impl SecretsKey {
    /// Keys from their text (32 bytes as base64 or hex each): the current
    /// one, if any, and previous ones. Errors name `MODAL_AGENTS_SECRETS_KEY`
    /// or `MODAL_AGENTS_SECRETS_KEY_PREVIOUS`.
    pub fn new(current: Option<&str>, previous: &[String]) -> Result<SecretsKey, KeyError> {
        Ok(SecretsKey {
            current: current
                .map(|k| Key::parse("MODAL_AGENTS_SECRETS_KEY", k))
                .transpose()?,
            previous: previous
                .iter()
                .map(|k| Key::parse("MODAL_AGENTS_SECRETS_KEY_PREVIOUS", k))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The id of the key new writes are sealed with, if any.
    pub fn key_id(&self) -> Option<&str> {
        self.current.as_ref().map(|k| k.id.as_str())
    }

    /// Whether stored secrets sealed with `key_id` (or plain ones, `None`)
    /// must be written again: another key is current now.
    pub(crate) fn reseal(&self, stored_with: Option<&str>) -> bool {
        self.key_id() != stored_with
    }

    /// What to store for secret `name`: sealed with the current key, or
    /// plain when there is none.
    pub(crate) fn seal(&self, name: &str, values: &BTreeMap<String, String>) -> serde_json::Value {
        let Some(key) = &self.current else {
            return serde_json::to_value(values).expect("strings serialize");
        };
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's random source works");
        let mut data = serde_json::to_vec(values).expect("strings serialize");
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .expect("a secret fits ChaCha20-Poly1305's limits");
        let b64 = base64::engine::general_purpose::STANDARD;
        serde_json::to_value(Envelope {
            sealed: Sealed {
                key_id: key.id.clone(),
                nonce: b64.encode(nonce),
                data: b64.encode(&data),
            },
        })
        .expect("strings serialize")
    }

    /// Opens what was stored for secret `name`.
    pub(crate) fn open(&self, name: &str, stored: serde_json::Value) -> Result<Stored, KeyError> {
        let envelope = match serde_json::from_value::<Envelope>(stored.clone()) {
            Ok(e) => e,
            Err(_) => {
                let plain = serde_json::from_value(stored).map_err(|_| KeyError::Tampered {
                    secret: name.to_owned(),
                    key_id: "(none)".into(),
                })?;
                return Ok(Stored::Plain(plain));
            }
        };
        let Sealed {
            key_id,
            nonce,
            data,
        } = envelope.sealed;
        let key = self
            .current
            .iter()
            .chain(&self.previous)
            .find(|k| k.id == key_id)
            .ok_or_else(|| KeyError::Missing {
                secret: name.to_owned(),
                key_id: key_id.clone(),
            })?;
        let tampered = || KeyError::Tampered {
            secret: name.to_owned(),
            key_id: key_id.clone(),
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let nonce: [u8; NONCE_LEN] = b64
            .decode(nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(tampered)?;
        let mut data = b64.decode(data).map_err(|_| tampered())?;
        let plain = key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .map_err(|_| tampered())?;
        let values = serde_json::from_slice(plain).map_err(|_| tampered())?;
        Ok(Stored::Sealed(key_id, values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const K2: &str = "6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b";

    fn values() -> BTreeMap<String, String> {
        [("API_KEY".to_owned(), "sk-live-0123456789".to_owned())].into()
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_name() {
        let key = SecretsKey::new(Some(K1), &[]).unwrap();
        let stored = key.seal("keys", &values());
        let text = stored.to_string();
        assert!(!text.contains("sk-live"), "{text}");
        assert!(text.contains("$sealed"), "{text}");
        match key.open("keys", stored.clone()).unwrap() {
            Stored::Sealed(id, v) => {
                assert_eq!(Some(id.as_str()), key.key_id());
                assert_eq!(v, values());
            }
            Stored::Plain(_) => panic!("sealed"),
        }
        // Moved to another name, or under another key: refused, named.
        assert!(matches!(
            key.open("other", stored.clone()),
            Err(KeyError::Tampered { .. })
        ));
        let other = SecretsKey::new(Some(K2), &[]).unwrap();
        let err = other.open("keys", stored.clone()).err().unwrap();
        assert!(
            err.to_string().contains("MODAL_AGENTS_SECRETS_KEY"),
            "{err}"
        );
        // Rotation: the old key as a previous one opens it.
        let rotated = SecretsKey::new(Some(K2), &[K1.to_owned()]).unwrap();
        let Stored::Sealed(id, _) = rotated.open("keys", stored).unwrap() else {
            panic!("sealed")
        };
        assert!(rotated.reseal(Some(&id)));
        assert!(!rotated.reseal(rotated.key_id()));
        // Two seals of the same values differ (fresh nonces).
        assert_ne!(key.seal("keys", &values()), key.seal("keys", &values()));
    }

    #[test]
    fn plain_secrets_read_as_before_and_bad_keys_are_named() {
        let none = SecretsKey::default();
        let stored = none.seal("keys", &values());
        assert_eq!(stored, serde_json::to_value(values()).unwrap());
        assert!(matches!(
            none.open("keys", stored).unwrap(),
            Stored::Plain(_)
        ));
        let err = SecretsKey::new(Some("short"), &[]).unwrap_err();
        assert!(
            err.to_string().contains("MODAL_AGENTS_SECRETS_KEY")
                && err.to_string().contains("base64"),
            "{err}"
        );
        let err = SecretsKey::new(None, &["zz".into()]).unwrap_err();
        assert!(err.to_string().contains("_PREVIOUS"), "{err}");
    }
}
