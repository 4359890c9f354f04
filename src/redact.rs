//! Keeping secret values out of what the runtime returns and logs.
//!
//! Everything a caller (or another call) can read that code the runtime
//! does not trust produced passes through the [`Redactor`] first: task
//! errors and tracebacks, a crashed container's last stderr lines, what a
//! function prints (the log files, and so `logs`, the SSE stream and the
//! MCP tools), the errors of failed map inputs, a package installer's last
//! lines. Every known secret value is replaced with `[REDACTED]`. Known
//! values are the secret store's and those registered with
//! [`Redactor::add`] (the API tokens, Modal credentials).
//!
//! The one thing never redacted is a function's result: `return secret` is
//! the function's own choice to hand the value to its caller.
//!
//! The values are matched with one Aho-Corasick automaton, rebuilt only
//! when the set of values changes, so a redaction costs one pass over the
//! text whatever the number of secrets, and nothing at all when there are
//! none.

use crate::sync::Recover;
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};

use crate::secrets::SecretStore;

/// Values shorter than this are not redacted: replacing every `1` or `yes`
/// in an output would hide more than it protects.
pub const MIN_REDACTED_LEN: usize = 8;

/// What replaces a secret value.
pub const REDACTED: &str = "[REDACTED]";

/// The values to replace, compiled.
struct Compiled {
    /// The generations of the added values and of the store it was built
    /// from.
    built_from: (u64, u64),
    /// `None` when there is nothing to redact.
    matcher: Option<AhoCorasick>,
    values: Vec<String>,
}

#[derive(Default)]
struct Shared {
    values: RwLock<BTreeSet<String>>,
    generation: AtomicU64,
    compiled: RwLock<Option<Arc<Compiled>>>,
    /// Held while the matcher is built: one thread builds, the others wait
    /// for it instead of building the same one at once.
    building: std::sync::Mutex<()>,
}

/// Replaces known secret values in text. Cloning is cheap; clones share
/// what they know.
#[derive(Clone, Default)]
pub struct Redactor {
    shared: Arc<Shared>,
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
            shared: Arc::default(),
            secrets: Some(secrets),
        }
    }

    /// Adds a value to redact from now on (ignored when shorter than
    /// [`MIN_REDACTED_LEN`]).
    pub fn add(&self, value: impl Into<String>) {
        let value = value.into();
        if value.len() >= MIN_REDACTED_LEN {
            let added = self.shared.values.write().recover().insert(value);
            if added {
                self.shared.generation.fetch_add(1, Ordering::Release);
            }
        }
    }

    /// The automaton for the values known now.
    fn compiled(&self) -> Arc<Compiled> {
        let now = (
            self.shared.generation.load(Ordering::Acquire),
            self.secrets.as_ref().map_or(0, SecretStore::generation),
        );
        let cached = || {
            self.shared
                .compiled
                .read()
                .recover()
                .as_ref()
                .filter(|c| c.built_from == now)
                .cloned()
        };
        if let Some(c) = cached() {
            return c;
        }
        let _building = self.shared.building.lock().recover();
        if let Some(c) = cached() {
            return c;
        }
        let mut values: BTreeSet<String> = self.shared.values.read().recover().clone();
        if let Some(secrets) = &self.secrets {
            values.extend(
                secrets
                    .values()
                    .into_iter()
                    .filter(|v| v.len() >= MIN_REDACTED_LEN),
            );
        }
        // The forms a value takes when code prints it escaped: Python's
        // repr (in tracebacks, KeyErrors) and JSON.
        let escaped: Vec<String> = values.iter().flat_map(|v| escaped_forms(v)).collect();
        values.extend(escaped.into_iter().filter(|v| v.len() >= MIN_REDACTED_LEN));
        let values: Vec<String> = values.into_iter().collect();
        // Leftmost-longest: a value containing another goes whole.
        let matcher = (!values.is_empty()).then(|| {
            // A contiguous NFA: built in time linear in the values (the
            // default may build a DFA, whose cost grows far faster).
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .kind(Some(aho_corasick::AhoCorasickKind::ContiguousNFA))
                .build(&values)
                .expect("plain strings always compile")
        });
        let compiled = Arc::new(Compiled {
            built_from: now,
            matcher,
            values,
        });
        *self.shared.compiled.write().recover() = Some(compiled.clone());
        compiled
    }

    /// `text` with every known value replaced by [`REDACTED`] (also in its
    /// escaped forms, and the start of one cut short where the runtime cut
    /// output); borrowed (no copy) when it holds none.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let compiled = self.compiled();
        let Some(m) = &compiled.matcher else {
            return Cow::Borrowed(text);
        };
        let mut out = if m.is_match(text) {
            let with: Vec<&str> = vec![REDACTED; compiled.values.len()];
            Cow::Owned(m.replace_all(text, &with))
        } else {
            Cow::Borrowed(text)
        };
        if CUT_MARKS.iter().any(|mark| out.contains(mark)) {
            out = Cow::Owned(self.redact_cut_starts(&compiled, &out));
        }
        out
    }

    /// Replaces the start of a value that ends right where output was cut
    /// short (before a [`CUT_MARKS`] note): the cut took its end, so the
    /// whole-value match cannot see it.
    fn redact_cut_starts(&self, compiled: &Compiled, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some((at, mark)) = CUT_MARKS
            .iter()
            .filter_map(|m| rest.find(m).map(|at| (at, *m)))
            .min_by_key(|(at, _)| *at)
        {
            let before = &rest[..at];
            let cut = unfinished(&compiled.values, before);
            out.push_str(&before[..before.len() - cut]);
            if cut > 0 {
                out.push_str(REDACTED);
            }
            out.push_str(mark);
            rest = &rest[at + mark.len()..];
        }
        out.push_str(rest);
        out
    }

    /// Redacts `text` in place.
    pub(crate) fn redact_in_place(&self, text: &mut String) {
        if let Cow::Owned(clean) = self.redact(text) {
            *text = clean;
        }
    }

    /// How many bytes at the end of `text` could be the start of a secret
    /// value that the next piece of the same output completes: a stream
    /// writer holds them back until it knows. 0 when none could.
    pub(crate) fn unfinished_tail(&self, text: &str) -> usize {
        unfinished(&self.compiled().values, text)
    }
}

/// The notes the runtime leaves where it cut output short (the harness's
/// cap on what a request prints, a container's overlong stderr line).
const CUT_MARKS: [&str; 2] = ["\n[modal-agents: output truncated", " [line truncated]"];

/// The longest end of `text` that is the start (not the whole) of one of
/// `values`, in bytes; 0 when none is.
fn unfinished(values: &[String], text: &str) -> usize {
    let mut longest = 0;
    for value in values {
        let most = value.len().saturating_sub(1).min(text.len());
        for n in (longest + 1..=most).rev() {
            if text.is_char_boundary(text.len() - n)
                && value.is_char_boundary(n)
                && text.as_bytes()[text.len() - n..] == value.as_bytes()[..n]
            {
                longest = n;
                break;
            }
        }
    }
    longest
}

/// `value` as Python's `repr` (either quote) and JSON write it, where that
/// differs from the value itself.
fn escaped_forms(value: &str) -> Vec<String> {
    let python = |quote: Option<char>| {
        let mut out = String::with_capacity(value.len() + 8);
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if Some(c) == quote => {
                    out.push('\\');
                    out.push(c);
                }
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&format!("\\x{:02x}", c as u32));
                }
                c => out.push(c),
            }
        }
        out
    };
    let json = serde_json::to_string(value).expect("a string serializes");
    let json = json[1..json.len() - 1].to_owned();
    let mut forms = vec![python(None), python(Some('\'')), python(Some('"')), json];
    forms.retain(|f| f != value);
    forms.sort();
    forms.dedup();
    forms
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
        // A secret set later is known too, and one removed no more.
        secrets.set("more", [("K", "later-secret-value")]).unwrap();
        assert_eq!(r.redact("x later-secret-value"), "x [REDACTED]");
        secrets.remove("more").unwrap();
        assert_eq!(r.redact("x later-secret-value"), "x later-secret-value");
        // Clean text is not copied.
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_value_containing_another_goes_whole() {
        let r = Redactor::default();
        r.add("abcdefgh");
        r.add("abcdefgh-and-more");
        assert_eq!(r.redact("[abcdefgh-and-more]"), "[[REDACTED]]");
        assert_eq!(
            r.redact("abcdefgh abcdefgh-and-more"),
            "[REDACTED] [REDACTED]"
        );
    }

    #[test]
    fn escaped_forms_and_values_cut_short_are_redacted() {
        let r = Redactor::default();
        r.add("multi\nline-secret-ZZ9");
        r.add("Plain-S3cret-Value-9f8e7d");
        // As Python's repr and JSON show it.
        assert_eq!(
            r.redact("KeyError: 'multi\\nline-secret-ZZ9'"),
            "KeyError: '[REDACTED]'"
        );
        assert_eq!(
            r.redact(r#"{"k":"multi\nline-secret-ZZ9"}"#),
            r#"{"k":"[REDACTED]"}"#
        );
        // Cut short by the harness's cap, or a stderr line's.
        assert_eq!(
            r.redact("xxPlain-S3cret-Val\n[modal-agents: output truncated: 7 more]"),
            "xx[REDACTED]\n[modal-agents: output truncated: 7 more]"
        );
        assert_eq!(
            r.redact("AAAPlain-S [line truncated]; then Plain-S3cret-Value-9f8e7d"),
            "AAA[REDACTED] [line truncated]; then [REDACTED]"
        );
        assert_eq!(r.redact("ok [line truncated]"), "ok [line truncated]");
    }

    #[test]
    fn an_unfinished_value_at_the_end_is_found() {
        let r = Redactor::default();
        assert_eq!(r.unfinished_tail("anything sk-li"), 0, "nothing known");
        r.add("sk-live-0123456789");
        assert_eq!(r.unfinished_tail("print sk-li"), 5);
        assert_eq!(r.unfinished_tail("print s"), 1);
        assert_eq!(r.unfinished_tail("line\n"), 0);
        // A whole value is not unfinished (it is redacted as it is).
        assert_eq!(r.unfinished_tail("sk-live-0123456789"), 0);
        assert_eq!(r.unfinished_tail("ééé"), 0);
    }
}
