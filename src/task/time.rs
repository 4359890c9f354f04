//! Timestamps as chrono's serde writes them (RFC 3339, UTC, `Z`, the
//! fraction in 0, 3, 6 or 9 digits as needed), formatted into a stack
//! buffer: chrono's own path goes through `fmt::Display`, which
//! serde_json escapes a character at a time (an eighth of a task's
//! journal write was that).

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde::Serializer;

/// Serializes `at` exactly as chrono's `Serialize` would.
pub(crate) fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 30];
    match format(at, &mut buf) {
        Some(text) => s.serialize_str(text),
        None => s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    }
}

/// [`serialize`] for an optional timestamp.
pub(crate) fn serialize_opt<S: Serializer>(
    at: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serialize(at, s),
        None => s.serialize_none(),
    }
}

/// `at` in `buf`, or `None` for what the fast path leaves to chrono (a
/// year outside 0..=9999, a leap second).
fn format<'b>(at: &DateTime<Utc>, buf: &'b mut [u8; 30]) -> Option<&'b str> {
    let year = u32::try_from(at.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = at.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    // Each field's digits at its place, right to left.
    fn put(buf: &mut [u8], mut value: u32) {
        for b in buf.iter_mut().rev() {
            *b = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    buf[..20].copy_from_slice(b"0000-00-00T00:00:00.");
    put(&mut buf[0..4], year);
    put(&mut buf[5..7], at.month());
    put(&mut buf[8..10], at.day());
    put(&mut buf[11..13], at.hour());
    put(&mut buf[14..16], at.minute());
    put(&mut buf[17..19], at.second());
    let n = match nanos {
        0 => 19,
        _ if nanos.is_multiple_of(1_000_000) => {
            put(&mut buf[20..23], nanos / 1_000_000);
            23
        }
        _ if nanos.is_multiple_of(1_000) => {
            put(&mut buf[20..26], nanos / 1_000);
            26
        }
        _ => {
            put(&mut buf[20..29], nanos);
            29
        }
    };
    buf[n] = b'Z';
    std::str::from_utf8(&buf[..=n]).ok()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn writes_what_chrono_writes() {
        let base = Utc.with_ymd_and_hms(2026, 12, 7, 9, 5, 3).unwrap();
        let cases = [
            base,
            base + chrono::Duration::milliseconds(120),
            base + chrono::Duration::microseconds(123_456),
            base + chrono::Duration::nanoseconds(1),
            base + chrono::Duration::nanoseconds(999_999_999),
            Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(12345, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-5, 1, 1, 0, 0, 0).unwrap(),
            Utc::now(),
        ];
        for at in cases {
            let mine = serialize(&at, serde_json::value::Serializer).unwrap();
            assert_eq!(mine, serde_json::to_value(at).unwrap(), "{at:?}");
        }
        let none: Option<DateTime<Utc>> = None;
        assert_eq!(
            serialize_opt(&none, serde_json::value::Serializer).unwrap(),
            serde_json::Value::Null
        );
    }
}
