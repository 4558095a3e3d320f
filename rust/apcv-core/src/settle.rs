//! Step 9 of docs/profile.md §7.2 (replay, §7.4) settled after steps 1–8: by the snapshot's
//! own store in batch order, or later by an external store (e.g. Redis, driven by the service
//! for several replicas). The rules are the same either way and live here: what the store
//! records, how its answer settles the decision, how a decision still waiting reads, and the
//! operator's fail-open choice.

use crate::decision::{Decision, Reason};
use crate::limits::CTI_LEN;
use crate::replay::ReplayOutcome;

/// What the replay store must record, atomically, for a presentation that passed steps 1–8
/// (docs/profile.md §7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayTicket {
    /// The replay key: the presentation's `cti`.
    pub cti: [u8; CTI_LEN],
    /// Keep the entry until this time (`exp + skew + max_scan_delay`, seconds).
    pub keep_until: i64,
    /// The presentation's `iat` (seconds): a store that lost its entries cannot vouch for a
    /// presentation issued before the loss.
    pub issued_at: i64,
}

/// One item of a batch whose step 9 is left to an external store
/// (`Verifier::verify_batch_deferred`).
#[derive(Clone, Debug)]
pub enum Deferred {
    /// Decided by steps 1–8 (rejected): the replay store is not consulted.
    Decided(Decision),
    /// Passed steps 1–8 (step 10 computed): accepted once the store answers
    /// [`ReplayOutcome::New`] or [`ReplayOutcome::SameReader`] for the ticket.
    Pending(Decision, ReplayTicket),
}

impl Deferred {
    /// The decision to report now, and what is left to settle: a pending item reads as
    /// `REPLAY_UNAVAILABLE` (detail [`PENDING_DETAIL`], no person) until it is settled, so a
    /// result never settled fails closed.
    pub fn split(self) -> (Decision, Option<PendingReplay>) {
        match self {
            Deferred::Decided(d) => (d, None),
            Deferred::Pending(decision, ticket) => {
                let pending = PendingReplay { decision, ticket };
                (pending.provisional(), Some(pending))
            }
        }
    }
}

/// Detail of a decision still waiting for its replay check (it reads as REPLAY_UNAVAILABLE).
pub const PENDING_DETAIL: &str = "replay check pending";

/// Detail of a decision accepted without a replay check ([`ReplayAnswer::Unchecked`]).
pub const UNCHECKED_DETAIL: &str = "accepted without replay check: replay store unavailable";

/// What settles a pending decision: the external store's answer, or the operator's choice to
/// accept without a replay check when that store cannot answer (docs/profile.md §7.4: a
/// shared store that cannot be reached is `REPLAY_UNAVAILABLE` "unless the operator's policy
/// explicitly says otherwise").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayAnswer {
    /// The store answered.
    Store(ReplayOutcome),
    /// Accepted without a replay check, flagged by [`Decision::replay_unchecked`].
    Unchecked,
}

impl ReplayAnswer {
    /// Every answer with its name: `new`, `same_reader`, `other_reader`, `unavailable`,
    /// `unchecked`.
    pub const NAMED: [(&'static str, ReplayAnswer); 5] = [
        ("new", ReplayAnswer::Store(ReplayOutcome::New)),
        (
            "same_reader",
            ReplayAnswer::Store(ReplayOutcome::SameReader),
        ),
        (
            "other_reader",
            ReplayAnswer::Store(ReplayOutcome::OtherReader),
        ),
        (
            "unavailable",
            ReplayAnswer::Store(ReplayOutcome::Unavailable),
        ),
        ("unchecked", ReplayAnswer::Unchecked),
    ];

    /// The answer called `name` (see [`Self::NAMED`]), if any.
    pub fn from_name(name: &str) -> Option<ReplayAnswer> {
        Self::NAMED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, answer)| *answer)
    }
}

/// A decision that passed steps 1–8, waiting for an external store's answer.
#[derive(Clone, Debug)]
pub struct PendingReplay {
    decision: Decision,
    ticket: ReplayTicket,
}

impl PendingReplay {
    /// What the store must record.
    pub fn ticket(&self) -> &ReplayTicket {
        &self.ticket
    }

    /// How the decision reads until settled: `REPLAY_UNAVAILABLE`, detail
    /// [`PENDING_DETAIL`], without the person, the delegation label or the AMC outcomes.
    pub fn provisional(&self) -> Decision {
        let mut shown = settle_replay(self.decision.clone(), ReplayOutcome::Unavailable);
        shown.detail = PENDING_DETAIL;
        shown
    }

    /// The final decision given `answer`: [`settle_replay`] for a store's answer; for
    /// [`ReplayAnswer::Unchecked`], accepted with detail [`UNCHECKED_DETAIL`] and
    /// `replay_unchecked` set.
    pub fn settle(&self, answer: ReplayAnswer) -> Decision {
        match answer {
            ReplayAnswer::Store(outcome) => settle_replay(self.decision.clone(), outcome),
            ReplayAnswer::Unchecked => {
                let mut d = settle_replay(self.decision.clone(), ReplayOutcome::New);
                d.detail = UNCHECKED_DETAIL;
                d.replay_unchecked = true;
                d
            }
        }
    }
}

/// Step 9 applied to a decision that passed steps 1–8, given the store's answer
/// (docs/profile.md §7.4): `New` keeps it accepted, `SameReader` accepts it again with
/// `duplicate = true`, `OtherReader` is `REPLAYED` and `Unavailable` is `REPLAY_UNAVAILABLE`
/// (both without the person, the delegation label or the AMC outcomes, §7.6).
pub fn settle_replay(mut d: Decision, outcome: ReplayOutcome) -> Decision {
    let (reason, detail) = match outcome {
        ReplayOutcome::New => return d,
        ReplayOutcome::SameReader => {
            d.duplicate = true;
            d.detail = "already accepted for this reader";
            return d;
        }
        ReplayOutcome::OtherReader => (
            Reason::Replayed,
            "presentation already used at another reader",
        ),
        ReplayOutcome::Unavailable => (Reason::ReplayUnavailable, "replay store unavailable"),
    };
    d.reason = reason;
    d.detail = detail;
    d.person = None;
    d.delegation_label = None;
    d.amc.clear();
    d
}
