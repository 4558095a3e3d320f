//! Delegation (docs/profile.md §2.6) and AMC attestation (§2.7) fixtures, and the delegation rules.

use std::sync::Arc;

use ciborium::Value;

/// A change to a claims map.
type Edit = Box<dyn FnOnce(&mut Value)>;

use crate::replay::MemoryReplayStore;
use crate::status::StatusList;
use crate::testutil::*;
use crate::trust::TrustList;
use crate::verify::{Decision, Policy, Reason, Scan, ScanData, Verifier};

pub(crate) const AMC_ISS: &str = "https://amc.example/mutuelle";

/// A PKI with an "amc" key, a delegate's phone key, and a status list where index 1 is
/// revoked, 2 suspended, everything else (up to 63) valid.
pub(crate) struct Fx3 {
    pub(crate) pki: Pki,
    pub(crate) amc: Signer,
    pub(crate) delegate: Signer,
    pub(crate) verifier: Verifier,
}

pub(crate) fn fx3_with(policy: Policy) -> Fx3 {
    let pki = Pki::new();
    let amc = Signer::es256();
    let delegate = Signer::es256();
    let mut amc_entry = pki.trust_entry(&amc, "amc");
    set(&mut amc_entry, &[text("iss")], Some(text(AMC_ISS)));
    let keys = vec![
        pki.trust_entry(&pki.amo, "amo"),
        pki.trust_entry(&pki.status, "status"),
        amc_entry,
    ];
    let payload = enc(&pki.trust_payload(1, keys));
    let tl_bytes = sign1(&pki.anchor, &prot(&pki.anchor, true), &payload, true);
    let tl = Arc::new(TrustList::verify(&tl_bytes, &[pki.anchor.public_key()], NOW, None).unwrap());
    let sl = StatusList::verify(
        &pki.status_list_bytes(URI, 2, &[(1, 1), (2, 2)], NOW + DAY),
        &tl,
        NOW,
    )
    .unwrap();
    let verifier = Verifier::new(
        tl,
        vec![Arc::new(sl)],
        policy,
        Arc::new(MemoryReplayStore::new(1000)),
    );
    Fx3 {
        pki,
        amc,
        delegate,
        verifier,
    }
}

pub(crate) fn fx3() -> Fx3 {
    fx3_with(Policy::default())
}

pub(crate) fn holder_ins() -> String {
    nir("2850775123456")
}

pub(crate) fn child_ins() -> String {
    nir("1120775654321")
}

fn status_claim(idx: i64) -> Value {
    Value::Map(vec![(
        text("status_list"),
        Value::Map(vec![(text("idx"), int(idx)), (text("uri"), text(URI))]),
    )])
}

impl Fx3 {
    /// Delegation for the fixture credential, ranks 0 and 1, uses care and dp, label "Mamie".
    pub(crate) fn dlg_claims(&self) -> Value {
        Value::Map(vec![
            (int(1), text(ISS)),
            (int(2), text("dlg-0001")),
            (int(4), int(NOW + DAY)),
            (int(5), int(NOW - DAY)),
            (int(6), int(NOW - DAY)),
            (int(8), Value::Map(vec![(int(1), self.delegate.cose_key())])),
            (int(65535), status_claim(10)),
            (
                text("apcv"),
                Value::Map(vec![
                    (text("v"), int(1)),
                    (text("for"), text("cred-0001")),
                    (text("ben"), Value::Array(vec![int(0), int(1)])),
                    (text("use"), Value::Array(vec![text("care"), text("dp")])),
                    (text("who"), text("Mamie")),
                ]),
            ),
        ])
    }

    pub(crate) fn dlg_bytes(&self, signer: &Signer, claims: &Value) -> Vec<u8> {
        sign1(signer, &prot(signer, true), &enc(claims), true)
    }

    /// AMC attestation claims covering `covered`.
    pub(crate) fn amc_claims(&self, covered: &[String]) -> Value {
        Value::Map(vec![
            (int(1), text(AMC_ISS)),
            (int(2), text("contract-42")),
            (int(4), int(NOW + YEAR)),
            (int(5), int(NOW - DAY)),
            (int(6), int(NOW - DAY)),
            (
                text("apcv"),
                Value::Map(vec![
                    (text("v"), int(1)),
                    (
                        text("for"),
                        Value::Array(covered.iter().map(|m| text(m)).collect()),
                    ),
                    (text("amc"), text("012345678")),
                    (text("tp"), Value::Bool(true)),
                    (text("dom"), Value::Array(vec![text("PHAR"), text("OPT")])),
                ]),
            ),
        ])
    }

    pub(crate) fn amc_bytes(&self, signer: &Signer, claims: &Value) -> Vec<u8> {
        sign1(signer, &prot(signer, true), &enc(claims), true)
    }

    /// A presentation of the fixture credential, edited by `fp`, signed by `signer`.
    pub(crate) fn pres_by(&self, signer: &Signer, fp: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut p = presentation_claims(credential_bytes(&self.pki, &credential_claims(&self.pki)));
        fp(&mut p);
        sign1(signer, &prot(signer, false), &enc(&p), true)
    }

    pub(crate) fn run(&self, bytes: Vec<u8>) -> Decision {
        self.verifier.verify(
            &Scan::new(ScanData::Nfc(bytes), "reader-1".into(), None, None),
            NOW,
        )
    }

    /// A delegated presentation: `dlg` attached, signed by the delegate, edited by `fp`.
    fn delegated(&self, dlg: Vec<u8>, n: u8, fp: impl FnOnce(&mut Value)) -> Decision {
        self.run(self.pres_by(&self.delegate, |p| {
            set(p, &[text("dlg")], Some(Value::Bytes(dlg)));
            set(p, &[int(7)], Some(Value::Bytes(vec![n; 16])));
            fp(p);
        }))
    }

    /// The delegation claims edited by `fc`, signed by the AMO key, presented by the delegate.
    fn with_dlg(&self, n: u8, fc: impl FnOnce(&mut Value)) -> Decision {
        let mut c = self.dlg_claims();
        fc(&mut c);
        let dlg = self.dlg_bytes(&self.pki.amo, &c);
        self.delegated(dlg, n, |_| {})
    }
}

fn dapcv(k: &str) -> Vec<Value> {
    vec![text("apcv"), text(k)]
}

#[test]
fn a_valid_delegation_is_accepted_with_its_label() {
    let f = fx3();
    let d = f.with_dlg(1, |_| {});
    assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
    assert_eq!(d.delegation_label.as_deref(), Some("Mamie"));
    assert_eq!(d.person.unwrap().rank, 0);
    // No label: "" (a delegation was used, unnamed).
    let d = f.with_dlg(2, |c| set(c, &dapcv("who"), None));
    assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
    assert_eq!(d.delegation_label.as_deref(), Some(""));
    // A beneficiary within scope; another use within scope.
    let dlg = f.dlg_bytes(&f.pki.amo, &f.dlg_claims());
    let d = f.delegated(dlg, 3, |p| {
        set(p, &[text("ben")], Some(int(1)));
        set(p, &[text("use")], Some(text("dp")));
    });
    assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
    assert_eq!(d.person.unwrap().rank, 1);
    // Without a delegation: no label.
    let d = f.run(f.pres_by(&f.pki.device, |_| {}));
    assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
    assert_eq!(d.delegation_label, None);
}

#[test]
fn the_presentation_must_be_signed_by_the_delegate_not_the_holder() {
    let f = fx3();
    let dlg = f.dlg_bytes(&f.pki.amo, &f.dlg_claims());
    // Signed by the holder's phone with the delegation attached.
    let d = f.run(f.pres_by(&f.pki.device, |p| {
        set(p, &[text("dlg")], Some(Value::Bytes(dlg.clone())))
    }));
    assert_eq!(
        (d.reason, d.detail),
        (
            Reason::DelegationInvalid,
            "presentation signed by the holder, not the delegate"
        )
    );
    // Signed by a third key.
    let other = Signer::es256();
    let d = f.run(f.pres_by(&other, |p| {
        set(p, &[text("dlg")], Some(Value::Bytes(dlg.clone())))
    }));
    assert_eq!(d.reason, Reason::BadDeviceSignature);
    // A delegation naming the holder's own key: verifies under both, refused.
    let mut c = f.dlg_claims();
    set(
        &mut c,
        &[int(8)],
        Some(Value::Map(vec![(int(1), f.pki.device.cose_key())])),
    );
    let own = f.dlg_bytes(&f.pki.amo, &c);
    let d = f.run(f.pres_by(&f.pki.device, |p| {
        set(p, &[text("dlg")], Some(Value::Bytes(own)))
    }));
    assert_eq!(
        (d.reason, d.detail),
        (
            Reason::DelegationInvalid,
            "presentation also verifies under the holder's key"
        )
    );
    // The delegate without a delegation is just a wrong device key.
    let d = f.run(f.pres_by(&f.delegate, |_| {}));
    assert_eq!(d.reason, Reason::BadDeviceSignature);
}

#[test]
fn delegation_scope_and_binding() {
    let f = fx3();
    let d = f.with_dlg(1, |c| set(c, &dapcv("for"), Some(text("cred-9999"))));
    assert_eq!(
        (d.reason, d.detail),
        (
            Reason::DelegationInvalid,
            "delegation is for another credential"
        )
    );
    let dlg = f.dlg_bytes(&f.pki.amo, &f.dlg_claims());
    // Rank 2 exists in the credential but is not delegated.
    let d = f.delegated(dlg.clone(), 2, |p| set(p, &[text("ben")], Some(int(2))));
    assert_eq!(
        (d.reason, d.detail),
        (
            Reason::DelegationInvalid,
            "beneficiary outside the delegation's scope"
        )
    );
    // A rank the credential does not have: UNKNOWN_BENEFICIARY comes first (step 8c).
    let d = f.delegated(dlg.clone(), 3, |p| set(p, &[text("ben")], Some(int(9))));
    assert_eq!(d.reason, Reason::UnknownBeneficiary);
    let d = f.delegated(dlg.clone(), 4, |p| {
        set(p, &[text("use")], Some(text("dmp")))
    });
    assert_eq!(
        (d.reason, d.detail),
        (
            Reason::DelegationInvalid,
            "use outside the delegation's scope"
        )
    );
    // The caller's allowed uses still apply after the delegation's scope (step 8e).
    let d = f.verifier.verify(
        &Scan::new(
            ScanData::Nfc(f.pres_by(&f.delegate, |p| {
                set(p, &[text("dlg")], Some(Value::Bytes(dlg)));
                set(p, &[int(7)], Some(Value::Bytes(vec![5; 16])));
            })),
            "reader-1".into(),
            None,
            Some(&[crate::claims::Use::Dmp]),
        ),
        NOW,
    );
    assert_eq!(d.reason, Reason::PurposeNotAllowed);
}

#[test]
fn delegation_status_is_checked() {
    let f = fx3();
    let idx = |i: i64| move |c: &mut Value| set(c, &[int(65535)], Some(status_claim(i)));
    let d = f.with_dlg(1, idx(1));
    assert_eq!(
        (d.reason, d.detail),
        (Reason::DelegationInvalid, "delegation revoked")
    );
    let d = f.with_dlg(2, idx(2));
    assert_eq!(
        (d.reason, d.detail),
        (Reason::DelegationInvalid, "delegation suspended")
    );
    let d = f.with_dlg(3, idx(1000));
    assert_eq!(
        (d.reason, d.detail),
        (
            Reason::StatusUnavailable,
            "delegation status index beyond the list"
        )
    );
    let d = f.with_dlg(4, |c| {
        set(
            c,
            &[int(65535), text("status_list"), text("uri")],
            Some(text("https://status.example/other")),
        )
    });
    assert_eq!(d.reason, Reason::StatusUnavailable);
    // The credential's own status comes first.
    let mut cc = credential_claims(&f.pki);
    set(
        &mut cc,
        &[int(65535), text("status_list"), text("idx")],
        Some(int(1)),
    );
    let dlg = f.dlg_bytes(&f.pki.amo, &f.dlg_claims());
    let mut p = presentation_claims(credential_bytes(&f.pki, &cc));
    set(&mut p, &[text("dlg")], Some(Value::Bytes(dlg)));
    let d = f.run(sign1(
        &f.delegate,
        &prot(&f.delegate, false),
        &enc(&p),
        true,
    ));
    assert_eq!(d.reason, Reason::Revoked);
}

#[test]
fn delegation_trust_signature_and_times() {
    let f = fx3();
    let c = f.dlg_claims();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            f.dlg_bytes(&Signer::es256(), &c),
            "delegation issuer key not trusted",
        ),
        // Keys of another role are not AMO issuers.
        (f.dlg_bytes(&f.amc, &c), "delegation issuer key not trusted"),
        (
            f.dlg_bytes(&f.pki.status, &c),
            "delegation issuer key not trusted",
        ),
        (
            {
                let mut b = f.dlg_bytes(&f.pki.amo, &c);
                let n = b.len();
                b[n - 1] ^= 1;
                b
            },
            "delegation signature does not verify",
        ),
        (
            {
                // Header alg EdDSA over the ES256 AMO key.
                let mut h = vec![(int(1), int(-8))];
                h.push((int(4), Value::Bytes(f.pki.amo.kid().to_vec())));
                sign1(&f.pki.amo, &enc(&Value::Map(h)), &enc(&c), true)
            },
            "delegation alg differs from the trust list",
        ),
    ];
    for (i, (dlg, detail)) in cases.into_iter().enumerate() {
        let d = f.delegated(dlg, i as u8 + 1, |_| {});
        assert_eq!(
            (d.reason, d.detail),
            (Reason::DelegationInvalid, detail),
            "case {i}"
        );
    }
    let edits: Vec<(Edit, &str)> = vec![
        (
            Box::new(|c| set(c, &[int(1)], Some(text("https://amo.example/other")))),
            "delegation iss differs from the trust list",
        ),
        (
            Box::new(|c| set(c, &[int(5)], Some(int(NOW + 61)))),
            "delegation not yet valid",
        ),
        (
            Box::new(|c| set(c, &[int(4)], Some(int(NOW - 61)))),
            "delegation expired",
        ),
        (
            Box::new(|c| {
                let Value::Map(mut k) = Signer::es256().cose_key() else {
                    unreachable!()
                };
                for (label, v) in k.iter_mut() {
                    if *label == int(3) {
                        *v = int(-8);
                    }
                }
                set(
                    c,
                    &[int(8)],
                    Some(Value::Map(vec![(int(1), Value::Map(k))])),
                );
            }),
            "delegate key alg is not ES256",
        ),
    ];
    for (i, (fc, detail)) in edits.into_iter().enumerate() {
        let d = f.with_dlg(20 + i as u8, fc);
        assert_eq!(
            (d.reason, d.detail),
            (Reason::DelegationInvalid, detail),
            "edit {i}"
        );
    }
    // Within the skew: accepted.
    let d = f.with_dlg(30, |c| set(c, &[int(4)], Some(int(NOW - 59))));
    assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
}

#[test]
fn delegation_parse_errors_are_malformed_at_step_2() {
    let f = fx3();
    let edits: Vec<(Edit, Reason)> = vec![
        (Box::new(|c| set(c, &dapcv("for"), None)), Reason::Malformed),
        (
            Box::new(|c| set(c, &dapcv("v"), Some(int(2)))),
            Reason::UnsupportedVersion,
        ),
        (
            Box::new(|c| set(c, &dapcv("ben"), Some(Value::Array(vec![])))),
            Reason::Malformed,
        ),
        (
            Box::new(|c| set(c, &dapcv("use"), Some(Value::Array(vec![text("shop")])))),
            Reason::Malformed,
        ),
        (
            Box::new(|c| set(c, &dapcv("who"), Some(int(1)))),
            Reason::Malformed,
        ),
        (Box::new(|c| set(c, &[int(65535)], None)), Reason::Malformed),
        (
            Box::new(|c| {
                set(
                    c,
                    &[int(8)],
                    Some(Value::Map(vec![(int(1), Signer::eddsa().cose_key())])),
                )
            }),
            Reason::Malformed,
        ),
        (
            Box::new(|c| set(c, &[int(4)], Some(Value::Float(1.0)))),
            Reason::Malformed,
        ),
    ];
    for (i, (fc, want)) in edits.into_iter().enumerate() {
        let d = f.with_dlg(i as u8 + 1, fc);
        assert_eq!(d.reason, want, "edit {i}: {}", d.detail);
    }
    // No kid in the delegation's protected header.
    let c = f.dlg_claims();
    let d = f.delegated(
        sign1(&f.pki.amo, &prot(&f.pki.amo, false), &enc(&c), true),
        40,
        |_| {},
    );
    assert_eq!(d.reason, Reason::Malformed);
    // Parse errors win over later steps: an expired credential with a garbled delegation.
    let mut cc = credential_claims(&f.pki);
    set(&mut cc, &[int(4)], Some(int(NOW - DAY)));
    let mut p = presentation_claims(credential_bytes(&f.pki, &cc));
    set(&mut p, &[text("dlg")], Some(Value::Bytes(vec![0xa0])));
    let d = f.run(sign1(
        &f.delegate,
        &prot(&f.delegate, false),
        &enc(&p),
        true,
    ));
    assert_eq!(d.reason, Reason::Malformed);
}

#[test]
fn delegation_label_only_on_acceptance() {
    let f = fx3();
    let dlg = f.dlg_bytes(&f.pki.amo, &f.dlg_claims());
    let bytes = f.pres_by(&f.delegate, |p| {
        set(p, &[text("dlg")], Some(Value::Bytes(dlg)))
    });
    assert!(f.run(bytes.clone()).delegation_label.is_some());
    let dup = f.run(bytes.clone());
    assert!(dup.duplicate && dup.delegation_label.is_some());
    let other = f.verifier.verify(
        &Scan::new(ScanData::Nfc(bytes), "reader-2".into(), None, None),
        NOW,
    );
    assert_eq!(other.reason, Reason::Replayed);
    assert_eq!(other.delegation_label, None);
}
