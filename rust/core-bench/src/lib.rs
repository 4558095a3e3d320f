//! What the benchmark programs share: the corpus that loadtest/core_bench.py writes for them,
//! and the replay store benchmarks' presentation ids.

use std::path::Path;
use std::sync::Arc;

use apcv_core::cose::PublicKey;
use apcv_core::replay::MemoryReplayStore;
use apcv_core::status::StatusList;
use apcv_core::trust::TrustList;
use apcv_core::verify::{Policy, Scan, ScanData, Verifier};

/// A corpus directory: `trust.cose`, `anchor.key` (COSE_Key), `status.cwt`, `now` and
/// `nfc.bin` (presentations, each a 4-byte big-endian length then its bytes), loaded and
/// verified as a server would at `now`.
pub struct Corpus {
    pub now: i64,
    pub trust: Arc<TrustList>,
    pub status: Arc<StatusList>,
    pub items: Vec<Vec<u8>>,
}

impl Corpus {
    /// Reads and verifies the corpus in `dir`; panics on anything missing or invalid (a
    /// benchmark has nothing to measure without it).
    pub fn load(dir: &Path) -> Corpus {
        let read = |name: &str| std::fs::read(dir.join(name)).expect(name);
        let now: i64 = String::from_utf8(read("now"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let anchor = PublicKey::from_bytes(&read("anchor.key")).expect("anchor");
        let trust = Arc::new(TrustList::verify(&read("trust.cose"), &[anchor], now, None).unwrap());
        let status = Arc::new(StatusList::verify(&read("status.cwt"), &trust, now).unwrap());
        let blob = read("nfc.bin");
        let mut items = Vec::new();
        let mut at = 0;
        while at < blob.len() {
            let n = u32::from_be_bytes(blob[at..at + 4].try_into().unwrap()) as usize;
            items.push(blob[at + 4..at + 4 + n].to_vec());
            at += 4 + n;
        }
        Corpus {
            now,
            trust,
            status,
            items,
        }
    }

    /// The presentations as NFC scans of one reader, in the corpus's order.
    pub fn scans(&self) -> Vec<Scan> {
        self.items
            .iter()
            .map(|b| Scan::new(ScanData::Nfc(b.clone()), "bench-reader".into(), None, None))
            .collect()
    }

    /// A verifier of the corpus's trust and status lists with a new signature cache and
    /// replay store, as a fresh server has (60 s of clock skew, the cache on).
    pub fn fresh_verifier(&self) -> Verifier {
        Verifier::new(
            self.trust.clone(),
            vec![self.status.clone()],
            Policy::new(true, 60, 0).unwrap(),
            Arc::new(MemoryReplayStore::new(1_000_000)),
        )
    }
}

/// Verifies `scans` in batches of `batch` on the calling thread (or the rayon pool it runs
/// in): how many were accepted.
pub fn accepted_in_batches(verifier: &Verifier, scans: &[Scan], batch: usize, now: i64) -> usize {
    scans
        .chunks(batch)
        .map(|c| {
            verifier
                .verify_batch(c, now)
                .iter()
                .filter(|d| d.accepted())
                .count()
        })
        .sum()
}

/// A distinct 16-byte `cti` for `i` (splitmix64 of i and of its complement): the replay store
/// benchmarks' presentation ids.
pub fn cti(i: u64) -> [u8; 16] {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&mix(i).to_le_bytes());
    out[8..].copy_from_slice(&mix(!i).to_le_bytes());
    out
}
