//! The wire format between the runtime and its containers: CPython's
//! `marshal` format, version 2, restricted to JSON's data model.
//!
//! `marshal` is part of every CPython, loads and dumps four to five times
//! faster than `json` for the values maps carry, and version 2 has no
//! back-references, so both directions are a straightforward recursive walk.
//! Containers reply with `marshal.dumps(obj, 2)`; anything outside JSON's
//! model (sets, bytes, complex, NaN, non-string keys that JSON would not
//! stringify) is reported per value, so one bad result fails one input.

use serde_json::{Map, Number, Value};

/// Writes `value` in marshal format.
pub(crate) fn encode(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(b'N'),
        Value::Bool(true) => out.push(b'T'),
        Value::Bool(false) => out.push(b'F'),
        Value::Number(n) => encode_number(n, out),
        Value::String(s) => encode_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            out.extend_from_slice(&(items.len() as u32).to_le_bytes());
            for item in items {
                encode(item, out);
            }
        }
        Value::Object(map) => {
            out.push(b'{');
            for (k, v) in map {
                encode_str(k, out);
                encode(v, out);
            }
            out.push(b'0');
        }
    }
}

/// Writes a list header for `len` items that the caller then encodes.
pub(crate) fn encode_list_header(len: usize, out: &mut Vec<u8>) {
    out.push(b'[');
    out.extend_from_slice(&(len as u32).to_le_bytes());
}

pub(crate) fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'u');
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn encode_number(n: &Number, out: &mut Vec<u8>) {
    if let Some(i) = n.as_i64() {
        if let Ok(small) = i32::try_from(i) {
            out.push(b'i');
            out.extend_from_slice(&small.to_le_bytes());
        } else {
            encode_long(i < 0, i.unsigned_abs(), out);
        }
    } else if let Some(u) = n.as_u64() {
        encode_long(false, u, out);
    } else {
        out.push(b'g');
        out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_le_bytes());
    }
}

/// Python ints beyond 32 bits: a signed count of 15-bit digits, least
/// significant first.
fn encode_long(negative: bool, mut magnitude: u64, out: &mut Vec<u8>) {
    let mut digits = Vec::with_capacity(5);
    while magnitude > 0 {
        digits.push((magnitude & 0x7fff) as u16);
        magnitude >>= 15;
    }
    let count = digits.len() as i32;
    out.push(b'l');
    out.extend_from_slice(&(if negative { -count } else { count }).to_le_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_le_bytes());
    }
}

/// The buffer is not marshal data we can read (truncated or unknown type).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed reply at byte {at}: {what}")]
pub(crate) struct Malformed {
    at: usize,
    what: String,
}

/// Reads marshal data into JSON values.
pub(crate) struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Why the value being read is outside JSON's model, if it is.
    unsupported: Option<String>,
    /// Containers open around the value being read.
    depth: usize,
}

/// Deepest nesting a reply may have. Frames come from code the runtime does
/// not trust: without a bound, a forged frame of nested tuples (2 bytes a
/// level) would recurse until the runtime's stack overflows. Results deeper
/// than [`crate::value::MAX_VALUE_DEPTH`] but within this bound decode, and
/// become the input's `ResultTooDeep`.
const MAX_DECODE_DEPTH: usize = 2 * crate::value::MAX_VALUE_DEPTH;

impl<'a> Decoder<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Decoder {
            buf,
            pos: 0,
            unsupported: None,
            depth: 0,
        }
    }

    /// Reads one value; `Ok(Err(why))` when it is well-formed but not JSON.
    pub(crate) fn value(&mut self) -> Result<Result<Value, String>, Malformed> {
        self.unsupported = None;
        let v = self.read()?;
        Ok(match self.unsupported.take() {
            None => Ok(v),
            Some(why) => Err(why),
        })
    }

    /// Reads a list header and returns its length, which is never more than
    /// the bytes left (every item takes at least one), so a caller may
    /// reserve that many slots.
    pub(crate) fn list_len(&mut self) -> Result<usize, Malformed> {
        match self.byte()? & 0x7f {
            b'[' | b'(' => {
                let n = self.len()?;
                if n > self.buf.len() - self.pos {
                    return Err(self.malformed(format!(
                        "a list of {n} items in {} bytes",
                        self.buf.len() - self.pos
                    )));
                }
                Ok(n)
            }
            t => Err(self.malformed(format!("expected a list, found type {:?}", t as char))),
        }
    }

    /// Reads a dict header; then call [`Decoder::dict_key`] until it answers `None`.
    pub(crate) fn dict_start(&mut self) -> Result<(), Malformed> {
        match self.byte()? & 0x7f {
            b'{' => Ok(()),
            t => Err(self.malformed(format!("expected a dict, found type {:?}", t as char))),
        }
    }

    /// The next key of a dict, or `None` at its end.
    pub(crate) fn dict_key(&mut self) -> Result<Option<String>, Malformed> {
        if self.peek()? == b'0' {
            self.pos += 1;
            return Ok(None);
        }
        match self.read()? {
            Value::String(s) => Ok(Some(s)),
            other => Ok(Some(other.to_string())),
        }
    }

    fn malformed(&self, what: impl Into<String>) -> Malformed {
        Malformed {
            at: self.pos,
            what: what.into(),
        }
    }

    fn peek(&self) -> Result<u8, Malformed> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.malformed("unexpected end"))
    }

    fn byte(&mut self) -> Result<u8, Malformed> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| self.malformed("unexpected end"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn i32(&mut self) -> Result<i32, Malformed> {
        Ok(i32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn len(&mut self) -> Result<usize, Malformed> {
        let n = self.i32()?;
        usize::try_from(n).map_err(|_| self.malformed("negative length"))
    }

    /// Slots to reserve for `n` claimed items: no more than the bytes left
    /// (every item takes at least one) and a few thousand; past that the
    /// list grows with the items that actually decode. A forged length (or
    /// a tower of them) cannot make the runtime reserve memory up front.
    fn room_for(&self, n: usize) -> usize {
        n.min(self.buf.len() - self.pos).min(4096)
    }

    fn unsupported(&mut self, what: &str) {
        self.unsupported
            .get_or_insert_with(|| format!("a {what}, which is not JSON-serializable"));
    }

    fn read(&mut self) -> Result<Value, Malformed> {
        if self.depth >= MAX_DECODE_DEPTH {
            return Err(self.malformed(format!(
                "values nest more than {MAX_DECODE_DEPTH} levels deep"
            )));
        }
        self.depth += 1;
        let value = self.read_inner();
        self.depth -= 1;
        value
    }

    fn read_inner(&mut self) -> Result<Value, Malformed> {
        let code = self.byte()?;
        if code & 0x80 != 0 {
            return Err(self.malformed("back-references are not used by version 2"));
        }
        Ok(match code {
            b'N' => Value::Null,
            b'T' => Value::Bool(true),
            b'F' => Value::Bool(false),
            b'i' => Value::from(self.i32()?),
            b'l' => self.long()?,
            b'g' => {
                let f = f64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"));
                match Number::from_f64(f) {
                    Some(n) => Value::Number(n),
                    None => {
                        self.unsupported("non-finite float (NaN or infinity)");
                        Value::Null
                    }
                }
            }
            b'u' | b't' | b'a' | b'A' | b'z' | b'Z' => {
                let n = if matches!(code, b'z' | b'Z') {
                    usize::from(self.byte()?)
                } else {
                    self.len()?
                };
                let raw = self.take(n)?;
                match std::str::from_utf8(raw) {
                    Ok(s) => Value::String(s.to_owned()),
                    Err(_) => {
                        self.unsupported("string with a lone surrogate");
                        Value::Null
                    }
                }
            }
            b'[' | b'(' => {
                let n = self.len()?;
                let mut items = Vec::with_capacity(self.room_for(n));
                for _ in 0..n {
                    items.push(self.read()?);
                }
                Value::Array(items)
            }
            b')' => {
                let n = usize::from(self.byte()?);
                let mut items = Vec::with_capacity(self.room_for(n));
                for _ in 0..n {
                    items.push(self.read()?);
                }
                Value::Array(items)
            }
            b'{' => {
                let mut map = Map::new();
                while self.peek()? != b'0' {
                    let key = match self.read()? {
                        Value::String(s) => s,
                        Value::Null => "null".to_owned(),
                        Value::Bool(b) => b.to_string(),
                        Value::Number(n) if !n.is_f64() => n.to_string(),
                        _ => {
                            self.unsupported("dict whose keys are not strings or integers");
                            String::new()
                        }
                    };
                    let value = self.read()?;
                    map.insert(key, value);
                }
                self.pos += 1;
                Value::Object(map)
            }
            b's' => {
                let n = self.len()?;
                self.take(n)?;
                self.unsupported("bytes object");
                Value::Null
            }
            b'<' | b'>' => {
                let n = self.len()?;
                for _ in 0..n {
                    self.read()?;
                }
                self.unsupported("set");
                Value::Null
            }
            b'y' => {
                self.take(16)?;
                self.unsupported("complex number");
                Value::Null
            }
            b'.' | b'S' => {
                self.unsupported("Ellipsis or StopIteration");
                Value::Null
            }
            other => {
                return Err(self.malformed(format!("unsupported type code {:?}", other as char)))
            }
        })
    }

    fn long(&mut self) -> Result<Value, Malformed> {
        let count = self.i32()?;
        let digits = count.unsigned_abs() as usize;
        let raw = self.take(digits * 2)?;
        let mut magnitude: u128 = 0;
        let mut overflow = false;
        for (i, d) in raw.chunks_exact(2).enumerate() {
            let d = u128::from(u16::from_le_bytes([d[0], d[1]]));
            if i * 15 >= 120 {
                overflow |= d != 0;
            } else {
                magnitude |= d << (i * 15);
            }
        }
        let negative = count < 0;
        if !overflow {
            if negative {
                if let Ok(v) = i128::try_from(magnitude)
                    .map(|m| -m)
                    .and_then(i64::try_from)
                {
                    return Ok(Value::from(v));
                }
            } else if let Ok(v) = u64::try_from(magnitude) {
                return Ok(Value::from(v));
            }
        }
        // Beyond 64 bits: like serde_json parsing Python's JSON, keep a float.
        let mut f = 0f64;
        for d in raw.chunks_exact(2).rev() {
            f = f * 32768.0 + f64::from(u16::from_le_bytes([d[0], d[1]]));
        }
        Ok(Number::from_f64(if negative { -f } else { f }).map_or(Value::Null, Value::Number))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_deep_frame_is_refused_without_overflowing_the_stack() {
        // 500,000 nested one-element tuples: 1 MB, far past any bound.
        let mut frame = Vec::new();
        for _ in 0..500_000 {
            frame.extend_from_slice(&[b')', 1]);
        }
        frame.push(b'N');
        let err = Decoder::new(&frame).value().unwrap_err();
        assert!(format!("{err:?}").contains("levels deep"), "{err:?}");
        // Within the bound it decodes (and the dispatcher makes it
        // ResultTooDeep past MAX_VALUE_DEPTH).
        let mut ok = Vec::new();
        for _ in 0..100 {
            ok.extend_from_slice(&[b')', 1]);
        }
        ok.push(b'N');
        assert!(Decoder::new(&ok).value().unwrap().is_ok());
    }
    use serde_json::json;

    fn round_trip(v: Value) {
        let mut buf = Vec::new();
        encode(&v, &mut buf);
        let mut d = Decoder::new(&buf);
        assert_eq!(d.value().unwrap().unwrap(), v);
        assert_eq!(d.pos, buf.len());
    }

    #[test]
    fn values_round_trip() {
        round_trip(json!(null));
        round_trip(json!([
            true,
            false,
            0,
            -1,
            2147483647,
            -2147483648,
            2147483648i64
        ]));
        round_trip(json!([i64::MIN, i64::MAX, u64::MAX, 1.5, -0.25, 1e300]));
        round_trip(json!({"a": [1, {"b": "h\u{e9}llo \u{1F600}"}], "": ""}));
    }

    #[test]
    fn decodes_what_python_writes() {
        // marshal.dumps([1, 2**40, 1.5, "hé", None, True, {"a": [1]}, (1, 2)], 2)
        let bytes = b"[\x08\x00\x00\x00i\x01\x00\x00\x00l\x03\x00\x00\x00\x00\x00\x00\x00\x00\x04g\x00\x00\x00\x00\x00\x00\xf8?u\x03\x00\x00\x00h\xc3\xa9NT{u\x01\x00\x00\x00a[\x01\x00\x00\x00i\x01\x00\x00\x000(\x02\x00\x00\x00i\x01\x00\x00\x00i\x02\x00\x00\x00";
        let v = Decoder::new(bytes).value().unwrap().unwrap();
        assert_eq!(
            v,
            json!([1, 1u64 << 40, 1.5, "hé", null, true, {"a": [1]}, [1, 2]])
        );
    }

    #[test]
    fn non_json_values_are_flagged_not_fatal() {
        // [{1, 2}, 7]: a set then an int; the set is flagged, the int still reads.
        let bytes = b"[\x02\x00\x00\x00<\x02\x00\x00\x00i\x01\x00\x00\x00i\x02\x00\x00\x00i\x07\x00\x00\x00";
        let mut d = Decoder::new(bytes);
        assert_eq!(d.list_len().unwrap(), 2);
        assert!(d.value().unwrap().unwrap_err().contains("set"));
        assert_eq!(d.value().unwrap().unwrap(), json!(7));
        let nan = [b'g', 0, 0, 0, 0, 0, 0, 0xf8, 0x7f];
        assert!(Decoder::new(&nan)
            .value()
            .unwrap()
            .unwrap_err()
            .contains("NaN"));
    }

    #[test]
    fn int_keys_become_strings_like_json() {
        // {1: "x"}
        let bytes = b"{i\x01\x00\x00\x00u\x01\x00\x00\x00x0";
        assert_eq!(
            Decoder::new(bytes).value().unwrap().unwrap(),
            json!({"1": "x"})
        );
    }

    #[test]
    fn truncated_input_is_malformed() {
        assert!(Decoder::new(b"[\x02\x00\x00\x00i\x01").value().is_err());
        assert!(Decoder::new(b"").value().is_err());
        assert!(Decoder::new(b"\xe9").value().is_err());
    }
}
