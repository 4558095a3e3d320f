//! A bounded cache of verified issuer signatures (credential, delegation, AMC attestation).
//!
//! A credential is presented many times over its life, and its issuer's signature verifies
//! the same way each time as long as the trust list is the same: a snapshot of the verifier
//! remembers which signed objects already verified, and the next presentation of the same
//! bytes skips that one signature check. Only the issuer's signatures are cached: the
//! presentation's (device) signature, the trust-list key's time window, the claims, the times
//! and the status are checked on every presentation (docs/profile.md §7.2).
//!
//! The entry is the SHA-256 of the selected key's RFC 9679 thumbprint, the algorithm and the
//! exact bytes of the signed object, so a hit means "these very bytes verified under this very
//! key": no other bytes can hit short of a SHA-256 collision. Only successes are kept. The
//! cache belongs to one trust list: a verifier built with another trust list starts empty
//! (`Verifier::with_trust_list`), so nothing verified under an old list survives its change.
//! It holds at most [`crate::limits::SIGNATURE_CACHE_ENTRIES`] entries by default (CLOCK-like
//! eviction by `quick_cache`, sharded, safe to share between rayon's threads).

use quick_cache::sync::Cache;
use ring::digest;

use crate::cose::{Alg, PublicKey, Sign1};

/// The cache of one trust-list snapshot; capacity 0 turns it off.
pub struct SignatureCache {
    cache: Option<Cache<[u8; 32], ()>>,
    capacity: usize,
}

impl std::fmt::Debug for SignatureCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureCache")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl SignatureCache {
    /// A cache holding at most `capacity` verified signatures (0: no cache).
    pub fn new(capacity: usize) -> SignatureCache {
        SignatureCache {
            cache: (capacity > 0).then(|| Cache::new(capacity)),
            capacity,
        }
    }

    /// The bound given at construction.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of verified signatures held.
    pub fn len(&self) -> usize {
        self.cache.as_ref().map_or(0, Cache::len)
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `sign1`, parsed from exactly `bytes`, verifies under `key` with `alg` (empty
    /// external_aad, RFC 9052 §4.4), from the cache when these bytes already verified under
    /// this key.
    pub fn verify(&self, bytes: &[u8], sign1: &Sign1, key: &PublicKey, alg: Alg) -> bool {
        let Some(cache) = &self.cache else {
            return sign1.verify(key, alg, b"").unwrap_or(false);
        };
        let id = entry_id(bytes, key, alg);
        if cache.get(&id).is_some() {
            return true;
        }
        let ok = sign1.verify(key, alg, b"").unwrap_or(false);
        if ok {
            cache.insert(id, ());
        }
        ok
    }
}

/// SHA-256 over the key's thumbprint, the algorithm identifier and the signed bytes.
fn entry_id(bytes: &[u8], key: &PublicKey, alg: Alg) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&key.thumbprint());
    ctx.update(&alg.id().to_be_bytes());
    ctx.update(bytes);
    let mut id = [0u8; 32];
    id.copy_from_slice(ctx.finish().as_ref());
    id
}
