//! The trust list (docs/profile.md §2.8, §6.1–6.4): which issuer keys the verifier trusts, signed
//! by an operator-configured trust anchor.

use std::collections::HashMap;

use ciborium::Value;

use crate::cbor::{self, Key};
use crate::cose::{Alg, HeaderAlg, PublicKey, Sign1};
use crate::error::{Error, Result};
use crate::limits::{KID_LEN, MAX_TRUST_LIST_BYTES};

/// What a trusted key may sign (docs/profile.md §2.8 `role`, §6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// An AMO issuer: credentials and delegations.
    Amo,
    /// A complementary insurer: AMC attestations.
    Amc,
    /// A status-list signer.
    Status,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "amo" => Some(Role::Amo),
            "amc" => Some(Role::Amc),
            "status" => Some(Role::Status),
            _ => None,
        }
    }
}

/// One entry of the trust list.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    /// First 8 bytes of the key's RFC 9679 thumbprint.
    pub kid: [u8; KID_LEN],
    /// What the key may sign.
    pub role: Role,
    /// The `iss` every object signed by this key must carry.
    pub iss: String,
    /// The public key.
    pub key: PublicKey,
    /// The one algorithm the key signs with (its COSE_Key `alg`, required here).
    pub alg: Alg,
    /// Start of the key's validity window (NumericDate).
    pub nbf: i64,
    /// End of the key's validity window (NumericDate).
    pub exp: i64,
}

/// A verified trust list: immutable once built.
#[derive(Clone, Debug)]
pub struct TrustList {
    /// Monotonic sequence number (docs/profile.md §6.3: rollback protection).
    pub seq: u64,
    /// `iat` of the list.
    pub issued_at: i64,
    /// `exp` of the list.
    pub expires_at: i64,
    keys: Vec<TrustedKey>,
    by_kid: HashMap<[u8; KID_LEN], usize>,
}

impl TrustList {
    /// Verifies a signed trust list against the configured anchors and returns it, or
    /// names the problem (docs/profile.md §6.2, checks in order).
    pub fn verify(
        data: &[u8],
        anchors: &[PublicKey],
        now: i64,
        held_seq: Option<u64>,
    ) -> Result<TrustList> {
        if data.len() > MAX_TRUST_LIST_BYTES {
            return Err(Error::MalformedTrustList("too large"));
        }
        // docs/profile.md §6.2, checks in order. 1: strict Sign1, protected alg and 8-byte kid.
        let s = Sign1::parse(data).map_err(|e| Error::MalformedTrustList(malformed_detail(&e)))?;
        let alg = match s.alg {
            HeaderAlg::Known(a) => a,
            HeaderAlg::Absent => {
                return Err(Error::MalformedTrustList("alg not in protected header"))
            }
            HeaderAlg::Unsupported | HeaderAlg::Invalid => {
                return Err(Error::MalformedTrustList("unsupported alg"))
            }
        };
        if s.kid.len() != KID_LEN {
            return Err(Error::MalformedTrustList("kid not in protected header"));
        }
        // 2: a configured anchor.
        let anchor = anchors
            .iter()
            .find(|a| a.kid()[..] == s.kid[..])
            .ok_or(Error::UnknownTrustAnchor)?;
        // 3: alg fits the anchor (no algorithm taken from the message alone, docs/profile.md §3.5)
        // and the signature verifies; the payload is read only after that.
        if alg != anchor.natural_alg() || !s.verify(anchor, alg, b"").unwrap_or(false) {
            return Err(Error::BadTrustListSignature);
        }
        // 4: payload.
        let list = parse_payload(s.payload())?;
        // 5: not expired.
        if now > list.expires_at {
            return Err(Error::TrustListExpired);
        }
        // 6: no rollback; equal sequence is the same list fetched again (docs/profile.md §6.3).
        if let Some(held) = held_seq {
            if list.seq < held {
                return Err(Error::TrustListRollback {
                    seq: list.seq,
                    held,
                });
            }
        }
        // 7: every kid is its key's thumbprint prefix (docs/profile.md §3.4).
        if let Some(i) = list.keys.iter().position(|k| k.kid != k.key.kid()) {
            return Err(Error::TrustListBadKid(i));
        }
        Ok(list)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the list has no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key with this kid and role whose window contains `now` (docs/profile.md §6.4: a
    /// key is usable only within its nbf..exp).
    pub fn find(&self, kid: &[u8], role: Role, now: i64) -> Option<&TrustedKey> {
        let kid: [u8; KID_LEN] = kid.try_into().ok()?;
        self.by_kid
            .get(&kid)
            .and_then(|&i| self.keys.get(i))
            .filter(|k| k.role == role && k.nbf <= now && now <= k.exp)
    }
}

fn malformed_detail(e: &Error) -> &'static str {
    match e {
        Error::Malformed(d) => d,
        _ => "not a COSE_Sign1",
    }
}

const BAD_FIELD: Error = Error::MalformedTrustList("missing or mistyped field");

fn parse_payload(payload: &[u8]) -> Result<TrustList> {
    let v = cbor::decode(payload).map_err(|e| Error::MalformedTrustList(malformed_detail(&e)))?;
    let m = cbor::as_map(&v).ok_or(BAD_FIELD)?;
    let field = |k: &str| cbor::get(m, Key::Text(k)).ok_or(BAD_FIELD);
    if cbor::as_u64(field("v")?) != Some(1) {
        return Err(Error::MalformedTrustList("unsupported version"));
    }
    let seq = cbor::as_u64(field("seq")?).ok_or(BAD_FIELD)?;
    let issued_at = cbor::as_i64(field("iat")?).ok_or(BAD_FIELD)?;
    let expires_at = cbor::as_i64(field("exp")?).ok_or(BAD_FIELD)?;
    let entries = cbor::as_array(field("keys")?).ok_or(BAD_FIELD)?;
    let mut keys = Vec::with_capacity(entries.len());
    let mut by_kid: HashMap<[u8; KID_LEN], usize> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        let k = parse_key(e)?;
        // docs/profile.md §2.8, §3.4: a kid selects one key; a list with two keys sharing one is
        // refused.
        if by_kid.insert(k.kid, i).is_some() {
            return Err(Error::MalformedTrustList("duplicate kid"));
        }
        keys.push(k);
    }
    Ok(TrustList {
        seq,
        issued_at,
        expires_at,
        keys,
        by_kid,
    })
}

fn parse_key(e: &Value) -> Result<TrustedKey> {
    let m = cbor::as_map(e).ok_or(BAD_FIELD)?;
    let field = |k: &str| cbor::get(m, Key::Text(k)).ok_or(BAD_FIELD);
    let kid: [u8; KID_LEN] = cbor::as_bytes(field("kid")?)
        .and_then(|b| b.try_into().ok())
        .ok_or(Error::MalformedTrustList("kid is not 8 bytes"))?;
    let role = cbor::as_text(field("role")?)
        .and_then(Role::parse)
        .ok_or(Error::MalformedTrustList("unknown role"))?;
    let iss = cbor::as_text(field("iss")?).ok_or(BAD_FIELD)?.to_owned();
    let key = PublicKey::from_value(field("key")?.clone())
        .map_err(|_| Error::MalformedTrustList("unusable key"))?;
    // docs/profile.md §2.2: the key carries its alg (label 3); it is the only alg it may sign with.
    let alg = key
        .alg_param()
        .ok_or(Error::MalformedTrustList("key without alg"))?;
    let nbf = cbor::as_i64(field("nbf")?).ok_or(BAD_FIELD)?;
    let exp = cbor::as_i64(field("exp")?).ok_or(BAD_FIELD)?;
    Ok(TrustedKey {
        kid,
        role,
        iss,
        key,
        alg,
        nbf,
        exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn anchors(a: &Signer) -> Vec<PublicKey> {
        vec![a.public_key()]
    }

    #[test]
    fn verifies_and_finds_keys() {
        let pki = Pki::new();
        let tl =
            TrustList::verify(&pki.trust_list_bytes(7), &anchors(&pki.anchor), NOW, None).unwrap();
        assert_eq!(tl.seq, 7);
        assert_eq!(tl.len(), 2);
        let kid = pki.amo.kid();
        let k = tl.find(&kid, Role::Amo, NOW).unwrap();
        assert_eq!(k.iss, ISS);
        assert!(tl.find(&kid, Role::Status, NOW).is_none());
        // Outside the key window.
        assert!(tl.find(&kid, Role::Amo, NOW + 10 * YEAR).is_none());
        assert!(tl.find(&kid, Role::Amo, NOW - 10 * YEAR).is_none());
        assert!(tl.find(b"short", Role::Amo, NOW).is_none());
        // EdDSA anchor works too.
        let mut pki2 = Pki::new();
        pki2.anchor = Signer::eddsa();
        let tl2 = TrustList::verify(&pki2.trust_list_bytes(1), &anchors(&pki2.anchor), NOW, None);
        assert!(tl2.is_ok());
    }

    #[test]
    fn refusals_name_the_problem() {
        let pki = Pki::new();
        let data = pki.trust_list_bytes(5);
        let other = Signer::es256();
        let e = TrustList::verify(&data, &anchors(&other), NOW, None).unwrap_err();
        assert_eq!(e.to_string(), "unknown trust anchor");

        let mut bad_sig = data.clone();
        let n = bad_sig.len();
        bad_sig[n - 1] ^= 1;
        let e = TrustList::verify(&bad_sig, &anchors(&pki.anchor), NOW, None).unwrap_err();
        assert_eq!(e.to_string(), "bad trust list signature");

        let e = TrustList::verify(&data, &anchors(&pki.anchor), NOW, Some(6)).unwrap_err();
        assert_eq!(e.to_string(), "rollback: sequence 5 is lower than held 6");
        // Equal sequence is accepted.
        assert!(TrustList::verify(&data, &anchors(&pki.anchor), NOW, Some(5)).is_ok());

        let e = TrustList::verify(&data, &anchors(&pki.anchor), NOW + 2 * YEAR, None).unwrap_err();
        assert_eq!(e.to_string(), "trust list expired");

        let e = TrustList::verify(b"\x01", &anchors(&pki.anchor), NOW, None).unwrap_err();
        assert!(e.to_string().starts_with("malformed trust list: "), "{e}");
    }

    #[test]
    fn bad_kid_is_refused() {
        let pki = Pki::new();
        let mut entry = pki.trust_entry(&pki.status, "status");
        if let Value::Map(m) = &mut entry {
            m[0].1 = Value::Bytes(vec![0; 8]);
        }
        let payload = pki.trust_payload(3, vec![pki.trust_entry(&pki.amo, "amo"), entry]);
        let data = sign1(&pki.anchor, &prot(&pki.anchor, true), &enc(&payload), true);
        let e = TrustList::verify(&data, &anchors(&pki.anchor), NOW, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "key 1: kid is not the RFC 9679 thumbprint prefix"
        );
    }

    #[test]
    fn header_rules() {
        let pki = Pki::new();
        let payload = enc(&pki.trust_payload(1, vec![]));
        // kid missing from the protected bucket.
        let data = sign1(&pki.anchor, &prot(&pki.anchor, false), &payload, true);
        let e = TrustList::verify(&data, &anchors(&pki.anchor), NOW, None).unwrap_err();
        assert_eq!(e, Error::MalformedTrustList("kid not in protected header"));
        // alg of the header differs from the anchor's.
        let p = enc(&Value::Map(vec![
            (int(1), int(-8)),
            (int(4), Value::Bytes(pki.anchor.kid().to_vec())),
        ]));
        let data = sign1(&pki.anchor, &p, &payload, true);
        let e = TrustList::verify(&data, &anchors(&pki.anchor), NOW, None).unwrap_err();
        assert_eq!(e, Error::BadTrustListSignature);
        // Unsupported alg: malformed (check 1).
        let p = enc(&Value::Map(vec![
            (int(1), int(-35)),
            (int(4), Value::Bytes(pki.anchor.kid().to_vec())),
        ]));
        let data = sign1(&pki.anchor, &p, &payload, true);
        let e = TrustList::verify(&data, &anchors(&pki.anchor), NOW, None).unwrap_err();
        assert_eq!(e, Error::MalformedTrustList("unsupported alg"));
    }

    #[test]
    fn checks_run_in_profile_order() {
        let pki = Pki::new();
        let a = anchors(&pki.anchor);
        // Expired and rolled back: expiry (check 5) is reported before rollback (check 6).
        let data = pki.trust_list_bytes(5);
        let e = TrustList::verify(&data, &a, NOW + 2 * YEAR, Some(6)).unwrap_err();
        assert_eq!(e, Error::TrustListExpired);
        // Rolled back with a bad kid: rollback (6) before the kid check (7).
        let mut entry = pki.trust_entry(&pki.amo, "amo");
        if let Value::Map(m) = &mut entry {
            m[0].1 = Value::Bytes(vec![9; 8]);
        }
        let payload = enc(&pki.trust_payload(1, vec![entry.clone()]));
        let data = sign1(&pki.anchor, &prot(&pki.anchor, true), &payload, true);
        let e = TrustList::verify(&data, &a, NOW, Some(2)).unwrap_err();
        assert_eq!(e, Error::TrustListRollback { seq: 1, held: 2 });
        // Two keys with one kid: malformed (check 4), whatever their thumbprints.
        let payload = enc(&pki.trust_payload(1, vec![entry.clone(), entry]));
        let data = sign1(&pki.anchor, &prot(&pki.anchor, true), &payload, true);
        let e = TrustList::verify(&data, &a, NOW, None).unwrap_err();
        assert_eq!(e.to_string(), "malformed trust list: duplicate kid");
        // Unknown anchor (2) before the signature (3): tampered and unknown → unknown.
        let mut tampered = pki.trust_list_bytes(1);
        let n = tampered.len();
        tampered[n - 1] ^= 1;
        let e = TrustList::verify(&tampered, &anchors(&Signer::es256()), NOW, None).unwrap_err();
        assert_eq!(e, Error::UnknownTrustAnchor);
    }
}
