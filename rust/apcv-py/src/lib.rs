//! PyO3 binding of apcv-core: the private module `apcv_verify._native`.
//!
//! Thin by design (pyca/cryptography style): argument conversion, one exhaustive mapping
//! of core errors to Python exceptions, frozen result classes. All verification logic lives
//! in apcv-core; `verify_batch` runs it with the GIL released.

use std::sync::Arc;

use apcv_core::claims;
use apcv_core::cose::{self, PublicKey};
use apcv_core::error::Error as CoreError;
use apcv_core::replay;
use apcv_core::status;
use apcv_core::trust;
use apcv_core::verify;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyIndexError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyInt, PyString, PyTuple, PyType};

const MODULE: &str = "apcv_verify._native";

create_exception!(
    apcv_verify._native,
    NativeError,
    PyException,
    "Base of every error raised by the native core."
);
create_exception!(
    apcv_verify._native,
    TrustListError,
    NativeError,
    "Trust list refused; the message names the problem."
);
create_exception!(
    apcv_verify._native,
    StatusListError,
    NativeError,
    "Status list refused (bad signature, signer not role \"status\", malformed, expired)."
);
create_exception!(
    apcv_verify._native,
    InvalidSignature,
    NativeError,
    "verify_sign1: the signature does not verify."
);

// CoseKeyError and MalformedError also derive from ValueError, and create_exception! takes a
// single base: they are made with `type(name, (NativeError, ValueError), ns)` once.
static COSE_KEY_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static MALFORMED_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn value_error_subclass<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
    doc: &str,
) -> PyResult<Bound<'py, PyType>> {
    let ty = cell.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let bases = PyTuple::new(
            py,
            [py.get_type::<NativeError>(), py.get_type::<PyValueError>()],
        )?;
        let ns = PyDict::new(py);
        ns.set_item("__module__", MODULE)?;
        ns.set_item("__doc__", doc)?;
        let made = py.get_type::<PyType>().call1((name, bases, ns))?;
        Ok(made.cast_into::<PyType>()?.unbind())
    })?;
    Ok(ty.bind(py).clone())
}

fn cose_key_error(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    value_error_subclass(
        py,
        &COSE_KEY_ERROR,
        "CoseKeyError",
        "Unusable COSE_Key, or an algorithm the profile does not allow.",
    )
}

fn malformed_error(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    value_error_subclass(
        py,
        &MALFORMED_ERROR,
        "MalformedError",
        "verify_sign1: the bytes are not a strict COSE_Sign1.",
    )
}

/// A core error on its way to Python (orphan rule: the mapping needs a local type).
struct NativeErr(CoreError);

impl From<CoreError> for NativeErr {
    fn from(e: CoreError) -> Self {
        NativeErr(e)
    }
}

impl From<NativeErr> for PyErr {
    /// The one mapping from core error kinds to exception classes (exhaustive on purpose: a
    /// new kind must be placed here before the crate compiles).
    fn from(NativeErr(e): NativeErr) -> PyErr {
        let msg = e.to_string();
        let from_type = |make: fn(Python<'_>) -> PyResult<Bound<'_, PyType>>| {
            Python::attach(|py| match make(py) {
                Ok(ty) => PyErr::from_type(ty, msg.clone()),
                Err(err) => err,
            })
        };
        match e {
            CoreError::Malformed(_) => from_type(malformed_error),
            CoreError::CoseKey(_) => from_type(cose_key_error),
            CoreError::InvalidSignature => InvalidSignature::new_err(msg),
            CoreError::UnknownTrustAnchor
            | CoreError::BadTrustListSignature
            | CoreError::TrustListRollback { .. }
            | CoreError::TrustListBadKid(_)
            | CoreError::MalformedTrustList(_)
            | CoreError::TrustListExpired => TrustListError::new_err(msg),
            CoreError::UnknownStatusListSigner
            | CoreError::BadStatusListSignature
            | CoreError::MalformedStatusList(_)
            | CoreError::StatusListExpired => StatusListError::new_err(msg),
            CoreError::IndexOutOfRange => PyIndexError::new_err(msg),
            CoreError::InvalidArgument(_) => PyValueError::new_err(msg),
        }
    }
}

type NativeResult<T> = Result<T, NativeErr>;

fn to_len(n: u64) -> PyResult<usize> {
    usize::try_from(n).map_err(|_| PyOverflowError::new_err("length does not fit"))
}

/// Any Python int outside the list (negative, or beyond u64) is an IndexError, as for a
/// sequence; a non-int is a TypeError.
fn status_at(bits: &status::StatusBits, index: &Bound<'_, PyAny>) -> PyResult<u8> {
    let index: Option<u64> = match index.extract::<u64>() {
        Ok(i) => Some(i),
        Err(_) if index.cast::<PyInt>().is_ok() => None,
        Err(e) => return Err(e),
    };
    index
        .and_then(|i| bits.get(i))
        .ok_or_else(|| NativeErr(CoreError::IndexOutOfRange).into())
}

// ------------------------------------------------------------------ primitives

/// Raw signature primitive: alg -7 (ES256, r‖s) or -8 (EdDSA).
#[pyfunction]
fn verify_signature(
    py: Python<'_>,
    alg: i64,
    cose_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> NativeResult<bool> {
    py.detach(|| cose::verify_signature(alg, cose_key, message, signature))
        .map_err(NativeErr)
}

/// Strict COSE_Sign1 parse + verify with the protected alg; returns the payload.
#[pyfunction]
#[pyo3(signature = (cose_sign1, cose_key, external_aad = b"".as_slice()))]
fn verify_sign1<'py>(
    py: Python<'py>,
    cose_sign1: &[u8],
    cose_key: &[u8],
    external_aad: &[u8],
) -> NativeResult<Bound<'py, PyBytes>> {
    let payload = py.detach(|| {
        let key = PublicKey::from_bytes(cose_key)?;
        cose::verify_sign1(cose_sign1, &key, external_aad)
    })?;
    Ok(PyBytes::new(py, &payload))
}

/// RFC 9679 thumbprint (SHA-256, 32 bytes) of a COSE_Key.
#[pyfunction]
fn cose_key_thumbprint<'py>(py: Python<'py>, cose_key: &[u8]) -> NativeResult<Bound<'py, PyBytes>> {
    let key = PublicKey::from_bytes(cose_key)?;
    Ok(PyBytes::new(py, &key.thumbprint()))
}

/// Decodes a CBOR `{"bits", "lst"}` status-list map (Token Status List draft §4.3).
#[pyfunction]
fn decode_status_list(py: Python<'_>, status_list_map: &[u8]) -> NativeResult<StatusBits> {
    let inner = py.detach(|| status::StatusBits::from_cbor(status_list_map))?;
    Ok(StatusBits { inner })
}

// ------------------------------------------------------------------ status and trust

/// Decoded status entries (bits per entry, LSB first).
#[pyclass(frozen, module = "apcv_verify._native")]
struct StatusBits {
    inner: status::StatusBits,
}

#[pymethods]
impl StatusBits {
    #[getter]
    fn bits(&self) -> u8 {
        self.inner.bits()
    }

    fn __len__(&self) -> PyResult<usize> {
        to_len(self.inner.len())
    }

    /// Status of entry `index`; IndexError outside the list.
    fn status(&self, index: &Bound<'_, PyAny>) -> PyResult<u8> {
        status_at(&self.inner, index)
    }

    fn __repr__(&self) -> String {
        format!(
            "<StatusBits bits={} len={}>",
            self.inner.bits(),
            self.inner.len()
        )
    }
}

/// A verified trust list (immutable).
#[pyclass(frozen, module = "apcv_verify._native")]
struct TrustList {
    inner: Arc<trust::TrustList>,
}

#[pymethods]
impl TrustList {
    /// Verifies a signed trust list against the anchors (COSE_Key bytes); TrustListError
    /// names the problem.
    #[staticmethod]
    #[pyo3(signature = (data, anchors, now, held_seq = None))]
    fn verify(
        py: Python<'_>,
        data: &[u8],
        anchors: Vec<Vec<u8>>,
        now: i64,
        held_seq: Option<u64>,
    ) -> NativeResult<TrustList> {
        let inner = py.detach(|| -> apcv_core::Result<trust::TrustList> {
            let anchors = anchors
                .iter()
                .map(|a| PublicKey::from_bytes(a))
                .collect::<apcv_core::Result<Vec<_>>>()?;
            trust::TrustList::verify(data, &anchors, now, held_seq)
        })?;
        Ok(TrustList {
            inner: Arc::new(inner),
        })
    }

    #[getter]
    fn seq(&self) -> u64 {
        self.inner.seq
    }

    #[getter]
    fn issued_at(&self) -> i64 {
        self.inner.issued_at
    }

    #[getter]
    fn expires_at(&self) -> i64 {
        self.inner.expires_at
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "<TrustList seq={} keys={} expires_at={}>",
            self.inner.seq,
            self.inner.len(),
            self.inner.expires_at
        )
    }
}

/// A verified status list (immutable).
#[pyclass(frozen, module = "apcv_verify._native")]
struct StatusList {
    inner: Arc<status::StatusList>,
}

#[pymethods]
impl StatusList {
    /// Verifies a signed status-list CWT with a trust-list key of role "status";
    /// StatusListError names the problem.
    #[staticmethod]
    fn verify(
        py: Python<'_>,
        data: &[u8],
        trust_list: &Bound<'_, TrustList>,
        now: i64,
    ) -> NativeResult<StatusList> {
        let tl = trust_list.get().inner.clone();
        let inner = py.detach(|| status::StatusList::verify(data, &tl, now))?;
        Ok(StatusList {
            inner: Arc::new(inner),
        })
    }

    #[getter]
    fn uri(&self) -> &str {
        &self.inner.uri
    }

    #[getter]
    fn bits(&self) -> u8 {
        self.inner.bits.bits()
    }

    #[getter]
    fn issued_at(&self) -> i64 {
        self.inner.issued_at
    }

    #[getter]
    fn expires_at(&self) -> i64 {
        self.inner.expires_at
    }

    #[getter]
    fn ttl(&self) -> Option<u64> {
        self.inner.ttl
    }

    fn __len__(&self) -> PyResult<usize> {
        to_len(self.inner.bits.len())
    }

    /// Status of entry `index`; IndexError outside the list.
    fn status(&self, index: &Bound<'_, PyAny>) -> PyResult<u8> {
        status_at(&self.inner.bits, index)
    }

    fn __repr__(&self) -> String {
        format!(
            "<StatusList uri={:?} bits={} len={} expires_at={}>",
            self.inner.uri,
            self.inner.bits.bits(),
            self.inner.bits.len(),
            self.inner.expires_at
        )
    }
}

// ------------------------------------------------------------------ policy, store, scan

/// Verification policy.
#[pyclass(frozen, module = "apcv_verify._native")]
struct Policy {
    inner: verify::Policy,
}

#[pymethods]
impl Policy {
    #[new]
    #[pyo3(signature = (
        *,
        allow_test_identities = false,
        clock_skew = 60,
        status_grace = 0,
        max_scan_delay = 0
    ))]
    fn new(
        allow_test_identities: bool,
        clock_skew: i64,
        status_grace: i64,
        max_scan_delay: i64,
    ) -> NativeResult<Policy> {
        Ok(Policy {
            inner: verify::Policy::new(allow_test_identities, clock_skew, status_grace)?
                .with_max_scan_delay(max_scan_delay)?,
        })
    }

    #[getter]
    fn allow_test_identities(&self) -> bool {
        self.inner.allow_test_identities
    }

    #[getter]
    fn clock_skew(&self) -> i64 {
        self.inner.clock_skew
    }

    #[getter]
    fn status_grace(&self) -> i64 {
        self.inner.status_grace
    }

    #[getter]
    fn max_scan_delay(&self) -> i64 {
        self.inner.max_scan_delay
    }

    fn __repr__(&self) -> String {
        let p = &self.inner;
        format!(
            "Policy(allow_test_identities={}, clock_skew={}, status_grace={}, max_scan_delay={})",
            if p.allow_test_identities {
                "True"
            } else {
                "False"
            },
            p.clock_skew,
            p.status_grace,
            p.max_scan_delay
        )
    }
}

const _: () = assert!(apcv_core::limits::DEFAULT_MAX_REPLAY_ENTRIES == 1_000_000);

/// The in-process replay store; thread-safe and shared by every Verifier built with it.
#[pyclass(frozen, module = "apcv_verify._native")]
struct MemoryReplayStore {
    inner: Arc<replay::MemoryReplayStore>,
}

#[pymethods]
impl MemoryReplayStore {
    // The literal shows in the Python signature; the assertion below keeps it the core's.
    #[new]
    #[pyo3(signature = (max_entries = 1_000_000))]
    fn new(max_entries: usize) -> MemoryReplayStore {
        MemoryReplayStore {
            inner: Arc::new(replay::MemoryReplayStore::new(max_entries)),
        }
    }

    #[getter]
    fn max_entries(&self) -> usize {
        self.inner.max_entries()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "<MemoryReplayStore len={} max_entries={}>",
            self.inner.len(),
            self.inner.max_entries()
        )
    }
}

/// One item to verify: QR text (str) or NFC bytes, with the reader's context.
#[pyclass(frozen, module = "apcv_verify._native")]
struct Scan {
    inner: Arc<verify::Scan>,
}

#[pymethods]
impl Scan {
    #[new]
    #[pyo3(signature = (data, reader_id, *, nonce = None, allowed_uses = None, scanned_at = None))]
    fn new(
        data: &Bound<'_, PyAny>,
        reader_id: String,
        nonce: Option<Vec<u8>>,
        allowed_uses: Option<Vec<String>>,
        scanned_at: Option<i64>,
    ) -> PyResult<Scan> {
        let data = if let Ok(s) = data.cast::<PyString>() {
            verify::ScanData::Qr(s.to_str()?.to_owned())
        } else if let Ok(b) = data.cast::<PyBytes>() {
            verify::ScanData::Nfc(b.as_bytes().to_vec())
        } else {
            return Err(PyTypeError::new_err(
                "data must be str (QR text) or bytes (NFC)",
            ));
        };
        let uses = match allowed_uses {
            None => None,
            Some(names) => Some(verify::parse_uses(&names).map_err(NativeErr)?),
        };
        Ok(Scan {
            inner: Arc::new(
                verify::Scan::new(data, reader_id, nonce, uses.as_deref())
                    .with_scanned_at(scanned_at),
            ),
        })
    }

    #[getter]
    fn reader_id(&self) -> &str {
        &self.inner.reader_id
    }

    /// When the reader scanned the code (delayed scan, PROFILE §7.5), or None.
    #[getter]
    fn scanned_at(&self) -> Option<i64> {
        self.inner.scanned_at
    }

    fn __repr__(&self) -> String {
        let kind = match self.inner.data {
            verify::ScanData::Qr(_) => "qr",
            verify::ScanData::Nfc(_) => "nfc",
        };
        // PROFILE §9.1: no reader-supplied text in anything that may reach a log line.
        format!("<Scan {kind}>")
    }
}

// ------------------------------------------------------------------ results

/// Open AMO rights of the presented person. repr shows no value.
#[pyclass(frozen, module = "apcv_verify._native")]
struct AmoRights {
    #[pyo3(get)]
    regime: String,
    #[pyo3(get)]
    caisse: String,
    #[pyo3(get)]
    centre: String,
    #[pyo3(get)]
    open_from: String,
    #[pyo3(get)]
    open_to: String,
}

#[pymethods]
impl AmoRights {
    fn __repr__(&self) -> &'static str {
        "<AmoRights>"
    }
}

/// The presented person (holder rank 0 or a beneficiary). repr shows no personal data.
#[pyclass(frozen, module = "apcv_verify._native")]
struct Person {
    #[pyo3(get)]
    rank: u64,
    #[pyo3(get)]
    ins: String,
    #[pyo3(get)]
    ins_oid: String,
    #[pyo3(get)]
    birth_name: String,
    #[pyo3(get)]
    given_names: String,
    #[pyo3(get)]
    sex: String,
    #[pyo3(get)]
    birth_date: String,
    #[pyo3(get)]
    birth_place: String,
    #[pyo3(get)]
    amo: Py<AmoRights>,
}

#[pymethods]
impl Person {
    fn __repr__(&self) -> &'static str {
        // PROFILE §9.1: nothing about the person, not even the rank.
        "<Person>"
    }
}

/// One AMC attestation's outcome and coverage (PROFILE §2.7). The coverage fields are set
/// only when the attestation is signed by a trusted "amc" key and names the presented person.
/// repr shows no value.
#[pyclass(frozen, module = "apcv_verify._native")]
struct AmcCoverage {
    #[pyo3(get)]
    valid: bool,
    #[pyo3(get)]
    reason: &'static str,
    #[pyo3(get)]
    detail: &'static str,
    #[pyo3(get)]
    organisation: Option<String>,
    #[pyo3(get)]
    amc_number: Option<String>,
    #[pyo3(get)]
    contract: Option<String>,
    #[pyo3(get)]
    third_party_payment: Option<bool>,
    domains: Vec<String>,
    #[pyo3(get)]
    expires_at: Option<i64>,
}

#[pymethods]
impl AmcCoverage {
    /// Care domains (a new list each time).
    #[getter]
    fn domains(&self) -> Vec<String> {
        self.domains.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "<AmcCoverage valid={} reason={}>",
            if self.valid { "True" } else { "False" },
            self.reason
        )
    }
}

/// A result waiting for an external replay store (PROFILE §7.4 step 9): the decision of
/// steps 1–8 (accepted) and what the store must record.
struct PendingReplay {
    decision: verify::Decision,
    ticket: verify::ReplayTicket,
}

/// Detail of a result still waiting for its replay check (it reads as REPLAY_UNAVAILABLE).
const PENDING_DETAIL: &str = "replay check pending";
/// Detail of a result accepted without a replay check (replay.on_store_error = "accept").
const UNCHECKED_DETAIL: &str = "accepted without replay check: replay store unavailable";

/// The outcome of one verification. repr shows no personal data.
#[pyclass(frozen, module = "apcv_verify._native")]
struct VerificationResult {
    #[pyo3(get)]
    accepted: bool,
    #[pyo3(get)]
    reason: &'static str,
    #[pyo3(get)]
    detail: &'static str,
    #[pyo3(get)]
    duplicate: bool,
    #[pyo3(get, name = "use")]
    use_: Option<&'static str>,
    #[pyo3(get)]
    credential_id: Option<String>,
    #[pyo3(get)]
    issuer: Option<String>,
    #[pyo3(get)]
    credential_expires_at: Option<i64>,
    #[pyo3(get)]
    person: Option<Py<Person>>,
    #[pyo3(get)]
    delegation_label: Option<String>,
    amc: Vec<Py<AmcCoverage>>,
    /// Accepted although the replay store could not be asked (fail-open policy).
    #[pyo3(get)]
    replay_unchecked: bool,
    pending: Option<PendingReplay>,
}

#[pymethods]
impl VerificationResult {
    /// One entry per AMC attestation, in presentation order; empty unless accepted.
    #[getter]
    fn amc<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, AmcCoverage>> {
        self.amc.iter().map(|a| a.bind(py).clone()).collect()
    }

    /// True while the result waits for an external replay store; it then reads as
    /// REPLAY_UNAVAILABLE until :meth:`with_replay_outcome` settles it.
    #[getter]
    fn replay_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The replay key (the presentation's 16-byte ``cti``) while pending, else None.
    #[getter]
    fn replay_key<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.pending
            .as_ref()
            .map(|p| PyBytes::new(py, &p.ticket.cti))
    }

    /// While pending: keep the replay entry until this time (seconds), else None.
    #[getter]
    fn replay_expires_at(&self) -> Option<i64> {
        self.pending.as_ref().map(|p| p.ticket.keep_until)
    }

    /// The final result of a pending one, given the external store's answer: "new"
    /// (accepted), "same_reader" (accepted, duplicate), "other_reader" (REPLAYED),
    /// "unavailable" (REPLAY_UNAVAILABLE) or "unchecked" (accepted without a replay check,
    /// flagged by ``replay_unchecked``: the operator's fail-open policy). ValueError when
    /// the result is not pending or the outcome unknown.
    fn with_replay_outcome(&self, py: Python<'_>, outcome: &str) -> PyResult<VerificationResult> {
        let Some(pending) = &self.pending else {
            return Err(PyValueError::new_err(
                "result is not pending a replay check",
            ));
        };
        let (outcome, unchecked) = match outcome {
            "new" => (replay::ReplayOutcome::New, false),
            "same_reader" => (replay::ReplayOutcome::SameReader, false),
            "other_reader" => (replay::ReplayOutcome::OtherReader, false),
            "unavailable" => (replay::ReplayOutcome::Unavailable, false),
            "unchecked" => (replay::ReplayOutcome::New, true),
            _ => {
                return Err(PyValueError::new_err(
                    "outcome must be new, same_reader, other_reader, unavailable or unchecked",
                ))
            }
        };
        let mut d = verify::settle_replay(pending.decision.clone(), outcome);
        if unchecked {
            d.detail = UNCHECKED_DETAIL;
        }
        let mut result = result_to_py(py, d)?;
        result.replay_unchecked = unchecked;
        Ok(result)
    }

    fn __repr__(&self) -> String {
        format!(
            "<VerificationResult accepted={} reason={} duplicate={}{}>",
            if self.accepted { "True" } else { "False" },
            self.reason,
            if self.duplicate { "True" } else { "False" },
            if self.pending.is_some() {
                " replay_pending=True"
            } else if self.replay_unchecked {
                " replay_unchecked=True"
            } else {
                ""
            }
        )
    }
}

fn person_to_py(py: Python<'_>, p: claims::Person) -> PyResult<Py<Person>> {
    let amo = Py::new(
        py,
        AmoRights {
            regime: p.amo.regime,
            caisse: p.amo.caisse,
            centre: p.amo.centre,
            open_from: p.amo.open_from,
            open_to: p.amo.open_to,
        },
    )?;
    Py::new(
        py,
        Person {
            rank: p.rank,
            ins: p.ins,
            ins_oid: p.ins_oid,
            birth_name: p.birth_name,
            given_names: p.given_names,
            sex: p.sex,
            birth_date: p.birth_date,
            birth_place: p.birth_place,
            amo,
        },
    )
}

fn amc_to_py(py: Python<'_>, a: verify::AmcCoverage) -> PyResult<Py<AmcCoverage>> {
    Py::new(
        py,
        AmcCoverage {
            valid: a.valid(),
            reason: a.reason.as_str(),
            detail: a.detail,
            organisation: a.organisation,
            amc_number: a.amc_number,
            contract: a.contract,
            third_party_payment: a.third_party_payment,
            domains: a.domains,
            expires_at: a.expires_at,
        },
    )
}

fn result_to_py(py: Python<'_>, d: verify::Decision) -> PyResult<VerificationResult> {
    Ok(VerificationResult {
        accepted: d.accepted(),
        reason: d.reason.as_str(),
        detail: d.detail,
        duplicate: d.duplicate,
        use_: d.use_.map(claims::Use::as_str),
        credential_id: d.credential_id,
        issuer: d.issuer,
        credential_expires_at: d.credential_expires_at,
        person: d.person.map(|p| person_to_py(py, p)).transpose()?,
        delegation_label: d.delegation_label,
        amc: d
            .amc
            .into_iter()
            .map(|a| amc_to_py(py, a))
            .collect::<PyResult<_>>()?,
        replay_unchecked: false,
        pending: None,
    })
}

/// An item of a deferred batch: a decided result, or a pending one that reads as
/// REPLAY_UNAVAILABLE (no person) until settled, so a result never settled fails closed.
fn deferred_to_py(py: Python<'_>, item: verify::Deferred) -> PyResult<VerificationResult> {
    match item {
        verify::Deferred::Decided(d) => result_to_py(py, d),
        verify::Deferred::Pending(decision, ticket) => {
            let mut shown =
                verify::settle_replay(decision.clone(), replay::ReplayOutcome::Unavailable);
            shown.detail = PENDING_DETAIL;
            let mut result = result_to_py(py, shown)?;
            result.pending = Some(PendingReplay { decision, ticket });
            Ok(result)
        }
    }
}

/// The replay store of a verifier whose step 9 is done outside the core (Python, Redis):
/// never consulted by `verify_batch_deferred`; were it ever asked, it fails closed.
struct ExternalReplayStore;

impl replay::ReplayStore for ExternalReplayStore {
    fn check_and_insert(
        &self,
        _cti: &[u8; apcv_core::limits::CTI_LEN],
        _reader_id: &str,
        _expires_at: i64,
        _now: i64,
    ) -> replay::ReplayOutcome {
        replay::ReplayOutcome::Unavailable
    }
}

// ------------------------------------------------------------------ verifier

/// An immutable verification snapshot (trust list, status lists, policy, replay store).
#[pyclass(frozen, module = "apcv_verify._native")]
struct Verifier {
    inner: verify::Verifier,
    /// Step 9 is left to the caller (replay_store=None): results that pass steps 1–8 come
    /// back pending.
    external_replay: bool,
}

fn status_arcs(lists: &[Bound<'_, StatusList>]) -> Vec<Arc<status::StatusList>> {
    lists.iter().map(|l| l.get().inner.clone()).collect()
}

#[pymethods]
impl Verifier {
    /// ``replay_store=None``: an external store (step 9 done by the caller, see
    /// ``VerificationResult.with_replay_outcome``).
    #[new]
    fn new(
        trust_list: &Bound<'_, TrustList>,
        status_lists: Vec<Bound<'_, StatusList>>,
        policy: &Bound<'_, Policy>,
        replay_store: Option<&Bound<'_, MemoryReplayStore>>,
    ) -> Verifier {
        let store: Arc<dyn replay::ReplayStore> = match replay_store {
            Some(s) => s.get().inner.clone(),
            None => Arc::new(ExternalReplayStore),
        };
        Verifier {
            inner: verify::Verifier::new(
                trust_list.get().inner.clone(),
                status_arcs(&status_lists),
                policy.get().inner,
                store,
            ),
            external_replay: replay_store.is_none(),
        }
    }

    /// True when built without a replay store: accepted results come back pending.
    #[getter]
    fn external_replay(&self) -> bool {
        self.external_replay
    }

    /// A new snapshot with another trust list (same status lists, policy and store).
    fn with_trust_list(&self, trust_list: &Bound<'_, TrustList>) -> Verifier {
        Verifier {
            inner: self.inner.with_trust_list(trust_list.get().inner.clone()),
            external_replay: self.external_replay,
        }
    }

    /// A new snapshot with another set of status lists.
    fn with_status_lists(&self, status_lists: Vec<Bound<'_, StatusList>>) -> Verifier {
        Verifier {
            inner: self.inner.with_status_lists(status_arcs(&status_lists)),
            external_replay: self.external_replay,
        }
    }

    /// Verifies every scan with the GIL released (rayon-parallel); results in input order.
    /// With an external replay store, results that passed steps 1–8 come back pending.
    fn verify_batch(
        &self,
        py: Python<'_>,
        scans: Vec<Bound<'_, Scan>>,
        now: i64,
    ) -> PyResult<Vec<VerificationResult>> {
        let items: Vec<Arc<verify::Scan>> = scans.iter().map(|s| s.get().inner.clone()).collect();
        let inner = &self.inner;
        if self.external_replay {
            let deferred = py.detach(|| inner.verify_batch_deferred(&items, now));
            return deferred
                .into_iter()
                .map(|d| deferred_to_py(py, d))
                .collect();
        }
        let decisions = py.detach(|| inner.verify_batch(&items, now));
        decisions.into_iter().map(|d| result_to_py(py, d)).collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "<Verifier trust_seq={}{}>",
            self.inner.trust_list().seq,
            if self.external_replay {
                " replay=external"
            } else {
                ""
            }
        )
    }
}

// ------------------------------------------------------------------ module

/// apcv_verify._native: the compiled verification core.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("NativeError", py.get_type::<NativeError>())?;
    m.add("TrustListError", py.get_type::<TrustListError>())?;
    m.add("StatusListError", py.get_type::<StatusListError>())?;
    m.add("CoseKeyError", cose_key_error(py)?)?;
    m.add("MalformedError", malformed_error(py)?)?;
    m.add("InvalidSignature", py.get_type::<InvalidSignature>())?;
    m.add_function(wrap_pyfunction!(verify_signature, m)?)?;
    m.add_function(wrap_pyfunction!(verify_sign1, m)?)?;
    m.add_function(wrap_pyfunction!(cose_key_thumbprint, m)?)?;
    m.add_function(wrap_pyfunction!(decode_status_list, m)?)?;
    m.add_class::<StatusBits>()?;
    m.add_class::<TrustList>()?;
    m.add_class::<StatusList>()?;
    m.add_class::<Policy>()?;
    m.add_class::<MemoryReplayStore>()?;
    m.add_class::<Scan>()?;
    m.add_class::<AmoRights>()?;
    m.add_class::<Person>()?;
    m.add_class::<AmcCoverage>()?;
    m.add_class::<VerificationResult>()?;
    m.add_class::<Verifier>()?;
    Ok(())
}
