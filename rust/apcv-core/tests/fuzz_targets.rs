//! The cargo-fuzz targets (fuzz/src/lib.rs) as bounded property tests on stable, part of
//! `cargo test` and so of `make test` (docs/reliability.md "Fuzzing"): every committed seed and
//! regression input, then mutations of the seeds and random bytes, a few hundred cases per
//! target (seconds). `APCV_FUZZ_CASES=20000 cargo test --release --test fuzz_targets` runs
//! longer; `make fuzz` runs the same targets under libFuzzer on nightly.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::fs;
use std::path::{Path, PathBuf};

use apcv_core::encoding::{decode_qr, encode_qr};
use proptest::collection::vec;
use proptest::prelude::*;

/// Cases per target and strategy; `APCV_FUZZ_CASES` overrides.
const DEFAULT_CASES: u32 = 256;

fn cases() -> u32 {
    std::env::var("APCV_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // A failure is kept as a file under fuzz/regressions/<target>/ by hand (with the
        // input proptest prints), not in proptest's own regression files.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted by name (none when it does not exist).
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&p).expect("a readable seed"))
        })
        .collect();
    found.sort();
    found
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let found = files(&fuzz_dir().join("corpus").join(target));
    assert!(!found.is_empty(), "no committed seeds for {target}");
    found.into_iter().map(|(_, data)| data).collect()
}

/// One edit of a seed, as a mutating fuzzer would make it.
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0..8u8).prop_map(|(at, bit)| Edit::Flip(at, bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
        (any::<usize>(), vec(any::<u8>(), 1..9)).prop_map(|(at, b)| Edit::Insert(at, b)),
        (any::<usize>(), 1..9usize).prop_map(|(at, n)| Edit::Remove(at, n)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for e in edits {
        let at = |i: usize, extra: usize| i % (v.len() + extra).max(1);
        match e {
            Edit::Flip(i, bit) if !v.is_empty() => {
                let i = at(*i, 0);
                v[i] ^= 1 << bit;
            }
            Edit::Set(i, b) if !v.is_empty() => {
                let i = at(*i, 0);
                v[i] = *b;
            }
            Edit::Insert(i, bytes) => {
                let i = at(*i, 1);
                v.splice(i..i, bytes.iter().copied());
            }
            Edit::Remove(i, n) if !v.is_empty() => {
                let i = at(*i, 0);
                let end = (i + n).min(v.len());
                v.drain(i..end);
            }
            Edit::Truncate(n) => {
                let n = at(*n, 1);
                v.truncate(n);
            }
            _ => {}
        }
    }
    v
}

/// Random bytes, or a committed seed with a few edits (most cases).
fn input(target: &str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds(target);
    let n = seeds.len();
    prop_oneof![
        1 => vec(any::<u8>(), 0..256),
        4 => (0..n, vec(edit(), 1..6)).prop_map(move |(i, edits)| apply(&seeds[i], &edits)),
    ]
}

/// QR seeds with the presentation inside them edited and encoded again, so that the cases
/// get past base45 and zlib to the COSE and claims checks.
fn qr_inner() -> impl Strategy<Value = Vec<u8>> {
    let inner: Vec<Vec<u8>> = seeds("qr_nfc")
        .iter()
        .filter_map(|s| decode_qr(std::str::from_utf8(s).ok()?).ok())
        .collect();
    assert!(!inner.is_empty());
    let n = inner.len();
    (0..n, vec(edit(), 1..4))
        .prop_map(move |(i, edits)| encode_qr(&apply(&inner[i], &edits)).into_bytes())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn qr_nfc(data in input("qr_nfc")) {
        targets::qr_nfc(&data);
    }

    #[test]
    fn qr_nfc_with_an_edited_presentation(data in qr_inner()) {
        targets::qr_nfc(&data);
    }

    #[test]
    fn cose_cwt(data in input("cose_cwt")) {
        targets::cose_cwt(&data);
    }

    #[test]
    fn status_list(data in input("status_list")) {
        let _ = targets::status_list(&data);
    }

    #[test]
    fn trust_list(data in input("trust_list")) {
        let _ = targets::trust_list(&data);
    }
}

/// Every committed seed, and every input a fuzzer once crashed on (fuzz/regressions/<target>/,
/// one file each, kept for good), through its target.
#[test]
fn every_seed_and_regression_input() {
    type Target = fn(&[u8]);
    let run: [(&str, Target); 4] = [
        ("qr_nfc", targets::qr_nfc),
        ("cose_cwt", targets::cose_cwt),
        ("status_list", |d| {
            let _ = targets::status_list(d);
        }),
        ("trust_list", |d| {
            let _ = targets::trust_list(d);
        }),
    ];
    for (target, body) in run {
        for kind in ["corpus", "regressions"] {
            for (_, data) in files(&fuzz_dir().join(kind).join(target)) {
                body(&data);
            }
        }
    }
}

/// The committed fixture is what the seeds were made with: the valid presentation of the
/// corpus is accepted at the fixture's time and the list seeds load, signed as received or
/// signed by the target, so the targets reach the whole pipeline and the payload parsers.
#[test]
fn the_fixture_and_the_seeds_belong_together() {
    let seed = |path: &str| fs::read(fuzz_dir().join("corpus").join(path)).expect("a seed");
    assert!(targets::accepts_once(&seed("cose_cwt/accepted")));
    assert!(!targets::accepts_once(&seed("cose_cwt/tampered")));
    for name in ["signed", "payload"] {
        assert!(
            targets::trust_list(&seed(&format!("trust_list/{name}"))),
            "{name}"
        );
    }
    for name in ["signed", "payload", "bits"] {
        assert!(
            targets::status_list(&seed(&format!("status_list/{name}"))),
            "{name}"
        );
    }
}
