//! The NFC corpus in Rust alone, on the calling thread, for profiling the core's work per
//! presentation (`perf record`) and counting its heap allocations (docs/benchmarks.md, "Core:
//! what each lever was predicted to do").
//!
//! `nfc_items DIR [--passes N] [--batch N]`: DIR as for `batch_threads`. Each pass verifies
//! the whole corpus in batches (default 100) with a fresh verifier (signature cache, replay
//! store), as core_bench's `core-nfc-100-cache` does, every item accepted. Prints one JSON line
//! per pass: CPU µs and heap allocations per presentation (a counting allocator around the
//! system's).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use core_bench::{accepted_in_batches, Corpus};
use cpu_time::ProcessTime;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect(name))
    };
    let (passes, batch) = (opt("--passes", 3), opt("--batch", 100));
    let dir = std::path::PathBuf::from(args.first().expect("DIR"));
    let corpus = Corpus::load(&dir);
    let (now, items) = (corpus.now, &corpus.items);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    for pass in 1..=passes {
        let scans = corpus.scans();
        let verifier = corpus.fresh_verifier();
        let (a0, b0) = (
            ALLOCS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        let t0 = ProcessTime::now();
        let done = pool.install(|| accepted_in_batches(&verifier, &scans, batch, now));
        let cpu = t0.elapsed().as_secs_f64();
        let (a1, b1) = (
            ALLOCS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        assert_eq!(done, items.len(), "not every item accepted");
        let n = items.len() as f64;
        let line = serde_json::json!({
            "pass": pass,
            "cpu_us": cpu * 1e6 / n,
            "allocs": (a1 - a0) as f64 / n,
            "alloc_bytes": (b1 - b0) as f64 / n,
        });
        println!("{line}");
    }
}
