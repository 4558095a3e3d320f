//! The in-memory replay store at a steady rate (docs/benchmarks.md, "scale"): new presentations
//! at a fixed rate on a simulated clock, each kept `life` seconds (420 s by default,
//! docs/profile.md §7.4), under the store's bound. Reports the entries the store holds against
//! the live ones, the mean `check_and_insert`, and the calls over 1 ms, the longest with its
//! second: the moments when one call holds the store for long (the start of a growth, which
//! allocates the new table; the purge of a full store; before the growth was moved a few
//! buckets per insert, the growth itself). One JSON object per line and case. `--quick` runs
//! one small case.

use std::time::Instant;

use apcv_core::replay::{MemoryReplayStore, ReplayOutcome, ReplayStore};
use core_bench::cti;

/// One case: `rate` new entries a second for `seconds`, each kept `life` seconds, in a store
/// bounded at `max_entries`.
fn steady(max_entries: usize, rate: u64, life: i64, seconds: i64) -> serde_json::Value {
    let store = MemoryReplayStore::new(max_entries);
    let start = 1_800_000_000i64;
    let (mut longest, mut longest_at, mut over_1ms, mut held_most) = (0f64, 0i64, 0u64, 0usize);
    let mut spent = 0f64;
    let mut i = 0u64;
    for second in 0..seconds {
        let now = start + second;
        for _ in 0..rate {
            let t0 = Instant::now();
            let outcome = store.check_and_insert(&cti(i), "reader", now + life, now);
            let took = t0.elapsed().as_secs_f64();
            assert_eq!(outcome, ReplayOutcome::New);
            spent += took;
            if took > 1e-3 {
                over_1ms += 1;
            }
            if took > longest {
                (longest, longest_at) = (took, second);
            }
            i += 1;
        }
        if second >= 2 * life {
            held_most = held_most.max(store.len());
        }
    }
    serde_json::json!({
        "max_entries": max_entries,
        "rate": rate,
        "life_s": life,
        "seconds": seconds,
        // Live at the end: the entries of the last `life` + 1 seconds (expiry is inclusive).
        "live_entries": rate * (life as u64 + 1).min(seconds as u64),
        "held_most": held_most,
        "held_end": store.len(),
        "mean_ns": spent * 1e9 / i as f64,
        "over_1ms": over_1ms,
        "longest_ms": longest * 1e3,
        "longest_at_s": longest_at,
    })
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let cases: &[(usize, u64, i64, i64)] = if quick {
        &[(100_000, 500, 60, 600)]
    } else {
        // The default bound at a 2-core server's rate; ten times the bound at ten times the
        // rate (4.2 million live entries). Half an hour each.
        &[
            (1_000_000, 1_065, 420, 1_800),
            (10_000_000, 10_000, 420, 1_800),
        ]
    };
    for &(max_entries, rate, life, seconds) in cases {
        println!("{}", steady(max_entries, rate, life, seconds));
    }
}
