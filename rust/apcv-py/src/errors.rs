//! Core errors as Python exceptions: the exception classes of `apcv_verify._native` and
//! the one exhaustive mapping from core error kinds to them (pyca/cryptography style).

use apcv_core::error::Error as CoreError;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

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

pub(crate) fn cose_key_error(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    value_error_subclass(
        py,
        &COSE_KEY_ERROR,
        "CoseKeyError",
        "Unusable COSE_Key, or an algorithm the profile does not allow.",
    )
}

pub(crate) fn malformed_error(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    value_error_subclass(
        py,
        &MALFORMED_ERROR,
        "MalformedError",
        "verify_sign1: the bytes are not a strict COSE_Sign1.",
    )
}

/// A core error on its way to Python (orphan rule: the mapping needs a local type).
pub(crate) struct NativeErr(pub(crate) CoreError);

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

pub(crate) type NativeResult<T> = Result<T, NativeErr>;
