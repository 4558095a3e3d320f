//! A fuzz-like robustness loop (no cargo-fuzz, no proptest): random and mutated bytes
//! through every decoder and the pipeline; the only assertion is "no panic".

use std::sync::Arc;

use crate::cbor;
use crate::cose::{PublicKey, Sign1};
use crate::encoding::{decode_qr, encode_qr};
use crate::replay::MemoryReplayStore;
use crate::status::{StatusBits, StatusList};
use crate::testutil::*;
use crate::trust::TrustList;
use crate::verify::{Policy, Scan, ScanData, Verifier};

/// xorshift64*: deterministic, seedable, good enough to fuzz.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            _ => {
                let n = rng.below(v.len() + 1);
                v.truncate(n);
            }
        }
    }
    v
}

#[test]
fn no_panic_on_random_and_mutated_input() {
    let pki = Pki::new();
    let tl = Arc::new(pki.trust_list());
    let sl_bytes = pki.status_list_bytes(URI, 2, &[], NOW + DAY);
    let sl = StatusList::verify(&sl_bytes, &tl, NOW).unwrap();
    let verifier = Verifier::new(
        tl.clone(),
        vec![Arc::new(sl)],
        Policy::default(),
        Arc::new(MemoryReplayStore::new(1 << 16)),
    );
    let cred = credential_bytes(&pki, &credential_claims(&pki));
    let good = presentation_bytes(&pki, &presentation_claims(cred.clone()));
    let tl_bytes = pki.trust_list_bytes(1);
    let seeds: Vec<Vec<u8>> = vec![
        good.clone(),
        cred,
        tl_bytes.clone(),
        sl_bytes.clone(),
        pki.device.cose_key_bytes(),
    ];
    let anchors = [pki.anchor.public_key()];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // APCV_FUZZ_ITERATIONS=200000 cargo test --release robustness  (longer local runs)
    let iterations: usize = std::env::var("APCV_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let mut batch = Vec::new();
    for i in 0..iterations {
        let data = if i % 10 == 0 {
            (0..rng.below(64)).map(|_| rng.next() as u8).collect()
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, seed)
        };
        let _ = cbor::decode(&data);
        let _ = Sign1::parse(&data);
        let _ = PublicKey::from_bytes(&data);
        let _ = StatusBits::from_cbor(&data);
        let _ = TrustList::verify(&data, &anchors, NOW, Some(1));
        let _ = StatusList::verify(&data, &tl, NOW);
        let qr = encode_qr(&data);
        let _ = decode_qr(&qr);
        let qr_mut = String::from_utf8_lossy(&mutate(&mut rng, qr.as_bytes())).into_owned();
        let _ = decode_qr(&qr_mut);
        if i % 4 == 0 {
            batch.push(Scan::new(ScanData::Qr(qr_mut), "r".into(), None, None));
        } else {
            batch.push(Scan::new(ScanData::Nfc(data), "r".into(), None, None));
        }
        if batch.len() == 64 {
            let out = verifier.verify_batch(&batch, NOW);
            assert_eq!(out.len(), 64);
            batch.clear();
        }
    }
    // The unmutated presentation still verifies: the loop exercised the real paths.
    let d = verifier.verify(&Scan::new(ScanData::Nfc(good), "r".into(), None, None), NOW);
    assert!(d.accepted(), "{}", d.detail);
}

/// Issue 3 paths: mutated delegations inside otherwise valid, freshly signed presentations
/// (so the pipeline reaches steps 3–8 with them), and mutated AMC attestations in accepted
/// presentations (so step 10 judges them).
#[test]
fn no_panic_on_mutated_delegations_and_attestations() {
    use ciborium::Value;

    use crate::claims;
    use crate::delegation_tests::{fx3, holder_ins};

    let f = fx3();
    let dlg = f.dlg_bytes(&f.pki.amo, &f.dlg_claims());
    let amc = f.amc_bytes(&f.amc, &f.amc_claims(&[holder_ins()]));
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let iterations: usize = std::env::var("APCV_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
        / 10;
    for i in 0..iterations {
        let d = mutate(&mut rng, &dlg);
        let a = mutate(&mut rng, &amc);
        let _ = claims::parse_delegation(&d);
        let _ = claims::parse_amc_attestation(&a);
        let _ = claims::parse_delegation(&mutate(&mut rng, Sign1::parse(&dlg).unwrap().payload()));
        let _ =
            claims::parse_amc_attestation(&mutate(&mut rng, Sign1::parse(&amc).unwrap().payload()));
        let n = i as u64;
        let with_dlg = f.pres_by(&f.delegate, |p| {
            set(p, &[text("dlg")], Some(Value::Bytes(d)));
            set(p, &[int(7)], Some(Value::Bytes(n.to_be_bytes().repeat(2))));
        });
        let _ = f.run(with_dlg);
        let with_amc = f.pres_by(&f.pki.device, |p| {
            set(
                p,
                &[text("amc")],
                Some(Value::Array(vec![
                    Value::Bytes(a),
                    Value::Bytes(amc.clone()),
                ])),
            );
            set(
                p,
                &[int(7)],
                Some(Value::Bytes((n | 1 << 63).to_be_bytes().repeat(2))),
            );
        });
        let out = f.run(with_amc);
        // Long runs fill the fixture's replay store (1000 entries): fail closed, no AMC.
        if out.reason == crate::verify::Reason::ReplayUnavailable {
            continue;
        }
        assert!(out.accepted(), "{}", out.detail);
        assert_eq!(out.amc.len(), 2);
    }
}
