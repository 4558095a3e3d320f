//! The verification pipeline (contract "Verification order"): a decision value with a
//! reason code for every presentation, never an error. First failure wins.

use std::borrow::{Borrow, Cow};
use std::collections::HashMap;
use std::sync::Arc;

use rayon::prelude::*;

use crate::claims::{self, AmcAttestation, Credential, Delegation, Person, Presentation, Use};
use crate::cose::{Alg, HeaderAlg, Sign1};
use crate::encoding;
use crate::error::{Error, Result};
use crate::limits::{CTI_LEN, DEFAULT_CLOCK_SKEW, KID_LEN, MAX_PRESENTATION_LIFETIME};
use crate::replay::{ReplayOutcome, ReplayStore};
use crate::status::StatusList;
use crate::trust::{Role, TrustList};

/// Why a presentation was accepted or rejected (contract: reason codes, also the proto
/// enum names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Accepted.
    Ok,
    /// Step 1–2: not decodable or not the profile's structure.
    Malformed,
    /// Step 2: credential `"v"` other than 1.
    UnsupportedVersion,
    /// Step 3: issuer kid not trusted (absent, outside its window, or not role "amo").
    UnknownIssuer,
    /// Step 3: header alg differs from the trust list's, or presentation not ES256.
    AlgMismatch,
    /// Step 3: credential `iss` differs from the trust list's.
    IssuerMismatch,
    /// Step 4: claims sanity (INS key, OIDs, dates, codes).
    ClaimsInvalid,
    /// Step 5: credential `nbf` in the future.
    CredentialNotYetValid,
    /// Step 5: credential `exp` in the past.
    CredentialExpired,
    /// Step 5: presentation `iat` in the future.
    PresentationNotYetValid,
    /// Step 5: presentation `exp` in the past.
    PresentationExpired,
    /// Step 5: presentation lives longer than 300 s (or ends before it starts).
    PresentationLifetimeExceeded,
    /// Step 5: the scan's `scanned_at` is in the future or older than `max_scan_delay`.
    ScanTimeInvalid,
    /// Step 6: status INVALID (or an unknown status value: fail closed).
    Revoked,
    /// Step 6: status SUSPENDED.
    Suspended,
    /// Step 6: status list not loaded, expired past grace, or index beyond it.
    StatusUnavailable,
    /// Step 7: credential signature does not verify.
    BadIssuerSignature,
    /// Steps 3, 5–8: delegation untrusted, out of its window, revoked, badly signed, used by
    /// the holder's key, for another credential or out of scope (PROFILE §2.6).
    DelegationInvalid,
    /// Step 7: presentation signature does not verify under the `cnf` key.
    BadDeviceSignature,
    /// Step 8: `aud` differs from the reader id.
    AudienceMismatch,
    /// Step 8: nonce absent, unexpected or different.
    NonceMismatch,
    /// Step 8: presented beneficiary rank not in the credential.
    UnknownBeneficiary,
    /// Step 8: use not allowed for this request.
    PurposeNotAllowed,
    /// Step 9: already accepted for another reader.
    Replayed,
    /// Step 9: replay store unable to answer (fail closed).
    ReplayUnavailable,
}

impl Reason {
    /// Every reason, in contract order.
    pub const ALL: [Reason; 25] = [
        Reason::Ok,
        Reason::Malformed,
        Reason::UnsupportedVersion,
        Reason::UnknownIssuer,
        Reason::AlgMismatch,
        Reason::IssuerMismatch,
        Reason::ClaimsInvalid,
        Reason::CredentialNotYetValid,
        Reason::CredentialExpired,
        Reason::PresentationNotYetValid,
        Reason::PresentationExpired,
        Reason::PresentationLifetimeExceeded,
        Reason::ScanTimeInvalid,
        Reason::Revoked,
        Reason::Suspended,
        Reason::StatusUnavailable,
        Reason::BadIssuerSignature,
        Reason::DelegationInvalid,
        Reason::BadDeviceSignature,
        Reason::AudienceMismatch,
        Reason::NonceMismatch,
        Reason::UnknownBeneficiary,
        Reason::PurposeNotAllowed,
        Reason::Replayed,
        Reason::ReplayUnavailable,
    ];

    /// The reason code string ("OK" for an accepted presentation).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ok => "OK",
            Reason::Malformed => "MALFORMED",
            Reason::UnsupportedVersion => "UNSUPPORTED_VERSION",
            Reason::UnknownIssuer => "UNKNOWN_ISSUER",
            Reason::AlgMismatch => "ALG_MISMATCH",
            Reason::IssuerMismatch => "ISSUER_MISMATCH",
            Reason::ClaimsInvalid => "CLAIMS_INVALID",
            Reason::CredentialNotYetValid => "CREDENTIAL_NOT_YET_VALID",
            Reason::CredentialExpired => "CREDENTIAL_EXPIRED",
            Reason::PresentationNotYetValid => "PRESENTATION_NOT_YET_VALID",
            Reason::PresentationExpired => "PRESENTATION_EXPIRED",
            Reason::PresentationLifetimeExceeded => "PRESENTATION_LIFETIME_EXCEEDED",
            Reason::ScanTimeInvalid => "SCAN_TIME_INVALID",
            Reason::Revoked => "REVOKED",
            Reason::Suspended => "SUSPENDED",
            Reason::StatusUnavailable => "STATUS_UNAVAILABLE",
            Reason::BadIssuerSignature => "BAD_ISSUER_SIGNATURE",
            Reason::DelegationInvalid => "DELEGATION_INVALID",
            Reason::BadDeviceSignature => "BAD_DEVICE_SIGNATURE",
            Reason::AudienceMismatch => "AUDIENCE_MISMATCH",
            Reason::NonceMismatch => "NONCE_MISMATCH",
            Reason::UnknownBeneficiary => "UNKNOWN_BENEFICIARY",
            Reason::PurposeNotAllowed => "PURPOSE_NOT_ALLOWED",
            Reason::Replayed => "REPLAYED",
            Reason::ReplayUnavailable => "REPLAY_UNAVAILABLE",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one AMC attestation (PROFILE §2.7, §8 AMC table). Only `Ok` means the
/// coverage is valid; none of these changes the presentation's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AmcReason {
    /// Valid, and it names the presented person.
    Ok,
    /// Not a strict COSE_Sign1 / not the attestation's structure.
    Malformed,
    /// `apcv.v` is not 1.
    UnsupportedVersion,
    /// Its kid selects no usable trust-list key of role "amc" at the verification time.
    UnknownIssuer,
    /// Header alg differs from the trust list's.
    AlgMismatch,
    /// `iss` differs from the trust list's.
    IssuerMismatch,
    /// Its signature does not verify.
    BadIssuerSignature,
    /// A matricule of `for` breaks PROFILE §5.1–5.2.
    ClaimsInvalid,
    /// `for` does not name the presented person's INS.
    NotApplicable,
    /// `nbf` in the future beyond skew.
    AttestationNotYetValid,
    /// `exp` in the past beyond skew.
    AttestationExpired,
    /// Status INVALID (or an unknown status value).
    Revoked,
    /// Status SUSPENDED.
    Suspended,
    /// Its status list not loaded, expired past grace, or index beyond it.
    StatusUnavailable,
}

impl AmcReason {
    /// Every AMC reason, in check order.
    pub const ALL: [AmcReason; 14] = [
        AmcReason::Ok,
        AmcReason::Malformed,
        AmcReason::UnsupportedVersion,
        AmcReason::UnknownIssuer,
        AmcReason::AlgMismatch,
        AmcReason::IssuerMismatch,
        AmcReason::BadIssuerSignature,
        AmcReason::ClaimsInvalid,
        AmcReason::NotApplicable,
        AmcReason::AttestationNotYetValid,
        AmcReason::AttestationExpired,
        AmcReason::Revoked,
        AmcReason::Suspended,
        AmcReason::StatusUnavailable,
    ];

    /// The reason code string.
    pub fn as_str(self) -> &'static str {
        match self {
            AmcReason::Ok => "OK",
            AmcReason::Malformed => "MALFORMED",
            AmcReason::UnsupportedVersion => "UNSUPPORTED_VERSION",
            AmcReason::UnknownIssuer => "UNKNOWN_ISSUER",
            AmcReason::AlgMismatch => "ALG_MISMATCH",
            AmcReason::IssuerMismatch => "ISSUER_MISMATCH",
            AmcReason::BadIssuerSignature => "BAD_ISSUER_SIGNATURE",
            AmcReason::ClaimsInvalid => "CLAIMS_INVALID",
            AmcReason::NotApplicable => "NOT_APPLICABLE",
            AmcReason::AttestationNotYetValid => "ATTESTATION_NOT_YET_VALID",
            AmcReason::AttestationExpired => "ATTESTATION_EXPIRED",
            AmcReason::Revoked => "REVOKED",
            AmcReason::Suspended => "SUSPENDED",
            AmcReason::StatusUnavailable => "STATUS_UNAVAILABLE",
        }
    }
}

impl std::fmt::Display for AmcReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one AMC attestation says about the presented person's complementary coverage.
///
/// The coverage fields are filled only when the attestation's signature verified under a
/// trusted "amc" key and its `for` names the presented person (reasons `Ok`,
/// `AttestationNotYetValid`, `AttestationExpired`, `Revoked`, `Suspended`,
/// `StatusUnavailable`); otherwise they are `None` / empty.
#[derive(Clone, PartialEq, Eq)]
pub struct AmcCoverage {
    /// Outcome.
    pub reason: AmcReason,
    /// Fixed phrase (never a claim value).
    pub detail: &'static str,
    /// `iss`: the AMC organisation id.
    pub organisation: Option<String>,
    /// `apcv.amc`: the AMC organisation number.
    pub amc_number: Option<String>,
    /// `sub`: the contract id.
    pub contract: Option<String>,
    /// `apcv.tp`: third-party payment.
    pub third_party_payment: Option<bool>,
    /// `apcv.dom`: care domains.
    pub domains: Vec<String>,
    /// `exp`.
    pub expires_at: Option<i64>,
}

impl AmcCoverage {
    /// True when the attestation is valid for the presented person.
    pub fn valid(&self) -> bool {
        self.reason == AmcReason::Ok
    }

    fn without_data(reason: AmcReason, detail: &'static str) -> AmcCoverage {
        AmcCoverage {
            reason,
            detail,
            organisation: None,
            amc_number: None,
            contract: None,
            third_party_payment: None,
            domains: Vec::new(),
            expires_at: None,
        }
    }

    fn with_data(reason: AmcReason, detail: &'static str, a: AmcAttestation) -> AmcCoverage {
        AmcCoverage {
            reason,
            detail,
            organisation: Some(a.iss),
            amc_number: Some(a.amc_number),
            contract: Some(a.sub),
            third_party_payment: Some(a.third_party_payment),
            domains: a.domains,
            expires_at: Some(a.exp),
        }
    }
}

// Coverage data is personal data (a contract id): never through Debug.
impl std::fmt::Debug for AmcCoverage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmcCoverage")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

/// Why a status lookup did not give VALID (PROFILE §6.7, §6.8).
enum StatusFail {
    NotLoaded,
    Expired,
    BeyondList,
    Revoked,
    Suspended,
}

/// A rejection: a reason and a short fixed English phrase that never holds a claim value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    /// The reason code.
    pub reason: Reason,
    /// Fixed phrase (contract: never a name, NIR, date, sub or raw bytes).
    pub detail: &'static str,
}

impl Reject {
    /// A rejection with `reason` and `detail`.
    pub fn new(reason: Reason, detail: &'static str) -> Reject {
        Reject { reason, detail }
    }
}

/// Verification policy (contract "Times", "INS checks", "Status list").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Accept the test and demonstration INS OIDs.
    pub allow_test_identities: bool,
    /// Tolerated clock skew in seconds.
    pub clock_skew: i64,
    /// How long past its `exp` a held status list is still used, in seconds.
    pub status_grace: i64,
    /// How old a scan's `scanned_at` may be, in seconds (PROFILE §7.5); 0 by default.
    pub max_scan_delay: i64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            allow_test_identities: false,
            clock_skew: DEFAULT_CLOCK_SKEW,
            status_grace: 0,
            max_scan_delay: 0,
        }
    }
}

impl Policy {
    /// A policy; negative durations are refused.
    pub fn new(allow_test_identities: bool, clock_skew: i64, status_grace: i64) -> Result<Policy> {
        if clock_skew < 0 {
            return Err(Error::InvalidArgument("clock_skew must be >= 0"));
        }
        if status_grace < 0 {
            return Err(Error::InvalidArgument("status_grace must be >= 0"));
        }
        Ok(Policy {
            allow_test_identities,
            clock_skew,
            status_grace,
            max_scan_delay: 0,
        })
    }

    /// The same policy with another `max_scan_delay` (PROFILE §7.5); negative is refused.
    pub fn with_max_scan_delay(self, max_scan_delay: i64) -> Result<Policy> {
        if max_scan_delay < 0 {
            return Err(Error::InvalidArgument("max_scan_delay must be >= 0"));
        }
        Ok(Policy {
            max_scan_delay,
            ..self
        })
    }
}

/// The bytes of one scan as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanData {
    /// QR text `"APCV1:" + base45(zlib(presentation))`.
    Qr(String),
    /// NFC: the presentation bytes.
    Nfc(Vec<u8>),
}

/// One item to verify, with the reader's context.
#[derive(Clone, Debug)]
pub struct Scan {
    /// What was scanned.
    pub data: ScanData,
    /// Who scanned it (the replay owner and the expected `aud`).
    pub reader_id: String,
    /// The reader's challenge, if it sent one (NFC).
    pub nonce: Option<Vec<u8>>,
    /// When the reader scanned the code, if it reports a delayed scan (PROFILE §7.5).
    pub scanned_at: Option<i64>,
    allowed_uses: u8,
}

impl Scan {
    /// A scan; `allowed_uses = None` allows all four uses.
    pub fn new(
        data: ScanData,
        reader_id: String,
        nonce: Option<Vec<u8>>,
        allowed_uses: Option<&[Use]>,
    ) -> Scan {
        let allowed_uses = match allowed_uses {
            None => Use::ALL.iter().fold(0, |acc, u| acc | u.bit()),
            Some(us) => us.iter().fold(0, |acc, u| acc | u.bit()),
        };
        Scan {
            data,
            reader_id,
            nonce,
            scanned_at: None,
            allowed_uses,
        }
    }

    /// The same scan with a reported scan time (PROFILE §7.5).
    pub fn with_scanned_at(self, scanned_at: Option<i64>) -> Scan {
        Scan { scanned_at, ..self }
    }

    /// Whether this request allows `u`.
    pub fn allows(&self, u: Use) -> bool {
        self.allowed_uses & u.bit() != 0
    }
}

/// Parses wire use names for [`Scan::new`]; an unknown name is a caller error.
pub fn parse_uses<S: AsRef<str>>(names: &[S]) -> Result<Vec<Use>> {
    names
        .iter()
        .map(|n| Use::parse(n.as_ref()).ok_or(Error::InvalidArgument("unknown use")))
        .collect()
}

/// The outcome of one verification.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Reason code; [`Reason::Ok`] when accepted.
    pub reason: Reason,
    /// Fixed phrase (never personal data).
    pub detail: &'static str,
    /// Accepted again for the same reader (a retry).
    pub duplicate: bool,
    /// The presentation's use, once parsed.
    pub use_: Option<Use>,
    /// The credential's `sub`, once parsed (authenticated only if accepted).
    pub credential_id: Option<String>,
    /// The credential's `iss`, once parsed (authenticated only if accepted).
    pub issuer: Option<String>,
    /// The credential's `exp`, once parsed.
    pub credential_expires_at: Option<i64>,
    /// The presented person; only when accepted.
    pub person: Option<Person>,
    /// When accepted through a delegation: its `who` label ("" when it has none).
    pub delegation_label: Option<String>,
    /// When accepted: one entry per AMC attestation, in presentation order (step 10).
    pub amc: Vec<AmcCoverage>,
}

impl Decision {
    /// True when the presentation was accepted.
    pub fn accepted(&self) -> bool {
        self.reason == Reason::Ok
    }
}

/// What step 9 needs of a presentation that passed steps 1–8.
struct ReplayKey {
    cti: [u8; CTI_LEN],
    keep_until: i64,
}

/// Step 9 left to an external replay store (e.g. Redis, driven by the service for several
/// replicas): what the store must record, atomically, for a presentation that passed
/// steps 1–8 (PROFILE §7.4). The decision it came with is settled by
/// [`settle_replay`] once the store has answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayTicket {
    /// The replay key: the presentation's `cti`.
    pub cti: [u8; CTI_LEN],
    /// Keep the entry until this time (`exp + skew + max_scan_delay`, seconds).
    pub keep_until: i64,
}

/// One item of [`Verifier::verify_batch_deferred`].
#[derive(Clone, Debug)]
pub enum Deferred {
    /// Decided by steps 1–8 (rejected): the replay store is not consulted.
    Decided(Decision),
    /// Passed steps 1–8 (step 10 computed): accepted once the store answers
    /// [`ReplayOutcome::New`] or [`ReplayOutcome::SameReader`] for the ticket.
    Pending(Decision, ReplayTicket),
}

/// Step 9 applied to a decision that passed steps 1–8, given the store's answer: `New` keeps
/// it accepted, `SameReader` accepts it again with `duplicate = true`, `OtherReader` is
/// `REPLAYED` and `Unavailable` is `REPLAY_UNAVAILABLE` (both without the person, the
/// delegation label or the AMC outcomes).
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

/// What a presentation that passed steps 1–8 yields (step 10 computed alongside).
struct Passed {
    person: Person,
    key: ReplayKey,
    delegation_label: Option<String>,
    amc: Vec<AmcCoverage>,
}

/// A delegation parsed at step 2 with its COSE_Sign1.
struct ParsedDelegation {
    sign1: Sign1,
    claims: Delegation,
}

/// An immutable verification snapshot: trust list, status lists, policy, replay store.
/// Refreshes build a new snapshot ([`Verifier::with_trust_list`]); in-flight batches keep
/// the one they started with.
#[derive(Clone)]
pub struct Verifier {
    trust: Arc<TrustList>,
    status: Arc<HashMap<String, Arc<StatusList>>>,
    policy: Policy,
    replay: Arc<dyn ReplayStore>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("trust_seq", &self.trust.seq)
            .field("status_lists", &self.status.len())
            .field("policy", &self.policy)
            .finish()
    }
}

fn index_status(lists: Vec<Arc<StatusList>>) -> HashMap<String, Arc<StatusList>> {
    let mut m: HashMap<String, Arc<StatusList>> = HashMap::new();
    for l in lists {
        // Two lists for one URI: the most recently issued wins.
        match m.get(&l.uri) {
            Some(held) if held.issued_at > l.issued_at => {}
            _ => {
                m.insert(l.uri.clone(), l);
            }
        }
    }
    m
}

impl Verifier {
    /// A snapshot.
    pub fn new(
        trust: Arc<TrustList>,
        status_lists: Vec<Arc<StatusList>>,
        policy: Policy,
        replay: Arc<dyn ReplayStore>,
    ) -> Verifier {
        Verifier {
            trust,
            status: Arc::new(index_status(status_lists)),
            policy,
            replay,
        }
    }

    /// A new snapshot with another trust list (same status lists, policy, replay store).
    pub fn with_trust_list(&self, trust: Arc<TrustList>) -> Verifier {
        Verifier {
            trust,
            ..self.clone()
        }
    }

    /// A new snapshot with another set of status lists.
    pub fn with_status_lists(&self, status_lists: Vec<Arc<StatusList>>) -> Verifier {
        Verifier {
            status: Arc::new(index_status(status_lists)),
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

    /// Verifies a batch: steps 1–8 in parallel (rayon), then step 9 (replay) in batch order,
    /// so that within a batch the earlier item wins (PROFILE §7.4). Decisions come back in
    /// input order. Accepts anything that borrows as a [`Scan`] (e.g. `Arc<Scan>`), so
    /// callers need not copy.
    pub fn verify_batch<S: Borrow<Scan> + Sync>(&self, scans: &[S], now: i64) -> Vec<Decision> {
        let pending: Vec<(Decision, Option<ReplayKey>)> = scans
            .par_iter()
            .map(|s| self.steps_1_to_8(s.borrow(), now))
            .collect();
        pending
            .into_iter()
            .zip(scans)
            .map(|((d, key), scan)| match key {
                Some(key) => self.step_9(d, &key, &scan.borrow().reader_id, now),
                None => d,
            })
            .collect()
    }

    /// Steps 1–8 (and 10) of a batch in parallel, with step 9 left to an external store:
    /// each item that passed comes back [`Deferred::Pending`] with its [`ReplayTicket`].
    /// The caller must consult its store **in batch order** (the earlier item wins, PROFILE
    /// §7.4) and settle each pending decision with [`settle_replay`]. This snapshot's own
    /// replay store is not used.
    pub fn verify_batch_deferred<S: Borrow<Scan> + Sync>(
        &self,
        scans: &[S],
        now: i64,
    ) -> Vec<Deferred> {
        scans
            .par_iter()
            .map(|s| match self.steps_1_to_8(s.borrow(), now) {
                (d, Some(key)) => Deferred::Pending(
                    d,
                    ReplayTicket {
                        cti: key.cti,
                        keep_until: key.keep_until,
                    },
                ),
                (d, None) => Deferred::Decided(d),
            })
            .collect()
    }

    /// Verifies one scan: a batch of one.
    pub fn verify(&self, scan: &Scan, now: i64) -> Decision {
        self.verify_batch(std::slice::from_ref(scan), now)
            .pop()
            .unwrap_or(Decision {
                reason: Reason::Malformed,
                detail: "empty batch",
                duplicate: false,
                use_: None,
                credential_id: None,
                issuer: None,
                credential_expires_at: None,
                person: None,
                delegation_label: None,
                amc: Vec::new(),
            })
    }

    /// Steps 1–8; on success the decision holds the person and the replay key is returned.
    fn steps_1_to_8(&self, scan: &Scan, now: i64) -> (Decision, Option<ReplayKey>) {
        let mut d = Decision {
            reason: Reason::Ok,
            detail: "",
            duplicate: false,
            use_: None,
            credential_id: None,
            issuer: None,
            credential_expires_at: None,
            person: None,
            delegation_label: None,
            amc: Vec::new(),
        };
        match self.run(scan, now, &mut d) {
            Ok(passed) => {
                d.person = Some(passed.person);
                d.delegation_label = passed.delegation_label;
                d.amc = passed.amc;
                (d, Some(passed.key))
            }
            Err(r) => {
                d.reason = r.reason;
                d.detail = r.detail;
                (d, None)
            }
        }
    }

    /// Step 9: replay, only once everything else holds (contract step 9, PROFILE §7.4).
    fn step_9(&self, d: Decision, key: &ReplayKey, reader_id: &str, now: i64) -> Decision {
        let outcome = self
            .replay
            .check_and_insert(&key.cti, reader_id, key.keep_until, now);
        settle_replay(d, outcome)
    }

    /// The status at `idx` of the list `uri`, judged at `now` (PROFILE §6.6–6.8).
    fn status_of(&self, idx: u64, uri: &str, now: i64) -> std::result::Result<(), StatusFail> {
        let list = self.status.get(uri).ok_or(StatusFail::NotLoaded)?;
        if i128::from(now) > i128::from(list.expires_at) + i128::from(self.policy.status_grace) {
            return Err(StatusFail::Expired);
        }
        match list.bits.get(idx) {
            None => Err(StatusFail::BeyondList),
            Some(0) => Ok(()),
            Some(2) => Err(StatusFail::Suspended),
            Some(_) => Err(StatusFail::Revoked),
        }
    }

    /// Step 10: one AMC attestation on its own (PROFILE §2.7), for the presented person's
    /// `ins`; trust and status at `now`, validity times at `fresh_at`.
    fn check_amc(&self, bytes: &[u8], ins: &str, now: i64, fresh_at: i128) -> AmcCoverage {
        let fail = AmcCoverage::without_data;
        let Ok(s) = Sign1::parse(bytes) else {
            return fail(AmcReason::Malformed, "AMC attestation is not a COSE_Sign1");
        };
        if matches!(s.alg, HeaderAlg::Absent | HeaderAlg::Invalid) {
            return fail(
                AmcReason::Malformed,
                "AMC attestation: alg not in protected header",
            );
        }
        if s.kid.len() != KID_LEN {
            return fail(
                AmcReason::Malformed,
                "AMC attestation: kid not in protected header",
            );
        }
        let a = match claims::parse_amc_attestation(s.payload()) {
            Ok(a) => a,
            Err(r) if r.reason == Reason::UnsupportedVersion => {
                return fail(AmcReason::UnsupportedVersion, r.detail)
            }
            Err(r) => return fail(AmcReason::Malformed, r.detail),
        };
        let Some(tk) = self.trust.find(&s.kid, Role::Amc, now) else {
            return fail(AmcReason::UnknownIssuer, "AMC issuer key not trusted");
        };
        if s.alg != HeaderAlg::Known(tk.alg) {
            return fail(
                AmcReason::AlgMismatch,
                "AMC attestation alg differs from the trust list",
            );
        }
        if a.iss != tk.iss {
            return fail(
                AmcReason::IssuerMismatch,
                "AMC attestation iss differs from the trust list",
            );
        }
        if !s.verify(&tk.key, tk.alg, b"").unwrap_or(false) {
            return fail(
                AmcReason::BadIssuerSignature,
                "AMC attestation signature does not verify",
            );
        }
        if !a.covered.iter().all(|m| claims::ins_key_ok(m)) {
            return fail(
                AmcReason::ClaimsInvalid,
                "AMC attestation names an invalid INS matricule",
            );
        }
        if !a.covered.iter().any(|m| m == ins) {
            return fail(
                AmcReason::NotApplicable,
                "AMC attestation does not name the presented person",
            );
        }
        let skew = i128::from(self.policy.clock_skew);
        if i128::from(a.nbf) > fresh_at + skew {
            return AmcCoverage::with_data(
                AmcReason::AttestationNotYetValid,
                "AMC attestation not yet valid",
                a,
            );
        }
        if i128::from(a.exp) < fresh_at - skew {
            return AmcCoverage::with_data(
                AmcReason::AttestationExpired,
                "AMC attestation expired",
                a,
            );
        }
        if let Some((idx, uri)) = &a.status {
            let (reason, detail) = match self.status_of(*idx, uri, now) {
                Ok(()) => (AmcReason::Ok, ""),
                Err(StatusFail::NotLoaded) => {
                    (AmcReason::StatusUnavailable, "AMC status list not loaded")
                }
                Err(StatusFail::Expired) => {
                    (AmcReason::StatusUnavailable, "AMC status list expired")
                }
                Err(StatusFail::BeyondList) => (
                    AmcReason::StatusUnavailable,
                    "AMC status index beyond the list",
                ),
                Err(StatusFail::Revoked) => (AmcReason::Revoked, "AMC attestation revoked"),
                Err(StatusFail::Suspended) => (AmcReason::Suspended, "AMC attestation suspended"),
            };
            return AmcCoverage::with_data(reason, detail, a);
        }
        AmcCoverage::with_data(AmcReason::Ok, "", a)
    }

    fn run(&self, scan: &Scan, now: i64, d: &mut Decision) -> std::result::Result<Passed, Reject> {
        let policy = &self.policy;
        let skew = i128::from(policy.clock_skew);
        let now_w = i128::from(now);
        let malformed = |e: Error| match e {
            Error::Malformed(detail) => Reject::new(Reason::Malformed, detail),
            _ => Reject::new(Reason::Malformed, "undecodable"),
        };

        // 1. decode (PROFILE "Encodings": limits before any work).
        let bytes: Cow<'_, [u8]> = match &scan.data {
            ScanData::Qr(text) => Cow::Owned(encoding::decode_qr(text).map_err(malformed)?),
            ScanData::Nfc(b) => Cow::Borrowed(encoding::decode_nfc(b).map_err(malformed)?),
        };

        // 2. parse presentation, then the credential inside it.
        let ps = Sign1::parse(&bytes).map_err(malformed)?;
        if matches!(ps.alg, HeaderAlg::Absent | HeaderAlg::Invalid) {
            return Err(Reject::new(
                Reason::Malformed,
                "presentation: alg not in protected header",
            ));
        }
        let pres: Presentation = claims::parse_presentation(ps.payload())?;
        d.use_ = Some(pres.use_);
        let cs = Sign1::parse(&pres.cred).map_err(|e| match e {
            Error::Malformed(detail) => Reject::new(Reason::Malformed, detail),
            _ => Reject::new(Reason::Malformed, "credential is not a COSE_Sign1"),
        })?;
        if matches!(cs.alg, HeaderAlg::Absent | HeaderAlg::Invalid) {
            return Err(Reject::new(
                Reason::Malformed,
                "credential: alg not in protected header",
            ));
        }
        if cs.kid.len() != KID_LEN {
            return Err(Reject::new(
                Reason::Malformed,
                "credential: kid not in protected header",
            ));
        }
        let cred: Credential = claims::parse_credential(cs.payload())?;
        d.credential_id = Some(cred.sub.clone());
        d.issuer = Some(cred.iss.clone());
        d.credential_expires_at = Some(cred.exp);
        // The delegation, parsed with the same strict rules (PROFILE §2.1 rule 6, §7.2 step 2).
        let dlg = match &pres.dlg {
            None => None,
            Some(bytes) => {
                let sign1 = Sign1::parse(bytes).map_err(|e| match e {
                    Error::Malformed(detail) => Reject::new(Reason::Malformed, detail),
                    _ => Reject::new(Reason::Malformed, "delegation is not a COSE_Sign1"),
                })?;
                if matches!(sign1.alg, HeaderAlg::Absent | HeaderAlg::Invalid) {
                    return Err(Reject::new(
                        Reason::Malformed,
                        "delegation: alg not in protected header",
                    ));
                }
                if sign1.kid.len() != KID_LEN {
                    return Err(Reject::new(
                        Reason::Malformed,
                        "delegation: kid not in protected header",
                    ));
                }
                let claims = claims::parse_delegation(sign1.payload())?;
                Some(ParsedDelegation { sign1, claims })
            }
        };

        // 3. trust lookup of the credential's kid; no alg taken from the message alone.
        let tk = self
            .trust
            .find(&cs.kid, Role::Amo, now)
            .ok_or(Reject::new(Reason::UnknownIssuer, "issuer key not trusted"))?;
        if cs.alg != HeaderAlg::Known(tk.alg) {
            return Err(Reject::new(
                Reason::AlgMismatch,
                "credential alg differs from the trust list",
            ));
        }
        if ps.alg != HeaderAlg::Known(Alg::Es256) {
            return Err(Reject::new(
                Reason::AlgMismatch,
                "presentation alg is not ES256",
            ));
        }
        // PROFILE §2.2: a cnf key carrying an alg other than ES256 is ALG_MISMATCH.
        if !matches!(
            cred.device_key_alg,
            HeaderAlg::Absent | HeaderAlg::Known(Alg::Es256)
        ) {
            return Err(Reject::new(
                Reason::AlgMismatch,
                "device key alg is not ES256",
            ));
        }
        if cred.iss != tk.iss {
            return Err(Reject::new(
                Reason::IssuerMismatch,
                "credential iss differs from the trust list",
            ));
        }
        // 3e. the delegation's issuer: every failure is DELEGATION_INVALID (PROFILE §7.2).
        let dlg_key = match &dlg {
            None => None,
            Some(pd) => {
                let invalid = |detail| Reject::new(Reason::DelegationInvalid, detail);
                let dk = self
                    .trust
                    .find(&pd.sign1.kid, Role::Amo, now)
                    .ok_or(invalid("delegation issuer key not trusted"))?;
                if pd.sign1.alg != HeaderAlg::Known(dk.alg) {
                    return Err(invalid("delegation alg differs from the trust list"));
                }
                if !matches!(
                    pd.claims.delegate_key_alg,
                    HeaderAlg::Absent | HeaderAlg::Known(Alg::Es256)
                ) {
                    return Err(invalid("delegate key alg is not ES256"));
                }
                if pd.claims.iss != dk.iss {
                    return Err(invalid("delegation iss differs from the trust list"));
                }
                if pd.claims.iss != cred.iss {
                    return Err(invalid("delegation issuer is not the credential's"));
                }
                Some(dk)
            }
        };

        // 4. claims sanity.
        claims::check_credential(&cred, policy.allow_test_identities)?;

        // 5. times (i128: no overflow whatever the claims say). A delayed scan (PROFILE §7.5)
        // moves freshness to the scan time; trust and status stay at `now`.
        let fresh_at = match scan.scanned_at {
            None => now_w,
            Some(at) => {
                let at = i128::from(at);
                if at > now_w + skew {
                    return Err(Reject::new(
                        Reason::ScanTimeInvalid,
                        "scan time is in the future",
                    ));
                }
                if now_w - at > i128::from(policy.max_scan_delay) {
                    return Err(Reject::new(
                        Reason::ScanTimeInvalid,
                        "scan time is older than the allowed delay",
                    ));
                }
                at
            }
        };
        if i128::from(cred.nbf) > fresh_at + skew {
            return Err(Reject::new(
                Reason::CredentialNotYetValid,
                "credential not yet valid",
            ));
        }
        if i128::from(cred.exp) < fresh_at - skew {
            return Err(Reject::new(Reason::CredentialExpired, "credential expired"));
        }
        if let Some(pd) = &dlg {
            if i128::from(pd.claims.nbf) > fresh_at + skew {
                return Err(Reject::new(
                    Reason::DelegationInvalid,
                    "delegation not yet valid",
                ));
            }
            if i128::from(pd.claims.exp) < fresh_at - skew {
                return Err(Reject::new(Reason::DelegationInvalid, "delegation expired"));
            }
        }
        if i128::from(pres.iat) > fresh_at + skew {
            return Err(Reject::new(
                Reason::PresentationNotYetValid,
                "presentation issued in the future",
            ));
        }
        if i128::from(pres.exp) < fresh_at - skew {
            return Err(Reject::new(
                Reason::PresentationExpired,
                "presentation expired",
            ));
        }
        let lifetime = i128::from(pres.exp) - i128::from(pres.iat);
        if !(0..=i128::from(MAX_PRESENTATION_LIFETIME)).contains(&lifetime) {
            return Err(Reject::new(
                Reason::PresentationLifetimeExceeded,
                "presentation lifetime exceeds 300 seconds",
            ));
        }

        // 6. status (Token Status List draft §4.1; unknown values fail closed), at `now` even
        // for a delayed scan (PROFILE §7.5).
        self.status_of(cred.status_idx, &cred.status_uri, now)
            .map_err(|f| match f {
                StatusFail::NotLoaded => {
                    Reject::new(Reason::StatusUnavailable, "status list not loaded")
                }
                StatusFail::Expired => {
                    Reject::new(Reason::StatusUnavailable, "status list expired")
                }
                StatusFail::BeyondList => {
                    Reject::new(Reason::StatusUnavailable, "status index beyond the list")
                }
                StatusFail::Revoked => Reject::new(Reason::Revoked, "credential revoked"),
                StatusFail::Suspended => Reject::new(Reason::Suspended, "credential suspended"),
            })?;
        // The delegation's status: revoked or suspended makes it invalid; an unknown status is
        // the operator's problem and fails closed like the credential's (PROFILE §2.6).
        if let Some(pd) = &dlg {
            self.status_of(pd.claims.status_idx, &pd.claims.status_uri, now)
                .map_err(|f| match f {
                    StatusFail::NotLoaded => Reject::new(
                        Reason::StatusUnavailable,
                        "delegation status list not loaded",
                    ),
                    StatusFail::Expired => {
                        Reject::new(Reason::StatusUnavailable, "delegation status list expired")
                    }
                    StatusFail::BeyondList => Reject::new(
                        Reason::StatusUnavailable,
                        "delegation status index beyond the list",
                    ),
                    StatusFail::Revoked => {
                        Reject::new(Reason::DelegationInvalid, "delegation revoked")
                    }
                    StatusFail::Suspended => {
                        Reject::new(Reason::DelegationInvalid, "delegation suspended")
                    }
                })?;
        }

        // 7. signatures: issuer, delegation, device (RFC 9052 §4.4, empty external_aad).
        if !cs.verify(&tk.key, tk.alg, b"").unwrap_or(false) {
            return Err(Reject::new(
                Reason::BadIssuerSignature,
                "credential signature does not verify",
            ));
        }
        let holder_signed = |ps: &Sign1| {
            ps.verify(&cred.device_key, Alg::Es256, b"")
                .unwrap_or(false)
        };
        match (&dlg, dlg_key) {
            (Some(pd), Some(dk)) => {
                if !pd.sign1.verify(&dk.key, dk.alg, b"").unwrap_or(false) {
                    return Err(Reject::new(
                        Reason::DelegationInvalid,
                        "delegation signature does not verify",
                    ));
                }
                // PROFILE §2.6: under the delegate's key, and not under the holder's.
                if !ps
                    .verify(&pd.claims.delegate_key, Alg::Es256, b"")
                    .unwrap_or(false)
                {
                    return Err(if holder_signed(&ps) {
                        Reject::new(
                            Reason::DelegationInvalid,
                            "presentation signed by the holder, not the delegate",
                        )
                    } else {
                        Reject::new(
                            Reason::BadDeviceSignature,
                            "presentation signature does not verify",
                        )
                    });
                }
                if holder_signed(&ps) {
                    return Err(Reject::new(
                        Reason::DelegationInvalid,
                        "presentation also verifies under the holder's key",
                    ));
                }
            }
            _ => {
                if !holder_signed(&ps) {
                    return Err(Reject::new(
                        Reason::BadDeviceSignature,
                        "presentation signature does not verify",
                    ));
                }
            }
        }

        // 8. context.
        if pres.aud.as_deref().is_some_and(|aud| aud != scan.reader_id) {
            return Err(Reject::new(
                Reason::AudienceMismatch,
                "audience is another reader",
            ));
        }
        match (&scan.nonce, &pres.nonce) {
            (None, None) => {}
            (Some(a), Some(b)) if a == b => {}
            (Some(_), None) => return Err(Reject::new(Reason::NonceMismatch, "nonce missing")),
            (None, Some(_)) => return Err(Reject::new(Reason::NonceMismatch, "unexpected nonce")),
            (Some(_), Some(_)) => return Err(Reject::new(Reason::NonceMismatch, "nonce differs")),
        }
        let person = if pres.ben == 0 {
            &cred.holder
        } else {
            cred.beneficiaries
                .iter()
                .find(|b| b.rank == pres.ben)
                .ok_or(Reject::new(
                    Reason::UnknownBeneficiary,
                    "beneficiary rank not in the credential",
                ))?
        };
        if let Some(pd) = &dlg {
            let invalid = |detail| Reject::new(Reason::DelegationInvalid, detail);
            if pd.claims.for_credential != cred.sub {
                return Err(invalid("delegation is for another credential"));
            }
            if !pd.claims.ben.contains(&pres.ben) {
                return Err(invalid("beneficiary outside the delegation's scope"));
            }
            if !pd.claims.uses.contains(&pres.use_) {
                return Err(invalid("use outside the delegation's scope"));
            }
        }
        if !scan.allows(pres.use_) {
            return Err(Reject::new(
                Reason::PurposeNotAllowed,
                "use not allowed for this request",
            ));
        }

        // 9 runs after the parallel part, in batch order; kept until exp + skew, plus the
        // allowed scan delay, since a delayed scan may be accepted that much later (§7.5).
        let key = ReplayKey {
            cti: pres.cti,
            keep_until: pres
                .exp
                .saturating_add(policy.clock_skew)
                .saturating_add(policy.max_scan_delay),
        };
        // 10. AMC attestations, each on its own; computed here (in the parallel part) and
        // kept only if step 9 accepts.
        let amc = pres
            .amc
            .iter()
            .map(|a| self.check_amc(a, &person.ins, now, fresh_at))
            .collect();
        Ok(Passed {
            person: person.clone(),
            key,
            delegation_label: dlg.map(|pd| pd.claims.who.unwrap_or_default()),
            amc,
        })
    }
}
