//! Modal credentials: a token id and secret, from the environment or the
//! profile file the `modal` CLI writes (`~/.modal.toml`).

use std::path::{Path, PathBuf};

/// What Modal needs to authenticate: `MODAL_TOKEN_ID` and `MODAL_TOKEN_SECRET`.
#[derive(Clone, PartialEq, Eq)]
pub struct ModalCredentials {
    /// The token id (`ak-...`).
    pub token_id: String,
    /// The token secret (`as-...`). Never logged.
    pub token_secret: String,
    /// Where they came from, for messages (`environment`, `~/.modal.toml [profile]`).
    pub source: String,
}

impl std::fmt::Debug for ModalCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModalCredentials")
            .field("token_id", &self.token_id)
            .field("token_secret", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

/// How to set credentials, for every error that lacks them.
pub(crate) const HOW_TO_SET: &str = "set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (from \
    modal.com/settings/tokens), or run `modal token new` to write ~/.modal.toml \
    (MODAL_PROFILE picks a profile)";

impl ModalCredentials {
    /// Credentials as the `modal` CLI finds them: `MODAL_TOKEN_ID` and
    /// `MODAL_TOKEN_SECRET` from the environment, else the profile named by
    /// `MODAL_PROFILE` (else the one marked `active = true`, else `default`)
    /// in `MODAL_CONFIG_PATH` or `~/.modal.toml`. `None` when neither has them.
    pub fn discover() -> Option<ModalCredentials> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let (Some(token_id), Some(token_secret)) =
            (var("MODAL_TOKEN_ID"), var("MODAL_TOKEN_SECRET"))
        {
            return Some(ModalCredentials {
                token_id,
                token_secret,
                source: "environment".into(),
            });
        }
        let path = var("MODAL_CONFIG_PATH")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| Path::new(&h).join(".modal.toml")))?;
        let text = std::fs::read_to_string(&path).ok()?;
        ModalCredentials::from_toml(&text, var("MODAL_PROFILE").as_deref(), &path)
    }

    /// Reads a profile from the text of a `.modal.toml`.
    pub fn from_toml(text: &str, profile: Option<&str>, path: &Path) -> Option<ModalCredentials> {
        let profiles = parse_profiles(text);
        let chosen = match profile {
            Some(p) => profiles.iter().find(|(name, _)| name == p),
            None => profiles
                .iter()
                .find(|(_, keys)| keys.iter().any(|(k, v)| k == "active" && v == "true"))
                .or_else(|| profiles.iter().find(|(name, _)| name == "default"))
                .or_else(|| (profiles.len() == 1).then(|| &profiles[0])),
        }?;
        let get = |key: &str| {
            chosen
                .1
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        Some(ModalCredentials {
            token_id: get("token_id")?,
            token_secret: get("token_secret")?,
            source: format!("{} [{}]", path.display(), chosen.0),
        })
    }
}

type Profile = (String, Vec<(String, String)>);

/// `[name]` sections of `key = "value"` / `key = true` lines: the subset of
/// TOML the `modal` CLI writes.
fn parse_profiles(text: &str) -> Vec<Profile> {
    let mut profiles: Vec<Profile> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            profiles.push((name.trim().trim_matches('"').to_owned(), Vec::new()));
        } else if let (Some((key, value)), Some(profile)) =
            (line.split_once('='), profiles.last_mut())
        {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            profile.1.push((key.trim().to_owned(), value.to_owned()));
        }
    }
    profiles
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
[default]
token_id = "ak-default"
token_secret = "as-default"

[work]
token_id = "ak-work"
token_secret = 'as-work'
active = true
"#;

    #[test]
    fn profiles_are_chosen_like_the_modal_cli() {
        let path = Path::new("/home/u/.modal.toml");
        let active = ModalCredentials::from_toml(TOML, None, path).unwrap();
        assert_eq!(
            (active.token_id.as_str(), active.token_secret.as_str()),
            ("ak-work", "as-work")
        );
        assert!(active.source.ends_with("[work]"));
        let named = ModalCredentials::from_toml(TOML, Some("default"), path).unwrap();
        assert_eq!(named.token_id, "ak-default");
        assert!(ModalCredentials::from_toml(TOML, Some("nope"), path).is_none());
        assert!(ModalCredentials::from_toml("[x]\ntoken_id = \"a\"\n", None, path).is_none());
    }

    #[test]
    fn the_secret_is_never_printed() {
        let c = ModalCredentials::from_toml(TOML, None, Path::new("p")).unwrap();
        assert!(!format!("{c:?}").contains("as-work"));
    }
}
