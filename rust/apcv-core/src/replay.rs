//! Replay detection (docs/profile.md §7.4): `cti` → reader id, kept until the presentation's
//! `exp` + skew. The key is `cti`, never the signature bytes (ECDSA signatures are
//! malleable, §7.4).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

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

struct Inner {
    entries: HashMap<[u8; CTI_LEN], Entry>,
    /// Earliest expiry among the entries (a lower bound): purging before it frees nothing,
    /// so a full store does not rescan on every insert.
    min_expiry: i64,
}

/// The embedded, in-process store: bounded, with entries purged once expired.
///
/// The reader id is kept as a 64-bit SipHash under a random key drawn for each store, not as
/// text: two different readers are taken for one with probability 2⁻⁶⁴ per pair, and an
/// attacker who does not know the key cannot choose reader ids that collide. Such a collision
/// would answer a same-reader retry (accepted, `duplicate = true`) where `REPLAYED` was due.
pub struct MemoryReplayStore {
    max_entries: usize,
    readers: RandomState,
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
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                min_expiry: i64::MAX,
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

    /// Number of entries held (expired ones included until purged).
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
        let mut g = self.lock();
        if let Some(e) = g.entries.get(cti) {
            if e.live(now) {
                return if e.reader == reader {
                    ReplayOutcome::SameReader
                } else {
                    ReplayOutcome::OtherReader
                };
            }
            g.entries.remove(cti);
        }
        if g.entries.len() >= self.max_entries {
            if now > g.min_expiry {
                g.entries.retain(|_, e| e.live(now));
                g.min_expiry = g
                    .entries
                    .values()
                    .map(|e| i64::from(e.expires))
                    .min()
                    .unwrap_or(i64::MAX);
            }
            if g.entries.len() >= self.max_entries {
                return ReplayOutcome::Unavailable;
            }
        }
        let expires = clamp_u32(expires_at);
        g.min_expiry = g.min_expiry.min(i64::from(expires));
        g.entries.insert(*cti, Entry { reader, expires });
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
