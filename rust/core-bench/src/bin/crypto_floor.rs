//! The crypto floor of the verification core: what two signature verifications cost with each
//! candidate backend, timed side by side in interleaved rounds (docs/benchmarks.md).
//!
//! Backends: ring (the core's), aws-lc-rs (AWS-LC, with x86-64 assembly for P-256) and
//! RustCrypto (`p256`, `ed25519-dalek`). Algorithms: ES256 and Ed25519 (docs/profile.md §2.2).
//! Each verification starts from the raw public key bytes, as the core holds them, so key
//! parsing (point decoding and validation) is part of the cost. Before timing, every backend
//! must accept the good signature and refuse a tampered one.
//!
//! Output: one JSON object per line and case, then nothing else (`loadtest/core_bench.py`
//! reads it). `--quick` runs few iterations, to keep the benchmark working in `make test`
//! (which builds it without the `alternatives` feature: ring alone).
//!
//! `--touch-mib N,M,…` times instead each backend's ES256 verification on one thread with
//! that many MiB copied between two verifications (0: none), the verification alone timed
//! on the thread's clock: what it costs once other work has refilled the caches, as between
//! two unary calls in the server (`loadtest/core_cold.py --crypto`).

use std::hint::black_box;
use std::time::Instant;

use cpu_time::{ProcessTime, ThreadTime};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Ring,
    AwsLc,
    RustCrypto,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Alg {
    Es256,
    Ed25519,
}

struct Fixture {
    message: Vec<u8>,
    p256_point: Vec<u8>,
    p256_sig: Vec<u8>,
    ed_key: Vec<u8>,
    ed_sig: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        let rng = SystemRandom::new();
        // A Sig_structure of the size of a credential's (docs/profile.md §3.3), ~600 bytes.
        let message: Vec<u8> = (0..600u32).map(|i| (i * 7 + 3) as u8).collect();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("P-256 key");
        let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("P-256 key");
        let p256_sig = ec.sign(&rng, &message).expect("sign").as_ref().to_vec();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key");
        let ed = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519 key");
        Fixture {
            p256_point: ec.public_key().as_ref().to_vec(),
            p256_sig,
            ed_key: ed.public_key().as_ref().to_vec(),
            ed_sig: ed.sign(&message).as_ref().to_vec(),
            message,
        }
    }

    fn key_and_sig(&self, alg: Alg) -> (&[u8], &[u8]) {
        match alg {
            Alg::Es256 => (&self.p256_point, &self.p256_sig),
            Alg::Ed25519 => (&self.ed_key, &self.ed_sig),
        }
    }
}

fn verify(backend: Backend, alg: Alg, key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    match (backend, alg) {
        (Backend::Ring, Alg::Es256) => {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, key)
                .verify(msg, sig)
                .is_ok()
        }
        (Backend::Ring, Alg::Ed25519) => {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
                .verify(msg, sig)
                .is_ok()
        }
        #[cfg(feature = "alternatives")]
        (Backend::AwsLc, Alg::Es256) => aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            key,
        )
        .verify(msg, sig)
        .is_ok(),
        #[cfg(feature = "alternatives")]
        (Backend::AwsLc, Alg::Ed25519) => {
            aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, key)
                .verify(msg, sig)
                .is_ok()
        }
        #[cfg(feature = "alternatives")]
        (Backend::RustCrypto, Alg::Es256) => {
            use p256::ecdsa::signature::Verifier;
            let Ok(k) = p256::ecdsa::VerifyingKey::from_sec1_bytes(key) else {
                return false;
            };
            let Ok(s) = p256::ecdsa::Signature::from_slice(sig) else {
                return false;
            };
            k.verify(msg, &s).is_ok()
        }
        #[cfg(feature = "alternatives")]
        (Backend::RustCrypto, Alg::Ed25519) => {
            let Ok(k) = <[u8; 32]>::try_from(key) else {
                return false;
            };
            let Ok(k) = ed25519_dalek::VerifyingKey::from_bytes(&k) else {
                return false;
            };
            let Ok(s) = ed25519_dalek::Signature::from_slice(sig) else {
                return false;
            };
            k.verify_strict(msg, &s).is_ok()
        }
        #[cfg(not(feature = "alternatives"))]
        (Backend::AwsLc | Backend::RustCrypto, _) => unreachable!("built without alternatives"),
    }
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|f| f.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let arg = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let rounds = arg("--rounds", if quick { 1 } else { 3 });
    let per_thread = arg("--iterations", if quick { 50 } else { 6000 });

    let fx = Fixture::new();
    let backends: &[Backend] = if cfg!(feature = "alternatives") {
        &[Backend::Ring, Backend::AwsLc, Backend::RustCrypto]
    } else {
        &[Backend::Ring]
    };
    let algs = [Alg::Es256, Alg::Ed25519];
    for &b in backends {
        for a in algs {
            let (key, sig) = fx.key_and_sig(a);
            assert!(verify(b, a, key, &fx.message, sig), "{b:?} {a:?} refuses");
            let mut bad = sig.to_vec();
            bad[10] ^= 1;
            assert!(!verify(b, a, key, &fx.message, &bad), "{b:?} {a:?} accepts");
        }
    }

    let touches: Vec<usize> = args
        .iter()
        .position(|a| a == "--touch-mib")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_default();
    if !touches.is_empty() {
        after_other_work(&fx, backends, &touches, rounds, per_thread);
        return;
    }

    let mut cases = Vec::new();
    for a in algs {
        for threads in [1usize, 2] {
            for &b in backends {
                cases.push((b, a, threads));
            }
        }
    }
    for round in 1..=rounds {
        let order: Vec<_> = if round % 2 == 0 {
            cases.iter().rev().copied().collect()
        } else {
            cases.clone()
        };
        for (b, a, threads) in order {
            let load = load_average();
            let (key, sig) = fx.key_and_sig(a);
            let (cpu0, wall0) = (ProcessTime::now(), Instant::now());
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| {
                        for _ in 0..per_thread {
                            assert!(black_box(verify(
                                b,
                                a,
                                black_box(key),
                                black_box(&fx.message),
                                black_box(sig)
                            )));
                        }
                    });
                }
            });
            let (cpu, wall) = (cpu0.elapsed(), wall0.elapsed());
            let n = (per_thread * threads) as f64;
            let line = serde_json::json!({
                "round": round,
                "backend": format!("{b:?}"),
                "alg": format!("{a:?}"),
                "threads": threads,
                "verifications": n,
                "cpu_us_per_verify": cpu.as_secs_f64() * 1e6 / n,
                "verifies_per_s": n / wall.as_secs_f64(),
                "load_avg": load,
            });
            println!("{line}");
        }
    }
}

/// ES256 verification by each backend on this thread, `per_case` times per case, with each
/// size in `touches` (MiB) copied between two verifications; only the verifications timed.
fn after_other_work(
    fx: &Fixture,
    backends: &[Backend],
    touches: &[usize],
    rounds: usize,
    per_case: usize,
) {
    let largest = touches.iter().copied().max().unwrap_or(0) << 20;
    let from = vec![1u8; largest];
    let mut to = vec![0u8; largest];
    let (key, sig) = fx.key_and_sig(Alg::Es256);
    let cases: Vec<(Backend, usize)> = backends
        .iter()
        .flat_map(|&b| touches.iter().map(move |&t| (b, t)))
        .collect();
    for round in 1..=rounds {
        let order: Vec<_> = if round % 2 == 0 {
            cases.iter().rev().copied().collect()
        } else {
            cases.clone()
        };
        for (b, touch) in order {
            let bytes = touch << 20;
            let mut spent = 0.0;
            for _ in 0..per_case {
                to[..bytes].copy_from_slice(&from[..bytes]);
                black_box(&to);
                let started = ThreadTime::now();
                let ok = verify(b, Alg::Es256, black_box(key), black_box(&fx.message), sig);
                spent += started.elapsed().as_secs_f64();
                assert!(ok);
            }
            let line = serde_json::json!({
                "round": round,
                "backend": format!("{b:?}"),
                "alg": "Es256",
                "touch_mib": touch,
                "verifications": per_case,
                "cpu_us_per_verify": spent * 1e6 / per_case as f64,
            });
            println!("{line}");
        }
    }
}
