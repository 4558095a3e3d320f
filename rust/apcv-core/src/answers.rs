//! Answer recovery (docs/integration.md "Answer recovery", docs/operations.md "Answer
//! recovery"): the answer given to a request is kept, compactly and without personal data,
//! so that a resend with the same caller, reader id and request id gets that answer back —
//! whatever the time, the trust list or the status lists by then.
//!
//! What is kept, under a keyed hash of (caller, reader id, request id) ([`AnswerKeys::key`]):
//! a keyed hash of the exact presentation bytes ([`AnswerKeys::digest`]) and the decision
//! without the person — reason, fixed phrase, use, flags, verification time, and each AMC
//! attestation's outcome ([`AnswerRecord`], about 30 bytes for an accepted presentation).
//! The person, the issuer, the delegation label and the AMC coverage are rebuilt by decoding
//! the resent presentation again ([`crate::verify::Verifier::recover`]): it is the same
//! bytes (the digest says so), and decoding is deterministic; nothing is judged again.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use ring::hmac;

use crate::claims::Use;
use crate::decision::{AmcReason, Decision, Reason};

/// Length of an answer key and of a presentation digest (truncated HMAC-SHA256).
pub const HASH_LEN: usize = 16;

/// First byte of an encoded [`AnswerRecord`].
const RECORD_VERSION: u8 = 1;
/// Flags byte of an encoded record.
const FLAG_DUPLICATE: u8 = 1;
const FLAG_REPLAY_UNCHECKED: u8 = 2;
/// Longest fixed phrase kept (the core's phrases are far shorter).
const MAX_DETAIL: usize = 255;

/// The keyed hashes of answer recovery: HMAC-SHA256 under a secret, truncated to 16 bytes.
/// Without the secret, a stored key or digest tells nothing about the caller, the reader, the
/// request or the presentation.
pub struct AnswerKeys {
    key: hmac::Key,
}

impl std::fmt::Debug for AnswerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnswerKeys")
    }
}

fn truncated(tag: hmac::Tag) -> [u8; HASH_LEN] {
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(tag.as_ref().get(..HASH_LEN).unwrap_or_default());
    out
}

impl AnswerKeys {
    /// Hashes under `secret` (any length; 32 random bytes are plenty).
    pub fn new(secret: &[u8]) -> AnswerKeys {
        AnswerKeys {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The key of a request: each part length-prefixed, so no two triples share an input.
    pub fn key(&self, caller: &str, reader_id: &str, request_id: &str) -> [u8; HASH_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"k");
        for part in [caller, reader_id, request_id] {
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            ctx.update(&len.to_be_bytes());
            ctx.update(part.as_bytes());
        }
        truncated(ctx.sign())
    }

    /// The digest of the exact presentation bytes (the QR text's UTF-8, or the NFC bytes).
    pub fn digest(&self, presentation: &[u8]) -> [u8; HASH_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"p");
        ctx.update(presentation);
        truncated(ctx.sign())
    }
}

/// The non-personal part of an answer, kept for recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerRecord {
    /// [`AnswerKeys::digest`] of the presentation answered.
    pub digest: [u8; HASH_LEN],
    /// The decision's reason.
    pub reason: Reason,
    /// Its fixed phrase.
    pub detail: String,
    /// The presentation's use, once parsed.
    pub use_: Option<Use>,
    /// The decision's `duplicate` flag.
    pub duplicate: bool,
    /// The decision's `replay_unchecked` flag.
    pub replay_unchecked: bool,
    /// When the decision was made (seconds).
    pub verified_at: i64,
    /// When accepted: each AMC attestation's outcome and phrase, in presentation order.
    pub amc: Vec<(AmcReason, String)>,
}

fn index_of<T: PartialEq>(all: &[T], x: &T) -> u8 {
    all.iter()
        .position(|y| y == x)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(u8::MAX)
}

fn push_text(out: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(MAX_DETAIL);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.push(u8::try_from(end).unwrap_or(u8::MAX));
    out.extend_from_slice(text.as_bytes().get(..end).unwrap_or_default());
}

/// Reads an encoded record.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn byte(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn text(&mut self) -> Option<String> {
        let n = usize::from(self.byte()?);
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

impl AnswerRecord {
    /// The record of `decision` for a presentation of digest `digest`, made at `verified_at`.
    pub fn of(decision: &Decision, digest: [u8; HASH_LEN], verified_at: i64) -> AnswerRecord {
        AnswerRecord {
            digest,
            reason: decision.reason,
            detail: decision.detail.to_owned(),
            use_: decision.use_,
            duplicate: decision.duplicate,
            replay_unchecked: decision.replay_unchecked,
            verified_at,
            amc: decision
                .amc
                .iter()
                .map(|a| (a.reason, a.detail.to_owned()))
                .collect(),
        }
    }

    /// The compact encoding: version, digest, reason, use, flags, time (u32), phrase, then
    /// the AMC outcomes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.detail.len() + 2 * self.amc.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.digest);
        out.push(index_of(&Reason::ALL, &self.reason));
        out.push(
            self.use_
                .map_or(0, |u| index_of(&Use::ALL, &u).saturating_add(1)),
        );
        out.push(
            u8::from(self.duplicate) * FLAG_DUPLICATE
                + u8::from(self.replay_unchecked) * FLAG_REPLAY_UNCHECKED,
        );
        let at = u32::try_from(self.verified_at.max(0)).unwrap_or(u32::MAX);
        out.extend_from_slice(&at.to_be_bytes());
        push_text(&mut out, &self.detail);
        // At most MAX_AMC_ATTESTATIONS (8) in a presentation: one byte counts them.
        let count = self.amc.len().min(usize::from(u8::MAX));
        out.push(u8::try_from(count).unwrap_or(u8::MAX));
        for (reason, detail) in self.amc.iter().take(count) {
            out.push(index_of(&AmcReason::ALL, reason));
            push_text(&mut out, detail);
        }
        out
    }

    /// Decodes [`Self::encode`]'s output; None for anything else (another version, a
    /// truncated or corrupt value).
    pub fn decode(bytes: &[u8]) -> Option<AnswerRecord> {
        let mut r = Reader(bytes);
        if r.byte()? != RECORD_VERSION {
            return None;
        }
        let mut digest = [0u8; HASH_LEN];
        digest.copy_from_slice(r.take(HASH_LEN)?);
        let reason = *Reason::ALL.get(usize::from(r.byte()?))?;
        let use_ = match r.byte()? {
            0 => None,
            n => Some(*Use::ALL.get(usize::from(n) - 1)?),
        };
        let flags = r.byte()?;
        let mut at = [0u8; 4];
        at.copy_from_slice(r.take(4)?);
        let detail = r.text()?;
        let count = r.byte()?;
        let mut amc = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let reason = *AmcReason::ALL.get(usize::from(r.byte()?))?;
            amc.push((reason, r.text()?));
        }
        if !r.0.is_empty() {
            return None;
        }
        Some(AnswerRecord {
            digest,
            reason,
            detail,
            use_,
            duplicate: flags & FLAG_DUPLICATE != 0,
            replay_unchecked: flags & FLAG_REPLAY_UNCHECKED != 0,
            verified_at: i64::from(u32::from_be_bytes(at)),
            amc,
        })
    }
}

/// One kept answer: its encoded record and its expiry (seconds, clamped to u32).
struct Kept {
    record: Box<[u8]>,
    expires: u32,
}

struct Inner {
    entries: HashMap<[u8; HASH_LEN], Kept>,
    /// Keys in insertion order with their expiry. Every answer is kept for the same
    /// retention, so this is also expiry order: expired answers are dropped from the front,
    /// and when full the oldest answer goes first. A key answered again after its entry
    /// expired may appear twice; only the pair matching the live entry removes it.
    order: VecDeque<([u8; HASH_LEN], u32)>,
    evicted: u64,
}

/// The in-process answer store: at most `max_entries` answers, each kept until its expiry;
/// when full, the oldest answer is dropped (counted in [`Self::evicted`]) to make room.
pub struct MemoryAnswerStore {
    max_entries: usize,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for MemoryAnswerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryAnswerStore")
            .field("max_entries", &self.max_entries)
            .field("len", &self.len())
            .finish()
    }
}

fn clamp_u32(t: i64) -> u32 {
    u32::try_from(t.max(0)).unwrap_or(u32::MAX)
}

impl MemoryAnswerStore {
    /// A store of at most `max_entries` answers.
    pub fn new(max_entries: usize) -> MemoryAnswerStore {
        MemoryAnswerStore {
            max_entries,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: VecDeque::new(),
                evicted: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is one call: a poisoned lock still guards a consistent map.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The record kept under `key`, if live at `now`.
    pub fn get(&self, key: &[u8; HASH_LEN], now: i64) -> Option<Vec<u8>> {
        let g = self.lock();
        g.entries
            .get(key)
            .filter(|k| i64::from(k.expires) >= now)
            .map(|k| k.record.to_vec())
    }

    /// Keeps `record` under `key` until `expires_at` unless a live record is already there:
    /// then that one is returned and nothing changes (the first answer stays).
    pub fn insert_or_get(
        &self,
        key: &[u8; HASH_LEN],
        record: &[u8],
        expires_at: i64,
        now: i64,
    ) -> Option<Vec<u8>> {
        let mut g = self.lock();
        let inner = &mut *g;
        purge(inner, now, self.max_entries);
        let expires = clamp_u32(expires_at);
        match inner.entries.entry(*key) {
            Entry::Occupied(mut e) => {
                if i64::from(e.get().expires) >= now {
                    return Some(e.get().record.to_vec());
                }
                e.insert(Kept {
                    record: record.into(),
                    expires,
                });
            }
            Entry::Vacant(e) => {
                if self.max_entries == 0 {
                    return None;
                }
                e.insert(Kept {
                    record: record.into(),
                    expires,
                });
            }
        }
        inner.order.push_back((*key, expires));
        None
    }

    /// Number of answers held (expired ones included until dropped).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when no answer is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound given at construction.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Live answers dropped so far to make room for newer ones.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }
}

/// Drops expired answers from the front, then the oldest while there is no room for one more.
fn purge(inner: &mut Inner, now: i64, max_entries: usize) {
    while let Some(&(key, expires)) = inner.order.front() {
        let expired = i64::from(expires) < now;
        if !expired && inner.entries.len() < max_entries {
            break;
        }
        inner.order.pop_front();
        if let Entry::Occupied(e) = inner.entries.entry(key) {
            if e.get().expires == expires {
                e.remove();
                if !expired {
                    inner.evicted += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(reason: Reason) -> AnswerRecord {
        AnswerRecord {
            digest: [7; HASH_LEN],
            reason,
            detail: "already accepted for this reader".into(),
            use_: Some(Use::Dp),
            duplicate: true,
            replay_unchecked: false,
            verified_at: 1_800_000_000,
            amc: vec![
                (AmcReason::Ok, String::new()),
                (
                    AmcReason::AttestationExpired,
                    "AMC attestation expired".into(),
                ),
            ],
        }
    }

    #[test]
    fn record_round_trips_and_refuses_garbage() {
        for reason in Reason::ALL {
            let r = record(reason);
            let bytes = r.encode();
            assert_eq!(AnswerRecord::decode(&bytes), Some(r));
            for cut in 0..bytes.len() {
                assert_eq!(AnswerRecord::decode(&bytes[..cut]), None);
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(AnswerRecord::decode(&longer), None);
        }
        let mut plain = record(Reason::Ok);
        plain.use_ = None;
        plain.amc.clear();
        plain.detail.clear();
        plain.duplicate = false;
        plain.replay_unchecked = true;
        // version, digest, reason, use, flags, time, phrase length, AMC count
        assert_eq!(plain.encode().len(), 1 + 16 + 3 + 4 + 1 + 1);
        assert_eq!(AnswerRecord::decode(&plain.encode()), Some(plain));
    }

    #[test]
    fn keys_are_keyed_and_unambiguous() {
        let a = AnswerKeys::new(b"secret one");
        let b = AnswerKeys::new(b"secret two");
        assert_eq!(a.key("c", "r", "q"), a.key("c", "r", "q"));
        assert_ne!(a.key("c", "r", "q"), b.key("c", "r", "q"));
        assert_ne!(a.key("c", "r|q", ""), a.key("c|r", "q", ""));
        assert_ne!(a.key("c", "rq", ""), a.key("c", "r", "q"));
        assert_ne!(a.digest(b"x"), b.digest(b"x"));
        assert_ne!(a.digest(b"x"), a.digest(b"y"));
    }

    #[test]
    fn first_answer_stays_until_it_expires() {
        let s = MemoryAnswerStore::new(10);
        let k = [1; HASH_LEN];
        assert_eq!(s.insert_or_get(&k, b"one", 100, 0), None);
        assert_eq!(s.insert_or_get(&k, b"two", 200, 50), Some(b"one".to_vec()));
        assert_eq!(s.get(&k, 100), Some(b"one".to_vec()));
        assert_eq!(s.get(&k, 101), None);
        assert_eq!(s.insert_or_get(&k, b"three", 300, 101), None);
        assert_eq!(s.get(&k, 150), Some(b"three".to_vec()));
        // The stale (k, 100) pair in the queue does not remove the new entry.
        assert_eq!(s.insert_or_get(&[2; HASH_LEN], b"x", 400, 150), None);
        assert_eq!(s.get(&k, 150), Some(b"three".to_vec()));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn full_store_drops_expired_then_oldest() {
        let s = MemoryAnswerStore::new(2);
        assert_eq!(s.insert_or_get(&[1; HASH_LEN], b"a", 10, 0), None);
        assert_eq!(s.insert_or_get(&[2; HASH_LEN], b"b", 20, 0), None);
        // Full, nothing expired: the oldest goes.
        assert_eq!(s.insert_or_get(&[3; HASH_LEN], b"c", 30, 5), None);
        assert_eq!((s.len(), s.evicted()), (2, 1));
        assert_eq!(s.get(&[1; HASH_LEN], 5), None);
        assert_eq!(s.get(&[2; HASH_LEN], 5), Some(b"b".to_vec()));
        // Expired entries go without counting as evicted.
        assert_eq!(s.insert_or_get(&[4; HASH_LEN], b"d", 40, 25), None);
        assert_eq!((s.len(), s.evicted()), (2, 1));
        let none = MemoryAnswerStore::new(0);
        assert_eq!(none.insert_or_get(&[1; HASH_LEN], b"a", 10, 0), None);
        assert!(none.is_empty());
    }
}
