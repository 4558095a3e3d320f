//! Token Status List (IETF OAuth WG draft, CWT form; docs/profile.md §2.9, §6.5–6.8): the
//! bit array, the signed list, and the lists of a snapshot.

use std::collections::HashMap;
use std::sync::Arc;

use ciborium::Value;

use crate::cbor::{self, Key};
use crate::cose::{HeaderAlg, Sign1};
use crate::encoding::inflate_capped;
use crate::error::{Error, Result};
use crate::limits::{KID_LEN, MAX_STATUS_LIST_BYTES, MAX_STATUS_LIST_INFLATED_BYTES};
use crate::trust::{Role, TrustList};

/// CWT claim key of the status list (draft §5.2: `status_list` = 65533).
const CLAIM_STATUS_LIST: i64 = 65533;
/// CWT claim key of the time to live (draft §5.2: `ttl` = 65534).
const CLAIM_TTL: i64 = 65534;

/// A decoded status list: `bits` per entry, packed LSB first (draft §4.1).
#[derive(Clone, PartialEq, Eq)]
pub struct StatusBits {
    bits: u8,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for StatusBits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusBits")
            .field("bits", &self.bits)
            .field("len", &self.len())
            .finish()
    }
}

impl StatusBits {
    /// Builds a list from `bits` (1, 2, 4 or 8, draft §4.1) and the inflated bytes, kept
    /// packed as they are: a list costs its bit size (the spare capacity that inflating
    /// leaves is given back).
    pub fn new(bits: u8, mut bytes: Vec<u8>) -> Result<StatusBits> {
        if !matches!(bits, 1 | 2 | 4 | 8) {
            return Err(Error::MalformedStatusList("bits is not 1, 2, 4 or 8"));
        }
        bytes.shrink_to_fit();
        Ok(StatusBits { bits, bytes })
    }

    /// Decodes the CBOR `{"bits": uint, "lst": bstr zlib}` map (draft §4.3).
    pub fn from_cbor(data: &[u8]) -> Result<StatusBits> {
        let v = cbor::decode(data).map_err(|e| Error::MalformedStatusList(detail(&e)))?;
        StatusBits::from_value(&v)
    }

    fn from_value(v: &Value) -> Result<StatusBits> {
        let m = cbor::as_map(v).ok_or(BAD_FIELD)?;
        let bits = cbor::get(m, Key::Text("bits"))
            .and_then(cbor::as_u64)
            .ok_or(BAD_FIELD)?;
        let bits = u8::try_from(bits)
            .map_err(|_| Error::MalformedStatusList("bits is not 1, 2, 4 or 8"))?;
        let lst = cbor::get(m, Key::Text("lst"))
            .and_then(cbor::as_bytes)
            .ok_or(BAD_FIELD)?;
        let bytes = inflate_capped(lst, MAX_STATUS_LIST_INFLATED_BYTES)
            .map_err(|e| Error::MalformedStatusList(detail(&e)))?;
        StatusBits::new(bits, bytes)
    }

    /// Bits per entry.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        let total_bits = u64::try_from(self.bytes.len())
            .unwrap_or(u64::MAX)
            .saturating_mul(8);
        total_bits / u64::from(self.bits)
    }

    /// True when the list has no entry.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The status of entry `index`: byte `index*bits/8`, shifted right by
    /// `(index*bits) % 8`, masked to `bits` (draft §4.1, LSB first); `None` beyond the end.
    pub fn get(&self, index: u64) -> Option<u8> {
        let bit = index.checked_mul(u64::from(self.bits))?;
        let byte = usize::try_from(bit / 8).ok()?;
        let shift = bit % 8;
        let mask = u16::from(u8::MAX) >> (8 - self.bits);
        let b = *self.bytes.get(byte)?;
        Some(((u16::from(b) >> shift) & mask) as u8)
    }
}

/// A verified status list (CWT form): immutable once built.
#[derive(Clone, Debug)]
pub struct StatusList {
    /// `sub`: the list's URI, which credentials reference.
    pub uri: String,
    /// `iat`.
    pub issued_at: i64,
    /// `exp` (required by this profile).
    pub expires_at: i64,
    /// `ttl` in seconds, if given.
    pub ttl: Option<u64>,
    /// The entries.
    pub bits: StatusBits,
}

const BAD_FIELD: Error = Error::MalformedStatusList("missing or mistyped field");

fn detail(e: &Error) -> &'static str {
    match e {
        Error::Malformed(d) | Error::MalformedStatusList(d) => d,
        _ => "not a COSE_Sign1",
    }
}

impl StatusList {
    /// Verifies a signed status-list CWT with a trust-list key of role "status" that is in
    /// its window at `now`, and refuses an expired list.
    pub fn verify(data: &[u8], trust: &TrustList, now: i64) -> Result<StatusList> {
        if data.len() > MAX_STATUS_LIST_BYTES {
            return Err(Error::MalformedStatusList("too large"));
        }
        // docs/profile.md §6.5, checks in order. 1: strict Sign1, protected alg and kid.
        let s = Sign1::parse(data).map_err(|e| Error::MalformedStatusList(detail(&e)))?;
        let alg = match s.alg {
            HeaderAlg::Known(a) => a,
            HeaderAlg::Absent => {
                return Err(Error::MalformedStatusList("alg not in protected header"))
            }
            HeaderAlg::Unsupported | HeaderAlg::Invalid => {
                return Err(Error::MalformedStatusList("unsupported alg"))
            }
        };
        if s.kid.len() != KID_LEN {
            return Err(Error::MalformedStatusList("kid not in protected header"));
        }
        // typ (16) is not checked: key roles already exclude type confusion (docs/profile.md §2.9).
        // 2: a usable key of role "status" (docs/profile.md §6.4).
        let signer = trust
            .find(&s.kid, Role::Status, now)
            .ok_or(Error::UnknownStatusListSigner)?;
        // 3: the header alg is the one the trust list gives the key, and the signature verifies.
        if alg != signer.alg || !s.verify(&signer.key, alg, b"").unwrap_or(false) {
            return Err(Error::BadStatusListSignature);
        }
        // 4: payload.
        let v = cbor::decode(s.payload()).map_err(|e| Error::MalformedStatusList(detail(&e)))?;
        let m = cbor::as_map(&v).ok_or(BAD_FIELD)?;
        let uri = cbor::get(m, Key::Int(2))
            .and_then(cbor::as_text)
            .ok_or(BAD_FIELD)?
            .to_owned();
        let issued_at = cbor::get(m, Key::Int(6))
            .and_then(cbor::as_i64)
            .ok_or(BAD_FIELD)?;
        let expires_at = cbor::get(m, Key::Int(4))
            .and_then(cbor::as_i64)
            .ok_or(BAD_FIELD)?;
        let ttl = match cbor::get(m, Key::Int(CLAIM_TTL)) {
            None => None,
            Some(t) => Some(cbor::as_u64(t).ok_or(BAD_FIELD)?),
        };
        let bits =
            StatusBits::from_value(cbor::get(m, Key::Int(CLAIM_STATUS_LIST)).ok_or(BAD_FIELD)?)?;
        // 5: not expired (no grace at load, docs/profile.md §6.5).
        if now > expires_at {
            return Err(Error::StatusListExpired);
        }
        Ok(StatusList {
            uri,
            issued_at,
            expires_at,
            ttl,
            bits,
        })
    }
}

/// Why a status lookup did not give VALID (docs/profile.md §6.7, §6.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFail {
    /// No list with that URI is held.
    NotLoaded,
    /// The list is past its `exp` plus the grace.
    Expired,
    /// The index is beyond the list.
    BeyondList,
    /// Status INVALID, or an unknown value (fail closed).
    Revoked,
    /// Status SUSPENDED.
    Suspended,
}

/// The status lists of a verification snapshot, by URI (docs/profile.md §6.5).
#[derive(Clone, Debug, Default)]
pub struct StatusLists {
    by_uri: HashMap<String, Arc<StatusList>>,
}

impl StatusLists {
    /// Indexes `lists` by URI; of two lists for one URI, the most recently issued wins.
    pub fn new(lists: Vec<Arc<StatusList>>) -> StatusLists {
        let mut by_uri: HashMap<String, Arc<StatusList>> = HashMap::new();
        for l in lists {
            match by_uri.get(&l.uri) {
                Some(held) if held.issued_at > l.issued_at => {}
                _ => {
                    by_uri.insert(l.uri.clone(), l);
                }
            }
        }
        StatusLists { by_uri }
    }

    /// Number of lists held.
    pub fn len(&self) -> usize {
        self.by_uri.len()
    }

    /// True when no list is held.
    pub fn is_empty(&self) -> bool {
        self.by_uri.is_empty()
    }

    /// The status at `idx` of the list `uri`, judged at `now` with `grace` seconds past the
    /// list's `exp` (docs/profile.md §6.6–6.8): `Ok` for VALID (0).
    pub fn status(
        &self,
        idx: u64,
        uri: &str,
        now: i64,
        grace: i64,
    ) -> std::result::Result<(), StatusFail> {
        let list = self.by_uri.get(uri).ok_or(StatusFail::NotLoaded)?;
        if i128::from(now) > i128::from(list.expires_at) + i128::from(grace) {
            return Err(StatusFail::Expired);
        }
        match list.bits.get(idx) {
            None => Err(StatusFail::BeyondList),
            Some(0) => Ok(()),
            Some(2) => Err(StatusFail::Suspended),
            Some(_) => Err(StatusFail::Revoked),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn draft_example_two_bits() {
        // draft §4.3 / vectors status_list_encoding2_cbor: byte_array [0xc9, 0x44, 0xf9].
        let data = hex("a2646269747302636c73744b78da3be9f2130003df0207");
        let b = StatusBits::from_cbor(&data).unwrap();
        assert_eq!(b.bits(), 2);
        assert_eq!(b.len(), 12);
        let expect = [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3];
        for (i, e) in expect.iter().enumerate() {
            assert_eq!(b.get(i as u64), Some(*e), "index {i}");
        }
        assert_eq!(b.get(12), None);
        assert_eq!(b.get(u64::MAX), None);
    }

    #[test]
    fn one_bit_lsb_first() {
        // 0xb9 = 1011_1001: indices 0, 3, 4, 5, 7 set (draft §4.1 example).
        let b = StatusBits::new(1, vec![0xb9, 0xa3]).unwrap();
        let got: Vec<u8> = (0..8).map(|i| b.get(i).unwrap()).collect();
        assert_eq!(got, [1, 0, 0, 1, 1, 1, 0, 1]);
        assert_eq!(b.len(), 16);
        assert_eq!(b.get(8), Some(1));
        assert_eq!(b.get(16), None);
        let b4 = StatusBits::new(4, vec![0x21]).unwrap();
        assert_eq!((b4.get(0), b4.get(1)), (Some(1), Some(2)));
        let b8 = StatusBits::new(8, vec![7]).unwrap();
        assert_eq!(b8.get(0), Some(7));
        assert!(StatusBits::new(3, vec![]).is_err());
    }

    #[test]
    fn status_map_refusals() {
        let bomb = enc(&Value::Map(vec![
            (text("bits"), int(1)),
            (
                text("lst"),
                Value::Bytes(zlib(&vec![0u8; MAX_STATUS_LIST_INFLATED_BYTES + 1])),
            ),
        ]));
        assert_eq!(
            StatusBits::from_cbor(&bomb),
            Err(Error::MalformedStatusList(
                "inflated payload exceeds its limit"
            ))
        );
        let bad_bits = enc(&Value::Map(vec![
            (text("bits"), int(3)),
            (text("lst"), Value::Bytes(zlib(&[0]))),
        ]));
        assert!(StatusBits::from_cbor(&bad_bits).is_err());
        assert!(StatusBits::from_cbor(b"\xa0").is_err());
    }

    #[test]
    fn signed_status_list() {
        let pki = Pki::new();
        let tl = pki.trust_list();
        let sl = StatusList::verify(
            &pki.status_list_bytes(URI, 2, &[(3, 1), (4, 2)], NOW + DAY),
            &tl,
            NOW,
        )
        .unwrap();
        assert_eq!(sl.uri, URI);
        assert_eq!(sl.bits.get(3), Some(1));
        assert_eq!(sl.bits.get(4), Some(2));
        assert_eq!(sl.bits.get(5), Some(0));
        assert_eq!(sl.ttl, Some(3600));

        let e =
            StatusList::verify(&pki.status_list_bytes(URI, 1, &[], NOW - 1), &tl, NOW).unwrap_err();
        assert_eq!(e, Error::StatusListExpired);

        // Signed by the AMO key: not a status signer.
        let payload = pki.status_payload(URI, 1, &[], NOW + DAY);
        let by_amo = sign1(&pki.amo, &prot(&pki.amo, true), &enc(&payload), true);
        assert_eq!(
            StatusList::verify(&by_amo, &tl, NOW).unwrap_err(),
            Error::UnknownStatusListSigner
        );

        // Header alg differs from the key's (EdDSA key, ES256 header): bad signature (check 3).
        let p = enc(&Value::Map(vec![
            (int(1), int(-7)),
            (int(4), Value::Bytes(pki.status.kid().to_vec())),
        ]));
        let wrong_alg = sign1(&pki.status, &p, &enc(&payload), true);
        assert_eq!(
            StatusList::verify(&wrong_alg, &tl, NOW)
                .unwrap_err()
                .to_string(),
            "bad status list signature"
        );
        // Any typ, or none, is accepted (docs/profile.md §2.9: typ is not checked).
        let p = enc(&Value::Map(vec![
            (int(1), int(-8)),
            (int(4), Value::Bytes(pki.status.kid().to_vec())),
            (int(16), int(61)),
        ]));
        assert!(
            StatusList::verify(&sign1(&pki.status, &p, &enc(&payload), true), &tl, NOW).is_ok()
        );
        let mut bad = pki.status_list_bytes(URI, 1, &[], NOW + DAY);
        let n = bad.len();
        bad[n - 2] ^= 0x40;
        assert_eq!(
            StatusList::verify(&bad, &tl, NOW).unwrap_err(),
            Error::BadStatusListSignature
        );
    }

    /// Public conformance data (optional): `APCV_VECTORS_DIR`, else `../shared/vectors`
    /// beside the checkout. The Python suite runs every vector; this checks the decoder
    /// on the draft's examples when they are present and says so when they are not.
    fn vectors_dir() -> Option<std::path::PathBuf> {
        let dir = std::env::var_os("APCV_VECTORS_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors")
            });
        dir.is_dir().then_some(dir)
    }

    fn markdown_hex(path: &std::path::Path) -> Vec<u8> {
        let text = std::fs::read_to_string(path).unwrap();
        let hexes: String = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect();
        hex(&hexes)
    }

    #[test]
    fn draft_vectors_when_present() {
        let Some(dir) = vectors_dir() else {
            eprintln!("skipped: public vectors not found (set APCV_VECTORS_DIR)");
            return;
        };
        // Another vector set may not hold these two examples: each is checked when present.
        let example = |name: &str| {
            let path = dir.join("status-list").join(name);
            let found = path.is_file();
            if !found {
                eprintln!("skipped: {} not in the vector set", path.display());
            }
            found.then(|| StatusBits::from_cbor(&markdown_hex(&path)).unwrap())
        };
        if let Some(one) = example("status_list_encoding_cbor.md") {
            let got: Vec<u8> = (0..one.len()).map(|i| one.get(i).unwrap()).collect();
            assert_eq!(got, [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]);
        }
        if let Some(long4) = example("status_list_encoding4_cbor.md") {
            assert_eq!(long4.len(), 1 << 20);
            for (i, v) in [(0, 1), (1993, 2), (35460, 3), (1030205, 15), (1, 0)] {
                assert_eq!(long4.get(i), Some(v), "index {i}");
            }
            assert_eq!(long4.get(1 << 20), None);
        }
    }
}
