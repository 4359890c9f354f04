//! Keeping secret values out of what the runtime returns and logs.
//!
//! Output the runtime passes on from code it does not trust (a package
//! installer's last lines, say) may carry a secret the code managed to read:
//! every known secret value is replaced with `[REDACTED]` first. Known
//! values are the secret store's and those registered with
//! [`Redactor::add`] (the API tokens, Modal credentials).

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use crate::secrets::SecretStore;

/// Values shorter than this are not redacted: replacing every `1` or `yes`
/// in an output would hide more than it protects.
pub const MIN_REDACTED_LEN: usize = 8;

/// What replaces a secret value.
pub const REDACTED: &str = "[REDACTED]";

/// Replaces known secret values in text. Cloning is cheap; clones share
/// what they know.
#[derive(Clone, Default)]
pub struct Redactor {
    values: Arc<RwLock<BTreeSet<String>>>,
    secrets: Option<SecretStore>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor").finish_non_exhaustive()
    }
}

impl Redactor {
    /// A redactor that also knows every value in `secrets`, as it is at the
    /// time of each [`Redactor::redact`].
    pub fn with_secrets(secrets: SecretStore) -> Redactor {
        Redactor {
            values: Arc::default(),
            secrets: Some(secrets),
        }
    }

    /// Adds a value to redact from now on (ignored when shorter than
    /// [`MIN_REDACTED_LEN`]).
    pub fn add(&self, value: impl Into<String>) {
        let value = value.into();
        if value.len() >= MIN_REDACTED_LEN {
            self.values
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(value);
        }
    }

    /// `text` with every known value replaced by [`REDACTED`], longest
    /// first (so a value containing another goes whole).
    pub fn redact(&self, text: &str) -> String {
        let mut values: Vec<String> = self
            .values
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        if let Some(secrets) = &self.secrets {
            values.extend(
                secrets
                    .values()
                    .into_iter()
                    .filter(|v| v.len() >= MIN_REDACTED_LEN),
            );
        }
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        let mut out = text.to_owned();
        for value in values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), REDACTED);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_are_replaced_and_short_ones_kept() {
        let secrets = SecretStore::new();
        secrets
            .set("keys", [("API_KEY", "sk-live-0123456789"), ("N", "2")])
            .unwrap();
        let r = Redactor::with_secrets(secrets.clone());
        r.add("server-token-abcdef");
        r.add("short");
        let text = "env: API_KEY=sk-live-0123456789 TOKEN=server-token-abcdef N=2 short";
        assert_eq!(
            r.redact(text),
            "env: API_KEY=[REDACTED] TOKEN=[REDACTED] N=2 short"
        );
        // A secret set later is known too.
        secrets.set("more", [("K", "later-secret-value")]).unwrap();
        assert_eq!(r.redact("x later-secret-value"), "x [REDACTED]");
    }
}
