//! The fuzz targets' bodies (docs/reliability.md "Fuzzing"), one function per target.
//!
//! cargo-fuzz runs them on nightly (`fuzz_targets/*.rs`, `make fuzz`); on stable the bounded
//! property tests of `rust/apcv-core/tests/fuzz_targets.rs` run the very same functions over
//! the committed seed corpora, mutations of them and random bytes (`make test`). Each takes
//! any bytes: it must not panic, and it checks what must hold of every input. The fixture
//! (trust anchor, trust list, status list, signing keys of test value only) and the seeds are
//! written by `make_corpus.py` from the issuer toolkit, issued at [`NOW`].

use std::sync::{Arc, OnceLock};

use apcv_core::cbor;
use apcv_core::claims;
use apcv_core::cose::{PublicKey, Sign1};
use apcv_core::encoding::{decode_nfc, decode_qr, encode_qr};
use apcv_core::limits::{MAX_INFLATED_BYTES, MAX_NFC_BYTES, MAX_QR_CHARS};
use apcv_core::replay::MemoryReplayStore;
use apcv_core::status::{StatusBits, StatusList};
use apcv_core::trust::TrustList;
use apcv_core::verify::{Decision, Policy, Scan, ScanData, Verifier};
use ciborium::Value;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// The time the fixture was issued at and every target verifies at (make_corpus.py `NOW`).
pub const NOW: i64 = 1_750_000_000;

/// First byte of a `trust_list` or `status_list` input: sign the rest as the payload, so that
/// the payload parser (reached only after the signature, docs/profile.md §6.2, §6.5) is
/// fuzzed too.
pub const SIGN_PAYLOAD: u8 = 1;
/// First byte of a `status_list` input: the rest is a bare `{bits, lst}` map.
pub const BARE_BITS: u8 = 2;

/// Replay entries the fixture's verifier keeps: long runs fill it, then fail closed.
const REPLAY_ENTRIES: usize = 100_000;

struct Fixture {
    anchor: PublicKey,
    anchor_key: EcdsaKeyPair,
    status_key: EcdsaKeyPair,
    trust: Arc<TrustList>,
    status: Arc<StatusList>,
    verifier: Verifier,
}

/// A verifier over the fixture's lists with a replay store of its own.
fn new_verifier(trust: &Arc<TrustList>, status: &Arc<StatusList>) -> Verifier {
    Verifier::new(
        trust.clone(),
        vec![status.clone()],
        Policy {
            allow_test_identities: true,
            ..Policy::default()
        },
        Arc::new(MemoryReplayStore::new(REPLAY_ENTRIES)),
    )
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rng = SystemRandom::new();
        let key = |pkcs8: &[u8]| {
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
                .expect("fixture key")
        };
        let anchor = PublicKey::from_bytes(include_bytes!("../fixture/anchor.cose_key"))
            .expect("fixture anchor");
        let trust = TrustList::verify(
            include_bytes!("../fixture/trust-list.cose"),
            std::slice::from_ref(&anchor),
            NOW,
            None,
        )
        .expect("fixture trust list");
        let trust = Arc::new(trust);
        let status = StatusList::verify(include_bytes!("../fixture/status-list.cwt"), &trust, NOW)
            .expect("fixture status list");
        let status = Arc::new(status);
        let verifier = new_verifier(&trust, &status);
        Fixture {
            anchor,
            anchor_key: key(include_bytes!("../fixture/anchor.pkcs8")),
            status_key: key(include_bytes!("../fixture/status.pkcs8")),
            trust,
            status,
            verifier,
        }
    })
}

/// A COSE_Sign1 (tag 18) of `payload` by `key`, as an issuer would make it (RFC 9052 §4.4).
fn sign(key: &EcdsaKeyPair, payload: &[u8]) -> Vec<u8> {
    let public = PublicKey::from_value(cose_key_value(key)).expect("fixture public key");
    let protected = encode(&Value::Map(vec![
        (Value::Integer(1.into()), Value::Integer((-7).into())),
        (
            Value::Integer(4.into()),
            Value::Bytes(public.kid().to_vec()),
        ),
    ]));
    let to_sign = encode(&Value::Array(vec![
        Value::Text("Signature1".into()),
        Value::Bytes(protected.clone()),
        Value::Bytes(Vec::new()),
        Value::Bytes(payload.to_vec()),
    ]));
    let signature = key
        .sign(&SystemRandom::new(), &to_sign)
        .expect("ECDSA signing");
    encode(&Value::Tag(
        18,
        Box::new(Value::Array(vec![
            Value::Bytes(protected),
            Value::Map(Vec::new()),
            Value::Bytes(payload.to_vec()),
            Value::Bytes(signature.as_ref().to_vec()),
        ])),
    ))
}

/// The EC2 COSE_Key (RFC 9053 §7.1.1) of a P-256 key pair, with its `alg`.
fn cose_key_value(key: &EcdsaKeyPair) -> Value {
    use ring::signature::KeyPair;
    let point = key.public_key().as_ref();
    let (x, y) = point[1..].split_at(32);
    Value::Map(vec![
        (Value::Integer(1.into()), Value::Integer(2.into())),
        (Value::Integer(3.into()), Value::Integer((-7).into())),
        (Value::Integer((-1).into()), Value::Integer(1.into())),
        (Value::Integer((-2).into()), Value::Bytes(x.to_vec())),
        (Value::Integer((-3).into()), Value::Bytes(y.to_vec())),
    ])
}

fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).expect("CBOR into a Vec");
    out
}

/// What holds of every decision, whatever the input (docs/profile.md §7.6, §9): identity and
/// coverage only with an acceptance, a reason code and a detail phrase always.
fn check_decision(d: &Decision) {
    assert_eq!(d.person.is_some(), d.accepted(), "person iff accepted");
    assert!(
        d.accepted() || d.amc.is_empty(),
        "AMC coverage on a rejection"
    );
    assert!(
        d.accepted() || !d.replay_unchecked,
        "replay_unchecked on a rejection"
    );
    assert!(!d.reason.as_str().is_empty());
}

fn verify(data: ScanData) -> Decision {
    let scan = Scan::new(data, "fuzz-reader".into(), None, None);
    let d = fixture().verifier.verify(&scan, NOW);
    check_decision(&d);
    d
}

/// The QR and NFC transport decoders (docs/profile.md §4.1, §4.2, limits §4.4), then the
/// whole verification of what they give.
pub fn qr_nfc(data: &[u8]) {
    match decode_nfc(data) {
        Ok(bytes) => assert!(bytes == data && data.len() <= MAX_NFC_BYTES),
        Err(_) => assert!(data.len() > MAX_NFC_BYTES),
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let decoded = decode_qr(text);
    if let Ok(presentation) = &decoded {
        assert!(text.len() <= MAX_QR_CHARS);
        assert!(presentation.len() <= MAX_INFLATED_BYTES);
        // Whatever decodes, re-encoded within the limit, decodes to the same bytes.
        let again = encode_qr(presentation);
        if again.len() <= MAX_QR_CHARS {
            assert_eq!(decode_qr(&again).as_ref(), Ok(presentation));
        }
    }
    let d = verify(ScanData::Qr(text.to_owned()));
    if decoded.is_err() {
        assert!(!d.accepted(), "an undecodable QR text was accepted");
    }
}

/// The strict CBOR, COSE_Sign1 and COSE_Key decoders (docs/profile.md §2.1–2.3, §4.3), the
/// CWT claims parsers of every object (§2.4–2.7), then the whole verification as NFC bytes.
pub fn cose_cwt(data: &[u8]) {
    let _ = cbor::decode(data);
    let _ = PublicKey::from_bytes(data);
    for payload in [
        Some(data),
        Sign1::parse(data).ok().as_ref().map(Sign1::payload),
    ]
    .into_iter()
    .flatten()
    {
        let _ = claims::parse_presentation(payload);
        let _ = claims::parse_credential(payload);
        let _ = claims::parse_delegation(payload);
        let _ = claims::parse_amc_attestation(payload);
    }
    let d = verify(ScanData::Nfc(data.to_vec()));
    if Sign1::parse(data).is_err() {
        assert!(!d.accepted(), "a malformed COSE_Sign1 was accepted");
    }
}

/// The status-list decoder (docs/profile.md §2.9, §6.5, §6.6): signed CWTs as received, CWT
/// payloads signed here by the fixture's status signer, and bare `{bits, lst}` maps. True
/// when the input loaded.
pub fn status_list(data: &[u8]) -> bool {
    let f = fixture();
    let list = match data.split_first() {
        Some((&SIGN_PAYLOAD, payload)) => {
            StatusList::verify(&sign(&f.status_key, payload), &f.trust, NOW)
        }
        Some((&BARE_BITS, map)) => {
            return StatusBits::from_cbor(map).map(|b| check_bits(&b)).is_ok();
        }
        _ => StatusList::verify(data, &f.trust, NOW),
    };
    let Ok(list) = list else { return false };
    assert!(list.expires_at >= NOW, "an expired status list was loaded");
    check_bits(&list.bits);
    true
}

/// Every index below the length reads a value that fits the entry size; none beyond it does
/// (docs/profile.md §6.6, LSB first).
fn check_bits(bits: &StatusBits) {
    let len = bits.len();
    assert!(matches!(bits.bits(), 1 | 2 | 4 | 8));
    for index in [0, 1, len / 2, len.saturating_sub(1)] {
        if index < len {
            let value = bits.get(index).expect("an index below the length");
            assert!(u16::from(value) < 1 << bits.bits());
        }
    }
    assert_eq!(bits.get(len), None);
    assert_eq!(bits.get(u64::MAX), None);
}

/// The trust-list loader (docs/profile.md §2.8, §6.2, §6.3): signed lists as received, and
/// payloads signed here by the fixture's anchor; held sequence 1 (rollback below it). True
/// when the input loaded.
pub fn trust_list(data: &[u8]) -> bool {
    let f = fixture();
    let signed;
    let input = match data.split_first() {
        Some((&SIGN_PAYLOAD, payload)) => {
            signed = sign(&f.anchor_key, payload);
            &signed[..]
        }
        _ => data,
    };
    let anchors = std::slice::from_ref(&f.anchor);
    let Ok(list) = TrustList::verify(input, anchors, NOW, Some(1)) else {
        return false;
    };
    assert!(list.seq >= 1, "a rolled-back trust list was loaded");
    assert!(list.expires_at >= NOW, "an expired trust list was loaded");
    // The same bytes load the same way without a held sequence.
    let again = TrustList::verify(input, anchors, NOW, None).expect("loaded once");
    assert_eq!((again.seq, again.len()), (list.seq, list.len()));
    true
}

/// Whether `presentation` (NFC bytes) is accepted by a fresh verifier over the fixture, at
/// [`NOW`] (the tests check with it that the seeds and the fixture belong together).
pub fn accepts_once(presentation: &[u8]) -> bool {
    let f = fixture();
    let verifier = new_verifier(&f.trust, &f.status);
    let scan = Scan::new(
        ScanData::Nfc(presentation.to_vec()),
        "fuzz-check".into(),
        None,
        None,
    );
    let d = verifier.verify(&scan, NOW);
    check_decision(&d);
    d.accepted()
}
