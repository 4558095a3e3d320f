//! Strict CBOR: a hand-written well-formedness pre-pass, then ciborium.
//!
//! ciborium (and coset above it) accept indefinite-length items and duplicate map keys and
//! decode whatever follows the first item only if asked; the profile forbids all three
//! (docs/profile.md §4.3). So every byte string that is CBOR goes
//! through [`check_well_formed`] first, and only then through ciborium.

use std::collections::BTreeSet;

use ciborium::Value;

use crate::error::{Error, Result};
use crate::limits::MAX_CBOR_DEPTH;

/// Identity of a map key for duplicate detection. Integers and strings compare by value so
/// that a non-shortest encoding (accepted, docs/profile.md §4.3 rule 3) cannot smuggle a duplicate;
/// any other key compares by its encoded bytes.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum KeyId<'a> {
    Int(u8, u64),
    Str(u8, &'a [u8]),
    Other(&'a [u8]),
}

struct Head {
    major: u8,
    arg: u64,
}

struct PrePass<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> PrePass<'a> {
    fn byte(&mut self) -> Result<u8> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or(Error::Malformed("truncated CBOR"))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| Error::Malformed("truncated CBOR"))?;
        let end = self
            .pos
            .checked_add(n)
            .ok_or(Error::Malformed("truncated CBOR"))?;
        let s = self
            .data
            .get(self.pos..end)
            .ok_or(Error::Malformed("truncated CBOR"))?;
        self.pos = end;
        Ok(s)
    }

    fn remaining(&self) -> u64 {
        u64::try_from(self.data.len().saturating_sub(self.pos)).unwrap_or(u64::MAX)
    }

    // RFC 8949 §3: initial byte = major type (3 bits) + additional information (5 bits).
    fn head(&mut self) -> Result<Head> {
        let ib = self.byte()?;
        let major = ib >> 5;
        let ai = ib & 0x1f;
        let arg = match ai {
            0..=23 => u64::from(ai),
            24 => u64::from(self.byte()?),
            25 => u64::from(u16::from_be_bytes(fixed::<2>(self.take(2)?)?)),
            26 => u64::from(u32::from_be_bytes(fixed::<4>(self.take(4)?)?)),
            27 => u64::from_be_bytes(fixed::<8>(self.take(8)?)?),
            // RFC 8949 §3: 28–30 are reserved: not well-formed.
            28..=30 => return Err(Error::Malformed("reserved CBOR additional information")),
            // 31: indefinite length (majors 2–5), "break" (major 7) or invalid (0, 1, 6).
            // The profile forbids indefinite lengths; a stray break is not well-formed.
            _ => return Err(Error::Malformed("indefinite-length CBOR item")),
        };
        if major == 7 && ai == 24 && arg < 32 {
            // RFC 8949 §3.3: simple values 0–31 in the two-byte form are not well-formed.
            return Err(Error::Malformed("invalid CBOR simple value"));
        }
        Ok(Head { major, arg })
    }

    /// One data item; `parent_depth` is the number of containers (arrays, maps, tags) around it.
    fn item(&mut self, parent_depth: usize) -> Result<()> {
        let h = self.head()?;
        match h.major {
            0 | 1 => Ok(()),
            2 => self.take(h.arg).map(|_| ()),
            3 => {
                let s = self.take(h.arg)?;
                std::str::from_utf8(s)
                    .map(|_| ())
                    .map_err(|_| Error::Malformed("invalid UTF-8 in CBOR text"))
            }
            4..=6 => {
                let depth = parent_depth + 1;
                if depth > MAX_CBOR_DEPTH {
                    return Err(Error::Malformed("CBOR nesting too deep"));
                }
                match h.major {
                    4 => {
                        // Every item takes at least one byte: a count beyond the input is
                        // truncated, and checking it first bounds the loop.
                        if h.arg > self.remaining() {
                            return Err(Error::Malformed("truncated CBOR"));
                        }
                        for _ in 0..h.arg {
                            self.item(depth)?;
                        }
                        Ok(())
                    }
                    5 => {
                        if h.arg > self.remaining() / 2 {
                            return Err(Error::Malformed("truncated CBOR"));
                        }
                        let mut keys = BTreeSet::new();
                        for _ in 0..h.arg {
                            let key_start = self.pos;
                            // docs/profile.md §2.1 rule 3: map keys are integers or text,
                            // everywhere.
                            if !matches!(self.data.get(key_start).map(|b| b >> 5), Some(0 | 1 | 3))
                            {
                                return Err(Error::Malformed(
                                    "CBOR map key is not an integer or text",
                                ));
                            }
                            self.item(depth)?;
                            let key = key_id(self.data.get(key_start..self.pos).unwrap_or(&[]));
                            if !keys.insert(key) {
                                return Err(Error::Malformed("duplicate CBOR map key"));
                            }
                            self.item(depth)?;
                        }
                        Ok(())
                    }
                    _ => self.item(depth),
                }
            }
            // Major 7: simple values and floats, accepted where no field expects them.
            _ => Ok(()),
        }
    }
}

fn fixed<const N: usize>(s: &[u8]) -> Result<[u8; N]> {
    s.try_into().map_err(|_| Error::Malformed("truncated CBOR"))
}

/// Identity of an already well-formed encoded key.
fn key_id(encoded: &[u8]) -> KeyId<'_> {
    let mut p = PrePass {
        data: encoded,
        pos: 0,
    };
    match p.head() {
        Ok(Head { major, arg }) if major <= 1 => KeyId::Int(major, arg),
        Ok(Head { major, .. }) if major == 2 || major == 3 => {
            KeyId::Str(major, encoded.get(p.pos..).unwrap_or(&[]))
        }
        _ => KeyId::Other(encoded),
    }
}

/// Checks that `data` is exactly one well-formed CBOR item within the profile's rules:
/// definite lengths only, no duplicate map keys, nesting ≤ [`MAX_CBOR_DEPTH`], valid UTF-8
/// text, no reserved additional information, no trailing bytes (docs/profile.md §4.3).
pub fn check_well_formed(data: &[u8]) -> Result<()> {
    let mut p = PrePass { data, pos: 0 };
    p.item(0)?;
    if p.pos != data.len() {
        return Err(Error::Malformed("trailing bytes after CBOR item"));
    }
    Ok(())
}

/// Strictly decodes one CBOR item: [`check_well_formed`], then ciborium.
pub fn decode(data: &[u8]) -> Result<Value> {
    check_well_formed(data)?;
    ciborium::de::from_reader(data).map_err(|_| Error::Malformed("undecodable CBOR"))
}

/// A key used to look up a CBOR map entry: the profile mixes integer and text keys.
#[derive(Clone, Copy, Debug)]
pub enum Key<'k> {
    /// An integer key (CWT registered claims, COSE labels).
    Int(i64),
    /// A text key (profile data).
    Text(&'k str),
}

/// The entries of a map value, or `None` for any other type.
pub fn as_map(v: &Value) -> Option<&[(Value, Value)]> {
    match v {
        Value::Map(m) => Some(m),
        _ => None,
    }
}

/// The value under `key` in `map` (keys are unique after the pre-pass).
pub fn get<'m>(map: &'m [(Value, Value)], key: Key<'_>) -> Option<&'m Value> {
    map.iter()
        .find(|(k, _)| match (key, k) {
            (Key::Int(i), Value::Integer(n)) => i128::from(*n) == i128::from(i),
            (Key::Text(t), Value::Text(s)) => s == t,
            _ => false,
        })
        .map(|(_, v)| v)
}

/// A signed integer that fits i64.
pub fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(n) => i64::try_from(i128::from(*n)).ok(),
        _ => None,
    }
}

/// An unsigned integer that fits u64.
pub fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(n) => u64::try_from(i128::from(*n)).ok(),
        _ => None,
    }
}

/// A text string.
pub fn as_text(v: &Value) -> Option<&str> {
    match v {
        Value::Text(s) => Some(s),
        _ => None,
    }
}

/// A byte string.
pub fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::Bytes(b) => Some(b),
        _ => None,
    }
}

/// An array.
pub fn as_array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) => Some(a),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(v, &mut out).unwrap();
        out
    }

    fn nested_arrays(depth: usize) -> Vec<u8> {
        let mut v = vec![0x80u8 + 1; depth];
        v.push(0x00);
        v
    }

    #[test]
    fn accepts_simple_items() {
        let v = Value::Map(vec![
            (Value::Integer(1.into()), Value::Text("a".into())),
            (
                Value::Text("x".into()),
                Value::Array(vec![Value::Bytes(vec![1, 2])]),
            ),
        ]);
        assert_eq!(decode(&enc(&v)).unwrap(), v);
        check_well_formed(&[0xf9, 0x3c, 0x00]).unwrap(); // half float 1.0 is accepted
        check_well_formed(&[0x18, 0x01]).unwrap(); // non-shortest form is accepted
    }

    #[test]
    fn rejects_indefinite_lengths() {
        // [_ 1] and (_ h'01') and {_ }.
        for bad in [
            &[0x9f, 0x01, 0xff][..],
            &[0x5f, 0x41, 0x01, 0xff],
            &[0xbf, 0xff],
        ] {
            assert_eq!(
                check_well_formed(bad),
                Err(Error::Malformed("indefinite-length CBOR item"))
            );
        }
        // ciborium alone accepts it — the reason for the pre-pass.
        let v: Value = ciborium::de::from_reader(&[0x9f, 0x01, 0xff][..]).unwrap();
        assert_eq!(v, Value::Array(vec![Value::Integer(1.into())]));
    }

    #[test]
    fn rejects_duplicate_keys_even_non_shortest() {
        assert_eq!(
            check_well_formed(&[0xa2, 0x01, 0x00, 0x01, 0x00]),
            Err(Error::Malformed("duplicate CBOR map key"))
        );
        assert_eq!(
            check_well_formed(&[0xa2, 0x01, 0x00, 0x18, 0x01, 0x00]),
            Err(Error::Malformed("duplicate CBOR map key"))
        );
        assert_eq!(
            check_well_formed(&[0xa2, 0x61, b'a', 0x00, 0x61, b'a', 0x01]),
            Err(Error::Malformed("duplicate CBOR map key"))
        );
        // Same content as text and as an integer: different keys.
        check_well_formed(&[0xa2, 0x61, b'a', 0x00, 0x18, b'a', 0x01]).unwrap();
        check_well_formed(&[0xa2, 0x20, 0x00, 0x00, 0x01]).unwrap(); // -1 and 0
    }

    #[test]
    fn map_keys_are_integers_or_text() {
        for bad in [
            &[0xa1, 0x41, b'a', 0x00][..],   // bstr key
            &[0xa1, 0xf4, 0x00],             // false
            &[0xa1, 0x80, 0x00],             // array
            &[0xa1, 0xc1, 0x00, 0x00],       // tagged int
            &[0xa1, 0xf9, 0x3c, 0x00, 0x00], // float
        ] {
            assert_eq!(
                check_well_formed(bad),
                Err(Error::Malformed("CBOR map key is not an integer or text")),
                "{bad:02x?}"
            );
        }
    }

    #[test]
    fn nesting_limit_is_16() {
        check_well_formed(&nested_arrays(16)).unwrap();
        assert_eq!(
            check_well_formed(&nested_arrays(17)),
            Err(Error::Malformed("CBOR nesting too deep"))
        );
        // Tags count as nesting, so a tag chain cannot recurse without bound.
        let mut tags = vec![0xc1u8; 17];
        tags.push(0x00);
        assert!(check_well_formed(&tags).is_err());
    }

    #[test]
    fn rejects_trailing_truncated_reserved() {
        assert_eq!(
            check_well_formed(&[0x01, 0x02]),
            Err(Error::Malformed("trailing bytes after CBOR item"))
        );
        assert_eq!(
            check_well_formed(&[0x82, 0x01]),
            Err(Error::Malformed("truncated CBOR"))
        );
        assert_eq!(
            check_well_formed(&[]),
            Err(Error::Malformed("truncated CBOR"))
        );
        assert_eq!(
            check_well_formed(&[0x1c]),
            Err(Error::Malformed("reserved CBOR additional information"))
        );
        assert!(check_well_formed(&[0xff]).is_err());
        assert!(check_well_formed(&[0xf8, 0x10]).is_err());
        assert!(check_well_formed(&[0x62, 0xff, 0xfe]).is_err());
        // A huge declared length does not allocate or loop.
        assert!(
            check_well_formed(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err()
        );
        assert!(
            check_well_formed(&[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err()
        );
    }

    #[test]
    fn getters() {
        let m = vec![
            (Value::Integer((-7).into()), Value::Integer(5.into())),
            (Value::Text("k".into()), Value::Text("v".into())),
        ];
        assert_eq!(get(&m, Key::Int(-7)).and_then(as_i64), Some(5));
        assert_eq!(get(&m, Key::Text("k")).and_then(as_text), Some("v"));
        assert!(get(&m, Key::Int(1)).is_none());
        assert_eq!(as_u64(&Value::Integer((-1).into())), None);
    }
}
