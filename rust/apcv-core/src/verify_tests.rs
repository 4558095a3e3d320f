//! Pipeline tests: every reason code the core produces, in the order of docs/profile.md §8.

use std::sync::Arc;

use ciborium::Value;

use crate::claims::Use;

/// A change to a claims map.
type Edit = Box<dyn FnOnce(&mut Value)>;
use crate::encoding::encode_qr;
use crate::replay::MemoryReplayStore;
use crate::status::StatusList;
use crate::testutil::*;
use crate::trust::TrustList;
use crate::verify::{Decision, Policy, Reason, Scan, ScanData, Verifier};

pub(crate) struct Fx {
    pub(crate) pki: Pki,
    pub(crate) verifier: Verifier,
}

pub(crate) fn fx_with(policy: Policy, max_entries: usize) -> Fx {
    let pki = Pki::new();
    let tl = Arc::new(pki.trust_list());
    let sl = StatusList::verify(
        &pki.status_list_bytes(URI, 2, &[(1, 1), (2, 2), (3, 3)], NOW + DAY),
        &tl,
        NOW,
    )
    .unwrap();
    let verifier = Verifier::new(
        tl,
        vec![Arc::new(sl)],
        policy,
        Arc::new(MemoryReplayStore::new(max_entries)),
    );
    Fx { pki, verifier }
}

pub(crate) fn fx() -> Fx {
    fx_with(Policy::default(), 1000)
}

pub(crate) fn nfc(bytes: Vec<u8>) -> Scan {
    Scan::new(ScanData::Nfc(bytes), "reader-1".into(), None, None)
}

impl Fx {
    pub(crate) fn cred(&self) -> Value {
        credential_claims(&self.pki)
    }
    /// A presentation whose credential claims were changed by `fc` and presentation claims by `fp`.
    pub(crate) fn pres(&self, fc: impl FnOnce(&mut Value), fp: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut c = self.cred();
        fc(&mut c);
        let mut p = presentation_claims(credential_bytes(&self.pki, &c));
        fp(&mut p);
        presentation_bytes(&self.pki, &p)
    }
    pub(crate) fn run(&self, scan: Scan) -> Decision {
        self.verifier.verify(&scan, NOW)
    }
    pub(crate) fn reason(&self, bytes: Vec<u8>) -> Reason {
        self.run(nfc(bytes)).reason
    }
    pub(crate) fn good(&self) -> Vec<u8> {
        self.pres(|_| {}, |_| {})
    }
}

pub(crate) fn cti(n: u8) -> impl FnOnce(&mut Value) {
    move |p| set(p, &[int(7)], Some(Value::Bytes(vec![n; 16])))
}

fn apcv(k: &str) -> Vec<Value> {
    vec![text("apcv"), text(k)]
}

#[test]
fn accepts_qr_and_nfc_and_returns_the_person_verbatim() {
    let f = fx();
    let d = f.run(Scan::new(
        ScanData::Qr(encode_qr(&f.good())),
        "reader-1".into(),
        None,
        None,
    ));
    assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
    assert!(d.accepted() && !d.duplicate);
    let p = d.person.unwrap();
    assert_eq!(p.rank, 0);
    // Lunar date returned unchanged.
    assert_eq!(p.birth_date, "1985-07-00");
    assert_eq!(p.amo.caisse, "751");
    assert_eq!(d.use_, Some(Use::Care));
    assert_eq!(d.credential_id.as_deref(), Some("cred-0001"));
    assert_eq!(d.issuer.as_deref(), Some(ISS));
    assert_eq!(d.credential_expires_at, Some(NOW + YEAR));
    // Untagged NFC bytes too.
    let d = f.run(nfc(f.pres(|_| {}, cti(8))));
    assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
}

#[test]
fn replay_same_reader_is_duplicate_other_reader_is_replayed() {
    let f = fx();
    let bytes = f.good();
    assert!(!f.run(nfc(bytes.clone())).duplicate);
    let again = f.run(nfc(bytes.clone()));
    assert!(again.accepted() && again.duplicate);
    let other = f.run(Scan::new(
        ScanData::Nfc(bytes),
        "reader-2".into(),
        None,
        None,
    ));
    assert_eq!(other.reason, Reason::Replayed);
    assert!(other.person.is_none());
}

#[test]
fn replay_store_full_fails_closed() {
    let f = fx_with(Policy::default(), 1);
    assert_eq!(f.reason(f.pres(|_| {}, cti(1))), Reason::Ok);
    assert_eq!(f.reason(f.pres(|_| {}, cti(2))), Reason::ReplayUnavailable);
}

#[test]
fn malformed_inputs() {
    let f = fx();
    let good = f.good();
    assert_eq!(f.reason(vec![]), Reason::Malformed);
    assert_eq!(f.reason(b"garbage".to_vec()), Reason::Malformed);
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(f.reason(trailing), Reason::Malformed);
    // Indefinite-length outer array: 0x84 → 0x9f ... 0xff.
    let mut indef = good.clone();
    assert_eq!(indef[1], 0x84);
    indef[1] = 0x9f;
    indef.push(0xff);
    assert_eq!(f.reason(indef), Reason::Malformed);
    assert_eq!(f.reason(vec![0u8; 16_385]), Reason::Malformed);
    for qr in [
        "HC1:xyz".to_string(),
        format!("APCV1:{}", "A".repeat(4_300)),
        encode_qr(&vec![0u8; 1 << 20]),
    ] {
        let d = f.run(Scan::new(ScanData::Qr(qr), "r".into(), None, None));
        assert_eq!(d.reason, Reason::Malformed);
    }
    // cti of 15 bytes; unknown use; missing claim.
    assert_eq!(
        f.reason(f.pres(
            |_| {},
            |p| set(p, &[int(7)], Some(Value::Bytes(vec![1; 15])))
        )),
        Reason::Malformed
    );
    assert_eq!(
        f.reason(f.pres(|_| {}, |p| set(p, &[text("use")], Some(text("shop"))))),
        Reason::Malformed
    );
    assert_eq!(
        f.reason(f.pres(|_| {}, |p| set(p, &[int(6)], None))),
        Reason::Malformed
    );
    assert_eq!(
        f.reason(f.pres(|c| set(c, &[int(2)], Some(int(5))), |_| {})),
        Reason::Malformed
    );
    assert_eq!(
        f.reason(f.pres(|c| set(c, &apcv("id"), None), |_| {})),
        Reason::Malformed
    );
    // Device key that is not P-256.
    let ed = Signer::eddsa().cose_key();
    assert_eq!(
        f.reason(f.pres(|c| set(c, &[int(8), int(1)], Some(ed)), |_| {})),
        Reason::Malformed
    );
    // Nesting 17 inside the presentation payload.
    let mut deep = Value::Integer(0.into());
    for _ in 0..16 {
        deep = Value::Array(vec![deep]);
    }
    assert_eq!(
        f.reason(f.pres(|_| {}, |p| set(p, &[text("x")], Some(deep)))),
        Reason::Malformed
    );
}

#[test]
fn malformed_duplicate_key_in_embedded_credential() {
    let f = fx();
    // Credential payload with "iss" twice, signed properly: the strict pre-pass rejects it.
    let mut payload = enc(&f.cred());
    // Map header a8 (8 entries) → a9 and append a duplicate `1: "x"`.
    assert_eq!(payload[0], 0xa8);
    payload[0] = 0xa9;
    payload.extend_from_slice(&[0x01, 0x61, b'x']);
    let cred = sign1(&f.pki.amo, &prot(&f.pki.amo, true), &payload, true);
    let p = presentation_claims(cred);
    let d = f.run(nfc(presentation_bytes(&f.pki, &p)));
    assert_eq!(
        (d.reason, d.detail),
        (Reason::Malformed, "credential payload is not strict CBOR")
    );
}

#[test]
fn alg_must_be_protected() {
    let f = fx();
    let p = enc(&presentation_claims(credential_bytes(&f.pki, &f.cred())));
    // Presentation with alg only in the unprotected bucket.
    let tbs = enc(&Value::Array(vec![
        text("Signature1"),
        Value::Bytes(vec![]),
        Value::Bytes(vec![]),
        Value::Bytes(p.clone()),
    ]));
    let msg = enc(&Value::Array(vec![
        Value::Bytes(vec![]),
        Value::Map(vec![(int(1), int(-7))]),
        Value::Bytes(p),
        Value::Bytes(f.pki.device.sign(&tbs)),
    ]));
    let d = f.run(nfc(msg));
    assert_eq!(
        (d.reason, d.detail),
        (
            Reason::Malformed,
            "presentation: alg not in protected header"
        )
    );
    // Credential without kid.
    let cred = sign1(&f.pki.amo, &prot(&f.pki.amo, false), &enc(&f.cred()), true);
    let d = f.run(nfc(presentation_bytes(&f.pki, &presentation_claims(cred))));
    assert_eq!(
        (d.reason, d.detail),
        (Reason::Malformed, "credential: kid not in protected header")
    );
}

#[test]
fn unsupported_version() {
    let f = fx();
    assert_eq!(
        f.reason(f.pres(|c| set(c, &apcv("v"), Some(int(2))), |_| {})),
        Reason::UnsupportedVersion
    );
}

#[test]
fn unknown_issuer_alg_and_issuer_mismatch() {
    let f = fx();
    // Signed by a key not in the list.
    let stranger = Signer::es256();
    let cred = sign1(&stranger, &prot(&stranger, true), &enc(&f.cred()), true);
    assert_eq!(
        f.reason(presentation_bytes(&f.pki, &presentation_claims(cred))),
        Reason::UnknownIssuer
    );
    // Signed by the status key (role "status", not "amo").
    let s = &f.pki.status;
    let cred = sign1(s, &prot(s, true), &enc(&f.cred()), true);
    assert_eq!(
        f.reason(presentation_bytes(&f.pki, &presentation_claims(cred))),
        Reason::UnknownIssuer
    );
    // Key outside its window.
    let d = f.verifier.verify(&nfc(f.good()), NOW + 6 * YEAR);
    assert_eq!(d.reason, Reason::UnknownIssuer);
    // Credential header says EdDSA for an ES256 key.
    let amo = &f.pki.amo;
    let p = enc(&Value::Map(vec![
        (int(1), int(-8)),
        (int(4), Value::Bytes(amo.kid().to_vec())),
    ]));
    let cred = sign1(amo, &p, &enc(&f.cred()), true);
    assert_eq!(
        f.reason(presentation_bytes(&f.pki, &presentation_claims(cred))),
        Reason::AlgMismatch
    );
    // Presentation header says EdDSA.
    let pc = presentation_claims(credential_bytes(&f.pki, &f.cred()));
    let bytes = sign1(
        &f.pki.device,
        &enc(&Value::Map(vec![(int(1), int(-8))])),
        &enc(&pc),
        true,
    );
    assert_eq!(f.reason(bytes), Reason::AlgMismatch);
    // iss differs.
    assert_eq!(
        f.reason(f.pres(|c| set(c, &[int(1)], Some(text("other"))), |_| {})),
        Reason::IssuerMismatch
    );
}

#[test]
fn claims_invalid_and_lunar_dates_and_corsica() {
    let f = fx();
    let bad_key = {
        let mut m = nir("2850775123456");
        let k = if m.ends_with("01") { "02" } else { "01" };
        m.replace_range(13..15, k);
        m
    };
    let cases: Vec<Edit> = vec![
        Box::new(move |c| {
            set(
                c,
                &[text("apcv"), text("ins"), text("m")],
                Some(text(&bad_key)),
            )
        }),
        Box::new(|c| {
            set(
                c,
                &[text("apcv"), text("ins"), text("oid")],
                Some(text("1.2.250.1.213.1.4.10")),
            )
        }),
        Box::new(|c| {
            set(
                c,
                &[text("apcv"), text("ins"), text("oid")],
                Some(text("1.2.3")),
            )
        }),
        Box::new(|c| {
            set(
                c,
                &[text("apcv"), text("id"), text("dob")],
                Some(text("1985-13-01")),
            )
        }),
        Box::new(|c| set(c, &[text("apcv"), text("id"), text("sex")], Some(text("X")))),
        Box::new(|c| {
            set(
                c,
                &[text("apcv"), text("id"), text("pob")],
                Some(text("7505")),
            )
        }),
        Box::new(|c| {
            set(
                c,
                &[text("apcv"), text("amo"), text("caisse")],
                Some(text("75A")),
            )
        }),
        Box::new(|c| {
            let dup = person_value(Some(1), &nir("1120775654321"));
            set(c, &apcv("ben"), Some(Value::Array(vec![dup.clone(), dup])))
        }),
        Box::new(|c| {
            set(
                c,
                &apcv("ben"),
                Some(Value::Array(vec![person_value(
                    Some(0),
                    &nir("1120775654321"),
                )])),
            )
        }),
    ];
    for (i, fc) in cases.into_iter().enumerate() {
        let d = f.run(nfc(f.pres(fc, |_| {})));
        assert_eq!(d.reason, Reason::ClaimsInvalid, "case {i}");
    }
    // Lunar dates (day 00, 31 April) are accepted.
    for dob in ["1985-00-00", "1985-04-31"] {
        let d = f.run(nfc(f.pres(
            |c| set(c, &[text("apcv"), text("id"), text("dob")], Some(text(dob))),
            cti(dob.as_bytes()[6]),
        )));
        assert_eq!(d.reason, Reason::Ok, "{dob}");
        assert_eq!(d.person.unwrap().birth_date, dob);
    }
    // Corsican beneficiary (2B) accepted, and presented by rank.
    let d = f.run(nfc(f.pres(
        |_| {},
        |p| {
            set(p, &[text("ben")], Some(int(2)));
            set(p, &[int(7)], Some(Value::Bytes(vec![42; 16])));
        },
    )));
    assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
    let p = d.person.unwrap();
    assert_eq!(p.rank, 2);
    assert_eq!(&p.ins[5..7], "2B");
    // Test OID accepted under a test policy.
    let ft = fx_with(Policy::new(true, 60, 0).unwrap(), 10);
    let d = ft.run(nfc(ft.pres(
        |c| {
            set(
                c,
                &[text("apcv"), text("ins"), text("oid")],
                Some(text("1.2.250.1.213.1.4.11")),
            )
        },
        |_| {},
    )));
    assert_eq!(d.reason, Reason::Ok);
}

#[test]
fn times() {
    let f = fx();
    let cases: Vec<(Edit, Edit, Reason)> = vec![
        (
            Box::new(|c| set(c, &[int(5)], Some(int(NOW + 61)))),
            Box::new(|_| {}),
            Reason::CredentialNotYetValid,
        ),
        (
            Box::new(|c| set(c, &[int(4)], Some(int(NOW - 61)))),
            Box::new(|_| {}),
            Reason::CredentialExpired,
        ),
        (
            Box::new(|_| {}),
            Box::new(|p| set(p, &[int(6)], Some(int(NOW + 61)))),
            Reason::PresentationNotYetValid,
        ),
        (
            Box::new(|_| {}),
            Box::new(|p| set(p, &[int(4)], Some(int(NOW - 61)))),
            Reason::PresentationExpired,
        ),
        (
            Box::new(|_| {}),
            Box::new(|p| set(p, &[int(4)], Some(int(NOW + 291)))),
            Reason::PresentationLifetimeExceeded,
        ),
        (
            Box::new(|_| {}),
            Box::new(|p| {
                set(p, &[int(6)], Some(int(NOW + 30)));
                set(p, &[int(4)], Some(int(NOW + 20)));
            }),
            Reason::PresentationLifetimeExceeded,
        ),
        // Extreme values do not overflow.
        (
            Box::new(|c| set(c, &[int(4)], Some(int(i64::MIN)))),
            Box::new(|_| {}),
            Reason::CredentialExpired,
        ),
        (
            Box::new(|_| {}),
            Box::new(|p| set(p, &[int(4)], Some(int(i64::MAX)))),
            Reason::PresentationLifetimeExceeded,
        ),
    ];
    for (i, (fc, fp, want)) in cases.into_iter().enumerate() {
        assert_eq!(f.reason(f.pres(fc, fp)), want, "case {i}");
    }
    // Within the skew: accepted.
    let d = f.run(nfc(f.pres(
        |c| set(c, &[int(5)], Some(int(NOW + 59))),
        |p| {
            set(p, &[int(6)], Some(int(NOW + 59)));
            set(p, &[int(4)], Some(int(NOW + 359)));
        },
    )));
    assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
}

#[test]
fn status() {
    let f = fx();
    let idx = |i: i64| {
        move |c: &mut Value| {
            set(
                c,
                &[int(65535), text("status_list"), text("idx")],
                Some(int(i)),
            )
        }
    };
    assert_eq!(f.reason(f.pres(idx(1), |_| {})), Reason::Revoked);
    assert_eq!(f.reason(f.pres(idx(2), |_| {})), Reason::Suspended);
    assert_eq!(f.reason(f.pres(idx(3), |_| {})), Reason::Revoked);
    assert_eq!(f.reason(f.pres(idx(64), |_| {})), Reason::StatusUnavailable);
    let uri = |c: &mut Value| {
        set(
            c,
            &[int(65535), text("status_list"), text("uri")],
            Some(text("https://x/2")),
        )
    };
    assert_eq!(f.reason(f.pres(uri, |_| {})), Reason::StatusUnavailable);
    // No status lists at all.
    let v = f.verifier.with_status_lists(vec![]);
    assert_eq!(
        v.verify(&nfc(f.good()), NOW).reason,
        Reason::StatusUnavailable
    );
    // A held list that expired: unavailable past the grace, usable within it.
    let later = NOW + DAY + 100;
    let pres_at = |t: i64| {
        f.pres(
            |c| set(c, &[int(6)], Some(int(NOW))),
            |p| {
                set(p, &[int(6)], Some(int(t - 10)));
                set(p, &[int(4)], Some(int(t + 100)));
            },
        )
    };
    assert_eq!(
        f.verifier.verify(&nfc(pres_at(later)), later).reason,
        Reason::StatusUnavailable
    );
    let graceful = Verifier::new(
        f.verifier.trust_list().clone(),
        vec![Arc::new(
            StatusList::verify(
                &f.pki.status_list_bytes(URI, 1, &[], NOW + DAY),
                f.verifier.trust_list(),
                NOW,
            )
            .unwrap(),
        )],
        Policy::new(false, 60, 3600).unwrap(),
        Arc::new(MemoryReplayStore::new(10)),
    );
    assert_eq!(
        graceful.verify(&nfc(pres_at(later)), later).reason,
        Reason::Ok
    );
}

#[test]
fn one_bit_status_list() {
    let f = fx();
    let tl: Arc<TrustList> = f.verifier.trust_list().clone();
    let sl = StatusList::verify(
        &f.pki.status_list_bytes(URI, 1, &[(5, 1)], NOW + DAY),
        &tl,
        NOW,
    )
    .unwrap();
    let v = f.verifier.with_status_lists(vec![Arc::new(sl)]);
    assert_eq!(v.verify(&nfc(f.good()), NOW).reason, Reason::Revoked);
}

#[test]
fn signatures() {
    let f = fx();
    let mut cred = credential_bytes(&f.pki, &f.cred());
    let n = cred.len();
    cred[n - 1] ^= 1;
    assert_eq!(
        f.reason(presentation_bytes(&f.pki, &presentation_claims(cred))),
        Reason::BadIssuerSignature
    );
    // A delegation that is not a COSE_Sign1 is MALFORMED at step 2 (docs/profile.md §7.2).
    let dlg = |p: &mut Value| set(p, &[text("dlg")], Some(Value::Bytes(vec![1, 2, 3])));
    assert_eq!(f.reason(f.pres(|_| {}, dlg)), Reason::Malformed);
    // Signed by another device key.
    let pc = presentation_claims(credential_bytes(&f.pki, &f.cred()));
    let other = Signer::es256();
    let bytes = sign1(&other, &prot(&other, false), &enc(&pc), true);
    assert_eq!(f.reason(bytes), Reason::BadDeviceSignature);
    // A broken AMC attestation never rejects the presentation (docs/profile.md §2.7).
    let amc = |p: &mut Value| {
        set(
            p,
            &[text("amc")],
            Some(Value::Array(vec![Value::Bytes(vec![1])])),
        )
    };
    let d = f.run(nfc(f.pres(|_| {}, amc)));
    assert_eq!(d.reason, Reason::Ok);
    assert_eq!(d.amc.len(), 1);
    assert_eq!(d.amc[0].reason, crate::verify::AmcReason::Malformed);
    let bad_amc = |p: &mut Value| set(p, &[text("amc")], Some(Value::Array(vec![int(1)])));
    assert_eq!(f.reason(f.pres(|_| {}, bad_amc)), Reason::Malformed);
}

#[test]
fn context() {
    let f = fx();
    let aud = |a: &'static str, n: u8| {
        move |p: &mut Value| {
            set(p, &[int(3)], Some(text(a)));
            set(p, &[int(7)], Some(Value::Bytes(vec![n; 16])));
        }
    };
    assert_eq!(
        f.reason(f.pres(|_| {}, aud("reader-2", 1))),
        Reason::AudienceMismatch
    );
    assert_eq!(f.reason(f.pres(|_| {}, aud("reader-1", 2))), Reason::Ok);

    let with_nonce = |n: &'static [u8], c: u8| {
        move |p: &mut Value| {
            set(p, &[text("nonce")], Some(Value::Bytes(n.to_vec())));
            set(p, &[int(7)], Some(Value::Bytes(vec![c; 16])));
        }
    };
    let req = |bytes: Vec<u8>, nonce: Option<&[u8]>| {
        f.run(Scan::new(
            ScanData::Nfc(bytes),
            "reader-1".into(),
            nonce.map(<[u8]>::to_vec),
            None,
        ))
    };
    assert_eq!(
        req(f.pres(|_| {}, cti(3)), Some(b"abc")).reason,
        Reason::NonceMismatch
    );
    assert_eq!(
        req(f.pres(|_| {}, with_nonce(b"abc", 4)), None).reason,
        Reason::NonceMismatch
    );
    assert_eq!(
        req(f.pres(|_| {}, with_nonce(b"abd", 5)), Some(b"abc")).reason,
        Reason::NonceMismatch
    );
    assert_eq!(
        req(f.pres(|_| {}, with_nonce(b"abc", 6)), Some(b"abc")).reason,
        Reason::Ok
    );

    assert_eq!(
        f.reason(f.pres(|_| {}, |p| set(p, &[text("ben")], Some(int(3))))),
        Reason::UnknownBeneficiary
    );

    let only_dmp = Scan::new(
        ScanData::Nfc(f.pres(|_| {}, cti(9))),
        "reader-1".into(),
        None,
        Some(&[Use::Dmp]),
    );
    assert_eq!(f.run(only_dmp).reason, Reason::PurposeNotAllowed);
    let care = Scan::new(
        ScanData::Nfc(f.pres(|_| {}, cti(10))),
        "reader-1".into(),
        None,
        Some(&[Use::Dmp, Use::Care]),
    );
    assert_eq!(f.run(care).reason, Reason::Ok);
}

#[test]
fn batch_is_ordered_and_details_hold_no_personal_data() {
    let f = fx();
    let scans: Vec<Scan> = (0..20u8)
        .map(|i| {
            if i % 3 == 0 {
                nfc(b"junk".to_vec())
            } else {
                nfc(f.pres(|_| {}, cti(100 + i)))
            }
        })
        .collect();
    let out = f.verifier.verify_batch(&scans, NOW);
    assert_eq!(out.len(), 20);
    for (i, d) in out.iter().enumerate() {
        let want = if i % 3 == 0 {
            Reason::Malformed
        } else {
            Reason::Ok
        };
        assert_eq!(d.reason, want, "item {i}");
        for secret in ["DUPONT", "MARIE", "1985", "75056", "cred-0001"] {
            assert!(!d.detail.contains(secret));
            assert!(!format!("{:?}", d.person).contains(secret));
        }
    }
    assert!(f.verifier.verify_batch::<Scan>(&[], NOW).is_empty());
}

#[test]
fn every_reason_code_string() {
    let all: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(all.len(), 25);
    assert!(all.contains(&"SCAN_TIME_INVALID"));
    assert_eq!(all[0], "OK");
    assert!(all.contains(&"REPLAY_UNAVAILABLE"));
    assert_eq!(
        Reason::PresentationLifetimeExceeded.to_string(),
        "PRESENTATION_LIFETIME_EXCEEDED"
    );
}

#[test]
fn policy_refuses_negative_durations() {
    assert!(Policy::new(false, -1, 0).is_err());
    assert!(Policy::new(false, 0, -1).is_err());
    assert!(crate::verify::parse_uses(&["care", "nope"]).is_err());
    assert_eq!(crate::verify::parse_uses(&["dp"]).unwrap(), vec![Use::Dp]);
}

#[test]
fn device_key_alg_is_judged_at_step_3() {
    let f = fx();
    let with_alg = |alg: Value| {
        let mut key = f.pki.device.cose_key();
        set(&mut key, &[int(3)], Some(alg));
        move |c: &mut Value| set(c, &[int(8), int(1)], Some(key))
    };
    assert_eq!(
        f.reason(f.pres(with_alg(int(-8)), |_| {})),
        Reason::AlgMismatch
    );
    assert_eq!(
        f.reason(f.pres(with_alg(int(-35)), |_| {})),
        Reason::AlgMismatch
    );
    assert_eq!(
        f.reason(f.pres(with_alg(text("ES256")), |_| {})),
        Reason::Malformed
    );
    let d = f.run(nfc(f.pres(with_alg(int(-7)), cti(50))));
    assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
    let no_alg = |c: &mut Value| {
        let mut key = f.pki.device.cose_key();
        set(&mut key, &[int(3)], None);
        set(c, &[int(8), int(1)], Some(key));
    };
    assert_eq!(f.reason(f.pres(no_alg, cti(51))), Reason::Ok);
}

#[test]
fn text_alg_is_malformed_and_unprotected_bucket_is_ignored() {
    let f = fx();
    let pc = enc(&presentation_claims(credential_bytes(&f.pki, &f.cred())));
    let text_alg = enc(&Value::Map(vec![(int(1), text("ES256"))]));
    assert_eq!(
        f.reason(sign1(&f.pki.device, &text_alg, &pc, true)),
        Reason::Malformed
    );
    // Garbage in the unprotected bucket (unregistered alg, unknown crit, empty kid) is
    // neither read nor refused: it is not signed.
    let good = f.good();
    let Value::Tag(18, arr) = crate::cbor::decode(&good).unwrap() else {
        panic!("tagged")
    };
    let Value::Array(mut items) = *arr else {
        panic!("array")
    };
    items[1] = Value::Map(vec![
        (int(1), int(-999)),
        (int(2), Value::Array(vec![int(99)])),
        (int(4), Value::Bytes(vec![])),
    ]);
    let d = f.run(nfc(enc(&Value::Tag(
        18,
        Box::new(Value::Array(items.clone())),
    ))));
    assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
    items[1] = Value::Array(vec![]);
    assert_eq!(f.reason(enc(&Value::Array(items))), Reason::Malformed);
}

#[test]
fn replay_within_a_batch_runs_in_batch_order() {
    for _ in 0..20 {
        let f = fx();
        let p = f.good();
        let scan = |r: &str| Scan::new(ScanData::Nfc(p.clone()), r.into(), None, None);
        let out = f
            .verifier
            .verify_batch(&[scan("r1"), scan("r2"), scan("r1"), scan("r3")], NOW);
        let got: Vec<(Reason, bool)> = out.iter().map(|d| (d.reason, d.duplicate)).collect();
        assert_eq!(
            got,
            [
                (Reason::Ok, false),
                (Reason::Replayed, false),
                (Reason::Ok, true),
                (Reason::Replayed, false)
            ]
        );
        assert!(out[1].person.is_none() && out[0].person.is_some());
    }
}

#[test]
fn deferred_replay_gives_tickets_and_settles_like_the_embedded_store() {
    use crate::replay::{ReplayOutcome, ReplayStore};
    use crate::verify::{settle_replay, Deferred};

    let f = fx();
    let good = f.pres(|_| {}, cti(5));
    let bad = f.pres(
        |_| {},
        |p| set(p, &[int(7)], Some(Value::Bytes(vec![1; 3]))),
    );
    let out = f
        .verifier
        .verify_batch_deferred(&[nfc(good.clone()), nfc(bad)], NOW);
    let [Deferred::Pending(d, ticket), Deferred::Decided(rejected)] = &out[..] else {
        panic!("expected one pending and one decided item");
    };
    assert_eq!(rejected.reason, Reason::Malformed);
    assert_eq!(ticket.cti, [5; 16]);
    let policy = f.verifier.policy();
    // Presentation exp is NOW + 110 in testutil; kept until exp + skew + max_scan_delay.
    assert_eq!(
        ticket.keep_until,
        NOW + 110 + policy.clock_skew + policy.max_scan_delay
    );
    // And carries the presentation's iat, for a store that lost its entries.
    assert_eq!(ticket.issued_at, NOW - 10);
    // Pending: accepted so far, person held; the embedded store was not consulted.
    assert!(d.accepted() && d.person.is_some());
    assert!(!f.run(nfc(good.clone())).duplicate);

    let new = settle_replay(d.clone(), ReplayOutcome::New);
    assert!(new.accepted() && !new.duplicate && new.person.is_some());
    let same = settle_replay(d.clone(), ReplayOutcome::SameReader);
    assert!(same.accepted() && same.duplicate && same.person.is_some());
    for (outcome, reason) in [
        (ReplayOutcome::OtherReader, Reason::Replayed),
        (ReplayOutcome::Unavailable, Reason::ReplayUnavailable),
    ] {
        let s = settle_replay(d.clone(), outcome);
        assert_eq!(s.reason, reason);
        assert!(s.person.is_none() && s.amc.is_empty() && s.delegation_label.is_none());
    }
    // The same settlement as the embedded path for a replay by another reader.
    let store = MemoryReplayStore::new(10);
    assert_eq!(
        store.check_and_insert(&ticket.cti, "r1", ticket.keep_until, NOW),
        ReplayOutcome::New
    );
    let embedded = f.run(Scan::new(
        ScanData::Nfc(good),
        "reader-2".into(),
        None,
        None,
    ));
    let external = settle_replay(
        d.clone(),
        store.check_and_insert(&ticket.cti, "reader-2", ticket.keep_until, NOW),
    );
    assert_eq!(
        (embedded.reason, embedded.detail),
        (external.reason, external.detail)
    );
}

#[test]
fn issuer_signature_cache_skips_only_the_issuer_signature() {
    let f = fx();
    let cache = |v: &Verifier| v.signature_cache().len();
    let cred = credential_bytes(&f.pki, &f.cred());
    let pres = |n: u8| {
        let mut p = presentation_claims(cred.clone());
        cti(n)(&mut p);
        presentation_bytes(&f.pki, &p)
    };
    assert_eq!(cache(&f.verifier), 0);
    assert_eq!(f.reason(pres(1)), Reason::Ok);
    assert_eq!(cache(&f.verifier), 1);
    // The same credential presented again: one entry, still accepted.
    assert_eq!(f.reason(pres(2)), Reason::Ok);
    assert_eq!(cache(&f.verifier), 1);
    // Other bytes never hit: the same credential with one bit flipped.
    let mut bad = cred.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert_eq!(
        f.reason(presentation_bytes(&f.pki, &presentation_claims(bad))),
        Reason::BadIssuerSignature
    );
    assert_eq!(cache(&f.verifier), 1);
    // The device signature is checked on every presentation of a cached credential.
    let other = Signer::es256();
    let mut pc = presentation_claims(cred.clone());
    cti(3)(&mut pc);
    let forged = sign1(&other, &prot(&other, false), &enc(&pc), true);
    assert_eq!(f.reason(forged), Reason::BadDeviceSignature);
    // So is the status: a snapshot with new status lists keeps the cache, and revokes.
    let tl: Arc<TrustList> = f.verifier.trust_list().clone();
    let revoked = StatusList::verify(
        &f.pki.status_list_bytes(URI, 1, &[(5, 1)], NOW + DAY),
        &tl,
        NOW,
    )
    .unwrap();
    let v = f.verifier.with_status_lists(vec![Arc::new(revoked)]);
    assert_eq!(cache(&v), 1);
    assert_eq!(v.verify(&nfc(pres(4)), NOW).reason, Reason::Revoked);
    // The same trust list keeps the cache; a new one (even with the same content) drops it.
    assert_eq!(cache(&f.verifier.with_trust_list(tl.clone())), 1);
    let fresh = f.verifier.with_trust_list(Arc::new(f.pki.trust_list()));
    assert_eq!(cache(&fresh), 0);
    assert_eq!(fresh.signature_cache().capacity(), 262_144);
    assert_eq!(fresh.verify(&nfc(pres(5)), NOW).reason, Reason::Ok);
    assert_eq!(cache(&fresh), 1);
    // Capacity 0: no cache.
    let off = f.verifier.with_signature_cache(0);
    assert_eq!(off.verify(&nfc(pres(6)), NOW).reason, Reason::Ok);
    assert_eq!(cache(&off), 0);
}

#[test]
fn issuer_signature_cache_is_bounded() {
    let f = fx();
    let v = f.verifier.with_signature_cache(16);
    for i in 0..64u8 {
        let sub = format!("cred-{i:04}");
        let pres = f.pres(move |c| set(c, &[int(2)], Some(text(&sub))), cti(i));
        assert_eq!(v.verify(&nfc(pres), NOW).reason, Reason::Ok);
    }
    assert!(
        v.signature_cache().len() <= 16,
        "{}",
        v.signature_cache().len()
    );
}
