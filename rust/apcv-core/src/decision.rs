//! The decision value of docs/profile.md §7.6 and the reason codes of §8 and §8.1: what every
//! scan yields, accepted or not. A bad presentation is never an error, always a decision.

use crate::claims::{AmcAttestation, ClaimsError, Person, Use};
use crate::status::StatusFail;

/// Why a presentation was accepted or rejected: the reason codes of docs/profile.md §8 (also
/// the proto enum names), each with the step of §7.2 that reports it.
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
    /// the holder's key, for another credential or out of scope (docs/profile.md §2.6).
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
    /// Every reason, in the order of the docs/profile.md §8 table.
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

/// The outcome of one AMC attestation (docs/profile.md §2.7, §8.1). Only `Ok` means the
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
    /// A matricule of `for` breaks docs/profile.md §5.1–5.2.
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
    /// `nbf`: the start of the coverage (the FHIR `Coverage.period.start`).
    pub valid_from: Option<i64>,
}

impl AmcCoverage {
    /// True when the attestation is valid for the presented person.
    pub fn valid(&self) -> bool {
        self.reason == AmcReason::Ok
    }

    pub(crate) fn without_data(reason: AmcReason, detail: &'static str) -> AmcCoverage {
        AmcCoverage {
            reason,
            detail,
            organisation: None,
            amc_number: None,
            contract: None,
            third_party_payment: None,
            domains: Vec::new(),
            expires_at: None,
            valid_from: None,
        }
    }

    pub(crate) fn with_data(
        reason: AmcReason,
        detail: &'static str,
        a: AmcAttestation,
    ) -> AmcCoverage {
        AmcCoverage {
            reason,
            detail,
            organisation: Some(a.iss),
            amc_number: Some(a.amc_number),
            contract: Some(a.sub),
            third_party_payment: Some(a.third_party_payment),
            domains: a.domains,
            expires_at: Some(a.exp),
            valid_from: Some(a.nbf),
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

/// A rejection: a reason and a short fixed English phrase that never holds a claim value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    /// The reason code.
    pub reason: Reason,
    /// Fixed phrase, never a name, NIR, date, sub or raw bytes (docs/profile.md §9.1).
    pub detail: &'static str,
}

impl Reject {
    /// A rejection with `reason` and `detail`.
    pub fn new(reason: Reason, detail: &'static str) -> Reject {
        Reject { reason, detail }
    }
}

impl From<ClaimsError> for Reject {
    /// Claims refused at step 2 (`MALFORMED`, `UNSUPPORTED_VERSION`) or step 4
    /// (`CLAIMS_INVALID`) of docs/profile.md §7.2.
    fn from(e: ClaimsError) -> Reject {
        match e {
            ClaimsError::Malformed(detail) => Reject::new(Reason::Malformed, detail),
            ClaimsError::UnsupportedVersion(detail) => {
                Reject::new(Reason::UnsupportedVersion, detail)
            }
            ClaimsError::Invalid(detail) => Reject::new(Reason::ClaimsInvalid, detail),
        }
    }
}

/// The outcome of one verification (docs/profile.md §7.6). The default is a rejection
/// (`MALFORMED`, nothing known), so that a decision never reads accepted by accident.
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
    /// Accepted although the replay store could not be asked: the operator's fail-open
    /// choice for an external store (docs/profile.md §7.4), never set by the core's own store.
    pub replay_unchecked: bool,
}

impl Default for Decision {
    fn default() -> Decision {
        Decision {
            reason: Reason::Malformed,
            detail: "",
            duplicate: false,
            use_: None,
            credential_id: None,
            issuer: None,
            credential_expires_at: None,
            person: None,
            delegation_label: None,
            amc: Vec::new(),
            replay_unchecked: false,
        }
    }
}

impl Decision {
    /// True when the presentation was accepted.
    pub fn accepted(&self) -> bool {
        self.reason == Reason::Ok
    }
}

/// What a status failure (docs/profile.md §6.6–6.8) means for one kind of object: the one
/// mapping from [`StatusFail`] to a reason code and a fixed phrase.
pub(crate) struct StatusReasons<R> {
    /// List not loaded, expired past grace, or index beyond it.
    unavailable: R,
    /// Status INVALID or an unknown value (fail closed).
    revoked: R,
    /// Status SUSPENDED.
    suspended: R,
    /// Phrases for: not loaded, expired, beyond the list, revoked, suspended.
    details: [&'static str; 5],
}

impl<R: Copy> StatusReasons<R> {
    /// The reason and phrase for `fail`.
    pub(crate) fn of(&self, fail: StatusFail) -> (R, &'static str) {
        let [not_loaded, expired, beyond, revoked, suspended] = self.details;
        match fail {
            StatusFail::NotLoaded => (self.unavailable, not_loaded),
            StatusFail::Expired => (self.unavailable, expired),
            StatusFail::BeyondList => (self.unavailable, beyond),
            StatusFail::Revoked => (self.revoked, revoked),
            StatusFail::Suspended => (self.suspended, suspended),
        }
    }
}

impl StatusReasons<Reason> {
    /// [`Self::of`] as a rejection.
    pub(crate) fn reject(&self, fail: StatusFail) -> Reject {
        let (reason, detail) = self.of(fail);
        Reject::new(reason, detail)
    }
}

/// The credential's status: docs/profile.md §7.2 step 6, §8.
pub(crate) const CREDENTIAL_STATUS: StatusReasons<Reason> = StatusReasons {
    unavailable: Reason::StatusUnavailable,
    revoked: Reason::Revoked,
    suspended: Reason::Suspended,
    details: [
        "status list not loaded",
        "status list expired",
        "status index beyond the list",
        "credential revoked",
        "credential suspended",
    ],
};

/// The delegation's status: revoked or suspended makes the delegation invalid, an unusable
/// list fails closed like the credential's (docs/profile.md §2.6, §7.2 step 6).
pub(crate) const DELEGATION_STATUS: StatusReasons<Reason> = StatusReasons {
    unavailable: Reason::StatusUnavailable,
    revoked: Reason::DelegationInvalid,
    suspended: Reason::DelegationInvalid,
    details: [
        "delegation status list not loaded",
        "delegation status list expired",
        "delegation status index beyond the list",
        "delegation revoked",
        "delegation suspended",
    ],
};

/// An AMC attestation's status (docs/profile.md §8.1).
pub(crate) const AMC_STATUS: StatusReasons<AmcReason> = StatusReasons {
    unavailable: AmcReason::StatusUnavailable,
    revoked: AmcReason::Revoked,
    suspended: AmcReason::Suspended,
    details: [
        "AMC status list not loaded",
        "AMC status list expired",
        "AMC status index beyond the list",
        "AMC attestation revoked",
        "AMC attestation suspended",
    ],
};
