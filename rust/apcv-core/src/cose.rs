//! COSE_Sign1 (RFC 9052 §4.2), COSE_Key (RFC 9052 §7, RFC 9053) and key thumbprints
//! (RFC 9679), decoded by the strict [`crate::cbor`] decoder, their headers and keys read
//! with coset, and verified with ring on raw bytes.

use ciborium::Value;
use coset::{
    iana, AsCborValue, CoseKey, Header, Label, RegisteredLabel, RegisteredLabelWithPrivate,
};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519};

use crate::cbor;
use crate::error::{Error, Result};
use crate::limits::{KID_LEN, MAX_COSE_KEY_BYTES};

/// CBOR tag of a COSE_Sign1 (RFC 9052 §4.2).
pub const COSE_SIGN1_TAG: u64 = 18;

/// Header labels this profile understands, the only ones allowed in `crit`
/// (docs/profile.md §2.3: alg 1, kid 4, typ 16 of RFC 9596).
const UNDERSTOOD_CRIT_LABELS: [i64; 3] = [1, 4, 16];

/// A signature algorithm the profile allows (RFC 9053 §2.1, §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
    /// ECDSA P-256 SHA-256, signature raw r‖s (64 bytes).
    Es256,
    /// EdDSA with Ed25519 (64-byte signature).
    EdDsa,
}

impl Alg {
    /// The algorithm for a COSE algorithm identifier, if the profile allows it.
    pub fn from_id(id: i64) -> Option<Alg> {
        match id {
            -7 => Some(Alg::Es256),
            -8 => Some(Alg::EdDsa),
            _ => None,
        }
    }

    /// The COSE algorithm identifier.
    pub fn id(self) -> i64 {
        match self {
            Alg::Es256 => -7,
            Alg::EdDsa => -8,
        }
    }
}

/// What a header says about `alg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderAlg {
    /// No `alg` label.
    Absent,
    /// An integer `alg` the profile does not allow.
    Unsupported,
    /// An `alg` of the wrong type (text): MALFORMED (docs/profile.md §2.1 rule 4).
    Invalid,
    /// An allowed algorithm.
    Known(Alg),
}

impl HeaderAlg {
    fn from_coset(a: Option<&coset::Algorithm>) -> HeaderAlg {
        match a {
            None => HeaderAlg::Absent,
            Some(RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES256)) => {
                HeaderAlg::Known(Alg::Es256)
            }
            Some(RegisteredLabelWithPrivate::Assigned(iana::Algorithm::EdDSA)) => {
                HeaderAlg::Known(Alg::EdDsa)
            }
            Some(RegisteredLabelWithPrivate::Text(_)) => HeaderAlg::Invalid,
            Some(_) => HeaderAlg::Unsupported,
        }
    }
}

/// Public key material of the two key types the profile uses.
#[derive(Clone, PartialEq, Eq)]
enum Material {
    /// EC2 P-256 as an uncompressed SEC1 point `04 ‖ x ‖ y`.
    P256([u8; 65]),
    /// OKP Ed25519 `x`.
    Ed25519([u8; 32]),
}

/// A parsed public COSE_Key with its RFC 9679 thumbprint.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    material: Material,
    alg: Option<Alg>,
    thumbprint: [u8; 32],
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("alg", &self.natural_alg())
            .field("kid", &self.kid())
            .finish()
    }
}

impl PublicKey {
    /// Parses COSE_Key bytes (strict CBOR).
    pub fn from_bytes(data: &[u8]) -> Result<PublicKey> {
        if data.len() > MAX_COSE_KEY_BYTES {
            return Err(Error::CoseKey("COSE_Key too large"));
        }
        let v = cbor::decode(data).map_err(|_| Error::CoseKey("not strict CBOR"))?;
        PublicKey::from_value(v)
    }

    /// Parses a COSE_Key already decoded from strict CBOR; its `alg` parameter, if any,
    /// must be the one its type allows (docs/profile.md §2.2).
    pub fn from_value(v: Value) -> Result<PublicKey> {
        let (mut key, alg) = PublicKey::from_value_any_alg(v)?;
        match alg {
            HeaderAlg::Absent => {}
            HeaderAlg::Known(a) if a == key.natural_alg() => key.alg = Some(a),
            HeaderAlg::Known(_) => return Err(Error::CoseKey("alg does not fit the key type")),
            HeaderAlg::Unsupported | HeaderAlg::Invalid => {
                return Err(Error::CoseKey("unsupported algorithm"))
            }
        }
        Ok(key)
    }

    /// Parses a COSE_Key without judging its `alg` parameter, which is returned as found
    /// (the credential's `cnf` key: a wrong `alg` there is ALG_MISMATCH at step 3, not a
    /// parse error, docs/profile.md §2.2). The returned key carries no `alg`.
    pub fn from_value_any_alg(v: Value) -> Result<(PublicKey, HeaderAlg)> {
        let key = CoseKey::from_cbor_value(v).map_err(|_| Error::CoseKey("not a COSE_Key map"))?;
        let param = |label: i64| {
            key.params
                .iter()
                .find(|(l, _)| *l == Label::Int(label))
                .map(|(_, v)| v)
        };
        // RFC 9053 §7.1.1 / §7.2: d (-4) is private; a public-key slot must not carry it.
        if param(-4).is_some() {
            return Err(Error::CoseKey("private key parameter present"));
        }
        let crv = param(-1).and_then(cbor::as_i64);
        let x = param(-2).and_then(cbor::as_bytes);
        let key_alg = HeaderAlg::from_coset(key.alg.as_ref());
        let (material, thumb_input) = match key.kty {
            RegisteredLabel::Assigned(iana::KeyType::EC2) => {
                // RFC 9053 §7.1.1: crv 1 = P-256; x and y 32-byte bstrs (y as a sign bit is
                // not allowed by the profile).
                if crv != Some(iana::EllipticCurve::P_256 as i64) {
                    return Err(Error::CoseKey("EC2 key is not on P-256"));
                }
                let x: [u8; 32] = x
                    .and_then(|x| x.try_into().ok())
                    .ok_or(Error::CoseKey("EC2 x is not 32 bytes"))?;
                let y: [u8; 32] = param(-3)
                    .and_then(cbor::as_bytes)
                    .and_then(|y| y.try_into().ok())
                    .ok_or(Error::CoseKey("EC2 y is not 32 bytes"))?;
                let mut point = [0u8; 65];
                point[0] = 0x04;
                point[1..33].copy_from_slice(&x);
                point[33..].copy_from_slice(&y);
                // RFC 9679 §3: required members only (kty, crv, x, y), deterministic order.
                let mut t = Vec::with_capacity(77);
                t.extend_from_slice(&[0xa4, 0x01, 0x02, 0x20, 0x01, 0x21, 0x58, 0x20]);
                t.extend_from_slice(&x);
                t.extend_from_slice(&[0x22, 0x58, 0x20]);
                t.extend_from_slice(&y);
                (Material::P256(point), t)
            }
            RegisteredLabel::Assigned(iana::KeyType::OKP) => {
                if crv != Some(iana::EllipticCurve::Ed25519 as i64) {
                    return Err(Error::CoseKey("OKP key is not Ed25519"));
                }
                let x: [u8; 32] = x
                    .and_then(|x| x.try_into().ok())
                    .ok_or(Error::CoseKey("OKP x is not 32 bytes"))?;
                // RFC 9679 §3: kty, crv, x.
                let mut t = Vec::with_capacity(40);
                t.extend_from_slice(&[0xa3, 0x01, 0x01, 0x20, 0x06, 0x21, 0x58, 0x20]);
                t.extend_from_slice(&x);
                (Material::Ed25519(x), t)
            }
            _ => return Err(Error::CoseKey("key type is neither EC2 nor OKP")),
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, &thumb_input);
        let mut thumbprint = [0u8; 32];
        thumbprint.copy_from_slice(digest.as_ref());
        let key = PublicKey {
            material,
            alg: None,
            thumbprint,
        };
        Ok((key, key_alg))
    }

    /// The key's `alg` parameter (label 3), if it has one.
    pub fn alg_param(&self) -> Option<Alg> {
        self.alg
    }

    /// The algorithm this key is for: its `alg` parameter, else the one its type allows.
    pub fn natural_alg(&self) -> Alg {
        match (self.alg, &self.material) {
            (Some(a), _) => a,
            (None, Material::P256(_)) => Alg::Es256,
            (None, Material::Ed25519(_)) => Alg::EdDsa,
        }
    }

    /// True for an EC2 P-256 key (the only device-key type, docs/profile.md §2.2).
    pub fn is_p256(&self) -> bool {
        matches!(self.material, Material::P256(_))
    }

    /// RFC 9679 thumbprint (SHA-256).
    pub fn thumbprint(&self) -> [u8; 32] {
        self.thumbprint
    }

    /// The profile's `kid`: the first 8 bytes of the thumbprint (docs/profile.md §3.4).
    pub fn kid(&self) -> [u8; KID_LEN] {
        let mut k = [0u8; KID_LEN];
        k.copy_from_slice(&self.thumbprint[..KID_LEN]);
        k
    }

    /// Verifies a raw signature (RFC 9053: ES256 r‖s, never DER; Ed25519 64 bytes).
    /// Errors only for an algorithm that does not fit the key; a bad signature is
    /// `Ok(false)`.
    pub fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> Result<bool> {
        if self.alg.is_some_and(|a| a != alg) {
            return Err(Error::CoseKey(
                "key alg parameter does not match the algorithm",
            ));
        }
        let ok = match (&self.material, alg) {
            (Material::P256(point), Alg::Es256) => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point[..])
                    .verify(message, signature)
                    .is_ok()
            }
            (Material::Ed25519(x), Alg::EdDsa) => UnparsedPublicKey::new(&ED25519, &x[..])
                .verify(message, signature)
                .is_ok(),
            _ => return Err(Error::CoseKey("key type does not fit the algorithm")),
        };
        Ok(ok)
    }
}

/// A strictly parsed COSE_Sign1 with an attached payload.
#[derive(Clone, Debug)]
pub struct Sign1 {
    /// The protected bucket's bytes as received: the Sig_structure signs them as they are.
    protected: Vec<u8>,
    payload: Vec<u8>,
    signature: Vec<u8>,
    /// `alg` of the protected bucket.
    pub alg: HeaderAlg,
    /// `kid` of the protected bucket (empty when absent).
    pub kid: Vec<u8>,
}

impl Sign1 {
    /// Parses COSE_Sign1 bytes, tagged (18) or untagged (RFC 9052 §4.2), strictly.
    ///
    /// The array is taken apart here, as coset's `CoseSign1::from_cbor_value` does it (same
    /// checks, same order), and only the protected header map is handed to coset: coset
    /// would decode the protected bucket's bytes with ciborium's serde decoder and write the
    /// Sig_structure with its encoder, two more CBOR code paths run on every presentation,
    /// which the strict decoder and [`sig_structure`] replace (docs/benchmarks.md "Unary: the
    /// lines fetched again").
    pub fn parse(data: &[u8]) -> Result<Sign1> {
        const NOT_SIGN1: Error = Error::Malformed("not a COSE_Sign1");
        let v = cbor::decode(data)?;
        let v = match v {
            Value::Tag(COSE_SIGN1_TAG, inner) => *inner,
            Value::Tag(..) => return Err(Error::Malformed("unexpected CBOR tag")),
            other => other,
        };
        let Value::Array(items) = v else {
            return Err(NOT_SIGN1);
        };
        // The protected bucket is CBOR inside a byte string: it gets the strict rules of
        // docs/profile.md §4.3 too, its nesting counted on its own. h'' is no item: the
        // empty header (RFC 9052 §3).
        let protected_map = match items.first() {
            Some(Value::Bytes(protected)) if !protected.is_empty() => {
                Some(cbor::decode(protected)?)
            }
            _ => None,
        };
        // docs/profile.md §2.3 rule 2: nothing in the unprotected bucket is acted on (it is not
        // signed), so it is only type-checked as a map.
        if items.get(1).is_some_and(|u| !matches!(u, Value::Map(_))) {
            return Err(Error::Malformed("unprotected header is not a map"));
        }
        let [protected, _unprotected, payload, signature]: [Value; 4] =
            items.try_into().map_err(|_| NOT_SIGN1)?;
        let Value::Bytes(signature) = signature else {
            return Err(NOT_SIGN1);
        };
        let payload = match payload {
            Value::Bytes(payload) => Some(payload),
            Value::Null => None,
            _ => return Err(NOT_SIGN1),
        };
        let Value::Bytes(protected) = protected else {
            return Err(NOT_SIGN1);
        };
        let header = match protected_map {
            Some(map) => Header::from_cbor_value(map).map_err(|_| NOT_SIGN1)?,
            None => Header::default(),
        };
        let Some(payload) = payload else {
            return Err(Error::Malformed("detached payload"));
        };
        // RFC 9052 §3.1 crit: the recipient must understand every listed label.
        for label in &header.crit {
            let understood = match label {
                RegisteredLabelWithPrivate::Assigned(p) => {
                    UNDERSTOOD_CRIT_LABELS.contains(&(*p as i64))
                }
                _ => false,
            };
            if !understood {
                return Err(Error::Malformed("unknown critical header"));
            }
        }
        Ok(Sign1 {
            alg: HeaderAlg::from_coset(header.alg.as_ref()),
            kid: header.key_id,
            protected,
            payload,
            signature,
        })
    }

    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Verifies the signature with `key` and `alg` over the RFC 9052 §4.4 Sig_structure
    /// `["Signature1", protected bytes as received, external_aad, payload]`.
    pub fn verify(&self, key: &PublicKey, alg: Alg, external_aad: &[u8]) -> Result<bool> {
        let tbs = sig_structure(&self.protected, external_aad, &self.payload);
        key.verify(alg, &tbs, &self.signature)
    }
}

/// RFC 9052 §4.4's Sig_structure of a COSE_Sign1, `["Signature1", body_protected,
/// external_aad, payload]`, in the preferred serialization (RFC 8949 §4.2.1: shortest
/// heads), as coset's `tbs_data` encodes it (test `sig_structure_is_cosets`).
fn sig_structure(protected: &[u8], external_aad: &[u8], payload: &[u8]) -> Vec<u8> {
    const CONTEXT: &[u8] = b"Signature1";
    // The array's head, the context's head and text, then three heads of at most 9 bytes.
    let heads = 1 + 1 + CONTEXT.len() + 3 * 9;
    let mut out = Vec::with_capacity(heads + protected.len() + external_aad.len() + payload.len());
    out.push(0x84); // an array of 4
    push_head(&mut out, 3, CONTEXT.len());
    out.extend_from_slice(CONTEXT);
    for bytes in [protected, external_aad, payload] {
        push_head(&mut out, 2, bytes.len());
        out.extend_from_slice(bytes);
    }
    out
}

/// A CBOR head of major type `major` with argument `n`, in its shortest form (RFC 8949 §3).
fn push_head(out: &mut Vec<u8>, major: u8, n: usize) {
    let major = major << 5;
    let n = n as u64;
    match n {
        0..=23 => out.push(major | n as u8),
        24..=0xff => out.extend_from_slice(&[major | 24, n as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(major | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// The generic COSE primitive behind `verify_sign1`: strict parse, then verify with the
/// protected `alg`, and return the payload.
///
/// `alg` must be in the protected bucket (docs/profile.md §2.3 rule 1: alg in unprotected
/// only → MALFORMED), and must be one the profile allows; the key's `alg` parameter, if any, must
/// agree with it.
pub fn verify_sign1(data: &[u8], key: &PublicKey, external_aad: &[u8]) -> Result<Vec<u8>> {
    let s = Sign1::parse(data)?;
    let alg = match s.alg {
        HeaderAlg::Known(a) => a,
        HeaderAlg::Absent => return Err(Error::Malformed("alg not in protected header")),
        HeaderAlg::Unsupported | HeaderAlg::Invalid => {
            return Err(Error::Malformed("unsupported alg"))
        }
    };
    if key.alg_param().is_some_and(|a| a != alg) {
        return Err(Error::CoseKey(
            "key alg parameter does not match the header alg",
        ));
    }
    if s.verify(key, alg, external_aad)? {
        Ok(s.payload().to_vec())
    } else {
        Err(Error::InvalidSignature)
    }
}

/// The raw signature primitive behind `verify_signature`.
pub fn verify_signature(
    alg: i64,
    cose_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<bool> {
    let alg = Alg::from_id(alg).ok_or(Error::CoseKey("unsupported algorithm"))?;
    PublicKey::from_bytes(cose_key)?.verify(alg, message, signature)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn sig_structure_is_cosets() {
        // Every head length: the lengths at each boundary of RFC 8949 §3's argument sizes.
        for n in [0, 1, 23, 24, 255, 256, 65_535, 65_536, 70_000] {
            let protected = vec![0xa1; n.min(300)];
            let aad = vec![0x5a; n / 3];
            let payload = vec![0x01; n];
            let sign1 = coset::CoseSign1 {
                protected: coset::ProtectedHeader {
                    original_data: Some(protected.clone()),
                    header: Header::default(),
                },
                payload: Some(payload.clone()),
                ..Default::default()
            };
            assert_eq!(
                sig_structure(&protected, &aad, &payload),
                sign1.tbs_data(&aad),
                "{n}"
            );
        }
    }

    #[test]
    fn thumbprint_matches_rfc9679_example() {
        // RFC 9679 §6 example: EC2 P-256 key, thumbprint
        // 496bd8afadf307e5b08c64b0421bf9dc01528a344a43bda88fadd1669da253ec.
        let x = hex("65eda5a12577c2bae829437fe338701a10aaa375e1bb5b5de108de439c08551d");
        let y = hex("1e52ed75701163f7f9e40ddf9f341b3dc9ba860af7e0ca7ca7e9eecd0084d19c");
        let key = Value::Map(vec![
            (int(1), int(2)),
            (int(-1), int(1)),
            (int(-2), Value::Bytes(x)),
            (int(-3), Value::Bytes(y)),
            (int(2), Value::Bytes(b"kid-ignored".to_vec())),
        ]);
        let k = PublicKey::from_bytes(&enc(&key)).unwrap();
        assert_eq!(
            k.thumbprint().to_vec(),
            hex("496bd8afadf307e5b08c64b0421bf9dc01528a344a43bda88fadd1669da253ec")
        );
    }

    #[test]
    fn es256_and_eddsa_round_trip() {
        for signer in [Signer::es256(), Signer::eddsa()] {
            let msg = b"message";
            let sig = signer.sign(msg);
            let key = signer.cose_key_bytes();
            assert!(verify_signature(signer.alg.id(), &key, msg, &sig).unwrap());
            assert!(!verify_signature(signer.alg.id(), &key, b"other", &sig).unwrap());
            let other = if signer.alg == Alg::Es256 { -8 } else { -7 };
            assert_eq!(
                verify_signature(other, &key, msg, &sig),
                Err(Error::CoseKey(
                    "key alg parameter does not match the algorithm"
                ))
            );
            assert_eq!(
                verify_signature(-35, &key, msg, &sig),
                Err(Error::CoseKey("unsupported algorithm"))
            );
        }
    }

    #[test]
    fn der_ecdsa_signature_is_bad() {
        let s = Signer::es256();
        let sig = s.sign(b"m");
        let (r, ss) = sig.split_at(32);
        // Minimal DER wrapping of r, s (with leading zero for the sign bit).
        let mut der = vec![0x30, 0x46, 0x02, 0x21, 0x00];
        der.extend_from_slice(r);
        der.extend_from_slice(&[0x02, 0x21, 0x00]);
        der.extend_from_slice(ss);
        assert!(!verify_signature(-7, &s.cose_key_bytes(), b"m", &der).unwrap());
    }

    #[test]
    fn cose_key_refusals() {
        let s = Signer::es256();
        let mut m = s.cose_key_map();
        m.push((int(-4), Value::Bytes(vec![1; 32])));
        assert_eq!(
            PublicKey::from_bytes(&enc(&Value::Map(m))),
            Err(Error::CoseKey("private key parameter present"))
        );
        let bad_crv = Value::Map(vec![
            (int(1), int(2)),
            (int(-1), int(2)),
            (int(-2), Value::Bytes(vec![0; 32])),
            (int(-3), Value::Bytes(vec![0; 32])),
        ]);
        assert_eq!(
            PublicKey::from_bytes(&enc(&bad_crv)),
            Err(Error::CoseKey("EC2 key is not on P-256"))
        );
        let short_x = Value::Map(vec![
            (int(1), int(1)),
            (int(-1), int(6)),
            (int(-2), Value::Bytes(vec![0; 31])),
        ]);
        assert_eq!(
            PublicKey::from_bytes(&enc(&short_x)),
            Err(Error::CoseKey("OKP x is not 32 bytes"))
        );
        assert!(PublicKey::from_bytes(b"\x01").is_err());
        let wrong_alg = Value::Map(vec![
            (int(1), int(1)),
            (int(-1), int(6)),
            (int(-2), Value::Bytes(vec![0; 32])),
            (int(3), int(-7)),
        ]);
        assert_eq!(
            PublicKey::from_bytes(&enc(&wrong_alg)),
            Err(Error::CoseKey("alg does not fit the key type"))
        );
    }

    #[test]
    fn sign1_tagged_untagged_and_refusals() {
        let s = Signer::es256();
        let tagged = sign1(&s, &prot(&s, true), b"payload", true);
        let untagged = sign1(&s, &prot(&s, true), b"payload", false);
        let key = PublicKey::from_bytes(&s.cose_key_bytes()).unwrap();
        assert_eq!(verify_sign1(&tagged, &key, b"").unwrap(), b"payload");
        assert_eq!(verify_sign1(&untagged, &key, b"").unwrap(), b"payload");
        assert_eq!(
            verify_sign1(&tagged, &key, b"aad"),
            Err(Error::InvalidSignature)
        );
        // Wrong tag.
        let mut wrong = tagged.clone();
        wrong[0] = 0xd3;
        assert_eq!(
            Sign1::parse(&wrong).unwrap_err(),
            Error::Malformed("unexpected CBOR tag")
        );
        // Trailing byte.
        let mut trailing = tagged.clone();
        trailing.push(0);
        assert!(Sign1::parse(&trailing).is_err());
        // Unknown crit label.
        let p = enc(&Value::Map(vec![
            (int(1), int(-7)),
            (int(2), Value::Array(vec![int(3)])),
            (int(3), int(0)),
        ]));
        let crit = sign1(&s, &p, b"x", true);
        assert_eq!(
            Sign1::parse(&crit).unwrap_err(),
            Error::Malformed("unknown critical header")
        );
        // Understood crit label.
        let p = enc(&Value::Map(vec![
            (int(1), int(-7)),
            (int(2), Value::Array(vec![int(1)])),
        ]));
        assert!(verify_sign1(&sign1(&s, &p, b"x", true), &key, b"").is_ok());
        // Detached payload.
        let detached = enc(&Value::Tag(
            18,
            Box::new(Value::Array(vec![
                Value::Bytes(prot(&s, true)),
                Value::Map(vec![]),
                Value::Null,
                Value::Bytes(vec![0; 64]),
            ])),
        ));
        assert_eq!(
            Sign1::parse(&detached).unwrap_err(),
            Error::Malformed("detached payload")
        );
    }

    #[test]
    fn protected_header_gets_the_strict_cbor_rules() {
        // docs/profile.md §4.3: an indefinite-length map, a duplicate key (alg twice, one of
        // them in a longer form), trailing bytes: MALFORMED, though each signature is valid.
        let s = Signer::es256();
        let alg = 0x26; // -7, ES256 (a negative integer -1 - n is 0x20 + n)
        assert_eq!(s.alg.id(), -7);
        for protected in [
            vec![0xbf, 0x01, alg, 0xff],
            vec![0xa2, 0x01, alg, 0x18, 0x01, alg],
            vec![0xa1, 0x01, alg, 0x00],
        ] {
            let msg = sign1(&s, &protected, b"p", true);
            assert!(
                matches!(Sign1::parse(&msg), Err(Error::Malformed(_))),
                "{protected:02x?}"
            );
        }
        // The same header in its plain form parses and verifies.
        let msg = sign1(&s, &[0xa1, 0x01, alg], b"p", true);
        let key = PublicKey::from_bytes(&s.cose_key_bytes()).unwrap();
        assert!(Sign1::parse(&msg)
            .unwrap()
            .verify(&key, Alg::Es256, b"")
            .unwrap());
    }

    #[test]
    fn empty_protected_map_is_signed_as_received() {
        // protected = h'A0' (an empty map, not h''): signed over exactly those bytes.
        let s = Signer::es256();
        let protected = vec![0xa0];
        let tbs = enc(&Value::Array(vec![
            Value::Text("Signature1".into()),
            Value::Bytes(protected.clone()),
            Value::Bytes(vec![]),
            Value::Bytes(b"p".to_vec()),
        ]));
        let sig = s.sign(&tbs);
        let msg = enc(&Value::Tag(
            18,
            Box::new(Value::Array(vec![
                Value::Bytes(protected),
                Value::Map(vec![(int(1), int(-7))]),
                Value::Bytes(b"p".to_vec()),
                Value::Bytes(sig),
            ])),
        ));
        let key = PublicKey::from_bytes(&s.cose_key_bytes()).unwrap();
        let parsed = Sign1::parse(&msg).unwrap();
        assert_eq!(parsed.alg, HeaderAlg::Absent);
        assert!(parsed.verify(&key, Alg::Es256, b"").unwrap());
        // docs/profile.md §2.3 rule 1: alg in the unprotected bucket only is MALFORMED.
        assert_eq!(
            verify_sign1(&msg, &key, b""),
            Err(Error::Malformed("alg not in protected header"))
        );
    }
}
