//! Delayed scans (docs/profile.md §7.5): freshness at `scanned_at`, trust and status at `now`.

use std::sync::Arc;

use crate::replay::MemoryReplayStore;
use crate::status::StatusList;
use crate::testutil::*;
use crate::trust::TrustList;
use crate::verify::{Policy, Reason, Scan, ScanData, Verifier};
use crate::verify_tests::{cti, fx_with, Fx};

const DELAY: i64 = 3_600;

fn delayed() -> Fx {
    fx_with(Policy::default().with_max_scan_delay(DELAY).unwrap(), 100)
}

fn at(bytes: Vec<u8>, reader: &str, scanned_at: Option<i64>) -> Scan {
    Scan::new(ScanData::Nfc(bytes), reader.into(), None, None).with_scanned_at(scanned_at)
}

/// A presentation made at `t` (iat t, exp t + 120).
fn made_at(f: &Fx, t: i64, n: u8) -> Vec<u8> {
    f.pres(
        |_| {},
        |p| {
            set(p, &[int(6)], Some(int(t)));
            set(p, &[int(4)], Some(int(t + 120)));
            cti(n)(p);
        },
    )
}

#[test]
fn freshness_is_judged_at_the_scan_time() {
    let f = delayed();
    let old = NOW - 1_800;
    // Without scanned_at the presentation made half an hour ago is expired.
    assert_eq!(f.reason(made_at(&f, old, 1)), Reason::PresentationExpired);
    // Reported as scanned then, it is fresh.
    let d = f.run(at(made_at(&f, old, 2), "r", Some(old + 5)));
    assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
    // Scan time = now is the ordinary case.
    let d = f.run(at(made_at(&f, NOW, 3), "r", Some(NOW)));
    assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
    // A presentation made after the reported scan time is not yet valid at that time.
    let d = f.run(at(made_at(&f, NOW, 4), "r", Some(NOW - 600)));
    assert_eq!(d.reason, Reason::PresentationNotYetValid);
    // Credential expired now but valid when scanned: accepted.
    let d = f.run(at(
        f.pres(
            |c| set(c, &[int(4)], Some(int(NOW - 1_000))),
            |p| {
                set(p, &[int(6)], Some(int(NOW - 1_200)));
                set(p, &[int(4)], Some(int(NOW - 1_100)));
                cti(5)(p);
            },
        ),
        "r",
        Some(NOW - 1_150),
    ));
    assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
    // Credential not yet valid at the scan time.
    let d = f.run(at(
        f.pres(|c| set(c, &[int(5)], Some(int(NOW - 100))), cti(6)),
        "r",
        Some(NOW - 1_000),
    ));
    assert_eq!(d.reason, Reason::CredentialNotYetValid);
}

#[test]
fn scan_time_out_of_bounds_is_refused() {
    let f = delayed();
    let d = f.run(at(made_at(&f, NOW, 1), "r", Some(NOW - DELAY - 1)));
    assert_eq!(d.reason, Reason::ScanTimeInvalid);
    assert_eq!(d.detail, "scan time is older than the allowed delay");
    assert!(d.person.is_none());
    // Exactly max_scan_delay old: honoured (the presentation is fresh then).
    let d = f.run(at(made_at(&f, NOW - DELAY, 2), "r", Some(NOW - DELAY)));
    assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
    // In the future beyond the skew.
    let d = f.run(at(made_at(&f, NOW, 3), "r", Some(NOW + 61)));
    assert_eq!(d.reason, Reason::ScanTimeInvalid);
    assert_eq!(d.detail, "scan time is in the future");
    // Within the skew.
    let d = f.run(at(made_at(&f, NOW, 4), "r", Some(NOW + 60)));
    assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
    // Extreme values do not overflow.
    for t in [i64::MIN, i64::MAX] {
        assert_eq!(
            f.run(at(made_at(&f, NOW, 5), "r", Some(t))).reason,
            Reason::ScanTimeInvalid
        );
    }
}

#[test]
fn default_policy_allows_no_delay() {
    let f = fx_with(Policy::default(), 100);
    assert_eq!(Policy::default().max_scan_delay, 0);
    let d = f.run(at(made_at(&f, NOW, 1), "r", Some(NOW)));
    assert_eq!(d.reason, Reason::Ok, "{}", d.detail);
    let d = f.run(at(made_at(&f, NOW, 2), "r", Some(NOW - 1)));
    assert_eq!(d.reason, Reason::ScanTimeInvalid);
    assert!(Policy::default().with_max_scan_delay(-1).is_err());
}

#[test]
fn scan_time_is_judged_at_step_5() {
    let f = delayed();
    // Earlier steps win over the scan time.
    let d = f.run(at(b"garbage".to_vec(), "r", Some(i64::MIN)));
    assert_eq!(d.reason, Reason::Malformed);
    let d = f.run(at(
        f.pres(|c| set(c, &[text("apcv"), text("v")], Some(int(2))), |_| {}),
        "r",
        Some(i64::MIN),
    ));
    assert_eq!(d.reason, Reason::UnsupportedVersion);
}

#[test]
fn revocation_is_judged_at_now_not_at_the_scan_time() {
    let f = delayed();
    // Index 1 is revoked in the list held now; the scan happened before the revocation was
    // published, but a delayed verification must still refuse it.
    let old = NOW - 1_800;
    let d = f.run(at(
        f.pres(
            |c| {
                set(
                    c,
                    &[int(65535), text("status_list"), text("idx")],
                    Some(int(1)),
                )
            },
            |p| {
                set(p, &[int(6)], Some(int(old)));
                set(p, &[int(4)], Some(int(old + 120)));
            },
        ),
        "r",
        Some(old + 5),
    ));
    assert_eq!(d.reason, Reason::Revoked);
}

#[test]
fn trust_key_window_is_judged_at_now() {
    // The AMO key's window ended 10 s ago; the scan happened while it was valid.
    let pki = Pki::new();
    let mut amo = pki.trust_entry(&pki.amo, "amo");
    set(&mut amo, &[text("exp")], Some(int(NOW - 10)));
    let payload = enc(&pki.trust_payload(1, vec![amo, pki.trust_entry(&pki.status, "status")]));
    let tl_bytes = sign1(&pki.anchor, &prot(&pki.anchor, true), &payload, true);
    let tl = Arc::new(TrustList::verify(&tl_bytes, &[pki.anchor.public_key()], NOW, None).unwrap());
    let sl = StatusList::verify(&pki.status_list_bytes(URI, 2, &[], NOW + DAY), &tl, NOW).unwrap();
    let verifier = Verifier::new(
        tl,
        vec![Arc::new(sl)],
        Policy::default().with_max_scan_delay(DELAY).unwrap(),
        Arc::new(MemoryReplayStore::new(10)),
    );
    let f = Fx { pki, verifier };
    let d = f.run(at(made_at(&f, NOW - 600, 1), "r", Some(NOW - 590)));
    assert_eq!(d.reason, Reason::UnknownIssuer);
}

#[test]
fn replay_entries_outlive_the_allowed_delay() {
    let f = delayed();
    // Made 40 min ago, scanned then, verified now: accepted once, then refused elsewhere.
    let old = NOW - 2_400;
    let bytes = made_at(&f, old, 9);
    let first = f.run(at(bytes.clone(), "r1", Some(old + 1)));
    assert_eq!(first.reason, Reason::Ok, "{}", first.detail);
    let retry = f.run(at(bytes.clone(), "r1", Some(old + 1)));
    assert!(retry.accepted() && retry.duplicate);
    let other = f.run(at(bytes, "r2", Some(old + 2)));
    assert_eq!(other.reason, Reason::Replayed);
}
