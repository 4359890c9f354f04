//! JSON values crossing the runtime: call arguments, map inputs, results
//! from containers and Modal, volume state. They share one depth bound,
//! [`MAX_VALUE_DEPTH`], checked where each enters, so that whatever is
//! accepted is also read back from the journal, the result files and the
//! state logs (serde_json reads at most 128 levels, and a stored value sits a
//! few levels inside its record).

use serde_json::Value;

/// Deepest nesting of arrays and objects a value may have (a scalar is 0,
/// `[1]` is 1, `{"a": [1]}` is 2).
pub const MAX_VALUE_DEPTH: usize = 64;

/// A value nests deeper than [`MAX_VALUE_DEPTH`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} nests arrays/objects more than {MAX_VALUE_DEPTH} levels deep; at most {MAX_VALUE_DEPTH} are accepted (flatten the value, or pass it as a string)")]
pub struct TooDeep {
    /// Where the value was given (`args[0]`, `inputs[12]`, `value`, `result`).
    pub field: String,
}

/// Whether `value` nests deeper than `max` (without recursion, so any value
/// can be checked).
#[inline]
pub(crate) fn deeper_than(value: &Value, max: usize) -> bool {
    // Scalars (most values) cost one comparison.
    matches!(value, Value::Array(_) | Value::Object(_)) && walk_deeper_than(value, max)
}

fn walk_deeper_than(value: &Value, max: usize) -> bool {
    fn children(v: &Value) -> Option<Box<dyn Iterator<Item = &Value> + '_>> {
        match v {
            Value::Array(items) => Some(Box::new(items.iter())),
            Value::Object(map) => Some(Box::new(map.values())),
            _ => None,
        }
    }
    // Scalars (most results) cost nothing.
    let Some(top) = children(value) else {
        return false;
    };
    if max == 0 {
        return true;
    }
    let mut stack = vec![(top, 1usize)];
    while let Some((iter, depth)) = stack.last_mut() {
        let depth = *depth;
        match iter.next() {
            None => {
                stack.pop();
            }
            Some(child) => {
                if let Some(grand) = children(child) {
                    if depth + 1 > max {
                        return true;
                    }
                    stack.push((grand, depth + 1));
                }
            }
        }
    }
    false
}

/// Longest piece of a caller's own text (a name, a path, a value) an error
/// message, a problem document or a log line repeats back.
pub(crate) const MAX_ECHO: usize = 128;

/// `text` cut to at most `max` bytes at a character boundary, saying how
/// much was left out: what a caller sent is never repeated back, or logged,
/// whole.
pub(crate) fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    std::borrow::Cow::Owned(format!(
        "{}… ({} more bytes)",
        &text[..cut],
        text.len() - cut
    ))
}

/// Whether `value`, written as JSON, surely takes at most `budget` bytes
/// even if every character of its strings were escaped (6 bytes each):
/// true only when that is certain, without writing it. Stops walking as
/// soon as the budget is spent.
pub(crate) fn surely_within(value: &Value, budget: usize) -> bool {
    let mut left = budget as isize;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        left -= match v {
            Value::Null | Value::Bool(_) => 5,
            Value::Number(_) => 24,
            Value::String(s) => 2 + 6 * s.len() as isize,
            Value::Array(items) => 1 + items.len() as isize,
            Value::Object(map) => map
                .keys()
                .map(|k| 4 + 6 * k.len() as isize)
                .sum::<isize>()
                .saturating_add(1),
        };
        if left < 0 {
            return false;
        }
        match v {
            Value::Array(items) => stack.extend(items.iter()),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    true
}

/// Checks one value given as `field`.
pub(crate) fn check_depth(value: &Value, field: impl FnOnce() -> String) -> Result<(), TooDeep> {
    if deeper_than(value, MAX_VALUE_DEPTH) {
        Err(TooDeep { field: field() })
    } else {
        Ok(())
    }
}

/// Checks each of `values`, named `field[i]`.
pub(crate) fn check_each<'a>(
    values: impl IntoIterator<Item = &'a Value>,
    field: &str,
) -> Result<(), TooDeep> {
    values
        .into_iter()
        .enumerate()
        .try_for_each(|(i, v)| check_depth(v, || format!("{field}[{i}]")))
}

/// The length of `value` as compact JSON, without building it.
pub(crate) fn json_size(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// `text` with every byte but the unreserved ones (RFC 3986) as `%XX`.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> Value {
        let mut v = json!(1);
        for i in 0..levels {
            v = if i % 2 == 0 {
                json!([v])
            } else {
                json!({ "k": v })
            };
        }
        v
    }

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_at_a_character() {
        assert_eq!(clip("short", 10), "short");
        let long = "é".repeat(100);
        let cut = clip(&long, 11);
        assert!(cut.starts_with(&"é".repeat(5)), "{cut}");
        assert!(cut.ends_with("… (190 more bytes)"), "{cut}");
    }

    #[test]
    fn surely_within_never_says_yes_to_what_is_larger() {
        for v in [
            json!(1),
            json!("x".repeat(100)),
            json!({"a": [1, 2, {"b": "\u{0001}".repeat(50)}]}),
            json!((0..300).collect::<Vec<_>>()),
        ] {
            let len = serde_json::to_vec(&v).unwrap().len();
            for budget in [0, 10, 100, 1000, 10_000] {
                if surely_within(&v, budget) {
                    assert!(len <= budget, "{len} > {budget} for {v}");
                }
            }
        }
        assert!(surely_within(&json!({"ok": true, "n": 3}), 8 << 10));
        assert!(!surely_within(&json!("x".repeat(2000)), 8 << 10));
    }

    #[test]
    fn depth_is_counted_per_level() {
        assert!(!deeper_than(&json!(1), 0));
        assert!(deeper_than(&json!([]), 0));
        assert!(!deeper_than(&nested(MAX_VALUE_DEPTH), MAX_VALUE_DEPTH));
        assert!(deeper_than(&nested(MAX_VALUE_DEPTH + 1), MAX_VALUE_DEPTH));
        let err = check_each(&[json!(1), nested(65)], "inputs").unwrap_err();
        assert_eq!(err.field, "inputs[1]");
        assert!(err.to_string().contains("at most 64"));
    }

    #[test]
    fn what_is_accepted_reads_back_inside_a_record() {
        // The deepest accepted value, wrapped the way the journal wraps a
        // job's arguments, still parses.
        let line = serde_json::to_string(
            &json!({"j": ["id", {"kind": "call", "args": [nested(MAX_VALUE_DEPTH)]}]}),
        )
        .unwrap();
        assert!(serde_json::from_str::<Value>(&line).is_ok());
    }
}
