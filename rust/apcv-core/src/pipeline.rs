//! The verification procedure of docs/profile.md §7.2, one function per step, in the spec's
//! order: [`Snapshot::steps`] reads like the numbered list of §7.2. Every step returns
//! `Result<_, Reject>`, and the first failure is the reported reason.

use std::borrow::Cow;

use crate::claims::{self, Credential, Delegation, Person, Presentation};
use crate::cose::{Alg, HeaderAlg, Sign1};
use crate::decision::{
    AmcCoverage, AmcReason, Decision, Reason, Reject, AMC_STATUS, CREDENTIAL_STATUS,
    DELEGATION_STATUS,
};
use crate::encoding;
use crate::error::Error;
use crate::inputs::{Policy, Scan, ScanData};
use crate::limits::{KID_LEN, MAX_PRESENTATION_LIFETIME};
use crate::settle::ReplayTicket;
use crate::sigcache::SignatureCache;
use crate::status::{StatusFail, StatusLists};
use crate::trust::{Role, TrustList, TrustedKey};

/// What one scan is judged with (docs/profile.md §7.1), besides *now* and the replay store,
/// which step 9 uses after the parallel part.
#[derive(Clone, Copy)]
pub(crate) struct Snapshot<'a> {
    pub(crate) trust: &'a TrustList,
    pub(crate) status: &'a StatusLists,
    pub(crate) policy: &'a Policy,
    /// Issuer signatures already verified under this trust list (step 7 a, b; step 10).
    pub(crate) signatures: &'a SignatureCache,
}

impl<'a> Snapshot<'a> {
    /// Steps 1–8 of docs/profile.md §7.2 for one scan, with step 10 alongside: a rejection,
    /// or an accepted decision and the ticket for step 9, which runs after the parallel part
    /// in batch order (§7.4).
    pub(crate) fn judge(&self, scan: &Scan, now: i64) -> (Decision, Option<ReplayTicket>) {
        match self.steps(scan, now) {
            Ok((decision, ticket)) => (decision, Some(ticket)),
            Err(rejected) => (rejected.into(), None),
        }
    }

    /// docs/profile.md §7.2, step by step in its order; each step's function cites its
    /// sections. A rejection after step 2 reports what step 2 parsed (§7.6).
    fn steps(&self, scan: &Scan, now: i64) -> Result<(Decision, ReplayTicket), Rejected> {
        // 1. Decode.
        let bytes = self.decode(&scan.data)?;
        // 2. Parse: presentation, credential, delegation.
        let p = self.parse(&bytes)?;
        let reject = |r: Reject| p.rejected(r);
        // 3. Trust.
        let keys = self.trust(&p, now).map_err(reject)?;
        // 4. Claims.
        self.claims(&p).map_err(reject)?;
        // 5. Times: freshness at the honoured scan time, else at now.
        let fresh_at = self.times(scan, &p, now).map_err(reject)?;
        // 6. Status.
        self.status(&p, now).map_err(reject)?;
        // 7. Signatures.
        self.signatures(&p, &keys).map_err(reject)?;
        // 8. Context.
        let person = self.context(scan, &p).map_err(reject)?.clone();
        // 9. Replay: the ticket only; the store is asked after the parallel part.
        let ticket = self.replay_ticket(&p.pres.claims);
        // 10. AMC attestations, computed here and reported only if step 9 accepts.
        let amc = self.amc(&p.pres.claims.amc, &person.ins, now, fresh_at);
        Ok((accepted(p, person, amc), ticket))
    }

    /// Step 1, decode (docs/profile.md §4.1, §4.2, limits §4.4) → `MALFORMED`.
    fn decode<'s>(&self, data: &'s ScanData) -> Result<Cow<'s, [u8]>, Reject> {
        match data {
            ScanData::Qr(text) => encoding::decode_qr(text).map(Cow::Owned),
            ScanData::Nfc(bytes) => encoding::decode_nfc(bytes).map(Cow::Borrowed),
        }
        .map_err(|e| malformed_error(e, "undecodable"))
    }

    /// Step 2, parse (docs/profile.md §7.2 step 2): the presentation (§2.5), its credential
    /// (§2.4), then its delegation if any (§2.6), each with [`parse_signed`]. AMC attestations
    /// are parsed at step 10.
    fn parse(&self, bytes: &[u8]) -> Result<Parsed, Rejected> {
        let pres = parse_signed(bytes, &PRESENTATION, claims::parse_presentation)?;
        let cred = parse_signed(&pres.claims.cred, &CREDENTIAL, claims::parse_credential)
            .map_err(|r| rejected_after(r, &pres.claims, None))?;
        let dlg = match &pres.claims.dlg {
            None => None,
            Some(bytes) => Some(
                parse_signed(bytes, &DELEGATION, claims::parse_delegation)
                    .map_err(|r| rejected_after(r, &pres.claims, Some(&cred.claims)))?,
            ),
        };
        Ok(Parsed { pres, cred, dlg })
    }

    /// Step 3, trust (docs/profile.md §7.2 step 3, §3.5, §6.4): (a) the credential's `kid`
    /// selects a usable `"amo"` key → `UNKNOWN_ISSUER`; (b) the credential's `alg` is that
    /// key's and (c) the presentation's and the `cnf` key's are ES256 → `ALG_MISMATCH`;
    /// (d) the credential's `iss` is the key's → `ISSUER_MISMATCH`; (e) the delegation's
    /// issuer → `DELEGATION_INVALID`.
    fn trust(&self, p: &Parsed, now: i64) -> Result<Keys<'a>, Reject> {
        let (sign1, cred) = (&p.cred.sign1, &p.cred.claims);
        let key = self
            .trust
            .find(&sign1.kid, Role::Amo, now)
            .ok_or(Reject::new(Reason::UnknownIssuer, "issuer key not trusted"))?;
        let mismatch = |detail| Err(Reject::new(Reason::AlgMismatch, detail));
        if sign1.alg != HeaderAlg::Known(key.alg) {
            return mismatch("credential alg differs from the trust list");
        }
        if p.pres.sign1.alg != HeaderAlg::Known(Alg::Es256) {
            return mismatch("presentation alg is not ES256");
        }
        if !absent_or_es256(cred.device_key_alg) {
            return mismatch("device key alg is not ES256");
        }
        if cred.iss != key.iss {
            return Err(Reject::new(
                Reason::IssuerMismatch,
                "credential iss differs from the trust list",
            ));
        }
        let dlg = match &p.dlg {
            None => None,
            Some(dlg) => Some(self.delegation_trust(dlg, cred, now)?),
        };
        Ok(Keys { cred: key, dlg })
    }

    /// Step 3e (docs/profile.md §7.2, §2.6): the delegation's `kid` selects a usable `"amo"`
    /// key, its `alg` is that key's, its `cnf` key's is ES256, its `iss` is the key's and the
    /// credential's; every failure is `DELEGATION_INVALID`.
    fn delegation_trust(
        &self,
        dlg: &Signed<Delegation>,
        cred: &Credential,
        now: i64,
    ) -> Result<&'a TrustedKey, Reject> {
        let invalid = |detail| Reject::new(Reason::DelegationInvalid, detail);
        let key = self
            .trust
            .find(&dlg.sign1.kid, Role::Amo, now)
            .ok_or(invalid("delegation issuer key not trusted"))?;
        if dlg.sign1.alg != HeaderAlg::Known(key.alg) {
            return Err(invalid("delegation alg differs from the trust list"));
        }
        if !absent_or_es256(dlg.claims.delegate_key_alg) {
            return Err(invalid("delegate key alg is not ES256"));
        }
        if dlg.claims.iss != key.iss {
            return Err(invalid("delegation iss differs from the trust list"));
        }
        if dlg.claims.iss != cred.iss {
            return Err(invalid("delegation issuer is not the credential's"));
        }
        Ok(key)
    }

    /// Step 4, claims (docs/profile.md §5) on the holder, then on each beneficiary →
    /// `CLAIMS_INVALID`.
    fn claims(&self, p: &Parsed) -> Result<(), Reject> {
        claims::check_credential(&p.cred.claims, self.policy.allow_test_identities)
            .map_err(Reject::from)
    }

    /// Step 5, times (docs/profile.md §7.3, §7.5), compared in i128 so that no claim value
    /// can overflow them: the scan time first (→ `SCAN_TIME_INVALID`), then the credential,
    /// the delegation (→ `DELEGATION_INVALID`) and the presentation, judged at the honoured
    /// `scanned_at`, else at `now`. Returns that time of freshness.
    fn times(&self, scan: &Scan, p: &Parsed, now: i64) -> Result<i128, Reject> {
        let fresh_at = self.scan_time(scan, now)?;
        let skew = i128::from(self.policy.clock_skew);
        let future = |t: i64| i128::from(t) > fresh_at + skew;
        let past = |t: i64| i128::from(t) < fresh_at - skew;
        let fail = |reason, detail| Err(Reject::new(reason, detail));
        let (cred, pres) = (&p.cred.claims, &p.pres.claims);
        if future(cred.nbf) {
            return fail(Reason::CredentialNotYetValid, "credential not yet valid");
        }
        if past(cred.exp) {
            return fail(Reason::CredentialExpired, "credential expired");
        }
        if let Some(dlg) = &p.dlg {
            if future(dlg.claims.nbf) {
                return fail(Reason::DelegationInvalid, "delegation not yet valid");
            }
            if past(dlg.claims.exp) {
                return fail(Reason::DelegationInvalid, "delegation expired");
            }
        }
        if future(pres.iat) {
            return fail(
                Reason::PresentationNotYetValid,
                "presentation issued in the future",
            );
        }
        if past(pres.exp) {
            return fail(Reason::PresentationExpired, "presentation expired");
        }
        let lifetime = i128::from(pres.exp) - i128::from(pres.iat);
        if !(0..=i128::from(MAX_PRESENTATION_LIFETIME)).contains(&lifetime) {
            return fail(
                Reason::PresentationLifetimeExceeded,
                "presentation lifetime exceeds 300 seconds",
            );
        }
        Ok(fresh_at)
    }

    /// The first check of step 5 (docs/profile.md §7.5): a delayed scan's `scanned_at` is
    /// honoured unless in the future beyond skew or older than `max_scan_delay`.
    fn scan_time(&self, scan: &Scan, now: i64) -> Result<i128, Reject> {
        let now = i128::from(now);
        let Some(at) = scan.scanned_at.map(i128::from) else {
            return Ok(now);
        };
        let invalid = |detail| Err(Reject::new(Reason::ScanTimeInvalid, detail));
        if at > now + i128::from(self.policy.clock_skew) {
            return invalid("scan time is in the future");
        }
        if now - at > i128::from(self.policy.max_scan_delay) {
            return invalid("scan time is older than the allowed delay");
        }
        Ok(at)
    }

    /// Step 6, status at `now` even for a delayed scan (docs/profile.md §6.6–6.8, §7.5): the
    /// credential's, then the delegation's (§2.6).
    fn status(&self, p: &Parsed, now: i64) -> Result<(), Reject> {
        let cred = &p.cred.claims;
        self.status_of(cred.status_idx, &cred.status_uri, now)
            .map_err(|f| CREDENTIAL_STATUS.reject(f))?;
        if let Some(dlg) = &p.dlg {
            self.status_of(dlg.claims.status_idx, &dlg.claims.status_uri, now)
                .map_err(|f| DELEGATION_STATUS.reject(f))?;
        }
        Ok(())
    }

    /// The status at `idx` of the list `uri`, judged at `now` (docs/profile.md §6.6–6.8).
    fn status_of(&self, idx: u64, uri: &str, now: i64) -> Result<(), StatusFail> {
        self.status.status(idx, uri, now, self.policy.status_grace)
    }

    /// Step 7, signatures (docs/profile.md §7.2 step 7; Sig_structure §3.3, empty external_aad):
    /// (a) the credential under its trust-list key → `BAD_ISSUER_SIGNATURE`; (b) the delegation
    /// under its key → `DELEGATION_INVALID`; (c) the presentation under the credential's `cnf`
    /// key → `BAD_DEVICE_SIGNATURE`, or with a delegation under the delegate's key and not the
    /// holder's (§2.6).
    fn signatures(&self, p: &Parsed, keys: &Keys<'_>) -> Result<(), Reject> {
        if !self.issuer_signed(&p.pres.claims.cred, &p.cred.sign1, keys.cred) {
            return Err(Reject::new(
                Reason::BadIssuerSignature,
                "credential signature does not verify",
            ));
        }
        let pres = &p.pres.sign1;
        let holder_signed = || {
            pres.verify(&p.cred.claims.device_key, Alg::Es256, b"")
                .unwrap_or(false)
        };
        let bad_device = Reject::new(
            Reason::BadDeviceSignature,
            "presentation signature does not verify",
        );
        let invalid = |detail| Reject::new(Reason::DelegationInvalid, detail);
        let (Some(dlg), Some(key)) = (&p.dlg, keys.dlg) else {
            return if holder_signed() {
                Ok(())
            } else {
                Err(bad_device)
            };
        };
        let dlg_bytes = p.pres.claims.dlg.as_deref().unwrap_or_default();
        if !self.issuer_signed(dlg_bytes, &dlg.sign1, key) {
            return Err(invalid("delegation signature does not verify"));
        }
        if !pres
            .verify(&dlg.claims.delegate_key, Alg::Es256, b"")
            .unwrap_or(false)
        {
            return Err(if holder_signed() {
                invalid("presentation signed by the holder, not the delegate")
            } else {
                bad_device
            });
        }
        if holder_signed() {
            return Err(invalid("presentation also verifies under the holder's key"));
        }
        Ok(())
    }

    /// An issuer's signature — of a credential, a delegation or an AMC attestation parsed
    /// from exactly `bytes` — under its trust-list key, remembered for this trust list
    /// ([`SignatureCache`]): the same bytes presented again skip the check.
    fn issuer_signed(&self, bytes: &[u8], sign1: &Sign1, key: &TrustedKey) -> bool {
        self.signatures.verify(bytes, sign1, &key.key, key.alg)
    }

    /// Step 8, context, against the scan (docs/profile.md §7.2 step 8, a–e): audience, nonce,
    /// beneficiary, the delegation's scope, allowed use. Returns the presented person.
    fn context<'p>(&self, scan: &Scan, p: &'p Parsed) -> Result<&'p Person, Reject> {
        let (pres, cred) = (&p.pres.claims, &p.cred.claims);
        if pres.aud.as_deref().is_some_and(|aud| aud != scan.reader_id) {
            return Err(Reject::new(
                Reason::AudienceMismatch,
                "audience is another reader",
            ));
        }
        let nonce = |detail| Err(Reject::new(Reason::NonceMismatch, detail));
        match (&scan.nonce, &pres.nonce) {
            (None, None) => {}
            (Some(a), Some(b)) if a == b => {}
            (Some(_), None) => return nonce("nonce missing"),
            (None, Some(_)) => return nonce("unexpected nonce"),
            (Some(_), Some(_)) => return nonce("nonce differs"),
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
        if let Some(dlg) = &p.dlg {
            let invalid = |detail| Err(Reject::new(Reason::DelegationInvalid, detail));
            if dlg.claims.for_credential != cred.sub {
                return invalid("delegation is for another credential");
            }
            if !dlg.claims.ben.contains(&pres.ben) {
                return invalid("beneficiary outside the delegation's scope");
            }
            if !dlg.claims.uses.contains(&pres.use_) {
                return invalid("use outside the delegation's scope");
            }
        }
        if !scan.allows(pres.use_) {
            return Err(Reject::new(
                Reason::PurposeNotAllowed,
                "use not allowed for this request",
            ));
        }
        Ok(person)
    }

    /// What step 9 needs (docs/profile.md §7.4): the `cti`, kept until `exp + skew`, plus the
    /// allowed scan delay, since a delayed scan may be accepted that much later (§7.5).
    fn replay_ticket(&self, pres: &Presentation) -> ReplayTicket {
        ReplayTicket {
            cti: pres.cti,
            keep_until: pres
                .exp
                .saturating_add(self.policy.clock_skew)
                .saturating_add(self.policy.max_scan_delay),
            issued_at: pres.iat,
        }
    }

    /// Step 10: the AMC attestations of an accepted presentation, each on its own, in
    /// presentation order (docs/profile.md §2.7, §8.1).
    fn amc(
        &self,
        attestations: &[Vec<u8>],
        ins: &str,
        now: i64,
        fresh_at: i128,
    ) -> Vec<AmcCoverage> {
        attestations
            .iter()
            .map(|a| self.amc_attestation(a, ins, now, fresh_at))
            .collect()
    }

    /// One AMC attestation on its own (docs/profile.md §2.7, outcomes in the order
    /// of §8.1), for the presented person's `ins`; trust and status at `now`, validity times
    /// at `fresh_at`.
    fn amc_attestation(&self, bytes: &[u8], ins: &str, now: i64, fresh_at: i128) -> AmcCoverage {
        let fail = AmcCoverage::without_data;
        let s = match parse_signed(bytes, &AMC_ATTESTATION, claims::parse_amc_attestation) {
            Ok(s) => s,
            Err(r) if r.reason == Reason::UnsupportedVersion => {
                return fail(AmcReason::UnsupportedVersion, r.detail)
            }
            Err(r) => return fail(AmcReason::Malformed, r.detail),
        };
        let (sign1, a) = (&s.sign1, &s.claims);
        let Some(key) = self.trust.find(&sign1.kid, Role::Amc, now) else {
            return fail(AmcReason::UnknownIssuer, "AMC issuer key not trusted");
        };
        if sign1.alg != HeaderAlg::Known(key.alg) {
            let detail = "AMC attestation alg differs from the trust list";
            return fail(AmcReason::AlgMismatch, detail);
        }
        if a.iss != key.iss {
            let detail = "AMC attestation iss differs from the trust list";
            return fail(AmcReason::IssuerMismatch, detail);
        }
        if !self.issuer_signed(bytes, sign1, key) {
            let detail = "AMC attestation signature does not verify";
            return fail(AmcReason::BadIssuerSignature, detail);
        }
        if !a.covered.iter().all(|m| claims::ins_key_ok(m)) {
            let detail = "AMC attestation names an invalid INS matricule";
            return fail(AmcReason::ClaimsInvalid, detail);
        }
        if !a.covered.iter().any(|m| m == ins) {
            let detail = "AMC attestation does not name the presented person";
            return fail(AmcReason::NotApplicable, detail);
        }
        let (reason, detail) = self.amc_window_and_status(a, now, fresh_at);
        AmcCoverage::with_data(reason, detail, s.claims)
    }

    /// The rest of step 10 once the attestation is trusted and names the person: its window
    /// (with the clock skew of §7.3), then its status (§8.1).
    fn amc_window_and_status(
        &self,
        a: &claims::AmcAttestation,
        now: i64,
        fresh_at: i128,
    ) -> (AmcReason, &'static str) {
        let skew = i128::from(self.policy.clock_skew);
        if i128::from(a.nbf) > fresh_at + skew {
            return (
                AmcReason::AttestationNotYetValid,
                "AMC attestation not yet valid",
            );
        }
        if i128::from(a.exp) < fresh_at - skew {
            return (AmcReason::AttestationExpired, "AMC attestation expired");
        }
        match &a.status {
            None => (AmcReason::Ok, ""),
            Some((idx, uri)) => match self.status_of(*idx, uri, now) {
                Ok(()) => (AmcReason::Ok, ""),
                Err(f) => AMC_STATUS.of(f),
            },
        }
    }
}

/// A signed object parsed at step 2 (COSE_Sign1 and claims); nothing in it is trusted yet.
struct Signed<T> {
    sign1: Sign1,
    claims: T,
}

/// Everything step 2 parses: the presentation, its credential and its delegation.
struct Parsed {
    pres: Signed<Presentation>,
    cred: Signed<Credential>,
    dlg: Option<Signed<Delegation>>,
}

/// The trust-list keys step 3 selected.
struct Keys<'t> {
    cred: &'t TrustedKey,
    dlg: Option<&'t TrustedKey>,
}

/// A rejection by steps 1–8 with what step 2 had learnt by then (docs/profile.md §7.6: the
/// use and the credential's id, issuer and expiry are reported once parsed).
pub(crate) struct Rejected {
    reject: Reject,
    use_: Option<claims::Use>,
    credential: Option<(String, String, i64)>,
}

impl From<Reject> for Rejected {
    fn from(reject: Reject) -> Rejected {
        Rejected {
            reject,
            use_: None,
            credential: None,
        }
    }
}

impl From<Rejected> for Decision {
    fn from(r: Rejected) -> Decision {
        let (credential_id, issuer, credential_expires_at) = match r.credential {
            Some((id, iss, exp)) => (Some(id), Some(iss), Some(exp)),
            None => (None, None, None),
        };
        Decision {
            reason: r.reject.reason,
            detail: r.reject.detail,
            use_: r.use_,
            credential_id,
            issuer,
            credential_expires_at,
            ..Decision::default()
        }
    }
}

/// Rejected by `r` once the presentation (and, if given, the credential) parsed.
fn rejected_after(r: Reject, pres: &Presentation, cred: Option<&Credential>) -> Rejected {
    Rejected {
        reject: r,
        use_: Some(pres.use_),
        credential: cred.map(|c| (c.sub.clone(), c.iss.clone(), c.exp)),
    }
}

impl Parsed {
    /// A rejection by a step after step 2.
    fn rejected(&self, r: Reject) -> Rejected {
        rejected_after(r, &self.pres.claims, Some(&self.cred.claims))
    }
}

/// How a signed object is named in the phrases of step 2 (docs/profile.md §2.1, §2.3).
struct Kind {
    /// Detail when the bytes are not a COSE_Sign1 and the decoder gives no phrase of its own.
    not_sign1: &'static str,
    /// Whether the decoder's own phrase is reported.
    decoder_detail: bool,
    /// Detail when the protected header has no usable `alg`.
    no_alg: &'static str,
    /// Detail when the protected header has no 8-byte `kid`; `None` for the presentation,
    /// which carries none (§2.5).
    no_kid: Option<&'static str>,
}

const PRESENTATION: Kind = Kind {
    not_sign1: "undecodable",
    decoder_detail: true,
    no_alg: "presentation: alg not in protected header",
    no_kid: None,
};

const CREDENTIAL: Kind = Kind {
    not_sign1: "credential is not a COSE_Sign1",
    decoder_detail: true,
    no_alg: "credential: alg not in protected header",
    no_kid: Some("credential: kid not in protected header"),
};

const DELEGATION: Kind = Kind {
    not_sign1: "delegation is not a COSE_Sign1",
    decoder_detail: true,
    no_alg: "delegation: alg not in protected header",
    no_kid: Some("delegation: kid not in protected header"),
};

const AMC_ATTESTATION: Kind = Kind {
    not_sign1: "AMC attestation is not a COSE_Sign1",
    decoder_detail: false,
    no_alg: "AMC attestation: alg not in protected header",
    no_kid: Some("AMC attestation: kid not in protected header"),
};

fn malformed(detail: &'static str) -> Reject {
    Reject::new(Reason::Malformed, detail)
}

/// A core decoding error as a `MALFORMED` rejection: the decoder's phrase, else `otherwise`.
fn malformed_error(e: Error, otherwise: &'static str) -> Reject {
    match e {
        Error::Malformed(detail) => malformed(detail),
        _ => malformed(otherwise),
    }
}

/// A key `alg` parameter that is absent or ES256 (docs/profile.md §2.2).
fn absent_or_es256(alg: HeaderAlg) -> bool {
    matches!(alg, HeaderAlg::Absent | HeaderAlg::Known(Alg::Es256))
}

/// Step 2 for one signed object — the presentation, the credential, the delegation or an AMC
/// attestation: strict CBOR and COSE_Sign1 (docs/profile.md §2.1, §4.3), `alg` (and `kid`)
/// in the protected header (§2.3), then its claims with their types → `MALFORMED` /
/// `UNSUPPORTED_VERSION`.
fn parse_signed<T>(
    bytes: &[u8],
    kind: &Kind,
    parse_claims: fn(&[u8]) -> Result<T, claims::ClaimsError>,
) -> Result<Signed<T>, Reject> {
    let sign1 = Sign1::parse(bytes).map_err(|e| match e {
        Error::Malformed(detail) if kind.decoder_detail => malformed(detail),
        _ => malformed(kind.not_sign1),
    })?;
    if matches!(sign1.alg, HeaderAlg::Absent | HeaderAlg::Invalid) {
        return Err(malformed(kind.no_alg));
    }
    if let Some(no_kid) = kind.no_kid {
        if sign1.kid.len() != KID_LEN {
            return Err(malformed(no_kid));
        }
    }
    let claims = parse_claims(sign1.payload())?;
    Ok(Signed { sign1, claims })
}

/// The decision of a presentation that passed steps 1–8 (docs/profile.md §7.6): accepted,
/// with the presented person, the delegation's label and the AMC outcomes.
fn accepted(p: Parsed, person: Person, amc: Vec<AmcCoverage>) -> Decision {
    let cred = p.cred.claims;
    Decision {
        reason: Reason::Ok,
        detail: "",
        use_: Some(p.pres.claims.use_),
        credential_id: Some(cred.sub),
        issuer: Some(cred.iss),
        credential_expires_at: Some(cred.exp),
        person: Some(person),
        delegation_label: p.dlg.map(|d| d.claims.who.unwrap_or_default()),
        amc,
        ..Decision::default()
    }
}

/// AMC outcomes whose coverage data is reported (docs/profile.md §2.7: signed by a trusted
/// "amc" key and naming the presented person).
fn amc_carries_data(reason: AmcReason) -> bool {
    matches!(
        reason,
        AmcReason::Ok
            | AmcReason::AttestationNotYetValid
            | AmcReason::AttestationExpired
            | AmcReason::Revoked
            | AmcReason::Suspended
            | AmcReason::StatusUnavailable
    )
}

/// The decision kept in `record`, rebuilt for the resent `scan` (the same presentation bytes,
/// checked by the caller against the record's digest): reason, flags and use from the
/// record; the credential's id, issuer and expiry, and for an accepted one the presented
/// person, the delegation's label and the AMC coverage, from decoding and parsing the
/// presentation again (steps 1–2 and the person's choice of step 8). Nothing is judged
/// again: no time, trust, status or replay check. Fixed phrases are left empty (the record
/// has them).
pub(crate) fn rebuild(scan: &Scan, record: &crate::answers::AnswerRecord) -> Decision {
    let mut d = Decision {
        reason: record.reason,
        use_: record.use_,
        duplicate: record.duplicate,
        replay_unchecked: record.replay_unchecked,
        ..Decision::default()
    };
    let bytes = match &scan.data {
        ScanData::Qr(text) => encoding::decode_qr(text).map(Cow::Owned),
        ScanData::Nfc(bytes) => encoding::decode_nfc(bytes).map(Cow::Borrowed),
    };
    let Ok(bytes) = bytes else { return d };
    let Ok(pres) = parse_signed(&bytes, &PRESENTATION, claims::parse_presentation) else {
        return d;
    };
    let Ok(cred) = parse_signed(&pres.claims.cred, &CREDENTIAL, claims::parse_credential) else {
        return d;
    };
    let cred = cred.claims;
    d.credential_id = Some(cred.sub.clone());
    d.issuer = Some(cred.iss.clone());
    d.credential_expires_at = Some(cred.exp);
    if record.reason != Reason::Ok {
        return d;
    }
    let pres = pres.claims;
    let person = if pres.ben == 0 {
        Some(cred.holder)
    } else {
        cred.beneficiaries.into_iter().find(|b| b.rank == pres.ben)
    };
    d.person = person;
    if let Some(dlg) = &pres.dlg {
        if let Ok(dlg) = parse_signed(dlg, &DELEGATION, claims::parse_delegation) {
            d.delegation_label = Some(dlg.claims.who.unwrap_or_default());
        }
    }
    d.amc = record
        .amc
        .iter()
        .zip(&pres.amc)
        .map(|((reason, _), bytes)| {
            let parsed = amc_carries_data(*reason)
                .then(|| parse_signed(bytes, &AMC_ATTESTATION, claims::parse_amc_attestation))
                .and_then(Result::ok);
            match parsed {
                Some(s) => AmcCoverage::with_data(*reason, "", s.claims),
                None => AmcCoverage::without_data(*reason, ""),
            }
        })
        .collect();
    d
}
