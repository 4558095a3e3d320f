//! Claims of the credential (docs/profile.md §2.4), presentation (§2.5), delegation (§2.6)
//! and AMC attestation (§2.7): parsing (§7.2 step 2 → MALFORMED / UNSUPPORTED_VERSION) and
//! the identity rules of §5 (step 4 → CLAIMS_INVALID). Failures are [`ClaimsError`]s; the
//! pipeline turns them into reason codes.

use ciborium::Value;

use crate::cbor::{self, Key};
use crate::cose::{HeaderAlg, PublicKey};
use crate::limits::{CTI_LEN, MAX_AMC_ATTESTATIONS};

/// Why claims were refused; the pipeline maps each kind to its reason code (docs/profile.md
/// §7.2 steps 2 and 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimsError {
    /// A claim missing or of the wrong type: `MALFORMED`.
    Malformed(&'static str),
    /// `apcv.v` is not 1: `UNSUPPORTED_VERSION`.
    UnsupportedVersion(&'static str),
    /// Breaks the identity rules of docs/profile.md §5: `CLAIMS_INVALID`.
    Invalid(&'static str),
}

/// CWT claim keys (RFC 8392 §4; 8 = cnf, RFC 8747; 65535 = status, Token Status List).
mod claim {
    pub const ISS: i64 = 1;
    pub const SUB: i64 = 2;
    pub const AUD: i64 = 3;
    pub const EXP: i64 = 4;
    pub const NBF: i64 = 5;
    pub const IAT: i64 = 6;
    pub const CTI: i64 = 7;
    pub const CNF: i64 = 8;
    pub const STATUS: i64 = 65535;
    /// RFC 8747 §3.1: `cnf` member holding a COSE_Key.
    pub const CNF_COSE_KEY: i64 = 1;
}

/// INS OIDs (docs/profile.md §5.3).
pub mod oid {
    /// INS-NIR (the social security number).
    pub const INS_NIR: &str = "1.2.250.1.213.1.4.8";
    /// INS-NIA (a temporary number).
    pub const INS_NIA: &str = "1.2.250.1.213.1.4.9";
    /// Test identities.
    pub const INS_TEST: &str = "1.2.250.1.213.1.4.10";
    /// Demonstration identities.
    pub const INS_DEMO: &str = "1.2.250.1.213.1.4.11";
}

/// What the presentation is for (docs/profile.md §2.5 `"use"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Use {
    /// Care and billing.
    Care,
    /// Shared medical record.
    Dmp,
    /// Pharmaceutical record.
    Dp,
    /// Log-in to a health service.
    Auth,
}

impl Use {
    /// Every use, in a fixed order.
    pub const ALL: [Use; 4] = [Use::Care, Use::Dmp, Use::Dp, Use::Auth];

    /// Parses the wire value.
    pub fn parse(s: &str) -> Option<Use> {
        match s {
            "care" => Some(Use::Care),
            "dmp" => Some(Use::Dmp),
            "dp" => Some(Use::Dp),
            "auth" => Some(Use::Auth),
            _ => None,
        }
    }

    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Use::Care => "care",
            Use::Dmp => "dmp",
            Use::Dp => "dp",
            Use::Auth => "auth",
        }
    }

    pub(crate) fn bit(self) -> u8 {
        match self {
            Use::Care => 1,
            Use::Dmp => 2,
            Use::Dp => 4,
            Use::Auth => 8,
        }
    }
}

/// Open rights with the mandatory insurer (docs/profile.md §2.4 `"amo"`).
#[derive(Clone, PartialEq, Eq)]
pub struct AmoRights {
    /// Scheme code (2 digits).
    pub regime: String,
    /// Fund code (3 digits).
    pub caisse: String,
    /// Centre code (4 digits).
    pub centre: String,
    /// Start of rights, "YYYY-MM-DD" verbatim (lunar dates kept).
    pub open_from: String,
    /// End of rights, "YYYY-MM-DD" verbatim.
    pub open_to: String,
}

/// A person of the credential: the holder (rank 0) or a beneficiary.
#[derive(Clone, PartialEq, Eq)]
pub struct Person {
    /// 0 for the holder, ≥ 1 for a beneficiary.
    pub rank: u64,
    /// INS matricule (15 chars).
    pub ins: String,
    /// INS OID.
    pub ins_oid: String,
    /// Birth name.
    pub birth_name: String,
    /// Given names, space separated.
    pub given_names: String,
    /// "M" or "F".
    pub sex: String,
    /// "YYYY-MM-DD" verbatim (lunar dates kept, docs/profile.md §5.4).
    pub birth_date: String,
    /// INSEE place code (5 chars).
    pub birth_place: String,
    /// Open rights.
    pub amo: AmoRights,
}

// Personal data never goes to a log line through Debug (docs/profile.md §9.1).
impl std::fmt::Debug for Person {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Person")
            .field("rank", &self.rank)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AmoRights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmoRights").finish_non_exhaustive()
    }
}

/// A parsed (not yet verified) credential.
#[derive(Clone)]
pub struct Credential {
    /// `iss`.
    pub iss: String,
    /// `sub`: the credential id.
    pub sub: String,
    /// `exp`.
    pub exp: i64,
    /// `nbf`.
    pub nbf: i64,
    /// `iat`.
    pub iat: i64,
    /// The device key of `cnf` (EC2 P-256).
    pub device_key: PublicKey,
    /// The `alg` parameter of the device key as found (judged at step 3, docs/profile.md §2.2).
    pub device_key_alg: HeaderAlg,
    /// Status-list index.
    pub status_idx: u64,
    /// Status-list URI.
    pub status_uri: String,
    /// The holder (rank 0).
    pub holder: Person,
    /// Beneficiaries (rank ≥ 1).
    pub beneficiaries: Vec<Person>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").finish_non_exhaustive()
    }
}

/// A parsed (not yet verified) presentation payload.
#[derive(Clone, Debug)]
pub struct Presentation {
    /// `iat`.
    pub iat: i64,
    /// `exp`.
    pub exp: i64,
    /// `cti`: the replay key.
    pub cti: [u8; CTI_LEN],
    /// `aud`, when the reader told the phone who it is.
    pub aud: Option<String>,
    /// The embedded credential COSE_Sign1 bytes.
    pub cred: Vec<u8>,
    /// Presented beneficiary rank (0 = holder).
    pub ben: u64,
    /// Purpose.
    pub use_: Use,
    /// The reader's challenge.
    pub nonce: Option<Vec<u8>>,
    /// A delegation (docs/profile.md §2.6): the COSE_Sign1 bytes.
    pub dlg: Option<Vec<u8>>,
    /// AMC attestations (docs/profile.md §2.7): COSE_Sign1 bytes each, at most
    /// [`MAX_AMC_ATTESTATIONS`].
    pub amc: Vec<Vec<u8>>,
}

/// A parsed (not yet verified) delegation (docs/profile.md §2.6).
#[derive(Clone)]
pub struct Delegation {
    /// `iss`.
    pub iss: String,
    /// `sub`: the delegation id.
    pub sub: String,
    /// `exp`.
    pub exp: i64,
    /// `nbf`.
    pub nbf: i64,
    /// The delegate's device key of `cnf` (EC2 P-256).
    pub delegate_key: PublicKey,
    /// The `alg` parameter of the delegate's key as found.
    pub delegate_key_alg: HeaderAlg,
    /// Status-list index.
    pub status_idx: u64,
    /// Status-list URI.
    pub status_uri: String,
    /// `apcv.for`: the `sub` of the credential it applies to.
    pub for_credential: String,
    /// `apcv.ben`: ranks the delegate may present.
    pub ben: Vec<u64>,
    /// `apcv.use`: uses the delegate may present for.
    pub uses: Vec<Use>,
    /// `apcv.who`: display label.
    pub who: Option<String>,
}

impl std::fmt::Debug for Delegation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delegation").finish_non_exhaustive()
    }
}

/// Parsed (not yet verified) AMC attestation claims (docs/profile.md §2.7).
#[derive(Clone)]
pub struct AmcAttestation {
    /// `iss`: the AMC organisation id.
    pub iss: String,
    /// `sub`: the contract id.
    pub sub: String,
    /// `exp`.
    pub exp: i64,
    /// `nbf`.
    pub nbf: i64,
    /// Status-list index and URI, when the attestation carries a status.
    pub status: Option<(u64, String)>,
    /// `apcv.for`: INS matricules covered.
    pub covered: Vec<String>,
    /// `apcv.amc`: the AMC organisation number (text).
    pub amc_number: String,
    /// `apcv.tp`: third-party payment.
    pub third_party_payment: bool,
    /// `apcv.dom`: care domains.
    pub domains: Vec<String>,
}

impl std::fmt::Debug for AmcAttestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmcAttestation").finish_non_exhaustive()
    }
}

fn malformed(detail: &'static str) -> ClaimsError {
    ClaimsError::Malformed(detail)
}

fn invalid(detail: &'static str) -> ClaimsError {
    ClaimsError::Invalid(detail)
}

type Map = [(Value, Value)];

fn req<'m>(m: &'m Map, k: Key<'_>, what: &'static str) -> Result<&'m Value, ClaimsError> {
    cbor::get(m, k).ok_or(malformed(what))
}

fn req_text(m: &Map, k: Key<'_>, what: &'static str) -> Result<String, ClaimsError> {
    req(m, k, what)
        .and_then(|v| cbor::as_text(v).ok_or(malformed(what)))
        .map(str::to_owned)
}

fn req_i64(m: &Map, k: Key<'_>, what: &'static str) -> Result<i64, ClaimsError> {
    req(m, k, what).and_then(|v| cbor::as_i64(v).ok_or(malformed(what)))
}

fn req_map<'m>(m: &'m Map, k: Key<'_>, what: &'static str) -> Result<&'m Map, ClaimsError> {
    req(m, k, what).and_then(|v| cbor::as_map(v).ok_or(malformed(what)))
}

/// Parses presentation claims from its (strict-CBOR) payload (docs/profile.md §2.5).
pub fn parse_presentation(payload: &[u8]) -> Result<Presentation, ClaimsError> {
    const W: &str = "presentation: missing or mistyped claim";
    let v =
        cbor::decode(payload).map_err(|_| malformed("presentation payload is not strict CBOR"))?;
    let m = cbor::as_map(&v).ok_or(malformed(W))?;
    let iat = req_i64(m, Key::Int(claim::IAT), W)?;
    let exp = req_i64(m, Key::Int(claim::EXP), W)?;
    let cti: [u8; CTI_LEN] = req(m, Key::Int(claim::CTI), W)?
        .as_bytes()
        .and_then(|b| b.as_slice().try_into().ok())
        .ok_or(malformed("presentation: cti is not 16 bytes"))?;
    let aud = match cbor::get(m, Key::Int(claim::AUD)) {
        None => None,
        Some(a) => Some(cbor::as_text(a).ok_or(malformed(W))?.to_owned()),
    };
    let cred = cbor::as_bytes(req(m, Key::Text("cred"), W)?)
        .ok_or(malformed(W))?
        .to_vec();
    let ben = cbor::as_u64(req(m, Key::Text("ben"), W)?).ok_or(malformed(W))?;
    let use_ = cbor::as_text(req(m, Key::Text("use"), W)?)
        .and_then(Use::parse)
        .ok_or(malformed("presentation: unknown use"))?;
    let opt_bytes = |k: &str| -> Result<Option<Vec<u8>>, ClaimsError> {
        match cbor::get(m, Key::Text(k)) {
            None => Ok(None),
            Some(b) => Ok(Some(cbor::as_bytes(b).ok_or(malformed(W))?.to_vec())),
        }
    };
    let nonce = opt_bytes("nonce")?;
    let dlg = opt_bytes("dlg")?;
    let amc = match cbor::get(m, Key::Text("amc")) {
        None => Vec::new(),
        Some(a) => {
            let items = cbor::as_array(a).ok_or(malformed(W))?;
            if items.len() > MAX_AMC_ATTESTATIONS {
                return Err(malformed("presentation: too many AMC attestations"));
            }
            items
                .iter()
                .map(|x| cbor::as_bytes(x).map(<[u8]>::to_vec).ok_or(malformed(W)))
                .collect::<Result<_, _>>()?
        }
    };
    Ok(Presentation {
        iat,
        exp,
        cti,
        aud,
        cred,
        ben,
        use_,
        nonce,
        dlg,
        amc,
    })
}

/// Parses credential claims from its (strict-CBOR) payload (docs/profile.md §2.4). Formats are not
/// judged here (that is [`check_credential`], step 4); only presence and types.
pub fn parse_credential(payload: &[u8]) -> Result<Credential, ClaimsError> {
    const W: &str = "credential: missing or mistyped claim";
    let v =
        cbor::decode(payload).map_err(|_| malformed("credential payload is not strict CBOR"))?;
    let m = cbor::as_map(&v).ok_or(malformed(W))?;
    // docs/profile.md §7.2 step 2: "v" = 1; another version may have another shape, so it is
    // judged first.
    let apcv = apcv_v1(m, W, "credential version is not 1")?;
    let iss = req_text(m, Key::Int(claim::ISS), W)?;
    let sub = req_text(m, Key::Int(claim::SUB), W)?;
    let exp = req_i64(m, Key::Int(claim::EXP), W)?;
    let nbf = req_i64(m, Key::Int(claim::NBF), W)?;
    let iat = req_i64(m, Key::Int(claim::IAT), W)?;
    let (device_key, device_key_alg) = parse_cnf(
        m,
        W,
        [
            "credential: unusable device key",
            "credential: device key alg is not an integer",
            "credential: device key is not P-256",
        ],
    )?;
    let status = req(m, Key::Int(claim::STATUS), W)?;
    let (status_idx, status_uri) = parse_status(status, W)?;
    let holder = parse_person(apcv, 0, W)?;
    let beneficiaries = match cbor::get(apcv, Key::Text("ben")) {
        None => Vec::new(),
        Some(b) => cbor::as_array(b)
            .ok_or(malformed(W))?
            .iter()
            .map(|e| {
                let em = cbor::as_map(e).ok_or(malformed(W))?;
                let rank = cbor::as_u64(req(em, Key::Text("rank"), W)?).ok_or(malformed(W))?;
                parse_person(em, rank, W)
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(Credential {
        iss,
        sub,
        exp,
        nbf,
        iat,
        device_key,
        device_key_alg,
        status_idx,
        status_uri,
        holder,
        beneficiaries,
    })
}

/// `cnf` (RFC 8747 §3.2): an EC2 P-256 COSE_Key (docs/profile.md §2.2) and its `alg` as found.
/// `details`: unusable key, alg not an integer, not P-256.
fn parse_cnf(
    m: &Map,
    w: &'static str,
    details: [&'static str; 3],
) -> Result<(PublicKey, HeaderAlg), ClaimsError> {
    let [unusable, alg_type, not_p256] = details;
    let cnf = req_map(m, Key::Int(claim::CNF), w)?;
    let (key, alg) =
        PublicKey::from_value_any_alg(req(cnf, Key::Int(claim::CNF_COSE_KEY), w)?.clone())
            .map_err(|_| malformed(unusable))?;
    if alg == HeaderAlg::Invalid {
        return Err(malformed(alg_type));
    }
    // docs/profile.md §2.2: device keys are EC2 P-256 (ES256) only.
    if !key.is_p256() {
        return Err(malformed(not_p256));
    }
    Ok((key, alg))
}

/// `status` (Token Status List, docs/profile.md §2.4): `{"status_list": {"idx": uint, "uri":
/// tstr}}`.
fn parse_status(status: &Value, w: &'static str) -> Result<(u64, String), ClaimsError> {
    let status = cbor::as_map(status).ok_or(malformed(w))?;
    let sl = req_map(status, Key::Text("status_list"), w)?;
    let idx = cbor::as_u64(req(sl, Key::Text("idx"), w)?).ok_or(malformed(w))?;
    let uri = req_text(sl, Key::Text("uri"), w)?;
    Ok((idx, uri))
}

/// The `"apcv"` map and its `"v"`, judged before any other claim (docs/profile.md §7.2 step 2).
fn apcv_v1<'m>(
    m: &'m Map,
    w: &'static str,
    unsupported: &'static str,
) -> Result<&'m Map, ClaimsError> {
    let apcv = req_map(m, Key::Text("apcv"), w)?;
    match cbor::get(apcv, Key::Text("v")).and_then(cbor::as_u64) {
        Some(1) => Ok(apcv),
        Some(_) => Err(ClaimsError::UnsupportedVersion(unsupported)),
        None => Err(malformed(w)),
    }
}

/// A non-empty array, each item converted by `f` (CDDL `[+ T]`).
fn nonempty_array<T>(
    v: &Value,
    w: &'static str,
    f: impl Fn(&Value) -> Option<T>,
) -> Result<Vec<T>, ClaimsError> {
    let items = cbor::as_array(v).ok_or(malformed(w))?;
    if items.is_empty() {
        return Err(malformed(w));
    }
    items.iter().map(|x| f(x).ok_or(malformed(w))).collect()
}

/// Parses delegation claims from its (strict-CBOR) payload (docs/profile.md §2.6): presence and
/// types (step 2 → MALFORMED / UNSUPPORTED_VERSION).
pub fn parse_delegation(payload: &[u8]) -> Result<Delegation, ClaimsError> {
    const W: &str = "delegation: missing or mistyped claim";
    let v =
        cbor::decode(payload).map_err(|_| malformed("delegation payload is not strict CBOR"))?;
    let m = cbor::as_map(&v).ok_or(malformed(W))?;
    let apcv = apcv_v1(m, W, "delegation version is not 1")?;
    let iss = req_text(m, Key::Int(claim::ISS), W)?;
    let sub = req_text(m, Key::Int(claim::SUB), W)?;
    let exp = req_i64(m, Key::Int(claim::EXP), W)?;
    let nbf = req_i64(m, Key::Int(claim::NBF), W)?;
    req_i64(m, Key::Int(claim::IAT), W)?;
    let (delegate_key, delegate_key_alg) = parse_cnf(
        m,
        W,
        [
            "delegation: unusable delegate key",
            "delegation: delegate key alg is not an integer",
            "delegation: delegate key is not P-256",
        ],
    )?;
    let (status_idx, status_uri) = parse_status(req(m, Key::Int(claim::STATUS), W)?, W)?;
    let for_credential = req_text(apcv, Key::Text("for"), W)?;
    let ben = nonempty_array(req(apcv, Key::Text("ben"), W)?, W, cbor::as_u64)?;
    let uses = nonempty_array(req(apcv, Key::Text("use"), W)?, W, |u| {
        cbor::as_text(u).and_then(Use::parse)
    })?;
    let who = match cbor::get(apcv, Key::Text("who")) {
        None => None,
        Some(w) => Some(cbor::as_text(w).ok_or(malformed(W))?.to_owned()),
    };
    Ok(Delegation {
        iss,
        sub,
        exp,
        nbf,
        delegate_key,
        delegate_key_alg,
        status_idx,
        status_uri,
        for_credential,
        ben,
        uses,
        who,
    })
}

/// Parses AMC attestation claims from its (strict-CBOR) payload (docs/profile.md §2.7): presence
/// and types (→ MALFORMED / UNSUPPORTED_VERSION for this attestation only).
pub fn parse_amc_attestation(payload: &[u8]) -> Result<AmcAttestation, ClaimsError> {
    const W: &str = "AMC attestation: missing or mistyped claim";
    let v = cbor::decode(payload)
        .map_err(|_| malformed("AMC attestation payload is not strict CBOR"))?;
    let m = cbor::as_map(&v).ok_or(malformed(W))?;
    let apcv = apcv_v1(m, W, "AMC attestation version is not 1")?;
    let iss = req_text(m, Key::Int(claim::ISS), W)?;
    let sub = req_text(m, Key::Int(claim::SUB), W)?;
    let exp = req_i64(m, Key::Int(claim::EXP), W)?;
    let nbf = req_i64(m, Key::Int(claim::NBF), W)?;
    req_i64(m, Key::Int(claim::IAT), W)?;
    let status = match cbor::get(m, Key::Int(claim::STATUS)) {
        None => None,
        Some(s) => Some(parse_status(s, W)?),
    };
    let text = |v: &Value| cbor::as_text(v).map(str::to_owned);
    let covered = nonempty_array(req(apcv, Key::Text("for"), W)?, W, text)?;
    let amc_number = req_text(apcv, Key::Text("amc"), W)?;
    let third_party_payment = req(apcv, Key::Text("tp"), W)?
        .as_bool()
        .ok_or(malformed(W))?;
    let domains = nonempty_array(req(apcv, Key::Text("dom"), W)?, W, text)?;
    Ok(AmcAttestation {
        iss,
        sub,
        exp,
        nbf,
        status,
        covered,
        amc_number,
        third_party_payment,
        domains,
    })
}

fn parse_person(m: &Map, rank: u64, w: &'static str) -> Result<Person, ClaimsError> {
    let ins = req_map(m, Key::Text("ins"), w)?;
    let id = req_map(m, Key::Text("id"), w)?;
    let amo = req_map(m, Key::Text("amo"), w)?;
    let t = |mm: &Map, k: &str| req_text(mm, Key::Text(k), w);
    Ok(Person {
        rank,
        ins: t(ins, "m")?,
        ins_oid: t(ins, "oid")?,
        birth_name: t(id, "bn")?,
        given_names: t(id, "gn")?,
        sex: t(id, "sex")?,
        birth_date: t(id, "dob")?,
        birth_place: t(id, "pob")?,
        amo: AmoRights {
            regime: t(amo, "reg")?,
            caisse: t(amo, "caisse")?,
            centre: t(amo, "centre")?,
            open_from: t(amo, "from")?,
            open_to: t(amo, "to")?,
        },
    })
}

/// Step 4: the identity rules of docs/profile.md §5 on the holder, then on each beneficiary
/// in list order (including rank uniqueness, §5.5).
pub fn check_credential(c: &Credential, allow_test_identities: bool) -> Result<(), ClaimsError> {
    check_person(&c.holder, allow_test_identities)?;
    let mut ranks = std::collections::HashSet::new();
    for b in &c.beneficiaries {
        // docs/profile.md §5.5: beneficiary ranks are ≥ 1 (0 is the holder) and unique.
        if b.rank == 0 || !ranks.insert(b.rank) {
            return Err(invalid("beneficiary ranks must be unique and at least 1"));
        }
        check_person(b, allow_test_identities)?;
    }
    Ok(())
}

fn check_person(p: &Person, allow_test: bool) -> Result<(), ClaimsError> {
    if !ins_key_ok(&p.ins) {
        return Err(invalid("INS matricule or its key is invalid"));
    }
    let oid_ok = match p.ins_oid.as_str() {
        oid::INS_NIR | oid::INS_NIA => true,
        oid::INS_TEST | oid::INS_DEMO => allow_test,
        _ => false,
    };
    if !oid_ok {
        return Err(invalid("INS OID not accepted"));
    }
    if !(p.sex == "M" || p.sex == "F") {
        return Err(invalid("sex is not M or F"));
    }
    if !date_ok(&p.birth_date) {
        return Err(invalid("birth date is not YYYY-MM-DD"));
    }
    // docs/profile.md §5.5: INSEE place code, 5 chars of [0-9AB] (2A/2B for Corsica, 99xxx for
    // a country).
    if !(p.birth_place.len() == 5
        && p.birth_place
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'A' || b == b'B'))
    {
        return Err(invalid("birth place is not an INSEE code"));
    }
    let a = &p.amo;
    if !(digits(&a.regime, 2) && digits(&a.caisse, 3) && digits(&a.centre, 4)) {
        return Err(invalid("AMO codes are not digits of the right length"));
    }
    if !(date_ok(&a.open_from) && date_ok(&a.open_to)) {
        return Err(invalid("AMO rights dates are not YYYY-MM-DD"));
    }
    Ok(())
}

fn digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
}

/// "YYYY-MM-DD" with month 00–12 and day 00–31: French civil data has lunar dates (day or
/// month 00, or a day beyond the month's end); they are valid and kept verbatim
/// (docs/profile.md §5.4).
pub fn date_ok(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    matches!((num(0..4), num(5..7), num(8..10)), (Some(_), Some(m), Some(d)) if m <= 12 && d <= 31)
}

/// INS matricule check (RG_BS603, docs/profile.md §5.1–5.2): 13-char number + 2-digit key,
/// key = 97 − (number mod 97), with Corsican département "2A"/"2B" (chars 6–7) read as 19/18.
pub fn ins_key_ok(m: &str) -> bool {
    let Ok(b) = <&[u8; 15]>::try_from(m.as_bytes()) else {
        return false;
    };
    let corsica = match (b[5], b[6]) {
        (b'2', b'A') => Some(*b"19"),
        (b'2', b'B') => Some(*b"18"),
        _ => None,
    };
    let mut number: u64 = 0;
    for (i, &c) in b.iter().take(13).enumerate() {
        let c = match (i, corsica) {
            (5, Some(sub)) => sub[0],
            (6, Some(sub)) => sub[1],
            _ => c,
        };
        if !c.is_ascii_digit() {
            return false;
        }
        number = number * 10 + u64::from(c - b'0');
    }
    if !(b[13].is_ascii_digit() && b[14].is_ascii_digit()) {
        return false;
    }
    let key = u64::from(b[13] - b'0') * 10 + u64::from(b[14] - b'0');
    key == 97 - number % 97
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key(number13: &str) -> String {
        let n: u64 = number13
            .replace("2A", "19")
            .replace("2B", "18")
            .parse()
            .unwrap();
        format!("{number13}{:02}", 97 - n % 97)
    }

    #[test]
    fn ins_keys() {
        // docs/profile.md §5.2 worked examples, incl. Corsica (2A → 19, 2B → 18).
        assert!(ins_key_ok("184127505612355"));
        assert!(ins_key_ok("293072A00401545"));
        assert!(ins_key_ok("255082B03305174"));
        // Substituting 20 for 2A would give key 18: that matricule is wrong.
        assert!(!ins_key_ok("293072A00401518"));
        // 2A/2B anywhere but positions 6–7 is invalid.
        assert!(!ins_key_ok("2A3072000401545"));
        // 1 84 12 76 451 089 key 46.
        assert!(ins_key_ok("184127645108946"));
        assert!(!ins_key_ok("184127645108947"));
        let good = with_key("2850775123456");
        assert!(ins_key_ok(&good));
        // Corsica: 2A and 2B substitute 19 and 18.
        let corse_a = with_key("169092A123456");
        let corse_b = with_key("169092B123456");
        assert!(ins_key_ok(&corse_a), "{corse_a}");
        assert!(ins_key_ok(&corse_b), "{corse_b}");
        // Same number read without the substitution gives a different key.
        assert_ne!(corse_a[13..], corse_b[13..]);
        let mut wrong = corse_a.clone();
        wrong.replace_range(13..15, if &corse_a[13..] == "01" { "02" } else { "01" });
        assert!(!ins_key_ok(&wrong));
        // Letters elsewhere, 3A, lowercase, wrong length.
        assert!(!ins_key_ok("1690A2A12345600"));
        assert!(!ins_key_ok(
            &with_key("1690931123456").replace("931", "9A1")
        ));
        assert!(!ins_key_ok("1690930A1234500"));
        assert!(!ins_key_ok("18412764510894"));
        assert!(!ins_key_ok("1841276451089466"));
        assert!(!ins_key_ok("1690923a12345600"));
    }

    #[test]
    fn dates_accept_lunar() {
        for ok in [
            "1980-00-00",
            "1980-02-31",
            "1980-04-31",
            "2000-12-31",
            "1975-00-15",
        ] {
            assert!(date_ok(ok), "{ok}");
        }
        for bad in [
            "1980-13-01",
            "1980-01-32",
            "80-01-01",
            "1980/01/01",
            "1980-1-01",
            "198a-01-01",
            "1980-01-01T",
        ] {
            assert!(!date_ok(bad), "{bad}");
        }
    }
}
