//! The core's batches on 1 and 2 rayon threads, in Rust (no Python around it), beside a probe
//! of the cores the machine gives at that moment (docs/benchmarks.md, "2 threads").
//!
//! `batch_threads DIR`: DIR holds what loadtest/core_bench.py writes: `trust.cose`,
//! `anchor.key` (COSE_Key), `status.cwt`, `now` and `nfc.bin` (presentations, each a 4-byte
//! big-endian length then its bytes). Cases, interleaved over rounds: `core` (verify_batch in
//! batches of 100, fresh verifier with its signature cache and replay store) and `probe` (SHA-256
//! over the same bytes, perfectly parallel), each on a pool of 1 and 2 threads. One JSON object
//! per line and case. Then `per_call`: one item per call against batches of 100 on one thread,
//! interleaved block by block (100 items each, two fresh verifiers fed the same sequence), so
//! that both see the same moment of a shared machine: what a call costs apart from its items,
//! without Python. `--quick`: one round.

use std::time::Instant;

use core_bench::{accepted_in_batches, Corpus};
use cpu_time::{ProcessTime, ThreadTime};
use rayon::prelude::*;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let dir = std::path::PathBuf::from(args.iter().find(|a| !a.starts_with("--")).expect("DIR"));
    let corpus = Corpus::load(&dir);
    let (now, items) = (corpus.now, &corpus.items);
    let rounds = if quick { 1 } else { 3 };
    let cases = [("core", 1), ("core", 2), ("probe", 1), ("probe", 2)];
    for round in 1..=rounds {
        let order: Vec<_> = if round % 2 == 1 {
            cases.to_vec()
        } else {
            cases.iter().rev().copied().collect()
        };
        for (case, threads) in order {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let scans = corpus.scans();
            let verifier = corpus.fresh_verifier();
            let (cpu0, wall0) = (ProcessTime::now(), Instant::now());
            let done: usize = pool.install(|| match case {
                "core" => accepted_in_batches(&verifier, &scans, 100, now),
                _ => items
                    .par_iter()
                    .map(|b| {
                        let mut d = b.clone();
                        for _ in 0..40 {
                            d = ring::digest::digest(&ring::digest::SHA256, &d)
                                .as_ref()
                                .to_vec();
                        }
                        usize::from(!std::hint::black_box(d).is_empty())
                    })
                    .sum(),
            });
            let (cpu, wall) = (cpu0.elapsed().as_secs_f64(), wall0.elapsed().as_secs_f64());
            assert_eq!(done, items.len(), "{case}: not every item done");
            let line = serde_json::json!({
                "round": round,
                "case": case,
                "threads": threads,
                "cpu_us": cpu * 1e6 / items.len() as f64,
                "per_s": items.len() as f64 / wall,
                "cores_used": cpu / wall,
            });
            println!("{line}");
        }
    }

    // One item per call against batches of 100, interleaved by block on one thread.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    for round in 1..=rounds {
        let (one, batch) = (corpus.fresh_verifier(), corpus.fresh_verifier());
        let scans = corpus.scans();
        let (mut one_s, mut batch_s, mut done) = (0.0, 0.0, 0);
        pool.install(|| {
            for (k, block) in scans.chunks(100).enumerate() {
                for first in [k % 2 == 0, k % 2 == 1] {
                    let t0 = ThreadTime::now();
                    if first {
                        for s in block {
                            done += usize::from(
                                one.verify_batch(std::slice::from_ref(s), now)[0].accepted(),
                            );
                        }
                        one_s += t0.elapsed().as_secs_f64();
                    } else {
                        done += batch
                            .verify_batch(block, now)
                            .iter()
                            .filter(|d| d.accepted())
                            .count();
                        batch_s += t0.elapsed().as_secs_f64();
                    }
                }
            }
        });
        assert_eq!(done, 2 * items.len(), "per_call: not every item accepted");
        let n = items.len() as f64;
        let line = serde_json::json!({
            "round": round,
            "case": "per_call",
            "threads": 1,
            "one_cpu_us": one_s * 1e6 / n,
            "batch_cpu_us": batch_s * 1e6 / n,
        });
        println!("{line}");
    }
}
