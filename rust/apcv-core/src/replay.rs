//! Replay detection (docs/profile.md §7.4): `cti` → reader id, kept until the presentation's
//! `exp` + skew. The key is `cti`, never the signature bytes (ECDSA signatures are
//! malleable, §7.4).

use std::collections::HashMap;
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

struct Inner {
    entries: HashMap<[u8; CTI_LEN], (Box<str>, i64)>,
    /// Earliest expiry among the entries (a lower bound): purging before it frees nothing,
    /// so a full store does not rescan on every insert.
    min_expiry: i64,
}

/// The embedded, in-process store: bounded, with entries purged once expired.
pub struct MemoryReplayStore {
    max_entries: usize,
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
        let mut g = self.lock();
        if let Some((reader, exp)) = g.entries.get(cti) {
            if *exp >= now {
                return if &**reader == reader_id {
                    ReplayOutcome::SameReader
                } else {
                    ReplayOutcome::OtherReader
                };
            }
            g.entries.remove(cti);
        }
        if g.entries.len() >= self.max_entries {
            if now > g.min_expiry {
                g.entries.retain(|_, (_, exp)| *exp >= now);
                g.min_expiry = g
                    .entries
                    .values()
                    .map(|(_, e)| *e)
                    .min()
                    .unwrap_or(i64::MAX);
            }
            if g.entries.len() >= self.max_entries {
                return ReplayOutcome::Unavailable;
            }
        }
        g.min_expiry = g.min_expiry.min(expires_at);
        g.entries.insert(*cti, (reader_id.into(), expires_at));
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
}
