//! Replay detection (docs/profile.md §7.4): `cti` → reader id, kept until the presentation's
//! `exp` + skew. The key is `cti`, never the signature bytes (ECDSA signatures are
//! malleable, §7.4).

use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

use hashbrown::HashTable;

use crate::limits::CTI_LEN;

/// What the store says about a presentation id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// First time seen: recorded.
    New,
    /// Already accepted for the same reader: a retry, accepted with `duplicate = true`.
    SameReader,
    /// Already accepted for another reader: REPLAYED.
    OtherReader,
    /// The store cannot answer (full, unreachable): REPLAY_UNAVAILABLE (fail closed).
    Unavailable,
}

/// A replay store shared by every copy of a verifier.
pub trait ReplayStore: Send + Sync {
    /// Atomically looks `cti` up and records it for `reader_id` until `expires_at` when new.
    fn check_and_insert(
        &self,
        cti: &[u8; CTI_LEN],
        reader_id: &str,
        expires_at: i64,
        now: i64,
    ) -> ReplayOutcome;
}

/// What the store keeps for one live `cti` (docs/profile.md §7.4): 12 bytes, so that an entry
/// with its 16-byte key is 32 bytes in the table (about 55 bytes per live entry at 10 million
/// entries with the table's load factor and control bytes; docs/benchmarks.md).
#[derive(Clone, Copy)]
struct Entry {
    /// A keyed 64-bit hash of the reader id ([`MemoryReplayStore::reader_hash`]): enough to
    /// tell a same-reader retry from another reader.
    reader: u64,
    /// `expires_at` in seconds since the epoch, clamped to `0..=u32::MAX` (year 2106); before
    /// 2106 a clamped entry is only kept longer, never shorter, than asked.
    expires: u32,
}

impl Entry {
    fn live(&self, now: i64) -> bool {
        i64::from(self.expires) >= now
    }
}

fn clamp_u32(t: i64) -> u32 {
    u32::try_from(t.max(0)).unwrap_or(u32::MAX)
}

/// Buckets of the table the sweep looks at on each insert. The whole table is swept once every
/// `num_buckets / SWEEP_BUCKETS` inserts, so an expired entry stays at most that long: at a
/// steady rate, with `L` live entries in a table of `B` buckets, the table holds about
/// `L + B / (2 × SWEEP_BUCKETS)` entries. With 16 that is within a few percent of `L`; with 4
/// the table held more expired entries, and with the tombstones that removals leave (which
/// count against its load until a rehash) it doubled sooner (docs/benchmarks.md "The replay
/// store's sweep").
const SWEEP_BUCKETS: usize = 16;

/// One live `cti` and what the store keeps for it.
type Slot = ([u8; CTI_LEN], Entry);

struct Inner {
    entries: HashTable<Slot>,
    /// Earliest expiry among the entries (a lower bound): purging before it frees nothing,
    /// so a full store does not rescan on every insert.
    min_expiry: i64,
    /// The next bucket the sweep looks at.
    sweep_at: usize,
}

impl Inner {
    /// Drops the expired entries among the next [`SWEEP_BUCKETS`] buckets. Expired entries
    /// are dropped a few at a time as new ones come, so that no single call pays for all of
    /// them: a whole-table purge holds the store for tens of milliseconds at a million
    /// entries (docs/benchmarks.md "The replay store's sweep").
    fn sweep(&mut self, now: i64) {
        let buckets = self.entries.num_buckets();
        for _ in 0..SWEEP_BUCKETS.min(buckets) {
            let at = self.sweep_at % buckets;
            self.sweep_at = at + 1;
            if let Ok(slot) = self.entries.get_bucket_entry(at) {
                if !slot.get().1.live(now) {
                    slot.remove();
                }
            }
        }
    }

    /// Drops every expired entry: only when the store is full, to fail closed only for live
    /// entries (docs/profile.md §7.4).
    fn purge(&mut self, now: i64) {
        self.entries.retain(|(_, e)| e.live(now));
        self.min_expiry = self
            .entries
            .iter()
            .map(|(_, e)| i64::from(e.expires))
            .min()
            .unwrap_or(i64::MAX);
    }
}

/// The embedded, in-process store: bounded, with entries dropped once expired.
///
/// The reader id is kept as a 64-bit SipHash under a random key drawn for each store, not as
/// text: two different readers are taken for one with probability 2⁻⁶⁴ per pair, and an
/// attacker who does not know the key cannot choose reader ids that collide. Such a collision
/// would answer a same-reader retry (accepted, `duplicate = true`) where `REPLAYED` was due.
/// The table is keyed by a SipHash of the `cti` under another random key: the presenter
/// chooses the `cti`, and must not be able to choose ids that collide in the table.
///
/// Expired entries are swept a few buckets per insert ([`SWEEP_BUCKETS`]), so the table
/// follows the live entries instead of growing to `max_entries`; when it is full all the
/// same, every expired entry is purged before failing closed.
pub struct MemoryReplayStore {
    max_entries: usize,
    readers: RandomState,
    ctis: RandomState,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for MemoryReplayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryReplayStore")
            .field("max_entries", &self.max_entries)
            .field("len", &self.len())
            .finish()
    }
}

impl MemoryReplayStore {
    /// A store holding at most `max_entries` live presentation ids.
    pub fn new(max_entries: usize) -> MemoryReplayStore {
        MemoryReplayStore {
            max_entries,
            readers: RandomState::new(),
            ctis: RandomState::new(),
            inner: Mutex::new(Inner {
                entries: HashTable::new(),
                min_expiry: i64::MAX,
                sweep_at: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the map inconsistent (every update is one call),
        // so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The keyed hash a reader id is kept as.
    fn reader_hash(&self, reader_id: &str) -> u64 {
        self.readers.hash_one(reader_id)
    }

    /// Number of entries held (expired ones included until swept or purged).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound given at construction.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }
}

impl ReplayStore for MemoryReplayStore {
    fn check_and_insert(
        &self,
        cti: &[u8; CTI_LEN],
        reader_id: &str,
        expires_at: i64,
        now: i64,
    ) -> ReplayOutcome {
        let reader = self.reader_hash(reader_id);
        let hash = self.ctis.hash_one(cti);
        let mut g = self.lock();
        if let Ok(found) = g.entries.find_entry(hash, |(k, _)| k == cti) {
            let e = found.get().1;
            if e.live(now) {
                return if e.reader == reader {
                    ReplayOutcome::SameReader
                } else {
                    ReplayOutcome::OtherReader
                };
            }
            found.remove();
        }
        g.sweep(now);
        if g.entries.len() >= self.max_entries {
            if now > g.min_expiry {
                g.purge(now);
            }
            if g.entries.len() >= self.max_entries {
                return ReplayOutcome::Unavailable;
            }
        }
        let expires = clamp_u32(expires_at);
        g.min_expiry = g.min_expiry.min(i64::from(expires));
        let rehash = |(k, _): &Slot| self.ctis.hash_one(k);
        g.entries
            .insert_unique(hash, (*cti, Entry { reader, expires }), rehash);
        ReplayOutcome::New
    }
}

/// The replay store of a verifier whose step 9 is done outside the core (e.g. Redis, driven
/// by the service, with the `settle` module): never consulted by
/// `Verifier::verify_batch_deferred`; were it ever asked, it fails closed (docs/profile.md
/// §7.4).
#[derive(Clone, Copy, Debug, Default)]
pub struct ExternalReplayStore;

impl ReplayStore for ExternalReplayStore {
    fn check_and_insert(
        &self,
        _cti: &[u8; CTI_LEN],
        _reader_id: &str,
        _expires_at: i64,
        _now: i64,
    ) -> ReplayOutcome {
        ReplayOutcome::Unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_and_other_reader() {
        let s = MemoryReplayStore::new(10);
        let c = [1u8; CTI_LEN];
        assert_eq!(s.check_and_insert(&c, "r1", 100, 0), ReplayOutcome::New);
        assert_eq!(
            s.check_and_insert(&c, "r1", 100, 50),
            ReplayOutcome::SameReader
        );
        assert_eq!(
            s.check_and_insert(&c, "r2", 100, 50),
            ReplayOutcome::OtherReader
        );
        // After expiry the id is forgotten (the presentation itself is expired by then).
        assert_eq!(s.check_and_insert(&c, "r2", 300, 101), ReplayOutcome::New);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn full_store_fails_closed_and_purges() {
        let s = MemoryReplayStore::new(2);
        assert_eq!(
            s.check_and_insert(&[1; CTI_LEN], "r", 10, 0),
            ReplayOutcome::New
        );
        assert_eq!(
            s.check_and_insert(&[2; CTI_LEN], "r", 20, 0),
            ReplayOutcome::New
        );
        assert_eq!(
            s.check_and_insert(&[3; CTI_LEN], "r", 30, 5),
            ReplayOutcome::Unavailable
        );
        // Known ids still answer while full.
        assert_eq!(
            s.check_and_insert(&[2; CTI_LEN], "r", 20, 5),
            ReplayOutcome::SameReader
        );
        // Once the first entry expires, purging frees a slot.
        assert_eq!(
            s.check_and_insert(&[3; CTI_LEN], "r", 30, 11),
            ReplayOutcome::New
        );
        assert_eq!(s.len(), 2);
        let z = MemoryReplayStore::new(0);
        assert_eq!(
            z.check_and_insert(&[1; CTI_LEN], "r", 10, 0),
            ReplayOutcome::Unavailable
        );
    }

    /// A distinct `cti` for `i`.
    fn cti(i: u64) -> [u8; CTI_LEN] {
        let mut out = [0u8; CTI_LEN];
        out[..8].copy_from_slice(&i.to_le_bytes());
        out[8..].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
        out
    }

    #[test]
    fn sweep_follows_the_live_entries_and_keeps_every_live_one() {
        // 200 new presentations a second, each kept 50 s: 10,000 live entries, far under the
        // bound, so only the sweep drops expired ones.
        let (rate, life, seconds) = (200u64, 50i64, 400i64);
        let s = MemoryReplayStore::new(1_000_000);
        let mut most = 0;
        for second in 0..seconds {
            for k in 0..rate {
                let i = second as u64 * rate + k;
                let o = s.check_and_insert(&cti(i), "r", second + life, second);
                assert_eq!(o, ReplayOutcome::New);
            }
            if second >= 2 * life {
                most = most.max(s.len());
            }
        }
        let live = (rate * life as u64) as usize;
        assert!(most > live, "{most}");
        // Expired entries stay at most one sweep of the table: never twice the live ones.
        assert!(most < 2 * live, "{most} entries held for {live} live");
        // None of the live entries was dropped: each answers as already seen.
        let now = seconds - 1;
        for i in ((seconds - life) as u64 * rate)..(seconds as u64 * rate) {
            assert_eq!(
                s.check_and_insert(&cti(i), "r", now + life, now),
                ReplayOutcome::SameReader,
                "{i}"
            );
        }
    }

    #[test]
    fn sweep_drops_nothing_live() {
        // Long-lived entries among short-lived ones: the sweep passes over them many times.
        let s = MemoryReplayStore::new(100_000);
        for i in 0..20_000u64 {
            let life = if i % 10 == 0 { 1_000_000 } else { 5 };
            let now = (i / 100) as i64;
            assert_eq!(
                s.check_and_insert(&cti(i), "r", now + life, now),
                ReplayOutcome::New
            );
        }
        for i in (0..20_000u64).step_by(10) {
            assert_eq!(
                s.check_and_insert(&cti(i), "q", 1_000, 200),
                ReplayOutcome::OtherReader,
                "{i}"
            );
        }
        // 2,000 long-lived, ≈ 500 short-lived live ones and what the sweep has not reached
        // yet (a quarter of the table's buckets at most): not the 18,000 expired ones.
        assert!(s.len() < 4_000, "{}", s.len());
    }

    #[test]
    fn entry_is_32_bytes_in_the_table() {
        assert_eq!(std::mem::size_of::<([u8; CTI_LEN], Entry)>(), 32);
    }

    #[test]
    fn expiry_outside_u32_is_kept_longer_never_shorter() {
        let s = MemoryReplayStore::new(10);
        let far = i64::from(u32::MAX) + 1_000;
        assert_eq!(
            s.check_and_insert(&[7; CTI_LEN], "r", far, 0),
            ReplayOutcome::New
        );
        assert_eq!(
            s.check_and_insert(&[7; CTI_LEN], "q", far, i64::from(u32::MAX)),
            ReplayOutcome::OtherReader
        );
        assert_eq!(
            s.check_and_insert(&[8; CTI_LEN], "r", -5, -10),
            ReplayOutcome::New
        );
        assert_eq!(
            s.check_and_insert(&[8; CTI_LEN], "r", -5, -6),
            ReplayOutcome::SameReader
        );
    }

    #[test]
    fn readers_told_apart_by_their_hash() {
        let s = MemoryReplayStore::new(1_000);
        for i in 0..200u8 {
            let reader = format!("reader-{i}");
            assert_eq!(
                s.check_and_insert(&[i; CTI_LEN], &reader, 100, 0),
                ReplayOutcome::New
            );
            assert_eq!(
                s.check_and_insert(&[i; CTI_LEN], &reader, 100, 1),
                ReplayOutcome::SameReader
            );
            let other = format!("reader-{}", i.wrapping_add(1));
            assert_eq!(
                s.check_and_insert(&[i; CTI_LEN], &other, 100, 1),
                ReplayOutcome::OtherReader
            );
        }
    }
}
