//! The in-memory replay store at scale (docs/benchmarks.md, "scale"): resident memory per live
//! entry and the cost of one `check_and_insert` as the store fills up to 10 million live
//! entries (docs/profile.md §7.4), 1,000 readers. One JSON object per line and checkpoint.
//! `--quick` stops at 200,000 entries.

use std::hint::black_box;
use std::time::Instant;

use apcv_core::replay::{MemoryReplayStore, ReplayOutcome, ReplayStore};
use core_bench::cti;

/// Resident set size of this process, bytes (Linux /proc/self/statm × page size 4 KiB).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let checkpoints: Vec<u64> = if quick {
        vec![50_000, 200_000]
    } else {
        vec![
            100_000, 1_000_000, 2_500_000, 5_000_000, 7_500_000, 10_000_000,
        ]
    };
    let last = *checkpoints.last().unwrap_or(&0);
    let readers: Vec<String> = (0..1000).map(|r| format!("reader-{r:04}")).collect();
    let (now, expires) = (1_800_000_000i64, 1_800_000_600i64);
    let base = rss_bytes();
    let store = MemoryReplayStore::new(usize::try_from(last).unwrap_or(usize::MAX));
    let mut filled = 0u64;
    for &target in &checkpoints {
        let t0 = Instant::now();
        while filled < target {
            let reader = &readers[(filled % 1000) as usize];
            let o = store.check_and_insert(&cti(filled), reader, expires, now);
            assert_eq!(o, ReplayOutcome::New);
            filled += 1;
        }
        let fill_s = t0.elapsed().as_secs_f64();
        let rss = rss_bytes().saturating_sub(base);
        // Lookups of live entries (a same-reader retry each): the cost at this size.
        let probes = 200_000u64.min(target);
        let t0 = Instant::now();
        for k in 0..probes {
            let i = (k * 7919) % target;
            let reader = &readers[(i % 1000) as usize];
            let o = store.check_and_insert(black_box(&cti(i)), reader, expires, now);
            assert_eq!(o, ReplayOutcome::SameReader);
        }
        let lookup_ns = t0.elapsed().as_secs_f64() * 1e9 / probes as f64;
        let line = serde_json::json!({
            "live_entries": target,
            "rss_bytes": rss,
            "bytes_per_entry": rss as f64 / target as f64,
            "lookup_ns": lookup_ns,
            "fill_s": fill_s,
        });
        println!("{line}");
    }
    assert_eq!(store.len() as u64, last);
}
