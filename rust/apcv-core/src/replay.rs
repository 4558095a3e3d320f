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

/// Buckets of the old table moved into the new one on each insert while the table grows
/// ([`Inner::make_room`]). The new table has room for at least a quarter of the old one's
/// buckets' worth of inserts beyond the entries it takes over, so with 16 the move ends long
/// before the new table needs to grow in turn.
const MOVE_BUCKETS: usize = 16;

/// One live `cti` and what the store keeps for it.
type Slot = ([u8; CTI_LEN], Entry);

struct Inner {
    /// Where new entries go.
    entries: HashTable<Slot>,
    /// The table `entries` replaced when it ran out of room, emptied into it a few buckets per
    /// insert; empty, with nothing allocated, the rest of the time.
    moving: HashTable<Slot>,
    /// The next bucket of `moving` to move.
    move_at: usize,
    /// Earliest expiry among the entries (a lower bound): purging before it frees nothing,
    /// so a full store does not rescan on every insert.
    min_expiry: i64,
    /// The next bucket the sweep looks at.
    sweep_at: usize,
}

impl Inner {
    fn new() -> Inner {
        Inner {
            entries: HashTable::new(),
            moving: HashTable::new(),
            move_at: 0,
            min_expiry: i64::MAX,
            sweep_at: 0,
        }
    }

    /// Entries held in both tables (expired ones included until swept or purged).
    fn len(&self) -> usize {
        self.entries.len() + self.moving.len()
    }

    /// The live entry held for `cti`, in whichever table holds it. An expired one is dropped:
    /// the id may be recorded again.
    fn live_entry(&mut self, hash: u64, cti: &[u8; CTI_LEN], now: i64) -> Option<Entry> {
        for table in [&mut self.entries, &mut self.moving] {
            if let Ok(found) = table.find_entry(hash, |(k, _)| k == cti) {
                let e = found.get().1;
                if e.live(now) {
                    return Some(e);
                }
                found.remove();
                return None;
            }
        }
        None
    }

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

    /// Makes room in `entries` for one more entry. A hashbrown table out of room grows (or, when
    /// removals' tombstones are what fills it, rehashes in place) inside the insert, every entry
    /// moved while the store is held: 35 ms at half a million entries, 0.3 s at four million
    /// (docs/benchmarks.md "The replay store's sweep"). So the store does it itself: a new
    /// table of the size hashbrown would choose takes the inserts, and the old one is moved
    /// into it [`MOVE_BUCKETS`] buckets per insert ([`Inner::move_some`]), looked up meanwhile.
    fn make_room(&mut self, now: i64, ctis: &RandomState) {
        if self.entries.len() < self.entries.capacity() {
            return;
        }
        if !self.moving.is_empty() {
            // The last move has not ended. By [`MOVE_BUCKETS`]' arithmetic it always has; were
            // it not, it ends here, so that the store never holds three tables.
            self.move_some(usize::MAX, now, ctis);
            if self.entries.len() < self.entries.capacity() {
                return;
            }
        }
        // hashbrown's rule: twice the buckets when more than half full of live entries, the
        // same number (its tombstones cleared) otherwise. The table's full capacity is its
        // buckets' (7 in 8), not `capacity()`, which the tombstones lower.
        let buckets = self.entries.num_buckets();
        let full = if buckets < 8 {
            buckets - 1
        } else {
            buckets / 8 * 7
        };
        let size = if self.entries.len() + 1 > full / 2 {
            full + 1
        } else {
            full
        };
        self.moving = std::mem::replace(&mut self.entries, HashTable::with_capacity(size));
        self.move_at = 0;
    }

    /// Moves the entries of the next `buckets` buckets of the old table into the new one,
    /// dropping those expired at `now`, and frees the old table once it is empty.
    fn move_some(&mut self, buckets: usize, now: i64, ctis: &RandomState) {
        let end = self.moving.num_buckets();
        let mut left = buckets;
        while left > 0 && self.move_at < end && !self.moving.is_empty() {
            if let Ok(slot) = self.moving.get_bucket_entry(self.move_at) {
                let ((cti, entry), _) = slot.remove();
                if entry.live(now) {
                    let rehash = |(k, _): &Slot| ctis.hash_one(k);
                    self.entries
                        .insert_unique(ctis.hash_one(cti), (cti, entry), rehash);
                }
            }
            self.move_at += 1;
            left -= 1;
        }
        if self.moving.is_empty() {
            free_aside(std::mem::take(&mut self.moving));
        }
    }

    /// Drops every expired entry: only when the store is full, to fail closed only for live
    /// entries (docs/profile.md §7.4).
    fn purge(&mut self, now: i64) {
        self.entries.retain(|(_, e)| e.live(now));
        self.moving.retain(|(_, e)| e.live(now));
        self.min_expiry = self
            .entries
            .iter()
            .chain(self.moving.iter())
            .map(|(_, e)| i64::from(e.expires))
            .min()
            .unwrap_or(i64::MAX);
    }
}

/// Tables of at least this many buckets (32 MiB of slots) are freed on a thread of their own.
const FREE_ASIDE_BUCKETS: usize = 1 << 20;

/// Frees an emptied table. Returning a large table's pages to the system takes about a
/// millisecond per 16 MB (20 ms for a table of 8 million buckets), which the insert that ends
/// the move would otherwise pay while holding the store; a thread of its own pays it instead.
/// A smaller table is freed here.
fn free_aside(table: HashTable<Slot>) {
    if table.num_buckets() >= FREE_ASIDE_BUCKETS {
        // When the thread cannot be started, the closure, and the table with it, is dropped
        // here.
        let _ = std::thread::Builder::new()
            .name("replay-free".into())
            .spawn(move || drop(table));
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
/// same, every expired entry is purged before failing closed. When the table grows, its
/// entries are moved into the larger one a few buckets per insert ([`MOVE_BUCKETS`]), not all
/// in one insert.
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
            inner: Mutex::new(Inner::new()),
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
        self.lock().len()
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
        if let Some(e) = g.live_entry(hash, cti, now) {
            return if e.reader == reader {
                ReplayOutcome::SameReader
            } else {
                ReplayOutcome::OtherReader
            };
        }
        if !g.moving.is_empty() {
            g.move_some(MOVE_BUCKETS, now, &self.ctis);
        }
        g.sweep(now);
        if g.len() >= self.max_entries {
            if now > g.min_expiry {
                g.purge(now);
            }
            if g.len() >= self.max_entries {
                return ReplayOutcome::Unavailable;
            }
        }
        g.make_room(now, &self.ctis);
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

    /// Entries still in the old table while the store grows.
    fn moving(s: &MemoryReplayStore) -> usize {
        s.lock().moving.len()
    }

    #[test]
    fn growth_moves_the_old_table_a_few_buckets_per_insert() {
        let s = MemoryReplayStore::new(1_000_000);
        let mut i = 0u64;
        // Fill until a table of at least 1,024 buckets runs out of room and a move starts.
        while moving(&s) == 0 || s.lock().moving.num_buckets() < 1_024 {
            assert_eq!(s.check_and_insert(&cti(i), "r", 100, 0), ReplayOutcome::New);
            i += 1;
            assert!(i < 100_000, "no move started");
        }
        let old_buckets = s.lock().moving.num_buckets();
        // Each later insert moves at most MOVE_BUCKETS entries, and the move ends within
        // old_buckets / MOVE_BUCKETS inserts, the old table freed.
        let mut inserts = 0;
        let mut left = moving(&s);
        while left > 0 {
            assert_eq!(s.check_and_insert(&cti(i), "r", 100, 0), ReplayOutcome::New);
            i += 1;
            inserts += 1;
            let now_left = moving(&s);
            assert!(left - now_left <= MOVE_BUCKETS, "{left} -> {now_left}");
            left = now_left;
            // Entries not yet moved are found where they are.
            let first = i % 50;
            assert_eq!(
                s.check_and_insert(&cti(first), "q", 100, 0),
                ReplayOutcome::OtherReader
            );
        }
        assert!(inserts <= old_buckets / MOVE_BUCKETS, "{inserts}");
        assert_eq!(s.lock().moving.capacity(), 0);
        assert_eq!(s.len(), i as usize);
        for k in 0..i {
            assert_eq!(
                s.check_and_insert(&cti(k), "r", 100, 1),
                ReplayOutcome::SameReader,
                "{k}"
            );
        }
    }

    #[test]
    fn no_insert_grows_or_rehashes_its_table_at_once() {
        // A steady rate with expiry: removals leave tombstones, so the table runs out of room
        // both by growing and by tombstones. 14,280 live entries, just under the 14,336 a table
        // of 16,384 buckets holds. Only a move may change the table's size, and no call may
        // rehash it in place (which would give back thousands of tombstones' room).
        let (rate, life, seconds) = (280u64, 50i64, 600i64);
        let s = MemoryReplayStore::new(1_000_000);
        let shape = |s: &MemoryReplayStore| {
            let g = s.lock();
            (
                g.entries.num_buckets(),
                g.entries.capacity(),
                g.moving.num_buckets(),
            )
        };
        let mut moves = 0;
        for second in 0..seconds {
            for k in 0..rate {
                let i = second as u64 * rate + k;
                let (buckets, capacity, moving) = shape(&s);
                let o = s.check_and_insert(&cti(i), "r", second + life, second);
                assert_eq!(o, ReplayOutcome::New);
                let (buckets_after, capacity_after, moving_after) = shape(&s);
                if buckets_after != buckets || capacity_after > capacity + 1 + MOVE_BUCKETS {
                    // Only a move started by this insert: no move was on, and the table it
                    // filled is now the old one.
                    assert_eq!((moving, moving_after), (1, buckets), "{i}");
                    moves += 1;
                }
            }
        }
        // From 4 buckets to 32,768: 13 moves; later ones clear the tombstones.
        assert!(moves > 13, "{moves}");
        assert_eq!(s.lock().entries.num_buckets(), 32_768);
    }

    #[test]
    fn the_bound_and_the_purge_count_both_tables() {
        // hashbrown's table of 64 buckets holds 56: the 57th insert starts a move.
        let s = MemoryReplayStore::new(58);
        for i in 0..58u64 {
            assert_eq!(s.check_and_insert(&cti(i), "r", 100, 0), ReplayOutcome::New);
        }
        assert!(moving(&s) > 0);
        // Full: 58 live entries across the two tables.
        assert_eq!(
            s.check_and_insert(&cti(58), "r", 100, 5),
            ReplayOutcome::Unavailable
        );
        for i in 0..58u64 {
            assert_eq!(
                s.check_and_insert(&cti(i), "r", 100, 5),
                ReplayOutcome::SameReader,
                "{i}"
            );
        }

        // A table of 1,024 buckets holds 896: the 897th insert starts a move.
        let s = MemoryReplayStore::new(10_000);
        for i in 0..897u64 {
            let expires = if i % 10 == 0 { 100 } else { 10 };
            assert_eq!(
                s.check_and_insert(&cti(i), "r", expires, 0),
                ReplayOutcome::New
            );
        }
        assert!(moving(&s) > 800);
        let mut g = s.lock();
        g.purge(11);
        assert_eq!(g.len(), 90);
        assert!(g.moving.len() > 70);
        assert_eq!(g.min_expiry, 100);
        drop(g);
        for i in 0..897u64 {
            let expected = if i % 10 == 0 {
                ReplayOutcome::SameReader
            } else {
                ReplayOutcome::New
            };
            assert_eq!(s.check_and_insert(&cti(i), "r", 200, 12), expected, "{i}");
        }
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
