//! AMC attestations (docs/profile.md §2.7): each judged on its own at step 10, never rejecting.

use ciborium::Value;

/// A change to a claims map.
type Edit = Box<dyn FnOnce(&mut Value)>;

use crate::delegation_tests::{child_ins, fx3, fx3_with, holder_ins, Fx3, AMC_ISS};
use crate::limits::MAX_AMC_ATTESTATIONS;
use crate::testutil::*;
use crate::verify::{AmcCoverage, AmcReason, Decision, Policy, Reason, Scan, ScanData};

impl Fx3 {
    /// A holder presentation carrying `amc`, with cti `n` and edits `fp`.
    fn with_amc(&self, amc: Vec<Vec<u8>>, n: u8, fp: impl FnOnce(&mut Value)) -> Decision {
        self.run(self.pres_by(&self.pki.device, |p| {
            set(
                p,
                &[text("amc")],
                Some(Value::Array(amc.into_iter().map(Value::Bytes).collect())),
            );
            set(p, &[int(7)], Some(Value::Bytes(vec![n; 16])));
            fp(p);
        }))
    }

    /// One attestation with claims edited by `fc`, signed by the AMC key.
    fn one(&self, n: u8, fc: impl FnOnce(&mut Value)) -> AmcCoverage {
        let mut c = self.amc_claims(&[holder_ins()]);
        fc(&mut c);
        let d = self.with_amc(vec![self.amc_bytes(&self.amc, &c)], n, |_| {});
        assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
        assert_eq!(d.amc.len(), 1);
        d.amc.into_iter().next().unwrap()
    }
}

fn aapcv(k: &str) -> Vec<Value> {
    vec![text("apcv"), text(k)]
}

fn status_claim(idx: i64, uri: &str) -> Value {
    Value::Map(vec![(
        text("status_list"),
        Value::Map(vec![(text("idx"), int(idx)), (text("uri"), text(uri))]),
    )])
}

#[test]
fn a_valid_attestation_reports_the_coverage() {
    let f = fx3();
    let a = f.one(1, |_| {});
    assert!(a.valid());
    assert_eq!((a.reason, a.detail), (AmcReason::Ok, ""));
    assert_eq!(a.organisation.as_deref(), Some(AMC_ISS));
    assert_eq!(a.amc_number.as_deref(), Some("012345678"));
    assert_eq!(a.contract.as_deref(), Some("contract-42"));
    assert_eq!(a.third_party_payment, Some(true));
    assert_eq!(a.domains, vec!["PHAR".to_string(), "OPT".to_string()]);
    assert_eq!(a.expires_at, Some(NOW + YEAR));
    assert_eq!(a.valid_from, Some(NOW - DAY));
    // Debug shows the reason only.
    let dbg = format!("{a:?}");
    assert!(
        !dbg.contains("contract-42") && !dbg.contains("012345678"),
        "{dbg}"
    );
    // With a valid status entry too.
    let a = f.one(2, |c| set(c, &[int(65535)], Some(status_claim(12, URI))));
    assert_eq!(a.reason, AmcReason::Ok, "{}", a.detail);
    // No attestation: nothing reported.
    assert!(f.with_amc(vec![], 3, |_| {}).amc.is_empty());
}

#[test]
fn times_are_judged_with_skew_and_keep_the_coverage() {
    let f = fx3();
    let a = f.one(1, |c| set(c, &[int(4)], Some(int(NOW - 61))));
    assert_eq!(
        (a.reason, a.detail),
        (AmcReason::AttestationExpired, "AMC attestation expired")
    );
    assert!(!a.valid());
    assert_eq!(a.contract.as_deref(), Some("contract-42"));
    assert_eq!(a.expires_at, Some(NOW - 61));
    let a = f.one(2, |c| set(c, &[int(5)], Some(int(NOW + 61))));
    assert_eq!(a.reason, AmcReason::AttestationNotYetValid);
    assert!(a.organisation.is_some());
    assert_eq!(
        f.one(3, |c| set(c, &[int(4)], Some(int(NOW - 59)))).reason,
        AmcReason::Ok
    );
}

#[test]
fn trust_and_signature_failures_carry_no_coverage() {
    let f = fx3();
    let c = f.amc_claims(&[holder_ins()]);
    let cases: Vec<(Vec<u8>, AmcReason)> = vec![
        (f.amc_bytes(&Signer::es256(), &c), AmcReason::UnknownIssuer),
        // The AMO key is trusted, but not for role "amc".
        (f.amc_bytes(&f.pki.amo, &c), AmcReason::UnknownIssuer),
        (
            {
                let mut b = f.amc_bytes(&f.amc, &c);
                let n = b.len();
                b[n - 1] ^= 1;
                b
            },
            AmcReason::BadIssuerSignature,
        ),
        (
            {
                let mut h = vec![(int(1), int(-8))];
                h.push((int(4), Value::Bytes(f.amc.kid().to_vec())));
                sign1(&f.amc, &enc(&Value::Map(h)), &enc(&c), true)
            },
            AmcReason::AlgMismatch,
        ),
        (
            {
                let mut c = c.clone();
                set(&mut c, &[int(1)], Some(text("https://amc.example/other")));
                f.amc_bytes(&f.amc, &c)
            },
            AmcReason::IssuerMismatch,
        ),
        (vec![0x01], AmcReason::Malformed),
        (
            sign1(&f.amc, &prot(&f.amc, false), &enc(&c), true),
            AmcReason::Malformed,
        ),
    ];
    for (i, (bytes, want)) in cases.into_iter().enumerate() {
        let d = f.with_amc(vec![bytes], i as u8 + 1, |_| {});
        assert_eq!(d.reason, Reason::Ok, "case {i}");
        let a = &d.amc[0];
        assert_eq!(a.reason, want, "case {i}: {}", a.detail);
        assert!(!a.valid());
        assert!(a.organisation.is_none() && a.contract.is_none() && a.domains.is_empty());
        assert!(a.third_party_payment.is_none() && a.expires_at.is_none());
    }
}

#[test]
fn structure_errors_of_one_attestation() {
    let f = fx3();
    let edits: Vec<(Edit, AmcReason)> = vec![
        (
            Box::new(|c| set(c, &aapcv("tp"), None)),
            AmcReason::Malformed,
        ),
        (
            Box::new(|c| set(c, &aapcv("tp"), Some(text("yes")))),
            AmcReason::Malformed,
        ),
        (
            Box::new(|c| set(c, &aapcv("for"), Some(Value::Array(vec![])))),
            AmcReason::Malformed,
        ),
        (
            Box::new(|c| set(c, &aapcv("dom"), Some(Value::Array(vec![int(1)])))),
            AmcReason::Malformed,
        ),
        (
            Box::new(|c| set(c, &aapcv("amc"), Some(int(12345678)))),
            AmcReason::Malformed,
        ),
        (
            Box::new(|c| set(c, &aapcv("v"), Some(int(2)))),
            AmcReason::UnsupportedVersion,
        ),
        (
            Box::new(|c| set(c, &[int(65535)], Some(int(3)))),
            AmcReason::Malformed,
        ),
        (
            Box::new(|c| set(c, &aapcv("for"), Some(Value::Array(vec![text("1234")])))),
            AmcReason::ClaimsInvalid,
        ),
    ];
    for (i, (fc, want)) in edits.into_iter().enumerate() {
        let a = f.one(i as u8 + 1, fc);
        assert_eq!(a.reason, want, "edit {i}: {}", a.detail);
    }
}

#[test]
fn an_attestation_applies_only_to_the_person_it_names() {
    let f = fx3();
    let holder_only = f.amc_bytes(&f.amc, &f.amc_claims(&[holder_ins()]));
    let both = f.amc_bytes(&f.amc, &f.amc_claims(&[holder_ins(), child_ins()]));
    // The child (rank 1) is presented.
    let d = f.with_amc(vec![holder_only.clone(), both], 1, |p| {
        set(p, &[text("ben")], Some(int(1)))
    });
    assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
    assert_eq!(d.amc[0].reason, AmcReason::NotApplicable);
    assert!(d.amc[0].contract.is_none() && d.amc[0].organisation.is_none());
    assert_eq!(d.amc[1].reason, AmcReason::Ok);
    // The holder is presented: the holder-only attestation applies.
    let d = f.with_amc(vec![holder_only], 2, |_| {});
    assert_eq!(d.amc[0].reason, AmcReason::Ok);
}

#[test]
fn attestation_status_is_judged_on_its_own() {
    let f = fx3();
    let st = |i: i64, uri: &'static str| {
        move |c: &mut Value| set(c, &[int(65535)], Some(status_claim(i, uri)))
    };
    let a = f.one(1, st(1, URI));
    assert_eq!(
        (a.reason, a.detail),
        (AmcReason::Revoked, "AMC attestation revoked")
    );
    assert_eq!(a.contract.as_deref(), Some("contract-42"));
    assert_eq!(f.one(2, st(2, URI)).reason, AmcReason::Suspended);
    assert_eq!(f.one(3, st(1000, URI)).reason, AmcReason::StatusUnavailable);
    let a = f.one(4, st(0, "https://status.example/amc"));
    assert_eq!(
        (a.reason, a.detail),
        (AmcReason::StatusUnavailable, "AMC status list not loaded")
    );
}

#[test]
fn attestations_never_change_the_decision_and_are_capped() {
    let f = fx3();
    let good = f.amc_bytes(&f.amc, &f.amc_claims(&[holder_ins()]));
    // Several, mixed: reported in order.
    let d = f.with_amc(vec![vec![0xff], good.clone(), vec![]], 1, |_| {});
    assert_eq!(d.reason, Reason::Ok);
    let reasons: Vec<_> = d.amc.iter().map(|a| a.reason).collect();
    assert_eq!(
        reasons,
        vec![AmcReason::Malformed, AmcReason::Ok, AmcReason::Malformed]
    );
    // Exactly the cap: all judged.
    let d = f.with_amc(vec![good.clone(); MAX_AMC_ATTESTATIONS], 2, |_| {});
    assert_eq!(d.reason, Reason::Ok);
    assert_eq!(d.amc.len(), MAX_AMC_ATTESTATIONS);
    // Beyond: the presentation is MALFORMED.
    let d = f.with_amc(vec![good.clone(); MAX_AMC_ATTESTATIONS + 1], 3, |_| {});
    assert_eq!(
        (d.reason, d.detail),
        (Reason::Malformed, "presentation: too many AMC attestations")
    );
    // A rejected presentation reports no attestation (step 10 only when accepted).
    let d = f.with_amc(vec![good.clone()], 4, |p| {
        set(p, &[int(4)], Some(int(NOW - 100)));
        set(p, &[int(6)], Some(int(NOW - 200)));
    });
    assert_eq!(d.reason, Reason::PresentationExpired);
    assert!(d.amc.is_empty());
    // Replayed at another reader: none either; a duplicate keeps them.
    let bytes = f.pres_by(&f.pki.device, |p| {
        set(
            p,
            &[text("amc")],
            Some(Value::Array(vec![Value::Bytes(good)])),
        )
    });
    let scan = |r: &str| Scan::new(ScanData::Nfc(bytes.clone()), r.into(), None, None);
    assert_eq!(f.verifier.verify(&scan("r1"), NOW).amc.len(), 1);
    let dup = f.verifier.verify(&scan("r1"), NOW);
    assert!(dup.duplicate && dup.amc.len() == 1);
    let other = f.verifier.verify(&scan("r2"), NOW);
    assert_eq!(other.reason, Reason::Replayed);
    assert!(other.amc.is_empty());
}

#[test]
fn delayed_scan_moves_attestation_freshness_only() {
    let f = fx3_with(Policy::default().with_max_scan_delay(3_600).unwrap());
    let old = NOW - 1_800;
    let mut c = f.amc_claims(&[holder_ins()]);
    set(&mut c, &[int(4)], Some(int(NOW - 600)));
    let expired_now = f.amc_bytes(&f.amc, &c);
    let bytes = f.pres_by(&f.pki.device, |p| {
        set(p, &[int(6)], Some(int(old)));
        set(p, &[int(4)], Some(int(old + 120)));
        set(
            p,
            &[text("amc")],
            Some(Value::Array(vec![Value::Bytes(expired_now.clone())])),
        );
    });
    let d = f.verifier.verify(
        &Scan::new(ScanData::Nfc(bytes), "r".into(), None, None).with_scanned_at(Some(old + 1)),
        NOW,
    );
    assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
    assert_eq!(d.amc[0].reason, AmcReason::Ok);
    // Judged at now it is expired.
    let d = f.with_amc(vec![expired_now], 9, |_| {});
    assert_eq!(d.amc[0].reason, AmcReason::AttestationExpired);
}

#[test]
fn every_amc_reason_code_string() {
    let all: Vec<&str> = AmcReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(all.len(), 14);
    for code in [
        "OK",
        "NOT_APPLICABLE",
        "ATTESTATION_NOT_YET_VALID",
        "ATTESTATION_EXPIRED",
    ] {
        assert!(all.contains(&code), "{code}");
    }
    assert_eq!(AmcReason::NotApplicable.to_string(), "NOT_APPLICABLE");
}

#[test]
fn a_recovered_answer_is_the_original_without_judging_again() {
    use crate::answers::{AnswerKeys, AnswerRecord};
    use crate::verify::Verifier;
    let f = fx3();
    let c = f.amc_claims(&[holder_ins()]);
    let mut expired = f.amc_claims(&[holder_ins()]);
    set(&mut expired, &[int(4)], Some(int(NOW - 3600)));
    let bytes = f.pres_by(&f.pki.device, |p| {
        let amc = vec![
            f.amc_bytes(&f.amc, &c),
            f.amc_bytes(&f.amc, &expired),
            vec![1],
        ];
        set(
            p,
            &[text("amc")],
            Some(Value::Array(amc.into_iter().map(Value::Bytes).collect())),
        );
    });
    let scan = Scan::new(ScanData::Nfc(bytes.clone()), "reader-1".into(), None, None);
    let original = f.verifier.verify(&scan, NOW);
    assert_eq!(original.reason, Reason::Ok, "{}", original.detail);
    let keys = AnswerKeys::new(b"k");
    let record = AnswerRecord::of(&original, keys.digest(&bytes), NOW);
    let record = AnswerRecord::decode(&record.encode()).unwrap();
    // A day later the presentation has long expired: judged again it would be refused.
    assert_eq!(
        f.verifier.verify(&scan, NOW + DAY).reason,
        Reason::PresentationExpired
    );
    let again = Verifier::recover(&scan, &record);
    assert_eq!(again.reason, Reason::Ok);
    assert_eq!(again.person, original.person);
    assert!(again.person.is_some());
    assert_eq!(again.issuer, original.issuer);
    assert_eq!(again.credential_id, original.credential_id);
    assert_eq!(again.use_, original.use_);
    let reasons = |d: &Decision| d.amc.iter().map(|a| a.reason).collect::<Vec<_>>();
    assert_eq!(reasons(&again), reasons(&original));
    for (a, b) in again.amc.iter().zip(&original.amc) {
        assert_eq!(
            (&a.contract, &a.expires_at, &a.domains),
            (&b.contract, &b.expires_at, &b.domains)
        );
    }
    assert_eq!(
        record
            .amc
            .iter()
            .map(|(_, d)| d.as_str())
            .collect::<Vec<_>>(),
        original.amc.iter().map(|a| a.detail).collect::<Vec<_>>()
    );
    // A rejected answer comes back rejected, without a person.
    let mut refused = record.clone();
    refused.reason = Reason::Revoked;
    let d = Verifier::recover(&scan, &refused);
    assert_eq!((d.reason, d.person.is_none()), (Reason::Revoked, true));
    assert!(d.amc.is_empty());
}
