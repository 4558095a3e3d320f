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
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum KeyId<'a> {
    Int(u8, u64),
    Str(u8, &'a [u8]),
    Other(&'a [u8]),
}

/// Keys of one map compared by a linear search, without allocating, up to this many (the
/// profile's maps have at most a dozen); a map with more also goes through a `BTreeSet`.
const FEW_KEYS: usize = 16;

/// The keys of one map seen so far, for duplicate detection.
struct SeenKeys<'a> {
    few: [KeyId<'a>; FEW_KEYS],
    len: usize,
    many: BTreeSet<KeyId<'a>>,
}

impl<'a> SeenKeys<'a> {
    fn new() -> SeenKeys<'a> {
        SeenKeys {
            few: [KeyId::Other(&[]); FEW_KEYS],
            len: 0,
            many: BTreeSet::new(),
        }
    }

    /// Adds `key`; false when it was already there.
    fn insert(&mut self, key: KeyId<'a>) -> bool {
        if self.few.get(..self.len).unwrap_or(&[]).contains(&key) {
            return false;
        }
        match self.few.get_mut(self.len) {
            Some(slot) => {
                *slot = key;
                self.len += 1;
                true
            }
            None => self.many.insert(key),
        }
    }
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
                        let mut keys = SeenKeys::new();
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

/// Strictly decodes one CBOR item: [`check_well_formed`], then the [`Value`] built directly
/// from the checked bytes ([`build`]), or by ciborium for an item outside that common subset.
pub fn decode(data: &[u8]) -> Result<Value> {
    check_well_formed(data)?;
    match build(data) {
        Some(v) => Ok(v),
        None => decode_with_ciborium(data),
    }
}

/// ciborium's own decoding into a [`Value`] (of an item already checked well-formed).
fn decode_with_ciborium(data: &[u8]) -> Result<Value> {
    ciborium::de::from_reader(data).map_err(|_| Error::Malformed("undecodable CBOR"))
}

/// The [`Value`] ciborium decodes from `data`, already checked by [`check_well_formed`], built
/// in one walk over the bytes without serde's layers (≈ 3× less CPU than ciborium's
/// `from_reader` on the profile's objects, docs/benchmarks.md "Core: what each lever was
/// predicted to do"). Only the items whose decoding is plain — integers, byte and text strings,
/// arrays, maps, tags other than the bignums (2, 3: ciborium turns them into integers), false,
/// true and null — are built here; for anything else (floats, other simple values, bignums)
/// it returns `None` and the caller lets ciborium decode the whole item, so the result is
/// always ciborium's (test `build_is_ciborium`).
fn build(data: &[u8]) -> Option<Value> {
    let mut b = Builder { data, pos: 0 };
    let v = b.item()?;
    (b.pos == data.len()).then_some(v)
}

/// The walk of [`build`] over well-formed bytes: a malformed input (which the pre-pass has
/// refused before) ends it with `None`, never a panic.
struct Builder<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Builder<'a> {
    fn take(&mut self, n: u64) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(usize::try_from(n).ok()?)?;
        let s = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    /// A container's capacity for `count` items: each takes at least a byte.
    fn capacity(&self, count: u64) -> usize {
        usize::try_from(count)
            .unwrap_or(usize::MAX)
            .min(self.data.len().saturating_sub(self.pos))
    }

    /// Major type, additional information and argument of the next head (RFC 8949 §3).
    fn head(&mut self) -> Option<(u8, u8, u64)> {
        let ib = *self.data.get(self.pos)?;
        self.pos += 1;
        let ai = ib & 0x1f;
        let arg = match ai {
            0..=23 => u64::from(ai),
            24 => u64::from(*self.take(1)?.first()?),
            25 => u64::from(u16::from_be_bytes(self.take(2)?.try_into().ok()?)),
            26 => u64::from(u32::from_be_bytes(self.take(4)?.try_into().ok()?)),
            27 => u64::from_be_bytes(self.take(8)?.try_into().ok()?),
            _ => return None,
        };
        Some((ib >> 5, ai, arg))
    }

    fn item(&mut self) -> Option<Value> {
        let (major, ai, arg) = self.head()?;
        Some(match major {
            0 => Value::Integer(arg.into()),
            // -1 - arg: from -1 to -2^64, all within ciborium's integers.
            1 => Value::Integer(ciborium::value::Integer::try_from(-1 - i128::from(arg)).ok()?),
            2 => Value::Bytes(self.take(arg)?.to_vec()),
            3 => Value::Text(std::str::from_utf8(self.take(arg)?).ok()?.to_owned()),
            4 => {
                let mut items = Vec::with_capacity(self.capacity(arg));
                for _ in 0..arg {
                    items.push(self.item()?);
                }
                Value::Array(items)
            }
            5 => {
                let mut entries = Vec::with_capacity(self.capacity(arg));
                for _ in 0..arg {
                    let key = self.item()?;
                    entries.push((key, self.item()?));
                }
                Value::Map(entries)
            }
            6 if arg != 2 && arg != 3 => Value::Tag(arg, Box::new(self.item()?)),
            7 => match ai {
                20 => Value::Bool(false),
                21 => Value::Bool(true),
                22 => Value::Null,
                _ => return None,
            },
            _ => return None,
        })
    }
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

        // Beyond the keys compared linearly: a duplicate of an early or a late key.
        let big = |last: u8| {
            let mut m = vec![0xb8, 40];
            for k in 0..39u8 {
                m.extend_from_slice(&[0x18, k, 0x00]);
            }
            m.extend_from_slice(&[0x18, last, 0x00]);
            m
        };
        check_well_formed(&big(39)).unwrap();
        for dup in [0, 15, 16, 30] {
            assert_eq!(
                check_well_formed(&big(dup)),
                Err(Error::Malformed("duplicate CBOR map key")),
                "{dup}"
            );
        }
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

    /// Every item the pre-pass lets through decodes to ciborium's value, whether built
    /// directly or handed to ciborium (floats, simple values, bignums).
    fn assert_as_ciborium(bytes: &[u8]) {
        if check_well_formed(bytes).is_ok() {
            // Compared as written out, since a NaN is not equal to itself.
            let (ours, theirs) = (decode(bytes), decode_with_ciborium(bytes));
            assert_eq!(format!("{ours:?}"), format!("{theirs:?}"), "{bytes:02x?}");
        }
    }

    fn any_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            any::<u64>().prop_map(|n| Value::Integer(n.into())),
            any::<i64>().prop_map(|n| Value::Integer(n.into())),
            (0..=u64::MAX).prop_map(|n| Value::Integer(
                ciborium::value::Integer::try_from(-1 - i128::from(n)).unwrap()
            )),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
            ".{0,12}".prop_map(Value::Text),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
            any::<f64>().prop_map(Value::Float),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            any::<i32>().prop_map(|n| Value::Integer(n.into())),
                            "[a-z]{0,3}".prop_map(Value::Text),
                        ],
                        inner.clone()
                    ),
                    0..6
                )
                .prop_map(Value::Map),
                (0u64..40, inner).prop_map(|(t, v)| Value::Tag(t, Box::new(v))),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn build_is_ciborium(v in any_value()) {
            assert_as_ciborium(&enc(&v));
        }

        #[test]
        fn build_is_ciborium_on_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            assert_as_ciborium(&bytes);
        }
    }

    #[test]
    fn build_is_ciborium_at_the_edges() {
        for bytes in [
            &[0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..], // 2^64 - 1
            &[0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],     // -2^64
            &[0x3b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],     // -2^63
            &[0x19, 0x00, 0x01],                                         // non-shortest 1
            &[0x79, 0x00, 0x01, b'a'],                                   // non-shortest text
            &[0xc2, 0x42, 0x01, 0x00],                                   // bignum 256
            &[0xc3, 0x41, 0x00],                                         // bignum -1
            &[0xc2, 0x01],                                               // tag 2 on an int
            &[0xd2, 0x84, 0x40, 0xa0, 0x40, 0x40],                       // COSE_Sign1 shape
            &[0xf4],
            &[0xf5],
            &[0xf6],
            &[0xf7],                   // undefined
            &[0xf0],                   // simple 16
            &[0xf8, 0x20],             // simple 32
            &[0xf9, 0x3c, 0x00],       // half float
            &[0xfa, 0x7f, 0xc0, 0, 0], // NaN
            &[0x82, 0xf9, 0x3c, 0x00, 0x01],
            &[0xa1, 0x61, b'k', 0xf7],
        ] {
            assert_as_ciborium(bytes);
        }
        assert_eq!(
            decode(&[0xc2, 0x42, 0x01, 0x00]).unwrap(),
            Value::Integer(256.into())
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
