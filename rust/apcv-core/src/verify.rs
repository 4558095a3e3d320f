//! The verification pipeline (contract "Verification order"): a decision value with a
//! reason code for every presentation, never an error. First failure wins.

use std::borrow::{Borrow, Cow};
use std::collections::HashMap;
use std::sync::Arc;

use rayon::prelude::*;

use crate::claims::{self, Credential, Person, Presentation, Use};
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
    /// Step 7/8: delegation invalid (not supported by this version).
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
        };
        match self.run(scan, now, &mut d) {
            Ok((person, key)) => {
                d.person = Some(person);
                (d, Some(key))
            }
            Err(r) => {
                d.reason = r.reason;
                d.detail = r.detail;
                (d, None)
            }
        }
    }

    /// Step 9: replay, only once everything else holds (contract step 9, PROFILE §7.4).
    fn step_9(&self, mut d: Decision, key: &ReplayKey, reader_id: &str, now: i64) -> Decision {
        let outcome = self
            .replay
            .check_and_insert(&key.cti, reader_id, key.keep_until, now);
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
        d
    }

    fn run(
        &self,
        scan: &Scan,
        now: i64,
        d: &mut Decision,
    ) -> std::result::Result<(Person, ReplayKey), Reject> {
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

        // 6. status (Token Status List draft §4.1; unknown values fail closed).
        let list = self.status.get(&cred.status_uri).ok_or(Reject::new(
            Reason::StatusUnavailable,
            "status list not loaded",
        ))?;
        if now_w > i128::from(list.expires_at) + i128::from(policy.status_grace) {
            return Err(Reject::new(
                Reason::StatusUnavailable,
                "status list expired",
            ));
        }
        match list.bits.get(cred.status_idx) {
            None => {
                return Err(Reject::new(
                    Reason::StatusUnavailable,
                    "status index beyond the list",
                ))
            }
            Some(0) => {}
            Some(2) => return Err(Reject::new(Reason::Suspended, "credential suspended")),
            Some(_) => return Err(Reject::new(Reason::Revoked, "credential revoked")),
        }

        // 7. signatures: issuer, delegation, device (RFC 9052 §4.4, empty external_aad).
        if !cs.verify(&tk.key, tk.alg, b"").unwrap_or(false) {
            return Err(Reject::new(
                Reason::BadIssuerSignature,
                "credential signature does not verify",
            ));
        }
        if pres.dlg.is_some() {
            return Err(Reject::new(
                Reason::DelegationInvalid,
                "delegation not supported by this verifier version",
            ));
        }
        if !ps
            .verify(&cred.device_key, Alg::Es256, b"")
            .unwrap_or(false)
        {
            return Err(Reject::new(
                Reason::BadDeviceSignature,
                "presentation signature does not verify",
            ));
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
        Ok((person.clone(), key))
    }
}
