//! Test fixtures: keys made with ring, objects built with ciborium.

use ciborium::Value;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use crate::cose::{Alg, PublicKey};
use crate::trust::TrustList;

pub const NOW: i64 = 1_750_000_000;
pub const DAY: i64 = 86_400;
pub const YEAR: i64 = 365 * DAY;
pub const ISS: &str = "https://amo.example/fr";
pub const URI: &str = "https://status.example/lists/1";

pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub fn int(i: i64) -> Value {
    Value::Integer(i.into())
}

pub fn text(s: &str) -> Value {
    Value::Text(s.into())
}

pub fn enc(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).unwrap();
    out
}

pub fn zlib(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A 15-char INS matricule with its correct key (2A/2B read as 19/18).
pub fn nir(number13: &str) -> String {
    let n: u64 = number13
        .replace("2A", "19")
        .replace("2B", "18")
        .parse()
        .unwrap();
    format!("{number13}{:02}", 97 - n % 97)
}

enum Kp {
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

pub struct Signer {
    pub alg: Alg,
    kp: Kp,
    rng: SystemRandom,
}

impl Signer {
    pub fn es256() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Signer {
            alg: Alg::Es256,
            kp: Kp::Ec(kp),
            rng,
        }
    }

    pub fn eddsa() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Signer {
            alg: Alg::EdDsa,
            kp: Kp::Ed(kp),
            rng,
        }
    }

    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match &self.kp {
            Kp::Ec(k) => k.sign(&self.rng, msg).unwrap().as_ref().to_vec(),
            Kp::Ed(k) => k.sign(msg).as_ref().to_vec(),
        }
    }

    pub fn cose_key_map(&self) -> Vec<(Value, Value)> {
        match &self.kp {
            Kp::Ec(k) => {
                let p = k.public_key().as_ref();
                vec![
                    (int(1), int(2)),
                    (int(-1), int(1)),
                    (int(-2), Value::Bytes(p[1..33].to_vec())),
                    (int(-3), Value::Bytes(p[33..65].to_vec())),
                    (int(3), int(-7)),
                ]
            }
            Kp::Ed(k) => vec![
                (int(1), int(1)),
                (int(-1), int(6)),
                (int(-2), Value::Bytes(k.public_key().as_ref().to_vec())),
                (int(3), int(-8)),
            ],
        }
    }

    pub fn cose_key(&self) -> Value {
        Value::Map(self.cose_key_map())
    }

    pub fn cose_key_bytes(&self) -> Vec<u8> {
        enc(&self.cose_key())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_bytes(&self.cose_key_bytes()).unwrap()
    }

    pub fn kid(&self) -> [u8; 8] {
        self.public_key().kid()
    }
}

/// Protected header `{1: alg, 4: kid}` (or `{1: alg}`).
pub fn prot(s: &Signer, with_kid: bool) -> Vec<u8> {
    let mut m = vec![(int(1), int(s.alg.id()))];
    if with_kid {
        m.push((int(4), Value::Bytes(s.kid().to_vec())));
    }
    enc(&Value::Map(m))
}

/// A COSE_Sign1 signed by `s` over `protected` and `payload` (RFC 9052 §4.4).
pub fn sign1(s: &Signer, protected: &[u8], payload: &[u8], tagged: bool) -> Vec<u8> {
    let tbs = enc(&Value::Array(vec![
        text("Signature1"),
        Value::Bytes(protected.to_vec()),
        Value::Bytes(vec![]),
        Value::Bytes(payload.to_vec()),
    ]));
    let arr = Value::Array(vec![
        Value::Bytes(protected.to_vec()),
        Value::Map(vec![]),
        Value::Bytes(payload.to_vec()),
        Value::Bytes(s.sign(&tbs)),
    ]);
    if tagged {
        enc(&Value::Tag(18, Box::new(arr)))
    } else {
        enc(&arr)
    }
}

pub struct Pki {
    pub anchor: Signer,
    pub amo: Signer,
    pub status: Signer,
    pub device: Signer,
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            anchor: Signer::es256(),
            amo: Signer::es256(),
            status: Signer::eddsa(),
            device: Signer::es256(),
        }
    }

    pub fn trust_entry(&self, s: &Signer, role: &str) -> Value {
        Value::Map(vec![
            (text("kid"), Value::Bytes(s.kid().to_vec())),
            (text("role"), text(role)),
            (text("iss"), text(ISS)),
            (text("key"), s.cose_key()),
            (text("nbf"), int(NOW - YEAR)),
            (text("exp"), int(NOW + 5 * YEAR)),
        ])
    }

    pub fn trust_payload(&self, seq: u64, keys: Vec<Value>) -> Value {
        Value::Map(vec![
            (text("v"), int(1)),
            (text("seq"), int(seq as i64)),
            (text("iat"), int(NOW - DAY)),
            (text("exp"), int(NOW + YEAR)),
            (text("keys"), Value::Array(keys)),
        ])
    }

    pub fn trust_list_bytes(&self, seq: u64) -> Vec<u8> {
        let keys = vec![
            self.trust_entry(&self.amo, "amo"),
            self.trust_entry(&self.status, "status"),
        ];
        let payload = enc(&self.trust_payload(seq, keys));
        sign1(&self.anchor, &prot(&self.anchor, true), &payload, true)
    }

    pub fn trust_list(&self) -> TrustList {
        TrustList::verify(
            &self.trust_list_bytes(1),
            &[self.anchor.public_key()],
            NOW,
            None,
        )
        .unwrap()
    }

    /// Status payload with `entries` (index, value) set, 64 entries long.
    pub fn status_payload(&self, uri: &str, bits: u8, entries: &[(u64, u8)], exp: i64) -> Value {
        let n = 64 * bits as usize / 8;
        let mut bytes = vec![0u8; n];
        for &(i, v) in entries {
            let bit = i as usize * bits as usize;
            bytes[bit / 8] |= v << (bit % 8);
        }
        Value::Map(vec![
            (int(2), text(uri)),
            (int(6), int(NOW - 60)),
            (int(4), int(exp)),
            (int(65534), int(3600)),
            (
                int(65533),
                Value::Map(vec![
                    (text("bits"), int(bits.into())),
                    (text("lst"), Value::Bytes(zlib(&bytes))),
                ]),
            ),
        ])
    }

    pub fn status_list_bytes(
        &self,
        uri: &str,
        bits: u8,
        entries: &[(u64, u8)],
        exp: i64,
    ) -> Vec<u8> {
        let p = enc(&self.status_payload(uri, bits, entries, exp));
        let mut protected = vec![
            (int(1), int(self.status.alg.id())),
            (int(4), Value::Bytes(self.status.kid().to_vec())),
        ];
        protected.push((int(16), text("application/statuslist+cwt")));
        sign1(&self.status, &enc(&Value::Map(protected)), &p, true)
    }
}

pub fn person_value(rank: Option<u64>, m: &str) -> Value {
    let mut v = vec![];
    if let Some(r) = rank {
        v.push((text("rank"), int(r as i64)));
    }
    v.extend([
        (
            text("ins"),
            Value::Map(vec![
                (text("m"), text(m)),
                (text("oid"), text("1.2.250.1.213.1.4.8")),
            ]),
        ),
        (
            text("id"),
            Value::Map(vec![
                (text("bn"), text("DUPONT")),
                (text("gn"), text("MARIE ANNE")),
                (text("sex"), text("F")),
                (text("dob"), text("1985-07-00")),
                (text("pob"), text("75056")),
            ]),
        ),
        (
            text("amo"),
            Value::Map(vec![
                (text("reg"), text("01")),
                (text("caisse"), text("751")),
                (text("centre"), text("1234")),
                (text("from"), text("2024-01-01")),
                (text("to"), text("2026-12-31")),
            ]),
        ),
    ]);
    Value::Map(v)
}

/// Credential claims: holder + two beneficiaries (one born in Corsica, 2B).
pub fn credential_claims(pki: &Pki) -> Value {
    let mut apcv = vec![(text("v"), int(1))];
    if let Value::Map(m) = person_value(None, &nir("2850775123456")) {
        apcv.extend(m);
    }
    apcv.push((
        text("ben"),
        Value::Array(vec![
            person_value(Some(1), &nir("1120775654321")),
            person_value(Some(2), &nir("215022B321321")),
        ]),
    ));
    Value::Map(vec![
        (int(1), text(ISS)),
        (int(2), text("cred-0001")),
        (int(4), int(NOW + YEAR)),
        (int(5), int(NOW - DAY)),
        (int(6), int(NOW - DAY)),
        (int(8), Value::Map(vec![(int(1), pki.device.cose_key())])),
        (
            int(65535),
            Value::Map(vec![(
                text("status_list"),
                Value::Map(vec![(text("idx"), int(5)), (text("uri"), text(URI))]),
            )]),
        ),
        (text("apcv"), Value::Map(apcv)),
    ])
}

pub fn credential_bytes(pki: &Pki, claims: &Value) -> Vec<u8> {
    sign1(&pki.amo, &prot(&pki.amo, true), &enc(claims), true)
}

pub fn presentation_claims(cred: Vec<u8>) -> Value {
    Value::Map(vec![
        (int(6), int(NOW - 10)),
        (int(4), int(NOW + 110)),
        (int(7), Value::Bytes(vec![7; 16])),
        (text("cred"), Value::Bytes(cred)),
        (text("ben"), int(0)),
        (text("use"), text("care")),
    ])
}

pub fn presentation_bytes(pki: &Pki, claims: &Value) -> Vec<u8> {
    sign1(&pki.device, &prot(&pki.device, false), &enc(claims), true)
}

/// Sets (or with `None` removes) the value at `path` of nested maps.
pub fn set(v: &mut Value, path: &[Value], new: Option<Value>) {
    let Value::Map(m) = v else {
        panic!("not a map")
    };
    let (first, rest) = path.split_first().unwrap();
    let pos = m.iter().position(|(k, _)| k == first);
    if rest.is_empty() {
        match (pos, new) {
            (Some(p), Some(n)) => m[p].1 = n,
            (Some(p), None) => {
                m.remove(p);
            }
            (None, Some(n)) => m.push((first.clone(), n)),
            (None, None) => {}
        }
    } else {
        set(&mut m[pos.expect("path")].1, rest, new);
    }
}
