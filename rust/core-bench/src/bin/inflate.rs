//! QR decoding cost (docs/profile.md §4.1, step 1): base45, then inflate, on a payload the size
//! of a presentation, with the core's `decode_qr` (flate2 on zlib-rs) beside flate2's default
//! backend (miniz_oxide) called directly. One JSON object per line and case; `--quick` runs
//! few iterations.

use std::hint::black_box;
use std::time::Instant;

use cpu_time::ProcessTime;

/// A presentation-like payload: CBOR-ish structure, text claims, keys and signatures
/// (incompressible), about 1,100 bytes.
fn payload() -> Vec<u8> {
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    let mut p = Vec::new();
    p.extend_from_slice(b"\xd2\x84\x43\xa1\x01\x26\xa0\x59\x04\x00");
    p.extend_from_slice(b"\xa6\x06\x1a\x6b\x00\x00\x00\x04\x1a\x6b\x00\x00\x78\x07\x50");
    p.extend(random(16));
    p.extend_from_slice(b"\x64cred\x59\x03\x00\xd2\x84\x4d\xa2\x01\x26\x04\x48");
    p.extend(random(8));
    for claim in [
        "https://amo.apcv.example",
        "cred-000123",
        "status_list",
        "https://status.apcv.example/amo/1",
        "apcv",
        "ins",
        "1.2.250.1.213.1.4.11",
        "DUPONT",
        "Marie Claire",
        "1985-07-00",
        "75056",
        "amo",
        "01",
        "751",
        "1234",
        "2026-01-01",
        "2026-12-31",
        "ben",
        "MARTIN",
        "Paul",
        "2012-03-14",
        "75056",
        "01",
        "751",
        "1234",
        "2026-01-01",
        "2026-12-31",
        "use",
        "care",
    ] {
        p.push(0x60 + claim.len().min(23) as u8);
        p.extend_from_slice(claim.as_bytes());
    }
    p.extend(random(77)); // the device key in cnf
    p.extend(random(64)); // the credential's signature
    p.extend(random(64)); // the presentation's signature
    p
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 1 } else { 5 };
    let n = if quick { 200 } else { 50_000 };
    let data = payload();
    let qr = apcv_core::encoding::encode_qr(&data);
    let compressed = base45::decode(&qr["APCV1:".len()..]).expect("base45");
    assert_eq!(apcv_core::encoding::decode_qr(&qr).expect("decode"), data);
    type Case<'a> = (&'static str, Box<dyn Fn() -> usize + 'a>);
    let cases: Vec<Case> = vec![
        (
            "decode_qr (base45 + flate2/zlib-rs)",
            Box::new(|| apcv_core::encoding::decode_qr(black_box(&qr)).map_or(0, |v| v.len())),
        ),
        (
            "base45 only",
            Box::new(|| base45::decode(black_box(&qr["APCV1:".len()..])).map_or(0, |v| v.len())),
        ),
        (
            "inflate flate2/zlib-rs (core)",
            Box::new(|| {
                apcv_core::encoding::inflate_capped(black_box(&compressed), 16_384)
                    .map_or(0, |v| v.len())
            }),
        ),
        (
            "inflate miniz_oxide (flate2 default)",
            Box::new(|| {
                miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(
                    black_box(&compressed),
                    16_385,
                )
                .map_or(0, |v| v.len())
            }),
        ),
    ];
    for round in 1..=rounds {
        for (name, f) in &cases {
            let (cpu0, wall0) = (ProcessTime::now(), Instant::now());
            let mut total = 0usize;
            for _ in 0..n {
                total += f();
            }
            assert!(total > 0);
            let line = serde_json::json!({
                "round": round,
                "case": name,
                "payload_bytes": data.len(),
                "qr_chars": qr.len(),
                "cpu_us": cpu0.elapsed().as_secs_f64() * 1e6 / n as f64,
                "wall_us": wall0.elapsed().as_secs_f64() * 1e6 / n as f64,
            });
            println!("{line}");
        }
    }
}
