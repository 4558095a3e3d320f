//! Results: frozen Python views of the core's decisions, and of a decision still waiting
//! for an external replay store (the settlement rules are the core's, `apcv_core::settle`).

use std::borrow::Cow;

use apcv_core::claims;
use apcv_core::settle::{PendingReplay, ReplayAnswer};
use apcv_core::verify;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Open AMO rights of the presented person. repr shows no value.
#[pyclass(frozen, module = "apcv_verify._native")]
pub(crate) struct AmoRights {
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
pub(crate) struct Person {
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
        // docs/profile.md §9.1: nothing about the person, not even the rank.
        "<Person>"
    }
}

/// One AMC attestation's outcome and coverage (docs/profile.md §2.7). The coverage fields are set
/// only when the attestation is signed by a trusted "amc" key and names the presented person.
/// repr shows no value.
#[pyclass(frozen, module = "apcv_verify._native")]
pub(crate) struct AmcCoverage {
    #[pyo3(get)]
    valid: bool,
    #[pyo3(get)]
    pub(crate) reason: &'static str,
    /// A fixed phrase: the core's, or a kept answer's (answer recovery).
    pub(crate) detail: Cow<'static, str>,
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
    #[pyo3(get)]
    valid_from: Option<i64>,
}

#[pymethods]
impl AmcCoverage {
    #[getter]
    fn detail(&self) -> &str {
        &self.detail
    }

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

/// The outcome of one verification. repr shows no personal data.
#[pyclass(frozen, module = "apcv_verify._native")]
pub(crate) struct VerificationResult {
    #[pyo3(get)]
    accepted: bool,
    #[pyo3(get)]
    pub(crate) reason: &'static str,
    /// A fixed phrase: the core's, or a kept answer's (answer recovery).
    pub(crate) detail: Cow<'static, str>,
    #[pyo3(get)]
    pub(crate) duplicate: bool,
    #[pyo3(get, name = "use")]
    pub(crate) use_: Option<&'static str>,
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
    pub(crate) amc: Vec<Py<AmcCoverage>>,
    /// Accepted although the replay store could not be asked (fail-open policy).
    #[pyo3(get)]
    pub(crate) replay_unchecked: bool,
    pending: Option<PendingReplay>,
    /// The answer kept for an earlier request with the same caller, reader id and request
    /// id, given again (answer recovery): decided at ``verified_at``, not now.
    #[pyo3(get)]
    pub(crate) resent: bool,
    /// When a resent answer was decided (seconds); None for a fresh one (decided now).
    #[pyo3(get)]
    pub(crate) verified_at: Option<i64>,
}

#[pymethods]
impl VerificationResult {
    #[getter]
    fn detail(&self) -> &str {
        &self.detail
    }

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
            .map(|p| PyBytes::new(py, &p.ticket().cti))
    }

    /// While pending: keep the replay entry until this time (seconds), else None.
    #[getter]
    fn replay_expires_at(&self) -> Option<i64> {
        self.pending.as_ref().map(|p| p.ticket().keep_until)
    }

    /// While pending: the presentation's ``iat`` (seconds), else None.
    #[getter]
    fn replay_issued_at(&self) -> Option<i64> {
        self.pending.as_ref().map(|p| p.ticket().issued_at)
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
        let answer = ReplayAnswer::from_name(outcome).ok_or_else(|| {
            PyValueError::new_err(
                "outcome must be new, same_reader, other_reader, unavailable or unchecked",
            )
        })?;
        result_to_py(py, pending.settle(answer))
    }

    fn __repr__(&self) -> String {
        format!(
            "<VerificationResult accepted={} reason={} duplicate={}{}>",
            if self.accepted { "True" } else { "False" },
            self.reason,
            if self.duplicate { "True" } else { "False" },
            if self.pending.is_some() {
                " replay_pending=True"
            } else if self.resent {
                " resent=True"
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

fn amc_to_py(
    py: Python<'_>,
    a: verify::AmcCoverage,
    detail: Option<String>,
) -> PyResult<Py<AmcCoverage>> {
    Py::new(
        py,
        AmcCoverage {
            valid: a.valid(),
            reason: a.reason.as_str(),
            detail: detail.map_or(Cow::Borrowed(a.detail), Cow::Owned),
            organisation: a.organisation,
            amc_number: a.amc_number,
            contract: a.contract,
            third_party_payment: a.third_party_payment,
            domains: a.domains,
            expires_at: a.expires_at,
            valid_from: a.valid_from,
        },
    )
}

impl VerificationResult {
    /// True while waiting for an external replay store.
    pub(crate) fn is_pending(&self) -> bool {
        self.pending.is_some()
    }
}

pub(crate) fn result_to_py(py: Python<'_>, d: verify::Decision) -> PyResult<VerificationResult> {
    result_with_details(py, d, None, Vec::new())
}

/// [`result_to_py`] with the fixed phrases given (a kept answer's) instead of the decision's:
/// `detail` for the decision, `amc_details` for its AMC outcomes in order.
pub(crate) fn result_with_details(
    py: Python<'_>,
    d: verify::Decision,
    detail: Option<String>,
    amc_details: Vec<String>,
) -> PyResult<VerificationResult> {
    let mut amc_details = amc_details.into_iter();
    Ok(VerificationResult {
        accepted: d.accepted(),
        reason: d.reason.as_str(),
        detail: detail.map_or(Cow::Borrowed(d.detail), Cow::Owned),
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
            .map(|a| amc_to_py(py, a, amc_details.next()))
            .collect::<PyResult<_>>()?,
        replay_unchecked: d.replay_unchecked,
        pending: None,
        resent: false,
        verified_at: None,
    })
}

/// An item of a deferred batch: a decided result, or a pending one that reads as
/// REPLAY_UNAVAILABLE until settled (`apcv_core::settle::Deferred::split`).
pub(crate) fn deferred_to_py(
    py: Python<'_>,
    item: verify::Deferred,
) -> PyResult<VerificationResult> {
    let (shown, pending) = item.split();
    let mut result = result_to_py(py, shown)?;
    result.pending = pending;
    Ok(result)
}
