//! The verifier: an immutable snapshot (trust list, status lists, policy, replay store) that
//! judges batches of scans (docs/profile.md §7). Steps 1–8 and 10 run in parallel
//! (the `pipeline` module); step 9, replay, runs after them in batch order (§7.4). Every scan
//! yields a decision value with a reason code, never an error.

use std::borrow::Borrow;
use std::sync::Arc;

use rayon::prelude::*;

use crate::limits::SIGNATURE_CACHE_ENTRIES;
use crate::pipeline::Snapshot;
use crate::replay::ReplayStore;
use crate::sigcache::SignatureCache;
use crate::status::{StatusList, StatusLists};
use crate::trust::TrustList;

pub use crate::decision::{AmcCoverage, AmcReason, Decision, Reason, Reject};
pub use crate::inputs::{parse_uses, Policy, Scan, ScanData};
pub use crate::settle::{settle_replay, Deferred, ReplayTicket};

/// An immutable verification snapshot: trust list, status lists, policy, replay store.
/// Refreshes build a new snapshot ([`Verifier::with_trust_list`]); in-flight batches keep
/// the one they started with.
#[derive(Clone)]
pub struct Verifier {
    trust: Arc<TrustList>,
    status: Arc<StatusLists>,
    policy: Policy,
    replay: Arc<dyn ReplayStore>,
    /// Issuer signatures verified under `trust`: shared by the snapshots derived from this
    /// one while they keep the same trust list, dropped with it.
    signatures: Arc<SignatureCache>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("trust_seq", &self.trust.seq)
            .field("status_lists", &self.status.len())
            .field("policy", &self.policy)
            .field("signatures", &self.signatures)
            .finish()
    }
}

impl Verifier {
    /// A snapshot, with a cache of verified issuer signatures of the default bound
    /// ([`SIGNATURE_CACHE_ENTRIES`]).
    pub fn new(
        trust: Arc<TrustList>,
        status_lists: Vec<Arc<StatusList>>,
        policy: Policy,
        replay: Arc<dyn ReplayStore>,
    ) -> Verifier {
        Verifier {
            trust,
            status: Arc::new(StatusLists::new(status_lists)),
            policy,
            replay,
            signatures: Arc::new(SignatureCache::new(SIGNATURE_CACHE_ENTRIES)),
        }
    }

    /// The same snapshot with an empty cache of verified issuer signatures holding at most
    /// `capacity` entries (0: every issuer signature is checked on every presentation).
    pub fn with_signature_cache(&self, capacity: usize) -> Verifier {
        Verifier {
            signatures: Arc::new(SignatureCache::new(capacity)),
            ..self.clone()
        }
    }

    /// A new snapshot with another trust list (same status lists, policy, replay store).
    /// The cache of verified issuer signatures is kept only if it is the same list (the same
    /// `Arc`), else the new snapshot starts with an empty one of the same bound.
    pub fn with_trust_list(&self, trust: Arc<TrustList>) -> Verifier {
        let signatures = if Arc::ptr_eq(&trust, &self.trust) {
            self.signatures.clone()
        } else {
            Arc::new(SignatureCache::new(self.signatures.capacity()))
        };
        Verifier {
            trust,
            signatures,
            ..self.clone()
        }
    }

    /// The cache of verified issuer signatures of this snapshot.
    pub fn signature_cache(&self) -> &SignatureCache {
        &self.signatures
    }

    /// A new snapshot with another set of status lists.
    pub fn with_status_lists(&self, status_lists: Vec<Arc<StatusList>>) -> Verifier {
        Verifier {
            status: Arc::new(StatusLists::new(status_lists)),
            ..self.clone()
        }
    }

    /// The trust list of this snapshot.
    pub fn trust_list(&self) -> &Arc<TrustList> {
        &self.trust
    }

    /// The policy of this snapshot.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            trust: &self.trust,
            status: &self.status,
            policy: &self.policy,
            signatures: &self.signatures,
        }
    }

    /// Verifies a batch: steps 1–8 in parallel (rayon), then step 9 (replay) in batch order,
    /// so that within a batch the earlier item wins (docs/profile.md §7.4). Decisions come
    /// back in input order. Accepts anything that borrows as a [`Scan`] (e.g. `Arc<Scan>`),
    /// so callers need not copy. A batch of one is judged on the calling thread without
    /// rayon's machinery, which cost ≈ 3 µs a call (docs/benchmarks.md, "one item per call").
    pub fn verify_batch<S: Borrow<Scan> + Sync>(&self, scans: &[S], now: i64) -> Vec<Decision> {
        let snapshot = self.snapshot();
        let judge = |s: &S| snapshot.judge(s.borrow(), now);
        let judged: Vec<(Decision, Option<ReplayTicket>)> = if scans.len() == 1 {
            scans.iter().map(judge).collect()
        } else {
            scans.par_iter().map(judge).collect()
        };
        judged
            .into_iter()
            .zip(scans)
            .map(|((d, ticket), scan)| match ticket {
                Some(ticket) => self.replay_step(d, &ticket, &scan.borrow().reader_id, now),
                None => d,
            })
            .collect()
    }

    /// Steps 1–8 (and 10) of a batch in parallel, with step 9 left to an external store:
    /// each item that passed comes back [`Deferred::Pending`] with its [`ReplayTicket`].
    /// The caller must consult its store **in batch order** (the earlier item wins,
    /// docs/profile.md §7.4) and settle each pending decision ([`settle_replay`],
    /// [`Deferred::split`]). This snapshot's own replay store is not used. A batch of one is
    /// judged on the calling thread, as in [`Verifier::verify_batch`].
    pub fn verify_batch_deferred<S: Borrow<Scan> + Sync>(
        &self,
        scans: &[S],
        now: i64,
    ) -> Vec<Deferred> {
        let snapshot = self.snapshot();
        let judge = |s: &S| match snapshot.judge(s.borrow(), now) {
            (d, Some(ticket)) => Deferred::Pending(d, ticket),
            (d, None) => Deferred::Decided(d),
        };
        if scans.len() == 1 {
            return scans.iter().map(judge).collect();
        }
        scans.par_iter().map(judge).collect()
    }

    /// Verifies one scan: a batch of one.
    pub fn verify(&self, scan: &Scan, now: i64) -> Decision {
        self.verify_batch(std::slice::from_ref(scan), now)
            .pop()
            .unwrap_or(Decision {
                reason: Reason::Malformed,
                detail: "empty batch",
                ..Decision::default()
            })
    }

    /// The answer kept in `record` for a resent `scan` (answer recovery, the `answers`
    /// module): the same decision with its person, delegation label and AMC coverage rebuilt
    /// by decoding the presentation again — no time, trust, status or replay check, so it
    /// reads as it did whatever happened since. The caller checks first that the scan's
    /// presentation is the recorded one ([`crate::answers::AnswerKeys::digest`]). Fixed
    /// phrases are the record's (`record.detail`, `record.amc`), left empty here.
    pub fn recover(scan: &Scan, record: &crate::answers::AnswerRecord) -> Decision {
        crate::pipeline::rebuild(scan, record)
    }

    /// Step 9, replay (docs/profile.md §7.2 step 9, §7.4), with this snapshot's store, only
    /// once everything else holds.
    fn replay_step(&self, d: Decision, t: &ReplayTicket, reader_id: &str, now: i64) -> Decision {
        let outcome = self
            .replay
            .check_and_insert(&t.cti, reader_id, t.keep_until, now);
        settle_replay(d, outcome)
    }
}
